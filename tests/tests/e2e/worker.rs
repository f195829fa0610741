//! The rules as a worker attached to an external broker: mosquitto, where
//! installed (CI installs it; without it, and outside CI, the test says
//! so). Devices talk to mosquitto only; the worker takes their inputs from
//! it and publishes every output there.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use rumqttc::QoS;
use serde_json::json;

use crate::availability::stock_and_wait;
use crate::support::{
    self, broker_binary, chain_toml, free_addr, lines_of, small_chain, stock_event, temp_data_dir, Client, Process,
    DEADLINE,
};

/// mosquitto for the worker, keeping sessions in memory with no cap on
/// what it queues for the worker's session (README).
fn mosquitto(dir: &Path, addr: SocketAddr) -> Result<Option<Process>> {
    support::mosquitto(
        dir,
        addr,
        "max_queued_messages 0\nmax_inflight_messages 100\n",
        "the worker test",
    )
}

/// `dishsync-broker worker` attached to `external` as `client_id`, once it
/// says it is.
fn worker(config: &Path, data: &Path, external: SocketAddr, client_id: &str) -> Result<Process> {
    let mut child = Command::new(broker_binary())
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--web-listen", "127.0.0.1:0"])
        .args(["worker", "--connect", &external.to_string(), "--client-id", client_id])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the worker")?;
    let lines = lines_of(child.stdout.take().context("no stdout")?);
    let process = Process(child);
    let mut web = None;
    loop {
        match lines.recv_timeout(DEADLINE) {
            Ok(line) if line.starts_with("dishsync-broker attached to") => {
                // Attached and subscribed: the worker says it is ready.
                let web: SocketAddr = web.context("the worker names its web address")?;
                let ready = ureq::get(&format!("http://{web}/readyz"))
                    .call()
                    .context("GET /readyz")?;
                anyhow::ensure!(ready.status() == 200, "the attached worker is not ready");
                return Ok(process);
            }
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("dishsync-broker web on http://") {
                    web = addr.trim().parse().ok();
                }
            }
            Err(_) => bail!("the worker did not attach"),
        }
    }
}

/// Inputs sent while the worker is down: more than its pipeline holds.
const BACKLOG: usize = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_mosquitto_applies_every_input_once_across_a_kill() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let external = free_addr()?;
    let Some(_mosquitto) = mosquitto(tmp.path(), external)? else {
        return Ok(());
    };
    // The worker sends webhooks too: the levels, to a receiver.
    let (receiver, hooks) = crate::webhooks::Receiver::start(false).await?;
    let secret = dishsync_broker::webhooks::Secret::generate()?;
    let config = tmp.path().join("chain.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[webhooks]]\nid = \"levels\"\nurl = \"http://{hooks}/hook\"\nsecret = \"{secret}\"\nkinds = [\"level\"]\n",
            small_chain()
        ),
    )?;
    let mut running = worker(&config, &data, external, "worker-1")?;

    // Devices on mosquitto: a tablet booking fries, a POS watching chips.
    let mut tablet = Client::connect(external, "tablet-1").await?;
    tablet.subscribe("stores/s1/acks/tablet-1", QoS::AtLeastOnce).await?;
    let mut pos = Client::connect(external, "pos-1").await?;
    pos.subscribe("stores/s1/dishes/chips/availability", QoS::AtLeastOnce)
        .await?;
    let receive = |i: usize| {
        (
            "fries",
            stock_event(&format!("r{i}"), "receive", 100.0, "g", "tablet-1"),
        )
    };
    let first: Vec<_> = (0..20).map(receive).collect();
    stock_and_wait(&mut tablet, "s1", "tablet-1", &first).await?;
    let chips = "stores/s1/dishes/chips/availability";
    pos.wait_latest(chips, |d| d["portions"] == json!(10)).await?;

    // The worker dies; inputs keep coming and wait in mosquitto for it:
    // more than the worker takes in at once.
    drop(running);
    let second: Vec<_> = (20..BACKLOG + 20).map(receive).collect();
    for (sku, event) in &second {
        tablet
            .publish_json(&format!("stores/s1/stock/{sku}/events"), event, QoS::ExactlyOnce)
            .await?;
    }
    running = worker(&config, &data, external, "worker-1")?;
    stock_and_wait(&mut tablet, "s1", "tablet-1", &second).await?;
    // A device that saw no ack sends again: acknowledged again, not applied again.
    stock_and_wait(&mut tablet, "s1", "tablet-1", &first[..5]).await?;
    // Bad input: refused on the sender's errors topic, nothing applied.
    tablet.subscribe("stores/s1/errors/tablet-1", QoS::AtLeastOnce).await?;
    let wrong_unit = stock_event("bad-1", "receive", 1.0, "ml", "tablet-1");
    tablet
        .publish_json("stores/s1/stock/fries/events", &wrong_unit, QoS::ExactlyOnce)
        .await?;
    let error = tablet.next_on("stores/s1/errors/tablet-1").await?;
    assert_eq!(
        (error["id"].clone(), error["code"].clone()),
        (json!("bad-1"), json!("wrong_unit"))
    );
    let total = (BACKLOG + 20) * 100;
    let done = pos.wait_latest(chips, |d| d["portions"] == json!(total / 200)).await?;
    let mut late = Client::connect(external, "pos-2").await?;
    late.subscribe("stores/s1/stock/fries/level", QoS::AtLeastOnce).await?;
    let level = late.next_on("stores/s1/stock/fries/level").await?;
    assert_eq!(level["qty"], json!(total), "every receive of 100 g once: {level}");
    // Across the kill, the newest level reached the webhook receiver.
    receiver
        .until("the newest fries level", |hits, _| {
            hits.iter().any(|h| {
                serde_json::from_str::<serde_json::Value>(&h.body)
                    .is_ok_and(|b| b["data"]["sku"] == "fries" && b["data"]["qty"] == json!(total))
            })
        })
        .await?;
    assert_eq!(done["status"], json!("available"));
    drop(running);
    Ok(())
}

