//! Durable state: a write-ahead journal for every group commit, and sled for
//! the ledger, the dedup index, sale records and the materialised state of
//! every SKU, dish and menu.
//!
//! A group commit is a set of key/value pairs — an input's ledger lines, its
//! id in the dedup index and every state it changed. [`Store::apply`] appends
//! it to the [`journal`] as one record and keeps its pairs in memory (the
//! *overlay*), where reads find them at once; [`Store::flush`] makes the
//! journal durable with one `fdatasync` shared by every commit waiting. A
//! background checkpointer moves the overlay into sled every
//! [`CHECKPOINT_EVERY`], merged (a dish state rewritten by a thousand
//! commits is written once) and record by record, so that reads never wait
//! for it; it flushes sled, then notes the last group sled holds under `j`,
//! and deletes the journal segments sled now covers. Opening
//! the store replays the journal records past `j` into sled first, so a
//! crash — even `kill -9` — loses nothing that was flushed and leaves either
//! all of a commit or none of it. Damage a crash cannot leave (a bad journal
//! record with intact ones after it, a missing segment, sled behind the
//! journal's first group) makes the open fail with [`StoreError::Damaged`];
//! [`Store::repair`] keeps every intact record and reports what is lost.
//!
//! sled keys, in one tree (the documents' keys are
//! [`Document::key`](dishsync_inventory::Document::key)'s):
//!
//! | prefix | key | value (postcard) |
//! |---|---|---|
//! | `i/` | store `/` event id | content fingerprint (u64), then when the input was applied (i64 ms; absent on ids written before it was kept) |
//! | `l/` | first line's sequence (u64, big-endian) | a page of up to 1,024 consecutive [`LedgerEntry`]s: count, then length-prefixed lines (u32 LE) |
//! | `ls/` | store `/` hour of the lines' stamps (u64, big-endian, sign bit flipped) and first line's sequence (u64, big-endian) | the index: that store's lines stamped in that hour, whole — per line its sequence (u64 LE), length (u32 LE) and bytes |
//! | `li` | — | every ledger line is in the index (written once a directory from before the index is indexed) |
//! | `k/` | store `/` sku | [`SkuState`](dishsync_inventory::SkuState) |
//! | `d/` | store `/` dish | [`DishState`](dishsync_inventory::DishState) |
//! | `m/` | store | [`MenuState`](dishsync_inventory::MenuState) |
//! | `x/` | store `/` sale id | [`SaleRecord`] |
//! | `a/` | store `/` alert id | the alert as last published (raised, or cleared), as its JSON |
//! | `p/` | store | [`StorePlan`](dishsync_inventory::StorePlan) |
//! | `v/` | store `/` sku | [`VarianceState`](dishsync_inventory::planning::variance::VarianceState): usage since the last count |
//! | `h/` | store | [`UsageHistory`](dishsync_inventory::planning::movers::UsageHistory): the last days of use and waste |
//! | `e/` | store `/` probe | [`ProbeState`](dishsync_inventory::planning::coldchain::ProbeState): a fridge's or freezer's probe |
//! | `q/` | request id | [`Request`](dishsync_inventory::Request) |
//! | `t/` | transfer id | [`Transfer`](dishsync_inventory::Transfer) |
//! | `s` | — | [`Shown`]: the ids of the requests and transfers the planning state holds |
//! | `c` | — | [`ChainPlan`](dishsync_inventory::ChainPlan) |
//! | `j` | — | last journal group in sled (u64, big-endian) |
//! | `w/` | endpoint `/` delivery number (u64, big-endian) | a queued webhook delivery |
//! | `wn` | — | the next webhook delivery number (u64, big-endian) |
//! | `wc/` | endpoint | every delivery below this number is done (u64, big-endian) |
//! | `wx/` | endpoint `/` delivery number (u64, big-endian) | a dead letter: a delivery given up |
//! | `ws/` | SHA-256 of a web session's token | the session (person, CSRF token, end) |
//!
//! Start-up reads the snapshot, current once the journal is replayed: the
//! SKU, dish, menu, plan, variance, history and probe records, and the requests and transfers `s`
//! names — open ones and those finished less than a day ago. Never the
//! ledger, the sale records or older requests and transfers: history for
//! audit and reports, which grows with every day of trading, and which
//! [`retention`] removes once it is older than the configuration keeps.
//!
//! A cluster worker's store also has a [`Replica`]: the partition's
//! replicated log. Each group is appended there too, and a flush returns
//! only once the replica holds every group it made durable — so whatever
//! waits on a flush (a device's answer, its end-to-end ack) waits on the
//! replica. [`Store::dump`] and [`Store::import`] carry a snapshot of
//! every record out of one store and into another.
//!
//! Webhook deliveries are queued in the commit of the change that causes
//! them (`w/`, `wn`). How far each endpoint got (`wc/`) and what it gave
//! up (`wx/`) are written by its sender straight into sled, outside the
//! journal: losing the latest of them in a crash only sends a delivery
//! again under the same id, which a receiver de-duplicates.
//!
//! Web sessions (`ws/`) are written straight into sled by the web app at
//! login and logout, flushed at once, so a restart keeps people logged in.
//!
//! Invariant: only the rules shell writes here, and only through [`Commit`]
//! — but for the webhook senders' progress and dead letters, and the web
//! app's sessions.

pub mod backup;
pub mod journal;
pub mod retention;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use journal::{Journal, Record};
use std::path::Path;

use dishsync_inventory::document::{Decode, SCANNED_PREFIXES};
use dishsync_inventory::{Document, Inventory, LedgerEntry, Restored, SaleRecord, Shown};
use dishsync_protocol::{EventId, StoreId};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A storage failure. The shell treats it as fatal: it cannot know what
/// reached the disk, so it stops and lets the restart recover from sled.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(sled::Error),
    /// The journal could not be read or written.
    #[error("journal: {0}")]
    Journal(#[from] std::io::Error),
    /// sled's own checksums found damage in its files. The journal holds
    /// only the latest group commits and cannot rebuild them.
    #[error(
        "sled's files in the data directory are damaged ({0}); the journal holds only the latest group \
         commits and cannot rebuild them: restore the data directory from a backup"
    )]
    SledDamaged(sled::Error),
    /// The journal holds damage that a crash cannot leave: acknowledged
    /// group commits are unreadable. Nothing was opened.
    #[error("{0}")]
    Damaged(Box<journal::Damage>),
    /// The replica refused or lost a group commit (a cluster worker whose
    /// partition another worker took over).
    #[error("replication: {0}")]
    Replica(String),
    /// Another process holds the data directory (a broker running on it,
    /// or a backup's restore).
    #[error("the data directory is in use by another process (is a broker running on it?)")]
    InUse,
    /// A record could not be encoded or decoded.
    #[error("record {key}: {source}")]
    Record {
        /// The key.
        key: String,
        /// The postcard error.
        source: postcard::Error,
    },
}

impl From<sled::Error> for StoreError {
    /// Damage sled's checksums find, on any read, is [`StoreError::SledDamaged`].
    fn from(e: sled::Error) -> StoreError {
        match e {
            e @ sled::Error::Corruption { .. } => StoreError::SledDamaged(e),
            e => StoreError::Sled(e),
        }
    }
}

/// A write failed while serving: the broker stopped so that the restart
/// recovers the last complete commit (devices re-send what they saw no ack
/// for). `main` exits with 70 on it.
#[derive(Debug, thiserror::Error)]
#[error("storage failed ({0}); stopped so that the restart recovers the last complete commit")]
pub struct StorageFailed(pub String);

/// How often the checkpointer moves committed groups from memory into sled.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The durable store. Clones share it; the last one dropped runs a final
/// checkpoint.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What the store and its checkpointer share.
struct Shared {
    db: sled::Db,
    journal: Journal,
    overlay: Mutex<Overlay>,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
    /// Set once a write failed: what reached the disk is unknown, so the
    /// broker stops (see [`Store::failed`]).
    failure: tokio::sync::watch::Sender<Option<String>>,
    /// The last journal group sled holds.
    checkpointed: AtomicU64,
    /// Where group commits are replicated before they count as durable,
    /// once set ([`Store::replicate_to`]).
    replica: std::sync::OnceLock<Arc<dyn Replica>>,
    /// The groups journaled since the last replication, in order.
    unreplicated: Mutex<Vec<Group>>,
    /// One replication at a time, so groups reach the replica in order.
    replicating: tokio::sync::Mutex<()>,
}

/// One group commit's pairs, as the journal records them.
pub type Group = Vec<(Vec<u8>, Vec<u8>)>;

/// A replicated log that group commits must reach before a flush returns:
/// a cluster worker's partition log. The local journal stays the worker's
/// own copy; the replica is what another worker rebuilds the state from.
#[async_trait::async_trait]
pub trait Replica: Send + Sync {
    /// Appends `groups`, in order, as one entry; returns once the replica
    /// holds them. An error means it may not: the store fails.
    async fn append(&self, groups: Vec<Group>) -> Result<(), String>;
}

/// Pairs journaled but not yet in sled: read before sled.
#[derive(Default)]
struct Overlay {
    /// Written since the last checkpoint began.
    active: HashMap<Vec<u8>, Vec<u8>>,
    /// The last group in `active`.
    active_last: u64,
    /// Being written to sled by the running checkpoint.
    sealed: Arc<HashMap<Vec<u8>, Vec<u8>>>,
}

struct Inner {
    shared: Arc<Shared>,
    /// The next ledger sequence number: read once at open, then advanced by
    /// every applied commit (only the rules task writes).
    next_seq: AtomicU64,
    /// The next journal group.
    next_group: AtomicU64,
    /// The next webhook delivery number (only the rules task writes).
    next_webhook: AtomicU64,
    /// Dropping the sender stops the checkpointer after a last checkpoint.
    stop: Option<std::sync::mpsc::Sender<()>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
    }
}

