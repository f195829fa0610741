//! `dishsync-broker` built inside the e2e package: the same code, so that
//! the tests can start and kill the real broker as a child process.

fn main() -> std::process::ExitCode {
    dishsync_broker::cli::main()
}
