//! The `dishsync` command line: the operator's and store manager's tool.
//!
//! Recording verbs (`stock`, `sell`, `void`, `86`, `release`) write to the
//! device's durable outbox first, print `recorded <id>`, then wait (bounded by
//! `--wait`) for the broker's end-to-end ack. A broker that cannot be reached
//! leaves the message in the outbox, says so, and exits 3; `dishsync outbox
//! flush` sends it later. Exit codes: 0 acknowledged, 1 rejected by the
//! broker or failed, 2 bad arguments, 3 queued but not yet acknowledged.

mod connection;
pub mod screen;
mod sim;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dishsync_protocol::payload::{OverrideStatus, StockKind, Timestamp};
use dishsync_protocol::topic::{RequestAction, TransferAction};
use dishsync_protocol::{DishId, DocId, EventId, SkuId, Unit};
use serde_json::json;
use tokio::sync::mpsc;

use crate::client::{Client, Update, Watch};
use crate::outbox::Outbox;
use connection::{say, Connection};
use screen::{Screen, Tone};
use sim::SimArgs;

/// dishsync: record stock and sales, watch availability, manage the outbox.
#[derive(Parser)]
#[command(name = "dishsync", version, about)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record a stock change of a SKU.
    Stock {
        /// What happened.
        kind: KindArg,
        /// The SKU.
        sku: SkuId,
        /// How much (count: the absolute level; adjust: signed).
        #[arg(allow_negative_numbers = true)]
        qty: f64,
        /// Unit: g, kg, ml, l or pcs.
        unit: Unit,
        /// Why (required for waste).
        #[arg(long)]
        reason: Option<String>,
        /// A reference: delivery note, replenishment request id.
        #[arg(long = "ref")]
        reference: Option<String>,
    },
    /// Record a sale: DISH or DISH:PORTIONS, one or more.
    Sell {
        /// Lines of the sale.
        #[arg(required = true, value_parser = parse_line)]
        lines: Vec<(DishId, u32)>,
    },
    /// Void a sale by its id.
    Void {
        /// The sale's id (printed when it was recorded).
        sale: EventId,
    },
    /// Mark a dish sold out (the chef's 86), optionally until a time.
    #[command(name = "86")]
    EightySix {
        /// The dish.
        dish: DishId,
        /// When the 86 lapses by itself (RFC 3339, e.g. 2026-11-25T23:00:00Z).
        #[arg(long, value_parser = parse_time)]
        until: Option<Timestamp>,
        /// A note for the staff.
        #[arg(long)]
        note: Option<String>,
    },
    /// Release a dish's 86: availability follows the stock again.
    Release {
        /// The dish.
        dish: DishId,
    },
    /// Transfers between stores: ask for one, or act on one.
    Transfer {
        #[command(subcommand)]
        action: TransferCmd,
    },
    /// The central kitchen's actions on replenishment requests.
    Replenishment {
        /// ack, ship or cancel.
        action: RequestArg,
        /// The request id (rq-{store}-{n}).
        id: DocId,
        /// A note for the store.
        #[arg(long)]
        note: Option<String>,
    },
    /// Show live availability, levels or the whole menu until interrupted.
    Watch {
        /// What to watch.
        what: WatchArg,
    },
    /// Simulated store traffic: scales and POS terminals recording at a
    /// rate for a duration, then a report (also the benchmark load
    /// generator). It WRITES into the store: real receipts, use, waste and
    /// sales in its ledger, moving its levels and raising its requests. It
    /// runs only against a demo or training store (`training = true` in the
    /// broker's configuration) unless given --force.
    Sim(SimArgs),
    /// Inspect or send the device's outbox.
    Outbox {
        /// status: what waits; flush: send it and wait for the acks.
        action: OutboxArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Receive,
    Consume,
    Waste,
    Count,
    Adjust,
    TransferIn,
    TransferOut,
}

