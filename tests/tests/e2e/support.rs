//! Test support for the end-to-end tests.
//!
//! - [`BrokerProcess`]: the real `dishsync-broker` as a child process on a
//!   free loopback port with its own data directory; killed on drop.
//! - [`Client`]: a real MQTT client (rumqttc) that collects what it
//!   receives and waits for conditions with a deadline — never a sleep.
//! - [`chain_toml`]: small chain configurations written for each test.
//!
//! Invariant: nothing here waits for a fixed time; every wait has a condition
//! and a generous deadline ([`DEADLINE`]) so a loaded machine is slow, not
//! flaky.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

/// How long any single condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The broker binary built alongside these tests.
pub fn broker_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_e2e-broker"))
}

/// The `dishsync` CLI built alongside these tests.
pub fn cli_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_e2e-dishsync"))
}

/// A loopback address with a port that was free a moment ago, for a broker
/// that must come back on the same address after a kill.
pub fn free_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The lines a child process prints, as they come, on a channel (read by
/// a thread until the pipe closes).
pub fn lines_of(stdout: std::process::ChildStdout) -> std_mpsc::Receiver<String> {
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `dishsync --json … watch …` as a child process (killed on drop), and
/// the JSON documents it printed.
pub struct Watcher {
    child: Child,
    lines: std_mpsc::Receiver<String>,
    printed: Vec<Value>,
    /// Where [`Watcher::next`] goes on from.
    read: usize,
}

impl Watcher {
    /// Starts `dishsync --broker ADDR --outbox OUTBOX --json ARGS`, where
    /// `ARGS` (device, store, …) end with the `watch` subcommand.
    pub fn start(addr: SocketAddr, outbox: &Path, args: &[&str]) -> Result<Watcher> {
        let mut child = Command::new(cli_binary())
            .args(["--broker", &addr.to_string(), "--json", "--outbox"])
            .arg(outbox)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning dishsync watch")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        Ok(Watcher {
            child,
            lines: lines_of(stdout),
            printed: Vec::new(),
            read: 0,
        })
    }

    /// A document it printed, at any time, that satisfies `ok` (documents
    /// of one commit group come in no set order).
    pub fn shown(&mut self, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        let at = self.wait(what, 0, ok)?;
        Ok(self.printed[at].clone())
    }

    /// The next document satisfying `ok` after the one `next` returned last.
    pub fn next(&mut self, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        let at = self.wait(what, self.read, ok)?;
        self.read = at + 1;
        Ok(self.printed[at].clone())
    }

    /// Where, from `from` on, the first document satisfying `ok` was
    /// printed, reading more lines until one comes or [`DEADLINE`] passes.
    fn wait(&mut self, what: &str, from: usize, ok: impl Fn(&Value) -> bool) -> Result<usize> {
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut at = from;
        loop {
            while at < self.printed.len() {
                if ok(&self.printed[at]) {
                    return Ok(at);
                }
                at += 1;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("the watch never showed {what}"))?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                self.printed.push(v);
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh temporary directory holding a `data` directory for a broker.
pub fn temp_data_dir() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    Ok((dir, data))
}

/// A running `dishsync-broker` child process.
pub struct BrokerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its TLS listener listens, if configured.
    pub tls_addr: Option<SocketAddr>,
    /// Where its HTTP listener listens, if configured.
    pub web_addr: Option<SocketAddr>,
    /// Its configuration file, if it runs from one.
    pub config: Option<PathBuf>,
    log: PathBuf,
}

impl BrokerProcess {
    /// Starts the broker with `config` (written next to `data_dir`) on a free
    /// loopback port, and waits until it accepts clients.
    pub fn start(config: &str, data_dir: &Path) -> Result<BrokerProcess> {
        BrokerProcess::start_on(config, data_dir, "127.0.0.1:0".parse()?)
    }

    /// Like [`BrokerProcess::start`], on a given address (to come back where
    /// clients expect it after a kill).
    pub fn start_on(config: &str, data_dir: &Path, listen: SocketAddr) -> Result<BrokerProcess> {
        BrokerProcess::launch(config, data_dir, listen)?.listening()
    }

    /// Starts the broker with `config` on a free loopback port and returns
    /// at once, before it listens: for what start-up does on the way.
    pub fn launch(config: &str, data_dir: &Path, listen: SocketAddr) -> Result<StartingBroker> {
        let parent = data_dir.parent().unwrap_or(data_dir);
        let config_path = parent.join("dishsync.toml");
        std::fs::write(&config_path, config).context("writing the config")?;
        let config_arg = [
            std::ffi::OsString::from("--config"),
            config_path.clone().into_os_string(),
        ];
        let mut starting = StartingBroker::spawn(&config_arg, data_dir, listen)?;
        starting.config = Some(config_path);
        Ok(starting)
    }

    /// Starts the built-in demo chain (no configuration file; its dinner
    /// service plays unless `args` say otherwise) on a free loopback port.
    pub fn start_demo(data_dir: &Path, args: &[&str]) -> Result<BrokerProcess> {
        // The demo's web listener is on 8080: a free port here, so demos
        // run side by side.
        let web = ["--web-listen", "127.0.0.1:0"];
        let args: Vec<std::ffi::OsString> = web.iter().chain(args).map(std::ffi::OsString::from).collect();
        StartingBroker::spawn(&args, data_dir, "127.0.0.1:0".parse()?)?.listening()
    }

    /// Sends it SIGHUP: re-read the configuration.
    pub fn hang_up(&self) -> Result<()> {
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .context("running kill -HUP")?;
        anyhow::ensure!(sent.success(), "kill -HUP failed");
        Ok(())
    }

    /// Waits until its log has a line containing `what`, `count` times.
    pub fn wait_for_log(&self, what: &str, count: usize) -> Result<String> {
        wait_for_log_in(&self.log, what, count)
    }

    /// Kills the broker with SIGKILL — no shutdown, no flush — and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until the log at `log` has a line containing `what`, `count`
/// times; the log.
fn wait_for_log_in(log: &Path, what: &str, count: usize) -> Result<String> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(what).count() >= count {
            return Ok(text);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no log line with {what:?} (×{count}); log:\n{text}"
        );
        // A file has no event to wait on: read it again shortly.
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// What a starting broker's stdout announces.
enum Announced {
    /// Its web listener, open before the state is restored.
    Web(SocketAddr),
    /// Its MQTT listener (and TLS listener, if any): it serves.
    Listening(String, Option<SocketAddr>),
}

/// A `dishsync-broker` child process on its way up (killed on drop, unless
/// it became a [`BrokerProcess`]).
pub struct StartingBroker {
    child: Option<Child>,
    log: PathBuf,
    announced: std_mpsc::Receiver<Announced>,
    web_addr: Option<SocketAddr>,
    config: Option<PathBuf>,
}

impl StartingBroker {
    fn spawn(args: &[std::ffi::OsString], data_dir: &Path, listen: SocketAddr) -> Result<StartingBroker> {
        let parent = data_dir.parent().unwrap_or(data_dir);
        let log = parent.join(format!(
            "broker-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let stderr = std::fs::File::create(&log).context("creating the broker log")?;
        let mut child = Command::new(broker_binary())
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .env("RUST_LOG", "info,rmqtt=warn,rmqtt_net=warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning the broker")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, announced) = std_mpsc::channel();
        std::thread::spawn(move || {
            let mut tls = None;
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                let served = line
                    .strip_prefix("dishsync-broker web on http://")
                    .or_else(|| line.strip_prefix("dishsync-broker web on https://"));
                if let Some(web) = served.and_then(|a| a.trim().parse::<SocketAddr>().ok()) {
                    let _ = tx.send(Announced::Web(web));
                }
                if let Some(addr) = line.strip_prefix("dishsync-broker listening on mqtts://") {
                    tls = addr.trim().parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.strip_prefix("dishsync-broker listening on mqtt://") {
                    let _ = tx.send(Announced::Listening(addr.trim().to_string(), tls));
                }
            }
        });
        Ok(StartingBroker {
            child: Some(child),
            log,
            announced,
            web_addr: None,
            config: None,
        })
    }

    /// Its web listener, once it is open.
    pub fn web(&mut self) -> Result<SocketAddr> {
        let deadline = std::time::Instant::now() + DEADLINE;
        while self.web_addr.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.announced.recv_timeout(left) {
                Ok(Announced::Web(web)) => self.web_addr = Some(web),
                Ok(Announced::Listening(..)) | Err(_) => bail!("no web listener; log:\n{}", self.log()),
            }
        }
        self.web_addr.context("a web listener")
    }

    /// Waits until its log has a line containing `what`, `count` times.
    pub fn wait_for_log(&self, what: &str, count: usize) -> Result<String> {
        wait_for_log_in(&self.log, what, count)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it accepts clients.
    pub fn listening(mut self) -> Result<BrokerProcess> {
        let deadline = std::time::Instant::now() + DEADLINE;
        let (addr, tls_addr) = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.announced.recv_timeout(left) {
                Ok(Announced::Web(web)) => self.web_addr = Some(web),
                Ok(Announced::Listening(addr, tls)) => break (addr, tls),
                Err(_) => bail!("broker did not start; log:\n{}", self.log()),
            }
        };
        let child = self.child.take().context("the broker process")?;
        Ok(BrokerProcess {
            child,
            addr: addr.parse().context("parsing the listen address")?,
            tls_addr,
            web_addr: self.web_addr,
            config: self.config.take(),
            log: self.log.clone(),
        })
    }
}

impl Drop for StartingBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message as a client received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The topic.
    pub topic: String,
    /// The payload, parsed as JSON (`Value::Null` if it was not JSON).
    pub json: Value,
    /// The payload as text (for plain-text topics such as presence).
    pub text: String,
}

/// A real MQTT client that records everything it receives.
pub struct Client {
    /// The rumqttc handle.
    pub mqtt: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
    suback: mpsc::UnboundedReceiver<Vec<rumqttc::SubscribeReasonCode>>,
    /// Everything received so far, in order.
    pub seen: Vec<Received>,
}

impl Client {
    /// Connects anonymously as `client_id` and waits for the CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Result<Client> {
        Client::connect_with(addr, client_id, None, None).await
    }

    /// Connects as `device` with its password and waits for the CONNACK.
    pub async fn login(addr: SocketAddr, device: &str, password: &str) -> Result<Client> {
        Client::connect_with(addr, device, Some((device, password)), None).await
    }

    /// Connects with optional credentials and TLS, and waits for the CONNACK.
    pub async fn connect_with(
        addr: SocketAddr,
        client_id: &str,
        credentials: Option<(&str, &str)>,
        tls: Option<rumqttc::TlsConfiguration>,
    ) -> Result<Client> {
        let host = if tls.is_some() {
            "localhost".to_string()
        } else {
            addr.ip().to_string()
        };
        let mut opts = MqttOptions::new(client_id, host, addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_clean_session(true);
        if let Some((user, pass)) = credentials {
            opts.set_credentials(user, pass);
        }
        if let Some(tls) = tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(tls));
        }
        let (mqtt, mut eventloop) = AsyncClient::new(opts, 1024);
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, suback) = mpsc::unbounded_channel();
        let (conn_tx, mut connected) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        if tx
                            .send(Received {
                                topic: p.topic.clone(),
                                json,
                                text,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = conn_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let _ = sub_tx.send(ack.return_codes);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        timeout_at(Instant::now() + DEADLINE, connected.recv())
            .await
            .map_err(|_| anyhow!("{client_id}: no CONNACK"))?
            .ok_or_else(|| anyhow!("{client_id}: connection failed"))?;
        Ok(Client {
            mqtt,
            rx,
            suback,
            seen: Vec::new(),
        })
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        self.mqtt.subscribe(filter, qos).await?;
        let codes = timeout_at(Instant::now() + DEADLINE, self.suback.recv())
            .await
            .map_err(|_| anyhow!("no SUBACK for {filter}"))?
            .ok_or_else(|| anyhow!("connection closed before SUBACK"))?;
        if codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
            bail!("subscription to {filter} refused");
        }
        Ok(())
    }

    /// Publishes a JSON document.
    pub async fn publish_json(&self, topic: &str, body: &Value, qos: QoS) -> Result<()> {
        self.mqtt.publish(topic, qos, false, serde_json::to_vec(body)?).await?;
        Ok(())
    }

    /// Publishes raw bytes.
    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>, qos: QoS) -> Result<()> {
        self.mqtt.publish(topic, qos, false, payload).await?;
        Ok(())
    }

    /// Subscribes to `filter`: `true` if granted, `false` if the broker
    /// refused it.
    pub async fn granted(&mut self, filter: &str) -> Result<bool> {
        match self.subscribe(filter, QoS::AtLeastOnce).await {
            Ok(()) => Ok(true),
            Err(e) if e.to_string().contains("refused") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until `done` holds over everything received so far; returns it.
    pub async fn wait_until(&mut self, what: &str, mut done: impl FnMut(&[Received]) -> bool) -> Result<&[Received]> {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.seen) {
            match timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => self.seen.push(m),
                Ok(None) => bail!("connection closed while waiting for {what}"),
                Err(_) => bail!("timed out waiting for {what}; received {} messages", self.seen.len()),
            }
        }
        Ok(&self.seen)
    }

    /// Waits for the next message on `topic` after those already seen.
    pub async fn next_on(&mut self, topic: &str) -> Result<Value> {
        let start = self.seen.len();
        self.wait_until(topic, |seen| seen[start..].iter().any(|m| m.topic == topic))
            .await?;
        let found = self.seen[start..]
            .iter()
            .find(|m| m.topic == topic)
            .map(|m| m.json.clone());
        found.ok_or_else(|| anyhow!("no message on {topic}"))
    }

    /// The newest document received on `topic`, if any.
    pub fn latest(&self, topic: &str) -> Option<&Value> {
        self.seen.iter().rev().find(|m| m.topic == topic).map(|m| &m.json)
    }

    /// Waits until the newest document on `topic` satisfies `ok`.
    pub async fn wait_latest(&mut self, topic: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        self.wait_until(topic, |seen| {
            seen.iter()
                .rev()
                .find(|m| m.topic == topic)
                .is_some_and(|m| ok(&m.json))
        })
        .await?;
        self.latest(topic)
            .cloned()
            .ok_or_else(|| anyhow!("no message on {topic}"))
    }

    /// Every message received on `topic`.
    pub fn all_on(&self, topic: &str) -> Vec<&Value> {
        self.seen.iter().filter(|m| m.topic == topic).map(|m| &m.json).collect()
    }

    /// Waits up to `deadline` for the next message. `Ok(None)`: nothing came
    /// in time; `Err`: the connection is gone.
    pub async fn recv_until(&mut self, deadline: Instant) -> Result<Option<Received>> {
        match timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(m)) => {
                self.seen.push(m.clone());
                Ok(Some(m))
            }
            Ok(None) => bail!("connection closed"),
            Err(_) => Ok(None),
        }
    }
}

