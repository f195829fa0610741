//! Slow movers: stock less of what sells slowly.
//!
//! Each store keeps its last [`HISTORY_DAYS`] days of use and waste per
//! SKU ([`UsageHistory`], persisted as `h/{store}`), rolled in when a
//! store-local day ends. From it, per SKU: the usage rate (mean daily use
//! over the days kept), days of cover (level ÷ usage rate), and when the
//! cover is beyond the SKU's shelf life (`shelf_life_days`) or twice the
//! central kitchen's delivery interval, a suggested par = usage rate ×
//! (review period + lead time) × (1 + `safety_stock`), rounded up to the
//! pack — the review period being the delivery interval — listed in the HQ
//! summary with the waste the SKU caused over the days kept.

use std::collections::BTreeMap;

use dishsync_protocol::payload::SlowMoverOut;
use dishsync_protocol::SkuId;
use serde::{Deserialize, Serialize};

use super::actions::Today;
use super::plan::round_up;
use crate::catalog::{Catalog, StockParams};

/// Days of use and waste a store keeps.
pub const HISTORY_DAYS: usize = 7;

/// One past store-local day's use and waste per SKU, base units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayUse {
    /// The store-local day.
    pub day: i64,
    /// Used (sales, consumption, transfers out).
    pub used: BTreeMap<SkuId, i64>,
    /// Wasted.
    pub waste: BTreeMap<SkuId, i64>,
}

/// A store's last days of use and waste (persisted as `h/{store}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageHistory {
    /// Oldest first, at most [`HISTORY_DAYS`], each day once.
    pub days: Vec<DayUse>,
}

impl UsageHistory {
    /// Keeps the day `today` held as a past day (a day seen before is
    /// replaced); days older than [`HISTORY_DAYS`] before the newest go.
    pub fn keep(&mut self, today: &Today) {
        self.days.retain(|d| d.day != today.day);
        self.days.push(DayUse {
            day: today.day,
            used: today.used.clone(),
            waste: today.waste.clone(),
        });
        self.days.sort_by_key(|d| d.day);
        let newest = self.days.last().map_or(today.day, |d| d.day);
        self.days.retain(|d| d.day > newest - HISTORY_DAYS as i64);
    }

    /// Mean daily use of `sku` over the days kept; `None` with no day kept.
    pub fn usage_per_day(&self, sku: &SkuId) -> Option<f64> {
        if self.days.is_empty() {
            return None;
        }
        let used: i64 = self.days.iter().filter_map(|d| d.used.get(sku)).sum();
        Some(used as f64 / self.days.len() as f64)
    }

    /// Waste of `sku` over the days kept.
    pub fn waste(&self, sku: &SkuId) -> i64 {
        self.days.iter().filter_map(|d| d.waste.get(sku)).sum()
    }
}

/// The central kitchen's delivery interval in days: a day shared by its
/// delivery windows (a day when it names none).
fn delivery_interval_days(catalog: &Catalog) -> f64 {
    let windows = catalog.planning().kitchen.windows.len();
    if windows == 0 {
        1.0
    } else {
        1.0 / windows as f64
    }
}

/// The slow movers among a store's SKUs at `levels`, with the store's
/// stock targets `params` and its `history`: in SKU order.
pub fn slow_movers(
    catalog: &Catalog,
    params: &BTreeMap<SkuId, StockParams>,
    levels: impl IntoIterator<Item = (SkuId, i64)>,
    history: &UsageHistory,
) -> Vec<SlowMoverOut> {
    let planning = catalog.planning();
    let interval = delivery_interval_days(catalog);
    let lead = f64::from(planning.kitchen.lead_time_minutes) / (24.0 * 60.0);
    let mut out = Vec::new();
    for (sku, level) in levels {
        let (Some(def), Some(target), Some(usage)) = (catalog.sku(&sku), params.get(&sku), history.usage_per_day(&sku))
        else {
            continue;
        };
        if level <= 0 {
            continue;
        }
        let cover = if usage > 0.0 {
            level as f64 / usage
        } else {
            f64::INFINITY
        };
        let past_shelf_life = def.shelf_life_days.is_some_and(|days| cover > f64::from(days));
        if !(past_shelf_life || cover > 2.0 * interval) {
            continue;
        }
        // Whole units, up; a product that is whole but for float noise stays.
        let suggested = (usage * (interval + lead) * (1.0 + planning.safety_stock) - 1e-9).ceil() as i64;
        out.push(SlowMoverOut {
            sku: sku.clone(),
            level,
            usage_per_day: usage,
            cover_days: cover.is_finite().then_some(cover),
            shelf_life_days: def.shelf_life_days,
            par: target.par,
            suggested_par: round_up(suggested, def.pack),
            waste_days: history.days.len() as u32,
            waste: history.waste(&sku),
        });
    }
    out
}
