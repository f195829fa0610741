//! The rules as partitioned workers on a real 3-node NATS cluster on
//! loopback (`dishsync_bench::nats`): JetStream, streams replicated three
//! times, an MQTT listener on every node, started and torn down by each
//! test. Node kills, worker kills and pauses, a store claimed twice, TLS
//! and users; and the engine itself carrying QoS 2 and retained documents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use dishsync_bench::nats::{Cluster, Security};
use rumqttc::QoS;
use serde_json::json;
use tokio::time::Instant;

use crate::support::{broker_binary, lines_of, small_chain, stock_event, Client, Process, DEADLINE};

/// One cluster at a time: three servers electing leaders on two cores
/// while another three do is a test of the machine, not of the rules.
pub static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a cluster that takes only TLS and known users asks of clients.
pub struct Secure {
    /// The certificates (the servers' for localhost and 127.0.0.1).
    pub pki: crate::security::Pki,
    /// The users: the workers' first, the devices' last.
    pub users: Vec<(String, String)>,
}

impl Secure {
    fn file(&self, name: &str) -> PathBuf {
        self.pki.dir.path().join(name)
    }

    /// The MQTT client side of the TLS.
    fn tls(&self) -> rumqttc::TlsConfiguration {
        rumqttc::TlsConfiguration::Simple {
            ca: self.pki.ca_pem.clone().into_bytes(),
            alpn: None,
            client_auth: None,
        }
    }
}

/// A test's cluster, the only one running while it lives.
pub struct NatsCluster {
    /// The nodes (killed first when the test ends).
    inner: Cluster,
    /// TLS and users, when the cluster asks for them.
    pub secure: Option<Secure>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for NatsCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.inner
    }
}

impl std::ops::DerefMut for NatsCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.inner
    }
}

impl NatsCluster {
    /// Starts three nodes under `dir` and waits until each serves
    /// JetStream and MQTT works across them.
    pub async fn start(dir: &Path) -> Result<NatsCluster> {
        NatsCluster::start_with(dir, None).await
    }

    /// Starts three nodes that take clients (NATS and MQTT) only over TLS
    /// and only as `secure`'s users.
    pub async fn start_with(dir: &Path, secure: Option<Secure>) -> Result<NatsCluster> {
        let turn = TURN.lock().await;
        let security = secure.as_ref().map(|s| Security {
            cert: s.file("server.pem"),
            key: s.file("server.key"),
            ca: s.file("ca.pem"),
            users: s.users.clone(),
        });
        Ok(NatsCluster {
            inner: Cluster::start(dir, security, DEADLINE).await?,
            secure,
            _turn: turn,
        })
    }

    /// An MQTT client of node `i`: as the devices' user over TLS on a
    /// secure cluster.
    pub async fn device(&self, i: usize, client_id: &str) -> Result<Client> {
        let node = self.nodes[i].mqtt;
        let Some(secure) = &self.secure else {
            return connect(node, client_id).await;
        };
        let (user, password) = &secure.users[secure.users.len() - 1];
        let deadline = Instant::now() + DEADLINE;
        loop {
            match Client::connect_with(node, client_id, Some((user, password)), Some(secure.tls())).await {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() > deadline => return Err(e.context(format!("{client_id} on {node}"))),
                Err(_) => {}
            }
        }
    }
}

/// An MQTT 3.1.1 client of `node` (which listens), retrying its CONNECT
/// while the cluster elects: the server answers a CONNECT it cannot serve
/// only after its own lookup of the sessions stream times out, which paces
/// the attempts.
pub async fn connect(node: SocketAddr, client_id: &str) -> Result<Client> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Client::connect(node, client_id).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("{client_id} on {node}"))),
            Err(_) => {}
        }
    }
}

