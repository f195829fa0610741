//! Cluster mode: the rules as one partition's worker on a NATS JetStream
//! cluster (DESIGN §7), for a chain that outgrows one machine.
//!
//! Devices keep speaking MQTT to any node of the cluster. Their inputs are
//! captured by one replicated stream, `dishsync-inputs`; each partition (a
//! region's stores, named by `--partition`, its stores those of the
//! worker's configuration) reads its stores' inputs through one durable
//! consumer. Several workers may run for a partition — on other machines,
//! attached to other nodes; one owns it at a time and the others stand by
//! (see [`ownership`]).
//!
//! The owner's state survives it: every group commit goes to the
//! partition's replicated log ([`log`]) before its devices hear of it, so
//! a flush — and with it a device's end-to-end ack, which the rules
//! publish only after the flush — means "replicated". A worker that takes
//! a partition over rebuilds its local copy (the data directory, which is
//! only that) from the log, fences the log, and serves.
//!
//! Retained documents on the cluster are a cache: a retained update can be
//! lost during a node's leader change after the cluster acknowledged it
//! (SCALE-NOTES). So the owner re-publishes every retained document it
//! published after a takeover and then on a periodic tick; documents carry
//! `rev`, and readers keep the highest.
//!
//! Chain-wide inputs that name no store (a promotion's plan) are not taken
//! by any partition: each partition serves its own stores.

