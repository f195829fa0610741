//! The durable outbox: every message a device records is written here, and
//! flushed to disk, before the call that recorded it returns.
//!
//! Entries keep their recording order (a monotonically increasing sequence
//! number) and stay until the broker's end-to-end ack for their id arrives —
//! across network loss, process kills and power loss. The outbox has a bound;
//! recording into a full outbox is an error ([`OutboxError::Full`]), never a
//! silent drop.
//!
//! Layout (sled, one directory per device): tree `entries` maps the sequence
//! (u64 big-endian) to an [`Entry`]; tree `ids` maps an event id to its
//! sequence; the default tree keeps this outbox's random instance tag, from
//! which event ids are made unique.
//!
//! Ids a caller makes itself ([`Outbox::record_once`], a firmware device's
//! `{device}:{boot}:{seq}`) also keep their content's fingerprint in tree
//! `content`, while waiting and for the last [`SETTLED_KEPT`] after their
//! ack (tree `settled`, ack order → id): a retransmit then keeps the first
//! recording's payload, stamp and all, and the same id with other content
//! is a conflict, not a new input.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use dishsync_protocol::EventId;
use serde::{Deserialize, Serialize};

/// Why the outbox refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The outbox holds its maximum number of unacknowledged messages.
    #[error("outbox full: {0} messages wait for the broker's ack; nothing was recorded")]
    Full(usize),
    /// The disk or sled failed.
    #[error("outbox storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored entry could not be read.
    #[error("outbox entry corrupt: {0}")]
    Corrupt(#[from] postcard::Error),
    /// The id was recorded before with other content.
    #[error("{0} was recorded before with other content")]
    Conflict(EventId),
}

/// How many acknowledged caller-made ids keep their fingerprint, so that a
/// late retransmit is still recognised.
pub const SETTLED_KEPT: usize = 10_000;

/// What [`Outbox::record_once`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new entry: it waits for its ack.
    New,
    /// A retransmit of an entry still waiting: nothing was recorded.
    Waiting,
    /// A retransmit of an entry already acknowledged: nothing to send.
    Settled,
}

