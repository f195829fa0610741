//! Retention: how long the data directory keeps history, and the
//! compaction that removes what is older.
//!
//! History grows with every input: ledger lines (`l/` pages and each
//! store's `ls/` index records), an id per input in the duplicate index
//! (`i/`), a record per sale (`x/`), and per webhook delivery its queue
//! entry (`w/`) and, once given up, its dead letter (`wx/`). Start-up reads
//! none of it: levels, dishes, menus and plans come from their own records
//! (`k/`, `d/`, `m/`, `p/`, `c`, …), which compaction never touches, so it
//! cannot change a level.
//!
//! [`Store::compact`] removes, straight from sled:
//! - ledger pages whose last line was applied before the ledger's cutoff,
//!   oldest first (pages are in commit order), never the newest one (it
//!   carries the ledger's next line number, and numbers only grow); and
//!   each store's index records of the hours wholly before the cutoff;
//! - ids applied before the ids' cutoff: an input replayed after its id is
//!   gone is applied again, so the ids' window is the longest a device may
//!   hold an unacknowledged input. An id written before ids carried when
//!   they were applied is stamped at its first compaction, and kept a whole
//!   window from then;
//! - records of sales made before the sales' cutoff (a void of one is then
//!   refused, as a void of a sale the broker does not know);
//! - webhook deliveries their endpoint has taken (below its `wc/`
//!   cursor), and dead letters given up before their cutoff.
//!
//! It works in slices of [`SLICE`] records, each under the checkpoint
//! lock: a checkpoint or a backup runs between two slices, never beside
//! one, so a backup still holds one moment's state, and reads never wait.
//! A removal not yet flushed when the process dies is done again by the
//! next compaction.

use std::ops::Bound;
use std::time::Duration;

use dishsync_inventory::SaleRecord;
use dishsync_protocol::payload::Timestamp;
use dishsync_protocol::Millis;
use serde::de::DeserializeOwned;

use super::{decode, decode_line, index_key, page_lines, webhook_key, Store, StoreError, INDEX_SPAN};

/// Records one slice of a compaction visits under the checkpoint lock.
pub const SLICE: usize = 10_000;

/// How long history is kept (`[retention]` in the configuration). `None`
/// keeps it for good.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Ledger lines, by when they were applied.
    pub ledger: Option<Duration>,
    /// Ids in the duplicate index, by when their input was applied.
    pub event_ids: Option<Duration>,
    /// Sale records (what a void takes back), by when the sale was made.
    pub sales: Option<Duration>,
    /// Webhook dead letters, by when they were given up.
    pub dead_letters: Option<Duration>,
    /// How often the compaction runs.
    pub every: Duration,
}

/// A day.
const DAY: Duration = Duration::from_secs(86_400);

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            ledger: Some(DAY * 400),
            event_ids: Some(DAY * 35),
            sales: Some(DAY * 35),
            dead_letters: Some(DAY * 30),
            every: Duration::from_secs(3_600),
        }
    }
}

/// What one compaction removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Ledger lines (in whole pages).
    pub ledger_lines: u64,
    /// Index records of store-hours.
    pub index_records: u64,
    /// Ids from the duplicate index.
    pub event_ids: u64,
    /// Ids of the layout before stamps, stamped (none removed).
    pub event_ids_stamped: u64,
    /// Sale records.
    pub sales: u64,
    /// Webhook deliveries their endpoint had taken.
    pub webhook_deliveries: u64,
    /// Webhook dead letters.
    pub dead_letters: u64,
}

impl Compacted {
    /// Each kind of record with how many were removed, by its metric name.
    pub fn removed(&self) -> [(&'static str, u64); 6] {
        [
            ("ledger_line", self.ledger_lines),
            ("ledger_index", self.index_records),
            ("event_id", self.event_ids),
            ("sale", self.sales),
            ("webhook_delivery", self.webhook_deliveries),
            ("dead_letter", self.dead_letters),
        ]
    }

    /// True when nothing was removed or stamped.
    pub fn is_empty(&self) -> bool {
        *self == Compacted::default()
    }
}

/// A record that says when it was made, for its retention.
pub trait Stamped {
    /// When it was made.
    fn stamp(&self) -> Millis;
}

/// What a sweep does with one record.
enum Verdict {
    Keep,
    Remove,
    Replace(Vec<u8>),
    /// Keep it and end the sweep.
    Stop,
}

/// The id index's value: the input's fingerprint, then when it was
/// applied (absent on ids written before they carried it).
pub(super) fn id_value(fingerprint: u64, applied: Millis) -> Vec<u8> {
    let mut out = postcard::to_allocvec(&fingerprint).unwrap_or_default();
    out.extend(postcard::to_allocvec(&applied).unwrap_or_default());
    out
}

/// An id record's fingerprint and, if it carries it, when it was applied.
pub(super) fn read_id(key: &[u8], value: &[u8]) -> Result<(u64, Option<Millis>), StoreError> {
    let (fingerprint, rest) = postcard::take_from_bytes::<u64>(value).map_err(|source| StoreError::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })?;
    if rest.is_empty() {
        return Ok((fingerprint, None));
    }
    Ok((fingerprint, Some(decode(key, rest)?)))
}

