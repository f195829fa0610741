//! The scenarios of what leaves the broker over HTTP: `ledger` reads one
//! store-day of history from a ledger of millions of lines, next to the
//! same store-day read from a ledger holding only it; `webhooks` drains a
//! queue of signed deliveries into a local receiver, next to the MQTT
//! intake that made them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dishsync_inventory::{EntryKind, LedgerEntry, StockKindCode};
use dishsync_protocol::{EventId, SkuId, StoreId};
use serde_json::Value;

use super::{Cli, Server, Target};

const DAY: i64 = 86_400_000;

/// The chain of the ledger scenario: `stores` stores, 50 SKUs, one dish,
/// an HQ integration with `hash` and no rate limit.
pub(super) fn ledger_chain(stores: usize, hash: &str) -> String {
    let mut out = String::from("[broker]\nallow_anonymous = true\nmax_publish_rate = 1000000\n\n");
    for i in 0..50 {
        out.push_str(&format!(
            "[[skus]]\nid = \"sku-{i}\"\nname = \"sku {i}\"\nunit = \"g\"\nreorder_point = 0\npar = 0\n\n"
        ));
    }
    out.push_str("[[dishes]]\nid = \"dish-0\"\nname = \"dish\"\nrecipe = [{ sku = \"sku-0\", qty = 1 }]\n\n");
    for s in 0..stores {
        out.push_str(&format!("[[stores]]\nid = \"st-{s}\"\nname = \"st {s}\"\n\n"));
    }
    out.push_str(&format!(
        "[web]\nlisten = \"127.0.0.1:0\"\n\n[[integrations]]\nid = \"bench-bi\"\nrole = \"hq\"\n\
         token_sha256 = \"{hash}\"\nmax_requests_per_second = 1000000\n"
    ));
    out
}

