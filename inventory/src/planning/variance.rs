//! Usage variance, count to count: the figure a chain's controller asks
//! for — how much of a SKU went where nothing says it went.
//!
//! Between two counts of a SKU, its ledger lines say what came in
//! (received, transferred in, adjusted), what went out and why (sold, by
//! each sale's recipe and net of voids; consumed; wasted; transferred
//! out). The counts say what was there. Then
//!
//! - **actual** usage = opening count + received + transferred in
//!   − transferred out + adjusted − closing count;
//! - **theoretical** usage = Σ sales × recipe (net of voids);
//! - **unexplained** = actual − theoretical − waste − consumed: shrinkage,
//!   portioning, unrecorded waste. It is exactly the level the ledger
//!   implies less the level counted, in whole base units, with no rounding
//!   anywhere. Recorded consumption (prep, staff meals) is explained use:
//!   left in, every staff meal would read as loss.
//! - **share** = unexplained ÷ theoretical, when anything was sold.
//!
//! A count closes the period and opens the next. A SKU on a scale
//! (`Planning::scales`) is counted by every settled reading: those keep the
//! period open and give its variance so far, live; a person's count still
//! closes it. Lines stamped before the latest count (a device replaying
//! after hours offline) moved no level and count in no period.

use dishsync_protocol::payload::{AlertKind, Timestamp, VarianceOut, VariancePeriod};
use dishsync_protocol::{Millis, SkuId, StoreId};
use serde::{Deserialize, Serialize};

use crate::changes::Changes;
use crate::inventory::Inventory;
use crate::state::{EntryKind, LedgerEntry, StockKindCode};

use super::plan::Subject;

/// What moved a SKU's stock since a count, base units: each flow as the
/// quantity that moved (adjustments signed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flows {
    /// Delivered.
    pub received: i64,
    /// Came from other stores.
    pub transferred_in: i64,
    /// Sent to other stores.
    pub transferred_out: i64,
    /// Net of adjustments.
    pub adjusted: i64,
    /// Taken by sales, by recipe, net of voids: the theoretical usage.
    pub sold: i64,
    /// Consumed outside sales.
    pub consumed: i64,
    /// Wasted.
    pub waste: i64,
}

/// A stretch between a count and a later count (or a scale's latest
/// reading).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// When the opening count was made.
    pub from: Millis,
    /// When the closing count (or reading) was made.
    pub to: Millis,
    /// The level the opening count found.
    pub opening: i64,
    /// The level the closing count (or reading) found.
    pub counted: i64,
    /// What moved in between.
    pub flows: Flows,
}

impl Period {
    /// Opening + received + transferred in − transferred out + adjusted −
    /// counted.
    pub fn actual(&self) -> i64 {
        let f = &self.flows;
        self.opening + f.received + f.transferred_in - f.transferred_out + f.adjusted - self.counted
    }

    /// Σ sales × recipe, net of voids.
    pub fn theoretical(&self) -> i64 {
        self.flows.sold
    }

    /// Actual − theoretical − waste − consumed.
    pub fn unexplained(&self) -> i64 {
        self.actual() - self.theoretical() - self.flows.waste - self.flows.consumed
    }

    /// Unexplained ÷ theoretical; `None` when nothing was sold.
    pub fn share(&self) -> Option<f64> {
        (self.theoretical() > 0).then(|| self.unexplained() as f64 / self.theoretical() as f64)
    }
}

/// A SKU's variance state in a store (persisted as `v/{store}/{sku}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarianceState {
    /// The count the open period began with: when, and the level found.
    pub since: Option<(Millis, i64)>,
    /// What moved since.
    pub flows: Flows,
    /// The scale's latest reading in the open period: when, and the level.
    pub reading: Option<(Millis, i64)>,
    /// The last period a count closed.
    pub last: Option<Period>,
    /// Its document's revision: +1 with every publication.
    pub rev: u64,
    /// When the document last changed.
    pub at: Millis,
}

/// What booking a line did to a SKU's variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booked {
    /// A line that moved no level: nothing.
    Nothing,
    /// A flow of the open period, or its opening count.
    Flow,
    /// A scale's reading: the open period's variance so far changed.
    Reading,
    /// A count closed a period ([`VarianceState::last`]).
    Closed,
}

