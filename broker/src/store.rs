//! Durable state in sled: the ledger, the dedup index, sale records and the
//! materialised state of every SKU, dish and menu.
//!
//! Everything lives in one sled tree under short key prefixes, so that one
//! [`sled::Batch`] — one atomic write — carries an input's ledger lines, its
//! id in the dedup index and every state it changed. A crash, even `kill -9`,
//! leaves either all of a commit or none of it.
//!
//! | prefix | key | value (postcard) |
//! |---|---|---|
//! | `i/` | store `/` event id | content fingerprint (u64) |
//! | `l/` | sequence (u64, big-endian) | [`LedgerEntry`] |
//! | `k/` | store `/` sku | [`SkuState`](dishsync_inventory::SkuState) |
//! | `d/` | store `/` dish | [`DishState`](dishsync_inventory::DishState) |
//! | `m/` | store | [`MenuState`](dishsync_inventory::MenuState) |
//! | `x/` | store `/` sale id | [`SaleRecord`] |
//! | `p/` | store | [`StorePlan`](dishsync_inventory::StorePlan) |
//! | `q/` | request id | [`Request`](dishsync_inventory::Request) |
//! | `t/` | transfer id | [`Transfer`](dishsync_inventory::Transfer) |
//! | `c` | — | [`ChainPlan`](dishsync_inventory::ChainPlan) |
//!
//! Start-up reads every record but the ledger and the sale records (the
//! snapshot, always current) — never the ledger, which is history for audit
//! and reports.
//!
//! Invariant: only the rules shell writes here, and only through [`Commit`].

use std::path::Path;

use dishsync_inventory::{Inventory, LedgerEntry, Restored, SaleRecord};
use dishsync_protocol::{DishId, DocId, EventId, SkuId, StoreId};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A storage failure. The shell treats it as fatal: it cannot know what
/// reached the disk, so it stops and lets the restart recover from sled.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded or decoded.
    #[error("record {key}: {source}")]
    Record {
        /// The key.
        key: String,
        /// The postcard error.
        source: postcard::Error,
    },
}