fn key2(prefix: &str, a: &str, b: &str) -> Vec<u8> {
    format!("{prefix}/{a}/{b}").into_bytes()
}

fn encode<T: Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|source| StoreError::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// A ledger line, in today's layout or in the one before it (without who
/// sent it and when it was applied, read as unknown). A line of the
/// earlier layout ends where today's has more fields, so it never reads as
/// today's.
fn decode_line(key: &[u8], bytes: &[u8]) -> Result<LedgerEntry, StoreError> {
    #[derive(serde::Deserialize)]
    struct Earlier {
        store: StoreId,
        sku: dishsync_protocol::SkuId,
        event: EventId,
        kind: dishsync_inventory::EntryKind,
        amount: i64,
        at: dishsync_protocol::Millis,
        moved: bool,
    }
    match postcard::from_bytes::<LedgerEntry>(bytes) {
        Ok(line) => Ok(line),
        Err(today) => match postcard::from_bytes::<Earlier>(bytes) {
            Ok(e) => Ok(LedgerEntry::new(
                &e.store, &e.sku, &e.event, e.kind, e.amount, e.at, e.moved,
            )),
            Err(_) => Err(StoreError::Record {
                key: String::from_utf8_lossy(key).into_owned(),
                source: today,
            }),
        },
    }
}

/// The last journal group sled holds.
const CHECKPOINT_KEY: &[u8] = b"j";
/// The next webhook delivery number.
const NEXT_WEBHOOK_KEY: &[u8] = b"wn";

/// The key of webhook record `seq` of `endpoint` under `prefix`.
fn webhook_key(prefix: &str, endpoint: &str, seq: u64) -> Vec<u8> {
    let mut key = format!("{prefix}/{endpoint}/").into_bytes();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The delivery number at the end of a webhook record's key.
fn webhook_seq(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// One persisted value, decoded as the type its document's state has.
struct Persisted<'a> {
    key: &'a [u8],
    value: &'a [u8],
}

impl Decode for Persisted<'_> {
    type Error = StoreError;

    fn decode<T: DeserializeOwned>(self) -> Result<T, StoreError> {
        decode(self.key, self.value)
    }
}

impl Shared {
    /// Moves the overlay into sled and releases the journal behind it.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let _one = self.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
        let (sealed, last) = {
            let mut overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
            if overlay.active.is_empty() {
                return Ok(());
            }
            let active = std::mem::take(&mut overlay.active);
            overlay.sealed = Arc::new(active);
            (overlay.sealed.clone(), overlay.active_last)
        };
        write_pairs(&self.db, sealed.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
        // sled answers every read of these keys from here on.
        self.overlay.lock().unwrap_or_else(|e| e.into_inner()).sealed = Arc::default();
        drop(sealed);
        mark_checkpoint(&self.db, last)?;
        self.checkpointed.store(last, Ordering::Relaxed);
        self.journal.release(last)?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        {
            let overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = overlay.active.get(key).or_else(|| overlay.sealed.get(key)) {
                return Ok(Some(v.clone()));
            }
        }
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }
}

/// How long an open waits for the data directory's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// Opens sled in `dir`. sled's IO threads release the directory's lock a
/// moment after the last handle is dropped, so a reopen in the same process
/// (a restart in tests and benchmarks) waits for the lock, up to
/// [`LOCK_PATIENCE`]; while another process holds it after that, the open
/// fails with [`StoreError::InUse`].
fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        // The checkpointer flushes explicitly; sled's own periodic flusher
        // would only repeat that work.
        let opened = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open();
        match opened {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::InUse);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e @ sled::Error::Corruption { .. }) => return Err(StoreError::SledDamaged(e)),
            other => return Ok(other?),
        }
    }
}

/// The document persisted as `key` with `value`, restored.
fn restored(key: &[u8], value: &[u8]) -> Result<Option<Restored>, StoreError> {
    let doc = std::str::from_utf8(key)
        .ok()
        .and_then(Document::from_key)
        .ok_or_else(|| StoreError::Record {
            key: String::from_utf8_lossy(key).into_owned(),
            source: postcard::Error::DeserializeBadEncoding,
        })?;
    doc.restore(Persisted { key, value })
}

/// Every document persisted in one of `ranges` (of keys, from and
/// before), restored, in key order: in pieces of a bounded size, so that
/// hundreds of thousands are never copied from one ever larger vector to
/// the next.
fn scan(db: &sled::Db, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Vec<Restored>>, StoreError> {
    const PIECE: usize = 16_384;
    let mut pieces: Vec<Vec<Restored>> = Vec::new();
    for (from, before) in ranges {
        for item in db.range(from.as_slice()..before.as_slice()) {
            let (key, value) = item?;
            let Some(document) = restored(&key, &value)? else {
                continue;
            };
            match pieces.last_mut() {
                Some(piece) if piece.len() < PIECE => piece.push(document),
                _ => {
                    let mut piece = Vec::with_capacity(PIECE);
                    piece.push(document);
                    pieces.push(piece);
                }
            }
        }
    }
    Ok(pieces)
}

/// What [`Store::load`] read: every document, in pieces of a bounded
/// size. Restoring takes them one by one, and each piece's memory goes
/// back as soon as it is taken — never one vector of them all, which at
/// 2,000 stores held 760,000 documents at once.
#[derive(Debug, Default)]
pub struct Loaded {
    pieces: Vec<Vec<Restored>>,
}

impl Loaded {
    /// How many documents were read.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum()
    }

    /// Whether nothing was read (a first start).
    pub fn is_empty(&self) -> bool {
        self.pieces.iter().all(Vec::is_empty)
    }
}

impl IntoIterator for Loaded {
    type Item = Restored;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<Restored>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.pieces.into_iter().flatten()
    }
}

