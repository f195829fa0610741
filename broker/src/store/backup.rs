//! Backup and restore of the data directory, with the broker running.
//!
//! The state is sled as of the last checkpoint plus the journal's records
//! after it. A backup holds the checkpointer back (no checkpoint moves the
//! journal into sled or releases a segment meanwhile; the rules keep
//! applying and committing), copies every sled record, then every intact
//! journal record past the checkpoint: exactly the state after the last
//! group it read, the moment of the backup. Web sessions are left out.
//!
//! The file: a header line, then records — `P` a sled pair (u32 LE key
//! length, key, u32 LE value length, value), `R` a journal group (u64 LE
//! number, u32 LE pair count, then its pairs) — and `E` the end: pairs
//! and groups (u64 LE each) and the CRC-32 of every byte before it.
//! A restore reads it through and checks it whole before it writes, then
//! writes it a record at a time, into a directory that must not exist or
//! be empty.

use std::io::{Read, Write};

use std::path::Path;

use super::journal::{self, Journal, Record};
use super::{checkpoint_mark, open_sled, replay, Store, StoreError};

/// The first line of a backup.
const HEADER: &[u8] = b"dishsync-backup 1\n";

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// sled records.
    pub pairs: u64,
    /// Journal groups after the checkpoint.
    pub groups: u64,
    /// The last group in it: its moment.
    pub last_group: u64,
}

/// A writer that keeps the CRC-32 of what went through.
struct Summing<W> {
    out: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Summing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    fn pair(&mut self, tag: Option<u8>, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        if let Some(tag) = tag {
            self.put(&[tag])?;
        }
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)
    }
}

impl Store {
    /// Writes a backup of the running store to `out`.
    pub fn backup(&self, out: impl Write) -> Result<Summary, StoreError> {
        let shared = &self.inner.shared;
        // No checkpoint while copying: sled stays at the mark, and the
        // journal keeps every record past it.
        let _held = shared.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
        let checkpointed = checkpoint_mark(&shared.db)?;
        let mut w = Summing {
            out: std::io::BufWriter::new(out),
            crc: crc32fast::Hasher::new(),
        };
        w.put(HEADER)?;
        let mut summary = Summary {
            pairs: 0,
            groups: 0,
            last_group: checkpointed,
        };
        for item in shared.db.iter() {
            let (key, value) = item?;
            if key.starts_with(b"ws/") {
                continue;
            }
            w.pair(Some(b'P'), &key, &value)?;
            summary.pairs += 1;
        }
        let reading = journal::read(shared.journal.dir(), checkpointed)?;
        if let Some(damage) = reading.damage {
            return Err(StoreError::Damaged(Box::new(damage)));
        }
        for Record { seq, puts } in reading.records.into_iter().filter(|r| r.seq > checkpointed) {
            w.put(b"R")?;
            w.put(&seq.to_le_bytes())?;
            w.put(&(puts.len() as u32).to_le_bytes())?;
            for (key, value) in &puts {
                w.pair(None, key, value)?;
            }
            summary.groups += 1;
            summary.last_group = seq;
        }
        w.put(b"E")?;
        w.put(&summary.pairs.to_le_bytes())?;
        w.put(&summary.groups.to_le_bytes())?;
        let crc = w.crc.clone().finalize();
        w.out.write_all(&crc.to_le_bytes())?;
        w.out.flush()?;
        Ok(summary)
    }

    /// Rebuilds a data directory at `dir` from the backup at `file`.
    /// Refuses a `dir` that holds anything (a live data directory above
    /// all), and a backup that does not check whole — read through once
    /// before anything is written, then again to write it, a record at a
    /// time.
    pub fn restore(file: &Path, dir: &Path) -> Result<Summary, StoreError> {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(StoreError::Journal(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} is not empty: a backup is restored into a new data directory only",
                    dir.display()
                ),
            )));
        }
        check_file(file)?;
        std::fs::create_dir_all(dir)?;
        let db = open_sled(dir)?;
        let mut records = Vec::new();
        let summary = scan(std::fs::File::open(file)?, |item| {
            match item {
                Item::Pair(key, value) => {
                    db.insert(key, value)?;
                }
                Item::Group(record) => records.push(record),
            }
            Ok(())
        })?;
        db.flush()?;
        let checkpointed = checkpoint_mark(&db)?;
        let last = replay(&db, checkpointed, records)?;
        drop(Journal::create(&dir.join("journal"), last + 1)?);
        drop(db);
        std::fs::File::open(dir)?.sync_all()?;
        Ok(Summary {
            last_group: last,
            ..summary
        })
    }
}

/// The backup at `path`, read through: what it holds, once every byte of
/// it checks.
pub fn check_file(path: &Path) -> Result<Summary, StoreError> {
    scan(std::fs::File::open(path)?, |_| Ok(()))
}

/// One record of a backup.
enum Item {
    /// A sled record.
    Pair(Vec<u8>, Vec<u8>),
    /// A journal group.
    Group(Record),
}

/// Why a backup is refused.
fn bad(why: impl Into<String>) -> StoreError {
    StoreError::Journal(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("not a whole dishsync backup: {}", why.into()),
    ))
}