/// A child process killed (SIGKILL) on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// mosquitto on `addr`, anonymous, with `extra` configuration lines,
/// accepting connections. `None` when it is not installed (outside CI;
/// `purpose` names what is skipped).
pub fn mosquitto(dir: &Path, addr: SocketAddr, extra: &str, purpose: &str) -> Result<Option<Process>> {
    // Debian installs it in /usr/sbin, which a user's PATH may lack.
    let Some(binary) = ["mosquitto", "/usr/sbin/mosquitto"]
        .into_iter()
        .find(|b| Command::new(b).arg("-h").output().is_ok())
    else {
        if std::env::var_os("CI").is_some() {
            bail!("mosquitto must be installed in CI");
        }
        eprintln!("mosquitto not installed: skipping {purpose}");
        return Ok(None);
    };
    let conf = dir.join(format!("mosquitto-{}.conf", addr.port()));
    std::fs::write(
        &conf,
        format!(
            "listener {} {}\nallow_anonymous true\nlog_dest stderr\n{extra}",
            addr.port(),
            addr.ip()
        ),
    )?;
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mosquitto")?;
    // Its log goes to standard error, which is not buffered.
    let log = child.stderr.take().context("no stderr")?;
    let process = Process(child);
    // It says so once its listeners are open; its log is read to the end,
    // so that a full pipe never stops it.
    let (running, started) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(|l| l.ok()) {
            if line.contains(" running") {
                let _ = running.send(());
            }
        }
    });
    match started.recv_timeout(DEADLINE) {
        Ok(()) => Ok(Some(process)),
        Err(_) => bail!("mosquitto did not start on {addr}"),
    }
}

