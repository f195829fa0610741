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

/// Every intact record in the journal at `dir`, oldest first. Reading
/// stops at the first torn or corrupt record.
pub fn recover(dir: &Path) -> io::Result<Vec<Record>> {
    let mut records = Vec::new();
    if !dir.exists() {
        return Ok(records);
    }
    for path in segments(dir)? {
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        let mut at = 0;
        while at < bytes.len() {
            match Record::decode(&bytes[at..]) {
                Some((record, used)) => {
                    records.push(record);
                    at += used;
                }
                None => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = at,
                        "journal ends in a torn record (a crash during a write); it was never acknowledged"
                    );
                    return Ok(records);
                }
            }
        }
    }
    Ok(records)
}

impl Journal {
    /// Removes every segment in `dir` (all of them are in sled already) and
    /// starts an empty journal whose next record is `next_seq`.
    pub fn create(dir: &Path, next_seq: u64) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        for path in segments(dir)? {
            std::fs::remove_file(path)?;
        }
        let current = Self::new_segment(dir, next_seq)?;
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
        assert_eq!(recover(dir.path()).expect("journal io"), vec![record(2, 1)]);
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