impl VarianceState {
    /// Books one ledger line of its SKU; `reading` when the line is the
    /// count of a settled reading of the SKU's own scale.
    pub fn book(&mut self, line: &LedgerEntry, reading: bool) -> Booked {
        if !line.moved {
            return Booked::Nothing;
        }
        let (flows, amount) = (&mut self.flows, line.amount);
        match line.kind {
            // A sale's line takes (negative), its void's gives back.
            EntryKind::Sale | EntryKind::Void => flows.sold -= amount,
            EntryKind::Stock(code) => match code {
                StockKindCode::Receive => flows.received += amount,
                StockKindCode::TransferIn => flows.transferred_in += amount,
                StockKindCode::TransferOut => flows.transferred_out -= amount,
                StockKindCode::Adjust => flows.adjusted += amount,
                StockKindCode::Consume => flows.consumed -= amount,
                StockKindCode::Waste => flows.waste -= amount,
                StockKindCode::Count if reading && self.since.is_some() => {
                    self.reading = Some((line.at, amount));
                    return Booked::Reading;
                }
                StockKindCode::Count => {
                    let closed = self.since.map(|(from, opening)| Period {
                        from,
                        to: line.at,
                        opening,
                        counted: amount,
                        flows: self.flows,
                    });
                    self.since = Some((line.at, amount));
                    self.flows = Flows::default();
                    self.reading = None;
                    return match closed {
                        Some(period) => {
                            self.last = Some(period);
                            Booked::Closed
                        }
                        None => Booked::Flow,
                    };
                }
            },
        }
        Booked::Flow
    }

    /// The open period as far as the scale's latest reading, if one was
    /// read since the last count.
    pub fn live(&self) -> Option<Period> {
        let ((from, opening), (to, counted)) = (self.since?, self.reading?);
        Some(Period {
            from,
            to,
            opening,
            counted,
            flows: self.flows,
        })
    }
}

impl Period {
    /// The period as published.
    fn out(&self) -> VariancePeriod {
        let f = &self.flows;
        VariancePeriod {
            from: Timestamp(self.from),
            to: Timestamp(self.to),
            opening: self.opening,
            counted: self.counted,
            received: f.received,
            transferred_in: f.transferred_in,
            transferred_out: f.transferred_out,
            adjusted: f.adjusted,
            actual: self.actual(),
            theoretical: self.theoretical(),
            consumed: f.consumed,
            waste: f.waste,
            unexplained: self.unexplained(),
            share: self.share(),
        }
    }
}

impl Inventory {
    /// Books an input's ledger lines into their SKUs' variance at `now`:
    /// each SKU's state is persisted; its document is published once it
    /// has a closed period or a live one; a closed period raises (or
    /// clears) `usage_variance` against `[planning] variance_alert_share`.
    pub(crate) fn book_variance(&mut self, lines: &[LedgerEntry], now: Millis, changes: &mut Changes) {
        for line in lines {
            let reading = line
                .by
                .as_ref()
                .and_then(|device| self.catalog.scale(&line.store, device))
                .is_some_and(|binding| binding.sku == line.sku);
            let Some(state) = self.stores.get_mut(&line.store) else {
                continue;
            };
            let variance = state.variance.entry(line.sku.clone()).or_default();
            let booked = variance.book(line, reading);
            if booked == Booked::Nothing {
                continue;
            }
            let shown = matches!(booked, Booked::Reading | Booked::Closed);
            if shown {
                variance.rev += 1;
                variance.at = now;
            }
            changes.variance(line.store.clone(), line.sku.clone(), shown);
            if booked == Booked::Closed {
                if let Some(period) = variance.last {
                    self.judge_variance(&line.store, &line.sku, &period, now, changes);
                }
            }
        }
    }

    /// Raises `usage_variance` when a closed period's unexplained use is
    /// above the configured share of its theoretical use; clears it when a
    /// later period is within it.
    fn judge_variance(&mut self, store: &StoreId, sku: &SkuId, period: &Period, now: Millis, changes: &mut Changes) {
        let limit = self.catalog.planning().variance_alert_share;
        let share = period.share();
        let over = share.is_some_and(|s| s.abs() > limit);
        let msg = format!(
            "{sku}: {} unexplained between the counts, {:.1} % of the {} sold",
            period.unexplained(),
            share.unwrap_or(0.0) * 100.0,
            period.theoretical()
        );
        self.set_alert(
            store,
            AlertKind::UsageVariance,
            sku.as_str(),
            Subject::sku(sku),
            over,
            || msg,
            now,
            changes,
        );
    }

    /// A SKU's variance state, as persisted.
    pub fn variance_state(&self, store: &StoreId, sku: &SkuId) -> Option<&VarianceState> {
        self.stores.get(store)?.variance.get(sku)
    }

