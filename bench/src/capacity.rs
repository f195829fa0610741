//! The `capacity` scenario: how many stores one machine carries. For each
//! chain size (a generated chain: [`crate::chain`]), a broker is started
//! on a fresh data directory and a dinner peak replayed at its real pace —
//! every store's POS sales, scale readings, wastes and deliveries, from one
//! connection per store — while one POS in each of a few probe stores
//! holds its store's availability. What is measured:
//!
//! - change → POS latency under that load: a probe changes a SKU only it
//!   touches (`probe-sku`, one gram per portion of `probe-dish`) in each
//!   probe store at a steady rate; each change is one new revision of
//!   `probe-dish`, timed from its intended send time to the POS's
//!   receiving it (as the `latency` scenario times its changes);
//! - resident memory: at its peak during the load (`VmHWM`), and after a
//!   restart with everything restored;
//! - disk per store-day: what the data directory grew by per input
//!   applied, times the inputs of one store's 12-hour service of the same
//!   load model;
//! - restart: from a `kill -9` after the load to listening, which the
//!   broker does only once every retained document is re-published.
//!
//! The goals (2 cores, 2,000 stores): memory ≤ 2 GiB, restart ≤ 3 s, p99
//! ≤ 15 ms; the report gives each figure's ratio to its goal and how each
//! cost grows per store between the smallest and the largest chain.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;
use tokio::time::{timeout, Instant};

use crate::chain::{Chain, ChainSize, Load};

use super::{bench_client, percentile, Arrivals, Cli, Server, Target};

/// The goals at 2,000 stores.
const GOAL_MEMORY_MIB: f64 = 2048.0;
const GOAL_RESTART_S: f64 = 3.0;
const GOAL_P99_MS: f64 = 15.0;

/// The generator's seed: every run replays the same chain and evening.
const SEED: u64 = 2_000;

/// What one chain size is run with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// SKUs and dishes of every store.
    pub skus: usize,
    pub dishes: usize,
    /// How long the replayed peak lasts.
    pub span: Duration,
    /// Sales per POS per minute at the peak.
    pub sales_per_pos_per_minute: f64,
    /// Probe stores, and probe changes per second over all of them.
    pub probes: usize,
    pub probe_rate: f64,
}

/// One chain size's figures.
#[derive(Debug, Clone)]
struct Figures {
    stores: usize,
    inputs: usize,
    inputs_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    samples: usize,
    missing: usize,
    peak_mib: f64,
    restored_mib: f64,
    first_start_s: f64,
    restart_s: f64,
    bytes_per_input: f64,
    store_day_mib: f64,
}

impl Figures {
    fn json(&self) -> Value {
        serde_json::json!({"stores": self.stores, "inputs": self.inputs, "inputs_per_second": self.inputs_per_second,
            "p50": self.p50_ms, "p99": self.p99_ms, "p999": self.p999_ms, "samples": self.samples, "missing": self.missing,
            "peak_mib": self.peak_mib, "restored_mib": self.restored_mib, "first_start_s": self.first_start_s,
            "restart_s": self.restart_s, "bytes_per_input": self.bytes_per_input, "store_day_mib": self.store_day_mib})
    }
}

/// The chain of `stores` stores with a probe SKU and dish in every store.
fn chain_config(chain: &Chain) -> String {
    let toml = chain.toml("allow_anonymous = true\nmax_publish_rate = 1000000\nmax_connections = 1000000");
    let probe_sku =
        "[[skus]]\nid = \"probe-sku\"\nname = \"probe\"\nunit = \"g\"\nreorder_point = 0\npar = 0\nopening = 1000\n\n";
    let probe_dish = "[[dishes]]\nid = \"probe-dish\"\nname = \"probe\"\nlow_mark = 0\nrecipe = [{ sku = \"probe-sku\", qty = 1 }]\n\n";
    let toml = toml.replacen("[[dishes]]", &format!("{probe_sku}[[dishes]]"), 1);
    toml.replacen("[[stores]]", &format!("{probe_dish}[[stores]]"), 1)
}

/// The data directory's size in bytes.
fn disk_bytes(dir: &Path) -> u64 {
    walkdir(dir)
}