/// The cluster carries QoS 2 across nodes exactly once and a retained
/// document to a subscriber of another node; with one node killed, the
/// other two go on; the node comes back and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_carries_qos_2_and_retained_documents_across_nodes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cluster = NatsCluster::start(tmp.path()).await?;
    let [a, b, c] = [cluster.nodes[0].mqtt, cluster.nodes[1].mqtt, cluster.nodes[2].mqtt];
    let mut pos = connect(c, "pos-1").await?;
    pos.subscribe("stores/s1/sales", QoS::ExactlyOnce).await?;
    let till = connect(a, "till-1").await?;
    for n in 0..20 {
        till.publish_json("stores/s1/sales", &json!({"n": n}), QoS::ExactlyOnce)
            .await?;
    }
    let seen = pos
        .wait_until("twenty sales", |seen| {
            seen.iter().filter(|m| m.topic == "stores/s1/sales").count() >= 20
        })
        .await?;
    let order: Vec<i64> = seen.iter().filter_map(|m| m.json["n"].as_i64()).collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>(), "each once, in order");

    // A retained document published on one node is found on another by a
    // subscriber that comes later. The engine stores it in its own time
    // (a cache, SCALE-NOTES): its owner publishes it again until a new
    // subscriber is handed it, as the workers do on their tick.
    let kitchen = connect(b, "kitchen-1").await?;
    let deadline = Instant::now() + DEADLINE;
    for round in 0.. {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no later subscriber was handed the retained document"
        );
        kitchen
            .mqtt
            .publish(
                "stores/s1/dishes/burger/availability",
                QoS::AtLeastOnce,
                true,
                serde_json::to_vec(&json!({"rev": 7}))?,
            )
            .await?;
        let mut fresh = connect(a, &format!("pos-2-{round}")).await?;
        fresh
            .subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
            .await?;
        let handed = fresh
            .recv_until(Instant::now() + std::time::Duration::from_secs(2))
            .await?;
        if handed.is_some_and(|m| m.json["rev"] == json!(7)) {
            break;
        }
    }

    // Node b dies; a and c go on.
    drop(kitchen);
    cluster.kill_and_fail_over(1).await?;
    let till = connect(a, "till-2").await?;
    till.publish_json("stores/s1/sales", &json!({"n": 20}), QoS::ExactlyOnce)
        .await?;
    pos.wait_until("the sale after the kill", |seen| {
        seen.iter().any(|m| m.json["n"] == json!(20))
    })
    .await?;
    // And it comes back and serves: a subscriber on it gets the document
    // its owner publishes. (A retained document is a cache on this engine,
    // loaded by a restarted node in its own time; owners re-publish.)
    cluster.restart(1).await?;
    let mut late = connect(b, "pos-3").await?;
    late.subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    till.mqtt
        .publish(
            "stores/s1/dishes/burger/availability",
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&json!({"rev": 8}))?,
        )
        .await?;
    late.wait_latest("stores/s1/dishes/burger/availability", |d| d["rev"] == json!(8))
        .await?;
    Ok(())
}

/// A `dishsync-broker cluster` worker process, killed (SIGKILL) on drop.
pub struct Worker {
    process: Process,
    /// Where its log goes.
    log: PathBuf,
    lines: std::sync::mpsc::Receiver<String>,
    /// Its lines so far.
    pub said: Vec<String>,
}

impl Worker {
    /// Starts a worker of `partition` named `name` for the stores of
    /// `config`, attached first to node `node` (then the others), with a
    /// lease of `lease_ms`; its log goes to `{name}.log` beside `data`.
    pub fn start(
        cluster: &NatsCluster,
        config: &Path,
        data: &Path,
        partition: &str,
        name: &str,
        node: usize,
        extra: &[&str],
    ) -> Result<Worker> {
        let order: Vec<usize> = (0..3).map(|k| (node + k) % 3).collect();
        let mut command = Command::new(broker_binary());
        command
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--web-listen", "127.0.0.1:0"])
            .args(["cluster", "--partition", partition, "--worker-id", name])
            .args(["--lease-ms", "3000", "--republish-ms", "2000"])
            .args(extra);
        for &k in &order {
            command
                .args(["--nats", &format!("nats://{}", cluster.nodes[k].client)])
                .args(["--mqtt", &cluster.nodes[k].mqtt.to_string()]);
        }
        if let Some(secure) = &cluster.secure {
            let (user, password) = &secure.users[0];
            command
                .arg("--tls-ca")
                .arg(secure.file("ca.pem"))
                .args(["--username", user])
                .env("DISHSYNC_CLUSTER_PASSWORD", password);
        }
        let log = data.with_file_name(format!("{name}.log"));
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the worker")?;
        let lines = lines_of(child.stdout.take().context("no stdout")?);
        Ok(Worker {
            process: Process(child),
            log,
            lines,
            said: Vec::new(),
        })
    }