/// Writes a ledger of `days` days into `data`, each day `per_day` lines of
/// every one of `stores` stores, interleaved in commit order as a chain's
/// day is; days end on the day before `today`. Written through the store
/// as the rules write it (group commits, checkpoints, the index).
pub(super) async fn write_history(data: &Path, stores: usize, days: usize, per_day: usize, today: i64) -> Result<()> {
    use dishsync_broker::store::Store;
    let store = Store::open(data)?;
    let ids: Vec<StoreId> = (0..stores)
        .map(|s| format!("st-{s}").parse())
        .collect::<Result<_, _>>()?;
    let skus: Vec<SkuId> = (0..50).map(|i| format!("sku-{i}").parse()).collect::<Result<_, _>>()?;
    let by = "pos-1".parse().ok();
    let kinds = [
        EntryKind::Sale,
        EntryKind::Sale,
        EntryKind::Sale,
        EntryKind::Stock(StockKindCode::Receive),
        EntryKind::Stock(StockKindCode::Waste),
    ];
    let lines_per_day = stores * per_day;
    let mut batch = Vec::with_capacity(10_000);
    for day in 0..days {
        let start = today - (days - day) as i64 * DAY;
        for i in 0..lines_per_day {
            let at = start + (i as i64 * DAY) / lines_per_day as i64;
            let kind = kinds[i % kinds.len()];
            let event: EventId = format!("d{day}-{i}").parse()?;
            let mut line = LedgerEntry::new(&ids[i % stores], &skus[(i / stores) % 50], &event, kind, -5, at, true);
            line.by.clone_from(&by);
            line.recorded = Some(at + 40);
            if kind == EntryKind::Stock(StockKindCode::Waste) {
                line.reason = Some("dropped".into());
            }
            batch.push(line);
            if batch.len() == 10_000 {
                let mut commit = store.begin()?;
                commit.ledger(&batch)?;
                store.commit(commit).await?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        let mut commit = store.begin()?;
        commit.ledger(&batch)?;
        store.commit(commit).await?;
    }
    store.checkpoint()?;
    Ok(())
}

/// `reads` reads of `store`'s day before `today` from the broker's web
/// listener, one after another over one keep-alive connection; each must
/// hold `lines` lines. The p50 and p99 in ms.
pub(super) fn read_store_days(
    web: SocketAddr,
    token: &str,
    store: &str,
    today: i64,
    lines: usize,
    reads: usize,
) -> Result<(f64, f64)> {
    let from = dishsync_protocol::payload::Timestamp(today - DAY);
    let to = dishsync_protocol::payload::Timestamp(today);
    let url = format!("http://{web}/api/v1/stores/{store}/ledger?from={from}&to={to}&limit=10000");
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let mut took = Vec::with_capacity(reads);
    for _ in 0..reads {
        let t0 = std::time::Instant::now();
        let answer = agent
            .get(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| anyhow!("GET {url}: {e}"))?;
        let text = answer.into_string()?;
        // Answered in full; checking what came is the client's own time.
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
        let body: Value = serde_json::from_str(&text)?;
        let got = body["lines"].as_array().map_or(0, Vec::len);
        if got != lines {
            bail!("a store-day read gave {got} lines, not {lines}");
        }
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    Ok((at(0.5), at(0.99)))
}

/// Sizes of the ledger scenario.
pub(super) struct LedgerSizes {
    pub stores: usize,
    pub days: usize,
    pub per_day: usize,
    pub reads: usize,
}

/// The `ledger` scenario: one store-day of `per_day` lines read from a
/// ledger of `stores × days × per_day` lines and from one holding only that
/// store-day (the reference), in the same run.
pub(super) async fn ledger(cli: &Cli, dir: &Path, sizes: LedgerSizes) -> Result<()> {
    let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
    // Midnight UTC today: the history is of the days before.
    let today = dishsync_protocol::payload::Timestamp::now().0.div_euclid(DAY) * DAY;
    let mut results = Vec::new();
    for (name, stores, days) in [("big", sizes.stores, sizes.days), ("small", 1, 1)] {
        let config = dir.join(format!("ledger-{name}.toml"));
        std::fs::write(&config, ledger_chain(stores, &hash))?;
        let data = dir.join(format!("ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let t0 = std::time::Instant::now();
        write_history(&data, stores, days, sizes.per_day, today).await?;
        let written = t0.elapsed().as_secs_f64();
        let server = Server::start(Target::Dishsync, &config, &data)?;
        let web = server.web.context("the broker opened no web listener")?;
        let (token, reads, per_day) = (token.clone(), sizes.reads, sizes.per_day);
        let (p50, p99) =
            tokio::task::spawn_blocking(move || read_store_days(web, &token, "st-0", today, per_day, reads)).await??;
        results.push((stores * days * sizes.per_day, p50, p99, written));
        drop(server);
        let _ = std::fs::remove_dir_all(&data);
    }
    let (big, small) = (results[0], results[1]);
    let metric = format!("store-day ({} lines) read, p99", sizes.per_day);
    let goal = "≤ 20 ms";
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "ledger", "metric": metric, "unit": "ms", "goal": goal,
                "ledger_lines": big.0, "p50": big.1, "p99": big.2,
                "reference_lines": small.0, "reference_p50": small.1, "reference_p99": small.2,
                "ratio": big.2 / small.2, "seconds_to_write": big.3})
        );
    } else {
        println!(
            "{:<12} {metric:<38} {} lines {:>8.2} ms (p50 {:.2})   {} lines {:>8.2} ms (p50 {:.2})   ratio {:>5.2}   goal {goal}",
            "ledger",
            big.0,
            big.2,
            big.1,
            small.0,
            small.2,
            small.1,
            big.2 / small.2
        );
    }
    Ok(())
}

/// A receiver of webhook deliveries on a loopback port that holds every
/// request until it is opened, then answers 200, counting what it took.
/// Held rather than refused, the senders wait on their attempts instead of
/// backing off, so the drain that follows measures sending alone.
pub(super) struct Receiver {
    pub gate: tokio::sync::watch::Sender<bool>,
    pub taken: Arc<AtomicUsize>,
    pub addr: SocketAddr,
}

impl Receiver {
    pub async fn start() -> Result<Receiver> {
        let gate = tokio::sync::watch::Sender::new(false);
        let taken = Arc::new(AtomicUsize::new(0));
        let (g, t) = (gate.clone(), taken.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |_body: axum::body::Bytes| {
                let (mut open, t) = (g.subscribe(), t.clone());
                async move {
                    if open.wait_for(|open| *open).await.is_err() {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    t.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { gate, taken, addr })
    }
}

/// The chain of the webhook scenario: one store, `skus` SKUs each with its
/// dish, an endpoint at `receiver` for levels and availability, and an HQ
/// integration with `hash`.
pub(super) fn webhook_chain(skus: usize, receiver: SocketAddr, hash: &str) -> Result<String> {
    let mut out = super::config(skus, skus);
    let secret = dishsync_broker::webhooks::Secret::generate()?;
    out.push_str(&format!(
        "\n[web]\nlisten = \"127.0.0.1:0\"\n\n[[integrations]]\nid = \"bench-bi\"\nrole = \"hq\"\n\
         token_sha256 = \"{hash}\"\nmax_requests_per_second = 1000000\n\n\
         [[webhooks]]\nid = \"bench\"\nurl = \"http://{receiver}/hook\"\nsecret = \"{secret}\"\n\
         kinds = [\"level\", \"availability\"]\nfirst_retry_seconds = 0.05\n"
    ));
    Ok(out)
}

/// The endpoint's pending deliveries, as the API shows them.
pub(super) fn pending(web: SocketAddr, token: &str) -> Result<u64> {
    let answer = ureq::get(&format!("http://{web}/api/v1/webhooks"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()?;
    let body: Value = serde_json::from_str(&answer.into_string()?)?;
    body["webhooks"][0]["pending"]
        .as_u64()
        .ok_or_else(|| anyhow!("no pending count: {body}"))
}

/// Bytes under `dir`, and a copy of it all to `to`: the time the copy took.
fn copy_dir(dir: &Path, to: &Path) -> Result<(u64, f64)> {
    let t0 = std::time::Instant::now();
    let mut bytes = 0;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            bytes += copy_dir(&entry.path(), &target)?.0;
        } else {
            bytes += std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok((bytes, t0.elapsed().as_secs_f64()))
}

/// The `backup` scenario: a backup of a running broker whose ledger holds
/// `stores × per_day` lines (one day), streamed from its web listener to a
/// file, then restored into a new directory; beside it, a plain copy of
/// the stopped data directory, in the same run.
pub(super) async fn backup(cli: &Cli, dir: &Path, stores: usize, per_day: usize) -> Result<()> {
    let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
    let today = dishsync_protocol::payload::Timestamp::now().0.div_euclid(DAY) * DAY;
    let config = dir.join("backup.toml");
    std::fs::write(&config, ledger_chain(stores, &hash))?;
    let data = dir.join(format!("backup-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    write_history(&data, stores, 1, per_day, today).await?;
    let lines = stores * per_day;
    let server = Server::start(Target::Dishsync, &config, &data)?;
    let web = server.web.context("the broker opened no web listener")?;
    let file = dir.join("bench.backup");
    let (to, auth) = (file.clone(), format!("Bearer {token}"));
    let took = tokio::task::spawn_blocking(move || -> Result<f64> {
        let t0 = std::time::Instant::now();
        let answer = ureq::get(&format!("http://{web}/api/v1/admin/backup"))
            .set("Authorization", &auth)
            .call()?;
        let mut out = std::fs::File::create(&to)?;
        std::io::copy(&mut answer.into_reader(), &mut out)?;
        out.sync_all()?;
        Ok(t0.elapsed().as_secs_f64())
    })
    .await??;
    drop(server);
    let size = std::fs::metadata(&file)?.len();
    let restored = dir.join(format!("backup-restored-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&restored);
    let t0 = std::time::Instant::now();
    let summary = dishsync_broker::store::Store::restore(&file, &restored)?;
    let restore = t0.elapsed().as_secs_f64();
    let copy_to = dir.join(format!("backup-copy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy_to);
    let (dir_bytes, copy) = copy_dir(&data, &copy_to)?;
    for d in [&data, &restored, &copy_to] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_file(&file);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let metric = format!("backup of a running broker, {lines} ledger lines");
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "backup", "metric": metric, "unit": "s", "goal": "—",
                "backup_seconds": took, "backup_mib": mib(size), "restore_seconds": restore,
                "records": summary.pairs, "copy_seconds": copy, "directory_mib": mib(dir_bytes),
                "ratio": took / copy})
        );
    } else {
        println!(
            "{:<12} {metric:<38} backup {took:.2} s ({:.1} MiB)   restore {restore:.2} s   copy of the stopped directory {copy:.2} s ({:.1} MiB)   ratio {:.2}",
            "backup",
            mib(size),
            mib(dir_bytes),
            took / copy
        );
    }
    Ok(())
}
