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
//! A restore checks it whole before it writes, into a directory that must
//! not exist or be empty.

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

    /// Rebuilds a data directory at `dir` from the backup `from`. Refuses
    /// a `dir` that holds anything (a live data directory above all), and
    /// a backup that is not whole.
    pub fn restore(from: impl Read, dir: &Path) -> Result<Summary, StoreError> {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(StoreError::Journal(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} is not empty: a backup is restored into a new data directory only",
                    dir.display()
                ),
            )));
        }
        let mut bytes = Vec::new();
        std::io::BufReader::new(from).read_to_end(&mut bytes)?;
        let (pairs, records) = parse(&bytes).map_err(|why| {
            StoreError::Journal(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a whole dishsync backup: {why}"),
            ))
        })?;
        std::fs::create_dir_all(dir)?;
        let db = open_sled(dir)?;
        let groups = records.len() as u64;
        for (key, value) in &pairs {
            db.insert(key.as_slice(), value.as_slice())?;
        }
        db.flush()?;
        let checkpointed = checkpoint_mark(&db)?;
        let last = replay(&db, checkpointed, records)?;
        drop(Journal::create(&dir.join("journal"), last + 1)?);
        drop(db);
        std::fs::File::open(dir)?.sync_all()?;
        Ok(Summary {
            pairs: pairs.len() as u64,
            groups,
            last_group: last,
        })
    }
}

/// What the backup `bytes` holds, once every byte of it checks.
pub fn check(bytes: &[u8]) -> Result<Summary, String> {
    let (pairs, records) = parse(bytes)?;
    Ok(Summary {
        pairs: pairs.len() as u64,
        groups: records.len() as u64,
        last_group: records.last().map_or(0, |r| r.seq),
    })
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A backup's pairs and journal groups, once every byte checks.
fn parse(bytes: &[u8]) -> Result<(Pairs, Vec<Record>), String> {
    let body = bytes.strip_prefix(HEADER).ok_or("it does not begin as a backup does")?;
    let (content, crc) = bytes.split_at(bytes.len().checked_sub(4).ok_or("it is too short")?);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "no checksum")?);
    if crc32fast::hash(content) != crc {
        return Err("its checksum does not match: it is cut short or damaged".into());
    }
    let mut at = 0usize;
    let body = &body[..body.len() - 4];
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let part = body.get(*at..*at + n).ok_or("it ends inside a record")?;
        *at += n;
        Ok(part)
    };
    let u32_at = |at: &mut usize| -> Result<usize, String> {
        Ok(u32::from_le_bytes(take(at, 4)?.try_into().map_err(|_| "bad length")?) as usize)
    };
    let u64_at = |at: &mut usize| -> Result<u64, String> {
        Ok(u64::from_le_bytes(take(at, 8)?.try_into().map_err(|_| "bad number")?))
    };
    let pair = |at: &mut usize| -> Result<(Vec<u8>, Vec<u8>), String> {
        let k = u32_at(at)?;
        let key = take(at, k)?.to_vec();
        let v = u32_at(at)?;
        Ok((key, take(at, v)?.to_vec()))
    };
    let (mut pairs, mut records) = (Vec::new(), Vec::new());
    loop {
        match take(&mut at, 1)?[0] {
            b'P' => pairs.push(pair(&mut at)?),
            b'R' => {
                let seq = u64_at(&mut at)?;
                let n = u32_at(&mut at)?;
                let puts = (0..n).map(|_| pair(&mut at)).collect::<Result<_, _>>()?;
                records.push(Record { seq, puts });
            }
            b'E' => {
                let (p, g) = (u64_at(&mut at)?, u64_at(&mut at)?);
                if p != pairs.len() as u64 || g != records.len() as u64 || at != body.len() {
                    return Err("its counts do not match what it holds".into());
                }
                return Ok((pairs, records));
            }
            other => return Err(format!("an unknown record {other:#x}")),
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
                c.event_id(&s1, &id, n).expect("store");
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
        let restored = dir.path().join("restored");
        let again = Store::restore(file.as_slice(), &restored).expect("restore");
        assert_eq!(again.last_group, summary.last_group);
        let back = Store::open_with(&restored, None).expect("the restored store opens");
        for n in 1..=5 {
            let id: EventId = format!("e{n}").parse().expect("id");
            assert_eq!(back.fingerprint(&s1, &id).expect("store"), Some(n), "e{n}");
        }
        let later: EventId = "e6".parse().expect("id");
        assert_eq!(back.fingerprint(&s1, &later).expect("store"), None, "after its moment");
        // Over a directory in use, a damaged or a cut backup: refused.
        assert!(Store::restore(file.as_slice(), &live).is_err());
        let mut damaged = file.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        let err = Store::restore(damaged.as_slice(), &dir.path().join("d1")).expect_err("damaged");
        assert!(err.to_string().contains("checksum"), "{err}");
        let cut = &file[..file.len() - 10];
        assert!(Store::restore(cut, &dir.path().join("d2")).is_err());
        assert!(!dir.path().join("d1").exists(), "nothing written for a bad backup");
    }
}
