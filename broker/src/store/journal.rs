//! The write-ahead journal: every group commit, appended to a segment file and
//! made durable with one `fdatasync`.
//!
//! A group commit is the unit of durability. The journal holds it as one
//! record — its sequence number and the key/value pairs it writes — so a
//! commit costs one `write` and, shared by every commit that waits, one
//! `fdatasync`. sled receives the same pairs later, merged, from the
//! checkpointer ([`super::Store`]); once sled has flushed them, the segments
//! holding them are deleted.
//!
//! On disk, `journal/{first sequence:020}.log`, each a run of records:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | body length, u32 little-endian |
//! | 4 | CRC-32 (IEEE) of the body |
//! | 8 | body: group sequence number, u64 little-endian |
//! | 4 | body: number of pairs, u32 little-endian |
//! | per pair | key length u16 LE, key, value length u32 LE, value |
//!
//! A crash can tear only the last record written (a segment is synced before
//! the next one is created); reading stops at the first record whose length
//! or checksum does not hold, and that tail was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 32 << 20;

/// Record header: length and checksum.
const HEADER: usize = 8;

/// One group commit as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The group's sequence number (strictly increasing).
    pub seq: u64,
    /// The keys and values it writes, in order.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Record {
    fn encode(&self) -> io::Result<Vec<u8>> {
        let size: usize = 12 + self.puts.iter().map(|(k, v)| 6 + k.len() + v.len()).sum::<usize>();
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "journal record too large");
        let mut out = Vec::with_capacity(HEADER + size);
        out.extend_from_slice(&u32::try_from(size).map_err(|_| too_big())?.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&u32::try_from(self.puts.len()).map_err(|_| too_big())?.to_le_bytes());
        for (key, value) in &self.puts {
            out.extend_from_slice(&u16::try_from(key.len()).map_err(|_| too_big())?.to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&u32::try_from(value.len()).map_err(|_| too_big())?.to_le_bytes());
            out.extend_from_slice(value);
        }
        let crc = crc32fast::hash(&out[HEADER..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes one record from the front of `bytes`: the record and its
    /// length, or `None` if no whole, intact record is there.
    fn decode(bytes: &[u8]) -> Option<(Record, usize)> {
        let size = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
        let body = bytes.get(HEADER..HEADER + size)?;
        if crc32fast::hash(body) != crc {
            return None;
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let part = body.get(at..at + n);
            at += n;
            part
        };
        let seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let mut puts = Vec::with_capacity(count.min(size / 6));
        for _ in 0..count {
            let klen = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
            let key = take(klen)?.to_vec();
            let vlen = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let value = take(vlen)?.to_vec();
            puts.push((key, value));
        }
        (at == size).then_some((Record { seq, puts }, HEADER + size))
    }
}

/// The segment being appended to.
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    last_seq: u64,
}

/// The journal's writing side.
pub struct Journal {
    dir: PathBuf,
    /// A segment is closed past this size.
    segment_bytes: u64,
    current: Mutex<Segment>,
    /// Segments no longer written to, with the last sequence each holds.
    closed: Mutex<Vec<(PathBuf, u64)>>,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// Makes a new directory entry durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// A segment file and the first group its name says it holds.
struct SegmentFile {
    path: PathBuf,
    first_seq: Option<u64>,
}

fn segment_files(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    Ok(segments(dir)?
        .into_iter()
        .map(|path| {
            let first_seq = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok());
            SegmentFile { path, first_seq }
        })
        .collect())
}

/// What is wrong with a damaged journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DamageKind {
    /// A record fails its checksum or framing, and intact records (or a
    /// later segment) follow it: not a crash's torn tail.
    BadRecord {
        /// The segment holding it.
        segment: PathBuf,
        /// Its byte offset in the segment.
        offset: u64,
    },
    /// Groups that the journal must hold are not there: a segment file is
    /// missing, or a record was cut out.
    MissingGroups {
        /// The segment after the hole (or the first segment).
        segment: PathBuf,
        /// The hole begins right after sled's checkpoint mark: sled may
        /// have lost its latest writes instead.
        at_checkpoint: bool,
    },
    /// sled says it was checkpointed from a journal, but the journal
    /// directory holds no segment at all.
    NoSegments,
}

