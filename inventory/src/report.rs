//! The day's report of a store, from its ledger: portions sold per dish,
//! and per SKU what was used (sales, consumption, transfers out), received,
//! moved in, adjusted, counted and wasted (by reason), with the waste
//! ratio. Pure: the shell reads the day's ledger lines and the sale records
//! they name, and hands them in.
//!
//! The day is the store-local calendar day of each change's own stamp
//! (`[planning] utc_offset`), and the figures are those of the HQ summary
//! (topics.md): `used` counts sales, consumption and transfers out; a sale
//! voided since counts in neither `used` nor the dish's net portions (its
//! void takes its use back from the day it was counted in); `ratio` =
//! waste ÷ (waste + used); the store's `waste_ratio` is the mean of the
//! SKUs' ratios, each SKU weighing the same whatever its unit. Priced
//! ([`DayReport::priced`]), it also gives the day's waste and use in money
//! at the SKUs' unit costs, and waste as a share of ingredient cost.

use std::collections::{BTreeMap, BTreeSet};

use dishsync_protocol::{DishId, EventId, Millis, SkuId, StoreId};
use serde::Serialize;

use crate::state::{EntryKind, LedgerEntry, SaleRecord, StockKindCode};

/// A dish's portions on the day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DishDay {
    /// Portions in the day's sales.
    pub sold: u64,
    /// Of those, portions of sales voided since.
    pub voided: u64,
    /// Sold less voided.
    pub net: u64,
}

/// A SKU's day, base units.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SkuDay {
    /// Its base unit.
    pub unit: &'static str,
    /// Taken by sales not voided since.
    pub sold: i64,
    /// Consumed outside sales (prep, staff meals).
    pub consumed: i64,
    /// Sent to other stores.
    pub transferred_out: i64,
    /// `sold` + `consumed` + `transferred_out`.
    pub used: i64,
    /// Delivered.
    pub received: i64,
    /// Came from other stores.
    pub transferred_in: i64,
    /// Net of adjustments (signed).
    pub adjusted: i64,
    /// Wasted, in all.
    pub waste: i64,
    /// Wasted, by the reason given (`unspecified` when none was).
    pub waste_by_reason: BTreeMap<String, i64>,
    /// waste ÷ (waste + used), when either is above zero.
    pub ratio: Option<f64>,
    /// The level the day's last count found, if it was counted.
    pub counted: Option<i64>,
}

/// One store's day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayReport {
    /// The store.
    pub store: StoreId,
    /// The store-local date, `YYYY-MM-DD`.
    pub date: String,
    /// Where the day begins and ends (UTC millis, end excluded).
    pub from: Millis,
    /// See `from`.
    pub to: Millis,
    /// Per dish sold on the day.
    pub dishes: BTreeMap<DishId, DishDay>,
    /// Per SKU that moved on the day.
    pub skus: BTreeMap<SkuId, SkuDay>,
    /// The mean of the SKUs' ratios (0 when none was used or wasted).
    pub waste_ratio: f64,
    /// SKUs with any use or waste: how many the ratio is the mean of.
    pub counted: u32,
    /// Ledger lines the report is made of.
    pub lines: usize,
    /// The day's waste and use in money, at the SKUs' costs now
    /// ([`DayReport::priced`]); absent when no SKU used or wasted has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<dishsync_protocol::payload::CostOut>,
}

