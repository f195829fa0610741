//! Who serves what on the cluster: which partition each store belongs to,
//! and which worker owns each partition now.
//!
//! Both live in JetStream key/value buckets, replicated like the inputs.
//! - `dishsync-partitions`: `store.{store}` names the store's partition,
//!   and `partition.{partition}` lists its stores. The first worker to
//!   start for a partition records them; a worker whose configuration puts
//!   a store in another partition, or gives a partition other stores, is
//!   refused before it takes anything.
//! - `dishsync-owners`: `{partition}` names the worker that owns it. The
//!   bucket's entries expire a lease after they were last written, so the
//!   owner renews its entry (compare-and-set on its revision) three times
//!   per lease, and a standby creates the entry once it is gone. A lease
//!   decides *when* another worker takes over; the partition's log (see
//!   `log`) decides that only one of them can append.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use tracing::{info, warn};

/// The bucket recording each store's partition.
pub const PARTITIONS: &str = "dishsync-partitions";
/// The bucket recording each partition's owner.
pub const OWNERS: &str = "dishsync-owners";

/// Opens bucket `bucket` (creating it with `config` if it is missing).
async fn bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    match js.get_key_value(&config.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => {
            let name = config.bucket.clone();
            match js.create_key_value(config).await {
                Ok(store) => Ok(store),
                // Another worker created it meanwhile.
                Err(_) => js
                    .get_key_value(&name)
                    .await
                    .with_context(|| format!("opening bucket {name}")),
            }
        }
    }
}

