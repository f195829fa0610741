//! A partition's replicated log: a JetStream stream holding every group
//! commit of the partition, in order, from which any worker rebuilds
//! exactly the state the last owner committed.
//!
//! Every append names the sequence the log must end at
//! (`Nats-Expected-Last-Sequence`). A worker that takes the partition over
//! first appends a *takeover* entry after the last one it read, so an
//! earlier owner that wakes up (a paused process, a partitioned network)
//! finds the log moved on: its next append is refused and it stops
//! before anything it applied is acknowledged or published.
//!
//! Every so often the owner writes a *snapshot*: every record of its
//! store, as group-commit pairs, into the object store bucket
//! [`SNAPSHOTS`], then a fenced marker on the log's snapshot subject naming
//! it and the last entry it covers, and purges the entries it covers. A
//! takeover reads the newest snapshot and only the entries after it. A
//! snapshot is taken between two groups, after every group of the entries
//! it names as covered was in the store; an entry after those may be in
//! it too, and is applied again on a takeover — harmless, as a group's
//! pairs are final values, not changes.
//!
//! An entry is the groups of one flush, postcard-encoded. One larger than
//! a message may be is sent in parts (`Dishsync-Part: i/n`, each appended
//! after the one before); a reader applies an entry only once it has every
//! part, so a worker that dies halfway leaves nothing of it. An append
//! whose acknowledgement was lost (a leader change) is sent again under
//! the same message id; if the log already moved, the entry it moved to is
//! checked to be that very append before it counts as refused.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::store::{Group, Replica};

/// The header naming an entry's kind.
const ENTRY: &str = "Dishsync-Entry";
/// The header naming the worker that appended an entry.
const WORKER: &str = "Dishsync-Worker";
/// The header numbering an entry's parts, `i/n`.
const PART: &str = "Dishsync-Part";
/// How long an append is tried again while the cluster cannot take it (a
/// leader change takes 5–15 s) before the worker gives up and stops.
const PATIENCE: Duration = Duration::from_secs(60);

/// The object store bucket holding every partition's snapshots.
pub const SNAPSHOTS: &str = "dishsync-snapshots";
/// The header naming a snapshot's object.
const OBJECT: &str = "Dishsync-Snapshot";
/// The header naming the last entry a snapshot covers.
const COVERS: &str = "Dishsync-Covers";

/// The stream holding partition `partition`'s log.
pub fn stream_name(partition: &str) -> String {
    format!("dishsync-log-{partition}")
}

/// What a read of the log found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every complete entry's groups, in order.
    pub groups: Vec<Group>,
    /// The log's last sequence (0 when empty).
    pub last: u64,
    /// The worker that appended the last takeover, if any.
    pub owner: Option<String>,
    /// Entries read (complete or not).
    pub entries: u64,
    /// The snapshot the read started from: its object and the last entry
    /// it covers.
    pub snapshot: Option<(String, u64)>,
}

/// One partition's log, as one worker appends to it.
pub struct PartitionLog {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    /// Where snapshot markers go.
    snapshot_subject: String,
    snapshots: jetstream::object_store::ObjectStore,
    partition: String,
    /// The last entry appended whole.
    replicated: std::sync::atomic::AtomicU64,
    /// Entries appended since the last snapshot.
    unsnapshotted: std::sync::atomic::AtomicU64,
    worker: String,
    /// The sequence the log ends at, as this worker last appended or read
    /// it; the next append expects it.
    last: Mutex<u64>,
    /// The largest part sent.
    part_size: usize,
    /// Tells this worker's appends apart (a random token per process).
    token: String,
    /// Appends made, for message ids.
    appended: std::sync::atomic::AtomicU64,
}