/// The key ranges that [`Store::load`] reads on each of its two threads:
/// of every per-store prefix, the stores before `halfway` on one and the
/// rest on the other; without `halfway`, all on one.
fn halves_of_the_chain(halfway: Option<&str>) -> [Vec<(Vec<u8>, Vec<u8>)>; 2] {
    // Every key under `prefix` ("k/") is before its end ("k0").
    let whole = |prefix: &str| {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        (prefix.as_bytes().to_vec(), end)
    };
    let mut halves: [Vec<(Vec<u8>, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
    for prefix in SCANNED_PREFIXES {
        let (from, before) = whole(prefix);
        match halfway {
            Some(store) => {
                let middle = format!("{prefix}{store}/").into_bytes();
                halves[0].push((from, middle.clone()));
                halves[1].push((middle, before));
            }
            None => halves[0].push((from, before)),
        }
    }
    halves
}

/// Ledger lines per sled record at most.
const PAGE_LINES: usize = 1024;

/// The ledger line number of a journal key (`l/` + sequence).
fn ledger_seq(key: &[u8]) -> Option<u64> {
    match key {
        [b'l', b'/', seq @ ..] => Some(u64::from_be_bytes(seq.try_into().ok()?)),
        _ => None,
    }
}

/// Writes `pairs` (the latest value of each key) into sled, not yet
/// durable. Ledger lines are packed into pages of consecutive lines, one
/// record each: sled's cost is per record, and the ledger is only ever read
/// in order.
///
/// Every record is its own insert, never a `sled::Batch`: the first batch
/// turns on sled's process-wide read/write lock for good, and then every
/// read — the rules' duplicate check on each input among them — waits while
/// a batch is applied, 2–10 ms at every checkpoint. Nothing here needs a
/// batch's atomicity: every write puts a final value, so writing the same
/// pairs again (a replay after a crash part-way) ends in the same state,
/// and [`mark_checkpoint`] records only afterwards that they are in.
fn write_pairs<'a>(db: &sled::Db, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Result<(), StoreError> {
    let mut lines: Vec<(u64, &[u8])> = Vec::new();
    for (key, value) in pairs {
        match ledger_seq(key) {
            Some(seq) => lines.push((seq, value)),
            None => {
                db.insert(key, value)?;
            }
        }
    }
    lines.sort_unstable_by_key(|(seq, _)| *seq);
    let mut start = 0;
    while start < lines.len() {
        let mut end = start + 1;
        while end < lines.len() && end - start < PAGE_LINES && lines[end].0 == lines[end - 1].0 + 1 {
            end += 1;
        }
        let page = &lines[start..end];
        let mut value = Vec::with_capacity(4 + page.iter().map(|(_, v)| 4 + v.len()).sum::<usize>());
        value.extend_from_slice(&(page.len() as u32).to_le_bytes());
        for (_, line) in page {
            value.extend_from_slice(&(line.len() as u32).to_le_bytes());
            value.extend_from_slice(line);
        }
        db.insert(ledger_key(page[0].0), value)?;
        start = end;
    }
    index_lines(db, &lines)
}

/// How long one stretch of a store's ledger index covers.
const INDEX_SPAN: i64 = 3_600_000;

/// The index key of the lines of `store` stamped in `hour` (hours since
/// the epoch), from line `first` on: `ls/{store}/`, the hour (big-endian,
/// ordered across zero), the first line's number.
fn index_key(store: &str, hour: i64, first: u64) -> Vec<u8> {
    let mut key = format!("ls/{store}/").into_bytes();
    key.extend_from_slice(&((hour as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&first.to_be_bytes());
    key
}

/// Files `lines` (numbered, in order) in each store's index by the hour of
/// their stamp: one record per store and hour, holding the lines whole,
/// so that a store's day is read from its own records alone, however many
/// other stores share the ledger. Writing the same lines again (a replay)
/// files them again under the same or another record; readers keep each
/// number once.
fn index_lines(db: &sled::Db, lines: &[(u64, &[u8])]) -> Result<(), StoreError> {
    let mut stretches: std::collections::BTreeMap<(String, i64), Vec<u8>> = std::collections::BTreeMap::new();
    let mut firsts: HashMap<(String, i64), u64> = HashMap::new();
    for &(seq, bytes) in lines {
        let entry = decode_line(&ledger_key(seq), bytes)?;
        let stretch = (entry.store.to_string(), entry.at.div_euclid(INDEX_SPAN));
        firsts.entry(stretch.clone()).or_insert(seq);
        let value = stretches.entry(stretch).or_default();
        value.extend_from_slice(&seq.to_le_bytes());
        value.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        value.extend_from_slice(bytes);
    }
    for (stretch, value) in stretches {
        let first = firsts.get(&stretch).copied().unwrap_or_default();
        db.insert(index_key(&stretch.0, stretch.1, first), value)?;
    }
    Ok(())
}

/// The numbered lines of one index record.
fn indexed_lines<'a>(key: &[u8], value: &'a [u8]) -> Result<Vec<(u64, &'a [u8])>, StoreError> {
    let bad = || StoreError::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        source: postcard::Error::DeserializeBadEncoding,
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < value.len() {
        let seq = u64::from_le_bytes(value.get(at..at + 8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let len = u32::from_le_bytes(
            value
                .get(at + 8..at + 12)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        out.push((seq, value.get(at + 12..at + 12 + len).ok_or_else(bad)?));
        at += 12 + len;
    }
    Ok(out)
}

/// Marks a data directory whose every ledger line is in its store's index.
const INDEXED_KEY: &[u8] = b"li";

/// Indexes the ledger of a data directory written before the index, once.
fn index_existing(db: &sled::Db) -> Result<(), StoreError> {
    if db.get(INDEXED_KEY)?.is_some() {
        return Ok(());
    }
    let mut indexed = 0usize;
    for item in db.scan_prefix("l/") {
        let (key, page) = item?;
        let Some(first) = ledger_seq(&key) else { continue };
        let lines: Vec<(u64, &[u8])> = page_lines(&key, &page)?
            .into_iter()
            .enumerate()
            .map(|(i, line)| (first + i as u64, line))
            .collect();
        indexed += lines.len();
        index_lines(db, &lines)?;
    }
    db.insert(INDEXED_KEY, &[1u8])?;
    db.flush()?;
    if indexed > 0 {
        tracing::info!(lines = indexed, "ledger indexed by store and hour");
    }
    Ok(())
}

/// Makes what [`write_pairs`] wrote durable, then records that sled holds
/// every journal group up to `last`, durably. The two flushes keep the
/// order: `j` never names a group whose pairs a crash could lose.
fn mark_checkpoint(db: &sled::Db, last: u64) -> Result<(), StoreError> {
    db.flush()?;
    db.insert(CHECKPOINT_KEY, &last.to_be_bytes())?;
    db.flush()?;
    Ok(())
}

/// Records with their numbers, in order.
pub type Numbered<T> = Vec<(u64, T)>;

/// A stretch of the ledger ([`Store::ledger_from`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerPage {
    /// Each line with its number, in commit order.
    pub lines: Vec<(u64, LedgerEntry)>,
    /// The number of the next line, if there is one.
    pub next: Option<u64>,
}

fn ledger_key(seq: u64) -> Vec<u8> {
    let mut key = b"l/".to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The encoded lines of a ledger page, in order.
fn page_lines<'a>(key: &[u8], page: &'a [u8]) -> Result<Vec<&'a [u8]>, StoreError> {
    let bad = || StoreError::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        source: postcard::Error::DeserializeBadEncoding,
    };
    let mut at = 0;
    let mut take = |n: usize| {
        let part = page.get(at..at + n).ok_or_else(bad);
        at += n;
        part
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
    let mut lines = Vec::with_capacity(count.min(PAGE_LINES));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        lines.push(take(len)?);
    }
    Ok(lines)
}

/// The checkpointer thread: a checkpoint every `every`, and a last one
/// when the store is dropped.
fn checkpointer(shared: Arc<Shared>, every: Duration, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        let last = match stop.recv_timeout(every) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if let Err(e) = shared.checkpoint() {
            // The journal still holds everything; the restart replays it.
            tracing::error!(error = %e, "checkpoint failed; stopping the broker");
            shared.failure.send_replace(Some(format!("a checkpoint failed: {e}")));
            return;
        }
        if last {
            return;
        }
    }
}

/// The last journal group sled holds (0 for a new store).
fn checkpoint_mark(db: &sled::Db) -> Result<u64, StoreError> {
    Ok(match db.get(CHECKPOINT_KEY)? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default()),
        None => 0,
    })
}

/// Writes the records past `checkpointed` into sled, durably, and returns
/// the last group sled then holds.
fn replay(db: &sled::Db, checkpointed: u64, records: Vec<Record>) -> Result<u64, StoreError> {
    let mut last = checkpointed;
    let mut pending = HashMap::new();
    let mut replayed = 0usize;
    for Record { seq, puts } in records {
        if seq <= last {
            continue;
        }
        pending.extend(puts);
        last = seq;
        replayed += 1;
    }
    if replayed > 0 {
        write_pairs(db, pending.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
        mark_checkpoint(db, last)?;
        tracing::info!(groups = replayed, "journal replayed into sled");
    }
    Ok(last)
}

/// What [`Store::repair`] found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Repair {
    /// The journal was intact (at most a torn tail): nothing changed.
    Intact,
    /// The journal was damaged; every intact record is now in sled.
    Repaired {
        /// What was wrong.
        damage: Box<journal::Damage>,
        /// Intact records kept from after the damage.
        kept_after: usize,
        /// Where the damaged segments were set aside.
        set_aside: std::path::PathBuf,
    },
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (damage, kept_after, set_aside) = match self {
            Repair::Intact => return write!(f, "the journal is intact: nothing to repair"),
            Repair::Repaired {
                damage,
                kept_after,
                set_aside,
            } => (damage, kept_after, set_aside),
        };
        match &damage.kind {
            journal::DamageKind::BadRecord { segment, offset } => {
                writeln!(f, "damaged: the record at byte {offset} of {}", segment.display())?
            }
            journal::DamageKind::MissingGroups { segment, at_checkpoint } => writeln!(
                f,
                "damaged: group commits missing before {}{}",
                segment.display(),
                if *at_checkpoint {
                    " (sled lost its latest writes, or a journal segment is missing)"
                } else {
                    ""
                }
            )?,
            journal::DamageKind::NoSegments => writeln!(f, "damaged: the journal had no segment")?,
        }
        writeln!(
            f,
            "kept: every intact record, {kept_after} of them after the damage; the store holds group {} on",
            damage.last_intact
        )?;
        match damage.lost_groups() {
            Some((first, last)) => writeln!(f, "lost: group commits {first} to {last} ({})", last - first + 1)?,
            None => writeln!(
                f,
                "lost: the group commits after {} (how many cannot be told)",
                damage.last_intact
            )?,
        }
        if damage.readable_ids.is_empty() {
            writeln!(f, "lost inputs: none could be read from the damaged bytes")?;
        } else {
            writeln!(
                f,
                "lost inputs: at least {}, read from the damaged bytes (store/id): {}",
                damage.readable_ids.len(),
                damage.readable_ids.join(", ")
            )?;
        }
        writeln!(
            f,
            "Their ledger lines and their ids in the duplicate index are gone; their effect stays wherever a \
             later group rewrote the same state (a SKU's level, a dish). Do not book them again: count the \
             SKUs they touched instead{}",
            if damage.readable_skus.is_empty() {
                ".".to_string()
            } else {
                format!(" (store/sku): {}.", damage.readable_skus.join(", "))
            }
        )?;
        write!(f, "The damaged segments are kept in {}", set_aside.display())
    }
}

impl Store {
    /// Repairs a damaged journal in the data directory `dir` (the broker
    /// must not be running: sled's lock keeps a second process out). Every
    /// intact record — before the damage and after it — goes into sled; the
    /// damaged segments are moved to `journal-damaged-{unix seconds}/`, and
    /// a fresh journal starts. A later record rewrites the whole state of
    /// each SKU, dish and menu it touches, so those come back exactly; what
    /// only the damaged records held (their ledger lines and input ids,
    /// the state they alone touched) is lost, and reported.
    pub fn repair(dir: &Path) -> Result<Repair, StoreError> {
        let db = open_sled(dir)?;
        // Every record read once: damage in sled's own files, which the
        // journal cannot mend, is refused before anything is written.
        db.checksum()?;
        let journal_dir = dir.join("journal");
        let checkpointed = checkpoint_mark(&db)?;
        let reading = journal::read(&journal_dir, checkpointed)?;
        let Some(damage) = reading.damage else {
            return Ok(Repair::Intact);
        };
        let kept_after = damage.intact_after.len();
        let mut records = reading.records;
        records.extend(damage.intact_after.iter().cloned());
        let last = replay(&db, checkpointed, records)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let set_aside = dir.join(format!("journal-damaged-{now}"));
        if journal_dir.exists() {
            std::fs::rename(&journal_dir, &set_aside)?;
        } else {
            std::fs::create_dir_all(&set_aside)?;
        }
        drop(Journal::create(&journal_dir, last + 1)?);
        std::fs::File::open(dir)?.sync_all()?;
        tracing::warn!(groups_lost = ?damage.lost_groups(), kept_after, "journal repaired");
        Ok(Repair::Repaired {
            damage: Box::new(damage),
            kept_after,
            set_aside,
        })
    }

