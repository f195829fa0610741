//! `dishsync` built inside the e2e package, so that the tests can run the
//! real command line as a child process.

fn main() -> std::process::ExitCode {
    dishsync_client::cli::main()
}
