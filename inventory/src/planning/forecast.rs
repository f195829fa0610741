//! The sales forecast: an exponentially weighted portions rate per dish, and when a dish sells out at it.

use std::collections::BTreeMap;

use dishsync_protocol::{DishId, Millis, StoreId};
use serde::{Deserialize, Serialize};

use crate::changes::Changes;
use crate::inventory::{Inventory, StoreState};

use super::plan::*;

/// The forecast's slice of a store's plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// Sales rate per dish.
    pub rates: BTreeMap<DishId, Rate>,
}

impl Inventory {
    pub(crate) fn tau(&self) -> f64 {
        self.catalog.planning().rate_time_constant_minutes.max(1.0)
    }

    /// The dish's current sales rate, portions per minute.
    pub fn rate(&self, store: &StoreId, dish: &DishId, now: Millis) -> f64 {
        self.stores
            .get(store)
            .map_or(0.0, |state| self.rate_in(state, dish, now))
    }

    /// [`Inventory::rate`] in a store's state at hand.
    pub(crate) fn rate_in(&self, state: &StoreState, dish: &DishId, now: Millis) -> f64 {
        state
            .plan
            .forecast
            .rates
            .get(dish)
            .map_or(0.0, |r| r.at_time(now, self.tau()))
    }

    /// When `portions` run out at `rate` portions per minute, to the next
    /// whole minute.
    pub(crate) fn eta_at(&self, rate: f64, portions: u64, now: Millis) -> Option<Millis> {
        if portions == 0 || rate < 1e-6 {
            return None;
        }
        let minutes = portions as f64 / rate;
        if minutes > 7.0 * 24.0 * 60.0 {
            return None;
        }
        let at = now + (minutes * MINUTE as f64).ceil() as Millis;
        Some((at + MINUTE - 1).div_euclid(MINUTE) * MINUTE)
    }

    /// Whether an ETA counts as a predicted sell-out.
    pub(crate) fn within_horizon(&self, eta: Option<Millis>, now: Millis) -> bool {
        eta.is_some_and(|t| t - now <= i64::from(self.catalog.planning().horizon_minutes) * MINUTE)
    }

    /// Records sold (positive) or voided (negative) portions in the rates.
    pub(crate) fn record_portions(
        &mut self,
        store: &StoreId,
        lines: &[(DishId, i64)],
        at: Millis,
        changes: &mut Changes,
    ) {
        let tau = self.tau();
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        for (dish, portions) in lines {
            let rate = state.plan.forecast.rates.entry(dish.clone()).or_default();
            if *portions >= 0 {
                rate.add(*portions as f64, at, tau);
            } else {
                rate.remove(-*portions as f64, at, tau);
            }
        }
        changes.plan(store.clone());
    }
}
