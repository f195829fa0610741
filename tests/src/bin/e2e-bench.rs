//! `dishsync-bench` built inside the e2e package, so that its quick mode
//! runs as a test.

fn main() -> std::process::ExitCode {
    dishsync_bench::main()
}
