//! `dishsync-broker`: see `dishsync_broker::cli`.

/// See `dishsync_broker::memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dishsync_broker::memory::use_small_pages();
    dishsync_broker::cli::main()
}