/// A fingerprint of `content` that is the same in every process (FNV-1a).
fn fingerprint(content: &[u8]) -> u64 {
    content.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One recorded message waiting for its ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The event id the broker acknowledges.
    pub id: EventId,
    /// Where it is published.
    pub topic: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

/// The durable outbox of one device.
#[derive(Clone)]
pub struct Outbox {
    db: sled::Db,
    entries: sled::Tree,
    ids: sled::Tree,
    content: sled::Tree,
    settled: sled::Tree,
    limit: usize,
    tag: String,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, holding at most `limit` messages.
    pub fn open(dir: &Path, limit: usize) -> Result<Outbox, OutboxError> {
        // sled's IO threads release the directory's lock a moment after the
        // last handle is dropped: a reopen in the same process (a restarted
        // client) waits for it, up to 5 s; a second client on the same
        // directory fails after that wait.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::open(dir) {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened?,
            }
        };
        let entries = db.open_tree("entries")?;
        let ids = db.open_tree("ids")?;
        let content = db.open_tree("content")?;
        let settled = db.open_tree("settled")?;
        let tag = match db.get("tag")? {
            Some(t) => String::from_utf8_lossy(&t).into_owned(),
            None => {
                let tag = format!("{:012x}", random_u64() & 0xffff_ffff_ffff);
                db.insert("tag", tag.as_bytes())?;
                db.flush()?;
                tag
            }
        };
        Ok(Outbox {
            db,
            entries,
            ids,
            content,
            settled,
            limit,
            tag,
        })
    }

    /// A new event id, unique to this outbox forever: `{tag}-{sequence}`.
    fn next_id(&self) -> Result<(u64, EventId), OutboxError> {
        let seq = self.db.generate_id()?;
        let id = EventId::new(format!("{}-{seq}", self.tag))
            .map_err(|_| sled::Error::Unsupported("outbox tag is not a valid id".into()))?;
        Ok((seq, id))
    }

    /// Records a message whose payload is built from its new id, and flushes
    /// it to disk before returning the id.
    pub fn record(&self, topic: String, payload: impl FnOnce(&EventId) -> Vec<u8>) -> Result<EventId, OutboxError> {
        let len = self.len();
        if len >= self.limit {
            return Err(OutboxError::Full(len));
        }
        let (seq, id) = self.next_id()?;
        let entry = Entry {
            payload: payload(&id),
            id: id.clone(),
            topic,
        };
        let key = seq.to_be_bytes();
        self.entries.insert(key, postcard::to_allocvec(&entry)?)?;
        self.ids.insert(id.as_str(), &key)?;
        self.db.flush()?;
        Ok(id)
    }

    /// Records a message under an id the caller made (a device's
    /// `{device}:{boot}:{seq}`) whose `content` is what the device said (its
    /// payload may add a stamp), and flushes it. A retransmit — the same id
    /// and content — records nothing and keeps the first payload; the same
    /// id with other content is [`OutboxError::Conflict`].
    pub fn record_once(
        &self,
        id: &EventId,
        topic: String,
        content: &[u8],
        payload: impl FnOnce() -> Vec<u8>,
    ) -> Result<Recorded, OutboxError> {
        let print = fingerprint(content).to_be_bytes();
        if let Some(known) = self.content.get(id.as_str())? {
            if known.as_ref() != print {
                return Err(OutboxError::Conflict(id.clone()));
            }
            return Ok(if self.contains(id) {
                Recorded::Waiting
            } else {
                Recorded::Settled
            });
        }
        let len = self.len();
        if len >= self.limit {
            return Err(OutboxError::Full(len));
        }
        let seq = self.db.generate_id()?;
        let entry = Entry {
            id: id.clone(),
            topic,
            payload: payload(),
        };
        let key = seq.to_be_bytes();
        self.entries.insert(key, postcard::to_allocvec(&entry)?)?;
        self.ids.insert(id.as_str(), &key)?;
        self.content.insert(id.as_str(), &print)?;
        self.db.flush()?;
        Ok(Recorded::New)
    }

    /// Removes the entries with these ids (their ack arrived). Returns how
    /// many were in the outbox. Removal is not flushed at once: after a
    /// crash an acknowledged entry may be sent again, and the broker
    /// recognises it.
    pub fn remove(&self, ids: &[EventId]) -> Result<usize, OutboxError> {
        let mut removed = 0;
        for id in ids {
            if let Some(key) = self.ids.remove(id.as_str())? {
                self.entries.remove(key)?;
                removed += 1;
                if self.content.contains_key(id.as_str())? {
                    self.settled.insert(self.db.generate_id()?.to_be_bytes(), id.as_str())?;
                }
            }
        }
        // The oldest settled ids forget their content.
        while self.settled.len() > SETTLED_KEPT {
            let Some((_, old)) = self.settled.pop_min()? else { break };
            if !self.ids.contains_key(&old)? {
                self.content.remove(&old)?;
            }
        }
        Ok(removed)
    }

    /// Every waiting entry, in recording order, with its sequence number.
    pub fn pending(&self) -> Result<Vec<(u64, Entry)>, OutboxError> {
        self.after(None, usize::MAX)
    }

    /// Up to `max` waiting entries recorded after `seq` (all from the start
    /// with `None`), in order.
    pub fn after(&self, seq: Option<u64>, max: usize) -> Result<Vec<(u64, Entry)>, OutboxError> {
        let range = match seq {
            Some(s) => self.entries.range((s + 1).to_be_bytes()..),
            None => self.entries.range::<[u8; 8], _>(..),
        };
        let mut out = Vec::new();
        for item in range.take(max) {
            let (key, value) = item?;
            let mut seq = [0u8; 8];
            if key.len() == 8 {
                seq.copy_from_slice(&key);
            }
            out.push((u64::from_be_bytes(seq), postcard::from_bytes(&value)?));
        }
        Ok(out)
    }

    /// Whether an entry with this id is waiting.
    pub fn contains(&self, id: &EventId) -> bool {
        self.ids.contains_key(id.as_str()).unwrap_or(false)
    }

    /// Messages waiting for their ack.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configured bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Makes removals durable.
    pub fn flush(&self) -> Result<(), OutboxError> {
        self.db.flush()?;
        Ok(())
    }
}

