//! The ledger rule for one SKU in one store: stock = the latest count plus
//! the signed deltas stamped at or after it.
//!
//! [`SkuLedger`] is the materialised result of that rule, updated one event
//! at a time in any arrival order. A delta stamped *before* the latest count
//! is recorded by the caller but does not move the level (the count already
//! saw it). A count that arrives late — stamped before deltas that were
//! already applied — keeps those deltas: `level = count + Σ deltas at ≥ count`.
//! To do that it remembers the deltas since the latest count, bounded by
//! [`MAX_RECENT`]; a count older than what it still remembers is refused
//! rather than guessed.

use dishsync_protocol::Millis;
use serde::{Deserialize, Serialize};

/// How many deltas since the latest count a SKU remembers.
pub const MAX_RECENT: usize = 64;

/// What applying one change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The level moved (possibly by zero).
    Moved,
    /// Recorded only: stamped before the latest count.
    BeforeCount,
}

/// A count that cannot be placed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountTooOld {
    /// The oldest time a count can still be placed at.
    pub oldest: Millis,
}

/// One SKU's level in one store, with what is needed to place late counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuLedger {
    qty: i64,
    last_count_at: Option<Millis>,
    /// Deltas applied since the latest count: (stamped at, signed delta).
    recent: Vec<(Millis, i64)>,
    /// Newest stamp of a delta dropped from `recent` for lack of room.
    forgotten_until: Option<Millis>,
}

impl SkuLedger {
    /// The current level, base units.
    pub fn qty(&self) -> i64 {
        self.qty
    }

    /// When the latest count was taken.
    pub fn last_count_at(&self) -> Option<Millis> {
        self.last_count_at
    }

    /// Whether a delta stamped `at` would move the level.
    pub fn moves(&self, at: Millis) -> bool {
        self.last_count_at.is_none_or(|c| at >= c)
    }

    /// Applies a signed delta stamped `at`.
    pub fn delta(&mut self, at: Millis, delta: i64) -> Applied {
        if !self.moves(at) {
            return Applied::BeforeCount;
        }
        self.qty = self.qty.saturating_add(delta);
        self.recent.push((at, delta));
        if self.recent.len() > MAX_RECENT {
            // Forget the oldest-stamped delta.
            if let Some(i) = (0..self.recent.len()).min_by_key(|&i| self.recent[i].0) {
                let (t, _) = self.recent.remove(i);
                self.forgotten_until = Some(self.forgotten_until.map_or(t, |f| f.max(t)));
            }
        }
        Applied::Moved
    }

    /// Checks that a count stamped `at` can be applied (see [`SkuLedger::count`]).
    pub fn check_count(&self, at: Millis) -> Result<(), CountTooOld> {
        match self.forgotten_until {
            Some(f) if self.moves(at) && at <= f => Err(CountTooOld { oldest: f + 1 }),
            _ => Ok(()),
        }
    }

    /// Applies an absolute count of `qty` taken at `at`.
    pub fn count(&mut self, at: Millis, qty: i64) -> Result<Applied, CountTooOld> {
        self.check_count(at)?;
        if !self.moves(at) {
            return Ok(Applied::BeforeCount);
        }
        self.recent.retain(|(t, _)| *t >= at);
        let after: i64 = self.recent.iter().map(|(_, d)| d).sum();
        self.qty = qty.saturating_add(after);
        self.last_count_at = Some(at);
        self.forgotten_until = None;
        Ok(Applied::Moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Change {
        Delta(Millis, i64),
        Count(Millis, i64),
    }

    /// The rule, stated directly: the count with the greatest stamp (the
    /// later arrival on a tie) plus every delta stamped at or after it.
    fn reference(changes: &[Change]) -> i64 {
        let mut last: Option<(Millis, i64)> = None;
        for c in changes {
            if let Change::Count(at, q) = c {
                if last.is_none_or(|(t, _)| *at >= t) {
                    last = Some((*at, *q));
                }
            }
        }
        let (from, base) = last.map_or((Millis::MIN, 0), |(t, q)| (t, q));
        base + changes
            .iter()
            .filter_map(|c| match c {
                Change::Delta(at, d) if *at >= from => Some(*d),
                _ => None,
            })
            .sum::<i64>()
    }

    fn run(changes: &[Change]) -> SkuLedger {
        let mut l = SkuLedger::default();
        for c in changes {
            match *c {
                Change::Delta(at, d) => {
                    l.delta(at, d);
                }
                Change::Count(at, q) => {
                    l.count(at, q).expect("within memory");
                }
            }
        }
        l
    }

    #[test]
    fn table() {
        use Change::*;
        let cases: &[(&[Change], i64)] = &[
            (&[Delta(1, 10), Delta(2, -3)], 7),
            (&[Delta(1, 10), Count(5, 4), Delta(6, -1)], 3),
            // Replayed after hours offline: stamped before the count, ignored.
            (&[Count(100, 50), Delta(10, -20)], 50),
            // A late count keeps the sales stamped after it.
            (&[Delta(20, -5), Delta(30, -2), Count(25, 40)], 38),
            // A count older than the latest count changes nothing.
            (&[Count(100, 50), Count(90, 10)], 50),
            // A delta stamped exactly at the count moves the level.
            (&[Count(100, 50), Delta(100, -1)], 49),
        ];
        for (changes, want) in cases {
            assert_eq!(run(changes).qty(), *want, "{changes:?}");
            assert_eq!(reference(changes), *want, "{changes:?}");
        }
    }

    #[test]
    fn count_beyond_memory_is_refused() {
        let mut l = SkuLedger::default();
        for i in 0..(MAX_RECENT as i64 + 10) {
            l.delta(1000 + i, -1);
        }
        assert!(l.count(1000, 5).is_err());
        assert!(l.count(1000 + 10, 5).is_ok());
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            3 => (0i64..50, -100i64..100).prop_map(|(t, d)| Change::Delta(t, d)),
            1 => (0i64..50, 0i64..500).prop_map(|(t, q)| Change::Count(t, q)),
        ]
    }

    proptest! {
        #[test]
        fn stock_is_last_count_plus_later_deltas(changes in prop::collection::vec(change(), 0..60)) {
            prop_assert_eq!(run(&changes).qty(), reference(&changes));
        }
    }
}
