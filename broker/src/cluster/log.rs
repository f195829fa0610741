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
}

/// One partition's log, as one worker appends to it.
pub struct PartitionLog {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
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
        let stream = js
            .get_or_create_stream(stream::Config {
                name: stream_name(partition),
                description: Some(format!("dishsync: the group commits of partition {partition}")),
                subjects: vec![subject.clone()],
                num_replicas: replicas,
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("opening the log of partition {partition}"))?;
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(PartitionLog {
            js: js.clone(),
            stream,
            subject,
            worker: worker.to_string(),
            last: Mutex::new(0),
            // Headers and framing stay well inside the server's limit.
            part_size: max_payload.saturating_sub(16 * 1024).max(64 * 1024),
            token: token.iter().map(|b| format!("{b:02x}")).collect(),
            appended: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Reads the whole log: every complete entry's groups, and where it
    /// ends.
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
        if last == 0 {
            return Ok(replay);
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
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
            if seq >= last {
                break;
            }
        }
        *self.last.lock().await = last;
        Ok(replay)
    }

    /// Takes the partition over: appends a takeover entry right after
    /// `replay`'s last, so that every earlier owner's next append is
    /// refused. Fails if the log moved on since it was read.
    pub async fn take_over(&self, replay: &Replay) -> anyhow::Result<u64> {
        let mut last = self.last.lock().await;
        *last = replay.last;
        let headers = self.headers("takeover", None);
        let seq = self
            .append_one(&mut last, headers, Bytes::new())
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
    async fn append_one(&self, last: &mut u64, headers: HeaderMap, payload: Bytes) -> Result<u64, String> {
        let id = header(&headers, async_nats::header::NATS_MESSAGE_ID.as_ref()).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .headers(headers.clone())
                .expected_last_sequence(*last);
            let acked = match self.js.send_publish(self.subject.clone(), publish).await {
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
            self.append_one(&mut last, headers, Bytes::copy_from_slice(part))
                .await?;
        }
        Ok(())
    }
}

/// A header's value, as text.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_string())
}