pub mod log;
pub mod ownership;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use dishsync_protocol::topic::pattern;
use dishsync_protocol::{StoreId, Topic};
use futures_util::StreamExt;
use rumqttc::{AsyncClient, MqttOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::metrics::METRICS;
use crate::outbound::Publisher;
use crate::rules::{self, Verdict};
use crate::server::{republish_all, restore};
use crate::store::Store;
use crate::worker::{route, start_rules, stopped, web_stopped, Attached, STORE_INPUTS};
use log::PartitionLog;
use ownership::Lease;

/// The stream capturing every store's inputs.
pub const INPUTS: &str = "dishsync-inputs";
/// The file that marks a data directory as a worker's copy of its
/// partition, which it may rebuild from the log.
const COPY_MARK: &str = "dishsync-partition-copy";
/// MQTT connections the outputs leave on. The cluster's MQTT listener
/// stores each retained document in JetStream before it reads the
/// connection's next packet, so one connection carries one retained
/// document per replicated write; several carry several at once.
const OUTPUT_CONNECTIONS: usize = 4;
/// Inputs in flight between the cluster and the rules.
const PIPELINE: usize = 1_024;

/// How a worker joins the cluster.
#[derive(Debug, Clone)]
pub struct Join {
    /// NATS servers of the cluster (`nats://host:port` or `tls://…`).
    pub nats: Vec<String>,
    /// MQTT listeners of the cluster's nodes: outputs go to the first that
    /// answers, the next one when it stops answering.
    pub mqtt: Vec<(String, u16)>,
    /// The partition this worker serves.
    pub partition: String,
    /// This worker's name, unique in the cluster.
    pub worker: String,
    /// How many copies the cluster keeps of the inputs and the log.
    pub replicas: usize,
    /// How long an owner's claim lives unrenewed.
    pub lease: Duration,
    /// How often every retained document is published again.
    pub republish_every: Duration,
    /// A snapshot is taken once this many entries were appended since the
    /// last one.
    pub snapshot_every: u64,
    /// Username and password, at NATS and at the MQTT listeners.
    pub credentials: Option<(String, String)>,
    /// TLS towards NATS.
    pub tls: Option<Tls>,
}

/// TLS towards the cluster's NATS servers.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The authority that signed the servers' certificates.
    pub ca: PathBuf,
    /// The worker's own certificate and key, where the servers ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The NATS subject an MQTT topic filter maps to on the cluster.
fn subject(filter: &str) -> String {
    filter
        .split('/')
        .map(|level| match level {
            "+" => "*",
            "#" => ">",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The MQTT topic of a NATS subject.
fn topic_of(subject: &str) -> String {
    subject.replace('.', "/")
}

/// What the inputs stream captures: every store's inputs and the central
/// kitchen's actions.
fn input_subjects() -> Vec<String> {
    let mut subjects: Vec<String> = STORE_INPUTS.iter().map(|p| subject(&p.filter(None, None))).collect();
    subjects.push(subject(&pattern::REQUEST_ACTION.filter(None, None)));
    subjects
}

/// What partition `stores` reads of the inputs.
fn partition_filters(stores: &[String]) -> Vec<String> {
    let mut filters: Vec<String> = stores.iter().map(|s| format!("stores.{s}.>")).collect();
    filters.push(subject(&pattern::REQUEST_ACTION.filter(None, None)));
    filters
}

async fn connect(join: &Join) -> anyhow::Result<async_nats::Client> {
    // The NATS and MQTT clients' TLS take the process's provider, which
    // two providers among the dependencies leave unchosen: this one, as
    // the listeners use.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("dishsync-{}-{}", join.partition, join.worker))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if let Some((user, pass)) = &join.credentials {
        options = options.user_and_password(user.clone(), pass.clone());
    }
    if let Some(tls) = &join.tls {
        options = options.require_tls(true).add_root_certificates(tls.ca.clone());
        if let Some((cert, key)) = &tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let servers: Vec<async_nats::ServerAddr> = join
        .nats
        .iter()
        .map(|s| s.parse().with_context(|| format!("--nats {s}")))
        .collect::<anyhow::Result<_>>()?;
    let client = tokio::time::timeout(Duration::from_secs(60), options.connect(servers))
        .await
        .context("no NATS server of the cluster answered within 60 s")?
        .context("connecting to the cluster")?;
    Ok(client)
}

/// Runs one partition's worker until the process is stopped or the worker
/// loses the partition. Prints `dishsync-broker standby for partition P`
/// while another worker owns it, and `dishsync-broker serving partition P`
/// once it does and reads its inputs.
pub async fn run(settings: Settings, join: Join) -> anyhow::Result<()> {
    let readiness = crate::web::Readiness::new(settings.data_dir.clone());
    let mut web_task = crate::web::open(
        settings.web,
        crate::server::web_tls(&settings)?,
        readiness.clone(),
        None,
    )
    .await?;
    let stores: Vec<String> = settings.catalog.stores().map(|s| s.id.to_string()).collect();
    if stores.is_empty() {
        bail!("the configuration names no store for partition {}", join.partition);
    }
    if join.partition.parse::<StoreId>().is_err() {
        bail!(
            "--partition {}: a partition's name is lowercase letters, digits and dashes",
            join.partition
        );
    }
    readiness.restoring("joining the cluster");
    let nats = connect(&join).await?;
    let js = jetstream::new(nats.clone());
    let inputs = patiently("opening the inputs stream", || {
        js.get_or_create_stream(stream::Config {
            name: INPUTS.into(),
            description: Some("dishsync: every store's inputs".into()),
            subjects: input_subjects(),
            num_replicas: join.replicas,
            storage: stream::StorageType::File,
            // Inputs are kept a week whoever read them: a partition with no
            // worker for days finds them still there.
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        })
    })
    .await?;
    let registry = patiently("opening the partitions' bucket", || {
        ownership::registry(&js, join.replicas)
    })
    .await?;
    if let Err(refused) = patiently("recording the partition", || {
        ownership::register(&registry, &join.partition, &stores)
    })
    .await?
    {
        bail!(refused);
    }
    let (owners, lease_length) = patiently("opening the owners' bucket", || {
        ownership::owners(&js, join.replicas, join.lease)
    })
    .await?;
    let max_payload = nats.server_info().max_payload;
    let partition_log = Arc::new(
        patiently("opening the partition's log", || {
            PartitionLog::open(&js, &join.partition, &join.worker, join.replicas, max_payload)
        })
        .await?,
    );

    // Stand by until this worker owns the partition.
    readiness.restoring("standing by: another worker owns the partition");
    let lease = Lease::acquire(owners, lease_length, &join.partition, &join.worker, |owner| {
        info!(partition = %join.partition, owner, "standing by");
        println!(
            "dishsync-broker standby for partition {}: {owner} owns it",
            join.partition
        );
    })
    .await?;
    info!(partition = %join.partition, worker = %join.worker, "owns the partition");
    let held = lease.held();
    let (lost_tx, mut lost) = oneshot::channel::<String>();
    tokio::spawn(async move {
        let _ = lost_tx.send(lease.keep().await);
    });

    // Rebuild the local copy from the log, then fence the log.
    readiness.restoring("rebuilding the partition from its log");
    let replay = partition_log.read().await?;
    info!(
        entries = replay.entries,
        groups = replay.groups.len(),
        previous = ?replay.owner,
        snapshot = ?replay.snapshot,
        "read the partition's log"
    );
    rebuild(&settings.data_dir, settings.checkpoint_interval, replay.groups.clone()).await?;
    partition_log.take_over(&replay).await?;
    drop(replay);
    let replica: Arc<dyn crate::store::Replica> = partition_log.clone();
    let (store, inventory) = restore(&settings, &readiness, Some(replica)).await?;

    let out = Arc::new(Republishing {
        connections: (0..OUTPUT_CONNECTIONS)
            .map(|i| mqtt_client(&join, i).map(|client| Attached { client }))
            .collect::<anyhow::Result<_>>()?,
        retained: Mutex::new(HashMap::new()),
    });
    republish_all(&*out, &inventory).await;
    {
        let out = out.clone();
        let every = join.republish_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // Not from a worker just woken from a pause: it may have
                // lost the partition and not know yet.
                if held.fresh() {
                    out.republish().await;
                }
            }
        });
    }
    let storage = store.clone();
    let rules = start_rules(&settings, &readiness, store, inventory, out.clone())?;
    tokio::spawn(snapshots(partition_log.clone(), rules.clone(), join.snapshot_every));

    let durable = format!("dishsync-{}", join.partition);
    let consumer = inputs
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!("dishsync: partition {}'s inputs", join.partition)),
            filter_subjects: partition_filters(&stores),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: lease_length,
            max_ack_pending: PIPELINE as i64 * 4,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("opening consumer {durable}"))?;

    // Each input is acknowledged to the cluster once its verdict is in: a
    // crash before that leaves it in the stream for the next owner.
    let (verdicts_tx, mut verdicts) =
        mpsc::channel::<(jetstream::Message, Option<oneshot::Receiver<Verdict>>)>(PIPELINE);
    let acker = tokio::spawn(async move {
        while let Some((message, verdict)) = verdicts.recv().await {
            if let Some(verdict) = verdict {
                match verdict.await {
                    Ok(verdict) => METRICS.input("cluster", &verdict),
                    Err(_) => {
                        error!("the rules stopped before deciding an input; stopping");
                        return;
                    }
                }
            }
            if let Err(e) = message.ack().await {
                warn!(error = %e, "acknowledging an input to the cluster failed");
            }
        }
    });
    let owned: HashSet<StoreId> = settings.catalog.stores().map(|s| s.id.clone()).collect();
    let mut failed = std::pin::pin!(storage.failed());
    let mut messages = consumer.messages().await.context("reading the partition's inputs")?;
    readiness.listening();
    println!(
        "dishsync-broker serving partition {} as {}",
        join.partition, join.worker
    );
    loop {
        let message = tokio::select! {
            message = messages.next() => match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    warn!(error = %e, "reading the partition's inputs; going on");
                    continue;
                }
                None => {
                    warn!("the partition's input stream ended; opening it again");
                    messages = consumer.messages().await.context("reading the partition's inputs")?;
                    continue;
                }
            },
            why = &mut lost => {
                let why = why.unwrap_or_else(|_| "the lease keeper stopped".into());
                error!(%why, "lost the partition; stopping");
                return Err(anyhow::anyhow!("{why}: this worker stops"));
            }
            what = &mut failed => return Err(crate::store::StorageFailed(what).into()),
            served = &mut web_task => return web_stopped(served),
        };
        let topic = topic_of(message.subject.as_str());
        let verdict = route(&rules, &*out, &owned, &topic, &message.payload).await;
        if verdicts_tx.send((message, verdict)).await.is_err() {
            break;
        }
    }
    drop(verdicts_tx);
    let _ = acker.await;
    stopped(&storage)
}

