//! `dishsync`: see `dishsync_client::cli`.

fn main() -> std::process::ExitCode {
    dishsync_client::cli::main()
}