/// A SKU line of a test chain: id, base unit, reorder point, par.
pub type TestSku<'a> = (&'a str, &'a str, i64, i64);
/// A dish of a test chain: id, low mark, recipe of (sku, qty per portion).
pub type TestDish<'a> = (&'a str, u64, Vec<(&'a str, i64)>);

/// A chain configuration with anonymous access on, with `stores` that each
/// sell every dish.
pub fn chain_toml(stores: &[&str], skus: &[TestSku], dishes: &[TestDish]) -> String {
    let mut out = String::from("[broker]\nallow_anonymous = true\n\n");
    for (id, unit, rp, par) in skus {
        out.push_str(&format!(
            "[[skus]]\nid = \"{id}\"\nname = \"{id}\"\nunit = \"{unit}\"\nreorder_point = {rp}\npar = {par}\n\n"
        ));
    }
    for (id, low, recipe) in dishes {
        let lines: Vec<String> = recipe
            .iter()
            .map(|(s, q)| format!("{{ sku = \"{s}\", qty = {q} }}"))
            .collect();
        out.push_str(&format!(
            "[[dishes]]\nid = \"{id}\"\nname = \"{id}\"\nlow_mark = {low}\nrecipe = [{}]\n\n",
            lines.join(", ")
        ));
    }
    for s in stores {
        out.push_str(&format!("[[stores]]\nid = \"{s}\"\nname = \"{s}\"\n\n"));
    }
    out
}

/// The small chain most tests use: stores `s1`, `s2`; burgers and fries.
/// `[[devices]]` entries for `devices` (id, role, store: HQ roles have
/// none), each logging in with the password `password` gives it.
pub fn device_entries<R: std::fmt::Display>(
    devices: impl IntoIterator<Item = (&'static str, R, Option<&'static str>)>,
    password: fn(&str) -> String,
) -> Result<String> {
    let mut entries = String::new();
    for (device, role, store) in devices {
        let hash = dishsync_broker::auth::hash_password(&password(device))?;
        entries.push_str(&format!(
            "[[devices]]\nid = \"{device}\"\nrole = \"{role}\"\npassword_hash = \"{hash}\"\n"
        ));
        if let Some(store) = store {
            entries.push_str(&format!("store = \"{store}\"\n"));
        }
        entries.push('\n');
    }
    Ok(entries)
}

pub fn small_chain() -> String {
    chain_toml(
        &["s1", "s2"],
        &[
            ("bun", "pcs", 4, 20),
            ("beef", "g", 600, 3000),
            ("fries", "g", 1000, 5000),
        ],
        &[
            ("burger", 1, vec![("bun", 1), ("beef", 150)]),
            ("double", 1, vec![("bun", 1), ("beef", 300)]),
            ("chips", 2, vec![("fries", 200)]),
        ],
    )
}

/// A stock event document, stamped now (as a device would).
pub fn stock_event(id: &str, kind: &str, qty: f64, unit: &str, device: &str) -> Value {
    serde_json::json!({
        "id": id, "kind": kind, "qty": qty, "unit": unit,
        "at": dishsync_protocol::payload::Timestamp::now().to_string(), "device": device,
        "reason": if kind == "waste" { Some("dropped") } else { None },
    })
}

/// A sale document, stamped now.
pub fn sale(id: &str, lines: &[(&str, u32)], device: &str) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(d, p)| serde_json::json!({"dish": d, "portions": p}))
        .collect();
    let at = dishsync_protocol::payload::Timestamp::now().to_string();
    serde_json::json!({"id": id, "lines": lines, "at": at, "device": device})
}
