//! Benchmarks of dishsync against a bare embedded rmqtt (same version, same
//! listener settings, no rules), run alternately in the same session so that
//! a noisy 2-core machine affects both alike. Each scenario reports the
//! median over rounds for both and the ratio.
//!
//! Every broker runs as a child process of this binary (`serve-dishsync`,
//! `serve-bare`), so its memory can be read from `/proc` and a restart is a
//! real process start. Every load loop is bounded in count and time and
//! talks to loopback only.
//!
//! Scenarios (see BENCHMARKS.md for the goals and the measured numbers):
//! `throughput` durable QoS 2 stock events/s counted at the end-to-end ack
//! (bare: at PUBCOMP); `latency` stock change → availability update at many
//! POS, timed from the intended send time (no coordinated omission);
//! `retained` a new POS receiving every dish's retained availability, alone
//! and many at once, per dish and as the whole-menu document; `connections` memory per idle connection; `restart`
//! start-up with a long ledger until serving; `http` durable stock events/s
//! posted to the HTTP API over keep-alive connections, next to the MQTT
//! intake of the same round (the reference there is MQTT, not bare rmqtt);
//! `ledger` one store-day read from a ledger of millions of lines, next to
//! one holding only that day; `webhooks` signed deliveries per second into
//! a local receiver, next to the MQTT intake (`history`); `pages` change →
//! availability at many open live pages of the web app, next to as many
//! MQTT POS, and memory per page; `backup` a running broker's backup and
//! its restore, next to a copy of the stopped data directory;
//! `retention` the disk per million inputs kept for good, next to the same
//! inputs compacted daily past their retention; `overload` the latency
//! load at rising offered rates for both brokers in one run (the
//! degradation curve); `capacity` a generated
//! chain of 100, 500 and 2,000 stores under a dinner peak — change → POS
//! latency, memory, restart and disk per store-day, against their goals.
//!
//! [`chain`] generates a chain of any size with believable recipes and a
//! dinner-peak load over it, deterministic for a seed (for the capacity
//! runs).

mod capacity;
pub mod chain;
mod cluster;
mod history;
pub mod nats;
mod pages;
mod retention;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

/// Benchmarks of dishsync against bare rmqtt.
#[derive(Parser)]
#[command(name = "dishsync-bench", version, about)]
struct Cli {
    /// Small sizes, one round: a smoke run that finishes in seconds.
    #[arg(long, global = true)]
    quick: bool,
    /// Rounds per scenario (each round runs bare, then dishsync).
    #[arg(long, global = true)]
    rounds: Option<usize>,
    /// Print one JSON object per scenario instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Throughput: devices publishing at once (overrides the default).
    #[arg(long, global = true)]
    devices: Option<usize>,
    /// Latency: POS subscribers (overrides the default).
    #[arg(long, global = true)]
    subscribers: Option<usize>,
    /// Latency: stock changes offered per second (overrides the default).
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// Latency and overload: the devices the stock changes come from, in
    /// turn (overrides the default).
    #[arg(long, global = true)]
    senders: Option<usize>,
    /// Run the throughput load once against an already running dishsync
    /// broker at this address (for profiling it).
    #[arg(long, global = true)]
    against: Option<SocketAddr>,
    /// Capacity: the chain sizes to measure, in stores (comma-separated;
    /// overrides the default 100,500,2000).
    #[arg(long, global = true, value_delimiter = ',')]
    stores: Vec<usize>,
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Durable QoS 2 stock events per second, many devices at once.
    Throughput,
    /// Stock change → availability update latency at many POS subscribers.
    Latency,
    /// A new POS receiving every retained availability (per dish, and as
    /// the whole-menu document); many POS at once.
    Retained,
    /// Broker memory per idle connection.
    Connections,
    /// Start-up with a long ledger until serving with availability re-published.
    Restart,
    /// Durable inputs/s over the HTTP API from many keep-alive clients,
    /// next to the MQTT intake in the same round.
    Http,
    /// One store-day of history read from a ledger of millions of lines,
    /// next to the same store-day from a ledger holding only it.
    Ledger,
    /// Webhook deliveries per second drained into a local receiver, next
    /// to the MQTT intake in the same round.
    Webhooks,
    /// A backup of a running broker with a long ledger, and its restore,
    /// next to a plain copy of the stopped data directory.
    Backup,
    /// Change → availability at many open live pages of the web app,
    /// next to as many MQTT POS in the same run; memory per page.
    Pages,
    /// The disk per million inputs kept for good, next to the same inputs
    /// compacted daily past their retention.
    Retention,
    /// How many stores one machine carries: a generated chain of 100,
    /// 500 and 2,000 stores under a dinner peak — change → POS latency,
    /// memory, restart and disk per store-day.
    Capacity,
    /// Change → POS latency as the offered rate rises past what the
    /// machine can route, both brokers at each rate, in one run: the
    /// degradation curve.
    Overload,
    /// Every scenario.
    All,
    /// The rules as partition workers on a 3-node NATS JetStream cluster:
    /// durable inputs/s with one worker and with two, next to the bare
    /// cluster; change → POS latency across nodes. Needs `nats-server`
    /// 2.10 or later; not part of `all`.
    Cluster,
    /// (internal) Serve one partition as a worker on a cluster.
    #[command(hide = true)]
    ServeWorker,
    /// (internal) Serve dishsync with a configuration.
    #[command(hide = true)]
    ServeDishsync,
    /// (internal) Serve bare rmqtt.
    #[command(hide = true)]
    ServeBare,
}

/// Sizes of one run.
#[derive(Clone, Copy)]
struct Sizes {
    rounds: usize,
    devices: usize,
    events_per_device: usize,
    subscribers: usize,
    senders: usize,
    rate: f64,
    seconds: f64,
    dishes: usize,
    pos: usize,
    connections: usize,
    ledger: usize,
    retention_inputs: usize,
    retention_per_day: usize,
    http_clients: usize,
    history_stores: usize,
    history_days: usize,
    history_per_day: usize,
    history_reads: usize,
    webhook_skus: usize,
    pages: usize,
}

impl Sizes {
    fn of(cli: &Cli) -> Sizes {
        let mut s = if cli.quick {
            Sizes {
                rounds: 1,
                devices: 4,
                events_per_device: 250,
                subscribers: 10,
                senders: 4,
                rate: 100.0,
                seconds: 1.0,
                dishes: 200,
                pos: 5,
                connections: 200,
                ledger: 5_000,
                retention_inputs: 20_000,
                retention_per_day: 1_000,
                http_clients: 4,
                history_stores: 5,
                history_days: 2,
                history_per_day: 1_000,
                history_reads: 20,
                webhook_skus: 200,
                pages: 10,
            }
        } else {
            Sizes {
                rounds: 3,
                devices: 200,
                events_per_device: 500,
                subscribers: 200,
                senders: 20,
                rate: 1_000.0,
                seconds: 10.0,
                dishes: 2_000,
                pos: 50,
                connections: 19_000,
                ledger: 1_000_000,
                retention_inputs: 4_000_000,
                retention_per_day: 10_000,
                http_clients: 50,
                history_stores: 100,
                history_days: 10,
                history_per_day: 10_000,
                history_reads: 200,
                webhook_skus: 5_000,
                pages: 200,
            }
        };
        if let Some(r) = cli.rounds {
            s.rounds = r.max(1);
        }
        if let Some(n) = cli.devices {
            s.devices = n.max(1);
        }
        if let Some(n) = cli.subscribers {
            s.subscribers = n.max(1);
        }
        if let Some(r) = cli.rate {
            s.rate = r.max(1.0);
        }
        if let Some(n) = cli.senders {
            s.senders = n.max(1);
        }
        // Behind the validating front a connection holds three descriptors
        // in the broker (the client's, the front's to the engine, the
        // engine's): as many connections as the descriptor limit allows,
        // for both brokers alike.
        let fitted = descriptor_limit().saturating_sub(1_000) / 3;
        if s.connections > fitted {
            eprintln!(
                "dishsync-bench: {fitted} connections, not {}: the descriptor limit is {}",
                s.connections,
                descriptor_limit()
            );
            s.connections = fitted.max(1);
        }
        s
    }