/// A journal that cannot be read as a crash leaves it: acknowledged group
/// commits are unreadable or missing. The broker refuses to start on it;
/// [`super::Store::repair`] keeps every intact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// What is wrong, and where.
    pub kind: DamageKind,
    /// The last group before the damage that is intact (or sled's mark).
    pub last_intact: u64,
    /// The first group after the damage that is intact, if any is.
    pub next_intact: Option<u64>,
    /// Every intact record after the damage, oldest first.
    pub intact_after: Vec<Record>,
    /// The input ids that could still be read from the damaged bytes
    /// (store `/` id; unverified, as their checksum failed).
    pub readable_ids: Vec<String>,
    /// The SKUs whose state the damaged bytes rewrote, as far as they can
    /// be read (store `/` sku): the levels to check with a stocktake.
    pub readable_skus: Vec<String>,
}

impl Damage {
    /// The groups lost, first and last, where the journal tells.
    pub fn lost_groups(&self) -> Option<(u64, u64)> {
        let first = self.last_intact + 1;
        let last = self.next_intact?.checked_sub(1)?;
        (last >= first).then_some((first, last))
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            DamageKind::BadRecord { segment, offset } => write!(
                f,
                "the journal is damaged: the record at byte {offset} of {} fails its checksum, and {} intact \
                 record(s) follow it",
                segment.display(),
                self.intact_after.len()
            )?,
            DamageKind::MissingGroups {
                segment,
                at_checkpoint: true,
            } => write!(
                f,
                "the data directory is damaged: sled holds group commits up to {} only, and the journal goes on \
                 from {}: either sled lost its latest writes (a damaged sled file) or a journal segment is missing",
                self.last_intact,
                segment.display()
            )?,
            DamageKind::MissingGroups { segment, .. } => write!(
                f,
                "the journal is damaged: group commits are missing before {} (a segment file was removed?)",
                segment.display()
            )?,
            DamageKind::NoSegments => write!(
                f,
                "the journal is damaged: its directory holds no segment, but sled was checkpointed from one"
            )?,
        }
        match self.lost_groups() {
            Some((first, last)) => write!(f, "; group commits {first} to {last} are unreadable")?,
            None => write!(f, "; the group commits after {} are unreadable", self.last_intact)?,
        }
        write!(
            f,
            ". These were acknowledged to devices, so the broker does not start on them. Restore the data \
             directory from a backup, or run `dishsync-broker --data-dir DIR repair` to keep every intact \
             record and set the damaged segments aside; it reports what is lost."
        )
    }
}

/// The journal as read at start-up.
#[derive(Debug, Default)]
pub struct Reading {
    /// Every intact record before any damage, oldest first.
    pub records: Vec<Record>,
    /// A crash's torn last record that was dropped (segment, offset).
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Damage that is not a torn tail.
    pub damage: Option<Damage>,
}

/// Record bodies hold at least a sequence number and a pair count.
const MIN_BODY: usize = 12;

/// Looks for the next intact record in `bytes` from `from` on, with a
/// sequence number above `above`: the resynchronisation after damage.
fn next_intact(bytes: &[u8], from: usize, above: u64) -> Option<(usize, Record, usize)> {
    (from..bytes.len()).find_map(|at| {
        let rest = &bytes[at..];
        // Cheap checks first: most offsets fail on the length alone.
        let size = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
        if size < MIN_BODY || HEADER + size > rest.len() {
            return None;
        }
        let seq = u64::from_le_bytes(rest.get(HEADER..HEADER + 8)?.try_into().ok()?);
        if seq <= above {
            return None;
        }
        Record::decode(rest).map(|(record, used)| (at, record, used))
    })
}