/// A reader that keeps the CRC-32 of what it gave.
struct Hashing<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Hashing<R> {
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![0u8; n];
        self.inner.read_exact(&mut out).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad("it ends inside a record: it is cut short"),
            _ => StoreError::Journal(e),
        })?;
        self.crc.update(&out);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| bad("a bad number"))?))
    }

    fn pair(&mut self) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let key = self.sized()?;
        Ok((key, self.sized()?))
    }

    /// A length-prefixed run of bytes (no record is anywhere near 1 GiB).
    fn sized(&mut self) -> Result<Vec<u8>, StoreError> {
        let n = self.u32()? as usize;
        if n > 1 << 30 {
            return Err(bad("a record longer than any the broker writes"));
        }
        self.bytes(n)
    }
}

/// Reads the backup `from` through, handing each record to `each`; what
/// it holds, once its end, counts and checksum are found whole (a record
/// handed over before a damage is found later is the caller's to drop —
/// `restore` checks first).
fn scan(from: impl Read, mut each: impl FnMut(Item) -> Result<(), StoreError>) -> Result<Summary, StoreError> {
    let mut r = Hashing {
        inner: std::io::BufReader::new(from),
        crc: crc32fast::Hasher::new(),
    };
    if r.bytes(HEADER.len()).ok().as_deref() != Some(HEADER) {
        return Err(bad("it does not begin as a backup does"));
    }
    let mut summary = Summary {
        pairs: 0,
        groups: 0,
        last_group: 0,
    };
    loop {
        match r.bytes(1)?[0] {
            b'P' => {
                let (key, value) = r.pair()?;
                each(Item::Pair(key, value))?;
                summary.pairs += 1;
            }
            b'R' => {
                let seq = r.u64()?;
                let n = r.u32()?;
                let puts = (0..n).map(|_| r.pair()).collect::<Result<_, _>>()?;
                each(Item::Group(Record { seq, puts }))?;
                summary.groups += 1;
                summary.last_group = seq;
            }
            b'E' => {
                let (pairs, groups) = (r.u64()?, r.u64()?);
                let expected = r.crc.clone().finalize();
                let mut crc = [0u8; 4];
                r.inner
                    .read_exact(&mut crc)
                    .map_err(|_| bad("its checksum is missing: it is cut short"))?;
                if u32::from_le_bytes(crc) != expected {
                    return Err(bad("its checksum does not match: it is damaged"));
                }
                if (pairs, groups) != (summary.pairs, summary.groups) {
                    return Err(bad("its counts do not match what it holds"));
                }
                if r.inner.read(&mut [0u8; 1])? != 0 {
                    return Err(bad("something follows its end"));
                }
                return Ok(summary);
            }
            other => return Err(bad(format!("an unknown record {other:#x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dishsync_protocol::{EventId, StoreId};

    /// A backup taken between commits, some checkpointed and some only in
    /// the journal, restores to exactly the state of its moment; a damaged
    /// or cut backup, or a directory in use, is refused.
    #[tokio::test]
    async fn a_backup_restores_the_state_of_its_moment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("live");
        let store = Store::open_with(&live, None).expect("store");
        let s1: StoreId = "s1".parse().expect("id");
        let commit = |n: u64| {
            let store = store.clone();
            let s1 = s1.clone();
            async move {
                let mut c = store.begin().expect("store");
                let id: EventId = format!("e{n}").parse().expect("id");
                c.event_id(Some(&s1), &id, n, 0).expect("store");
                store.commit(c).await.expect("store");
            }
        };
        for n in 1..=3 {
            commit(n).await;
        }
        store.checkpoint().expect("store");
        for n in 4..=5 {
            commit(n).await;
        }
        let mut file = Vec::new();
        let summary = store.backup(&mut file).expect("backup");
        assert_eq!(summary.groups, 2, "two groups after the checkpoint");
        commit(6).await;
        let path = dir.path().join("b.backup");
        std::fs::write(&path, &file).expect("write");
        let restored = dir.path().join("restored");
        let again = Store::restore(&path, &restored).expect("restore");
        assert_eq!(again.last_group, summary.last_group);
        let back = Store::open_with(&restored, None).expect("the restored store opens");
        for n in 1..=5 {
            let id: EventId = format!("e{n}").parse().expect("id");
            assert_eq!(back.fingerprint(Some(&s1), &id).expect("store"), Some(n), "e{n}");
        }
        let later: EventId = "e6".parse().expect("id");
        assert_eq!(
            back.fingerprint(Some(&s1), &later).expect("store"),
            None,
            "after its moment"
        );
        // Over a directory in use, a damaged or a cut backup: refused.
        assert!(Store::restore(&path, &live).is_err());
        let mut damaged = file.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        std::fs::write(&path, &damaged).expect("write");
        assert!(Store::restore(&path, &dir.path().join("d1")).is_err(), "damaged");
        std::fs::write(&path, &file[..file.len() - 10]).expect("write");
        let err = Store::restore(&path, &dir.path().join("d2")).expect_err("cut");
        assert!(err.to_string().contains("cut short"), "{err}");
        let mut flipped_crc = file.clone();
        let last = flipped_crc.len() - 1;
        flipped_crc[last] ^= 1;
        std::fs::write(&path, &flipped_crc).expect("write");
        let err = Store::restore(&path, &dir.path().join("d3")).expect_err("checksum");
        assert!(err.to_string().contains("checksum"), "{err}");
        for bad in ["d1", "d2", "d3"] {
            assert!(!dir.path().join(bad).exists(), "nothing written for a bad backup");
        }
    }
}