    /// Waits (bounded) until the worker says a line starting with `what`.
    pub fn wait_for(&mut self, what: &str) -> Result<String> {
        let deadline = std::time::Instant::now() + DEADLINE;
        if let Some(line) = self.said.iter().find(|l| l.starts_with(what)) {
            return Ok(line.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.said.push(line.clone());
                    if line.starts_with(what) {
                        return Ok(line);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let logged = self.logged();
                    let tail: Vec<&str> = logged.lines().rev().take(8).collect();
                    bail!("the worker never said {what:?}; it logged, last first: {tail:#?}")
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let logged = self.logged();
                    let tail: Vec<&str> = logged.lines().rev().take(8).collect();
                    bail!("the worker stopped before it said {what:?}; it logged, last first: {tail:#?}")
                }
            }
        }
    }

    /// Waits (bounded) until the worker serves its partition.
    pub fn serving(mut self) -> Result<Worker> {
        self.wait_for("dishsync-broker serving partition")?;
        Ok(self)
    }

    /// Waits (bounded) for the worker to exit; its exit status.
    pub fn exited(&mut self) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.process.0.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("the worker did not exit");
            }
            // Its stdout closing is the sign it is going: wait on that.
            if let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_millis(200)) {
                self.said.push(line);
            }
        }
    }

    /// What the worker logged.
    pub fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the worker logged a line containing `what`,
    /// looking again each time it says something on its standard output
    /// and at the latest every 100 ms.
    pub fn wait_logged(&mut self, what: &str) -> Result<String> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.logged().lines().find(|l| l.contains(what)) {
                return Ok(line.to_string());
            }
            if std::time::Instant::now() > deadline {
                let logged = self.logged();
                let tail: Vec<&str> = logged.lines().rev().take(6).collect();
                bail!("the worker never logged {what:?}; it logged, last first: {tail:#?}");
            }
            if let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_millis(100)) {
                self.said.push(line);
            }
        }
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// `kill -9` of the worker.
    pub fn kill(self) {
        drop(self.process);
    }
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// A device sending stock events to the cluster, as the dishsync client
/// does: every event stays pending until its id comes back on the
/// device's acks topic, and is sent again — over a new connection, to the
/// next node, when its node is gone — until it does.
struct Device {
    name: String,
    node: usize,
    client: Option<Client>,
    /// (store, sku, event) of every event, in order.
    events: Vec<(String, String, serde_json::Value)>,
    acked: std::collections::HashSet<String>,
}

impl Device {
    fn new(name: &str, node: usize, events: Vec<(String, String, serde_json::Value)>) -> Device {
        Device {
            name: name.into(),
            node,
            client: None,
            events,
            acked: Default::default(),
        }
    }

    /// Connects to its node (or the next live one) and subscribes to its
    /// acks in every store.
    async fn connect(&mut self, cluster: &NatsCluster) -> Result<()> {
        while !cluster.is_up(self.node % 3) {
            self.node += 1;
        }
        let acks = format!("stores/+/acks/{}", self.name);
        self.client = Some(subscribed(cluster, self.node % 3, &self.name, &[&acks]).await?);
        Ok(())
    }

    /// Sends the events from `from` to `to` not yet acknowledged; a
    /// connection that is gone is dropped, to be made again.
    async fn send(&mut self, from: usize, to: usize) {
        let Some(client) = self.client.as_ref() else {
            return;
        };
        for (store, sku, event) in &self.events[from..to] {
            let id = event["id"].as_str().unwrap_or_default();
            if !self.acked.contains(id)
                && client
                    .publish_json(&format!("stores/{store}/stock/{sku}/events"), event, QoS::ExactlyOnce)
                    .await
                    .is_err()
            {
                self.client = None;
                return;
            }
        }
    }

    /// Takes in what came; false when the connection is gone.
    async fn drain(&mut self, until: Instant) -> bool {
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        loop {
            match client.recv_until(until).await {
                Ok(Some(m)) => {
                    for id in m.json["ids"].as_array().into_iter().flatten() {
                        if let Some(id) = id.as_str() {
                            self.acked.insert(id.to_string());
                        }
                    }
                    if self.acked.len() == self.events.len() {
                        return true;
                    }
                }
                Ok(None) => return true,
                Err(_) => {
                    self.client = None;
                    return false;
                }
            }
        }
    }

    fn done(&self) -> bool {
        self.acked.len() == self.events.len()
    }
}