/// Every intact record with a sequence number above `above` in the
/// segments `contents[i..]`, from byte `at` of the first on,
/// resynchronising past damage; and where in segment `i` the first one
/// starts.
fn intact_after(contents: &[Vec<u8>], i: usize, at: usize, mut above: u64) -> (Vec<Record>, Option<usize>) {
    let mut found = Vec::new();
    let mut first_in_segment = None;
    for (n, bytes) in contents.iter().enumerate().skip(i) {
        let mut at = if n == i { at } else { 0 };
        while let Some((start, record, used)) = next_intact(bytes, at, above) {
            if n == i && first_in_segment.is_none() {
                first_in_segment = Some(start);
            }
            above = record.seq;
            at = start + used;
            found.push(record);
        }
    }
    (found, first_in_segment)
}

/// The keys under `prefix` (`i/` input ids, `k/` SKU states; without the
/// prefix) that can still be read from damaged bytes, ignoring the
/// checksum: a best effort to name what they held.
fn readable_keys(bytes: &[u8], prefix: u8) -> Vec<String> {
    let id_byte = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-/:._".contains(b);
    let mut ids = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let klen = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
        match bytes.get(at + 2..at + 2 + klen) {
            Some([p, b'/', rest @ ..]) if *p == prefix && rest.len() >= 3 && rest.iter().all(id_byte) => {
                let key = String::from_utf8_lossy(rest).into_owned();
                if !ids.contains(&key) {
                    ids.push(key);
                }
                at += 2 + klen;
            }
            _ => at += 1,
        }
    }
    ids
}

/// Reads the journal at `dir` for a store whose sled holds every group up
/// to `checkpointed`.
///
/// A crash can tear only the last record written (a segment is synced
/// before the next is created, and nothing is written after a failed
/// write), so a bad record with nothing intact after it in the last
/// segment is a torn tail: dropped, as it was never acknowledged.
/// Anything else is [`Damage`]: a bad record with intact records after it,
/// a bad record in a closed segment, or a hole in the group sequence past
/// `checkpointed` (a segment missing). The one damage this cannot tell
/// from a crash is a bad *last* record of the journal.
pub fn read(dir: &Path, checkpointed: u64) -> io::Result<Reading> {
    let files = if dir.exists() { segment_files(dir)? } else { Vec::new() };
    let mut reading = Reading::default();
    if files.is_empty() {
        if checkpointed > 0 {
            reading.damage = Some(Damage {
                kind: DamageKind::NoSegments,
                last_intact: checkpointed,
                next_intact: None,
                intact_after: Vec::new(),
                readable_ids: Vec::new(),
                readable_skus: Vec::new(),
            });
        }
        return Ok(reading);
    }
    let mut contents = Vec::with_capacity(files.len());
    for file in &files {
        let mut bytes = Vec::new();
        File::open(&file.path)?.read_to_end(&mut bytes)?;
        contents.push(bytes);
    }
    // The damage found at byte `at` of segment `i`.
    let damaged = |kind: DamageKind, i: usize, at: usize, last_intact: u64, hole_end: Option<u64>| {
        let (intact_after, first) = intact_after(&contents, i, at, last_intact);
        let next_intact = intact_after
            .first()
            .map(|r| r.seq)
            .or(hole_end)
            .or_else(|| files.get(i + 1).and_then(|f| f.first_seq));
        let damaged_bytes = match kind {
            DamageKind::BadRecord { .. } => &contents[i][at..first.unwrap_or(contents[i].len())],
            _ => &[],
        };
        Damage {
            kind,
            last_intact,
            next_intact,
            intact_after,
            readable_ids: readable_keys(damaged_bytes, b'i'),
            readable_skus: readable_keys(damaged_bytes, b'k'),
        }
    };
    // The group the next record must carry, once one has been read.
    let mut expected: Option<u64> = None;
    for (i, file) in files.iter().enumerate() {
        let needed = expected.unwrap_or(checkpointed + 1);
        // A segment is named after its first group: one named past the
        // group needed next means the groups between are gone (a hole
        // wholly at or below the checkpoint is harmless: sled has them).
        if let Some(first) = file
            .first_seq
            .filter(|first| *first > needed && *first > checkpointed + 1)
        {
            let kind = DamageKind::MissingGroups {
                segment: file.path.clone(),
                at_checkpoint: needed == checkpointed + 1,
            };
            reading.damage = Some(damaged(kind, i, 0, needed - 1, Some(first)));
            return Ok(reading);
        }
        let bytes = &contents[i];
        let mut at = 0;
        while at < bytes.len() {
            let last_intact = needed_before(expected, checkpointed);
            match Record::decode(&bytes[at..]) {
                // In sequence, or past a hole that sled covers.
                Some((record, used)) if in_sequence(record.seq, expected, checkpointed) => {
                    expected = Some(record.seq + 1);
                    reading.records.push(record);
                    at += used;
                }
                Some((record, _)) => {
                    let kind = DamageKind::MissingGroups {
                        segment: file.path.clone(),
                        at_checkpoint: expected.is_none(),
                    };
                    reading.damage = Some(damaged(kind, i, at, last_intact, Some(record.seq)));
                    return Ok(reading);
                }
                None => {
                    let damage = damaged(
                        DamageKind::BadRecord {
                            segment: file.path.clone(),
                            offset: at as u64,
                        },
                        i,
                        at + 1,
                        last_intact,
                        None,
                    );
                    if damage.intact_after.is_empty() && i + 1 == files.len() {
                        tracing::warn!(
                            segment = %file.path.display(),
                            offset = at,
                            "the journal ends in a torn record (a crash during a write); it was never acknowledged"
                        );
                        reading.torn_tail = Some((file.path.clone(), at as u64));
                    } else if damage.lost_groups().is_some_and(|(_, last)| last <= checkpointed) {
                        // sled holds the damaged groups already: nothing is
                        // lost, but the disk is failing.
                        tracing::warn!(
                            segment = %file.path.display(),
                            offset = at,
                            "a damaged journal record holds only groups sled has; check the disk"
                        );
                        reading.records.extend(damage.intact_after);
                    } else {
                        reading.damage = Some(damage);
                    }
                    return Ok(reading);
                }
            }
        }
    }
    Ok(reading)
}