    /// The latency load's changes at `rate` per second.
    fn changes(&self, rate: f64) -> Changes {
        Changes {
            rate,
            seconds: self.seconds,
            senders: self.senders,
        }
    }
}

/// The open-files limit this process (and the brokers it starts) runs with.
fn descriptor_limit() -> usize {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1_024, |(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
}

/// Runs the benchmark command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Many connections need many descriptors, in the brokers (children
    // inherit the limit) and here. Raising the hard limit needs privileges;
    // without them, go as high as the hard limit allows.
    if rlimit::setrlimit(rlimit::Resource::NOFILE, 200_000, 200_000).is_err() {
        let _ = rlimit::increase_nofile_limit(200_000);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dishsync-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Scenario::ServeDishsync => runtime.block_on(serve_dishsync()),
        Scenario::ServeBare => runtime.block_on(serve_bare()),
        Scenario::ServeWorker => runtime.block_on(cluster::serve_worker()),
        scenario => runtime.block_on(run(&cli, scenario)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dishsync-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ servers

pub(crate) fn env_path(name: &str) -> Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("{name} not set"))
}

async fn serve_dishsync() -> Result<()> {
    let mut settings = dishsync_broker::Settings::load(&env_path("BENCH_CONFIG")?)?;
    settings.data_dir = env_path("BENCH_DATA")?;
    settings.listen = "127.0.0.1:0".parse()?;
    dishsync_broker::run(settings).await
}

async fn serve_bare() -> Result<()> {
    use rmqtt::context::ServerContext;
    use rmqtt::server::MqttServer;
    let settings = dishsync_broker::Settings::load(&env_path("BENCH_CONFIG")?)?;
    // The same context settings as dishsync's (no load-average busy check).
    let scx = ServerContext::new().busy_check_enable(false).build().await;
    *scx.extends.retain_mut().await = Box::<dishsync_broker::retainer::MemoryRetainer>::default();
    let listener = dishsync_broker::server::listener(&settings, "bare/tcp", "127.0.0.1:0".parse()?).bind()?;
    let addr = listener.local_addr()?;
    println!("dishsync-broker listening on mqtt://{addr}");
    MqttServer::new(scx)
        .listener_by_id(listener.tcp()?, 1)
        .build()
        .run()
        .await?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Target {
    Bare,
    Dishsync,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Bare => "bare rmqtt",
            Target::Dishsync => "dishsync",
        }
    }

    /// Its key in a JSON report.
    fn key(self) -> &'static str {
        match self {
            Target::Bare => "bare",
            Target::Dishsync => "dishsync",
        }
    }
}

/// A broker child process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The web listener, when the configuration has one.
    web: Option<SocketAddr>,
    started: Duration,
}

impl Server {
    fn start(target: Target, config: &Path, data: &Path) -> Result<Server> {
        let verb = match target {
            Target::Bare => "serve-bare",
            Target::Dishsync => "serve-dishsync",
        };
        // Each broker starts on a settled disk: what earlier rounds wrote
        // (and deleted) reaches the disk now, not as writeback during this
        // round's measurement.
        rustix::fs::sync();
        let t0 = std::time::Instant::now();
        let mut child = Command::new(std::env::current_exe()?)
            .arg(verb)
            .env("BENCH_CONFIG", config)
            .env("BENCH_DATA", data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a broker")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut web = None;
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(a) = line.strip_prefix("dishsync-broker web on http://") {
                    web = a.trim().parse::<SocketAddr>().ok();
                }
                if let Some(a) = line.strip_prefix("dishsync-broker listening on mqtt://") {
                    let _ = tx.send((a.trim().to_string(), web));
                }
            }
        });
        let (addr, web) = rx
            .recv_timeout(Duration::from_secs(300))
            .map_err(|_| anyhow!("{verb} did not start"))?;
        Ok(Server {
            child,
            addr: addr.parse()?,
            web,
            started: t0.elapsed(),
        })
    }

    /// CPU time the broker process has used so far, in seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))
    }
}

