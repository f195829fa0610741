//! The `retention` scenario: the disk a data directory takes per million
//! inputs when it keeps all history, beside the same inputs in a data
//! directory compacted once a simulated day (as the broker's background
//! compaction does), in the same run.
//!
//! Both directories get the same stock events, written as the rules write
//! them (each input's id, its ledger lines and the state it changed, in
//! group commits of [`GROUP`] inputs), spread over days of a simulated clock
//! so that history ages without waiting for it.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use dishsync_broker::store::retention::{Footprint, Retention};
use dishsync_broker::store::Store;
use dishsync_inventory::Inventory;
use dishsync_protocol::payload::{StockEventIn, StockKind, Timestamp};
use dishsync_protocol::{SkuId, StoreId, Unit};

use super::Cli;

const DAY: i64 = 86_400_000;
/// Inputs per group commit.
const GROUP: usize = 1_000;
/// Stores of the chain (each with the ledger chain's 50 SKUs).
const STORES: usize = 20;

/// One data directory fed with the chain's inputs.
struct Fed {
    store: Store,
    inventory: Inventory,
    stores: Vec<StoreId>,
    skus: Vec<SkuId>,
    /// Seconds spent compacting, and how many compactions.
    compacting: (f64, usize),
}

impl Fed {
    fn open(data: &Path, catalog: std::sync::Arc<dishsync_inventory::Catalog>) -> Result<Fed> {
        let stores = catalog.stores().map(|s| s.id.clone()).collect();
        let skus = catalog.skus().map(|s| s.id.clone()).collect();
        Ok(Fed {
            store: Store::open(data)?,
            inventory: Inventory::new(catalog, 0),
            stores,
            skus,
            compacting: (0.0, 0),
        })
    }

    /// Day `day`'s `per_day` inputs, stamped and applied through the day;
    /// then a compaction as of the day's end, with `retention` if given.
    async fn day(&mut self, day: usize, per_day: usize, retention: Option<&Retention>) -> Result<()> {
        let start = day as i64 * DAY;
        let device: dishsync_protocol::DeviceId = "scale-1".parse()?;
        let kinds = [StockKind::Receive, StockKind::Receive, StockKind::Consume];
        let mut first = 0;
        while first < per_day {
            let mut group = Vec::with_capacity(GROUP);
            for k in first..(first + GROUP).min(per_day) {
                let n = day * per_day + k;
                let store = &self.stores[n % self.stores.len()];
                let event = StockEventIn {
                    id: format!("{store}-scale-1-{n:09}").parse()?,
                    kind: kinds[n % kinds.len()],
                    qty: 1.0,
                    unit: Unit::G,
                    at: Timestamp(start + (k as i64 * DAY) / per_day as i64),
                    device: device.clone(),
                    reference: None,
                    reason: None,
                };
                let sku = self.skus[(n / self.stores.len()) % self.skus.len()].clone();
                group.push((store.clone(), sku, event));
            }
            super::commit_stock(&self.store, &mut self.inventory, group).await?;
            first += GROUP;
        }
        self.store.checkpoint()?;
        if let Some(retention) = retention {
            let t0 = std::time::Instant::now();
            self.store
                .compact::<dishsync_broker::webhooks::DeadLetter>(retention, start + DAY)?;
            self.compacting.0 += t0.elapsed().as_secs_f64();
            self.compacting.1 += 1;
        }
        Ok(())
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        bytes += if entry.file_type()?.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
    }
    Ok(bytes)
}

/// Bytes under each entry of `dir` (sled's `db` and `blobs`, the journal).
fn files_of(dir: &Path) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let bytes = if entry.file_type()?.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
        out.insert(entry.file_name().to_string_lossy().into_owned(), bytes);
    }
    Ok(out)
}