/// `now` less `kept`, if history is not kept for good.
fn cutoff(kept: Option<Duration>, now: Millis) -> Option<Millis> {
    kept.map(|kept| now.saturating_sub(i64::try_from(kept.as_millis()).unwrap_or(i64::MAX)))
}

impl Store {
    /// Removes the history older than `retention` keeps, as of `now`
    /// (module docs); `L` is the dead letters' type. Runs beside the rules:
    /// a slice at a time, between checkpoints.
    pub fn compact<L: DeserializeOwned + Stamped>(
        &self,
        retention: &Retention,
        now: Millis,
    ) -> Result<Compacted, StoreError> {
        let mut done = Compacted::default();
        if let Some(cutoff) = cutoff(retention.ledger, now) {
            self.compact_ledger(cutoff, &mut done)?;
        }
        if let Some(cutoff) = cutoff(retention.event_ids, now) {
            done.event_ids = self.sweep(b"i/".to_vec(), prefix_end(b"i/"), |key, value| {
                Ok(match read_id(key, value)? {
                    (_, Some(applied)) if applied < cutoff => Verdict::Remove,
                    (_, Some(_)) => Verdict::Keep,
                    (fingerprint, None) => {
                        done.event_ids_stamped += 1;
                        Verdict::Replace(id_value(fingerprint, now))
                    }
                })
            })?;
        }
        if let Some(cutoff) = cutoff(retention.sales, now) {
            done.sales = self.sweep(b"x/".to_vec(), prefix_end(b"x/"), |key, value| {
                let sale: SaleRecord = decode(key, value)?;
                Ok(if sale.at < cutoff {
                    Verdict::Remove
                } else {
                    Verdict::Keep
                })
            })?;
        }
        self.compact_webhooks::<L>(cutoff(retention.dead_letters, now), &mut done)?;
        self.db().flush()?;
        Ok(done)
    }

    /// The ledger pages and index records before `cutoff`.
    fn compact_ledger(&self, cutoff: Millis, done: &mut Compacted) -> Result<(), StoreError> {
        let newest = match self.db().scan_prefix("l/").next_back() {
            Some(item) => item?.0.to_vec(),
            None => return Ok(()),
        };
        let mut lines = 0u64;
        self.sweep(b"l/".to_vec(), newest, |key, page| {
            let encoded = page_lines(key, page)?;
            let last = match encoded.last() {
                Some(line) => decode_line(key, line)?,
                None => return Ok(Verdict::Remove),
            };
            if last.recorded.unwrap_or(last.at) >= cutoff {
                return Ok(Verdict::Stop);
            }
            lines += encoded.len() as u64;
            Ok(Verdict::Remove)
        })?;
        done.ledger_lines = lines;
        // Each store's records of the hours wholly before the cutoff.
        let before = cutoff.div_euclid(INDEX_SPAN);
        let mut from = Bound::Included(b"ls/".to_vec());
        loop {
            let next = self
                .db()
                .range::<Vec<u8>, _>((from, Bound::Excluded(prefix_end(b"ls/"))))
                .next();
            let Some(item) = next else { break };
            let key = item?.0;
            // `ls/`, the store, `/`, the hour (8 bytes), the first line (8).
            let Some(store) = key.get(3..key.len().saturating_sub(17)) else {
                break;
            };
            let store = String::from_utf8_lossy(store).into_owned();
            done.index_records +=
                self.sweep(index_key(&store, i64::MIN, 0), index_key(&store, before, 0), |_, _| {
                    Ok(Verdict::Remove)
                })?;
            let mut past = format!("ls/{store}/").into_bytes();
            past.extend_from_slice(&[0xff; 17]);
            from = Bound::Excluded(past);
        }
        Ok(())
    }