    /// The retained variance document of a SKU, once it has a period to
    /// show.
    pub fn variance_out(&self, store: &StoreId, sku: &SkuId) -> Option<VarianceOut> {
        let state = self.variance_state(store, sku)?;
        let live = state.live();
        if state.last.is_none() && live.is_none() {
            return None;
        }
        Some(VarianceOut {
            store: store.clone(),
            sku: sku.clone(),
            unit: self.catalog.sku(sku)?.unit,
            last: state.last.as_ref().map(Period::out),
            live: live.as_ref().map(Period::out),
            rev: state.rev,
            at: Timestamp(state.at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dishsync_protocol::{EventId, SkuId, StoreId};
    use proptest::prelude::*;

    fn line(kind: EntryKind, amount: i64, at: Millis) -> LedgerEntry {
        let (store, sku, event): (StoreId, SkuId, EventId) = (
            "s1".parse().expect("id"),
            "beef".parse().expect("id"),
            "e".parse().expect("id"),
        );
        LedgerEntry::new(&store, &sku, &event, kind, amount, at, true)
    }

    fn stock(code: StockKindCode, amount: i64, at: Millis) -> LedgerEntry {
        line(EntryKind::Stock(code), amount, at)
    }

    #[test]
    fn a_period_between_two_counts_adds_up_to_the_unit() {
        let mut v = VarianceState::default();
        let lines = [
            stock(StockKindCode::Count, 10_000, 0),
            stock(StockKindCode::Receive, 5_000, 1),
            line(EntryKind::Sale, -3_000, 2),
            line(EntryKind::Sale, -1_500, 3),
            line(EntryKind::Void, 1_500, 4),
            stock(StockKindCode::Waste, -400, 5),
            stock(StockKindCode::Consume, -200, 6),
            stock(StockKindCode::TransferOut, -1_000, 7),
            stock(StockKindCode::TransferIn, 600, 8),
            stock(StockKindCode::Adjust, -50, 9),
            LedgerEntry {
                moved: false,
                ..stock(StockKindCode::Waste, -9_999, 0)
            },
        ];
        for l in &lines {
            assert_ne!(v.book(l, false), Booked::Closed);
        }
        assert_eq!(v.last, None, "one count opens a period, closes none");
        // The ledger implies 10,000 + 5,000 − 3,000 − 400 − 200 − 1,000 +
        // 600 − 50 = 10,950; 10,700 are counted.
        assert_eq!(v.book(&stock(StockKindCode::Count, 10_700, 10), false), Booked::Closed);
        let p = v.last.expect("closed");
        assert_eq!((p.from, p.to, p.opening, p.counted), (0, 10, 10_000, 10_700));
        assert_eq!(p.actual(), 10_000 + 5_000 + 600 - 1_000 - 50 - 10_700);
        assert_eq!(p.theoretical(), 3_000);
        assert_eq!(p.unexplained(), 250, "the level implied less the level counted");
        assert_eq!(p.share(), Some(250.0 / 3_000.0));
        assert_eq!(v.flows, Flows::default(), "the next period starts empty");
        assert_eq!(v.since, Some((10, 10_700)));
    }

    #[test]
    fn a_scale_reading_shows_the_open_period_live_and_a_count_closes_it() {
        let mut v = VarianceState::default();
        assert_eq!(
            v.book(&stock(StockKindCode::Count, 500, 0), true),
            Booked::Flow,
            "opens"
        );
        v.book(&line(EntryKind::Sale, -120, 1), false);
        assert_eq!(v.book(&stock(StockKindCode::Count, 370, 2), true), Booked::Reading);
        let live = v.live().expect("a reading");
        assert_eq!((live.theoretical(), live.unexplained()), (120, 10));
        assert_eq!(v.last, None, "a reading closes nothing");
        v.book(&line(EntryKind::Sale, -100, 3), false);
        assert_eq!(v.book(&stock(StockKindCode::Count, 275, 4), false), Booked::Closed);
        let p = v.last.expect("closed");
        assert_eq!((p.theoretical(), p.unexplained()), (220, 5));
        assert_eq!(v.live(), None, "the new period has no reading yet");
    }

    fn any_line() -> impl Strategy<Value = LedgerEntry> {
        let codes = [
            StockKindCode::Receive,
            StockKindCode::Consume,
            StockKindCode::Waste,
            StockKindCode::TransferIn,
            StockKindCode::TransferOut,
            StockKindCode::Adjust,
        ];
        (0usize..8, 1i64..5_000, any::<bool>()).prop_map(move |(k, qty, negative)| match k {
            6 => line(EntryKind::Sale, -qty, 1),
            7 => line(EntryKind::Void, qty, 1),
            k => {
                let code = codes[k];
                let signed = match code {
                    StockKindCode::Receive | StockKindCode::TransferIn => qty,
                    StockKindCode::Adjust if negative => -qty,
                    StockKindCode::Adjust => qty,
                    _ => -qty,
                };
                stock(code, signed, 1)
            }
        })
    }

    proptest! {
        /// However the lines fall, the unexplained variance is exactly the
        /// level they imply less the level counted: actual − theoretical −
        /// waste − consumed, in whole units.
        #[test]
        fn unexplained_is_the_implied_level_less_the_count(
            opening in 0i64..100_000,
            lines in prop::collection::vec(any_line(), 0..40),
            counted in 0i64..100_000,
        ) {
            let mut v = VarianceState::default();
            v.book(&stock(StockKindCode::Count, opening, 0), false);
            let mut implied = opening;
            for l in &lines {
                implied += l.amount;
                v.book(l, false);
            }
            prop_assert_eq!(v.book(&stock(StockKindCode::Count, counted, 2), false), Booked::Closed);
            let p = v.last.expect("closed");
            prop_assert_eq!(p.unexplained(), implied - counted);
            prop_assert_eq!(
                p.actual() - p.theoretical() - p.flows.waste - p.flows.consumed,
                p.unexplained()
            );
        }
    }
}