impl From<KindArg> for StockKind {
    fn from(k: KindArg) -> StockKind {
        match k {
            KindArg::Receive => StockKind::Receive,
            KindArg::Consume => StockKind::Consume,
            KindArg::Waste => StockKind::Waste,
            KindArg::Count => StockKind::Count,
            KindArg::Adjust => StockKind::Adjust,
            KindArg::TransferIn => StockKind::TransferIn,
            KindArg::TransferOut => StockKind::TransferOut,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum WatchArg {
    Availability,
    Levels,
    Menu,
    Alerts,
    Requests,
    Transfers,
    All,
}

#[derive(Subcommand)]
enum TransferCmd {
    /// Ask for stock of a SKU from the nearest store that can give it.
    Request {
        /// The SKU.
        sku: SkuId,
        /// How much.
        qty: f64,
        /// Unit: g, kg, ml, l or pcs.
        unit: Unit,
    },
    /// Agree to give (the giving store).
    Accept(TransferId),
    /// Refuse to give (the giving store); the next store is asked.
    Decline(TransferId),
    /// The goods leave (the giving store; books transfer_out).
    Dispatch(TransferId),
    /// The goods arrived (the taking store; books transfer_in).
    Receive(TransferId),
    /// Call it off before dispatch (either store).
    Cancel(TransferId),
}

#[derive(Args)]
struct TransferId {
    /// The transfer id (tr-{n}).
    id: DocId,
    /// A note for the other store.
    #[arg(long)]
    note: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum RequestArg {
    Ack,
    Ship,
    Cancel,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutboxArg {
    Status,
    Flush,
}

fn parse_line(s: &str) -> Result<(DishId, u32), String> {
    let (dish, portions) = match s.split_once(':') {
        Some((d, p)) => (
            d,
            p.parse::<u32>()
                .map_err(|_| format!("{p:?} is not a number of portions"))?,
        ),
        None => (s, 1),
    };
    if portions == 0 {
        return Err("portions must be at least 1".into());
    }
    Ok((
        dish.parse().map_err(|e: dishsync_protocol::IdError| e.to_string())?,
        portions,
    ))
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 time"))
}

/// What a dishsync command line (`dishsync`, `dishsync-bridge`) starts
/// with: logs on stderr, filtered by `RUST_LOG` or else `default_log`, and a
/// two-thread runtime. `None` (having said why on stderr) when the runtime
/// cannot start.
pub fn command_runtime(program: &str, default_log: &str) -> Option<tokio::runtime::Runtime> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("{program}: cannot start: {e}");
            None
        }
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(runtime) = command_runtime("dishsync", "error") else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dishsync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let conn = &cli.conn;
    let record = |client: &Client| -> Result<EventId, crate::ClientError> {
        match &cli.command {
            Command::Stock {
                kind,
                sku,
                qty,
                unit,
                reason,
                reference,
            } => client.record_stock(sku, (*kind).into(), *qty, *unit, reason.clone(), reference.clone()),
            Command::Sell { lines } => client.record_sale(lines),
            Command::Void { sale } => client.record_void(sale),
            Command::EightySix { dish, until, note } => {
                client.record_override(dish, OverrideStatus::SoldOut, *until, note.clone())
            }
            Command::Release { dish } => client.record_override(dish, OverrideStatus::Auto, None, None),
            Command::Transfer { action } => {
                let (act, t) = match action {
                    TransferCmd::Request { sku, qty, unit } => return client.record_transfer_request(sku, *qty, *unit),
                    TransferCmd::Accept(t) => (TransferAction::Accept, t),
                    TransferCmd::Decline(t) => (TransferAction::Decline, t),
                    TransferCmd::Dispatch(t) => (TransferAction::Dispatch, t),
                    TransferCmd::Receive(t) => (TransferAction::Receive, t),
                    TransferCmd::Cancel(t) => (TransferAction::Cancel, t),
                };
                client.record_transfer_action(&t.id, act, t.note.clone())
            }
            Command::Replenishment { action, id, note } => {
                let act = match action {
                    RequestArg::Ack => RequestAction::Acknowledge,
                    RequestArg::Ship => RequestAction::Ship,
                    RequestArg::Cancel => RequestAction::Cancel,
                };
                client.record_request_action(id, act, note.clone())
            }
            Command::Watch { .. } | Command::Outbox { .. } | Command::Sim(_) => {
                unreachable!("not a recording verb")
            }
        }
    };
    match &cli.command {
        Command::Watch { what } => watch(conn, *what).await,
        Command::Sim(args) => sim::run(conn, args).await,
        Command::Outbox {
            action: OutboxArg::Status,
        } => outbox_status(conn),
        Command::Outbox {
            action: OutboxArg::Flush,
        } => {
            let (client, updates) = Client::start(conn.config(conn.outbox_dir(), Vec::new())?)?;
            let expected = client.pending_ids()?;
            deliver(conn, &client, updates, None, expected).await
        }
        _ => {
            let (client, updates) = Client::start(conn.config(conn.outbox_dir(), Vec::new())?)?;
            // What waits now, taken before anything can settle it unseen.
            let mut expected = client.pending_ids()?;
            let id = record(&client)?;
            say(conn, &format!("recorded {id}"), json!({"id": id, "status": "recorded"}));
            expected.push(id.clone());
            deliver(conn, &client, updates, Some(id), expected).await
        }
    }
}

/// Waits until every message of `expected` is settled — its ack or its
/// refusal received — (or `--wait` passes) and reports.
///
/// The outcome of each is the update the client sends once the outbox let
/// it go; waiting for an empty outbox instead would race that update, and
/// report a refused input as acknowledged.
async fn deliver(
    conn: &Connection,
    client: &Client,
    mut updates: mpsc::UnboundedReceiver<Update>,
    id: Option<EventId>,
    expected: Vec<EventId>,
) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(conn.wait);
    let waiting = expected.len();
    let mut unsettled: std::collections::BTreeSet<EventId> = expected.into_iter().collect();
    let mut rejected = Vec::new();
    let mut acked = 0usize;
    while !unsettled.is_empty() {
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Ok(Some(Update::Acked(ids))) => acked += ids.iter().filter(|i| unsettled.remove(*i)).count(),
            Ok(Some(Update::Rejected(err))) => {
                if let Some(refused) = err.id.as_deref().and_then(|i| EventId::new(i).ok()) {
                    unsettled.remove(&refused);
                }
                rejected.push(err);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let left = client.shutdown(Duration::ZERO).await;
    let mut code = ExitCode::SUCCESS;
    for err in &rejected {
        code = ExitCode::FAILURE;
        let which = err.id.as_deref().unwrap_or("-");
        say(
            conn,
            &format!("rejected {which}: {} ({:?})", err.error, err.code),
            json!({"id": which, "status": "rejected", "code": err.code, "error": err.error}),
        );
    }
    if left > 0 {
        let dir = conn.outbox_dir();
        let reach = if client.is_connected() {
            "no ack yet from"
        } else {
            "cannot reach"
        };
        say(
            conn,
            &format!(
                "queued: {reach} the broker at {}; {left} message(s) wait in {} (send with `dishsync outbox flush`)",
                conn.broker,
                dir.display()
            ),
            json!({"id": id, "status": "queued", "waiting": left, "broker": conn.broker}),
        );
        return Ok(ExitCode::from(3));
    }
    match &id {
        Some(id) if rejected.is_empty() => say(
            conn,
            &format!("acknowledged {id}"),
            json!({"id": id, "status": "acknowledged"}),
        ),
        Some(_) => {}
        None => say(
            conn,
            &format!(
                "flushed: {acked} acknowledged, {} rejected, of {waiting}",
                rejected.len()
            ),
            json!({"status": "flushed", "acknowledged": acked, "rejected": rejected.len(), "waiting": waiting}),
        ),
    }
    Ok(code)
}

fn outbox_status(conn: &Connection) -> anyhow::Result<ExitCode> {
    let dir = conn.outbox_dir();
    let outbox = Outbox::open(&dir, usize::MAX)?;
    let pending = outbox.pending()?;
    if conn.json {
        for (_, e) in &pending {
            say(conn, "", json!({"id": e.id, "topic": e.topic}));
        }
    } else {
        println!("{} message(s) wait in {}", pending.len(), dir.display());
        for (_, e) in pending.iter().take(20) {
            println!("  {}  {}", e.id, e.topic);
        }
        if pending.len() > 20 {
            println!("  … and {} more", pending.len() - 20);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch(conn: &Connection, what: WatchArg) -> anyhow::Result<ExitCode> {
    let kinds = match what {
        WatchArg::Availability => vec![Watch::Availability],
        WatchArg::Levels => vec![Watch::Levels],
        WatchArg::Menu => vec![Watch::Menu],
        WatchArg::Alerts => vec![Watch::Alerts],
        WatchArg::Requests => vec![Watch::Requests],
        WatchArg::Transfers => vec![Watch::Transfers],
        WatchArg::All => vec![
            Watch::Availability,
            Watch::Levels,
            Watch::Alerts,
            Watch::Requests,
            Watch::Transfers,
        ],
    };
    // The catalog names the dishes and gives the store's local time.
    let kinds: Vec<Watch> = kinds.into_iter().chain([Watch::Catalog]).collect();
    // Watching records nothing; it keeps its own (empty) outbox so that it can
    // run beside a recording command of the same device.
    let mut dir = conn.outbox_dir().into_os_string();
    dir.push("-watch");
    let (client, mut updates) = Client::start(conn.config(PathBuf::from(dir), kinds)?)?;
    let mut screen = Screen::default();
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Some(u) => {
                    if conn.json {
                        print_json(conn, &u);
                    } else {
                        screen.apply(&u);
                        draw(&screen, conn);
                    }
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.shutdown(Duration::ZERO).await;
    Ok(ExitCode::SUCCESS)
}

fn print_json(conn: &Connection, u: &Update) {
    let doc = match u {
        Update::Availability(d) => json!({"type": "availability", "data": d}),
        Update::Level(d) => json!({"type": "level", "data": d}),
        Update::Menu(d) => json!({"type": "menu", "data": d}),
        Update::Connected(up) => json!({"type": "connection", "data": {"up": up}}),
        Update::Alert(d) => json!({"type": "alert", "data": d}),
        Update::Request(d) => json!({"type": "request", "data": d}),
        Update::Transfer(d) => json!({"type": "transfer", "data": d}),
        Update::Catalog(d) => json!({"type": "catalog", "data": d}),
        Update::Cleared(id) => json!({"type": "cleared", "data": {"id": id}}),
        Update::Acked(_) | Update::Rejected(_) => return,
    };
    say(conn, "", doc);
}

/// Draws the screen on the terminal: the whole frame at once, fitted to the
/// terminal's size, coloured only when standard output is a terminal.
fn draw(screen: &Screen, conn: &Connection) {
    use std::io::IsTerminal;
    let (cols, rows) = terminal_size::terminal_size().map_or((screen::MIN_COLS, screen::MIN_ROWS), |(w, h)| {
        (usize::from(w.0), usize::from(h.0))
    });
    let tty = std::io::stdout().is_terminal();
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[2J\x1b[H");
    }
    for line in screen.render(conn.store.as_str(), screen::now(), rows, cols) {
        let colour = match line.tone {
            Tone::Plain => "",
            Tone::Good => "\x1b[32m",
            Tone::Warn => "\x1b[33m",
            Tone::Bad => "\x1b[31m",
        };
        if tty && !colour.is_empty() {
            out.push_str(&format!("{colour}{}\x1b[0m\n", line.text));
        } else {
            out.push_str(&line.text);
            out.push('\n');
        }
    }
    if !tty {
        // A frame per update when piped: separate them.
        out.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
