//! The `dishsync-bridge` command line: the bridge daemon, and a simulated
//! device for demos and tests. In the library so that the end-to-end tests
//! run exactly this code as a child process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::bridge::{serve, sim_device, BridgeConfig, SimDevice};
use crate::codec::{Status, StockKind, Unit};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The dishsync bridge for microcontroller scales and sold-out boards.
#[derive(Parser)]
#[command(name = "dishsync-bridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge.
    Run {
        /// Configuration (TOML): listen, broker, outbox_dir, [[devices]].
        #[arg(long)]
        config: PathBuf,
    },
    /// Behave like an MCU scale or sold-out board.
    SimDevice(SimArgs),
}

/// `sim-device`'s arguments.
#[derive(Args)]
struct SimArgs {
    /// The bridge, host:port.
    #[arg(long)]
    bridge: String,
    /// Device id.
    #[arg(long)]
    device: String,
    /// Device key, hex.
    #[arg(long)]
    key: String,
    /// Boot id.
    #[arg(long, default_value_t = 1)]
    boot: u32,
    /// Stock events to send.
    #[arg(long, default_value_t = 0)]
    events: u32,
    /// SKU of the events.
    #[arg(long, default_value = "")]
    sku: String,
    /// Quantity per event.
    #[arg(long, default_value_t = 1)]
    qty: i32,
    /// Unit.
    #[arg(long, value_enum, default_value_t = UnitArg::G)]
    unit: UnitArg,
    /// Kind of the events.
    #[arg(long, value_enum, default_value_t = KindArg::Receive)]
    kind: KindArg,
    /// Send one stable scale reading of this many grams after the hello.
    #[arg(long)]
    weight: Option<i32>,
    /// Dishes to subscribe to (repeatable).
    #[arg(long)]
    subscribe: Vec<String>,
    /// Stop when DISH shows STATUS (available, low, sold-out).
    #[arg(long, value_parser = parse_until)]
    until: Option<(String, Status)>,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum UnitArg {
    G,
    Ml,
    Pcs,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Receive,
    Consume,
    Waste,
    Count,
    Adjust,
}

fn parse_until(s: &str) -> Result<(String, Status), String> {
    let (dish, status) = s.split_once('=').ok_or("expected DISH=STATUS")?;
    let status = match status {
        "available" => Status::Available,
        "low" => Status::Low,
        "sold-out" | "sold_out" => Status::SoldOut,
        other => return Err(format!("unknown status {other:?}")),
    };
    Ok((dish.to_string(), status))
}

impl SimArgs {
    fn into_device(self) -> SimDevice {
        SimDevice {
            bridge: self.bridge,
            device: self.device,
            key: self.key,
            boot: self.boot,
            events: self.events,
            sku: self.sku,
            qty: self.qty,
            unit: match self.unit {
                UnitArg::G => Unit::G,
                UnitArg::Ml => Unit::Ml,
                UnitArg::Pcs => Unit::Pcs,
            },
            kind: match self.kind {
                KindArg::Receive => StockKind::Receive,
                KindArg::Consume => StockKind::Consume,
                KindArg::Waste => StockKind::Waste,
                KindArg::Count => StockKind::Count,
                KindArg::Adjust => StockKind::Adjust,
            },
            weight: self.weight,
            subscribe: self.subscribe,
            until: self.until,
            deadline: Duration::from_secs(self.seconds),
        }
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(runtime) = dishsync_client::cli::command_runtime("dishsync-bridge", "info") else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => serve(BridgeConfig::load(&config)?).await,
            Command::SimDevice(args) => sim_device(args.into_device()).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dishsync-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