    /// Opens (or creates) the store in `dir`, replaying the journal into
    /// sled first.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Some(CHECKPOINT_EVERY))
    }

    /// Opens the store with a checkpoint every `interval` instead of
    /// [`CHECKPOINT_EVERY`].
    pub fn open_checkpointing_every(dir: &Path, interval: Duration) -> Result<Store, StoreError> {
        Store::open_with(dir, Some(interval))
    }

    /// Opens the store; with no checkpoint interval no checkpointer runs, and
    /// only [`Store::checkpoint`] moves commits into sled (so dropping the
    /// store leaves them to the journal alone, as a crash would).
    fn open_with(dir: &Path, checkpoint_every: Option<Duration>) -> Result<Store, StoreError> {
        let db = open_sled(dir)?;
        let journal_dir = dir.join("journal");
        let checkpointed = checkpoint_mark(&db)?;
        let reading = journal::read(&journal_dir, checkpointed)?;
        if let Some(damage) = reading.damage {
            return Err(StoreError::Damaged(Box::new(damage)));
        }
        let last = replay(&db, checkpointed, reading.records)?;
        index_existing(&db)?;
        let journal = Journal::create(&journal_dir, last + 1)?;
        let shared = Arc::new(Shared {
            db,
            journal,
            overlay: Mutex::new(Overlay::default()),
            checkpointing: Mutex::new(()),
            failure: tokio::sync::watch::channel(None).0,
            checkpointed: AtomicU64::new(last),
            replica: std::sync::OnceLock::new(),
            unreplicated: Mutex::new(Vec::new()),
            replicating: tokio::sync::Mutex::new(()),
        });
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = if let Some(every) = checkpoint_every {
            let shared = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("dishsync-checkpoint".into())
                    .spawn(move || checkpointer(shared, every, stopped))?,
            )
        } else {
            None
        };
        let store = Store {
            inner: Arc::new(Inner {
                shared,
                next_seq: AtomicU64::new(0),
                next_group: AtomicU64::new(last + 1),
                next_webhook: AtomicU64::new(0),
                stop: Some(stop),
                checkpointer: thread,
            }),
        };
        let next = store.scan_next_seq()?;
        store.inner.next_seq.store(next, Ordering::SeqCst);
        let next_webhook = match store.db().get(NEXT_WEBHOOK_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default()),
            None => 0,
        };
        store.inner.next_webhook.store(next_webhook, Ordering::SeqCst);
        Ok(store)
    }

    fn db(&self) -> &sled::Db {
        &self.inner.shared.db
    }

    /// The snapshot: every persisted SKU, dish and menu state, read on
    /// one thread. Read it right after [`Store::open`], before anything is
    /// applied.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        self.load_halved(None)
    }

    /// [`Store::load`], read on two threads that each take the stores on
    /// one side of `halfway` (a store id in the middle of the chain, in
    /// byte order), so both have about the same to do.
    pub fn load_halved(&self, halfway: Option<&str>) -> Result<Loaded, StoreError> {
        let mut out = Vec::new();
        let mut restore = |key: &[u8], value: &[u8]| -> Result<(), StoreError> {
            out.extend(restored(key, value)?);
            Ok(())
        };
        let persisted = |doc: &Document| doc.key().unwrap_or_default().into_bytes();
        let chain = persisted(&Document::Chain);
        if let Some(value) = self.db().get(&chain)? {
            restore(&chain, &value)?;
        }
        let shown = persisted(&Document::Shown);
        match self.db().get(&shown)? {
            Some(value) => {
                let shown: Shown = decode(&shown, &value)?;
                for doc in shown.documents() {
                    let key = persisted(&doc);
                    match self.db().get(&key)? {
                        Some(value) => restore(&key, &value)?,
                        None => tracing::warn!(key = %String::from_utf8_lossy(&key), "a shown document has no record"),
                    }
                }
            }
            // A data directory from before the index: every record (the
            // restore keeps the shown ones, and start-up writes the index).
            None => {
                for item in self.db().scan_prefix("q/").chain(self.db().scan_prefix("t/")) {
                    let (key, value) = item?;
                    restore(&key, &value)?;
                }
            }
        }
        // The documents kept per store, hundreds of thousands in a large
        // chain, read on two threads.
        let [first, second] = halves_of_the_chain(halfway);
        let db = self.db();
        let (first, second) = crate::halves::on_two_threads(&first[..], &second[..], |ranges| scan(db, ranges));
        let pieces = std::iter::once(out).chain(first?).chain(second?).collect();
        Ok(Loaded { pieces })
    }

    /// The fingerprint an event id was committed with, if it was; `store`
    /// is `None` for a chain-wide input's id.
    pub fn fingerprint(&self, store: Option<&StoreId>, id: &EventId) -> Result<Option<u64>, StoreError> {
        let key = key2("i", id_scope(store), id.as_str());
        match self.inner.shared.get(&key)? {
            Some(v) => Ok(Some(retention::read_id(&key, &v)?.0)),
            None => Ok(None),
        }
    }

    /// An alert of `store` as last published, if it was.
    pub fn alert(&self, store: &StoreId, id: &str) -> Result<Option<dishsync_protocol::payload::AlertOut>, StoreError> {
        let key = key2("a", store.as_str(), id);
        match self.inner.shared.get(&key)? {
            Some(v) => {
                let json: Vec<u8> = decode(&key, &v)?;
                serde_json::from_slice(&json).map(Some).map_err(|_| StoreError::Record {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    source: postcard::Error::DeserializeBadEncoding,
                })
            }
            None => Ok(None),
        }
    }

    /// A committed sale record.
    pub fn sale(&self, store: &StoreId, id: &EventId) -> Result<Option<SaleRecord>, StoreError> {
        let key = key2("x", store.as_str(), id.as_str());
        match self.inner.shared.get(&key)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// Every ledger entry, in commit order (for audits and tests). Runs a
    /// checkpoint first, so it includes everything applied.
    pub fn ledger(&self) -> Result<impl Iterator<Item = Result<LedgerEntry, StoreError>> + '_, StoreError> {
        self.checkpoint()?;
        Ok(self.db().scan_prefix("l/").flat_map(|item| {
            let page = || -> Result<Vec<LedgerEntry>, StoreError> {
                let (key, value) = item?;
                page_lines(&key, &value)?
                    .into_iter()
                    .map(|line| decode_line(&key, line))
                    .collect()
            };
            match page() {
                Ok(entries) => entries.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            }
        }))
    }

    /// Up to `max_lines` ledger lines from line number `from` on, in commit
    /// order, each with its number (the ledger's stable cursor: numbers
    /// only grow, and a line never moves); and the number to go on from,
    /// `None` once the end is reached. Runs a checkpoint first, so it
    /// includes everything applied.
    pub fn ledger_from(&self, from: u64, max_lines: usize) -> Result<LedgerPage, StoreError> {
        self.checkpoint()?;
        let db = self.db();
        // The page holding line `from`: the last that starts at or before it.
        let start = db
            .range(ledger_key(0)..=ledger_key(from))
            .next_back()
            .transpose()?
            .map_or_else(|| ledger_key(from), |(key, _)| key.to_vec());
        let mut lines = Vec::new();
        for item in db.range(start..ledger_key(u64::MAX)) {
            let (key, value) = item?;
            let Some(first) = ledger_seq(&key) else { break };
            for (i, line) in page_lines(&key, &value)?.into_iter().enumerate() {
                let seq = first + i as u64;
                if seq < from {
                    continue;
                }
                if lines.len() == max_lines {
                    return Ok(LedgerPage { lines, next: Some(seq) });
                }
                lines.push((seq, decode_line(&key, line)?));
            }
        }
        Ok(LedgerPage { lines, next: None })
    }

    /// Every ledger line of `store` stamped in `[from, to)`, in commit
    /// order, each with its number — read from the store's own index, so
    /// the cost follows the lines of this store and window, not the
    /// ledger's length. Runs a checkpoint first, so it includes everything
    /// applied.
    pub fn ledger_window(&self, store: &StoreId, from: i64, to: i64) -> Result<Numbered<LedgerEntry>, StoreError> {
        self.checkpoint()?;
        let mut lines = Vec::new();
        if from >= to {
            return Ok(lines);
        }
        let start = index_key(store.as_str(), from.div_euclid(INDEX_SPAN), 0);
        let end = index_key(store.as_str(), (to - 1).div_euclid(INDEX_SPAN), u64::MAX);
        for item in self.db().range(start..=end) {
            let (key, value) = item?;
            for (seq, bytes) in indexed_lines(&key, &value)? {
                let line = decode_line(&key, bytes)?;
                if line.at >= from && line.at < to {
                    lines.push((seq, line));
                }
            }
        }
        // In commit order, a line filed twice (a replay) once.
        lines.sort_by_key(|(seq, _)| *seq);
        lines.dedup_by_key(|(seq, _)| *seq);
        Ok(lines)
    }

    /// Records that a write failed (`what`, with its error): from then on
    /// the broker must stop, as what reached the disk is unknown. The
    /// restart recovers the last complete commit; devices re-send what they
    /// saw no ack for.
    pub fn fail(&self, what: String) {
        self.inner.shared.failure.send_replace(Some(what));
    }

    /// Journal groups committed and not yet moved into sled (what a restart
    /// would replay).
    pub fn checkpoint_lag(&self) -> u64 {
        let committed = self.inner.next_group.load(Ordering::Relaxed).saturating_sub(1);
        committed.saturating_sub(self.inner.shared.checkpointed.load(Ordering::Relaxed))
    }

    /// What failed, once a write failed.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.failure.borrow().clone()
    }

    /// Resolves once a write failed — by a commit, a flush or the
    /// checkpointer — with what failed. The shell stops on it.
    pub async fn failed(&self) -> String {
        let mut failure = self.inner.shared.failure.subscribe();
        let raised = failure.wait_for(Option::is_some).await.map(|what| what.clone());
        match raised {
            Ok(what) => what.unwrap_or_default(),
            // The store is gone: nothing more can fail.
            Err(_) => std::future::pending().await,
        }
    }

    /// Moves everything applied so far into sled now.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.shared.checkpoint()
    }

    /// Starts a group commit.
    pub fn begin(&self) -> Result<Commit, StoreError> {
        Ok(Commit {
            puts: Vec::new(),
            next_seq: self.inner.next_seq.load(Ordering::SeqCst),
            next_webhook: self.inner.next_webhook.load(Ordering::SeqCst),
            webhooks_queued: false,
        })
    }

    /// The webhook deliveries queued for `endpoint` from number `from` on,
    /// in order. Reads sled: call it at start, before anything is applied.
    pub fn webhook_backlog<T: DeserializeOwned>(&self, endpoint: &str, from: u64) -> Result<Vec<(u64, T)>, StoreError> {
        let db = self.db();
        let end = webhook_key("w", endpoint, u64::MAX);
        let mut out = Vec::new();
        for item in db.range(webhook_key("w", endpoint, from)..=end) {
            let (key, value) = item?;
            if let Some(seq) = webhook_seq(&key) {
                out.push((seq, decode(&key, &value)?));
            }
        }
        Ok(out)
    }

    /// How far `endpoint`'s sender got: every delivery below it is done.
    pub fn webhook_cursor(&self, endpoint: &str) -> Result<u64, StoreError> {
        Ok(match self.db().get(format!("wc/{endpoint}"))? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default()),
            None => 0,
        })
    }

    /// Records that every delivery of `endpoint` below `cursor` is done
    /// (not synced: the next checkpoint or a later call makes it durable).
    pub fn set_webhook_cursor(&self, endpoint: &str, cursor: u64) -> Result<(), StoreError> {
        self.db().insert(format!("wc/{endpoint}"), &cursor.to_be_bytes())?;
        Ok(())
    }

    /// Keeps a web session under `key` (its token's hash), durably.
    pub fn put_session(&self, key: &[u8; 32], session: &[u8]) -> Result<(), StoreError> {
        let mut k = b"ws/".to_vec();
        k.extend_from_slice(key);
        self.db().insert(k, session)?;
        self.db().flush()?;
        Ok(())
    }

    /// The web session kept under `key`, if any.
    pub fn session(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = b"ws/".to_vec();
        k.extend_from_slice(key);
        Ok(self.db().get(k)?.map(|v| v.to_vec()))
    }

    /// Forgets the web session under `key`, durably.
    pub fn end_session(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        let mut k = b"ws/".to_vec();
        k.extend_from_slice(key);
        self.db().remove(k)?;
        self.db().flush()?;
        Ok(())
    }

    /// Keeps a dead letter: delivery `seq` of `endpoint`, given up.
    pub fn put_dead_letter<T: Serialize>(&self, endpoint: &str, seq: u64, letter: &T) -> Result<(), StoreError> {
        let key = webhook_key("wx", endpoint, seq);
        let value = encode(&key, letter)?;
        self.db().insert(key, value)?;
        self.db().flush()?;
        Ok(())
    }

    /// Up to `max` dead letters of `endpoint` from delivery number `from`
    /// on, in order, and the number to go on from, if there are more.
    pub fn dead_letters<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        from: u64,
        max: usize,
    ) -> Result<(Numbered<T>, Option<u64>), StoreError> {
        let mut out = Vec::new();
        for item in self
            .db()
            .range(webhook_key("wx", endpoint, from)..=webhook_key("wx", endpoint, u64::MAX))
        {
            let (key, value) = item?;
            let Some(seq) = webhook_seq(&key) else { continue };
            if out.len() == max {
                return Ok((out, Some(seq)));
            }
            out.push((seq, decode(&key, &value)?));
        }
        Ok((out, None))
    }

    fn scan_next_seq(&self) -> Result<u64, StoreError> {
        match self.db().scan_prefix("l/").next_back() {
            Some(item) => {
                let (key, page) = item?;
                let first = ledger_seq(&key).unwrap_or_default();
                Ok(first + page_lines(&key, &page)?.len() as u64)
            }
            None => Ok(0),
        }
    }

    /// Writes a group commit atomically and waits until it is on disk.
    pub async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let next = self.apply(commit)?;
        self.flush().await?;
        Ok(next)
    }

    /// Writes a group commit to the journal, visible to every later read
    /// at once, but not yet durable: [`Store::flush`] makes it so.
    pub fn apply(&self, mut commit: Commit) -> Result<u64, StoreError> {
        if commit.webhooks_queued {
            commit
                .puts
                .push((NEXT_WEBHOOK_KEY.to_vec(), commit.next_webhook.to_be_bytes().to_vec()));
        }
        if !commit.puts.is_empty() {
            let shared = &self.inner.shared;
            let record = Record {
                seq: self.inner.next_group.fetch_add(1, Ordering::SeqCst),
                puts: commit.puts,
            };
            shared.journal.append(&record)?;
            if shared.replica.get().is_some() {
                let mut unreplicated = shared.unreplicated.lock().unwrap_or_else(|e| e.into_inner());
                unreplicated.push(record.puts.clone());
            }
            let mut overlay = shared.overlay.lock().unwrap_or_else(|e| e.into_inner());
            overlay.active.extend(record.puts);
            overlay.active_last = record.seq;
        }
        self.inner.next_seq.fetch_max(commit.next_seq, Ordering::SeqCst);
        self.inner.next_webhook.fetch_max(commit.next_webhook, Ordering::SeqCst);
        Ok(commit.next_seq)
    }

    /// Waits until everything applied so far is on disk, and in the
    /// replica if there is one.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        shared.journal.sync().await?;
        if let Some(replica) = shared.replica.get() {
            let _turn = shared.replicating.lock().await;
            let groups = std::mem::take(&mut *shared.unreplicated.lock().unwrap_or_else(|e| e.into_inner()));
            if !groups.is_empty() {
                replica.append(groups).await.map_err(StoreError::Replica)?;
            }
        }
        Ok(())
    }

    /// From now on, every group commit is appended to `replica` too, and a
    /// flush returns only once it holds it. Set once, before the first
    /// commit that must be replicated.
    pub fn replicate_to(&self, replica: Arc<dyn Replica>) {
        if self.inner.shared.replica.set(replica).is_err() {
            tracing::warn!("the store already replicates; a second replica is ignored");
        }
    }

    /// Every record, as group-commit pairs (the ledger as lines, without
    /// the index and the checkpoint mark, which [`Store::import`] writes
    /// anew): a snapshot of exactly the groups applied so far. Only from
    /// the rules task, between groups; the checkpointer waits meanwhile.
    pub fn dump(&self) -> Result<Group, StoreError> {
        let shared = &self.inner.shared;
        let _one = shared.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
        let (active, sealed) = {
            let overlay = shared.overlay.lock().unwrap_or_else(|e| e.into_inner());
            (overlay.active.clone(), overlay.sealed.clone())
        };
        let mut records: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = std::collections::BTreeMap::new();
        for item in shared.db.iter() {
            let (key, value) = item?;
            if key.as_ref() == CHECKPOINT_KEY || key.as_ref() == INDEXED_KEY || key.starts_with(b"ls/") {
                continue;
            }
            match ledger_seq(&key) {
                Some(first) => {
                    for (i, line) in page_lines(&key, &value)?.into_iter().enumerate() {
                        records.insert(ledger_key(first + i as u64), line.to_vec());
                    }
                }
                None => {
                    records.insert(key.to_vec(), value.to_vec());
                }
            }
        }
        records.extend(sealed.iter().map(|(k, v)| (k.clone(), v.clone())));
        records.extend(active);
        Ok(records.into_iter().collect())
    }

    /// Writes group commits read from a replica (rebuilding a partition's
    /// state), each as it was committed; [`Store::flush`] makes them
    /// durable. Only before the rules start, and before
    /// [`Store::replicate_to`].
    pub fn import(&self, groups: impl IntoIterator<Item = Group>) -> Result<(), StoreError> {
        for puts in groups {
            let next_seq = self.inner.next_seq.load(Ordering::SeqCst);
            let next_webhook = self.inner.next_webhook.load(Ordering::SeqCst);
            self.apply(Commit {
                puts,
                next_seq,
                next_webhook,
                webhooks_queued: false,
            })?;
        }
        Ok(())
    }
}

