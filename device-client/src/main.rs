//! `dishsync`: the operator's and store manager's command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("dishsync: no commands are available in this version; use mosquitto_pub/mosquitto_sub (see README.md)");
    ExitCode::from(2)
}
