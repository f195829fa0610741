//! Store-local time: the day, the clock, service hours and the central kitchen's next delivery.

use dishsync_protocol::{Millis, StoreId};

use crate::inventory::Inventory;

use super::plan::*;

impl Inventory {
    pub(crate) fn local_minutes(&self, now: Millis) -> i64 {
        now.div_euclid(MINUTE) + i64::from(self.catalog.planning().utc_offset_minutes)
    }

    /// The store-local day number of `now`.
    pub fn local_day(&self, now: Millis) -> i64 {
        self.local_minutes(now).div_euclid(24 * 60)
    }

    /// `t` as store-local clock time, `HH:MM`, for messages people read.
    pub fn local_clock(&self, t: Millis) -> String {
        self.local_clock_at(t).to_string()
    }

    /// `t` as store-local clock time, to be written out when needed.
    pub(crate) fn local_clock_at(&self, t: Millis) -> LocalClock {
        LocalClock(self.local_minutes(t).rem_euclid(24 * 60))
    }

    /// UTC millis of store-local minute `m` of local day `day`.
    pub(crate) fn at_local(&self, day: i64, minute: i64) -> Millis {
        (day * 24 * 60 + minute - i64::from(self.catalog.planning().utc_offset_minutes)) * MINUTE
    }

    /// Whether `store` is in service at `now`, and when it closes.
    pub(crate) fn service(&self, store: &StoreId, now: Millis) -> Option<Millis> {
        let Some(&(open, close)) = self.catalog.planning().hours.get(store) else {
            return Some(now + DAY);
        };
        let (open, close) = (i64::from(open), i64::from(close));
        let day = self.local_day(now);
        let minute = self.local_minutes(now).rem_euclid(24 * 60);
        if open <= close {
            (open <= minute && minute < close).then(|| self.at_local(day, close))
        } else if minute >= open {
            Some(self.at_local(day + 1, close))
        } else if minute < close {
            Some(self.at_local(day, close))
        } else {
            None
        }
    }

    /// When the central kitchen could deliver something requested at `now`.
    pub fn kitchen_eta(&self, now: Millis) -> Millis {
        let kitchen = &self.catalog.planning().kitchen;
        let earliest = now + i64::from(kitchen.lead_time_minutes) * MINUTE;
        if kitchen.windows.is_empty() {
            return earliest;
        }
        let day = self.local_day(earliest);
        for d in day..day + 2 {
            for &w in &kitchen.windows {
                let t = self.at_local(d, i64::from(w));
                if t >= earliest {
                    return t;
                }
            }
        }
        earliest
    }

    /// The central kitchen's next delivery after the one at `delivery`:
    /// its next window; with no windows (it delivers whenever the lead
    /// time allows) an hour later, the slack an order placed on the tick
    /// is given.
    pub(crate) fn delivery_after(&self, delivery: Millis) -> Millis {
        let kitchen = &self.catalog.planning().kitchen;
        let day = self.local_day(delivery);
        (day..day + 2)
            .flat_map(|d| kitchen.windows.iter().map(move |&w| (d, i64::from(w))))
            .map(|(d, w)| self.at_local(d, w))
            .find(|&t| t > delivery)
            .unwrap_or(delivery + 60 * MINUTE)
    }
}

/// A store-local time of day, in minutes past midnight; shown as `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalClock(i64);

impl std::fmt::Display for LocalClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}
