//! `dishsync-broker`: see `dishsync_broker::cli`.

fn main() -> std::process::ExitCode {
    dishsync_broker::cli::main()
}
