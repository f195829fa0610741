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
        let minute = self.local_minutes(t).rem_euclid(24 * 60);
        format!("{:02}:{:02}", minute / 60, minute % 60)
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
}