/// Sends every device's events not yet acknowledged until each is, over
/// whichever node is up (bounded by the deadline): a round sends what is
/// pending, then takes acks in until a round of `patience` brings none.
async fn until_all_acknowledged(cluster: &NatsCluster, devices: &mut [Device]) -> Result<()> {
    let deadline = Instant::now() + DEADLINE * 3;
    let patience = std::time::Duration::from_secs(5);
    while devices.iter().any(|d| !d.done()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "unacknowledged events remain: {:?}",
            devices
                .iter()
                .map(|d| d.events.len() - d.acked.len())
                .collect::<Vec<_>>()
        );
        for device in devices.iter_mut().filter(|d| !d.done()) {
            if device.client.is_none() {
                device.connect(cluster).await?;
            }
            let n = device.events.len();
            device.send(0, n).await;
        }
        loop {
            let before: usize = devices.iter().map(|d| d.acked.len()).sum();
            let until = Instant::now() + patience;
            for device in devices.iter_mut() {
                device.drain(until).await;
            }
            let after: usize = devices.iter().map(|d| d.acked.len()).sum();
            if after == before || devices.iter().all(Device::done) {
                break;
            }
        }
    }
    Ok(())
}

/// A client of node `i` subscribed to `filters`. While the cluster elects,
/// the node may refuse a subscription or drop the connection: connected
/// again until it takes them all (bounded).
async fn subscribed(cluster: &NatsCluster, i: usize, client_id: &str, filters: &[&str]) -> Result<Client> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut client = cluster.device(i, client_id).await?;
        let mut taken = Ok(());
        for filter in filters {
            taken = client.subscribe(filter, QoS::AtLeastOnce).await;
            if taken.is_err() {
                break;
            }
        }
        match taken {
            Ok(()) => return Ok(client),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("{client_id} on node {i}"))),
            Err(_) => {}
        }
    }
}

/// Events of `device`: `count` receives of 1 g of fries, alternately in
/// s1 and s2.
fn receives(device: &str, count: usize) -> Vec<(String, String, serde_json::Value)> {
    (0..count)
        .map(|n| {
            let store = if n % 2 == 0 { "s1" } else { "s2" };
            let event = stock_event(&format!("{device}-{n}"), "receive", 1.0, "g", device);
            (store.to_string(), "fries".to_string(), event)
        })
        .collect()
}

/// The fries each store received, by the devices' events.
fn fries_of(devices: &[Device], store: &str) -> usize {
    devices
        .iter()
        .flat_map(|d| &d.events)
        .filter(|(s, _, _)| s == store)
        .count()
}

/// A fresh subscriber on every node finds the level `qty` of fries in each
/// store, and the whole-menu and chips documents that go with it: the
/// retained documents after recovery.
async fn every_node_shows(cluster: &NatsCluster, expected: &[(&str, usize)]) -> Result<()> {
    for i in 0..cluster.nodes.len() {
        let mut fresh = subscribed(
            cluster,
            i,
            &format!("fresh-pos-{i}"),
            &["stores/+/stock/fries/level", "stores/+/dishes/chips/availability"],
        )
        .await?;
        for (store, qty) in expected {
            // The opening count the small chain starts with is 0 g.
            fresh
                .wait_latest(&format!("stores/{store}/stock/fries/level"), |d| d["qty"] == json!(qty))
                .await
                .with_context(|| format!("node {i}: {store}'s fries level of {qty} g"))?;
            fresh
                .wait_latest(&format!("stores/{store}/dishes/chips/availability"), |d| {
                    d["portions"] == json!(qty / 200)
                })
                .await
                .with_context(|| format!("node {i}: {store}'s chips"))?;
        }
    }
    Ok(())
}

/// The configuration of partition `east`: the small chain's two stores.
fn east(dir: &Path) -> Result<PathBuf> {
    let config = dir.join("east.toml");
    std::fs::write(&config, small_chain())?;
    Ok(config)
}