impl DayReport {
    /// The report of `store` on `date`, `[from, to)`, from its `lines` of
    /// the day (in commit order) and the sale records they name (`sale`;
    /// a sale without one counts its SKUs but no dish). `unit` names a
    /// SKU's base unit.
    pub fn build(
        store: &StoreId,
        (date, from, to): (String, Millis, Millis),
        lines: &[(u64, LedgerEntry)],
        sale: impl Fn(&EventId) -> Option<SaleRecord>,
        unit: impl Fn(&SkuId) -> &'static str,
    ) -> DayReport {
        let mut skus: BTreeMap<SkuId, SkuDay> = BTreeMap::new();
        let mut dishes: BTreeMap<DishId, DishDay> = BTreeMap::new();
        let mut sales: BTreeMap<&EventId, Option<SaleRecord>> = BTreeMap::new();
        let mut kept = 0;
        for (_, line) in lines {
            if line.store != *store || line.at < from || line.at >= to {
                continue;
            }
            kept += 1;
            let day = skus.entry(line.sku.clone()).or_insert_with(|| SkuDay {
                unit: unit(&line.sku),
                ..SkuDay::default()
            });
            let taken = -line.amount;
            match line.kind {
                EntryKind::Sale => {
                    let record = sales.entry(&line.event).or_insert_with(|| sale(&line.event));
                    if record.as_ref().is_none_or(|r| r.voided_by.is_none()) {
                        day.sold += taken;
                    }
                }
                // A void's sale was counted, or not, on the sale's own day.
                EntryKind::Void => {}
                EntryKind::Stock(code) => match code {
                    StockKindCode::Consume => day.consumed += taken,
                    StockKindCode::TransferOut => day.transferred_out += taken,
                    StockKindCode::Receive => day.received += line.amount,
                    StockKindCode::TransferIn => day.transferred_in += line.amount,
                    StockKindCode::Adjust => day.adjusted += line.amount,
                    StockKindCode::Count => day.counted = Some(line.amount),
                    StockKindCode::Waste => {
                        day.waste += taken;
                        let reason = line.reason.clone().unwrap_or_else(|| "unspecified".into());
                        *day.waste_by_reason.entry(reason).or_default() += taken;
                    }
                },
            }
        }
        for record in sales.values().flatten() {
            for (dish, portions) in &record.lines {
                let d = dishes.entry(dish.clone()).or_default();
                d.sold += u64::from(*portions);
                if record.voided_by.is_some() {
                    d.voided += u64::from(*portions);
                }
                d.net = d.sold - d.voided;
            }
        }
        let mut ratios = Vec::new();
        for day in skus.values_mut() {
            day.used = day.sold + day.consumed + day.transferred_out;
            if day.waste + day.used > 0 {
                let ratio = day.waste as f64 / (day.waste + day.used) as f64;
                day.ratio = Some(ratio);
                ratios.push(ratio);
            }
        }
        let counted = ratios.len() as u32;
        DayReport {
            store: store.clone(),
            date,
            from,
            to,
            dishes,
            skus,
            waste_ratio: if ratios.is_empty() {
                0.0
            } else {
                ratios.iter().sum::<f64>() / f64::from(counted)
            },
            counted,
            lines: kept,
            cost: None,
        }
    }

    /// The report with its waste and use in money, at the store's unit
    /// costs `params` in `currency`.
    pub fn priced(
        mut self,
        params: &BTreeMap<SkuId, crate::catalog::StockParams>,
        currency: Option<&str>,
    ) -> DayReport {
        let figures = self.skus.iter().map(|(sku, d)| (sku, d.waste, d.used));
        self.cost = crate::planning::cost::in_money(figures, params, currency);
        self
    }

    /// The sale ids `lines` name (the records [`DayReport::build`] needs).
    pub fn sales_named(lines: &[(u64, LedgerEntry)]) -> BTreeSet<EventId> {
        lines
            .iter()
            .filter(|(_, l)| l.kind == EntryKind::Sale)
            .map(|(_, l)| l.event.clone())
            .collect()
    }

    /// The report as rows `kind, item, measure, qty, unit` (`dish burger
    /// sold 12 portions`, `sku beef waste:dropped 300 g`), for a
    /// spreadsheet to pivot.
    pub fn rows(&self) -> Vec<[String; 5]> {
        let mut rows = Vec::new();
        for (dish, d) in &self.dishes {
            for (measure, n) in [("sold", d.sold), ("voided", d.voided), ("net", d.net)] {
                rows.push([
                    "dish".into(),
                    dish.to_string(),
                    measure.into(),
                    n.to_string(),
                    "portions".into(),
                ]);
            }
        }
        for (sku, s) in &self.skus {
            let mut row = |measure: String, qty: String| {
                rows.push(["sku".into(), sku.to_string(), measure, qty, s.unit.into()]);
            };
            for (measure, n) in [
                ("used", s.used),
                ("sold", s.sold),
                ("consumed", s.consumed),
                ("transferred_out", s.transferred_out),
                ("received", s.received),
                ("transferred_in", s.transferred_in),
                ("adjusted", s.adjusted),
                ("waste", s.waste),
            ] {
                row(measure.into(), n.to_string());
            }
            for (reason, n) in &s.waste_by_reason {
                row(format!("waste:{reason}"), n.to_string());
            }
            if let Some(level) = s.counted {
                row("counted".into(), level.to_string());
            }
            if let Some(ratio) = s.ratio {
                rows.push([
                    "sku".into(),
                    sku.to_string(),
                    "ratio".into(),
                    format!("{ratio:.4}"),
                    String::new(),
                ]);
            }
        }
        rows.push([
            "store".into(),
            self.store.to_string(),
            "waste_ratio".into(),
            format!("{:.4}", self.waste_ratio),
            String::new(),
        ]);
        if let Some(cost) = &self.cost {
            let currency = cost.currency.clone().unwrap_or_default();
            for (measure, amount) in [("waste_cost", cost.waste), ("used_cost", cost.used)] {
                rows.push([
                    "store".into(),
                    self.store.to_string(),
                    measure.into(),
                    format!("{amount:.2}"),
                    currency.clone(),
                ]);
            }
            rows.push([
                "store".into(),
                self.store.to_string(),
                "waste_cost_share".into(),
                format!("{:.4}", cost.share),
                String::new(),
            ]);
        }
        rows
    }
}