/// One group commit under construction: everything in it lands together.
pub struct Commit {
    puts: Vec<(Vec<u8>, Vec<u8>)>,
    next_seq: u64,
    next_webhook: u64,
    webhooks_queued: bool,
}

/// The scope an event id is indexed under: its store, or `@hq` for a
/// chain-wide input (`@` is outside the id alphabet, so no store is named
/// so).
fn id_scope(store: Option<&StoreId>) -> &str {
    store.map_or("@hq", StoreId::as_str)
}

impl Commit {
    /// Records that `id` was applied with content `fingerprint` at
    /// `applied` (which its retention is judged by).
    pub fn event_id(
        &mut self,
        store: Option<&StoreId>,
        id: &EventId,
        fingerprint: u64,
        applied: dishsync_protocol::Millis,
    ) -> Result<(), StoreError> {
        self.puts.push((
            key2("i", id_scope(store), id.as_str()),
            retention::id_value(fingerprint, applied),
        ));
        Ok(())
    }

    /// Appends ledger lines.
    pub fn ledger(&mut self, entries: &[LedgerEntry]) -> Result<(), StoreError> {
        for entry in entries {
            let key = ledger_key(self.next_seq);
            self.next_seq += 1;
            self.put(key, entry)?;
        }
        Ok(())
    }