/// 5,000 QoS 2 inputs from devices on all three nodes, one node killed in
/// the middle: every acknowledged input is applied exactly once, and after
/// recovery a fresh subscriber on every node finds the newest documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_inputs_over_three_nodes_are_applied_once_across_a_node_kill() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cluster = NatsCluster::start(tmp.path()).await?;
    let config = east(tmp.path())?;
    let _worker = Worker::start(&cluster, &config, &tmp.path().join("w1"), "east", "w1", 0, &[])?.serving()?;
    let mut devices: Vec<Device> = (0..3)
        .map(|i| {
            let name = format!("tablet-{i}");
            let events = receives(&name, if i == 0 { 1_666 } else { 1_667 });
            Device::new(&name, i, events)
        })
        .collect();
    for device in devices.iter_mut() {
        device.connect(&cluster).await?;
    }
    // The first half, then node 1 dies under the second.
    for device in devices.iter_mut() {
        let half = device.events.len() / 2;
        device.send(0, half).await;
    }
    // Once the worker acknowledges some of them.
    until_some_acknowledged(&mut devices).await?;
    for device in devices.iter_mut() {
        let (half, n) = (device.events.len() / 2, device.events.len());
        device.send(half, n).await;
    }
    // The node leading the partition's log: the worker's appends move
    // to the new leader.
    let victim = cluster
        .leader_of_stream("dishsync-log-east")
        .context("no leader of the log")?;
    cluster.kill_and_fail_over(victim).await?;
    until_all_acknowledged(&cluster, &mut devices).await?;
    let total: usize = devices.iter().map(|d| d.events.len()).sum();
    assert_eq!(total, 5_000);
    cluster.restart(victim).await?;
    let (s1, s2) = (fries_of(&devices, "s1"), fries_of(&devices, "s2"));
    every_node_shows(&cluster, &[("s1", s1), ("s2", s2)]).await?;
    Ok(())
}

/// Who appended each entry of partition `partition`'s log, and its kind,
/// read straight from the cluster.
async fn log_entries(cluster: &NatsCluster, partition: &str) -> Result<Vec<(String, String)>> {
    use futures_util::StreamExt;
    let client = async_nats::connect(cluster.nodes[0].client.to_string()).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(format!("dishsync-log-{partition}")).await?;
    let state = stream.info().await?.state.clone();
    let mut entries = Vec::new();
    if state.messages == 0 {
        return Ok(entries);
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let message = tokio::time::timeout(DEADLINE, messages.next())
            .await
            .context("reading the log")?
            .context("the log ended")??;
        let headers = message.headers.clone().unwrap_or_default();
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string()).unwrap_or_default();
        entries.push((get("Dishsync-Worker"), get("Dishsync-Entry")));
        if message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence >= state.last_sequence {
            return Ok(entries);
        }
    }
}

/// Two devices sending `count` receives each, from nodes 1 and 2.
fn two_devices(count: usize) -> Vec<Device> {
    (1..3)
        .map(|i| {
            let name = format!("tablet-{i}");
            Device::new(&name, i, receives(&name, count))
        })
        .collect()
}

/// Sends the first `part` of each device's events and waits (bounded)
/// until some of them are acknowledged: the worker is in the middle of
/// the stream.
async fn send_part_and_some_acks(cluster: &NatsCluster, devices: &mut [Device], part: usize) -> Result<()> {
    for device in devices.iter_mut() {
        device.connect(cluster).await?;
        device.send(0, part).await;
    }
    until_some_acknowledged(devices).await
}

/// Waits (bounded) until the first device has some of its events
/// acknowledged.
async fn until_some_acknowledged(devices: &mut [Device]) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while devices[0].acked.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no input was acknowledged");
        devices[0]
            .drain(Instant::now() + std::time::Duration::from_millis(200))
            .await;
    }
    Ok(())
}

/// A cluster under `dir` with partition east's two workers: w1 serving,
/// attached to node 0 first, with `extra` arguments, and w2 standing by,
/// attached to node `standby_node` first, with the default ones.
async fn east_with_standby(dir: &Path, standby_node: usize, extra: &[&str]) -> Result<(NatsCluster, Worker, Worker)> {
    let cluster = NatsCluster::start(dir).await?;
    let config = east(dir)?;
    let w1 = Worker::start(&cluster, &config, &dir.join("w1"), "east", "w1", 0, extra)?.serving()?;
    let mut w2 = Worker::start(&cluster, &config, &dir.join("w2"), "east", "w2", standby_node, &[])?;
    w2.wait_for("dishsync-broker standby for partition east")?;
    Ok((cluster, w1, w2))
}