/// The durable store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// The next ledger sequence number: read once at open, then advanced by
    /// every applied commit (only the rules task writes).
    next_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
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

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        // We flush explicitly after every group commit; sled's own periodic
        // flusher would only repeat that work.
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()?;
        let store = Store {
            db,
            next_seq: Default::default(),
        };
        let next = store.scan_next_seq()?;
        store.next_seq.store(next, std::sync::atomic::Ordering::SeqCst);
        Ok(store)
    }

    /// The snapshot: every persisted SKU, dish and menu state.
    pub fn load(&self) -> Result<Vec<Restored>, StoreError> {
        let mut out = Vec::new();
        if let Some(chain) = self.db.get("c")? {
            out.push(Restored::Chain(decode(b"c", &chain)?));
        }
        for prefix in ["q/", "t/"] {
            for item in self.db.scan_prefix(prefix) {
                let (key, value) = item?;
                out.push(match prefix {
                    "q/" => Restored::Request(decode(&key, &value)?),
                    _ => Restored::Transfer(decode(&key, &value)?),
                });
            }
        }
        for prefix in ["k/", "d/", "m/", "p/"] {
            for item in self.db.scan_prefix(prefix) {
                let (key, value) = item?;
                let text = String::from_utf8_lossy(&key).into_owned();
                let parts: Vec<&str> = text.split('/').collect();
                let bad = || StoreError::Record {
                    key: text.clone(),
                    source: postcard::Error::DeserializeBadEncoding,
                };
                let restored = match parts.as_slice() {
                    ["k", store, sku] => Restored::Sku(
                        store.parse().map_err(|_| bad())?,
                        sku.parse().map_err(|_| bad())?,
                        decode(&key, &value)?,
                    ),
                    ["d", store, dish] => Restored::Dish(
                        store.parse().map_err(|_| bad())?,
                        dish.parse().map_err(|_| bad())?,
                        decode(&key, &value)?,
                    ),
                    ["m", store] => Restored::Menu(store.parse().map_err(|_| bad())?, decode(&key, &value)?),
                    ["p", store] => Restored::Plan(store.parse().map_err(|_| bad())?, decode(&key, &value)?),
                    _ => return Err(bad()),
                };
                out.push(restored);
            }
        }
        Ok(out)
    }

    /// The fingerprint an event id was committed with, if it was.
    pub fn fingerprint(&self, store: &StoreId, id: &EventId) -> Result<Option<u64>, StoreError> {
        let key = key2("i", store.as_str(), id.as_str());
        match self.db.get(&key)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// A committed sale record.
    pub fn sale(&self, store: &StoreId, id: &EventId) -> Result<Option<SaleRecord>, StoreError> {
        let key = key2("x", store.as_str(), id.as_str());
        match self.db.get(&key)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// Every ledger entry, in commit order (for audits and tests).
    pub fn ledger(&self) -> impl Iterator<Item = Result<LedgerEntry, StoreError>> + '_ {
        self.db.scan_prefix("l/").map(|item| {
            let (key, value) = item?;
            decode(&key, &value)
        })
    }

    /// Starts a group commit.
    pub fn begin(&self) -> Result<Commit, StoreError> {
        Ok(Commit {
            batch: sled::Batch::default(),
            next_seq: self.next_seq.load(std::sync::atomic::Ordering::SeqCst),
            empty: true,
        })
    }

    fn scan_next_seq(&self) -> Result<u64, StoreError> {
        match self.db.scan_prefix("l/").next_back() {
            Some(item) => {
                let (key, _) = item?;
                let mut seq = [0u8; 8];
                if key.len() == 10 {
                    seq.copy_from_slice(&key[2..]);
                }
                Ok(u64::from_be_bytes(seq) + 1)
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

    /// Writes a group commit atomically, visible to every later read at
    /// once, but not yet durable: [`Store::flush`] makes it so.
    pub fn apply(&self, commit: Commit) -> Result<u64, StoreError> {
        if !commit.empty {
            self.db.apply_batch(commit.batch)?;
        }
        self.next_seq
            .fetch_max(commit.next_seq, std::sync::atomic::Ordering::SeqCst);
        Ok(commit.next_seq)
    }

    /// Waits until everything applied so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

/// One group commit under construction: everything in it lands together.
pub struct Commit {
    batch: sled::Batch,
    next_seq: u64,
    empty: bool,
}

impl Commit {
    /// Records that `id` was applied with content `fingerprint`.
    pub fn event_id(&mut self, store: &StoreId, id: &EventId, fingerprint: u64) -> Result<(), StoreError> {
        self.put(key2("i", store.as_str(), id.as_str()), &fingerprint)
    }

    /// Appends ledger lines.
    pub fn ledger(&mut self, entries: &[LedgerEntry]) -> Result<(), StoreError> {
        for entry in entries {
            let mut key = b"l/".to_vec();
            key.extend_from_slice(&self.next_seq.to_be_bytes());
            self.next_seq += 1;
            self.put(key, entry)?;
        }
        Ok(())
    }

    /// Stores a sale record.
    pub fn sale(&mut self, store: &StoreId, id: &EventId, record: &SaleRecord) -> Result<(), StoreError> {
        self.put(key2("x", store.as_str(), id.as_str()), record)
    }

    /// Stores the current state of a SKU, taken from the inventory.
    pub fn sku_state(&mut self, inv: &Inventory, store: &StoreId, sku: &SkuId) -> Result<(), StoreError> {
        match inv.sku_state(store, sku) {
            Some(state) => self.put(key2("k", store.as_str(), sku.as_str()), state),
            None => Ok(()),
        }
    }

    /// Stores the current state of a dish, taken from the inventory.
    pub fn dish_state(&mut self, inv: &Inventory, store: &StoreId, dish: &DishId) -> Result<(), StoreError> {
        match inv.dish_state(store, dish) {
            Some(state) => self.put(key2("d", store.as_str(), dish.as_str()), state),
            None => Ok(()),
        }
    }

    /// Stores the current menu revision of a store.
    pub fn menu_state(&mut self, inv: &Inventory, store: &StoreId) -> Result<(), StoreError> {
        match inv.menu_state(store) {
            Some(state) => self.put(format!("m/{store}").into_bytes(), &state),
            None => Ok(()),
        }
    }

    /// Stores a store's planning state, taken from the inventory.
    pub fn plan_state(&mut self, inv: &Inventory, store: &StoreId) -> Result<(), StoreError> {
        match inv.plan_state(store) {
            Some(state) => self.put(format!("p/{store}").into_bytes(), state),
            None => Ok(()),
        }
    }

    /// Stores a replenishment request, taken from the inventory.
    pub fn request(&mut self, inv: &Inventory, id: &DocId) -> Result<(), StoreError> {
        match inv.request(id) {
            Some(r) => self.put(format!("q/{id}").into_bytes(), r),
            None => Ok(()),
        }
    }

    /// Stores a transfer, taken from the inventory.
    pub fn transfer(&mut self, inv: &Inventory, id: &DocId) -> Result<(), StoreError> {
        match inv.transfer(id) {
            Some(t) => self.put(format!("t/{id}").into_bytes(), t),
            None => Ok(()),
        }
    }

    /// Stores the chain counters.
    pub fn chain_state(&mut self, inv: &Inventory) -> Result<(), StoreError> {
        self.put(b"c".to_vec(), &inv.chain_state())
    }

    fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        let bytes = encode(&key, value)?;
        self.batch.insert(key, bytes);
        self.empty = false;
        Ok(())
    }
}