fn walkdir(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => walkdir(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A process figure from `/proc/{pid}/status`, in KiB.
fn status_kib(server: &Server, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {field}"))
}

/// One connection per store that sends its inputs; the store's device in
/// each input is the connection's (an anonymous client speaks for itself).
async fn senders(server: &Server, chain: &Chain) -> Result<Vec<(AsyncClient, tokio::task::JoinHandle<()>)>> {
    let mut out = Vec::new();
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    for store in chain.stores() {
        let (client, mut eventloop) = bench_client(&format!("{store}-dev"), server.addr, 10_000);
        let connected = Arc::clone(&connected);
        let task = tokio::spawn(async move {
            // A CONNECT refused while thousands open at once is tried
            // again, as a device would; once connected, an error ends it.
            let open = |ev: &Event| matches!(ev, Event::Incoming(Packet::ConnAck(_)));
            if crate::until_connected(&mut eventloop, open).await.is_ok() {
                connected.add_permits(1);
                while eventloop.poll().await.is_ok() {}
            }
        });
        out.push((client, task));
    }
    timeout(Duration::from_secs(120), connected.acquire_many(out.len() as u32))
        .await
        .map_err(|_| anyhow!("the stores' connections did not open"))??
        .forget();
    Ok(out)
}

/// The POS of each probe store, holding its store's availability: the
/// arrivals of `probe-dish`, and its revision when the POS had it all.
async fn probe_pos(
    server: &Server,
    stores: &[String],
) -> Result<(
    Vec<(AsyncClient, tokio::task::JoinHandle<()>)>,
    Arc<Mutex<Vec<Arrivals>>>,
    Vec<u64>,
)> {
    let seen: Arc<Mutex<Vec<Arrivals>>> = Arc::new(Mutex::new(vec![Vec::new(); stores.len()]));
    let base: Arc<Mutex<Vec<Option<u64>>>> = Arc::new(Mutex::new(vec![None; stores.len()]));
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let mut out = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let (client, mut eventloop) = bench_client(&format!("{store}-pos-probe"), server.addr, 100);
        client
            .subscribe(format!("stores/{store}/dishes/+/availability"), QoS::AtLeastOnce)
            .await?;
        let probe = format!("stores/{store}/dishes/probe-dish/availability");
        let (seen, base, ready) = (Arc::clone(&seen), Arc::clone(&base), Arc::clone(&ready));
        out.push((
            client,
            tokio::spawn(async move {
                while let Ok(ev) = eventloop.poll().await {
                    let Event::Incoming(Packet::Publish(p)) = ev else {
                        continue;
                    };
                    if p.topic != probe {
                        continue;
                    }
                    let now = Instant::now();
                    let rev = serde_json::from_slice::<Value>(&p.payload)
                        .ok()
                        .and_then(|v| v["rev"].as_u64())
                        .unwrap_or(0);
                    let first = base.lock().map(|mut b| b[i].replace(rev).is_none()).unwrap_or(false);
                    if first {
                        ready.add_permits(1);
                    } else if let Ok(mut seen) = seen.lock() {
                        seen[i].push((rev, now));
                    }
                }
            }),
        ));
    }
    timeout(Duration::from_secs(120), ready.acquire_many(stores.len() as u32))
        .await
        .map_err(|_| anyhow!("the probe POS did not get their availability"))??
        .forget();
    let base = base
        .lock()
        .map_err(|_| anyhow!("lock"))?
        .iter()
        .map(|b| b.unwrap_or(0))
        .collect();
    Ok((out, seen, base))
}

/// Replays `load` at its pace from `start` on the stores' connections,
/// with `probes` probe changes per store interleaved (probe store `i`
/// changes at `probe_rate` / stores per second): how late the sends went
/// out, p99 ms. From a thread of its own (tokio's timer wakes on whole
/// milliseconds).
fn replay(
    load: Vec<Load>,
    stores: Vec<String>,
    clients: Vec<AsyncClient>,
    probe_stores: Vec<usize>,
    probe_rate: f64,
    probe_events: u64,
    start: std::time::Instant,
) -> Result<f64> {
    // Everything to send, in time order: the load, then the probes.
    let mut sends: Vec<(Duration, usize, String, QoS, Vec<u8>)> = Vec::with_capacity(load.len());
    let index: std::collections::HashMap<&str, usize> =
        stores.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    for l in &load {
        let store = l.topic.split('/').nth(1).unwrap_or_default();
        let Some(&i) = index.get(store) else {
            continue;
        };
        let mut body = l.body.clone();
        if body.get("device").is_some() {
            body["device"] = Value::from(format!("{store}-dev"));
        }
        let qos = if l.topic.ends_with("/weight") {
            QoS::AtMostOnce
        } else if l.topic.ends_with("/events") {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        sends.push((
            Duration::from_millis(l.at as u64),
            i,
            l.topic.clone(),
            qos,
            serde_json::to_vec(&body)?,
        ));
    }
    for k in 1..=probe_events {
        let p = probe_stores[(k as usize) % probe_stores.len()];
        let store = &stores[p];
        let at = Duration::from_secs_f64(k as f64 / probe_rate);
        let stamp = dishsync_protocol::payload::Timestamp::now().0 + at.as_millis() as i64;
        let body = serde_json::json!({"id": format!("probe-{k}"), "kind": if (k / probe_stores.len() as u64).is_multiple_of(2) { "receive" } else { "consume" },
            "qty": 1, "unit": "g", "at": dishsync_protocol::payload::Timestamp(stamp).to_string(), "device": format!("{store}-dev")});
        sends.push((
            at,
            p,
            format!("stores/{store}/stock/probe-sku/events"),
            QoS::ExactlyOnce,
            serde_json::to_vec(&body)?,
        ));
    }
    sends.sort_by_key(|s| s.0);
    let mut late_ms = Vec::with_capacity(sends.len());
    for (at, i, topic, qos, payload) in sends {
        let due = start + at;
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        late_ms.push(due.elapsed().as_secs_f64() * 1000.0);
        clients[i].try_publish(topic, qos, false, payload)?;
    }
    late_ms.sort_by(f64::total_cmp);
    Ok(percentile(&late_ms, 0.99))
}

/// Runs one chain size.
async fn one(dir: &Path, stores: usize, plan: Plan) -> Result<Figures> {
    let size = ChainSize {
        stores,
        skus: plan.skus,
        dishes: plan.dishes,
        pos_per_store: 4,
        scales_per_store: 2,
    };
    let chain = Chain::generate(size, SEED);
    let config = dir.join(format!("capacity-{stores}.toml"));
    std::fs::write(&config, chain_config(&chain))?;
    let data = dir.join(format!("capacity-{stores}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Server::start(Target::Dishsync, &config, &data)?;
    let first_start = server.started;
    let names: Vec<String> = chain.stores().collect();
    let probes = plan.probes.clamp(1, stores);
    let probe_stores: Vec<usize> = (0..probes).map(|i| i * stores / probes).collect();
    let probe_names: Vec<String> = probe_stores.iter().map(|&i| names[i].clone()).collect();
    let (pos, seen, base) = probe_pos(&server, &probe_names).await?;
    let sending = senders(&server, &chain).await?;
    let disk_before = disk_bytes(&data);

    let start_ms = dishsync_protocol::payload::Timestamp::now().0 + 500;
    let load = chain.service(start_ms, plan.span.as_millis() as i64, plan.sales_per_pos_per_minute);
    let inputs = load.len();
    let probe_events = (plan.probe_rate * plan.span.as_secs_f64()).round().max(1.0) as u64;
    let clients: Vec<AsyncClient> = sending.iter().map(|(c, _)| c.clone()).collect();
    let start = std::time::Instant::now() + Duration::from_millis(500);
    let (load_names, load_probes, rate) = (names.clone(), probe_stores.clone(), plan.probe_rate);
    let late =
        tokio::task::spawn_blocking(move || replay(load, load_names, clients, load_probes, rate, probe_events, start))
            .await??;
    if late > 1.0 {
        eprintln!("dishsync-bench: capacity {stores}: the load went out up to {late:.1} ms late (p99)");
    }
    // Each probe store's changes, at their intended send times; its n-th
    // change is the first document at its base revision + n.
    let mut intended: Vec<Vec<Instant>> = vec![Vec::new(); probes];
    for k in 1..=probe_events {
        intended[(k as usize) % probes]
            .push(Instant::from_std(start) + Duration::from_secs_f64(k as f64 / plan.probe_rate));
    }
    let want: Vec<u64> = intended.iter().map(|sent| sent.len() as u64).collect();
    // Every probe POS has the last probe change (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = seen
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .iter()
            .enumerate()
            .all(|(i, a)| a.last().is_some_and(|(rev, _)| *rev >= base[i] + want[i]));
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ms = Vec::new();
    for (i, arrivals) in seen.lock().map_err(|_| anyhow!("lock"))?.iter().enumerate() {
        let mut arrivals = arrivals.iter().peekable();
        for (n, sent) in intended[i].iter().enumerate() {
            let rev = base[i] + n as u64 + 1;
            while arrivals.next_if(|(r, _)| *r < rev).is_some() {}
            if let Some((_, t)) = arrivals.peek() {
                ms.push(t.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
            }
        }
    }
    ms.sort_by(f64::total_cmp);
    let expected: u64 = want.iter().sum();
    let missing = (expected as usize).saturating_sub(ms.len());
    if ms.is_empty() {
        bail!("capacity {stores}: no probe change reached its POS");
    }
    let peak_kib = status_kib(&server, "VmHWM:")?;
    for (c, t) in pos.into_iter().chain(sending) {
        let _ = c.disconnect().await;
        t.abort();
    }
    let disk_after = disk_bytes(&data);
    // kill -9, then serving again with every retained document back.
    drop(server);
    let server = Server::start(Target::Dishsync, &config, &data)?;
    let restart = server.started;
    let restored_kib = status_kib(&server, "VmRSS:")?;
    // A fresh POS of the last store finds its whole menu.
    {
        let last = names.last().context("a store")?;
        let (c, mut l) = bench_client("capacity-check", server.addr, 100);
        c.subscribe(format!("stores/{last}/dishes/+/availability"), QoS::AtMostOnce)
            .await?;
        let mut dishes = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while dishes < plan.dishes + 1 {
            match timeout(deadline.saturating_duration_since(Instant::now()), l.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => dishes += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!(
                    "capacity {stores}: {dishes} dishes of {} after the restart",
                    plan.dishes + 1
                ),
            }
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    // One store's 12-hour service of the same model, counted.
    let one_store = Chain::generate(ChainSize { stores: 1, ..size }, SEED);
    let day_inputs = one_store
        .service(0, 12 * 3_600_000, plan.sales_per_pos_per_minute)
        .len() as f64;
    let bytes_per_input = disk_after.saturating_sub(disk_before) as f64 / (inputs as u64 + expected) as f64;
    Ok(Figures {
        stores,
        inputs,
        inputs_per_second: inputs as f64 / plan.span.as_secs_f64(),
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        p999_ms: percentile(&ms, 0.999),
        samples: ms.len(),
        missing,
        peak_mib: peak_kib as f64 / 1024.0,
        restored_mib: restored_kib as f64 / 1024.0,
        first_start_s: first_start.as_secs_f64(),
        restart_s: restart.as_secs_f64(),
        bytes_per_input,
        store_day_mib: bytes_per_input * day_inputs / (1024.0 * 1024.0),
    })
}

/// The scenario: each of `sizes` stores in turn, then the slopes.
pub(super) async fn capacity(cli: &Cli, dir: &Path, sizes: &[usize], plan: Plan) -> Result<()> {
    let mut all = Vec::new();
    for &stores in sizes {
        let f = one(dir, stores, plan).await?;
        if f.missing > 0 {
            eprintln!(
                "dishsync-bench: capacity {stores}: {} probe changes never reached their POS within 60 s",
                f.missing
            );
        }
        if !cli.json {
            println!(
                "{:<12} {:>5} stores, {:>6.0} inputs/s: change→POS p50 {:.2} p99 {:.2} p99.9 {:.2} ms ({} samples)   \
                 memory peak {:.0} MiB, restored {:.0} MiB   start {:.2} s, restart {:.2} s   {:.0} B/input, {:.2} MiB per store-day",
                "capacity",
                f.stores,
                f.inputs_per_second,
                f.p50_ms,
                f.p99_ms,
                f.p999_ms,
                f.samples,
                f.peak_mib,
                f.restored_mib,
                f.first_start_s,
                f.restart_s,
                f.bytes_per_input,
                f.store_day_mib
            );
        }
        all.push(f);
    }
    let (small, large) = (all.first().context("a size")?, all.last().context("a size")?);
    let per_store = |a: f64, b: f64| {
        if large.stores > small.stores {
            (b - a) / (large.stores - small.stores) as f64
        } else {
            f64::NAN
        }
    };
    let memory_kib_per_store = per_store(small.peak_mib, large.peak_mib) * 1024.0;
    let restart_ms_per_100 = per_store(small.restart_s, large.restart_s) * 1000.0 * 100.0;
    let ratios = (
        large.peak_mib / GOAL_MEMORY_MIB,
        large.restart_s / GOAL_RESTART_S,
        large.p99_ms / GOAL_P99_MS,
    );
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "capacity", "metric": "stores on one machine", "goal": "2,000 stores: memory ≤ 2 GiB, restart ≤ 3 s, p99 ≤ 15 ms",
                "sizes": all.iter().map(Figures::json).collect::<Vec<_>>(), "stores": large.stores, "p99": large.p99_ms,
                "restart_s": large.restart_s, "peak_mib": large.peak_mib, "memory_kib_per_store": memory_kib_per_store, "restart_ms_per_100_stores": restart_ms_per_100,
                "ratio_to_goal": {"memory": ratios.0, "restart": ratios.1, "p99": ratios.2}})
        );
    } else {
        println!(
            "{:<12} slope from {} to {} stores: memory {memory_kib_per_store:.0} KiB/store, restart {restart_ms_per_100:.0} ms per 100 stores;   \
             at {} stores, of the goal: memory {:.2}, restart {:.2}, p99 {:.2}",
            "capacity", small.stores, large.stores, large.stores, ratios.0, ratios.1, ratios.2
        );
    }
    Ok(())
}