/// `kill -9` of the serving worker in the middle of a stream: the standby
/// takes the partition over, rebuilt from the log; nothing acknowledged is
/// lost or applied twice, and what was sent meanwhile is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_a_killed_workers_partition_over_with_exactly_its_state() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // A snapshot every 5 entries by w1: the standby starts from one. The
    // standby takes none here, so that its takeover entry stays on record.
    let (cluster, mut w1, w2) = east_with_standby(tmp.path(), 2, &["--snapshot-every", "5"]).await?;
    let mut devices = two_devices(600);
    send_part_and_some_acks(&cluster, &mut devices, 300).await?;
    w1.wait_logged("snapshot stored")?;
    w1.kill();
    // Sent while no worker serves: waiting in the stream for the next.
    for device in devices.iter_mut() {
        device.send(300, 600).await;
    }
    let mut w2 = w2.serving()?;
    until_all_acknowledged(&cluster, &mut devices).await?;
    let (s1, s2) = (fries_of(&devices, "s1"), fries_of(&devices, "s2"));
    every_node_shows(&cluster, &[("s1", s1), ("s2", s2)]).await?;
    // w2 rebuilt what w1 committed from w1's snapshot and the entries
    // after it, then fenced the log.
    let read = w2.wait_logged("read the partition's log")?;
    assert!(
        read.contains("snapshot=Some((\"east-"),
        "w2 starts from w1's snapshot: {read}"
    );
    let entries = log_entries(&cluster, "east").await?;
    let w2_took = entries
        .iter()
        .position(|e| *e == ("w2".to_string(), "takeover".to_string()))
        .context("w2 took the log over")?;
    let after: Vec<_> = entries[w2_took..].iter().filter(|(by, _)| by != "w2").collect();
    assert!(after.is_empty(), "{after:?}");
    Ok(())
}

/// A worker paused (SIGSTOP) until its standby took the partition over
/// wakes (SIGCONT) to find the log fenced: it appends nothing and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_that_lost_its_partition_applies_nothing_and_exits() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (cluster, mut w1, w2) = east_with_standby(tmp.path(), 1, &[]).await?;
    let mut devices = two_devices(400);
    send_part_and_some_acks(&cluster, &mut devices, 200).await?;
    // Paused; inputs come meanwhile, some into the pull it had asked for.
    signal(w1.pid(), "STOP")?;
    for device in devices.iter_mut() {
        device.send(200, 400).await;
    }
    let w2 = w2.serving()?;
    let fenced_at = log_entries(&cluster, "east").await?.len();
    signal(w1.pid(), "CONT")?;
    let status = w1.exited()?;
    assert!(
        !status.success(),
        "the woken worker stops with an error: {status}: {}",
        w1.logged()
    );
    let logged = w1.logged();
    assert!(
        logged.contains("another worker") || logged.contains("holds it now"),
        "it says why it stops: {logged}"
    );
    until_all_acknowledged(&cluster, &mut devices).await?;
    let (s1, s2) = (fries_of(&devices, "s1"), fries_of(&devices, "s2"));
    every_node_shows(&cluster, &[("s1", s1), ("s2", s2)]).await?;
    // After w2's takeover, every entry is w2's.
    let entries = log_entries(&cluster, "east").await?;
    let last_takeover = entries
        .iter()
        .rposition(|(_, kind)| kind == "takeover")
        .context("no takeover")?;
    assert_eq!(entries[last_takeover].0, "w2");
    assert!(last_takeover < fenced_at);
    let after: Vec<_> = entries[last_takeover..].iter().filter(|(by, _)| by != "w2").collect();
    assert!(after.is_empty(), "w1 appended after it lost the partition: {after:?}");
    drop(w2);
    Ok(())
}

/// A store already served by one partition is refused to a worker whose
/// configuration puts it in another, and a partition's stores cannot
/// change under it; the serving worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_configured_in_two_partitions_is_refused_by_the_second() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cluster = NatsCluster::start(tmp.path()).await?;
    let config = east(tmp.path())?;
    let _w1 = Worker::start(&cluster, &config, &tmp.path().join("w1"), "east", "w1", 0, &[])?.serving()?;
    let west = tmp.path().join("west.toml");
    std::fs::write(&west, small_chain().replace("\"s1\"", "\"s3\""))?;
    anyhow::ensure!(std::fs::read_to_string(&west)?.contains("\"s3\""), "west has s3");
    let mut w3 = Worker::start(&cluster, &west, &tmp.path().join("w3"), "west", "w3", 1, &[])?;
    assert!(!w3.exited()?.success());
    let logged = w3.logged();
    assert!(
        logged.contains(
            "store s2 belongs to partition east on this cluster; this configuration puts it in partition west"
        ),
        "{logged}"
    );
    // The same stores under east's name, but not east's stores.
    let mut w4 = Worker::start(&cluster, &west, &tmp.path().join("w4"), "east", "w4", 2, &[])?;
    assert!(!w4.exited()?.success());
    assert!(
        w4.logged().contains("partition east holds stores s1,s2"),
        "{}",
        w4.logged()
    );
    // East still serves.
    let mut devices = two_devices(10);
    until_all_acknowledged(&cluster, &mut devices).await?;
    Ok(())
}