/// Whether a record of group `seq` may come next.
fn in_sequence(seq: u64, expected: Option<u64>, checkpointed: u64) -> bool {
    match expected {
        None => seq <= checkpointed + 1,
        Some(e) => seq == e || (seq > e && seq <= checkpointed + 1),
    }
}

/// The last group read so far (or sled's mark before any).
fn needed_before(expected: Option<u64>, checkpointed: u64) -> u64 {
    expected.map_or(checkpointed, |e| e - 1)
}

impl Journal {
    /// Removes every segment in `dir` (all of them are in sled already) and
    /// starts an empty journal whose next record is `next_seq`. The new
    /// segment exists before the old ones go, so a crash in between never
    /// leaves a journal with no segment (which [`read`] takes for damage).
    pub fn create(dir: &Path, next_seq: u64) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let old = segments(dir)?;
        let path = segment_path(dir, next_seq);
        let current = if old.contains(&path) {
            // A segment of this name holds only groups sled has: empty it.
            let file = OpenOptions::new().append(true).open(&path)?;
            file.set_len(0)?;
            file.sync_all()?;
            Segment {
                file: Arc::new(file),
                path: path.clone(),
                len: 0,
                last_seq: next_seq.saturating_sub(1),
            }
        } else {
            Self::new_segment(dir, next_seq)?
        };
        for stale in old.into_iter().filter(|p| *p != path) {
            std::fs::remove_file(stale)?;
        }
        Ok(Journal {
            dir: dir.to_path_buf(),
            segment_bytes: SEGMENT_BYTES,
            current: Mutex::new(current),
            closed: Mutex::new(Vec::new()),
        })
    }

    fn new_segment(dir: &Path, first_seq: u64) -> io::Result<Segment> {
        let path = segment_path(dir, first_seq);
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        sync_dir(dir)?;
        Ok(Segment {
            file: Arc::new(file),
            path,
            len: 0,
            last_seq: first_seq.saturating_sub(1),
        })
    }

    /// Where its segments are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record (written, not yet synced).
    pub fn append(&self, record: &Record) -> io::Result<()> {
        let bytes = record.encode()?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.len > 0 && current.len + bytes.len() as u64 > self.segment_bytes {
            // Everything in the old segment reaches the disk before anything
            // is written to the next, so only the very last record can tear.
            current.file.sync_data()?;
            let next = Self::new_segment(&self.dir, record.seq)?;
            let old = std::mem::replace(&mut *current, next);
            self.closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((old.path, old.last_seq));
        }
        (&*current.file).write_all(&bytes)?;
        current.len += bytes.len() as u64;
        current.last_seq = record.seq;
        Ok(())
    }

    /// Waits until everything appended so far is on disk.
    pub async fn sync(&self) -> io::Result<()> {
        let file = self.current.lock().unwrap_or_else(|e| e.into_inner()).file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(io::Error::other)?
    }

    /// Deletes the closed segments whose records are all at or below
    /// `checkpointed` (sled holds them durably).
    pub fn release(&self, checkpointed: u64) -> io::Result<()> {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let (done, keep): (Vec<_>, Vec<_>) = closed.drain(..).partition(|(_, last)| *last <= checkpointed);
        *closed = keep;
        drop(closed);
        for (path, _) in done {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(seq: u64, n: usize) -> Record {
        Record {
            seq,
            puts: (0..n)
                .map(|i| (format!("k/{seq}/{i}").into_bytes(), vec![i as u8; i * 7]))
                .collect(),
        }
    }

    /// The records of an undamaged journal.
    fn recover(dir: &Path) -> io::Result<Vec<Record>> {
        recover_after(dir, 0)
    }

    fn recover_after(dir: &Path, checkpointed: u64) -> io::Result<Vec<Record>> {
        let reading = read(dir, checkpointed)?;
        assert_eq!(reading.damage, None, "the journal is not damaged");
        Ok(reading.records)
    }

    /// A journal of `n` records of `pairs` pairs in one segment, and the
    /// byte offset each record starts at.
    fn one_segment(dir: &Path, n: u64, pairs: usize) -> (PathBuf, Vec<usize>) {
        let journal = Journal::create(dir, 1).expect("journal io");
        let mut starts = Vec::new();
        let mut at = 0;
        for seq in 1..=n {
            let r = record(seq, pairs);
            starts.push(at);
            at += r.encode().expect("journal io").len();
            journal.append(&r).expect("journal io");
        }
        (segments(dir).expect("journal io").remove(0), starts)
    }

    fn damage_in(dir: &Path, checkpointed: u64) -> Damage {
        read(dir, checkpointed)
            .expect("journal io")
            .damage
            .expect("the journal is damaged")
    }

    #[test]
    fn a_flipped_bit_before_intact_records_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::create(dir.path(), 1).expect("journal io");
        let mut starts = Vec::new();
        let mut at = 0;
        for seq in 1..=10 {
            // Two inputs a group, as the rules commit them.
            let mut r = record(seq, 4);
            r.puts.push((format!("i/s1/sale-{seq}").into_bytes(), vec![1; 8]));
            r.puts.push((format!("i/s1/rcv-{seq}").into_bytes(), vec![2; 8]));
            starts.push(at);
            at += r.encode().expect("journal io").len();
            journal.append(&r).expect("journal io");
        }
        let path = segments(dir.path()).expect("journal io").remove(0);
        let mut bytes = std::fs::read(&path).expect("journal io");
        // A bit in the first pair's value: the record's framing still reads.
        bytes[starts[4] + 8 + 12 + 2 + 5 + 4 + 3] ^= 0x10;
        std::fs::write(&path, &bytes).expect("journal io");
        let reading = read(dir.path(), 0).expect("journal io");
        assert_eq!(reading.records.len(), 4, "the records before the damage");
        let damage = reading.damage.expect("damage");
        assert!(matches!(damage.kind, DamageKind::BadRecord { offset, .. } if offset == starts[4] as u64));
        assert_eq!(damage.last_intact, 4);
        assert_eq!(damage.lost_groups(), Some((5, 5)));
        let after: Vec<u64> = damage.intact_after.iter().map(|r| r.seq).collect();
        assert_eq!(after, vec![6, 7, 8, 9, 10]);
        assert_eq!(damage.readable_ids, vec!["s1/sale-5", "s1/rcv-5"]);
        let text = damage.to_string();
        assert!(
            text.contains("repair") && text.contains("group commits 5 to 5"),
            "{text}"
        );
        // The same damage to a group sled already holds loses nothing.
        let reading = read(dir.path(), 5).expect("journal io");
        assert_eq!(reading.damage, None);
        assert_eq!(reading.records.len(), 9, "every intact record");
    }

    #[test]
    fn a_flipped_length_resynchronises_at_the_next_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, starts) = one_segment(dir.path(), 6, 3);
        let mut bytes = std::fs::read(&path).expect("journal io");
        bytes[starts[2] + 1] ^= 0x01;
        std::fs::write(&path, &bytes).expect("journal io");
        let damage = damage_in(dir.path(), 0);
        assert_eq!(damage.lost_groups(), Some((3, 3)));
        assert_eq!(damage.intact_after.len(), 3);
    }

    #[test]
    fn a_zeroed_block_in_the_middle_is_damage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, starts) = one_segment(dir.path(), 200, 6);
        let mut bytes = std::fs::read(&path).expect("journal io");
        let from = starts[50] + 17;
        bytes[from..from + 4096].fill(0);
        std::fs::write(&path, &bytes).expect("journal io");
        let damage = damage_in(dir.path(), 0);
        let (first, last) = damage.lost_groups().expect("lost groups");
        assert_eq!(first, 51);
        assert!(last > first && last < 200, "{first}..{last}");
        assert_eq!(damage.intact_after.first().map(|r| r.seq), Some(last + 1));
        assert_eq!(damage.intact_after.last().map(|r| r.seq), Some(200));
    }

    #[test]
    fn a_zeroed_tail_is_a_torn_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, starts) = one_segment(dir.path(), 20, 6);
        let mut bytes = std::fs::read(&path).expect("journal io");
        let from = starts[19] + 9;
        bytes[from..].fill(0);
        bytes.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &bytes).expect("journal io");
        let reading = read(dir.path(), 0).expect("journal io");
        assert_eq!(reading.damage, None);
        assert_eq!(reading.records.len(), 19);
        assert!(reading.torn_tail.is_some());
    }

    #[test]
    fn a_missing_segment_is_a_hole_in_the_groups() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = small_segments(dir.path());
        for seq in 1..=60 {
            journal.append(&record(seq, 40)).expect("journal io");
        }
        let files = segments(dir.path()).expect("journal io");
        assert!(files.len() >= 4, "{} segments", files.len());
        std::fs::remove_file(&files[1]).expect("journal io");
        let damage = damage_in(dir.path(), 0);
        assert!(
            matches!(&damage.kind, DamageKind::MissingGroups { segment, at_checkpoint: false } if *segment == files[2])
        );
        let (first, last) = damage.lost_groups().expect("lost groups");
        assert!(first > 1 && last >= first);
        assert_eq!(damage.intact_after.last().map(|r| r.seq), Some(60));
        // Past the checkpoint only: the same hole below sled's mark is harmless.
        assert_eq!(read(dir.path(), last).expect("journal io").damage, None);
        // The first segment gone, with sled behind it, is a hole too.
        std::fs::remove_file(&files[0]).expect("journal io");
        assert!(matches!(
            damage_in(dir.path(), 0).kind,
            DamageKind::MissingGroups {
                at_checkpoint: true,
                ..
            }
        ));
    }

    #[test]
    fn a_journal_with_no_segment_after_a_checkpoint_is_damage() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(&dir.path().join("journal"), 0).expect("journal io").damage, None);
        assert!(matches!(
            damage_in(&dir.path().join("journal"), 7).kind,
            DamageKind::NoSegments
        ));
    }

    #[test]
    fn a_new_journal_keeps_a_segment_of_the_same_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        // An open that found nothing to replay starts at the same group
        // as the open before it.
        drop(Journal::create(dir.path(), 5).expect("journal io"));
        let journal = Journal::create(dir.path(), 5).expect("journal io");
        journal.append(&record(5, 2)).expect("journal io");
        assert_eq!(segments(dir.path()).expect("journal io").len(), 1);
        assert_eq!(recover_after(dir.path(), 4).expect("journal io"), vec![record(5, 2)]);
    }

    fn small_segments(dir: &Path) -> Journal {
        Journal {
            segment_bytes: 64 << 10,
            ..Journal::create(dir, 1).expect("journal io")
        }
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = small_segments(dir.path());
        let written: Vec<Record> = (1..=40).map(|seq| record(seq, 30)).collect();
        let big = Record {
            seq: 41,
            puts: vec![(b"big".to_vec(), vec![7; 100 << 10])],
        };
        for r in &written {
            journal.append(r).expect("journal io");
        }
        journal.append(&big).expect("journal io");
        journal.append(&record(42, 3)).expect("journal io");
        assert!(
            segments(dir.path()).expect("journal io").len() >= 3,
            "segments were closed"
        );
        let back = recover(dir.path()).expect("journal io");
        assert_eq!(back.len(), 42);
        assert_eq!(&back[..40], &written[..]);
        assert_eq!(back[40], big);
        assert_eq!(back[41], record(42, 3));
    }

    #[test]
    fn released_segments_are_deleted_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = small_segments(dir.path());
        journal
            .append(&Record {
                seq: 1,
                puts: vec![(b"a".to_vec(), vec![1; 64 << 10])],
            })
            .expect("journal io");
        journal.append(&record(2, 1)).expect("journal io");
        assert_eq!(segments(dir.path()).expect("journal io").len(), 2);
        journal.release(0).expect("journal io");
        assert_eq!(
            segments(dir.path()).expect("journal io").len(),
            2,
            "seq 1 is not checkpointed yet"
        );
        journal.release(1).expect("journal io");
        assert_eq!(segments(dir.path()).expect("journal io").len(), 1);
        assert_eq!(recover_after(dir.path(), 1).expect("journal io"), vec![record(2, 1)]);
    }

    proptest! {
        /// A crash can cut the file anywhere: what comes back is exactly the
        /// records that were whole, in order, and never a damaged one.
        #[test]
        fn a_torn_tail_loses_only_the_torn_record(sizes in prop::collection::vec(0usize..20, 1..12), cut in 0usize..4096) {
            let dir = tempfile::tempdir().expect("temp dir");
            let journal = Journal::create(dir.path(), 1).expect("journal io");
            let written: Vec<Record> = sizes.iter().enumerate().map(|(i, n)| record(i as u64 + 1, *n)).collect();
            let mut ends = Vec::new();
            let mut total = 0;
            for r in &written {
                journal.append(r).expect("journal io");
                total += r.encode().expect("journal io").len();
                ends.push(total);
            }
            let path = segments(dir.path()).expect("journal io").remove(0);
            let cut_at = total.saturating_sub(cut % (total + 1));
            OpenOptions::new().write(true).open(&path).expect("journal io").set_len(cut_at as u64).expect("journal io");
            let whole = ends.iter().filter(|&&e| e <= cut_at).count();
            prop_assert_eq!(recover(dir.path()).expect("journal io"), written[..whole].to_vec());
        }

        /// A flipped bit anywhere in a record is caught by its checksum or
        /// its framing.
        #[test]
        fn a_flipped_bit_is_never_read_as_a_record(n in 1usize..10, bit in 0usize..10_000) {
            let r = record(9, n);
            let mut bytes = r.encode().expect("journal io");
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Record::decode(&bytes).is_none());
        }
    }
}