/// Opens the bucket recording each store's partition.
pub async fn registry(js: &jetstream::Context, replicas: usize) -> anyhow::Result<kv::Store> {
    bucket(
        js,
        kv::Config {
            bucket: PARTITIONS.into(),
            description: "dishsync: the partition of every store".into(),
            history: 1,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
    .await
}

/// Records that `stores` make up partition `partition`. `Ok(Err(why))`
/// when the cluster already records otherwise (the worker must not
/// start); `Err` when the cluster did not answer.
pub async fn register(registry: &kv::Store, partition: &str, stores: &[String]) -> anyhow::Result<Result<(), String>> {
    let mut stores = stores.to_vec();
    stores.sort();
    let listed = stores.join(",");
    // Creates `key` as `value` unless it is there: what it holds then.
    let record = |key: String, value: String| async move {
        match registry.create(&key, value.clone().into()).await {
            Ok(_) => Ok(value),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => registry
                .get(&key)
                .await
                .with_context(|| format!("reading {key}"))?
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .with_context(|| format!("{key} vanished")),
            Err(e) => Err(anyhow::anyhow!("recording {key}: {e}")),
        }
    };
    for store in &stores {
        let recorded = record(format!("store.{store}"), partition.to_string()).await?;
        if recorded != partition {
            return Ok(Err(format!(
                "store {store} belongs to partition {recorded} on this cluster; this configuration puts it in \
                 partition {partition}: a store is served by one partition only"
            )));
        }
    }
    let recorded = record(format!("partition.{partition}"), listed.clone()).await?;
    if recorded != listed {
        return Ok(Err(format!(
            "partition {partition} holds stores {recorded} on this cluster; this configuration gives it \
             {listed}: every worker of a partition runs the same stores"
        )));
    }
    info!(partition, stores = %listed, "partition recorded");
    Ok(Ok(()))
}

/// A worker's hold on a partition.
pub struct Lease {
    owners: kv::Store,
    partition: String,
    worker: String,
    revision: u64,
    /// How long an entry lives unrenewed.
    pub length: Duration,
    /// When the lease was last renewed.
    renewed: Arc<Mutex<Instant>>,
}

/// Whether a lease still holds, as its keeper last saw it.
#[derive(Clone)]
pub struct Held {
    renewed: Arc<Mutex<Instant>>,
    length: Duration,
}

impl Held {
    /// True while the last renewal is less than half a lease old: a
    /// worker that was paused longer must not act before its keeper
    /// finds out whether it still owns the partition.
    pub fn fresh(&self) -> bool {
        self.renewed.lock().unwrap_or_else(|e| e.into_inner()).elapsed() < self.length / 2
    }
}

/// Opens the owners' bucket, whose entries live `lease` unrenewed (the
/// first worker's setting holds for the cluster).
pub async fn owners(
    js: &jetstream::Context,
    replicas: usize,
    lease: Duration,
) -> anyhow::Result<(kv::Store, Duration)> {
    let store = bucket(
        js,
        kv::Config {
            bucket: OWNERS.into(),
            description: "dishsync: the worker that owns each partition".into(),
            history: 1,
            max_age: lease,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let status = store.status().await.context("reading the owners' bucket")?;
    let length = status.info.config.max_age;
    if length != lease {
        warn!(configured = ?lease, cluster = ?length, "the cluster's lease length holds");
    }
    Ok((store, length))
}

impl Lease {
    /// Waits until `worker` owns `partition`: at once if no one does, else
    /// once the owner's lease ran out. `standby` is called once if it has
    /// to wait, with the owner's name.
    pub async fn acquire(
        owners: kv::Store,
        length: Duration,
        partition: &str,
        worker: &str,
        mut standby: impl FnMut(&str),
    ) -> anyhow::Result<Lease> {
        let mut waiting = false;
        loop {
            match owners.create(partition, worker.to_string().into()).await {
                Ok(revision) => {
                    return Ok(Lease {
                        owners,
                        partition: partition.into(),
                        worker: worker.into(),
                        revision,
                        length,
                        renewed: Arc::new(Mutex::new(Instant::now())),
                    })
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if !waiting {
                        let owner = owners
                            .get(partition)
                            .await
                            .ok()
                            .flatten()
                            .map(|v| String::from_utf8_lossy(&v).into_owned())
                            .unwrap_or_default();
                        standby(&owner);
                        waiting = true;
                    }
                }
                Err(e) => warn!(error = %e, "cannot reach the owners' bucket; trying again"),
            }
            tokio::time::sleep(length / 4).await;
        }
    }

    /// A view of whether the lease holds.
    pub fn held(&self) -> Held {
        Held {
            renewed: self.renewed.clone(),
            length: self.length,
        }
    }

    /// Renews the lease for as long as it holds; returns why it stopped
    /// holding: another worker owns the partition now. While the cluster
    /// cannot answer (a leader change) it keeps trying: the partition's
    /// log, not the lease, keeps two owners from both appending, and a
    /// worker cut off from the cluster can append nothing anyway.
    pub async fn keep(mut self) -> String {
        loop {
            tokio::time::sleep(self.length / 3).await;
            match self
                .owners
                .update(&self.partition, self.worker.clone().into(), self.revision)
                .await
            {
                Ok(revision) => self.renewed(revision),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    match self.owners.entry(&self.partition).await {
                        // An earlier renewal landed and only its answer was lost.
                        Ok(Some(entry)) if entry.value.as_ref() == self.worker.as_bytes() => {
                            self.renewed(entry.revision)
                        }
                        Ok(Some(entry)) => {
                            return format!(
                                "the lease on partition {} ran out and {} holds it now",
                                self.partition,
                                String::from_utf8_lossy(&entry.value)
                            )
                        }
                        // It ran out while the cluster could not be reached, and
                        // no one took it: claimed again.
                        Ok(None) => match self.owners.create(&self.partition, self.worker.clone().into()).await {
                            Ok(revision) => self.renewed(revision),
                            Err(e) => warn!(error = %e, "cannot claim the partition's lease again; trying again"),
                        },
                        Err(e) => warn!(error = %e, "cannot read the partition's lease; trying again"),
                    }
                }
                Err(e) => warn!(error = %e, "cannot renew the partition's lease; trying again"),
            }
        }
    }

    fn renewed(&mut self, revision: u64) {
        self.revision = revision;
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}
