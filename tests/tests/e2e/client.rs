//! The device client and the `dishsync` CLI against the real broker: the
//! outbox delivers every recorded event exactly once and in order, whatever
//! happens to the network, the broker or the client process.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dishsync_broker::store::Store;
use dishsync_client::{Client, ClientConfig, Update};
use dishsync_protocol::payload::StockKind;
use dishsync_protocol::{EventId, Unit};
use serde_json::{json, Value};
use tokio::time::{timeout_at, Instant};

use crate::support::{
    cli_binary, free_addr, lines_of, small_chain, temp_data_dir, BrokerProcess, Client as Mqtt, Watcher, DEADLINE,
};

fn config(addr: std::net::SocketAddr, device: &str, outbox: &Path) -> Result<ClientConfig> {
    let mut c = ClientConfig::new(
        addr.ip().to_string(),
        addr.port(),
        "s1".parse()?,
        device.parse()?,
        outbox.into(),
    );
    c.max_backoff = Duration::from_millis(300);
    c.ack_timeout = Duration::from_secs(5);
    Ok(c)
}

/// The ledger's event ids, in commit order, for events of `device`'s ids.
fn ledger_ids(data: &Path) -> Result<Vec<String>> {
    let store = Store::open(data)?;
    let mut ids = Vec::new();
    for entry in store.ledger()? {
        ids.push(entry?.event.to_string());
    }
    Ok(ids)
}

