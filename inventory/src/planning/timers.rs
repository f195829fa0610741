//! Timers: what time alone changes — 86es lapse, unanswered proposals expire, forecasts move, a new day resets today's counters, finished documents are retired.

use dishsync_protocol::payload::{AlertKind, TransferState};
use dishsync_protocol::{DishId, Millis, SkuId, StoreId};

use crate::changes::Changes;
use crate::inventory::Inventory;

use super::plan::*;

impl Inventory {
    /// Everything that happens with time alone: 86es lapse, forecasts
    /// move, unanswered proposals expire (and go to the next candidate), a
    /// new day resets today's counters.
    pub fn tick(&mut self, now: Millis) -> Changes {
        let mut changes = self.expire_overrides(now);
        changes.merge(self.move_forecasts(now, 0, 1));
        changes.merge(self.tick_timers(now));
        changes
    }

    /// Forecasts move with time: recomputes the dishes that have a sales
    /// rate in one part of the chain, the stores whose place in it is
    /// `part` modulo `parts` (`0, 1`: every store). A chain of 2,000 stores
    /// has up to 160,000 of them; a shell that moves one part per tick
    /// spreads that work, and the documents it changes, over its ticks.
    pub fn move_forecasts(&mut self, now: Millis, part: usize, parts: usize) -> Changes {
        let mut changes = Changes::default();
        let parts = parts.max(1);
        let with_rates: Vec<(StoreId, DishId)> = self
            .stores
            .iter()
            .enumerate()
            .filter(|(i, _)| i % parts == part % parts)
            .flat_map(|(_, (s, st))| st.plan.forecast.rates.keys().map(move |d| (s.clone(), d.clone())))
            .collect();
        for (store, dish) in with_rates {
            self.recompute_dish(&store, &dish, now, &mut changes);
        }
        self.finish(now, &mut changes);
        changes
    }

    /// What the clock changes besides 86es and forecasts: unanswered
    /// proposals expire, a new day resets today's counters, finished
    /// documents are retired, probes fall silent, promotions move.
    pub fn tick_timers(&mut self, now: Millis) -> Changes {
        let mut changes = Changes::default();
        // Proposals nobody answered.
        let expired: Vec<Transfer> = self
            .transfers
            .values()
            .filter(|t| t.state == TransferState::Proposed && t.expires_at.is_some_and(|e| e <= now))
            .cloned()
            .collect();
        for t in expired {
            if let Some(tr) = self.transfers.get_mut(&t.id) {
                tr.state = TransferState::Expired;
                tr.expires_at = None;
                tr.updated_at = now;
                tr.rev += 1;
            }
            changes.transfer(t.id.clone());
            let mut tried = t.tried.clone();
            tried.push(t.from.clone());
            let reason = format!("{} did not answer {} in time; {}", t.from, t.id, t.reason);
            self.propose(&t.to, &t.sku, t.need, tried, reason, now, &mut changes);
        }
        // A new day.
        let today = self.local_day(now);
        let stores: Vec<StoreId> = self.stores.keys().cloned().collect();
        for store in stores {
            let Some(state) = self.stores.get_mut(&store) else {
                continue;
            };
            if state.plan.today.day == today {
                continue;
            }
            state.begin_day(today);
            let spikes: Vec<String> = state
                .plan
                .alerts
                .active
                .keys()
                .filter(|(k, _)| *k == AlertKind::WasteSpike)
                .map(|(_, s)| s.clone())
                .collect();
            self.rolled.insert(store.clone());
            changes.plan(store.clone());
            for sku in spikes {
                if let Ok(sku) = SkuId::new(sku) {
                    self.check_waste(&store, &sku, now, &mut changes);
                }
            }
        }
        // Finished requests and transfers stay on record in the store; they
        // are shown (kept here and retained) for a day.
        for r in self.requests.values().filter(|r| !r.is_shown(now)) {
            changes.retire(Retired::Request {
                id: r.id.clone(),
                store: r.store.clone(),
            });
        }
        for t in self.transfers.values().filter(|t| !t.is_shown(now)) {
            changes.retire(Retired::Transfer {
                id: t.id.clone(),
                from: t.from.clone(),
                to: t.to.clone(),
            });
        }
        self.requests.retain(|_, r| r.is_shown(now));
        self.transfers.retain(|_, t| t.is_shown(now));
        self.watch_probes(now, &mut changes);
        // The day a promotion is judged by moves with time.
        self.review_promotions(None, now, &mut changes);
        self.retire_promotions(now, &mut changes);
        self.finish(now, &mut changes);
        self.persist_rolled(&mut changes);
        changes
    }
}
