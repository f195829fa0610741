//! `dishsync-bridge` built inside the e2e package, so that the tests can
//! start and kill the real bridge as a child process.

fn main() -> std::process::ExitCode {
    dishsync_firmware_bridge::cli::main()
}
