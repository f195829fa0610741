//! `cluster`: the rules as partition workers on a 3-node NATS JetStream
//! cluster on loopback ([`nats`](crate::nats)), every stream replicated
//! three times.
//!
//! - Durable QoS 2 inputs per second, counted at the end-to-end ack, with one
//!   worker serving four stores and with two workers serving two stores each.
//!   The devices are spread over the three nodes.
//! - The reference, in the same run: the bare cluster's rate of the same
//!   QoS 2 load, counted at PUBCOMP, with no worker.
//! - Change → POS latency across nodes: the changes go to node 1 and the POS
//!   read from node 3.
//!
//! Each configuration starts a fresh cluster. The workers are child
//! processes of this binary (`serve-worker`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::json;

use crate::nats::Cluster;
use crate::{config_of_stores, env_path, latency_across, stock_dish_0, throughput_over, Changes, Target};

/// A worker child process, killed on drop.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Worker {
    /// Starts the worker of `partition` for `config`, attached first to
    /// node `first`; returns once it serves.
    fn start(cluster: &Cluster, config: &Path, data: &Path, partition: &str, first: usize) -> Result<Worker> {
        let order: Vec<usize> = (0..3).map(|k| (first + k) % 3).collect();
        let nats: Vec<String> = order
            .iter()
            .map(|&k| format!("nats://{}", cluster.nodes[k].client))
            .collect();
        let mqtt: Vec<String> = order.iter().map(|&k| cluster.nodes[k].mqtt.to_string()).collect();
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve-worker")
            .env("BENCH_CONFIG", config)
            .env("BENCH_DATA", data)
            .env("BENCH_NATS", nats.join(","))
            .env("BENCH_MQTT", mqtt.join(","))
            .env("BENCH_PARTITION", partition)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let worker = Worker(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("dishsync-broker serving partition") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(120))
            .map_err(|_| anyhow!("the worker of {partition} did not serve"))?;
        Ok(worker)
    }
}

/// Serves one partition as a worker (the internal `serve-worker`): its
/// configuration, data directory, cluster and partition from the
/// environment.
pub async fn serve_worker() -> Result<()> {
    let mut settings = dishsync_broker::Settings::load(&env_path("BENCH_CONFIG")?)?;
    settings.data_dir = env_path("BENCH_DATA")?;
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} not set"));
    let partition = var("BENCH_PARTITION")?;
    let mqtt = var("BENCH_MQTT")?
        .split(',')
        .map(|a| {
            let addr: SocketAddr = a.parse()?;
            Ok((addr.ip().to_string(), addr.port()))
        })
        .collect::<Result<Vec<_>>>()?;
    let join = dishsync_broker::cluster::Join {
        nats: var("BENCH_NATS")?.split(',').map(String::from).collect(),
        mqtt,
        worker: format!("bench-{partition}"),
        partition,
        replicas: 3,
        lease: Duration::from_secs(10),
        republish_every: Duration::from_secs(60),
        snapshot_every: 10_000,
        credentials: None,
        tls: None,
    };
    dishsync_broker::cluster::run(settings, join).await
}

/// Waits (bounded) until a new subscriber on `addr` is handed `topic`'s
/// retained document with `portions`: the cluster's retained store, a
/// cache, caught up with the stock count, so that the latency run's POS
/// start from the document it caused.
async fn retained_on(addr: SocketAddr, topic: &str, portions: u64) -> Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{topic} was never retained with {portions} portions"
        );
        let mut options = MqttOptions::new(format!("retained-probe-{attempt}"), addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 10);
        client.subscribe(topic, QoS::AtLeastOnce).await?;
        let round = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(event)) = tokio::time::timeout_at(round, events.poll()).await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let doc: serde_json::Value = serde_json::from_slice(&p.payload)?;
                if doc["portions"].as_u64() == Some(portions) {
                    return Ok(());
                }
                break;
            }
        }
    }
    Ok(())
}