/// User plus system CPU time of the process whose `/proc/…/stat` is at
/// `path`, in seconds.
fn cpu_seconds(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no CPU times in {path}"))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chain configuration: one store, `skus` SKUs, `dishes` dishes (dish i
/// uses 1 g of SKU i mod skus), anonymous access, and generous limits.
fn config(skus: usize, dishes: usize) -> String {
    let mut out =
        String::from("[broker]\nallow_anonymous = true\nmax_publish_rate = 1000000\nmax_connections = 1000000\n\n");
    for i in 0..skus {
        out.push_str(&format!(
            "[[skus]]\nid = \"sku-{i}\"\nname = \"sku {i}\"\nunit = \"g\"\nreorder_point = 0\npar = 0\n\n"
        ));
    }
    for i in 0..dishes {
        out.push_str(&format!(
            "[[dishes]]\nid = \"dish-{i}\"\nname = \"dish {i}\"\nlow_mark = 0\nrecipe = [{{ sku = \"sku-{}\", qty = 1 }}]\n\n",
            i % skus
        ));
    }
    out.push_str("[[stores]]\nid = \"s1\"\nname = \"s1\"\n");
    out
}

/// [`config`] with the stores `stores` instead of `s1`.
pub(crate) fn config_of_stores(skus: usize, dishes: usize, stores: &[&str]) -> String {
    let mut out = config(skus, dishes).replace("[[stores]]\nid = \"s1\"\nname = \"s1\"\n", "");
    for store in stores {
        out.push_str(&format!("[[stores]]\nid = \"{store}\"\nname = \"{store}\"\n\n"));
    }
    out
}

fn stock_event(id: &str, kind: &str, device: &str) -> Vec<u8> {
    let at = dishsync_protocol::payload::Timestamp::now().to_string();
    serde_json::to_vec(&json!({"id": id, "kind": kind, "qty": 1, "unit": "g", "at": at, "device": device}))
        .unwrap_or_default()
}

/// A benchmark client `id` of the broker at `addr`, with room for `cap`
/// requests, and with Nagle's algorithm off as the dishsync client has it
/// (else a small write behind an unacknowledged one waits for the delayed
/// ACK, 40 ms on Linux).
fn bench_client(id: &str, addr: SocketAddr, cap: usize) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(100);
    o.set_request_channel_capacity(10_000);
    let (client, mut eventloop) = AsyncClient::new(o, cap);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

// ------------------------------------------------------------------ scenarios

/// Durable QoS 2 events per second: `devices` clients each publish
/// `per_device` stock events; done when every one is acknowledged end to end
/// (dishsync: its id on the acks topic; bare: its PUBCOMP).
async fn throughput(target: Target, addr: SocketAddr, devices: usize, per_device: usize) -> Result<f64> {
    throughput_over(target, &[addr], &["s1"], devices, per_device).await
}

/// [`throughput`] with device `d` on `addrs[d % addrs.len()]`, sending to
/// store `stores[d % stores.len()]` (a cluster's nodes and partitions).
pub(crate) async fn throughput_over(
    target: Target,
    addrs: &[SocketAddr],
    stores: &[&str],
    devices: usize,
    per_device: usize,
) -> Result<f64> {
    // Every device connects and subscribes; then all start together.
    let start = Arc::new(tokio::sync::Barrier::new(devices + 1));
    let mut tasks = Vec::new();
    for d in 0..devices {
        let start = Arc::clone(&start);
        let addr = addrs[d % addrs.len()];
        let store = stores[d % stores.len()].to_string();
        tasks.push(tokio::spawn(async move {
            let device = format!("dev-{d}");
            let (client, mut eventloop) = bench_client(&device, addr, 10_000);
            let acks = format!("stores/{store}/acks/{device}");
            if target == Target::Dishsync {
                client.subscribe(&acks, QoS::AtLeastOnce).await?;
            }
            // Connected and subscribed before the clock starts.
            let ready = |ev: &Event| match ev {
                Event::Incoming(Packet::SubAck(_)) => target == Target::Dishsync,
                Event::Incoming(Packet::ConnAck(_)) => target == Target::Bare,
                _ => false,
            };
            until_connected(&mut eventloop, ready).await?;
            start.wait().await;
            let publisher = client.clone();
            let topic = format!("stores/{store}/stock/sku-{}/events", d % 50);
            let publish = tokio::spawn(async move {
                for i in 0..per_device {
                    let kind = if i % 2 == 0 { "receive" } else { "consume" };
                    publisher
                        .publish(
                            &topic,
                            QoS::ExactlyOnce,
                            false,
                            stock_event(&format!("{device}-{i}"), kind, &device),
                        )
                        .await?;
                }
                anyhow::Ok(())
            });
            let mut done = 0usize;
            while done < per_device {
                match eventloop.poll().await? {
                    Event::Incoming(Packet::Publish(p)) if p.topic == acks => {
                        let ack: Value = serde_json::from_slice(&p.payload)?;
                        done += ack["ids"].as_array().map_or(0, Vec::len);
                    }
                    Event::Incoming(Packet::PubComp(_)) if target == Target::Bare => done += 1,
                    _ => {}
                }
            }
            publish.await??;
            anyhow::Ok(())
        }));
    }
    timeout(Duration::from_secs(60), start.wait())
        .await
        .map_err(|_| anyhow!("devices did not connect"))?;
    let t0 = Instant::now();
    for t in tasks {
        timeout(Duration::from_secs(300), t)
            .await
            .map_err(|_| anyhow!("throughput run timed out"))???;
    }
    Ok((devices * per_device) as f64 / t0.elapsed().as_secs_f64())
}

/// Durable stock events per second posted to the HTTP API at `web` by
/// `clients` keep-alive connections (one thread each), `per_client` each,
/// every one answered 200 after its commit. Any other answer fails the run.
fn http_throughput(web: SocketAddr, token: &str, clients: usize, per_client: usize) -> Result<f64> {
    let start = Arc::new(std::sync::Barrier::new(clients + 1));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let start = Arc::clone(&start);
            let auth = format!("Bearer {token}");
            std::thread::spawn(move || -> Result<()> {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
                let url = format!("http://{web}/api/v1/stores/s1/stock/sku-{}/events", c % 50);
                start.wait();
                for i in 0..per_client {
                    let kind = if i % 2 == 0 { "receive" } else { "consume" };
                    let body = stock_event(&format!("http-{c}-{i}"), kind, "bench-erp");
                    let answer = agent
                        .post(&url)
                        .set("Authorization", &auth)
                        .set("Content-Type", "application/json")
                        .send_bytes(&body);
                    match answer {
                        Ok(r) if r.status() == 200 => {
                            // Read to the end, so the connection is reused.
                            r.into_string()?;
                        }
                        Ok(r) => bail!("answered {}: {}", r.status(), r.into_string()?),
                        Err(e) => bail!("POST {url}: {e}"),
                    }
                }
                Ok(())
            })
        })
        .collect();
    start.wait();
    let t0 = std::time::Instant::now();
    for worker in workers {
        worker.join().map_err(|_| anyhow!("an HTTP client panicked"))??;
    }
    Ok((clients * per_client) as f64 / t0.elapsed().as_secs_f64())
}

/// Polls a client being set up until `ready` says so (before any clock
/// starts). A broker under load may refuse a CONNECT (rmqtt's handshake
/// timeout answers `ServiceUnavailable`); the client tries again, a few
/// times, as a device would.
async fn until_connected(eventloop: &mut rumqttc::EventLoop, ready: impl Fn(&Event) -> bool) -> Result<()> {
    let mut refused = Refusals::default();
    loop {
        match eventloop.poll().await {
            Ok(ev) if ready(&ev) => return Ok(()),
            Ok(_) => {}
            Err(e) => refused.try_again(e).await?,
        }
    }
}

/// Refused CONNECTs of one client being set up: each is tried again after
/// 200 ms, up to five times.
#[derive(Default)]
struct Refusals(u32);