    /// Webhook deliveries taken, and dead letters given up before `cutoff`.
    fn compact_webhooks<L: DeserializeOwned + Stamped>(
        &self,
        cutoff: Option<Millis>,
        done: &mut Compacted,
    ) -> Result<(), StoreError> {
        let mut cursors = Vec::new();
        for item in self.db().scan_prefix("wc/") {
            let (key, value) = item?;
            let endpoint = String::from_utf8_lossy(&key[3..]).into_owned();
            let cursor = u64::from_be_bytes(value.as_ref().try_into().unwrap_or_default());
            cursors.push((endpoint, cursor));
        }
        for (endpoint, cursor) in cursors {
            done.webhook_deliveries += self.sweep(
                webhook_key("w", &endpoint, 0),
                webhook_key("w", &endpoint, cursor),
                |_, _| Ok(Verdict::Remove),
            )?;
        }
        if let Some(cutoff) = cutoff {
            done.dead_letters = self.sweep(b"wx/".to_vec(), prefix_end(b"wx/"), |key, value| {
                let letter: L = decode(key, value)?;
                Ok(if letter.stamp() < cutoff {
                    Verdict::Remove
                } else {
                    Verdict::Keep
                })
            })?;
        }
        Ok(())
    }

    /// Visits the records in `[start, end)` in order, [`SLICE`] at a time
    /// under the checkpoint lock, and does what `visit` says with each;
    /// returns how many it removed.
    fn sweep(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<Verdict, StoreError>,
    ) -> Result<u64, StoreError> {
        let db = self.db();
        let mut removed = 0u64;
        let mut from = Bound::Included(start);
        loop {
            let _one = self
                .inner
                .shared
                .checkpointing
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut seen = 0;
            let mut last = None;
            for item in db.range::<Vec<u8>, _>((from.clone(), Bound::Excluded(end.clone()))) {
                let (key, value) = item?;
                match visit(&key, &value)? {
                    Verdict::Keep => {}
                    Verdict::Remove => {
                        db.remove(&key)?;
                        removed += 1;
                    }
                    Verdict::Replace(value) => {
                        db.insert(&key, value)?;
                    }
                    Verdict::Stop => return Ok(removed),
                }
                last = Some(key.to_vec());
                seen += 1;
                if seen == SLICE {
                    break;
                }
            }
            match last {
                Some(key) if seen == SLICE => from = Bound::Excluded(key),
                _ => return Ok(removed),
            }
        }
    }
}

/// Records and bytes (keys and values) under one kind of key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Records.
    pub records: u64,
    /// Bytes of their keys and values.
    pub bytes: u64,
}

impl Store {
    /// What sled holds, by kind of key (its prefix up to the first `/`, or
    /// the whole key): the logical size of each kind of record, after a
    /// checkpoint. Reads every record.
    pub fn footprint(&self) -> Result<std::collections::BTreeMap<String, Footprint>, StoreError> {
        self.checkpoint()?;
        let mut out: std::collections::BTreeMap<String, Footprint> = std::collections::BTreeMap::new();
        for item in self.db().iter() {
            let (key, value) = item?;
            let kind = key.split(|b| *b == b'/').next().unwrap_or_default();
            let entry = out.entry(String::from_utf8_lossy(kind).into_owned()).or_default();
            entry.records += 1;
            entry.bytes += (key.len() + value.len()) as u64;
        }
        Ok(out)
    }
}