/// The sizes of one run.
pub struct Plan {
    /// Devices publishing at once, spread over the nodes.
    pub devices: usize,
    /// Inputs each device sends.
    pub per_device: usize,
    /// POS reading the changes on another node.
    pub pos: usize,
    /// Changes offered per second in the latency run.
    pub rate: f64,
    /// How long the latency run offers them.
    pub seconds: f64,
}

/// Runs the scenario under `dir`; prints one line (or JSON object) per
/// figure.
pub async fn run(dir: &Path, plan: &Plan, json_out: bool) -> Result<()> {
    let stores = ["s1", "s2", "s3", "s4"];
    let patience = Duration::from_secs(120);
    let mut figures = Vec::new();

    // The reference: the bare cluster, QoS 2 at PUBCOMP.
    let bare = {
        let cluster = Cluster::start(&dir.join("bare"), None, patience).await?;
        let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.mqtt).collect();
        throughput_over(Target::Bare, &addrs, &stores, plan.devices, plan.per_device).await?
    };

    // One worker for every store; then the latency across nodes.
    let (one, latency) = {
        let cluster = Cluster::start(&dir.join("one"), None, patience).await?;
        let config = dir.join("all.toml");
        std::fs::write(&config, config_of_stores(50, 50, &stores))?;
        let _worker = Worker::start(&cluster, &config, &dir.join("all-data"), "all", 0)?;
        let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.mqtt).collect();
        let one = throughput_over(Target::Dishsync, &addrs, &stores, plan.devices, plan.per_device).await?;
        stock_dish_0(addrs[0]).await?;
        retained_on(addrs[2], "stores/s1/dishes/dish-0/availability", 1000).await?;
        let latency = latency_across(
            Target::Dishsync,
            addrs[0],
            addrs[2],
            plan.pos,
            Changes {
                rate: plan.rate,
                seconds: plan.seconds,
                senders: 1,
            },
        )
        .await?;
        (one, latency)
    };

    // Two partitions, their workers attached to different nodes.
    let two = {
        let cluster = Cluster::start(&dir.join("two"), None, patience).await?;
        let mut workers = Vec::new();
        for (partition, stores, first) in [("east", ["s1", "s2"], 0), ("west", ["s3", "s4"], 1)] {
            let config = dir.join(format!("{partition}.toml"));
            std::fs::write(&config, config_of_stores(50, 50, &stores))?;
            workers.push(Worker::start(
                &cluster,
                &config,
                &dir.join(format!("{partition}-data")),
                partition,
                first,
            )?);
        }
        let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.mqtt).collect();
        throughput_over(Target::Dishsync, &addrs, &stores, plan.devices, plan.per_device).await?
    };

    let metric = format!("QoS 2 inputs/s, {} devices on 3 nodes, acked", plan.devices);
    figures.push(json!({"scenario": "cluster", "metric": metric, "unit": "/s",
        "one_worker": one, "two_workers": two, "bare_cluster": bare,
        "ratio_one": one / bare, "ratio_two": two / bare}));
    let (p50, p99, p999, n) = latency;
    figures.push(
        json!({"scenario": "cluster", "metric": format!("change → POS across nodes, {} POS, {}/s", plan.pos, plan.rate),
        "unit": "ms", "p50": p50, "p99": p99, "p999": p999, "samples": n}),
    );
    if json_out {
        for figure in &figures {
            println!("{figure}");
        }
    } else {
        println!(
            "{:<12} {metric:<44} one worker {one:>8.0} /s   two workers {two:>8.0} /s   bare cluster {bare:>8.0} /s   ratios {:.2} / {:.2}",
            "cluster",
            one / bare,
            two / bare
        );
        println!(
            "{:<12} {:<44} p50 {p50:>8.1} ms   p99 {p99:>8.1} ms   p99.9 {p999:>8.1} ms   ({n} samples)",
            "cluster",
            format!("change → POS across nodes, {} POS, {}/s", plan.pos, plan.rate)
        );
    }
    Ok(())
}
