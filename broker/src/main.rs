//! `dishsync-broker`: see `dishsync_broker::cli`.

/// Every input allocates a few short-lived buffers on several threads; the
/// system allocator spent a fifth of the broker's CPU on them (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dishsync_broker::cli::main()
}