    /// Queues a webhook delivery for `endpoint`; returns its number (the
    /// order deliveries were queued in, across endpoints).
    pub fn webhook<T: Serialize>(&mut self, endpoint: &str, delivery: &T) -> Result<u64, StoreError> {
        let seq = self.next_webhook;
        self.next_webhook += 1;
        self.webhooks_queued = true;
        self.put(webhook_key("w", endpoint, seq), delivery)?;
        Ok(seq)
    }

    /// Stores an alert of `store` as published (its raising, then its
    /// clearing under the same id).
    /// Kept as its JSON: the payload leaves out absent fields, which a
    /// postcard record cannot.
    pub fn alert(&mut self, store: &StoreId, alert: &dishsync_protocol::payload::AlertOut) -> Result<(), StoreError> {
        let key = key2("a", store.as_str(), &alert.id);
        let json = serde_json::to_vec(alert).map_err(|_| StoreError::Record {
            key: String::from_utf8_lossy(&key).into_owned(),
            source: postcard::Error::SerializeBufferFull,
        })?;
        self.put(key, &json)
    }

    /// Stores a sale record.
    pub fn sale(&mut self, store: &StoreId, id: &EventId, record: &SaleRecord) -> Result<(), StoreError> {
        self.put(key2("x", store.as_str(), id.as_str()), record)
    }

    /// Stores the current state of `doc`, taken from the inventory (if it
    /// has a persisted state and the inventory holds it).
    pub fn document(&mut self, doc: &Document, inv: &Inventory) -> Result<(), StoreError> {
        match (doc.key(), doc.state(inv)) {
            (Some(key), Some(state)) => self.put(key.into_bytes(), &state),
            _ => Ok(()),
        }
    }

    fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        let bytes = encode(&key, value)?;
        self.puts.push((key, bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dishsync_inventory::EntryKind;
    use std::io::Write;

    #[tokio::test]
    async fn the_checkpoint_lag_counts_the_groups_a_restart_would_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_with(dir.path(), None).expect("store");
        assert_eq!(store.checkpoint_lag(), 0);
        let s1: StoreId = "s1".parse().expect("id");
        for n in 0..2 {
            let mut c = store.begin().expect("store");
            let id: EventId = format!("e{n}").parse().expect("id");
            c.event_id(Some(&s1), &id, 1, 0).expect("store");
            store.commit(c).await.expect("store");
        }
        assert_eq!(store.checkpoint_lag(), 2);
        store.checkpoint().expect("store");
        assert_eq!(store.checkpoint_lag(), 0);
    }

    /// A store's planning state written when its fields stood side by side
    /// reads as the same state in its slices, and is written back the same.
    #[test]
    fn a_store_plan_written_flat_reads_as_its_slices() {
        use dishsync_inventory::planning::Rate;
        use dishsync_inventory::StorePlan;
        use dishsync_protocol::payload::AlertKind;
        use dishsync_protocol::{DeviceId, DishId, SkuId};
        use std::collections::{BTreeMap, BTreeSet};
        #[derive(serde::Serialize)]
        struct Flat {
            disarmed: BTreeSet<SkuId>,
            request_seq: u64,
            alert_seq: u64,
            active_alerts: BTreeMap<(AlertKind, String), String>,
            day: i64,
            waste_today: BTreeMap<SkuId, i64>,
            used_today: BTreeMap<SkuId, i64>,
            rates: BTreeMap<DishId, Rate>,
            offline: BTreeSet<DeviceId>,
            summary_rev: u64,
            asked: BTreeMap<SkuId, Vec<StoreId>>,
        }
        let id = |s: &str| s.parse::<SkuId>().expect("id");
        let flat = Flat {
            disarmed: [id("patty")].into(),
            request_seq: 7,
            alert_seq: 3,
            active_alerts: [((AlertKind::LowStock, "patty".to_string()), "al-3".to_string())].into(),
            day: 20_400,
            waste_today: [(id("bun"), 2)].into(),
            used_today: [(id("bun"), 40)].into(),
            rates: [(
                "burger".parse().expect("id"),
                Rate {
                    per_minute: 0.5,
                    at: 1_000,
                },
            )]
            .into(),
            offline: ["scale-1".parse().expect("id")].into(),
            summary_rev: 11,
            asked: [(id("patty"), vec!["s2".parse().expect("id")])].into(),
        };
        let bytes = postcard::to_allocvec(&flat).expect("encodes");
        let plan: StorePlan = postcard::from_bytes(&bytes).expect("reads");
        assert_eq!(plan.replenishment.disarmed, flat.disarmed);
        assert_eq!(plan.replenishment.request_seq, 7);
        assert_eq!((plan.alerts.seq, &plan.alerts.active), (3, &flat.active_alerts));
        assert_eq!(plan.today.day, 20_400);
        assert_eq!(
            (&plan.today.waste, &plan.today.used),
            (&flat.waste_today, &flat.used_today)
        );
        assert_eq!(plan.forecast.rates.len(), 1);
        assert_eq!(plan.freshness.offline, flat.offline);
        assert_eq!(plan.summary_rev, 11);
        assert_eq!(plan.transfers.asked, flat.asked);
        assert_eq!(
            postcard::to_allocvec(&plan).expect("encodes"),
            bytes,
            "written back the same"
        );
    }

    fn entry(event: &str, amount: i64) -> LedgerEntry {
        LedgerEntry {
            by: Some("pos-1".parse().expect("valid id")),
            recorded: Some(2),
            ..LedgerEntry::new(
                &"s1".parse().expect("valid id"),
                &"patty".parse().expect("valid id"),
                &event.parse().expect("valid id"),
                EntryKind::Sale,
                amount,
                1,
                true,
            )
        }
    }

    /// A line written before the ledger kept who and when reads back, with
    /// those unknown; a line of today reads back whole.
    #[test]
    fn ledger_lines_of_the_earlier_layout_still_read() {
        #[derive(serde::Serialize)]
        struct Earlier {
            store: StoreId,
            sku: dishsync_protocol::SkuId,
            event: EventId,
            kind: EntryKind,
            amount: i64,
            at: dishsync_protocol::Millis,
            moved: bool,
        }
        let today = entry("e-1", -3);
        let earlier = Earlier {
            store: today.store.clone(),
            sku: today.sku.clone(),
            event: today.event.clone(),
            kind: today.kind,
            amount: today.amount,
            at: today.at,
            moved: today.moved,
        };
        let bytes = postcard::to_allocvec(&earlier).expect("encodes");
        let read = decode_line(b"l/x", &bytes).expect("reads");
        assert_eq!(
            read,
            LedgerEntry {
                by: None,
                recorded: None,
                ..today.clone()
            }
        );
        let bytes = postcard::to_allocvec(&today).expect("encodes");
        assert_eq!(decode_line(b"l/x", &bytes).expect("reads"), today);
        assert!(decode_line(b"l/x", b"\xff").is_err());
    }

    async fn commit(store: &Store, event: &str, amount: i64) {
        let s1: StoreId = "s1".parse().expect("valid id");
        let mut c = store.begin().expect("store");
        c.event_id(Some(&s1), &event.parse().expect("valid id"), amount as u64, 0)
            .expect("store");
        c.ledger(&[entry(event, amount)]).expect("store");
        store.commit(c).await.expect("store");
    }

    fn fingerprint(store: &Store, event: &str) -> Option<u64> {
        store
            .fingerprint(
                Some(&"s1".parse().expect("valid id")),
                &event.parse().expect("valid id"),
            )
            .expect("store")
    }

    fn ledger(store: &Store) -> Vec<(String, i64)> {
        store
            .ledger()
            .expect("store")
            .map(|e| e.map(|e| (e.event.to_string(), e.amount)).expect("store"))
            .collect()
    }

    /// A store without a checkpointer in `dir`: e1 checkpointed into sled,
    /// then e2 and e3 in the journal only.
    async fn e1_in_sled_e2_e3_journaled(dir: &Path) -> Store {
        let store = Store::open_with(dir, None).expect("store");
        commit(&store, "e1", 1).await;
        store.checkpoint().expect("store");
        commit(&store, "e2", 2).await;
        commit(&store, "e3", 3).await;
        store
    }

    /// A crash after the flush and before any checkpoint: sled never saw
    /// the commits, the journal brings them back, each once and in order.
    #[tokio::test]
    async fn flushed_commits_survive_without_a_checkpoint() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = e1_in_sled_e2_e3_journaled(dir.path()).await;
            assert_eq!(
                fingerprint(&store, "e3"),
                Some(3),
                "reads see the journaled commit at once"
            );
            assert_eq!(
                store.inner.shared.db.get("i/s1/e3").expect("store"),
                None,
                "not in sled yet"
            );
        }
        // A write torn by the crash, never acknowledged.
        let segment = std::fs::read_dir(dir.path().join("journal"))
            .expect("store")
            .next()
            .expect("store")
            .expect("store")
            .path();
        std::fs::OpenOptions::new()
            .append(true)
            .open(segment)
            .expect("store")
            .write_all(&[200, 0, 0, 0, 1, 2, 3])
            .expect("store");