/// The fence itself, on the real cluster: once another worker took a
/// partition's log over, the earlier owner's next append is refused and
/// nothing of it lands; the log reads back as the owners left it, an entry
/// larger than a message included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_by_a_worker_that_lost_the_partition_is_refused() -> Result<()> {
    use dishsync_broker::cluster::log::PartitionLog;
    use dishsync_broker::store::Replica;
    let tmp = tempfile::tempdir()?;
    let cluster = NatsCluster::start(tmp.path()).await?;
    let client = async_nats::connect(cluster.nodes[1].client.to_string()).await?;
    let js = async_nats::jetstream::new(client);
    // Parts of at most 64 KiB: a 200 KiB group goes in four.
    let open = |worker: &'static str| PartitionLog::open(&js, "fence", worker, 3, 64 * 1024);
    let pair = |k: &str, v: &[u8]| vec![(k.as_bytes().to_vec(), v.to_vec())];

    let a = open("wa").await?;
    a.take_over(&a.read().await?).await?;
    a.append(vec![pair("k/1", b"from a")])
        .await
        .map_err(anyhow::Error::msg)?;
    let big = pair("k/big", &vec![7u8; 200 * 1024]);
    a.append(vec![big.clone()]).await.map_err(anyhow::Error::msg)?;

    let b = open("wb").await?;
    let read = b.read().await?;
    assert_eq!(read.groups, vec![pair("k/1", b"from a"), big.clone()]);
    assert_eq!(read.owner.as_deref(), Some("wa"));
    b.take_over(&read).await?;

    let refused = a
        .append(vec![pair("k/2", b"from a, too late")])
        .await
        .expect_err("the fenced owner's append is refused");
    assert!(refused.contains("another worker took the partition over"), "{refused}");
    b.append(vec![pair("k/3", b"from b")])
        .await
        .map_err(anyhow::Error::msg)?;

    let c = open("wc").await?;
    let read = c.read().await?;
    assert_eq!(read.groups, vec![pair("k/1", b"from a"), big, pair("k/3", b"from b")]);
    assert_eq!(read.owner.as_deref(), Some("wb"));
    Ok(())
}

/// A cluster that takes only TLS and known users: the worker joins with
/// its credentials over TLS, to NATS and to the MQTT listeners, and
/// serves devices that do the same; a device without them is turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_a_cluster_that_takes_only_tls_and_known_users() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let secure = Secure {
        pki: crate::security::pki()?,
        users: vec![
            ("worker".into(), "worker-secret".into()),
            ("tablet".into(), "tablet-secret".into()),
        ],
    };
    let cluster = NatsCluster::start_with(tmp.path(), Some(secure)).await?;
    let config = east(tmp.path())?;
    let w1 = Worker::start(&cluster, &config, &tmp.path().join("w1"), "east", "w1", 1, &[])?.serving()?;
    assert!(!w1.logged().contains("worker-secret"), "the password is never logged");
    let mut devices = two_devices(20);
    until_all_acknowledged(&cluster, &mut devices).await?;
    every_node_shows(&cluster, &[("s1", 20), ("s2", 20)]).await?;
    let secure = cluster.secure.as_ref().context("secure")?;
    let node = cluster.nodes[0].mqtt;
    assert!(
        Client::connect(node, "stranger-1").await.is_err(),
        "plaintext is refused"
    );
    assert!(
        Client::connect_with(node, "stranger-2", None, Some(secure.tls()))
            .await
            .is_err(),
        "no user, no entry"
    );
    assert!(
        Client::connect_with(node, "stranger-3", Some(("tablet", "guess")), Some(secure.tls()))
            .await
            .is_err(),
        "a wrong password, no entry"
    );
    Ok(())
}
