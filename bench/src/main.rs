//! `dishsync-bench`: see `dishsync_bench`.

/// The same allocator as `dishsync-broker`, which the broker children of
/// this binary stand in for.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dishsync_bench::main()
}
