//! `dishsync-bridge`: see `dishsync_firmware_bridge::cli`.

fn main() -> std::process::ExitCode {
    dishsync_firmware_bridge::cli::main()
}
