//! `dishsync-bench`: see `dishsync_bench`.

fn main() -> std::process::ExitCode {
    dishsync_bench::main()
}