/// The `retention` scenario: `inputs` inputs over days of `per_day`, into
/// a directory that keeps everything and one compacted daily keeping the
/// ledger 15 % and ids 3.5 % of the days (30 and 7 of 200).
pub(super) async fn retention(cli: &Cli, dir: &Path, inputs: usize, per_day: usize) -> Result<()> {
    let (_, hash) = dishsync_broker::api::integrations::mint_token()?;
    let settings =
        dishsync_broker::Settings::parse(&super::history::ledger_chain(STORES, &hash)).map_err(|e| anyhow!("{e}"))?;
    let days = inputs.div_ceil(per_day).max(2);
    let window = |share: f64| Some(Duration::from_secs_f64(days as f64 * share * 86_400.0));
    let retention = Retention {
        ledger: window(0.15),
        event_ids: window(0.035),
        sales: None,
        dead_letters: None,
        every: Duration::from_secs(86_400),
    };
    let kept_all = dir.join(format!("retention-all-{}", std::process::id()));
    let compacted = dir.join(format!("retention-compacted-{}", std::process::id()));
    for d in [&kept_all, &compacted] {
        let _ = std::fs::remove_dir_all(d);
    }
    let mut all = Fed::open(&kept_all, settings.catalog.clone())?;
    let mut kept = Fed::open(&compacted, settings.catalog.clone())?;
    // The directories' sizes at each quarter of the days.
    let mut quarters = Vec::new();
    for day in 0..days {
        all.day(day, per_day, None).await?;
        kept.day(day, per_day, Some(&retention)).await?;
        if (day + 1) * 4 % days < 4 && day + 1 < days {
            quarters.push((dir_bytes(&kept_all)?, dir_bytes(&compacted)?));
        }
    }
    let halfway = quarters.get(1).copied().unwrap_or_default();
    let written = (days * per_day) as f64 / 1e6;
    let (all_kinds, kept_kinds) = (all.store.footprint()?, kept.store.footprint()?);
    let compactions = kept.compacting;
    drop((all, kept));
    let end = (dir_bytes(&kept_all)?, dir_bytes(&compacted)?);
    quarters.push(end);
    let files = (files_of(&kept_all)?, files_of(&compacted)?);
    for d in [&kept_all, &compacted] {
        let _ = std::fs::remove_dir_all(d);
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let per_million = |kinds: &std::collections::BTreeMap<String, Footprint>, kind: &str| {
        kinds.get(kind).map_or(0.0, |f| mib(f.bytes) / written)
    };
    let compact_ms = compactions.0 * 1000.0 / compactions.1.max(1) as f64;
    let metric = format!("{} inputs over {days} days", days * per_day);
    if cli.json {
        let kinds: serde_json::Map<String, serde_json::Value> = all_kinds
            .keys()
            .chain(kept_kinds.keys())
            .map(|k| {
                (
                    k.clone(),
                    serde_json::json!({"kept_all_mib_per_million": per_million(&all_kinds, k),
                        "compacted_mib": kept_kinds.get(k).map_or(0.0, |f| mib(f.bytes))}),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"scenario": "retention", "metric": metric, "unit": "MiB", "goal": "bounded",
                "kept_all_mib": mib(end.0), "kept_all_mib_per_million": mib(end.0) / written,
                "kept_all_halfway_mib": mib(halfway.0), "compacted_mib": mib(end.1),
                "compacted_halfway_mib": mib(halfway.1), "ratio": end.1 as f64 / end.0 as f64,
                "compaction_ms_per_day": compact_ms,
                "quarters_mib": quarters.iter().map(|(a, k)| [mib(*a), mib(*k)]).collect::<Vec<_>>(), "ledger_days": days as f64 * 0.15,
                "event_id_days": days as f64 * 0.035, "by_kind": kinds})
        );
    } else {
        println!(
            "{:<12} {metric:<38} all kept {:.1} MiB ({:.1} MiB per million; {:.1} halfway)   compacted daily {:.1} MiB ({:.1} halfway)   ratio {:.2}   compaction {compact_ms:.1} ms a day",
            "retention",
            mib(end.0),
            mib(end.0) / written,
            mib(halfway.0),
            mib(end.1),
            mib(halfway.1),
            end.1 as f64 / end.0 as f64,
        );
        let sizes: Vec<String> = quarters
            .iter()
            .map(|(a, k)| format!("{:.0}/{:.0}", mib(*a), mib(*k)))
            .collect();
        println!("{:<12}   by quarter, MiB all kept/compacted: {}", "", sizes.join("  "));
        for (name, bytes) in &files.0 {
            println!(
                "{:<12}   file {name:<16} {:>8.1} MiB all kept   {:>8.1} MiB compacted",
                "",
                mib(*bytes),
                mib(files.1.get(name).copied().unwrap_or(0))
            );
        }
        for (kind, f) in &all_kinds {
            let compacted = kept_kinds.get(kind).map_or(0, |f| f.bytes);
            println!(
                "{:<12}   {kind:<4} {:>8.1} MiB per million kept ({} records)   {:>8.1} MiB compacted",
                "",
                mib(f.bytes) / written,
                f.records,
                mib(compacted)
            );
        }
    }
    Ok(())
}