impl Refusals {
    /// Waits before the next attempt, or gives up with `error`.
    async fn try_again<E: std::error::Error + Send + Sync + 'static>(&mut self, error: E) -> Result<()> {
        if self.0 >= 5 {
            return Err(error.into());
        }
        self.0 += 1;
        eprintln!("dishsync-bench: a connect was refused ({error}); trying again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The documents one POS received, in order: (rev, arrival).
type Arrivals = Vec<(u64, Instant)>;

/// The stock changes of a latency run: `rate` per second for `seconds`,
/// sent in turn by `senders` devices (a store's scales, POS and kitchen
/// displays all change stock; one device's inputs are acknowledged one
/// durable commit at a time, so a single sender would measure its own
/// round trips rather than the delivery).
#[derive(Clone, Copy)]
pub(crate) struct Changes {
    pub(crate) rate: f64,
    pub(crate) seconds: f64,
    pub(crate) senders: usize,
}

/// Latency from a stock change's intended send time to each POS receiving
/// the availability it caused, in milliseconds: (p50, p99, p99.9, samples).
/// A change counts as received with the first document whose rev is at
/// least the change's, so a document that stands for several changes is
/// not mistaken for the fast delivery of only the last one.
async fn latency(
    target: Target,
    addr: SocketAddr,
    subscribers: usize,
    changes: Changes,
) -> Result<(f64, f64, f64, usize)> {
    latency_across(target, addr, addr, subscribers, changes).await
}

/// [`latency`] with the changes sent to `addr` and the POS on `pos_addr`
/// (another node of a cluster).
pub(crate) async fn latency_across(
    target: Target,
    addr: SocketAddr,
    pos_addr: SocketAddr,
    subscribers: usize,
    changes: Changes,
) -> Result<(f64, f64, f64, usize)> {
    let Changes { rate, seconds, senders } = changes;
    let topic = "stores/s1/dishes/dish-0/availability";
    let events = (rate * seconds).round() as u64;
    let mut publishers = Vec::new();
    for p in 1..=senders.max(1) {
        let (publisher, mut pub_loop) = bench_client(&format!("pub-{p}"), addr, 10_000);
        publishers.push((
            publisher,
            tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} }),
        ));
    }
    // Bare: the retained starting document a dishsync broker would have.
    if target == Target::Bare {
        publishers[0]
            .0
            .publish(topic, QoS::AtLeastOnce, true, serde_json::to_vec(&json!({"rev": 0}))?)
            .await?;
    }
    // What each POS received, in order.
    let seen: Arc<Mutex<Vec<Arrivals>>> = Arc::new(Mutex::new(vec![Vec::new(); subscribers]));
    let base_rev: Arc<Mutex<Option<u64>>> = Arc::default();
    let mut subs = Vec::new();
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    for s in 0..subscribers {
        let (client, mut eventloop) = bench_client(&format!("pos-{s}"), pos_addr, 100);
        client.subscribe(topic, QoS::AtLeastOnce).await?;
        let seen = Arc::clone(&seen);
        let base_rev = Arc::clone(&base_rev);
        let ready = Arc::clone(&ready);
        subs.push((
            client,
            tokio::spawn(async move {
                let mut first = true;
                while let Ok(ev) = eventloop.poll().await {
                    if let Event::Incoming(Packet::Publish(p)) = ev {
                        let now = Instant::now();
                        let rev = serde_json::from_slice::<Value>(&p.payload)
                            .ok()
                            .and_then(|v| v["rev"].as_u64())
                            .unwrap_or(0);
                        if first {
                            first = false;
                            if let Ok(mut b) = base_rev.lock() {
                                b.get_or_insert(rev);
                            }
                            ready.add_permits(1);
                        } else if let Ok(mut seen) = seen.lock() {
                            seen[s].push((rev, now));
                        }
                    }
                }
            }),
        ));
    }
    // Every POS has its retained document.
    timeout(Duration::from_secs(60), ready.acquire_many(subscribers as u32))
        .await
        .map_err(|_| anyhow!("POS not ready"))??
        .forget();
    let r0 = base_rev.lock().map_err(|_| anyhow!("lock"))?.unwrap_or(0);
    let start = Instant::now() + Duration::from_millis(100);
    let clients = publishers.iter().map(|(c, _)| c.clone()).collect();
    pace(clients, target, events, rate, start, r0, topic).await?;
    wait_for_last(&seen, subscribers, r0 + events).await?;
    let mut ms = change_latencies(&seen.lock().map_err(|_| anyhow!("lock"))?, events, r0, rate, start);
    ms.sort_by(f64::total_cmp);
    let expected = events as usize * subscribers;
    if ms.len() < expected {
        eprintln!(
            "dishsync-bench: {}: {} of {expected} changes never reached their POS within 30 s; \
             the percentiles leave them out",
            target.name(),
            expected - ms.len()
        );
    }
    for (client, task) in subs {
        let _ = client.disconnect().await;
        task.abort();
    }
    for (publisher, task) in publishers {
        let _ = publisher.disconnect().await;
        task.abort();
    }
    Ok((
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        percentile(&ms, 0.999),
        ms.len(),
    ))
}

/// The `latency` run on a fresh broker of `target` with `config` in
/// `data` (a dishsync broker stocked first, so the dish never sells out).
async fn latency_on_fresh(
    target: Target,
    config: &Path,
    data: &Path,
    subscribers: usize,
    changes: Changes,
) -> Result<(f64, f64, f64, usize)> {
    let server = Server::start(target, config, data)?;
    if target == Target::Dishsync {
        stock_dish_0(server.addr).await?;
    }
    let result = latency(target, server.addr, subscribers, changes).await;
    drop(server);
    let _ = std::fs::remove_dir_all(data);
    result
}

/// Counts 1,000 g of sku-0 in s1 through `addr`, so that dish-0 never sells
/// out under the latency load; returns at its PUBCOMP.
pub(crate) async fn stock_dish_0(addr: SocketAddr) -> Result<()> {
    let (c, mut l) = bench_client("stocker", addr, 10);
    let at = dishsync_protocol::payload::Timestamp::now().to_string();
    let stock = json!({"id": "init", "kind": "count", "qty": 1000, "unit": "g", "at": at, "device": "stocker"});
    c.publish(
        "stores/s1/stock/sku-0/events",
        QoS::ExactlyOnce,
        false,
        serde_json::to_vec(&stock)?,
    )
    .await?;
    while !matches!(l.poll().await?, Event::Incoming(Packet::PubComp(_))) {}
    Ok(())
}

/// Sends `events` stock changes (dishsync) or retained documents (bare) at
/// `rate` per second from `start`, each through the next of `publishers`
/// in turn, from a thread of its own: tokio's timer wakes on whole
/// milliseconds, which would send every change up to a millisecond late
/// and count that against the broker.
async fn pace(
    publishers: Vec<AsyncClient>,
    target: Target,
    events: u64,
    rate: f64,
    start: Instant,
    r0: u64,
    topic: &'static str,
) -> Result<()> {
    let intended = move |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
    let pacer = std::thread::spawn(move || -> Result<Vec<f64>> {
        let mut late_ms = Vec::with_capacity(events as usize);
        for k in 1..=events {
            let due = intended(k).into_std();
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            late_ms.push(due.elapsed().as_secs_f64() * 1000.0);
            let sender = usize::try_from(k).unwrap_or(0) % publishers.len();
            let publisher = &publishers[sender];
            let payload = match target {
                Target::Dishsync => stock_event(
                    &format!("lat-{k}"),
                    if k % 2 == 1 { "receive" } else { "consume" },
                    &format!("pub-{}", sender + 1),
                ),
                Target::Bare => serde_json::to_vec(&json!({"rev": r0 + k}))?,
            };
            let (t, q, retain) = match target {
                Target::Dishsync => ("stores/s1/stock/sku-0/events", QoS::ExactlyOnce, false),
                Target::Bare => (topic, QoS::AtLeastOnce, true),
            };
            // A publisher whose requests pile up (the broker is not taking
            // them) waits for room: the change goes out late, and its
            // latency counts from when it was due.
            while let Err(rumqttc::ClientError::TryRequest(_)) = publisher.try_publish(t, q, retain, payload.clone()) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(late_ms)
    });
    let mut late_ms = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow!("the pacing thread panicked"))??;
    late_ms.sort_by(f64::total_cmp);
    let late_p99 = percentile(&late_ms, 0.99);
    if late_p99 > 0.5 {
        eprintln!(
            "dishsync-bench: {}: the changes went out up to {late_p99:.2} ms after their intended time (p99); \
             the latencies include it",
            target.name()
        );
    }
    Ok(())
}