fn assert_each_once(ledger: &[String], recorded: &[EventId]) {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for id in ledger {
        *count.entry(id.as_str()).or_default() += 1;
    }
    for id in recorded {
        assert_eq!(
            count.get(id.as_str()),
            Some(&1),
            "event {id} applied {:?} times",
            count.get(id.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorded_while_the_broker_is_down_are_applied_once_and_in_order() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let addr = free_addr()?;
    let (client, _updates) = Client::start(config(addr, "tablet-1", &tmp.path().join("outbox"))?)?;
    let mut recorded = Vec::new();
    for i in 0..500 {
        let kind = if i % 5 == 4 {
            StockKind::Consume
        } else {
            StockKind::Receive
        };
        recorded.push(client.record_stock(&"fries".parse()?, kind, (10 + i % 7) as f64, Unit::G, None, None)?);
    }
    assert_eq!(client.outbox_len(), 500);
    assert!(!client.is_connected());

    let broker = BrokerProcess::start_on(&small_chain(), &data, addr)?;
    assert_eq!(
        client.drain(DEADLINE).await,
        0,
        "outbox drained; broker log:\n{}",
        broker.log()
    );
    let expected: i64 = (0..500)
        .map(|i| if i % 5 == 4 { -(10 + i % 7) } else { 10 + i % 7 })
        .sum();
    let mut pos = Mqtt::connect(broker.addr, "pos-check").await?;
    pos.subscribe("stores/s1/stock/fries/level", rumqttc::QoS::AtLeastOnce)
        .await?;
    pos.wait_latest("stores/s1/stock/fries/level", |d| d["qty"] == json!(expected))
        .await?;
    client.shutdown(Duration::from_secs(5)).await;
    drop(pos);
    drop(broker);

    let ledger = ledger_ids(&data)?;
    assert_each_once(&ledger, &recorded);
    let order: Vec<&str> = ledger.iter().map(String::as_str).collect();
    let want: Vec<&str> = recorded.iter().map(EventId::as_str).collect();
    assert_eq!(order, want, "applied in recording order");
    Ok(())
}

/// A device records faster than the broker lets it publish (a backlog
/// after an outage, or just a busy device): the broker slows it down and
/// every input is applied once, in order; none is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_publish_rate_is_slowed_down_and_loses_nothing() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let chain = small_chain().replace(
        "allow_anonymous = true\n",
        "allow_anonymous = true\nmax_publish_rate = 10\n",
    );
    let broker = BrokerProcess::start(&chain, &data)?;
    let (client, mut updates) = Client::start(config(broker.addr, "tablet-2", &tmp.path().join("outbox"))?)?;
    // Three times the burst of 2 × 10: many times the rate, however slowly
    // this machine applies them.
    let fries = "fries".parse()?;
    let recorded: Vec<EventId> = (0..60)
        .map(|_| client.record_stock(&fries, StockKind::Receive, 1.0, Unit::G, None, None))
        .collect::<Result<_, _>>()?;
    assert_eq!(client.drain(DEADLINE).await, 0, "broker log:\n{}", broker.log());
    while let Ok(update) = updates.try_recv() {
        assert!(!matches!(update, Update::Rejected(_)), "{update:?}");
    }
    assert!(
        broker.log().contains("publishing faster than max_publish_rate"),
        "the device was held back:\n{}",
        broker.log()
    );
    client.shutdown(Duration::from_secs(5)).await;
    drop(broker);
    let ledger = ledger_ids(&data)?;
    let want: Vec<&str> = recorded.iter().map(EventId::as_str).collect();
    assert_eq!(ledger, want, "each once, in recording order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_drains_fully_after_the_broker_is_killed_mid_stream() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let addr = free_addr()?;
    let mut broker = BrokerProcess::start_on(&small_chain(), &data, addr)?;
    let (client, mut updates) = Client::start(config(addr, "scale-3", &tmp.path().join("outbox"))?)?;
    let mut recorded = Vec::new();
    for _ in 0..1000 {
        recorded.push(client.record_stock(&"beef".parse()?, StockKind::Receive, 3.0, Unit::G, None, None)?);
    }
    // Kill once part of the stream is acknowledged.
    let deadline = Instant::now() + DEADLINE;
    let mut acked = 0;
    while acked < 200 {
        match timeout_at(deadline, updates.recv()).await {
            Ok(Some(Update::Acked(ids))) => acked += ids.len(),
            Ok(Some(_)) => {}
            _ => bail!("no acks before the kill"),
        }
    }
    broker.kill();
    assert!(client.outbox_len() > 0, "the kill came after the stream ended");
    let broker = BrokerProcess::start_on(&small_chain(), &data, addr)?;
    assert_eq!(client.drain(DEADLINE).await, 0, "broker log:\n{}", broker.log());
    let mut pos = Mqtt::connect(broker.addr, "pos-check").await?;
    pos.subscribe("stores/s1/stock/beef/level", rumqttc::QoS::AtLeastOnce)
        .await?;
    pos.wait_latest("stores/s1/stock/beef/level", |d| d["qty"] == json!(3000))
        .await?;
    client.shutdown(Duration::from_secs(5)).await;
    drop(pos);
    drop(broker);
    let ledger = ledger_ids(&data)?;
    assert_eq!(ledger.len(), 1000);
    assert_each_once(&ledger, &recorded);
    Ok(())
}

/// Runs the CLI to completion as device `tab-1` of store `s1`.
fn cli(addr: std::net::SocketAddr, outbox: &Path, args: &[&str]) -> Result<(i32, String)> {
    cli_as(addr, "s1", "tab-1", outbox, args)
}

/// Runs the CLI to completion as `device` of `store`: (exit code, stdout).
fn cli_as(
    addr: std::net::SocketAddr,
    store: &str,
    device: &str,
    outbox: &Path,
    args: &[&str],
) -> Result<(i32, String)> {
    let out = Command::new(cli_binary())
        .args([
            "--broker",
            &addr.to_string(),
            "--store",
            store,
            "--device",
            device,
            "--wait",
            "30",
        ])
        .arg("--outbox")
        .arg(outbox)
        .args(args)
        .output()
        .context("running dishsync")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Starts the CLI and kills it with SIGKILL as soon as it has printed
/// `recorded <id>` — after the outbox write, before (or while) it waits for
/// the ack. Returns the id.
fn record_then_kill(addr: std::net::SocketAddr, outbox: &Path, args: &[&str]) -> Result<String> {
    let mut child = Command::new(cli_binary())
        .args(["--broker", &addr.to_string(), "--store", "s1", "--device", "tab-1"])
        .arg("--outbox")
        .arg(outbox)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines = lines_of(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
    let deadline = std::time::Instant::now() + DEADLINE;
    let id = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .map_err(|_| anyhow!("the CLI never recorded"))?;
        if let Some(id) = line.strip_prefix("recorded ") {
            break id.to_string();
        }
    };
    child.kill()?;
    child.wait()?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_before_its_ack_gets_its_events_applied_once() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let outbox = tmp.path().join("outbox");
    let addr = free_addr()?;
    // Killed while the broker is down: surely before any ack.
    let mut ids = vec![record_then_kill(
        addr,
        &outbox,
        &["stock", "receive", "fries", "100", "g"],
    )?];
    let broker = BrokerProcess::start_on(&small_chain(), &data, addr)?;
    // Killed while the broker is up: before or after the ack, by chance.
    for qty in ["200", "300", "400"] {
        ids.push(record_then_kill(
            addr,
            &outbox,
            &["stock", "receive", "fries", qty, "g"],
        )?);
    }
    let (code, out) = cli(addr, &outbox, &["outbox", "flush"])?;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(addr, &outbox, &["outbox", "status"])?;
    assert_eq!(code, 0);
    assert!(out.starts_with("0 message(s) wait"), "{out}");

    let mut pos = Mqtt::connect(broker.addr, "pos-check").await?;
    pos.subscribe("stores/s1/stock/fries/level", rumqttc::QoS::AtLeastOnce)
        .await?;
    pos.wait_latest("stores/s1/stock/fries/level", |d| d["qty"] == json!(1000))
        .await?;
    drop(pos);
    drop(broker);
    let recorded: Vec<EventId> = ids.iter().map(|i| i.parse()).collect::<Result<_, _>>()?;
    assert_each_once(&ledger_ids(&data)?, &recorded);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_json_shows_a_scripted_service_in_order() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let addr = broker.addr;
    let mut watcher = Watcher::start(
        addr,
        &tmp.path().join("watch"),
        &["--store", "s1", "--device", "manager-1", "watch", "availability"],
    )?;
    let mut chips_status = |want: &str| -> Result<Value> {
        let v = watcher.next(&format!("chips {want}"), |v| {
            v["type"] == "availability" && v["data"]["dish"] == "chips"
        })?;
        assert_eq!(v["data"]["status"], want, "chips changes in order: {v}");
        Ok(v)
    };
    let first = chips_status("sold_out")?;
    let outbox = tmp.path().join("outbox");
    let steps: [(&[&str], &str); 4] = [
        (&["stock", "receive", "fries", "2", "kg"], "available"),
        (&["sell", "chips:9"], "low"),
        (&["86", "chips", "--note", "fryer down"], "sold_out"),
        (&["release", "chips"], "low"),
    ];
    let mut revs = vec![first["data"]["rev"].as_u64().unwrap_or(0)];
    for (i, (args, want)) in steps.iter().enumerate() {
        let (code, out) = cli(addr, &outbox, args)?;
        assert_eq!(code, 0, "step {i}: {out}");
        let v = chips_status(want)?;
        let overridden = v["data"]["override"] != Value::Null;
        assert_eq!(overridden, i == 2, "step {i}: {v}");
        revs.push(v["data"]["rev"].as_u64().unwrap_or(0));
    }
    assert!(
        revs.windows(2).all(|w| w[1] == w[0] + 1),
        "one rev per change: {revs:?}"
    );
    Ok(())
}

#[test]
fn cli_argument_errors_exit_2() -> Result<()> {
    let cases: &[&[&str]] = &[
        &["stock", "receive", "fries", "abc", "kg"],
        &["stock", "receive", "fries", "1", "ounces"],
        &["stock", "steal", "fries", "1", "kg"],
        &["--store", "Down Town", "sell", "fries"],
        &["sell"],
        &["sell", "fries:0"],
        &["86", "chips", "--until", "tonight"],
        &["teleport"],
    ];
    for args in cases {
        let out = Command::new(cli_binary()).args(*args).output()?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?}: says why");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_reports_every_input_acknowledged() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    // s2 is a training store; s1 is a real one.
    let config = small_chain().replace(
        "[[stores]]\nid = \"s2\"\nname = \"s2\"\n",
        "[[stores]]\nid = \"s2\"\nname = \"s2\"\ntraining = true\n",
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let sim = [
        "--json",
        "sim",
        "--scales",
        "2",
        "--pos",
        "2",
        "--rate",
        "100",
        "--duration",
        "1",
        "--skus",
        "fries:g,beef:g,bun:pcs",
        "--dishes",
        "burger,chips",
    ];
    // Against a real store it refuses, and writes nothing.
    let out = Command::new(cli_binary())
        .args([
            "--broker",
            &broker.addr.to_string(),
            "--store",
            "s1",
            "--device",
            "tab-1",
            "--outbox",
        ])
        .arg(tmp.path().join("outbox-real"))
        .args(sim)
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("not a demo or training store") && said.contains("--force"),
        "{said}"
    );

    let (code, out) = cli_as(broker.addr, "s2", "tab-1", &tmp.path().join("outbox"), &sim)?;
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(out.lines().last().unwrap_or_default())?;
    assert_eq!(report["recorded"], json!(100), "{report}");
    assert_eq!(report["acknowledged"], json!(100), "{report}");
    assert_eq!(report["rejected"], json!(0), "{report}");
    assert_eq!(report["left"], json!(0), "{report}");
    drop(broker);
    // Every acknowledged input is in the ledger (a sale has one line per
    // ingredient, so count distinct ids), and none of them in s1's.
    let mut ids = std::collections::BTreeSet::new();
    for entry in dishsync_broker::store::Store::open(&data)?.ledger()? {
        let entry = entry?;
        assert_eq!(entry.store.as_str(), "s2", "sim wrote into the real store: {entry:?}");
        ids.insert(entry.event.to_string());
    }
    assert_eq!(ids.len(), 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_transfers_and_replenishment() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&crate::planning::planning_chain(10.0), &data)?;
    let addr = broker.addr;
    let run = |store: &str, device: &str, args: &[&str]| {
        cli_as(addr, store, device, &tmp.path().join(format!("outbox-{device}")), args)
    };
    let mut hq = Mqtt::connect(addr, "hq-view").await?;
    hq.subscribe("stores/+/stock/patty/level", rumqttc::QoS::AtLeastOnce)
        .await?;
    hq.subscribe("hq/replenishment/+", rumqttc::QoS::AtLeastOnce).await?;

    // s1 at 1 patty raises rq-s1-1; the central kitchen works it from the CLI.
    assert_eq!(run("s1", "mgr-1", &["stock", "count", "patty", "1", "pcs"])?.0, 0);
    hq.wait_latest("hq/replenishment/rq-s1-1", |d| d["state"] == json!("open"))
        .await?;
    let (code, out) = run("s1", "kitchen-1", &["--hq", "replenishment", "ack", "rq-s1-1"])?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        run(
            "s1",
            "kitchen-1",
            &["--hq", "replenishment", "ship", "rq-s1-1", "--note", "van at 3"]
        )?
        .0,
        0
    );
    let shipped = hq
        .wait_latest("hq/replenishment/rq-s1-1", |d| d["state"] == json!("shipped"))
        .await?;
    assert_eq!(shipped["reason"], json!("van at 3"));
    let (code, out) = run("s1", "kitchen-1", &["--hq", "replenishment", "ack", "rq-s1-1"])?;
    assert_eq!(code, 1, "acknowledging a shipped request is refused: {out}");
    assert!(out.contains("rejected"), "{out}");

    // A manager asks for patties; s2 gives them.
    assert_eq!(run("s2", "mgr-2", &["stock", "count", "patty", "20", "pcs"])?.0, 0);
    let (code, out) = run("s1", "mgr-1", &["transfer", "request", "patty", "5", "pcs"])?;
    assert_eq!(code, 0, "{out}");
    for verb in ["accept", "dispatch"] {
        let (code, out) = run("s2", "mgr-2", &["transfer", verb, "tr-1"])?;
        assert_eq!(code, 0, "{verb}: {out}");
    }
    let (code, out) = run("s1", "mgr-1", &["transfer", "receive", "tr-1"])?;
    assert_eq!(code, 0, "{out}");
    hq.wait_latest("stores/s1/stock/patty/level", |d| d["qty"] == json!(6))
        .await?;
    hq.wait_latest("stores/s2/stock/patty/level", |d| d["qty"] == json!(15))
        .await?;
    Ok(())
}