impl PartitionLog {
    /// Opens (creating it if needed) partition `partition`'s log with
    /// `replicas` copies, for `worker`.
    pub async fn open(
        js: &jetstream::Context,
        partition: &str,
        worker: &str,
        replicas: usize,
        max_payload: usize,
    ) -> anyhow::Result<PartitionLog> {
        let subject = format!("dishsync.log.{partition}");
        let snapshot_subject = format!("{subject}.snapshot");
        let stream = js
            .get_or_create_stream(stream::Config {
                name: stream_name(partition),
                description: Some(format!("dishsync: the group commits of partition {partition}")),
                subjects: vec![subject.clone(), snapshot_subject.clone()],
                num_replicas: replicas,
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("opening the log of partition {partition}"))?;
        let snapshots = match js.get_object_store(SNAPSHOTS).await {
            Ok(bucket) => bucket,
            Err(_) => js
                .create_object_store(jetstream::object_store::Config {
                    bucket: SNAPSHOTS.into(),
                    description: Some("dishsync: every partition's snapshots".into()),
                    num_replicas: replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .context("opening the snapshots' bucket")?,
        };
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(PartitionLog {
            js: js.clone(),
            stream,
            subject,
            snapshot_subject,
            snapshots,
            partition: partition.to_string(),
            replicated: std::sync::atomic::AtomicU64::new(0),
            unsnapshotted: std::sync::atomic::AtomicU64::new(0),
            worker: worker.to_string(),
            last: Mutex::new(0),
            // Headers and framing stay well inside the server's limit.
            part_size: max_payload.saturating_sub(16 * 1024).max(64 * 1024),
            token: token.iter().map(|b| format!("{b:02x}")).collect(),
            appended: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Reads the log: the newest snapshot's records, then every complete
    /// entry after it, and where the log ends.
    pub async fn read(&self) -> anyhow::Result<Replay> {
        let mut stream = self.stream.clone();
        let last = stream
            .info()
            .await
            .context("reading the log's state")?
            .state
            .last_sequence;
        let mut replay = Replay {
            last,
            ..Replay::default()
        };
        *self.last.lock().await = last;
        self.replicated.store(last, std::sync::atomic::Ordering::SeqCst);
        let mut from = 1;
        if let Some(marker) = last_on(&self.stream, &self.snapshot_subject).await? {
            let object = header(&marker.headers, OBJECT).context("a snapshot marker without its object")?;
            let covers: u64 = header(&marker.headers, COVERS)
                .and_then(|c| c.parse().ok())
                .context("a snapshot marker without what it covers")?;
            let mut bytes = Vec::new();
            let mut reading = self
                .snapshots
                .get(&object)
                .await
                .with_context(|| format!("reading snapshot {object}"))?;
            tokio::io::AsyncReadExt::read_to_end(&mut reading, &mut bytes)
                .await
                .with_context(|| format!("reading snapshot {object}"))?;
            let records: Group =
                postcard::from_bytes(&bytes).with_context(|| format!("snapshot {object} cannot be decoded"))?;
            replay.groups.push(records);
            replay.snapshot = Some((object, covers));
            from = covers + 1;
        }
        // The last entry (the snapshot markers come on another subject).
        let Some(last_entry) = last_on(&self.stream, &self.subject).await?.map(|m| m.sequence) else {
            return Ok(replay);
        };
        if last_entry < from {
            return Ok(replay);
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
                filter_subject: self.subject.clone(),
                ..Default::default()
            })
            .await
            .context("reading the log")?;
        let mut messages = consumer.messages().await.context("reading the log")?;
        // The parts of the entry being read.
        let mut parts: Vec<Bytes> = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.context("reading the log")?;
            let seq = message
                .info()
                .map_err(|e| anyhow::anyhow!("a log entry without its sequence: {e}"))?
                .stream_sequence;
            replay.entries += 1;
            let headers = message.headers.clone().unwrap_or_default();
            match header(&headers, ENTRY).as_deref() {
                Some("takeover") => {
                    parts.clear();
                    replay.owner = header(&headers, WORKER);
                }
                Some("commit") => {
                    let (i, n) = header(&headers, PART)
                        .and_then(|p| {
                            let (i, n) = p.split_once('/')?;
                            Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?))
                        })
                        .unwrap_or((1, 1));
                    if i == 1 {
                        // A new entry: an unfinished one before it was
                        // left by a worker that stopped halfway.
                        parts.clear();
                    }
                    if i == parts.len() + 1 {
                        parts.push(message.payload.clone());
                    }
                    if i == n && parts.len() == n {
                        let whole: Vec<u8> = parts.drain(..).flat_map(|p| p.to_vec()).collect();
                        let groups: Vec<Group> = postcard::from_bytes(&whole)
                            .with_context(|| format!("log entry {seq} cannot be decoded"))?;
                        replay.groups.extend(groups);
                    }
                }
                other => warn!(seq, kind = ?other, "skipped a log entry of an unknown kind"),
            }
            if seq >= last_entry {
                break;
            }
        }
        Ok(replay)
    }

    /// Entries appended since the last snapshot.
    pub fn unsnapshotted(&self) -> u64 {
        self.unsnapshotted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last entry appended whole: a snapshot taken after this is read
    /// covers it.
    pub fn replicated(&self) -> u64 {
        self.replicated.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stores `records` — the store's, taken after entry `covers` was
    /// appended — as the partition's snapshot: the object first, then its
    /// marker, fenced like an entry; then drops the entries and the
    /// snapshot it replaces. Fails, leaving the log as it was, if another
    /// worker took the partition over.
    pub async fn snapshot(&self, covers: u64, records: Group) -> anyhow::Result<()> {
        let previous = last_on(&self.stream, &self.snapshot_subject)
            .await?
            .and_then(|m| header(&m.headers, OBJECT));
        let bytes = postcard::to_allocvec(&records).context("encoding a snapshot")?;
        let object = format!("{}-{covers}-{}", self.partition, self.token);
        self.snapshots
            .put(object.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| anyhow::anyhow!("storing snapshot {object}: {e}"))?;
        let mut headers = self.headers("snapshot", None);
        headers.insert(OBJECT, object.as_str());
        headers.insert(COVERS, covers.to_string().as_str());
        let marked = {
            let mut last = self.last.lock().await;
            self.append_one(&self.snapshot_subject, &mut last, headers, Bytes::new())
                .await
        };
        if let Err(e) = marked {
            let _ = self.snapshots.delete(&object).await;
            anyhow::bail!("marking snapshot {object}: {e}");
        }
        self.unsnapshotted.store(0, std::sync::atomic::Ordering::SeqCst);
        // What it replaces: purging is tidying, and a failure only leaves
        // entries a later snapshot drops.
        if let Err(e) = self
            .stream
            .purge()
            .filter(self.subject.clone())
            .sequence(covers + 1)
            .await
        {
            warn!(error = %e, "cannot drop the entries the snapshot covers");
        }
        if let Err(e) = self.stream.purge().filter(self.snapshot_subject.clone()).keep(1).await {
            warn!(error = %e, "cannot drop the older snapshot markers");
        }
        if let Some(previous) = previous.filter(|p| *p != object) {
            if let Err(e) = self.snapshots.delete(&previous).await {
                warn!(error = %e, %previous, "cannot delete the snapshot replaced");
            }
        }
        info!(%object, covers, records = records.len(), bytes = bytes.len(), "snapshot stored");
        Ok(())
    }

    /// Takes the partition over: appends a takeover entry right after
    /// `replay`'s last, so that every earlier owner's next append is
    /// refused. Fails if the log moved on since it was read.
    pub async fn take_over(&self, replay: &Replay) -> anyhow::Result<u64> {
        let mut last = self.last.lock().await;
        *last = replay.last;
        let headers = self.headers("takeover", None);
        let seq = self
            .append_one(&self.subject, &mut last, headers, Bytes::new())
            .await
            .map_err(|e| anyhow::anyhow!("taking the partition over: {e}"))?;
        info!(seq, worker = %self.worker, "took the partition's log over");
        Ok(seq)
    }

    fn headers(&self, kind: &str, part: Option<(usize, usize)>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ENTRY, kind);
        headers.insert(WORKER, self.worker.as_str());
        if let Some((i, n)) = part {
            headers.insert(PART, format!("{i}/{n}").as_str());
        }
        let n = self.appended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}-{}-{n}", self.worker, self.token).as_str(),
        );
        headers
    }

    /// Appends one message after `last`, trying again while the cluster
    /// cannot answer; `last` becomes its sequence.
    async fn append_one(
        &self,
        subject: &str,
        last: &mut u64,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<u64, String> {
        let id = header(&headers, async_nats::header::NATS_MESSAGE_ID.as_ref()).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .headers(headers.clone())
                .expected_last_sequence(*last);
            let acked = match self.js.send_publish(subject.to_string(), publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => {
                    *last = ack.sequence;
                    return Ok(ack.sequence);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // Ours, if an earlier try landed and only its answer
                    // was lost; else another worker appended.
                    let next = *last + 1;
                    match self.stream.direct_get(next).await {
                        Ok(found)
                            if header(&found.headers, async_nats::header::NATS_MESSAGE_ID.as_ref())
                                == Some(id.clone()) =>
                        {
                            *last = next;
                            return Ok(next);
                        }
                        Ok(found) => {
                            let by = header(&found.headers, WORKER).unwrap_or_else(|| "another worker".into());
                            return Err(format!(
                                "the partition's log moved on past {last} (entry {next} is {by}'s): another worker took the partition over"
                            ));
                        }
                        Err(e) if tokio::time::Instant::now() < deadline => {
                            warn!(error = %e, "cannot read the log's next entry; trying again");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => return Err(format!("cannot read the partition's log: {e}")),
                    }
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, "the cluster did not take a log entry; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(format!("the cluster did not take a log entry for {PATIENCE:?}: {e}")),
            }
        }
    }
}

#[async_trait::async_trait]
impl Replica for PartitionLog {
    async fn append(&self, groups: Vec<Group>) -> Result<(), String> {
        let whole = postcard::to_allocvec(&groups).map_err(|e| format!("encoding a log entry: {e}"))?;
        let parts: Vec<&[u8]> = whole.chunks(self.part_size).collect();
        let n = parts.len();
        let mut last = self.last.lock().await;
        for (i, part) in parts.into_iter().enumerate() {
            let headers = self.headers("commit", Some((i + 1, n)));
            self.append_one(&self.subject, &mut last, headers, Bytes::copy_from_slice(part))
                .await?;
        }
        self.replicated.store(*last, std::sync::atomic::Ordering::SeqCst);
        self.unsnapshotted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// The last message on `subject` in `stream`, if any.
async fn last_on(stream: &stream::Stream, subject: &str) -> anyhow::Result<Option<jetstream::message::StreamMessage>> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading the last message on {subject}: {e}")),
    }
}

/// A header's value, as text.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_string())
}