/// The first key past every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Runs [`Store::compact`] every [`Retention::every`], off the runtime's
/// threads, counting what it removed in the metrics; a compaction that
/// fails to write stops the broker as a failed checkpoint does.
pub async fn compact_every<L: DeserializeOwned + Stamped + 'static>(store: Store, retention: Retention) {
    let mut tick = tokio::time::interval(retention.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the first compaction one period after start.
    tick.tick().await;
    loop {
        tick.tick().await;
        let (worker, kept) = (store.clone(), retention.clone());
        let ran = tokio::task::spawn_blocking(move || worker.compact::<L>(&kept, Timestamp::now().0)).await;
        match ran {
            Ok(Ok(done)) => {
                crate::metrics::METRICS.compacted(&done);
                if !done.is_empty() {
                    tracing::info!(
                        ledger_lines = done.ledger_lines,
                        index_records = done.index_records,
                        event_ids = done.event_ids,
                        event_ids_stamped = done.event_ids_stamped,
                        sales = done.sales,
                        webhook_deliveries = done.webhook_deliveries,
                        dead_letters = done.dead_letters,
                        "history compacted"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "compaction failed; stopping the broker");
                store.fail(format!("a compaction failed: {e}"));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "compaction stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dishsync_inventory::{EntryKind, LedgerEntry};
    use dishsync_protocol::{EventId, StoreId};

    const HOUR: Millis = 3_600_000;
    const DAYS: Millis = 24 * HOUR;
    /// The compactions' clock: day 100.
    const NOW: Millis = 100 * DAYS;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("test id")
    }

    /// A dead letter of the tests: its stamp alone.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Letter(Millis);

    impl Stamped for Letter {
        fn stamp(&self) -> Millis {
            self.0
        }
    }

    /// `n` lines of `store`, stamped and applied at `at`, in one group
    /// commit and checkpoint of their own (so one ledger page of their own).
    async fn lines(db: &Store, store: &str, first: usize, n: usize, at: Millis) {
        let entries: Vec<LedgerEntry> = (first..first + n)
            .map(|i| LedgerEntry {
                recorded: Some(at),
                ..LedgerEntry::new(
                    &id(store),
                    &id("patty"),
                    &id(&format!("e{i}")),
                    EntryKind::Sale,
                    -1,
                    at,
                    true,
                )
            })
            .collect();
        let mut c = db.begin().expect("store");
        c.ledger(&entries).expect("store");
        db.commit(c).await.expect("store");
        db.checkpoint().expect("checkpoint");
    }

    fn keep(days: Millis) -> Option<Duration> {
        Some(Duration::from_millis(days as u64 * DAYS as u64))
    }

    fn only(ledger: Option<Duration>, event_ids: Option<Duration>, sales: Option<Duration>) -> Retention {
        Retention {
            ledger,
            event_ids,
            sales,
            dead_letters: None,
            every: Duration::from_secs(60),
        }
    }

    fn numbers(db: &Store) -> Vec<u64> {
        let page = db.ledger_from(0, usize::MAX).expect("ledger");
        page.lines.iter().map(|(n, _)| *n).collect()
    }

    #[tokio::test]
    async fn old_ledger_pages_go_oldest_first_and_the_newest_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Store::open_with(dir.path(), None).expect("store");
        lines(&db, "s1", 0, 3, 10 * DAYS).await; // lines 0–2
        lines(&db, "s2", 3, 2, 20 * DAYS).await; // 3–4
        lines(&db, "s1", 5, 2, 80 * DAYS).await; // 5–6
        lines(&db, "s1", 7, 1, 30 * DAYS).await; // 7: the newest page, old
        let done = db
            .compact::<Letter>(&only(keep(50), None, None), NOW)
            .expect("compacts");
        // Pages end at the first one still inside the window: line 7 is
        // older, but after it in commit order, and the newest.
        assert_eq!(done.ledger_lines, 5);
        assert_eq!(numbers(&db), vec![5, 6, 7]);
        assert_eq!(done.index_records, 3, "s1's day 10, s2's day 20, s1's day 30");
        let s1: StoreId = id("s1");
        assert!(db.ledger_window(&s1, 0, 50 * DAYS).expect("window").is_empty());
        let recent: Vec<u64> = db
            .ledger_window(&s1, 50 * DAYS, NOW)
            .expect("window")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(recent, vec![5, 6]);
        assert!(db.ledger_window(&id("s2"), 0, NOW).expect("window").is_empty());
        // Line numbers go on from where they were, after a restart too.
        drop(db);
        let db = Store::open_with(dir.path(), None).expect("store");
        lines(&db, "s1", 8, 1, 99 * DAYS).await;
        assert_eq!(numbers(&db), vec![5, 6, 7, 8]);
        // A second compaction finds nothing more.
        let again = db
            .compact::<Letter>(&only(keep(50), None, None), NOW)
            .expect("compacts");
        assert!(again.is_empty(), "{again:?}");
    }

    #[tokio::test]
    async fn ids_past_their_window_go_and_the_rest_still_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Store::open_with(dir.path(), None).expect("store");
        let s1: StoreId = id("s1");
        // More ids than one slice holds: old and recent interleaved.
        let n = 2 * SLICE + 500;
        let mut c = db.begin().expect("store");
        for i in 0..n {
            let applied = if i % 2 == 0 { 10 * DAYS } else { 90 * DAYS };
            c.event_id(Some(&s1), &id(&format!("e{i}")), i as u64, applied)
                .expect("store");
        }
        db.commit(c).await.expect("store");
        db.checkpoint().expect("checkpoint");
        // An id of the layout before stamps, as sled holds it.
        let legacy: EventId = id("legacy");
        db.db()
            .insert(b"i/s1/legacy", postcard::to_allocvec(&7u64).expect("encodes"))
            .expect("insert");
        assert_eq!(db.fingerprint(Some(&s1), &legacy).expect("read"), Some(7));

        let done = db
            .compact::<Letter>(&only(None, keep(35), None), NOW)
            .expect("compacts");
        assert_eq!(done.event_ids, n.div_ceil(2) as u64);
        assert_eq!(done.event_ids_stamped, 1);
        for i in [0, 1, 2, 3, n - 2, n - 1] {
            let kept = db.fingerprint(Some(&s1), &id(&format!("e{i}"))).expect("read");
            assert_eq!(kept, (i % 2 == 1).then_some(i as u64), "e{i}");
        }
        // The old-layout id is stamped now: kept a whole window from here.
        assert_eq!(db.fingerprint(Some(&s1), &legacy).expect("read"), Some(7));
        let later = db
            .compact::<Letter>(&only(None, keep(35), None), NOW + 20 * DAYS)
            .expect("compacts");
        assert_eq!(later.event_ids, 0);
        let past = db
            .compact::<Letter>(&only(None, keep(35), None), NOW + 36 * DAYS)
            .expect("compacts");
        assert_eq!(
            past.event_ids,
            (n / 2) as u64 + 1,
            "the recent ones and the stamped one"
        );
        assert_eq!(db.fingerprint(Some(&s1), &legacy).expect("read"), None);
    }

    #[tokio::test]
    async fn old_sales_and_taken_webhooks_go_and_dead_letters_by_their_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Store::open_with(dir.path(), None).expect("store");
        let s1: StoreId = id("s1");
        let sale = |at| SaleRecord {
            at,
            lines: vec![(id("burger"), 1)],
            taken: vec![(id("patty"), 1)],
            voided_by: None,
        };
        let mut c = db.begin().expect("store");
        c.sale(&s1, &id("old"), &sale(10 * DAYS)).expect("store");
        c.sale(&s1, &id("new"), &sale(90 * DAYS)).expect("store");
        for _ in 0..5 {
            c.webhook("bi", &Letter(0)).expect("store");
        }
        db.commit(c).await.expect("store");
        db.checkpoint().expect("checkpoint");
        db.set_webhook_cursor("bi", 3).expect("cursor");
        db.put_dead_letter("bi", 1, &Letter(10 * DAYS)).expect("letter");
        db.put_dead_letter("bi", 2, &Letter(90 * DAYS)).expect("letter");

        let retention = Retention {
            dead_letters: keep(30),
            ..only(None, None, keep(35))
        };
        let done = db.compact::<Letter>(&retention, NOW).expect("compacts");
        assert_eq!(done.sales, 1);
        assert_eq!(done.webhook_deliveries, 3);
        assert_eq!(done.dead_letters, 1);
        assert!(db.sale(&s1, &id("old")).expect("read").is_none());
        assert_eq!(db.sale(&s1, &id("new")).expect("read"), Some(sale(90 * DAYS)));
        let backlog: Vec<u64> = db
            .webhook_backlog::<Letter>("bi", 0)
            .expect("backlog")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(backlog, vec![3, 4], "what the endpoint has not taken stays");
        let (letters, _) = db.dead_letters::<Letter>("bi", 0, 10).expect("letters");
        assert_eq!(letters.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn kept_for_good_removes_nothing() {
        let kept = Retention {
            ledger: None,
            event_ids: None,
            sales: None,
            dead_letters: None,
            every: Duration::from_secs(1),
        };
        assert_eq!(cutoff(kept.ledger, NOW), None);
        assert_eq!(cutoff(keep(1), NOW), Some(NOW - DAYS));
        assert_eq!(read_id(b"i/x", &id_value(9, 5)).expect("reads"), (9, Some(5)));
    }
}
