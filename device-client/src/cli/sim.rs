//! `dishsync sim`: simulated store traffic through real device clients.
//!
//! Scales book stock (mostly receipts, some use and waste), POS terminals
//! sell dishes, at a fixed total rate for a fixed time; each device is a full
//! [`Client`] with its own outbox. Sends are scheduled at their intended
//! times, and an input's latency is measured from its *intended* send time to
//! its end-to-end ack, so a stalled broker shows up in the numbers instead of
//! silently lowering the offered load.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dishsync_protocol::payload::StockKind;
use dishsync_protocol::{DeviceId, DishId, EventId, SkuId, Unit};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connection::{say, Connection};
use crate::client::{Client, Update, Watch};

#[derive(Args, Clone)]
pub(crate) struct SimArgs {
    /// Simulated scales (stock events).
    #[arg(long, default_value_t = 2)]
    pub(crate) scales: usize,
    /// Simulated POS terminals (sales).
    #[arg(long, default_value_t = 4)]
    pub(crate) pos: usize,
    /// Inputs per second, all devices together.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// SKUs the scales book, as sku:unit (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_sku_unit,
          default_value = "potato-fries:g,beef-patty:pcs,bun:pcs,cheddar:g,milk:ml")]
    pub(crate) skus: Vec<(SkuId, Unit)>,
    /// Dishes the POS terminals sell (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fries,classic-burger,latte,cola,milkshake"
    )]
    pub(crate) dishes: Vec<DishId>,
    /// Write into a store that is not a demo or training store.
    #[arg(long)]
    pub(crate) force: bool,
}

/// A small deterministic generator (xorshift64*): the same run, the same
/// traffic.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// How long to wait for the store's catalog before giving up.
const CATALOG_WAIT: Duration = Duration::from_secs(15);

/// Refuses unless the store is a demo or training store (its catalog says
/// `training`): the simulation books real, made-up sales and receipts into
/// the store's ledger.
async fn training_store(conn: &Connection) -> anyhow::Result<()> {
    let mut dir = conn.outbox_dir().into_os_string();
    dir.push("-sim-check");
    let (client, mut updates) = Client::start(conn.config(dir.into(), vec![Watch::Catalog])?)?;
    let deadline = Instant::now() + CATALOG_WAIT;
    let catalog = loop {
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Ok(Some(Update::Catalog(c))) => break Some(c),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break None,
        }
    };
    client.shutdown(Duration::ZERO).await;
    match catalog {
        Some(c) if c.training => Ok(()),
        Some(c) => anyhow::bail!(
            "store {} ({}) is not a demo or training store: sim would book made-up sales and receipts into its \
             real ledger and move its real stock. Run it against a store configured `training = true`, or pass \
             --force to write into this one anyway",
            c.store,
            c.name
        ),
        None => anyhow::bail!(
            "no catalog for store {} within {} s (no such store, or the broker is unreachable or too old to say \
             whether it is a training store): pass --force to write into it anyway",
            conn.store,
            CATALOG_WAIT.as_secs()
        ),
    }
}