/// 64 random bits from the standard library's OS-seeded hasher keys, mixed
/// with the time and process id.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_survive_reopen_and_leave_on_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<EventId> = {
            let outbox = Outbox::open(dir.path(), 10).expect("open");
            (0..5)
                .map(|i| {
                    outbox
                        .record(format!("t/{i}"), |id| id.as_str().as_bytes().to_vec())
                        .expect("record")
                })
                .collect()
        };
        let outbox = Outbox::open(dir.path(), 10).expect("reopen");
        let pending = outbox.pending().expect("pending");
        let topics: Vec<&str> = pending.iter().map(|(_, e)| e.topic.as_str()).collect();
        assert_eq!(topics, ["t/0", "t/1", "t/2", "t/3", "t/4"]);
        assert_eq!(pending[2].1.payload, ids[2].as_str().as_bytes());
        assert_eq!(outbox.remove(&ids[..2]).expect("remove"), 2);
        assert_eq!(outbox.remove(&ids[..1]).expect("again"), 0);
        assert_eq!(outbox.len(), 3);
        let first = outbox.after(None, 1).expect("first");
        let rest = outbox.after(Some(first[0].0), 10).expect("rest");
        assert_eq!(rest.len(), 2);
        // A new record after reopening still gets a fresh, larger sequence.
        let next = outbox.record("t/5".into(), |_| Vec::new()).expect("record");
        assert!(!ids.contains(&next));
        assert!(outbox
            .pending()
            .expect("pending")
            .last()
            .is_some_and(|(_, e)| e.id == next));
    }

    #[test]
    fn a_full_outbox_refuses_loudly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(dir.path(), 2).expect("open");
        outbox.record("a".into(), |_| Vec::new()).expect("1");
        outbox.record("b".into(), |_| Vec::new()).expect("2");
        assert!(matches!(
            outbox.record("c".into(), |_| Vec::new()),
            Err(OutboxError::Full(2))
        ));
        assert_eq!(outbox.len(), 2);
    }

    /// A caller-made id keeps its first payload for every retransmit,
    /// before its ack and after, across a reopen; other content under the
    /// same id is a conflict.
    #[test]
    fn a_caller_made_id_is_recorded_once_and_remembered_after_its_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id: EventId = "scale-7:3:2".parse().expect("id");
        let record = |outbox: &Outbox, content: &str, stamp: &str| {
            let payload = stamp.as_bytes().to_vec();
            outbox.record_once(&id, "t".into(), content.as_bytes(), || payload)
        };
        {
            let outbox = Outbox::open(dir.path(), 10).expect("open");
            assert_eq!(record(&outbox, "beef|200", "first").expect("record"), Recorded::New);
            assert_eq!(
                record(&outbox, "beef|200", "second").expect("record"),
                Recorded::Waiting
            );
            assert!(matches!(
                record(&outbox, "beef|300", "third"),
                Err(OutboxError::Conflict(_))
            ));
            let pending = outbox.pending().expect("pending");
            assert_eq!(pending.len(), 1);
            assert_eq!(pending[0].1.payload, b"first", "the first stamp is kept");
            assert_eq!(outbox.remove(std::slice::from_ref(&id)).expect("remove"), 1);
        }
        let outbox = Outbox::open(dir.path(), 10).expect("reopen");
        assert_eq!(record(&outbox, "beef|200", "late").expect("record"), Recorded::Settled);
        assert!(outbox.is_empty(), "a settled retransmit sends nothing");
        assert!(matches!(
            record(&outbox, "beef|300", "late"),
            Err(OutboxError::Conflict(_))
        ));
    }
}
