//! Nothing lost, nothing counted twice: concurrent devices publishing at
//! QoS 2 while the broker is killed with SIGKILL and restarted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use dishsync_broker::store::Store;
use rumqttc::QoS;
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio::time::{timeout_at, Instant};

use crate::support::{chain_toml, stock_event, temp_data_dir, BrokerProcess, Client, DEADLINE};

const PUBLISHERS: usize = 4;
const EVENTS_EACH: usize = 500;
/// Kill the broker once this many events are acknowledged.
const KILL_AFTER: usize = 600;

fn qty_of(i: usize) -> i64 {
    1 + (i % 3) as i64
}

struct Progress {
    acked: AtomicUsize,
    acked_qty: [AtomicI64; PUBLISHERS],
    notify: Notify,
}

/// One device with an outbox: publishes its events at QoS 2 and re-sends
/// every event it has no end-to-end ack for, after a reconnect or when acks
/// stop coming.
async fn device(n: usize, mut broker: watch::Receiver<Option<SocketAddr>>, progress: Arc<Progress>) -> Result<()> {
    let device = format!("scale-{n}");
    let sku = format!("sku-{n}");
    let topic = format!("stores/s1/stock/{sku}/events");
    let acks = format!("stores/s1/acks/{device}");
    let mut unacked: BTreeMap<String, usize> = (0..EVENTS_EACH).map(|i| (format!("{device}-{i:04}"), i)).collect();
    // An event is made once; a re-send carries exactly the same content.
    let events: BTreeMap<String, serde_json::Value> = unacked
        .iter()
        .map(|(id, &i)| (id.clone(), stock_event(id, "receive", qty_of(i) as f64, "pcs", &device)))
        .collect();
    let give_up = Instant::now() + DEADLINE * 3;
    while !unacked.is_empty() {
        if Instant::now() > give_up {
            bail!("{device}: {} events never acknowledged", unacked.len());
        }
        let current = *broker.borrow_and_update();
        let addr = match current {
            Some(a) => a,
            None => {
                timeout_at(give_up, broker.changed())
                    .await
                    .map_err(|_| anyhow!("no broker came back"))??;
                continue;
            }
        };
        let Ok(mut client) = Client::connect(addr, &device).await else {
            // The broker is gone; wait until it is back.
            timeout_at(give_up, broker.changed())
                .await
                .map_err(|_| anyhow!("no broker came back"))??;
            continue;
        };
        if client.subscribe(&acks, QoS::AtLeastOnce).await.is_err() {
            continue;
        }
        'resend: loop {
            for id in unacked.keys() {
                let Some(ev) = events.get(id) else { continue };
                if client.publish_json(&topic, ev, QoS::ExactlyOnce).await.is_err() {
                    break 'resend;
                }
            }
            loop {
                if unacked.is_empty() {
                    return Ok(());
                }
                // Acks stopping for a while means lost publishes: re-send.
                match client.recv_until(Instant::now() + Duration::from_secs(10)).await {
                    Ok(Some(m)) if m.topic == acks => {
                        for id in m.json["ids"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str())
                        {
                            if let Some(i) = unacked.remove(id) {
                                progress.acked_qty[n].fetch_add(qty_of(i), Ordering::SeqCst);
                                progress.acked.fetch_add(1, Ordering::SeqCst);
                                progress.notify.notify_one();
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => continue 'resend,
                    Err(_) => break 'resend,
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_counts_nothing_twice() -> Result<()> {
    let skus: Vec<String> = (0..PUBLISHERS).map(|i| format!("sku-{i}")).collect();
    let dishes: Vec<String> = (0..PUBLISHERS).map(|i| format!("dish-{i}")).collect();
    let config = chain_toml(
        &["s1"],
        &skus.iter().map(|s| (s.as_str(), "pcs", 10, 100)).collect::<Vec<_>>(),
        &dishes
            .iter()
            .zip(&skus)
            .map(|(d, s)| (d.as_str(), 1, vec![(s.as_str(), 2)]))
            .collect::<Vec<_>>(),
    );
    let (_tmp, data) = temp_data_dir()?;
    let mut broker = BrokerProcess::start(&config, &data)?;
    let (addr_tx, addr_rx) = watch::channel(Some(broker.addr));
    let progress = Arc::new(Progress {
        acked: AtomicUsize::new(0),
        acked_qty: Default::default(),
        notify: Notify::new(),
    });
    let devices: Vec<_> = (0..PUBLISHERS)
        .map(|n| tokio::spawn(device(n, addr_rx.clone(), Arc::clone(&progress))))
        .collect();

    let deadline = Instant::now() + DEADLINE;
    while progress.acked.load(Ordering::SeqCst) < KILL_AFTER {
        timeout_at(deadline, progress.notify.notified())
            .await
            .map_err(|_| anyhow!("no progress before the kill"))?;
    }
    addr_tx.send_replace(None);
    broker.kill();
    let acked_at_kill = progress.acked.load(Ordering::SeqCst);
    let acked_qty: Vec<i64> = progress.acked_qty.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    assert!(
        acked_at_kill < PUBLISHERS * EVENTS_EACH,
        "the kill came after the stream ended"
    );
    let total_qty: i64 = (0..EVENTS_EACH).map(qty_of).sum();

    // Restart on the same data: retained state is there before any device
    // re-sends, and holds at least everything that was acknowledged.
    let broker = BrokerProcess::start(&config, &data)?;
    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    pos.subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    pos.wait_until("every level and dish", |seen| seen.len() >= 2 * PUBLISHERS)
        .await?;
    for (n, sku) in skus.iter().enumerate() {
        let level = pos
            .latest(&format!("stores/s1/stock/{sku}/level"))
            .cloned()
            .unwrap_or_default();
        let qty = level["qty"].as_i64().unwrap_or(-1);
        assert!(
            qty >= acked_qty[n] && qty <= total_qty,
            "{sku}: {qty} vs acked {} (log:\n{})",
            acked_qty[n],
            broker.log()
        );
        let dish = pos
            .latest(&format!("stores/s1/dishes/dish-{n}/availability"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(dish["portions"], json!(qty / 2), "availability agrees with the level");
    }

    addr_tx.send_replace(Some(broker.addr));
    for d in devices {
        timeout_at(Instant::now() + DEADLINE * 3, d)
            .await
            .map_err(|_| anyhow!("a device never finished"))???;
    }
    for sku in &skus {
        pos.wait_latest(&format!("stores/s1/stock/{sku}/level"), |d| {
            d["qty"] == json!(total_qty)
        })
        .await?;
    }
    drop(pos);
    drop(broker);

    // The ledger holds every event exactly once.
    let store = Store::open(&data)?;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for entry in store.ledger()? {
        *per_id.entry(entry?.event.to_string()).or_default() += 1;
    }
    assert_eq!(per_id.len(), PUBLISHERS * EVENTS_EACH);
    assert!(per_id.values().all(|&c| c == 1), "an event was applied twice");
    eprintln!(
        "killed after {acked_at_kill} acks; all {} events applied once",
        per_id.len()
    );
    Ok(())
}

/// Publishes `event` and waits for its id on the device's acks topic.
async fn applied(client: &mut Client, topic: &str, acks: &str, event: &serde_json::Value) -> Result<()> {
    let id = event["id"].clone();
    client.publish_json(topic, event, QoS::ExactlyOnce).await?;
    client
        .wait_until("the ack", |seen| {
            seen.iter()
                .any(|m| m.topic == acks && m.json["ids"].as_array().is_some_and(|ids| ids.contains(&id)))
        })
        .await?;
    Ok(())
}

/// One flipped bit in an acknowledged, not yet checkpointed journal record
/// with intact records after it: the broker refuses to start and says
/// what to do; `repair` keeps every other record, names the lost input and
/// the SKU to count; the broker then serves the level the later records
/// hold (they rewrote the SKU's whole state), and an intact input sent
/// again still counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_stops_the_broker_and_repair_keeps_every_intact_input() -> Result<()> {
    let config = chain_toml(
        &["s1"],
        &[("sku-0", "pcs", 1, 10)],
        &[("dish-0", 1, vec![("sku-0", 1)])],
    )
    // Nothing reaches sled before the kill: every input is in the journal only.
    .replacen("[broker]\n", "[broker]\ncheckpoint_interval_ms = 86400000\n", 1);
    let (_tmp, data) = temp_data_dir()?;
    let topic = "stores/s1/stock/sku-0/events";
    let acks = "stores/s1/acks/tablet-1";
    let events: Vec<serde_json::Value> = (1..=20)
        .map(|i| stock_event(&format!("rcv-{i}"), "receive", i as f64, "pcs", "tablet-1"))
        .collect();
    let mut broker = BrokerProcess::start(&config, &data)?;
    let mut tablet = Client::connect(broker.addr, "tablet-1").await?;
    tablet.subscribe(acks, QoS::AtLeastOnce).await?;
    for event in &events {
        applied(&mut tablet, topic, acks, event).await?;
    }
    drop(tablet);
    broker.kill();

    // The disk flips one bit in rcv-10's record.
    let journal = data.join("journal");
    let mut segments: Vec<_> = std::fs::read_dir(&journal)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    segments.sort();
    let segment = segments.last().ok_or_else(|| anyhow!("no journal segment"))?;
    let mut bytes = std::fs::read(segment)?;
    let key = b"i/s1/rcv-10";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .ok_or_else(|| anyhow!("rcv-10 is not in the journal"))?;
    bytes[at + key.len() + 4] ^= 0x01;
    std::fs::write(segment, bytes)?;

    let refused = match BrokerProcess::start(&config, &data) {
        Ok(_) => bail!("the broker started on a damaged journal"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("the journal is damaged") && refused.contains("repair"),
        "{refused}"
    );

    let repaired = std::process::Command::new(crate::support::broker_binary())
        .arg("--data-dir")
        .arg(&data)
        .arg("repair")
        .output()?;
    let report = String::from_utf8_lossy(&repaired.stdout);
    assert!(
        repaired.status.success(),
        "repair failed: {report}{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert!(
        report.contains("s1/rcv-10") && report.contains("lost: group commits"),
        "{report}"
    );
    assert!(
        report.contains("count the SKUs") && report.contains("s1/sku-0"),
        "{report}"
    );

    let broker = BrokerProcess::start(&config, &data)?;
    let mut tablet = Client::connect(broker.addr, "tablet-1").await?;
    tablet.subscribe(acks, QoS::AtLeastOnce).await?;
    tablet
        .subscribe("stores/s1/stock/sku-0/level", QoS::AtLeastOnce)
        .await?;
    let all: i64 = (1..=20).sum();
    tablet
        .wait_latest("stores/s1/stock/sku-0/level", |l| l["qty"] == json!(all))
        .await?;
    // An intact input sent again does not count twice; the count the
    // report asks for sets the level.
    applied(&mut tablet, topic, acks, &events[10]).await?;
    applied(
        &mut tablet,
        topic,
        acks,
        &stock_event("count-1", "count", 150.0, "pcs", "tablet-1"),
    )
    .await?;
    let level = tablet
        .wait_latest("stores/s1/stock/sku-0/level", |l| l["qty"] == json!(150))
        .await?;
    assert_eq!(level["qty"], json!(150), "{}", broker.log());
    drop(tablet);
    drop(broker);

    // The ledger: every intact input once, the lost one gone, the count.
    let store = Store::open(&data)?;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for entry in store.ledger()? {
        *per_id.entry(entry?.event.to_string()).or_default() += 1;
    }
    let mut expected: BTreeMap<String, usize> =
        (1..=20).filter(|i| *i != 10).map(|i| (format!("rcv-{i}"), 1)).collect();
    expected.insert("count-1".into(), 1);
    assert_eq!(per_id, expected);
    Ok(())
}

/// A backup taken while 2,000 stock events stream in, restored into a new
/// data directory: the broker started on it holds exactly the state of the
/// backup's moment — its level is what its own ledger adds up to, that
/// ledger the live one's beginning, every input acknowledged before the
/// backup began in it. Restoring over the live directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_mid_stream_restores_the_state_of_its_moment() -> Result<()> {
    use anyhow::Context;
    let (tmp, data) = temp_data_dir()?;
    let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n[[integrations]]\nid = \"ops\"\nrole = \"operator\"\n\
         token_sha256 = \"{hash}\"\nmax_requests_per_second = 1000\n",
        crate::support::small_chain()
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("web")?;
    let mut tablet = Client::connect(broker.addr, "tablet-1").await?;
    tablet.subscribe("stores/s1/acks/tablet-1", QoS::AtLeastOnce).await?;
    tablet.subscribe("stores/s1/stock/bun/level", QoS::AtLeastOnce).await?;
    const EVENTS: usize = 2_000;
    let publisher = tablet.mqtt.clone();
    let streaming = tokio::spawn(async move {
        for i in 0..EVENTS {
            let event = stock_event(&format!("bk-{i}"), "receive", 1.0, "pcs", "tablet-1");
            publisher
                .publish(
                    "stores/s1/stock/bun/events",
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&event)?,
                )
                .await?;
        }
        anyhow::Ok(())
    });
    let acked = |seen: &[crate::support::Received]| -> usize {
        seen.iter()
            .filter(|m| m.topic == "stores/s1/acks/tablet-1")
            .map(|m| m.json["ids"].as_array().map_or(0, Vec::len))
            .sum()
    };
    tablet
        .wait_until("a quarter acknowledged", |seen| acked(seen) >= EVENTS / 4)
        .await?;
    let acked_before = acked(&tablet.seen);
    let file = tmp.path().join("dishsync.backup");
    let (broker_bin, to, address) = (crate::support::broker_binary(), file.clone(), web.to_string());
    let token_for_backup = token.clone();
    let backup = tokio::task::spawn_blocking(move || {
        std::process::Command::new(broker_bin)
            .args(["backup", "--web", &address, "--to"])
            .arg(&to)
            .env("DISHSYNC_TOKEN", token_for_backup)
            .output()
    })
    .await??;
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    streaming.await??;
    tablet
        .wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(EVENTS))
        .await?;

    let restore = |into: &std::path::Path| {
        std::process::Command::new(crate::support::broker_binary())
            .arg("--data-dir")
            .arg(into)
            .arg("restore")
            .arg(&file)
            .output()
    };
    let over_live = restore(&data)?;
    assert!(
        !over_live.status.success(),
        "restoring over the live directory is refused"
    );
    assert!(String::from_utf8_lossy(&over_live.stderr).contains("not empty"));
    let restored = tmp.path().join("restored");
    let done = restore(&restored)?;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    // The live ledger, then the restored broker's.
    let ledger = |web: SocketAddr| bun_ledger(web, &token);
    let live = ledger(web)?;
    assert_eq!(live.len(), EVENTS);
    drop(broker);
    let back = BrokerProcess::start(&config, &restored)?;
    let back_web = back.web_addr.context("web")?;
    let mut watcher = Client::connect(back.addr, "watcher").await?;
    watcher.subscribe("stores/s1/stock/bun/level", QoS::AtLeastOnce).await?;
    let level = watcher.next_on("stores/s1/stock/bun/level").await?;
    let lines = ledger(back_web)?;
    assert_eq!(
        level["qty"],
        json!(lines.len()),
        "the level is what its ledger adds up to"
    );
    assert!(
        lines.len() >= acked_before,
        "{} lines, {acked_before} acknowledged before",
        lines.len()
    );
    assert_eq!(lines[..], live[..lines.len()], "the live ledger's beginning");
    eprintln!(
        "backup: {} of {EVENTS} lines, {acked_before} acknowledged before it began",
        lines.len()
    );
    Ok(())
}

/// The events of s1's bun ledger lines, in order, read over the HTTP API
/// of the broker whose web listener is `web`.
fn bun_ledger(web: SocketAddr, token: &str) -> Result<Vec<String>> {
    use anyhow::Context;
    let answer = ureq::get(&format!("http://{web}/api/v1/stores/s1/ledger?sku=bun&limit=10000"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()?
        .into_string()?;
    let page: serde_json::Value = serde_json::from_str(&answer)?;
    Ok(page["lines"]
        .as_array()
        .context("lines")?
        .iter()
        .filter_map(|l| l["event"].as_str().map(str::to_string))
        .collect())
}

/// History past its retention is compacted while the broker runs: the old
/// ledger lines go, every level stays, and the ids inside their window
/// still answer a replay as a duplicate — across a kill -9 and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_drops_old_history_and_no_level_moves() -> Result<()> {
    use anyhow::Context;
    use std::collections::BTreeMap;
    let (_tmp, data) = temp_data_dir()?;
    let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
    // Ledger lines older than about a second go, checked every 0.6 s; ids
    // are kept their default 35 days.
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n[[integrations]]\nid = \"ops\"\nrole = \"operator\"\n\
         token_sha256 = \"{hash}\"\nmax_requests_per_second = 1000\n\n\
         [retention]\nledger_days = 0.00001\ncompact_every_minutes = 0.01\n",
        crate::support::small_chain()
    );
    let mut broker = BrokerProcess::start(&config, &data)?;
    let scrape = |web: std::net::SocketAddr| -> Result<BTreeMap<String, f64>> {
        let (status, page) = crate::web::get(&format!("http://{web}/metrics"))?;
        anyhow::ensure!(status == 200, "{status}: {page}");
        crate::web::parse_metrics(&page)
    };
    let connect = |addr| async move {
        let mut tablet = Client::connect(addr, "tablet-1").await?;
        for topic in [
            "stores/s1/acks/tablet-1",
            "stores/s1/errors/tablet-1",
            "stores/s1/stock/bun/level",
        ] {
            tablet.subscribe(topic, QoS::AtLeastOnce).await?;
        }
        anyhow::Ok(tablet)
    };
    let mut tablet = connect(broker.addr).await?;
    const EACH: usize = 40;
    let batch = |name: &str| -> Vec<(&'static str, serde_json::Value)> {
        (0..EACH)
            .map(|i| {
                (
                    "bun",
                    stock_event(&format!("{name}-{i}"), "receive", 1.0, "pcs", "tablet-1"),
                )
            })
            .collect()
    };
    // The first batch, then a kill -9: the restart replays it into pages of
    // its own; then a second batch.
    let old = batch("old");
    crate::availability::stock_and_wait(&mut tablet, "s1", "tablet-1", &old).await?;
    drop(tablet);
    broker.kill();
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("web")?;
    let mut tablet = connect(broker.addr).await?;
    let new = batch("new");
    crate::availability::stock_and_wait(&mut tablet, "s1", "tablet-1", &new).await?;
    let level = tablet
        .wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(2 * EACH))
        .await?;
    // Each compaction that removes anything says so; the first batch's lines
    // go in one of them.
    let removed = "dishsync_compacted_records_total{record=\"ledger_line\"}";
    for compactions in 1.. {
        tokio::task::block_in_place(|| broker.wait_for_log("history compacted", compactions))?;
        if scrape(web)?.get(removed).is_some_and(|n| *n >= EACH as f64) {
            break;
        }
    }
    let kept = bun_ledger(web, &token)?;
    assert!(
        !kept.iter().any(|e| e.starts_with("old-")),
        "the old lines are gone: {kept:?}"
    );

    // Every input again, as it was sent: each is a duplicate, acknowledged
    // a second time.
    let duplicates = "dishsync_inputs_total{transport=\"mqtt\",outcome=\"duplicate\"}";
    assert_eq!(scrape(web)?.get(duplicates).copied().unwrap_or(0.0), 0.0);
    for (sku, event) in old.iter().chain(&new) {
        tablet
            .publish_json(&format!("stores/s1/stock/{sku}/events"), event, QoS::ExactlyOnce)
            .await?;
    }
    let acked = |seen: &[crate::support::Received], id: &str| {
        seen.iter()
            .filter(|m| m.topic == "stores/s1/acks/tablet-1")
            .filter(|m| m.json["ids"].as_array().is_some_and(|ids| ids.iter().any(|x| x == id)))
            .count()
    };
    tablet
        .wait_until("every replay acknowledged", |seen| {
            // The old batch was acknowledged before the restart, on the
            // connection since dropped.
            old.iter()
                .all(|(_, e)| acked(seen, e["id"].as_str().unwrap_or_default()) >= 1)
                && new
                    .iter()
                    .all(|(_, e)| acked(seen, e["id"].as_str().unwrap_or_default()) >= 2)
        })
        .await?;
    let applied = "dishsync_inputs_total{transport=\"mqtt\",outcome=\"applied\"}";
    let counted = scrape(web)?;
    assert_eq!(
        counted.get(duplicates).copied(),
        Some((2 * EACH) as f64),
        "every replay a duplicate"
    );
    assert_eq!(
        counted.get(applied).copied(),
        Some(EACH as f64),
        "nothing applied twice since the restart"
    );
    assert!(
        tablet.all_on("stores/s1/errors/tablet-1").is_empty(),
        "no replay refused"
    );
    assert_eq!(
        tablet.latest("stores/s1/stock/bun/level"),
        Some(&level),
        "the level did not move"
    );

    // After a restart: the same level, the ids still known, and the ledger
    // numbers going on.
    drop(tablet);
    drop(broker);
    let broker = BrokerProcess::start(&config, &data)?;
    let mut tablet = Client::connect(broker.addr, "tablet-1").await?;
    tablet.subscribe("stores/s1/acks/tablet-1", QoS::AtLeastOnce).await?;
    tablet.subscribe("stores/s1/stock/bun/level", QoS::AtLeastOnce).await?;
    let restored = tablet.next_on("stores/s1/stock/bun/level").await?;
    assert_eq!(restored["qty"], level["qty"]);
    assert_eq!(restored["rev"], level["rev"]);
    let (sku, first) = &old[0];
    tablet
        .publish_json(&format!("stores/s1/stock/{sku}/events"), first, QoS::ExactlyOnce)
        .await?;
    crate::availability::stock_and_wait(
        &mut tablet,
        "s1",
        "tablet-1",
        &[("bun", stock_event("after", "receive", 1.0, "pcs", "tablet-1"))],
    )
    .await?;
    tablet
        .wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(2 * EACH + 1))
        .await?;
    let web = broker.web_addr.context("web")?;
    let (_, page) = tokio::task::spawn_blocking(move || crate::web::get(&format!("http://{web}/metrics"))).await??;
    let after = crate::web::parse_metrics(&page)?;
    assert_eq!(after.get(duplicates), Some(&1.0), "the replay after the restart");
    assert_eq!(after.get(applied), Some(&1.0), "only the new input");
    Ok(())
}
