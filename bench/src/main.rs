//! `dishsync-bench`: see `dishsync_bench`.

/// The broker's allocator and page size (`dishsync_broker::memory`): the
/// brokers this binary measures run in child processes of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dishsync_broker::memory::use_small_pages();
    dishsync_bench::main()
}