        let store = Store::open_with(dir.path(), None).expect("store");
        assert_eq!(
            store.inner.shared.db.get("i/s1/e3").expect("store").as_deref(),
            Some(&[3u8, 0][..]),
            "replayed into sled: fingerprint 3, applied at 0"
        );
        assert_eq!(fingerprint(&store, "e2"), Some(2));
        commit(&store, "e4", 4).await;
        assert_eq!(
            ledger(&store),
            vec![("e1".into(), 1), ("e2".into(), 2), ("e3".into(), 3), ("e4".into(), 4)]
        );
        drop(store);

        // Replaying again changes nothing: the checkpoint mark skips it.
        let store = Store::open_with(dir.path(), None).expect("store");
        assert_eq!(ledger(&store).len(), 4);
        let segments = std::fs::read_dir(dir.path().join("journal")).expect("store").count();
        assert_eq!(segments, 1, "replayed segments are deleted");
    }

    /// Read on two threads split at a store in the middle of the chain,
    /// the demo chain's documents are exactly those one scan reads: none
    /// twice, none missed, in key order within each half.
    #[tokio::test]
    async fn a_load_split_at_a_store_reads_every_document_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_with(dir.path(), None).expect("store");
        let catalog = crate::config::Settings::demo().expect("the demo chain").catalog;
        let now = 1_700_000_000_000;
        let (mut inventory, mut changes) = Inventory::restore(catalog.clone(), Vec::new(), now);
        changes.merge(inventory.start(now).changes);
        let mut commit = store.begin().expect("store");
        crate::rules::stage_changes(&mut commit, &inventory, &changes).expect("store");
        store.commit(commit).await.expect("store");
        // Read as at a start: the journal replayed into sled.
        drop(store);
        let store = Store::open_with(dir.path(), None).expect("store");
        let keys = |restored: Loaded| -> Vec<String> { restored.into_iter().map(|r| format!("{r:?}")).collect() };
        let whole = keys(store.load().expect("store"));
        assert!(whole.len() > 100, "the chain's documents: {}", whole.len());
        for halfway in ["downtown", "harbour", "a", "zzz"] {
            let mut halved = keys(store.load_halved(Some(halfway)).expect("store"));
            let mut expected = whole.clone();
            halved.sort();
            expected.sort();
            assert_eq!(halved.len(), expected.len(), "split at {halfway}: documents read");
            assert_eq!(halved, expected, "split at {halfway}");
        }
    }

    fn restored_ids(store: &Store) -> (Vec<String>, Vec<String>) {
        let (mut requests, mut transfers) = (Vec::new(), Vec::new());
        for restored in store.load().expect("store") {
            match restored {
                Restored::Request(r) => requests.push(r.id.to_string()),
                Restored::Transfer(t) => transfers.push(t.id.to_string()),
                _ => {}
            }
        }
        (requests, transfers)
    }

    /// Start-up reads the requests and transfers `s` names, not every one
    /// ever made; without `s` (a data directory from before it) it reads
    /// them all.
    #[tokio::test]
    async fn a_restart_reads_the_requests_and_transfers_the_index_names() {
        use dishsync_protocol::payload::{RequestState, TransferState};
        let id = |s: &str| -> dishsync_protocol::DocId { s.parse().expect("valid id") };
        let s1: StoreId = "s1".parse().expect("valid id");
        let request = |n: &str| dishsync_inventory::Request {
            id: id(n),
            store: s1.clone(),
            lines: Vec::new(),
            state: RequestState::Received,
            reason: String::new(),
            created_at: 0,
            updated_at: 0,
            rev: 1,
        };
        let transfer = |n: &str| dishsync_inventory::Transfer {
            id: id(n),
            from: s1.clone(),
            to: "s2".parse().expect("valid id"),
            sku: "patty".parse().expect("valid id"),
            qty: 1,
            need: 1,
            state: TransferState::Received,
            reason: String::new(),
            expires_at: None,
            travel_minutes: 10,
            tried: Vec::new(),
            created_at: 0,
            updated_at: 0,
            rev: 1,
        };
        for indexed in [true, false] {
            let dir = tempfile::tempdir().expect("temp dir");
            {
                let store = Store::open_with(dir.path(), None).expect("store");
                let mut c = store.begin().expect("store");
                for n in ["rq-s1-1", "rq-s1-2", "rq-s1-3"] {
                    c.put(format!("q/{n}").into_bytes(), &request(n)).expect("store");
                }
                for n in ["tr-1", "tr-2"] {
                    c.put(format!("t/{n}").into_bytes(), &transfer(n)).expect("store");
                }
                if indexed {
                    let shown = Shown {
                        requests: vec![id("rq-s1-3")],
                        transfers: vec![id("tr-2")],
                    };
                    c.put(b"s".to_vec(), &shown).expect("store");
                }
                store.commit(c).await.expect("store");
                store.checkpoint().expect("store");
            }
            let store = Store::open_with(dir.path(), None).expect("store");
            let expected = if indexed {
                (vec!["rq-s1-3".to_string()], vec!["tr-2".to_string()])
            } else {
                (
                    vec!["rq-s1-1".into(), "rq-s1-2".into(), "rq-s1-3".into()],
                    vec!["tr-1".into(), "tr-2".into()],
                )
            };
            assert_eq!(restored_ids(&store), expected, "indexed: {indexed}");
        }
    }

    /// A crash part-way through a checkpoint: some pairs are in sled, `j`
    /// still names the group before them. The next open writes the same
    /// groups again (a ledger page again, now longer) and every line and id
    /// is there once.
    #[tokio::test]
    async fn a_checkpoint_cut_short_is_written_again_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = e1_in_sled_e2_e3_journaled(dir.path()).await;
            let shared = &store.inner.shared;
            let active = shared.overlay.lock().expect("overlay").active.clone();
            write_pairs(&shared.db, active.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).expect("store");
            shared.db.flush().expect("store");
            // The crash: `j` is never moved past e1's group.
            commit(&store, "e4", 4).await;
        }
        let store = Store::open_with(dir.path(), None).expect("store");
        assert_eq!(
            ledger(&store),
            vec![("e1".into(), 1), ("e2".into(), 2), ("e3".into(), 3), ("e4".into(), 4)]
        );
        assert_eq!(store.db().scan_prefix("l/").count(), 2, "e1's page, then e2–e4's");
        for (event, amount) in [("e2", 2), ("e4", 4)] {
            assert_eq!(fingerprint(&store, event), Some(amount));
        }
    }

    /// Ledger lines are packed into pages of at most 1,024 in sled; they
    /// read back one by one, in order, and numbering continues after a
    /// reopen from the last page.
    #[tokio::test]
    async fn ledger_pages_read_back_line_by_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lines: Vec<LedgerEntry> = (0..2_500).map(|i| entry(&format!("e{i}"), i)).collect();
        {
            let store = Store::open_with(dir.path(), None).expect("store");
            let mut c = store.begin().expect("store");
            c.ledger(&lines[..2_000]).expect("store");
            store.commit(c).await.expect("store");
            store.checkpoint().expect("store");
            let mut c = store.begin().expect("store");
            c.ledger(&lines[2_000..2_400]).expect("store");
            store.commit(c).await.expect("store");
        }
        let store = Store::open_with(dir.path(), None).expect("store");
        let mut c = store.begin().expect("store");
        c.ledger(&lines[2_400..]).expect("store");
        store.commit(c).await.expect("store");
        let back: Vec<LedgerEntry> = store.ledger().expect("store").map(|e| e.expect("store")).collect();
        assert_eq!(back, lines);
        let pages = store.db().scan_prefix("l/").count();
        assert_eq!(pages, 4, "1,024 + 976 lines, 400 replayed, 100 more");
        // Paged by the line numbers, 700 at a time (cursors in the middle
        // of pages): every line once, in order.
        let (mut paged, mut numbers, mut cursor) = (Vec::new(), Vec::new(), Some(0));
        while let Some(from) = cursor {
            let page = store.ledger_from(from, 700).expect("store");
            assert!(page.lines.len() <= 700);
            numbers.extend(page.lines.iter().map(|(n, _)| *n));
            paged.extend(page.lines.into_iter().map(|(_, e)| e));
            cursor = page.next;
        }
        assert_eq!(paged, lines);
        let first = numbers[0];
        assert!(numbers.iter().enumerate().all(|(i, n)| *n == first + i as u64));
        let tail = store.ledger_from(first + 2_499, 10).expect("store");
        assert_eq!((tail.lines.len(), tail.next), (1, None));
        assert_eq!(tail.lines[0].1, lines[2_499]);
        assert!(store.ledger_from(first + 2_500, 10).expect("store").lines.is_empty());
    }

    /// A store's window of the ledger reads from its own index: only its
    /// lines stamped in the window, in commit order, each once — a replay
    /// and a directory indexed after the fact included.
    #[tokio::test]
    async fn a_stores_window_reads_its_own_lines_from_the_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        const HOUR: i64 = 3_600_000;
        let line = |store: &str, n: i64, at: i64| LedgerEntry {
            at,
            store: store.parse().expect("id"),
            ..entry(&format!("{store}-{n}"), n)
        };
        // Three stores, interleaved, over 30 hours; one late line stamped
        // long before it was committed.
        let mut lines: Vec<LedgerEntry> = (0..3_000)
            .map(|n| line(["s1", "s2", "s3"][(n % 3) as usize], n, n * 36_000))
            .collect();
        lines.push(line("s2", 9_999, 2 * HOUR + 5));
        let want = |lines: &[LedgerEntry], from: i64, to: i64| -> Vec<LedgerEntry> {
            lines
                .iter()
                .filter(|l| l.store.as_str() == "s2" && l.at >= from && l.at < to)
                .cloned()
                .collect()
        };
        {
            let store = Store::open_with(dir.path(), None).expect("store");
            for chunk in lines.chunks(700) {
                let mut c = store.begin().expect("store");
                c.ledger(chunk).expect("store");
                store.commit(c).await.expect("store");
                if chunk.len() == 700 {
                    store.checkpoint().expect("store");
                }
            }
            // The last chunk is left to the journal: replayed at the reopen.
        }
        let s2: StoreId = "s2".parse().expect("id");
        let store = Store::open_with(dir.path(), None).expect("store");
        for (from, to) in [
            (0, 24 * HOUR),
            (2 * HOUR + 1, 2 * HOUR + 7),
            (29 * HOUR, 40 * HOUR),
            (5, 5),
        ] {
            let got = store.ledger_window(&s2, from, to).expect("store");
            let numbers: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in commit order, once each");
            let got: Vec<LedgerEntry> = got.into_iter().map(|(_, l)| l).collect();
            assert_eq!(got, want(&lines, from, to), "{from}..{to}");
        }
        // A directory from before the index is indexed when it opens.
        let stale: Vec<Vec<u8>> = store
            .db()
            .scan_prefix("ls/")
            .keys()
            .map(|k| k.expect("store").to_vec())
            .collect();
        assert!(!stale.is_empty());
        for key in stale {
            store.db().remove(key).expect("store");
        }
        store.db().remove(INDEXED_KEY).expect("store");
        drop(store);
        let store = Store::open_with(dir.path(), None).expect("store");
        let got: Vec<LedgerEntry> = store
            .ledger_window(&s2, 0, 24 * HOUR)
            .expect("store")
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(got, want(&lines, 0, 24 * HOUR));
    }

    /// The background checkpointer moves commits into sled by itself.
    #[tokio::test]
    async fn the_checkpointer_moves_commits_into_sled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        commit(&store, "e1", 1).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.inner.shared.db.get("i/s1/e1").expect("store").is_none() {
            assert!(std::time::Instant::now() < deadline, "no checkpoint within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fingerprint(&store, "e1"), Some(1));
    }

    /// `n` inputs `e1`… in their own group commits, left to the journal.
    async fn journaled_inputs(dir: &Path, n: u64) {
        let store = Store::open_with(dir, None).expect("store");
        for i in 1..=n {
            commit(&store, &format!("e{i}"), i as i64).await;
        }
    }

    fn segment(dir: &Path) -> std::path::PathBuf {
        let mut paths: Vec<_> = std::fs::read_dir(dir.join("journal"))
            .expect("store")
            .map(|e| e.expect("store").path())
            .collect();
        paths.sort();
        paths.pop().expect("a segment")
    }

    /// One flipped bit in a journaled group with intact groups after it:
    /// the store refuses to open, and the repair keeps every other group
    /// and names the input that is lost.
    #[tokio::test]
    async fn a_damaged_journal_record_is_refused_and_repaired() {
        let dir = tempfile::tempdir().expect("temp dir");
        journaled_inputs(dir.path(), 10).await;
        let path = segment(dir.path());
        let mut bytes = std::fs::read(&path).expect("store");
        let key = b"i/s1/e5";
        let at = bytes
            .windows(key.len())
            .position(|w| w == key)
            .expect("e5 is journaled");
        // The first byte of its fingerprint, past the value's length.
        bytes[at + key.len() + 4] ^= 0x01;
        std::fs::write(&path, &bytes).expect("store");

        let refused = Store::open_with(dir.path(), None)
            .err()
            .expect("a damaged journal is refused");
        let StoreError::Damaged(damage) = &refused else {
            panic!("not reported as damage: {refused}");
        };
        assert_eq!(damage.lost_groups(), Some((5, 5)));
        assert!(refused.to_string().contains("repair"), "{refused}");

        let report = Store::repair(dir.path()).expect("repair");
        let Repair::Repaired { kept_after, .. } = &report else {
            panic!("nothing repaired: {report}");
        };
        assert_eq!(*kept_after, 5);
        let text = report.to_string();
        assert!(
            text.contains("group commits 5 to 5") && text.contains("s1/e5"),
            "{text}"
        );
        assert!(text.contains("count the SKUs"), "{text}");

        let store = Store::open_with(dir.path(), None).expect("the repaired store opens");
        for i in (1..=10).filter(|i| *i != 5) {
            assert_eq!(fingerprint(&store, &format!("e{i}")), Some(i), "e{i} is kept");
        }
        assert_eq!(fingerprint(&store, "e5"), None, "e5 is lost, and said to be");
        commit(&store, "e11", 11).await;
        drop(store);
        let store = Store::open_with(dir.path(), None).expect("store");
        assert_eq!(fingerprint(&store, "e11"), Some(11));
        drop(store);
        assert_eq!(Store::repair(dir.path()).expect("repair"), Repair::Intact);
    }

    /// 2,000 inputs with a checkpoint every 100, in `dir`.
    async fn checkpointed_inputs(dir: &Path) {
        let store = Store::open_with(dir, None).expect("store");
        for i in 1..=2_000 {
            commit(&store, &format!("e{i}"), i).await;
            if i % 100 == 0 {
                store.checkpoint().expect("store");
            }
        }
    }

    /// sled's files (its log, configuration and snapshots) and their bytes.
    fn sled_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        std::fs::read_dir(dir)
            .expect("store")
            .map(|e| e.expect("store").path())
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = std::fs::read(&p).expect("store");
                (p, bytes)
            })
            .collect()
    }

    /// sled's log cut in half, as a copy cut short or a lost disk write
    /// leaves it: sled opens at its last intact write, silently older.
    fn cut_sled(dir: &Path) -> u64 {
        let db = dir.join("db");
        let len = std::fs::metadata(&db).expect("store").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .expect("store")
            .set_len(len / 2)
            .expect("store");
        let mark = checkpoint_mark(&open_sled(dir).expect("sled opens")).expect("store");
        assert!(mark < 2_000, "sled lost its latest writes: it holds up to {mark}");
        mark
    }

    /// sled loses its latest writes while the journal still holds them
    /// (everything since the last open): the replay brings them back.
    #[tokio::test]
    async fn sled_damage_the_journal_still_covers_is_healed() {
        let dir = tempfile::tempdir().expect("temp dir");
        checkpointed_inputs(dir.path()).await;
        cut_sled(dir.path());
        let store = Store::open_with(dir.path(), None).expect("the journal covers sled's loss");
        for i in 1..=2_000 {
            assert_eq!(fingerprint(&store, &format!("e{i}")), Some(i as u64), "e{i}");
        }
    }

    /// sled loses writes the journal no longer holds (an open since has
    /// started a new journal): the store refuses to open and says so; the
    /// repair keeps what sled still has and reports the groups lost.
    #[tokio::test]
    async fn sled_damage_past_the_journal_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        checkpointed_inputs(dir.path()).await;
        let saved = sled_files(dir.path());
        // An open replays nothing new and starts an empty journal at 2001.
        drop(Store::open_with(dir.path(), None).expect("store"));
        // sled as it was before that open, then cut.
        for (path, _) in sled_files(dir.path()) {
            std::fs::remove_file(path).expect("store");
        }
        for (path, bytes) in saved {
            std::fs::write(path, bytes).expect("store");
        }
        let kept = cut_sled(dir.path());

        let refused = Store::open_with(dir.path(), None)
            .err()
            .expect("sled's loss is refused");
        let text = refused.to_string();
        assert!(text.contains("sled lost its latest writes"), "{text}");
        let StoreError::Damaged(damage) = &refused else {
            panic!("not reported as damage: {refused}");
        };
        assert_eq!(damage.lost_groups(), Some((kept + 1, 2_000)));

        let report = Store::repair(dir.path()).expect("repair");
        let lost = format!("group commits {} to 2000", kept + 1);
        assert!(report.to_string().contains(&lost), "{report}");
        let store = Store::open_with(dir.path(), None).expect("the repaired store opens");
        assert_eq!(fingerprint(&store, "e1"), Some(1));
        assert_eq!(fingerprint(&store, "e2000"), None);
        commit(&store, "e2001", 2_001).await;
        drop(store);
        let store = Store::open_with(dir.path(), None).expect("store");
        assert_eq!(fingerprint(&store, "e2001"), Some(2_001));
    }

    /// sled's own checksums catch damage inside its log: the store
    /// refuses to open with words that say what to do, and so does the
    /// repair (the journal cannot rebuild sled).
    #[tokio::test]
    async fn a_damaged_sled_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        checkpointed_inputs(dir.path()).await;
        // The journal no longer covers sled's writes after this open.
        drop(Store::open_with(dir.path(), None).expect("store"));
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).expect("store");
        for at in (4096..bytes.len()).step_by(4096) {
            bytes[at] ^= 0x40;
        }
        std::fs::write(&db, bytes).expect("store");
        let refused = Store::open_with(dir.path(), None).err().expect("refused");
        let text = refused.to_string();
        assert!(text.contains("sled") && text.contains("backup"), "{text}");
        let refused = Store::repair(dir.path()).expect_err("no repair from the journal");
        assert!(refused.to_string().contains("backup"), "{refused}");
    }

    /// A failed write is raised to whoever serves the store, once, with
    /// what failed: the shell stops on it (no process exit in the library).
    #[tokio::test]
    async fn a_failed_write_reaches_the_shell() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_with(dir.path(), None).expect("store");
        let watching = store.clone();
        let waiter = tokio::spawn(async move { watching.failed().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing failed yet");
        store.fail("a journal sync failed: no space left on device".into());
        let what = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("raised")
            .expect("task");
        assert!(what.contains("no space left"), "{what}");
        assert!(store.failed().await.contains("no space left"), "and stays raised");
    }
}