/// Takes a snapshot whenever `every` entries were appended since the last,
/// until the rules stop or the partition is lost.
async fn snapshots(log: Arc<PartitionLog>, rules: rules::RulesHandle, every: u64) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if log.unsnapshotted() < every {
            continue;
        }
        // Read before the dump: every group of the entries up to here is
        // in the store by then.
        let covers = log.replicated();
        let records = match rules.snapshot().await {
            Some(Ok(records)) => records,
            Some(Err(e)) => {
                warn!(error = %e, "cannot read the store for a snapshot");
                continue;
            }
            None => return,
        };
        if let Err(e) = log.snapshot(covers, records).await {
            warn!(error = %format!("{e:#}"), "no snapshot was stored");
        }
    }
}

/// How long joining tries again while the cluster cannot answer (a node
/// starting, a leader being elected).
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// Runs `attempt` until it succeeds or [`JOIN_PATIENCE`] runs out.
async fn patiently<T, E, F>(what: &str, mut attempt: impl FnMut() -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) => {
                let e: anyhow::Error = e.into();
                if tokio::time::Instant::now() > deadline {
                    return Err(e.context(format!("{what} (for {JOIN_PATIENCE:?})")));
                }
                warn!(error = %format!("{e:#}"), "{what}: the cluster did not answer; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Rebuilds the local copy in `dir` from the log's groups. A directory
/// that is not such a copy (a broker's own data) is refused, never
/// removed.
async fn rebuild(dir: &Path, checkpoint: Duration, groups: Vec<crate::store::Group>) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(COPY_MARK).exists() {
            bail!(
                "{} holds data that is not a partition's copy; a cluster worker needs a data directory of its own",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    std::fs::write(
        dir.join(COPY_MARK),
        "This directory is a cluster worker's copy of its partition, rebuilt from the cluster's log.\n",
    )?;
    let path = dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || Store::open_checkpointing_every(&path, checkpoint)).await??;
    let count = groups.len();
    store.import(groups)?;
    store.flush().await?;
    store.checkpoint()?;
    drop(store);
    info!(groups = count, "rebuilt the partition's copy");
    Ok(())
}

/// The MQTT options towards listener `i` (of [`Join::mqtt`], round).
fn mqtt_options(join: &Join, mqtt_tls: Option<&rumqttc::Transport>, i: usize, n: usize) -> MqttOptions {
    let (host, port) = &join.mqtt[i % join.mqtt.len()];
    let mut opts = MqttOptions::new(
        format!("dishsync-{}-{}-{n}", join.partition, join.worker),
        host.clone(),
        *port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    opts.set_inflight(100);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    if let Some((user, pass)) = &join.credentials {
        opts.set_credentials(user.clone(), pass.clone());
    }
    if let Some(transport) = mqtt_tls {
        opts.set_transport(transport.clone());
    }
    opts
}

/// Output connection `n`, moving to the next listener when one stops
/// answering; over TLS, with the same authority as NATS, when
/// [`Join::tls`] is set.
fn mqtt_client(join: &Join, n: usize) -> anyhow::Result<AsyncClient> {
    let transport = match &join.tls {
        Some(tls) => {
            let ca = std::fs::read(&tls.ca).with_context(|| format!("reading {}", tls.ca.display()))?;
            let client_auth = match &tls.client {
                Some((cert, key)) => Some((
                    std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
                    std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
                )),
                None => None,
            };
            Some(rumqttc::Transport::tls(ca, client_auth, None))
        }
        None => None,
    };
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(join, transport.as_ref(), 0, n), 10_000);
    let join = join.clone();
    tokio::spawn(async move {
        let mut at = 0usize;
        loop {
            if let Err(e) = eventloop.poll().await {
                let (host, port) = &join.mqtt[at % join.mqtt.len()];
                warn!(listener = %format!("{host}:{port}"), error = %e, "the MQTT listener does not answer; trying the next");
                at += 1;
                eventloop.mqtt_options = mqtt_options(&join, transport.as_ref(), at, n);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    Ok(client)
}

/// The rules' messages on the cluster, keeping the last retained document
/// of every topic to publish again ([`Republishing::republish`]).
struct Republishing {
    /// The connections outputs leave on; a topic always on the same one,
    /// so its documents keep their order.
    connections: Vec<Attached>,
    retained: Mutex<HashMap<String, (Topic, Vec<u8>)>>,
}

impl Republishing {
    /// The connection `topic`'s documents leave on.
    fn on(&self, topic: &Topic) -> &Attached {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        topic.to_string().hash(&mut hasher);
        &self.connections[hasher.finish() as usize % self.connections.len()]
    }

    fn keep(&self, topic: &Topic, payload: &[u8]) {
        let mut retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        if payload.is_empty() {
            retained.remove(&topic.to_string());
        } else {
            retained.insert(topic.to_string(), (topic.clone(), payload.to_vec()));
        }
    }

    /// Publishes every retained document again.
    async fn republish(&self) {
        let documents: Vec<(Topic, Vec<u8>)> = {
            let retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
            retained.values().cloned().collect()
        };
        for (topic, payload) in &documents {
            self.on(topic).publish(topic, payload.clone(), true).await;
        }
        info!(documents = documents.len(), "published every retained document again");
    }
}

#[async_trait]
impl Publisher for Republishing {
    async fn publish(&self, topic: &Topic, payload: Vec<u8>, retain: bool) {
        if retain {
            self.keep(topic, &payload);
        }
        self.on(topic).publish(topic, payload, retain).await;
    }

    async fn retain(&self, topic: &Topic, payload: Vec<u8>) {
        self.keep(topic, &payload);
        self.on(topic).retain(topic, payload).await;
    }

    async fn deliver(&self, topic: &Topic, payload: Vec<u8>, retained: bool) -> usize {
        self.on(topic).deliver(topic, payload, retained).await
    }
}