/// Waits (bounded) until every one of `subscribers` saw `last`.
async fn wait_for_last(seen: &Mutex<Vec<Arrivals>>, subscribers: usize, last: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = seen
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .iter()
            .filter(|pos| pos.last().is_some_and(|(rev, _)| *rev >= last))
            .count();
        if got >= subscribers || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Change k (of `events`, sent at `rate` from `start`) reached a subscriber
/// with the first document at rev ≥ r0 + k (a document may stand for
/// several changes); one sample per change per subscriber, in ms from the
/// change's intended time, unsorted.
fn change_latencies(seen: &[Arrivals], events: u64, r0: u64, rate: f64, start: Instant) -> Vec<f64> {
    let intended = move |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
    let mut ms: Vec<f64> = Vec::new();
    for pos in seen {
        let mut arrivals = pos.iter().peekable();
        for k in 1..=events {
            while arrivals.next_if(|(rev, _)| *rev < r0 + k).is_some() {}
            if let Some((_, t)) = arrivals.peek() {
                ms.push(t.saturating_duration_since(intended(k)).as_secs_f64() * 1000.0);
            }
        }
    }
    ms
}

/// Time for `pos` POS at once to receive `dishes` retained documents each,
/// from their SUBSCRIBE: (fastest, slowest) in milliseconds.
async fn retained(target: Target, addr: SocketAddr, pos: usize, dishes: usize) -> Result<(f64, f64)> {
    if target == Target::Bare {
        // The same documents a dishsync broker holds.
        let (loader, mut eventloop) = bench_client("loader", addr, 10_000);
        let total = dishes;
        let wait = tokio::spawn(async move {
            let mut acked = 0;
            while acked < total {
                if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                    acked += 1;
                }
            }
            anyhow::Ok(())
        });
        for i in 0..dishes {
            let doc = json!({"store": "s1", "dish": format!("dish-{i}"), "status": "sold_out", "portions": 0,
                "limited_by": "sku-0", "override": null, "sellout_eta": null, "stale": false, "rev": 1,
                "at": "2026-11-25T12:00:00.000Z"});
            loader
                .publish(
                    format!("stores/s1/dishes/dish-{i}/availability"),
                    QoS::AtLeastOnce,
                    true,
                    serde_json::to_vec(&doc)?,
                )
                .await?;
        }
        timeout(Duration::from_secs(120), wait)
            .await
            .map_err(|_| anyhow!("loading retained timed out"))???;
    }
    let mut tasks = Vec::new();
    for p in 0..pos {
        tasks.push(tokio::spawn(async move {
            let (client, mut eventloop) = bench_client(&format!("pos-{p}"), addr, 100);
            until_connected(&mut eventloop, |ev| matches!(ev, Event::Incoming(Packet::ConnAck(_)))).await?;
            let t0 = Instant::now();
            client
                .subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
                .await?;
            let mut got = 0;
            while got < dishes {
                if let Event::Incoming(Packet::Publish(_)) = eventloop.poll().await? {
                    got += 1;
                }
            }
            anyhow::Ok(t0.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(
            timeout(Duration::from_secs(120), t)
                .await
                .map_err(|_| anyhow!("retained run timed out"))???,
        );
    }
    times.sort_by(f64::total_cmp);
    Ok((times[0], times[times.len() - 1]))
}

/// Time for `pos` POS at once to receive the whole-menu document of a store
/// with `dishes` dishes (`stores/{store}/availability`, one retained
/// message), from their SUBSCRIBE: the slowest, in milliseconds.
async fn whole_menu(target: Target, addr: SocketAddr, pos: usize, dishes: usize) -> Result<f64> {
    const MENU: &str = "stores/s1/availability";
    if target == Target::Bare {
        // The document a dishsync broker holds for the same store.
        let entries: serde_json::Map<String, Value> = (0..dishes)
            .map(|i| {
                let entry = json!({"status": "sold_out", "portions": 0, "limited_by": "sku-0",
                    "override": false, "stale": false, "rev": 1});
                (format!("dish-{i}"), entry)
            })
            .collect();
        let doc = json!({"store": "s1", "rev": 1, "at": "2026-11-25T12:00:00.000Z", "dishes": entries});
        let (loader, mut eventloop) = bench_client("menu-loader", addr, 10);
        loader
            .publish(MENU, QoS::AtLeastOnce, true, serde_json::to_vec(&doc)?)
            .await?;
        timeout(Duration::from_secs(60), async {
            loop {
                if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                    return anyhow::Ok(());
                }
            }
        })
        .await
        .map_err(|_| anyhow!("loading the menu timed out"))??;
    }
    let mut tasks = Vec::new();
    for p in 0..pos {
        tasks.push(tokio::spawn(async move {
            let (client, mut eventloop) = bench_client(&format!("menu-pos-{p}"), addr, 100);
            until_connected(&mut eventloop, |ev| matches!(ev, Event::Incoming(Packet::ConnAck(_)))).await?;
            let t0 = Instant::now();
            client.subscribe(MENU, QoS::AtLeastOnce).await?;
            loop {
                if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await? {
                    check_menu(&p.payload, dishes)?;
                    return anyhow::Ok(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }));
    }
    slowest(tasks, "menu run").await
}

/// Checks that a whole-menu document holds `dishes` dishes.
fn check_menu(payload: &[u8], dishes: usize) -> Result<()> {
    let menu: Value = serde_json::from_slice(payload)?;
    let got = menu["dishes"].as_object().map_or(0, |d| d.len());
    if got != dishes {
        bail!("the menu holds {got} dishes, not {dishes}");
    }
    Ok(())
}

/// Waits (up to two minutes each) for the POS tasks; the slowest time.
async fn slowest(tasks: Vec<tokio::task::JoinHandle<Result<f64>>>, run: &str) -> Result<f64> {
    let mut slowest: f64 = 0.0;
    for t in tasks {
        let ms = timeout(Duration::from_secs(120), t)
            .await
            .map_err(|_| anyhow!("{run} timed out"))???;
        slowest = slowest.max(ms);
    }
    Ok(slowest)
}

/// Time for `pos` MQTT 5 POS at once to load a store of `dishes` dishes the
/// way topics.md describes: one SUBSCRIBE with the per-dish filter at Retain
/// Handling 2 (no retained burst) and the whole-menu document. The slowest,
/// in milliseconds, from the SUBSCRIBE to a menu with every dish. The
/// whole-menu document must already be retained.
async fn mqtt5_load(addr: SocketAddr, pos: usize, dishes: usize) -> Result<f64> {
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet as Packet5, RetainForwardRule};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    const MENU: &str = "stores/s1/availability";
    let mut tasks = Vec::new();
    for p in 0..pos {
        tasks.push(tokio::spawn(async move {
            let mut o = Options5::new(format!("v5-pos-{p}"), addr.ip().to_string(), addr.port());
            o.set_keep_alive(Duration::from_secs(60));
            o.set_max_packet_size(Some(1 << 20));
            let (client, mut eventloop) = Client5::new(o, 100);
            let mut refused = Refusals::default();
            loop {
                match eventloop.poll().await {
                    Ok(Event5::Incoming(Packet5::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => refused.try_again(e).await?,
                }
            }
            let mut per_dish = Filter::new("stores/s1/dishes/+/availability", QoS5::AtLeastOnce);
            per_dish.retain_forward_rule = RetainForwardRule::Never;
            let t0 = Instant::now();
            client
                .subscribe_many([per_dish, Filter::new(MENU, QoS5::AtLeastOnce)])
                .await?;
            loop {
                if let Event5::Incoming(Packet5::Publish(p)) = eventloop.poll().await? {
                    if p.topic != MENU.as_bytes() {
                        return Err(anyhow!("a per-dish document came despite Retain Handling 2"));
                    }
                    check_menu(&p.payload, dishes)?;
                    return anyhow::Ok(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }));
    }
    slowest(tasks, "MQTT 5 load").await
}

/// An MQTT 3.1.1 CONNECT with keep-alive 0 (idle forever).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b0000_0010, 0, 0];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Broker memory per idle connection, KiB: opens `n` connections (CONNECT,
/// CONNACK, then silence) and compares the broker's resident memory.
async fn connections(server: &Server, n: usize) -> Result<(f64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let before = server.rss_kib()?;
    let addr = server.addr;
    let mut sockets = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let mut opening = Vec::new();
        for &i in chunk {
            opening.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.write_all(&connect_packet(&format!("idle-{i}"))).await?;
                let mut ack = [0u8; 4];
                s.read_exact(&mut ack).await?;
                if ack[0] != 0x20 || ack[3] != 0 {
                    bail!("connection {i} refused: {ack:?}");
                }
                anyhow::Ok(s)
            }));
        }
        for o in opening {
            sockets.push(
                timeout(Duration::from_secs(60), o)
                    .await
                    .map_err(|_| anyhow!("connect timed out"))???,
            );
        }
    }
    let after = server.rss_kib()?;
    drop(sockets);
    Ok((after.saturating_sub(before) as f64 / n as f64, after))
}

/// Writes a data directory holding `events` ledger lines, as the broker
/// would have committed them, in batches.
async fn build_ledger(config: &str, data: &Path, events: usize) -> Result<()> {
    use dishsync_broker::store::Store;
    let settings = dishsync_broker::Settings::parse(config).map_err(|e| anyhow!("{e}"))?;
    let store = Store::open(data)?;
    let mut inv = dishsync_inventory::Inventory::new(settings.catalog.clone(), 0);
    let s1: dishsync_protocol::StoreId = "s1".parse()?;
    let skus: Vec<dishsync_protocol::SkuId> = settings.catalog.skus().map(|s| s.id.clone()).collect();
    let now = dishsync_protocol::payload::Timestamp::now().0 - 86_400_000;
    let mut written = 0;
    while written < events {
        let mut group = Vec::with_capacity(10_000);
        for i in written..(written + 10_000).min(events) {
            let mut ev: dishsync_protocol::payload::StockEventIn = serde_json::from_slice(&stock_event(
                &format!("hist-{i}"),
                if i % 3 == 2 { "consume" } else { "receive" },
                "hist",
            ))?;
            // History from a day ago, stamped when it happened.
            ev.at = dishsync_protocol::payload::Timestamp(now);
            group.push((s1.clone(), skus[i % skus.len()].clone(), ev));
        }
        commit_stock(&store, &mut inv, group).await?;
        written = (written + 10_000).min(events);
    }
    Ok(())
}

/// Applies `events` (store, SKU, event; each applied at its own stamp) to
/// `inv` and commits them as the rules would, in one group: each input's
/// id, its ledger lines and the state it changed.
async fn commit_stock(
    store: &dishsync_broker::store::Store,
    inv: &mut dishsync_inventory::Inventory,
    events: Vec<(
        dishsync_protocol::StoreId,
        dishsync_protocol::SkuId,
        dishsync_protocol::payload::StockEventIn,
    )>,
) -> Result<()> {
    let mut commit = store.begin()?;
    let mut changes = dishsync_inventory::Changes::default();
    for (s, sku, event) in events {
        let at = event.at.0;
        let out = inv.apply_stock(&s, &sku, &event, at).map_err(|r| anyhow!("{r}"))?;
        let id = event.id.clone();
        let fingerprint = dishsync_inventory::Input::Stock {
            store: s.clone(),
            sku,
            event,
        }
        .fingerprint();
        commit.event_id(Some(&s), &id, fingerprint, at)?;
        commit.ledger(&out.entries)?;
        changes.merge(out.changes);
    }
    dishsync_broker::rules::stage_changes(&mut commit, inv, &changes)?;
    store.commit(commit).await?;
    Ok(())
}

// ------------------------------------------------------------------ driver

/// The median of measurements taken in rounds (at least one).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One measured value per target per round.
struct Results {
    by_target: BTreeMap<&'static str, Vec<f64>>,
}

impl Results {
    fn new() -> Results {
        Results {
            by_target: BTreeMap::new(),
        }
    }

    fn add(&mut self, target: Target, value: f64) {
        self.by_target.entry(target.name()).or_default().push(value);
    }

    fn median(&self, target: Target) -> f64 {
        let mut v = self.by_target.get(target.name()).cloned().unwrap_or_default();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    }
}

fn report(cli: &Cli, scenario: &str, metric: &str, unit: &str, goal: &str, r: &Results) {
    let (d, b) = (r.median(Target::Dishsync), r.median(Target::Bare));
    let ratio = d / b;
    if cli.json {
        println!(
            "{}",
            json!({"scenario": scenario, "metric": metric, "unit": unit, "goal": goal,
                   "dishsync": d, "bare": b, "ratio": ratio, "rounds": r.by_target})
        );
    } else {
        println!("{scenario:<12} {metric:<38} dishsync {d:>10.2} {unit:<8} bare {b:>10.2} {unit:<8} ratio {ratio:>5.2}   goal {goal}");
    }
}

async fn run(cli: &Cli, scenario: Scenario) -> Result<()> {
    let sizes = Sizes::of(cli);
    let all = scenario == Scenario::All;
    let dir = tempfile::tempdir()?;
    if !cli.json {
        println!(
            "dishsync-bench{}: {} round(s), bare rmqtt then dishsync each round; medians",
            if cli.quick { " --quick" } else { "" },
            sizes.rounds
        );
    }
    let fresh = |name: &str, config: &str| -> Result<(PathBuf, PathBuf)> {
        let config_path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        let data = dir.path().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        Ok((config_path, data))
    };

    if scenario == Scenario::Cluster {
        let plan = if cli.quick {
            cluster::Plan {
                devices: 3,
                per_device: 200,
                pos: 5,
                rate: 50.0,
                seconds: 2.0,
            }
        } else {
            cluster::Plan {
                devices: sizes.devices,
                per_device: sizes.events_per_device,
                pos: 50,
                rate: 200.0,
                seconds: 10.0,
            }
        };
        return cluster::run(dir.path(), &plan, cli.json).await;
    }
    if let Some(addr) = cli.against {
        let rate = throughput(Target::Dishsync, addr, sizes.devices, sizes.events_per_device).await?;
        println!("throughput against {addr}: {rate:.0} acknowledged events/s");
        return Ok(());
    }
    if all || scenario == Scenario::Throughput {
        let mut r = Results::new();
        for round in 0..sizes.rounds {
            for target in [Target::Bare, Target::Dishsync] {
                let (config, data) = fresh(&format!("throughput-{round}"), &config(50, 50))?;
                let server = Server::start(target, &config, &data)?;
                r.add(
                    target,
                    throughput(target, server.addr, sizes.devices, sizes.events_per_device).await?,
                );
                drop(server);
                let _ = std::fs::remove_dir_all(&data);
            }
        }
        let goal = "≥ 20000 /s";
        report(
            cli,
            "throughput",
            &format!("QoS 2 events/s, {} devices, acked", sizes.devices),
            "/s",
            goal,
            &r,
        );
    }
    if all || scenario == Scenario::Http {
        // Each round: the MQTT intake, then the HTTP API, each on a fresh
        // broker with the same chain; the API's integration is unlimited.
        let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
        let with_api = format!(
            "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n[[integrations]]\nid = \"bench-erp\"\nrole = \"manager\"\n\
             store = \"s1\"\ntoken_sha256 = \"{hash}\"\nmax_requests_per_second = 1000000\n",
            config(50, 50)
        );
        let (mut http, mut mqtt) = (Vec::new(), Vec::new());
        for round in 0..sizes.rounds {
            let (config_path, data) = fresh(&format!("http-mqtt-{round}"), &with_api)?;
            let server = Server::start(Target::Dishsync, &config_path, &data)?;
            mqtt.push(throughput(Target::Dishsync, server.addr, sizes.devices, sizes.events_per_device).await?);
            drop(server);
            let _ = std::fs::remove_dir_all(&data);
            let (config_path, data) = fresh(&format!("http-{round}"), &with_api)?;
            let server = Server::start(Target::Dishsync, &config_path, &data)?;
            let web = server.web.ok_or_else(|| anyhow!("the broker opened no web listener"))?;
            let (clients, per_client) = (sizes.http_clients, sizes.events_per_device);
            let token = token.clone();
            http.push(tokio::task::spawn_blocking(move || http_throughput(web, &token, clients, per_client)).await??);
            drop(server);
            let _ = std::fs::remove_dir_all(&data);
        }
        let (h, m) = (median(&mut http), median(&mut mqtt));
        let metric = format!(
            "stock events/s, {} HTTP clients vs {} MQTT",
            sizes.http_clients, sizes.devices
        );
        let goal = "HTTP ≥ 0.5 × MQTT";
        if cli.json {
            println!(
                "{}",
                json!({"scenario": "http", "metric": metric, "unit": "/s", "goal": goal,
                       "http": h, "mqtt": m, "ratio": h / m, "rounds": {"http": http, "mqtt": mqtt}})
            );
        } else {
            println!(
                "{:<12} {metric:<38} http {h:>10.2} /s   mqtt {m:>10.2} /s   ratio {:>5.2}   goal {goal}",
                "http",
                h / m
            );
        }
    }
    if all || scenario == Scenario::Ledger {
        history::ledger(
            cli,
            dir.path(),
            history::LedgerSizes {
                stores: sizes.history_stores,
                days: sizes.history_days,
                per_day: sizes.history_per_day,
                reads: sizes.history_reads,
            },
        )
        .await?;
    }
    if all || scenario == Scenario::Backup {
        history::backup(cli, dir.path(), sizes.history_stores, sizes.history_per_day).await?;
    }
    if all || scenario == Scenario::Retention {
        retention::retention(cli, dir.path(), sizes.retention_inputs, sizes.retention_per_day).await?;
    }
    if all || scenario == Scenario::Pages {
        pages::pages(cli, dir.path(), sizes.rounds, sizes.pages, sizes.seconds).await?;
    }
    if all || scenario == Scenario::Capacity {
        let (stores, plan): (&[usize], capacity::Plan) = if cli.quick {
            (
                &[2, 6],
                capacity::Plan {
                    skus: 30,
                    dishes: 12,
                    span: Duration::from_secs(2),
                    sales_per_pos_per_minute: 30.0,
                    probes: 2,
                    probe_rate: 20.0,
                },
            )
        } else {
            (
                &[100, 500, 2_000],
                capacity::Plan {
                    skus: 150,
                    dishes: 80,
                    span: Duration::from_secs(60),
                    sales_per_pos_per_minute: 2.0,
                    probes: 10,
                    probe_rate: 20.0,
                },
            )
        };
        let stores = if cli.stores.is_empty() { stores } else { &cli.stores[..] };
        capacity::capacity(cli, dir.path(), stores, plan).await?;
    }
    if all || scenario == Scenario::Webhooks {
        let (mut delivered, mut intake) = (Vec::new(), Vec::new());
        let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
        for round in 0..sizes.rounds {
            let receiver = history::Receiver::start().await?;
            let chain = history::webhook_chain(sizes.webhook_skus, receiver.addr, &hash)?;
            let (config_path, data) = fresh(&format!("webhooks-{round}"), &chain)?;
            let server = Server::start(Target::Dishsync, &config_path, &data)?;
            let web = server.web.ok_or_else(|| anyhow!("the broker opened no web listener"))?;
            // The queue fills while the receiver holds its first requests:
            // one change of every SKU, a level and an availability each.
            let (client, mut eventloop) = bench_client("stocker", server.addr, 10_000);
            let skus = sizes.webhook_skus;
            let publishing = tokio::spawn(async move {
                for i in 0..skus {
                    let event = stock_event(&format!("fill-{i}"), "receive", "stocker");
                    client
                        .publish(
                            format!("stores/s1/stock/sku-{i}/events"),
                            QoS::AtLeastOnce,
                            false,
                            event,
                        )
                        .await?;
                }
                anyhow::Ok(client)
            });
            let mut acked = 0;
            while acked < skus {
                if let Event::Incoming(Packet::PubAck(_)) =
                    timeout(Duration::from_secs(120), eventloop.poll()).await??
                {
                    acked += 1;
                }
            }
            let _client = publishing.await??;
            let expected = 2 * skus as u64;
            let (t, w) = (token.clone(), web);
            let filled = tokio::task::spawn_blocking(move || -> Result<()> {
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while history::pending(w, &t)? < expected {
                    if std::time::Instant::now() > deadline {
                        bail!("the webhook queue never held {expected} deliveries");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            });
            filled.await??;
            // Drained once the receiver is up.
            let t0 = Instant::now();
            receiver.gate.send_replace(true);
            // Watched at the receiver, which gets every one of them (one
            // delivery per document: nothing to replace).
            let deadline = Instant::now() + Duration::from_secs(300);
            while receiver.taken.load(std::sync::atomic::Ordering::SeqCst) < expected as usize {
                if Instant::now() > deadline {
                    bail!("the webhook queue never drained");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let drained = t0.elapsed().as_secs_f64();
            // The last answers are on their way back to the senders.
            while history::pending(web, &token)? != 0 {
                if Instant::now() > deadline {
                    bail!("the receiver took everything, yet deliveries stay pending");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let taken = receiver.taken.load(std::sync::atomic::Ordering::SeqCst);
            delivered.push(taken as f64 / drained);
            // The intake of the same broker, deliveries flowing.
            intake.push(throughput(Target::Dishsync, server.addr, sizes.devices, sizes.events_per_device).await?);
            drop(server);
            let _ = std::fs::remove_dir_all(&data);
        }
        let (d, m) = (median(&mut delivered), median(&mut intake));
        let metric = format!("deliveries/s draining {} into 1 receiver", 2 * sizes.webhook_skus);
        if cli.json {
            println!(
                "{}",
                json!({"scenario": "webhooks", "metric": metric, "unit": "/s", "goal": "—",
                       "delivered": d, "mqtt_intake": m, "ratio": d / m,
                       "rounds": {"delivered": delivered, "mqtt_intake": intake}})
            );
        } else {
            println!(
                "{:<12} {metric:<38} webhooks {d:>10.2} /s   mqtt intake {m:>10.2} /s   ratio {:>5.2}",
                "webhooks",
                d / m
            );
        }
    }
    if all || scenario == Scenario::Latency {
        let (mut p50, mut p99, mut p999) = (Results::new(), Results::new(), Results::new());
        for round in 0..sizes.rounds {
            for target in [Target::Bare, Target::Dishsync] {
                let (config, data) = fresh(&format!("latency-{round}"), &config(1, 1))?;
                let (a, b, c, _) =
                    latency_on_fresh(target, &config, &data, sizes.subscribers, sizes.changes(sizes.rate)).await?;
                p50.add(target, a);
                p99.add(target, b);
                p999.add(target, c);
            }
        }
        let what = format!("change→POS, {} POS, {}/s offered", sizes.subscribers, sizes.rate);
        report(cli, "latency", &format!("p50 {what}"), "ms", "≤ 5 ms", &p50);
        report(cli, "latency", &format!("p99 {what}"), "ms", "≤ 15 ms", &p99);
        report(cli, "latency", &format!("p99.9 {what}"), "ms", "≤ 30 ms", &p999);
    }
    if all || scenario == Scenario::Overload {
        // One run, rising offered rates, both brokers at each.
        let rates: Vec<f64> = if cli.quick {
            vec![50.0, 200.0]
        } else {
            [0.25, 0.5, 1.0, 2.0, 4.0].iter().map(|f| f * sizes.rate).collect()
        };
        let mut curve = Vec::new();
        for rate in rates {
            let mut point = json!({"rate": rate});
            for target in [Target::Bare, Target::Dishsync] {
                let (config, data) = fresh(&format!("overload-{rate}"), &config(1, 1))?;
                let (p50, p99, _, n) =
                    latency_on_fresh(target, &config, &data, sizes.subscribers, sizes.changes(rate)).await?;
                let offered = (rate * sizes.seconds).round() * sizes.subscribers as f64;
                point[target.key()] = json!({"p50": p50, "p99": p99, "delivered": n as f64 / offered});
            }
            if !cli.json {
                println!(
                    "{:<12} {} POS, {rate:>6.0} changes/s offered: bare p50 {:.2} p99 {:.2} ms ({:.1} % delivered)   dishsync p50 {:.2} p99 {:.2} ms ({:.1} %)",
                    "overload",
                    sizes.subscribers,
                    point["bare"]["p50"].as_f64().unwrap_or(f64::NAN),
                    point["bare"]["p99"].as_f64().unwrap_or(f64::NAN),
                    point["bare"]["delivered"].as_f64().unwrap_or(f64::NAN) * 100.0,
                    point["dishsync"]["p50"].as_f64().unwrap_or(f64::NAN),
                    point["dishsync"]["p99"].as_f64().unwrap_or(f64::NAN),
                    point["dishsync"]["delivered"].as_f64().unwrap_or(f64::NAN) * 100.0,
                );
            }
            curve.push(point);
        }
        if cli.json {
            let last = curve.last().cloned().unwrap_or_default();
            println!(
                "{}",
                json!({"scenario": "overload", "metric": format!("change→POS p50/p99 as the offered rate rises, {} POS", sizes.subscribers),
                    "unit": "ms", "goal": "dishsync's p99 bounded past saturation", "curve": curve,
                    "dishsync": last["dishsync"]["p99"], "bare": last["bare"]["p99"]})
            );
        }
    }
    if all || scenario == Scenario::Retained {
        let (mut one, mut many) = (Results::new(), Results::new());
        let (mut menu_one, mut menu_many) = (Results::new(), Results::new());
        let (mut many_broker_cpu, mut many_client_cpu) = (Results::new(), Results::new());
        let mut mqtt5_many = Results::new();
        for round in 0..sizes.rounds {
            for target in [Target::Bare, Target::Dishsync] {
                let (config, data) = fresh(&format!("retained-{round}"), &config(20, sizes.dishes))?;
                let server = Server::start(target, &config, &data)?;
                one.add(target, retained(target, server.addr, 1, sizes.dishes).await?.1);
                let (broker_before, own_before) = (server.cpu_seconds()?, cpu_seconds("/proc/self/stat")?);
                many.add(
                    target,
                    retained(Target::Dishsync, server.addr, sizes.pos, sizes.dishes)
                        .await?
                        .1,
                );
                // CPU per message delivered to the many POS, in µs.
                let messages = (sizes.pos * sizes.dishes) as f64 / 1e6;
                many_broker_cpu.add(target, (server.cpu_seconds()? - broker_before) / messages);
                many_client_cpu.add(target, (cpu_seconds("/proc/self/stat")? - own_before) / messages);
                menu_one.add(target, whole_menu(target, server.addr, 1, sizes.dishes).await?);
                menu_many.add(
                    target,
                    whole_menu(Target::Dishsync, server.addr, sizes.pos, sizes.dishes).await?,
                );
                mqtt5_many.add(target, mqtt5_load(server.addr, sizes.pos, sizes.dishes).await?);
                drop(server);
                let _ = std::fs::remove_dir_all(&data);
            }
        }
        report(
            cli,
            "retained",
            &format!("1 POS gets {} dishes", sizes.dishes),
            "ms",
            "≤ 25 ms",
            &one,
        );
        report(
            cli,
            "retained",
            &format!("{} POS at once, slowest", sizes.pos),
            "ms",
            "≤ 250 ms",
            &many,
        );
        report(
            cli,
            "retained",
            &format!("{} POS at once, broker CPU per message", sizes.pos),
            "µs",
            "—",
            &many_broker_cpu,
        );
        report(
            cli,
            "retained",
            &format!("{} POS at once, POS CPU per message", sizes.pos),
            "µs",
            "—",
            &many_client_cpu,
        );
        report(
            cli,
            "retained",
            &format!("1 POS gets the whole menu ({} dishes)", sizes.dishes),
            "ms",
            "≤ 25 ms",
            &menu_one,
        );
        report(
            cli,
            "retained",
            &format!("{} POS get the whole menu at once", sizes.pos),
            "ms",
            "≤ 250 ms",
            &menu_many,
        );
        report(
            cli,
            "retained",
            &format!("{} MQTT 5 POS load at once (no burst)", sizes.pos),
            "ms",
            "≤ 250 ms",
            &mqtt5_many,
        );
    }
    if all || scenario == Scenario::Connections {
        let (mut per, mut total) = (Results::new(), Results::new());
        for round in 0..sizes.rounds {
            for target in [Target::Bare, Target::Dishsync] {
                let (config, data) = fresh(&format!("connections-{round}"), &config(50, 50))?;
                let server = Server::start(target, &config, &data)?;
                let (kib, rss) = connections(&server, sizes.connections).await?;
                per.add(target, kib);
                total.add(target, rss as f64 / 1024.0);
                drop(server);
                let _ = std::fs::remove_dir_all(&data);
            }
        }
        report(
            cli,
            "connections",
            &format!("KiB per idle connection ({})", sizes.connections),
            "KiB",
            "—",
            &per,
        );
        report(
            cli,
            "connections",
            &format!("broker RSS with {} connections", sizes.connections),
            "MiB",
            "< 512 MiB",
            &total,
        );
    }
    if all || scenario == Scenario::Restart {
        let mut r = Results::new();
        let chain = config(50, 200);
        let (config_path, data) = fresh("restart", &chain)?;
        build_ledger(&chain, &data, sizes.ledger).await?;
        for _ in 0..sizes.rounds {
            for target in [Target::Bare, Target::Dishsync] {
                let empty = dir.path().join("restart-bare");
                let server = Server::start(
                    target,
                    &config_path,
                    if target == Target::Bare { &empty } else { &data },
                )?;
                r.add(target, server.started.as_secs_f64() * 1000.0);
            }
        }
        report(
            cli,
            "restart",
            &format!("start → serving, {} ledger events", sizes.ledger),
            "ms",
            "≤ 2000 ms",
            &r,
        );
    }
    Ok(())
}