/// Runs the simulation and prints the report.
pub(crate) async fn run(conn: &Connection, args: &SimArgs) -> anyhow::Result<ExitCode> {
    if args.rate <= 0.0 || args.duration <= 0.0 || args.scales + args.pos == 0 {
        anyhow::bail!("sim needs a positive --rate and --duration and at least one device");
    }
    if (args.scales > 0 && args.skus.is_empty()) || (args.pos > 0 && args.dishes.is_empty()) {
        anyhow::bail!("sim needs --skus for scales and --dishes for POS terminals");
    }
    if !args.force {
        if let Err(refused) = training_store(conn).await {
            eprintln!("dishsync: {refused:#}");
            return Ok(ExitCode::from(2));
        }
    }
    let base = conn.outbox_dir().with_file_name("sim");
    let (events_tx, mut events) = mpsc::unbounded_channel::<Update>();
    let mut devices = Vec::new();
    let names = (0..args.scales)
        .map(|i| (true, format!("sim-scale-{i}")))
        .chain((0..args.pos).map(|i| (false, format!("sim-pos-{i}"))));
    for (is_scale, name) in names {
        let device: DeviceId = name.parse()?;
        let mut config = conn.config(base.join(&name), Vec::new())?;
        config.device = device;
        let (client, mut updates) = Client::start(config)?;
        let tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(u) = updates.recv().await {
                if tx.send(u).is_err() {
                    break;
                }
            }
        });
        devices.push((is_scale, client));
    }
    drop(events_tx);

    let total = (args.rate * args.duration).round() as u64;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let mut intended: HashMap<EventId, Instant> = HashMap::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let (mut recorded, mut acked, mut rejected, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let mut last_progress = start;
    let mut on_update =
        |u: Update, intended: &mut HashMap<EventId, Instant>, acked: &mut u64, rejected: &mut u64| match u {
            Update::Acked(ids) => {
                let now = Instant::now();
                for id in ids {
                    if let Some(t) = intended.remove(&id) {
                        latencies.push(now.duration_since(t));
                        *acked += 1;
                    }
                }
            }
            Update::Rejected(err) => {
                if let Some(id) = err.id.as_deref().and_then(|i| i.parse::<EventId>().ok()) {
                    if intended.remove(&id).is_some() {
                        *rejected += 1;
                    }
                }
            }
            _ => {}
        };
    for n in 0..total {
        let due = start + period.mul_f64(n as f64);
        // Handle acks while waiting for the next intended send time.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                u = events.recv() => match u {
                    Some(u) => on_update(u, &mut intended, &mut acked, &mut rejected),
                    None => break,
                },
            }
        }
        let (is_scale, client) = &devices[(n as usize) % devices.len()];
        let result = if *is_scale {
            let (sku, unit) = &args.skus[dice.below(args.skus.len())];
            // Pieces come by the handful, grams and millilitres by the 50.
            let step = if *unit == Unit::Pcs { 1 } else { 50 };
            let roll = dice.below(10);
            let (kind, qty, reason) = match roll {
                0..=5 => (StockKind::Receive, step * (1 + dice.below(20)), None),
                6..=8 => (StockKind::Consume, step * (1 + dice.below(5)), None),
                _ => (StockKind::Waste, step, Some("simulated spill".to_string())),
            };
            client.record_stock(sku, kind, qty as f64, *unit, reason, None)
        } else {
            let dish = args.dishes[dice.below(args.dishes.len())].clone();
            client.record_sale(&[(dish, 1 + dice.below(2) as u32)])
        };
        match result {
            Ok(id) => {
                intended.insert(id, due);
                recorded += 1;
            }
            Err(e) => {
                refused += 1;
                tracing::warn!(error = %e, "sim: recording failed");
            }
        }
        if !conn.json && last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            progress(start, args.duration, n + 1, total, acked, rejected);
        }
    }
    // Collect the last acks, bounded by --wait.
    let deadline = Instant::now() + Duration::from_secs(conn.wait);
    while !intended.is_empty() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(u)) => on_update(u, &mut intended, &mut acked, &mut rejected),
            _ => break,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut left = 0;
    for (_, client) in &devices {
        left += client.shutdown(Duration::ZERO).await;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    if !conn.json {
        eprintln!();
    }
    let rate = acked as f64 / elapsed;
    say(
        conn,
        &format!(
            "sim: {recorded} recorded, {acked} acknowledged, {rejected} rejected, {refused} not recorded, {left} left in outboxes\n\
             sim: {elapsed:.1} s, {rate:.1} acknowledged/s (offered {:.1}/s); ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            args.rate,
            pct(0.50),
            pct(0.99),
            pct(1.0)
        ),
        json!({
            "recorded": recorded, "acknowledged": acked, "rejected": rejected, "not_recorded": refused,
            "left": left, "seconds": elapsed, "rate": rate, "offered": args.rate,
            "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
        }),
    );
    Ok(if left == 0 && refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn progress(start: Instant, duration: f64, sent: u64, total: u64, acked: u64, rejected: u64) {
    const WIDTH: usize = 30;
    let done = (sent as f64 / total.max(1) as f64 * WIDTH as f64) as usize;
    let bar: String = "#".repeat(done) + &".".repeat(WIDTH - done.min(WIDTH));
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{bar}] {:>5.1}/{duration:.0} s  sent {sent}  acked {acked}  rejected {rejected} ",
        start.elapsed().as_secs_f64()
    );
    let _ = err.flush();
}

fn parse_sku_unit(s: &str) -> Result<(SkuId, Unit), String> {
    let (sku, unit) = s.split_once(':').ok_or_else(|| format!("{s:?} is not sku:unit"))?;
    let sku = sku.parse().map_err(|e: dishsync_protocol::IdError| e.to_string())?;
    Ok((
        sku,
        unit.parse().map_err(|e: dishsync_protocol::UnitError| e.to_string())?,
    ))
}