/// A SKU's level over the day: `(when, level)` steps from `from` to the
/// last change, worked back from `current` (the level now) through the
/// day's `lines` of the SKU in commit order. A count fixes the level
/// absolutely, so the curve starts at the day's last count when there is
/// one (what came before it is not known from its own changes); lines that
/// did not move the level (stamped before a count) leave it.
pub fn level_curve(lines: &[&LedgerEntry], current: i64, from: Millis) -> Vec<(Millis, i64)> {
    let mut points = Vec::new();
    let mut level = current;
    let mut counted = false;
    for line in lines.iter().rev().filter(|l| l.moved) {
        points.push((line.at, level));
        if line.kind == EntryKind::Stock(StockKindCode::Count) {
            counted = true;
            break;
        }
        level -= line.amount;
    }
    if !counted {
        points.push((from, level));
    }
    points.reverse();
    points
}

/// Portions sold in each local hour of the day (`offset_minutes` from
/// UTC), from the day's sale records; sales voided since count in none.
pub fn sales_per_hour<'a>(sales: impl Iterator<Item = &'a SaleRecord>, offset_minutes: i32) -> [u64; 24] {
    let mut hours = [0u64; 24];
    for sale in sales.filter(|s| s.voided_by.is_none()) {
        let minute = (sale.at.div_euclid(60_000) + i64::from(offset_minutes)).rem_euclid(24 * 60);
        let hour = (minute / 60) as usize;
        hours[hour] += sale.lines.iter().map(|(_, p)| u64::from(*p)).sum::<u64>();
    }
    hours
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id;

    fn line(
        kind: EntryKind,
        sku: &str,
        event: &str,
        amount: i64,
        at: Millis,
        reason: Option<&str>,
    ) -> (u64, LedgerEntry) {
        let mut l = LedgerEntry::new(&id("s1"), &id(sku), &id(event), kind, amount, at, true);
        l.reason = reason.map(str::to_string);
        (0, l)
    }

    #[test]
    fn a_level_over_the_day_is_worked_back_from_now_to_the_last_count() {
        let sale = |amount, at| line(EntryKind::Sale, "bun", "s", amount, at, None).1;
        let count = line(EntryKind::Stock(StockKindCode::Count), "bun", "c", 50, 30, None).1;
        let receive = line(EntryKind::Stock(StockKindCode::Receive), "bun", "r", 10, 20, None).1;
        let (a, b, c) = (sale(-2, 10), sale(-3, 40), sale(-1, 50));
        // No count: from the day's start.
        assert_eq!(level_curve(&[&a, &receive], 18, 0), [(0, 10), (10, 8), (20, 18)]);
        // A count: from it on.
        assert_eq!(
            level_curve(&[&a, &receive, &count, &b, &c], 46, 0),
            [(30, 50), (40, 47), (50, 46)]
        );
        let late = LedgerEntry {
            moved: false,
            ..sale(-9, 5)
        };
        assert_eq!(
            level_curve(&[&late, &a], 8, 0),
            [(0, 10), (10, 8)],
            "an unmoved line leaves it"
        );
    }

    #[test]
    fn sales_are_counted_in_the_local_hour_they_were_made() {
        let record = |at, portions, voided: Option<&str>| SaleRecord {
            at,
            lines: vec![(id("burger"), portions)],
            taken: Vec::new(),
            voided_by: voided.map(id),
        };
        let hour = 3_600_000;
        let sales = [
            record(30 * 60_000, 2, None),
            record(hour + 1, 3, None),
            record(hour + 2, 9, Some("v")),
        ];
        let hours = sales_per_hour(sales.iter(), 60);
        assert_eq!((hours[1], hours[2], hours.iter().sum::<u64>()), (2, 3, 5));
    }

    #[test]
    fn a_day_counts_use_waste_by_reason_and_sales_not_voided() {
        let waste = EntryKind::Stock(StockKindCode::Waste);
        let lines = vec![
            line(EntryKind::Stock(StockKindCode::Count), "bun", "c1", 50, 10, None),
            line(EntryKind::Sale, "bun", "sale-1", -2, 20, None),
            line(EntryKind::Sale, "beef", "sale-1", -300, 20, None),
            line(EntryKind::Sale, "bun", "sale-2", -1, 30, None),
            line(EntryKind::Void, "bun", "void-2", 1, 40, None),
            line(waste, "bun", "w1", -3, 50, Some("dropped")),
            line(waste, "bun", "w2", -1, 60, None),
            line(EntryKind::Stock(StockKindCode::Receive), "beef", "r1", 1000, 70, None),
            line(
                EntryKind::Stock(StockKindCode::TransferOut),
                "beef",
                "t1",
                -200,
                80,
                None,
            ),
            // Another day, another store: not in the report.
            line(waste, "bun", "w3", -9, 1_000, Some("dropped")),
            (
                0,
                LedgerEntry::new(&id("s2"), &id("bun"), &id("x"), waste, -9, 20, true),
            ),
        ];
        let record = |dish: &str, portions, voided: Option<&str>| SaleRecord {
            at: 20,
            lines: vec![(id(dish), portions)],
            taken: Vec::new(),
            voided_by: voided.map(id),
        };
        let sale = |e: &EventId| match e.as_str() {
            "sale-1" => Some(record("burger", 2, None)),
            "sale-2" => Some(record("burger", 1, Some("void-2"))),
            _ => None,
        };
        let unit = |s: &SkuId| if s.as_str() == "beef" { "g" } else { "pcs" };
        let report = DayReport::build(&id("s1"), ("2026-11-25".into(), 0, 1_000), &lines, sale, unit);
        assert_eq!(report.lines, 9);
        assert_eq!(
            report.dishes[&id::<DishId>("burger")],
            DishDay {
                sold: 3,
                voided: 1,
                net: 2
            }
        );
        let bun = &report.skus[&id::<SkuId>("bun")];
        assert_eq!((bun.sold, bun.used, bun.waste, bun.counted), (2, 2, 4, Some(50)));
        assert_eq!(
            bun.waste_by_reason,
            [("dropped".to_string(), 3), ("unspecified".to_string(), 1)].into()
        );
        assert_eq!(bun.ratio, Some(4.0 / 6.0));
        let beef = &report.skus[&id::<SkuId>("beef")];
        assert_eq!(
            (beef.unit, beef.used, beef.received, beef.ratio),
            ("g", 500, 1000, Some(0.0))
        );
        assert_eq!(report.counted, 2);
        assert!((report.waste_ratio - (4.0 / 6.0) / 2.0).abs() < 1e-12);
        let rows = report.rows();
        assert!(rows.contains(&[
            "sku".into(),
            "bun".into(),
            "waste:dropped".into(),
            "3".into(),
            "pcs".into()
        ]));
        assert!(rows.contains(&[
            "dish".into(),
            "burger".into(),
            "net".into(),
            "2".into(),
            "portions".into()
        ]));
        assert_eq!(
            DayReport::sales_named(&lines).len(),
            2,
            "each sale once, whatever its lines"
        );
        assert_eq!(report.cost, None, "not priced");
        // Priced: buns at 0.30 each; beef without a cost.
        let params: BTreeMap<SkuId, crate::catalog::StockParams> = [("bun", Some(300_000)), ("beef", None)]
            .into_iter()
            .map(|(sku, unit_cost)| {
                (
                    id(sku),
                    crate::catalog::StockParams {
                        reorder_point: 0,
                        par: 0,
                        opening: None,
                        unit_cost,
                    },
                )
            })
            .collect();
        let cost = report.priced(&params, Some("EUR")).cost.expect("priced");
        assert_eq!((cost.waste, cost.used), (1.2, 0.6), "4 buns wasted, 2 used");
        assert_eq!(cost.uncosted, vec![id::<SkuId>("beef")]);
    }
}