/// A region of one store, with the central kitchen's planning.
fn region(store: &str) -> String {
    chain_toml(
        &[store],
        &[("patty", "pcs", 2, 10), ("bun", "pcs", 2, 40)],
        &[("burger", 1, vec![("patty", 1), ("bun", 1)])],
    )
    .replace(
        "[broker]\nallow_anonymous = true\n",
        "[broker]\nallow_anonymous = true\n\n[central_kitchen]\nlead_time_minutes = 600\ndelivery_windows = []\n",
    )
}

/// Two workers on one broker, each owning its store: the central kitchen's
/// action on s1's request is applied by s1's worker and passed over by
/// s2's, which neither applies nor refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_each_serve_their_own_stores() -> Result<()> {
    let (tmp, _) = temp_data_dir()?;
    let external = free_addr()?;
    let Some(_mosquitto) = mosquitto(tmp.path(), external)? else {
        return Ok(());
    };
    let mut workers = Vec::new();
    for store in ["s1", "s2"] {
        let config = tmp.path().join(format!("{store}.toml"));
        std::fs::write(&config, region(store))?;
        let data = tmp.path().join(format!("data-{store}"));
        workers.push(worker(&config, &data, external, &format!("worker-{store}"))?);
    }
    let mut kitchen = Client::connect(external, "kitchen-1").await?;
    kitchen.subscribe("hq/replenishment/+", QoS::AtLeastOnce).await?;
    kitchen.subscribe("stores/+/acks/kitchen-1", QoS::AtLeastOnce).await?;
    kitchen.subscribe("stores/+/errors/kitchen-1", QoS::AtLeastOnce).await?;
    let mut manager = Client::connect(external, "manager-1").await?;
    manager.subscribe("stores/s1/acks/manager-1", QoS::AtLeastOnce).await?;
    // Counted at 8, then 7 used: 1 ≤ the reorder point of 2, one request.
    let patty = |id: &str, kind: &str, qty: f64| ("patty", stock_event(id, kind, qty, "pcs", "manager-1"));
    stock_and_wait(
        &mut manager,
        "s1",
        "manager-1",
        &[patty("c1", "count", 8.0), patty("u1", "consume", 7.0)],
    )
    .await?;
    kitchen
        .wait_latest("hq/replenishment/rq-s1-1", |d| d["state"] == json!("open"))
        .await?;

    kitchen
        .publish_json(
            "hq/replenishment/rq-s1-1/acknowledge",
            &json!({"id": "ck-1", "by": "kitchen-1"}),
            QoS::ExactlyOnce,
        )
        .await?;
    kitchen
        .wait_latest("hq/replenishment/rq-s1-1", |d| d["state"] == json!("acknowledged"))
        .await?;
    // A probe only s2's worker takes: its ack comes after anything that
    // worker would have said about the action before it.
    stock_and_wait(
        &mut kitchen,
        "s2",
        "kitchen-1",
        &[("bun", stock_event("probe-1", "receive", 1.0, "pcs", "kitchen-1"))],
    )
    .await?;
    kitchen
        .wait_until("s1's worker acknowledging the action", |seen| {
            seen.iter().any(|m| {
                m.topic == "stores/s1/acks/kitchen-1"
                    && m.json["ids"].as_array().is_some_and(|ids| ids.contains(&json!("ck-1")))
            })
        })
        .await?;
    let errors: Vec<_> = kitchen.seen.iter().filter(|m| m.topic.contains("/errors/")).collect();
    assert!(errors.is_empty(), "{errors:?}");
    drop(workers);
    Ok(())
}
