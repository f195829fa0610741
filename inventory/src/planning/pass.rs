//! The planning pass: after every change, the conditions of every SKU and dish it touched — replenishment requests (with hysteresis and merging) and transfer proposals between stores.

use std::collections::{BTreeMap, BTreeSet};

use dishsync_protocol::payload::{AlertKind, RequestLine, RequestState, Timestamp, TransferState};
use dishsync_protocol::{DishId, DocId, Millis, SkuId, StoreId};
use serde::{Deserialize, Serialize};

use crate::changes::Changes;
use crate::inventory::Inventory;

use super::plan::*;

/// Replenishment's slice of a store's plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Replenishment {
    /// SKUs that raised a request and have not been above their reorder
    /// point since (hysteresis).
    pub disarmed: BTreeSet<SkuId>,
    /// Last request number of the store.
    pub request_seq: u64,
}

/// The transfer proposals' slice of a store's plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferAsks {
    /// Stores already asked today for a transfer of a SKU (a store that
    /// declined or let a proposal expire is not asked again the same day).
    pub asked: BTreeMap<SkuId, Vec<StoreId>>,
}

impl Inventory {
    /// Evaluates every planning condition touched by `changes`. Called once
    /// at the end of every public operation (through `finish`).
    pub(crate) fn plan(&mut self, now: Millis, changes: &mut Changes) {
        let levels: Vec<(StoreId, SkuId)> = changes.levels().map(|(s, k)| (s.clone(), k.clone())).collect();
        for (store, sku) in levels {
            self.check_level(&store, &sku, now, changes);
        }
        let dishes: Vec<(StoreId, DishId)> = changes.dishes().map(|(s, d)| (s.clone(), d.clone())).collect();
        for (store, dish) in dishes {
            self.check_dish(&store, &dish, now, changes);
        }
        let touched = self.touched(changes);
        if !self.promotions.is_empty() {
            self.review_promotions(Some(&touched), now, changes);
        }
        // Again: a promotion may have raised a request or a transfer.
        for store in self.touched(changes) {
            if let Some(state) = self.stores.get_mut(&store) {
                state.plan.summary_rev += 1;
                changes.plan(store.clone());
                changes.summary(store);
            }
        }
    }

    /// The stores whose levels, dishes, plans, requests or transfers
    /// `changes` names.
    fn touched(&self, changes: &Changes) -> BTreeSet<StoreId> {
        let mut touched: BTreeSet<StoreId> = changes.levels().map(|(s, _)| s.clone()).collect();
        touched.extend(changes.dishes().map(|(s, _)| s.clone()));
        touched.extend(changes.plans().cloned());
        for id in changes.requests() {
            if let Some(r) = self.requests.get(id) {
                touched.insert(r.store.clone());
            }
        }
        for id in changes.transfers() {
            if let Some(t) = self.transfers.get(id) {
                touched.insert(t.from.clone());
                touched.insert(t.to.clone());
            }
        }
        touched
    }

    /// The condition pass over every SKU and dish of the chain, as if each
    /// had just changed: what a restart runs, so that a level already at or
    /// below its reorder point has its request and its alert. Conditions
    /// already met (an open request, an active alert) raise nothing again.
    pub(crate) fn evaluate_all(&mut self, now: Millis, changes: &mut Changes) {
        let catalog = std::sync::Arc::clone(&self.catalog);
        for store in catalog.stores() {
            for sku in store.stock.keys() {
                self.check_level(&store.id, sku, now, changes);
            }
            for dish in &store.menu {
                self.check_dish(&store.id, dish, now, changes);
            }
        }
    }

    pub(crate) fn check_level(&mut self, store: &StoreId, sku: &SkuId, now: Millis, changes: &mut Changes) {
        let Some(params) = self.catalog.store(store).and_then(|s| s.stock.get(sku)).copied() else {
            return;
        };
        let Some(qty) = self
            .stores
            .get(store)
            .and_then(|s| s.skus.get(sku))
            .map(|s| s.ledger.qty())
        else {
            return;
        };
        let unit = self
            .catalog
            .sku(sku)
            .map_or(dishsync_protocol::BaseUnit::Pcs, |s| s.unit);
        let low = (0..=params.reorder_point).contains(&qty);
        let msg = || format!("{sku} at {qty} {unit}, reorder point {}", params.reorder_point);
        self.set_alert(
            store,
            AlertKind::LowStock,
            sku.as_str(),
            Subject::sku(sku),
            low,
            msg,
            now,
            changes,
        );
        self.set_alert(
            store,
            AlertKind::NegativeStock,
            sku.as_str(),
            Subject::sku(sku),
            qty < 0,
            msg,
            now,
            changes,
        );

        // Replenishment, with hysteresis.
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        if qty > params.reorder_point {
            if state.plan.replenishment.disarmed.remove(sku) {
                changes.plan(store.clone());
            }
            return;
        }
        if state.plan.replenishment.disarmed.contains(sku) || self.open_request_for(store, sku).is_some() {
            return;
        }
        let pack = self.catalog.sku(sku).map_or(1, |s| s.pack);
        let need = round_up(params.par - qty, pack);
        if need <= 0 {
            return;
        }
        if let Some(state) = self.stores.get_mut(store) {
            state.plan.replenishment.disarmed.insert(sku.clone());
        }
        changes.plan(store.clone());
        let line = RequestLine {
            sku: sku.clone(),
            qty: need,
            unit,
            received: false,
        };
        let merge = i64::from(self.catalog.planning().merge_window_minutes) * MINUTE;
        let mergeable = self
            .requests
            .values_mut()
            .filter(|r| r.store == *store && r.state == RequestState::Open && now - r.created_at <= merge)
            .max_by_key(|r| r.created_at);
        match mergeable {
            Some(r) => {
                r.lines.push(line);
                r.reason = format!("{}; {sku} at or below its reorder point", r.reason);
                r.updated_at = now;
                r.rev += 1;
                changes.request(r.id.clone());
            }
            None => {
                let Some(state) = self.stores.get_mut(store) else {
                    return;
                };
                state.plan.replenishment.request_seq += 1;
                let id = DocId::request(store, state.plan.replenishment.request_seq);
                let request = Request {
                    id: id.clone(),
                    store: store.clone(),
                    lines: vec![line],
                    state: RequestState::Open,
                    reason: format!("{sku} at or below its reorder point"),
                    created_at: now,
                    updated_at: now,
                    rev: 1,
                };
                self.requests.insert(id.clone(), request);
                changes.request(id);
            }
        }
    }

    /// The open request of `store` with a line for `sku`.
    pub fn open_request_for(&self, store: &StoreId, sku: &SkuId) -> Option<&Request> {
        self.requests
            .values()
            .find(|r| r.store == *store && r.is_open() && r.lines.iter().any(|l| l.sku == *sku))
    }

    pub(crate) fn check_dish(&mut self, store: &StoreId, dish_id: &DishId, now: Millis, changes: &mut Changes) {
        let Some(d) = self.stores.get(store).and_then(|s| s.dishes.get(dish_id)).cloned() else {
            return;
        };
        let predicted = d.portions > 0 && self.within_horizon(d.sellout_eta, now);
        let sold_out = d.portions == 0;
        self.set_alert(
            store,
            AlertKind::SoldOut,
            dish_id.as_str(),
            Subject::dish(dish_id),
            sold_out,
            || {
                format!(
                    "{dish_id} is sold out (limited by {})",
                    d.limited_by.as_ref().map_or("-", |s| s.as_str())
                )
            },
            now,
            changes,
        );
        let eta_clock = d.sellout_eta.map(|t| self.local_clock_at(t));
        let eta_text = || eta_clock.map_or_else(|| "soon".to_string(), |clock| format!("at {clock} local time"));
        self.set_alert(
            store,
            AlertKind::SelloutPredicted,
            dish_id.as_str(),
            Subject::dish(dish_id),
            predicted,
            || {
                format!(
                    "{dish_id} predicted to sell out {} ({} portions left)",
                    eta_text(),
                    d.portions
                )
            },
            now,
            changes,
        );
        // A transfer when the central kitchen cannot arrive before the
        // sell-out, during service, for a dish that is selling (not one that
        // merely has no stock yet, as at opening), unless the chef took it off.
        if d.override_.is_some() || !(sold_out || predicted) || self.rate(store, dish_id, now) < 1e-6 {
            return;
        }
        let Some(close) = self.service(store, now) else { return };
        let Some(sku) = d.limited_by.clone() else { return };
        if self
            .transfers
            .values()
            .any(|t| t.to == *store && t.sku == sku && t.is_active())
        {
            return;
        }
        let sellout = if sold_out { now } else { d.sellout_eta.unwrap_or(now) };
        if self.kitchen_eta(now) <= sellout {
            return;
        }
        let need = self.need(store, dish_id, &sku, now, close);
        let reason = if sold_out {
            format!(
                "{dish_id} sold out; the central kitchen can deliver {sku} only at {}",
                Timestamp(self.kitchen_eta(now))
            )
        } else {
            format!(
                "{dish_id} predicted to sell out {}; the central kitchen can deliver {sku} only at {}",
                eta_text(),
                Timestamp(self.kitchen_eta(now))
            )
        };
        self.propose(store, &sku, need, Vec::new(), reason, now, changes);
    }

    /// What the rest of service needs of `sku` for `dish`, base units: the
    /// forecast portions until close, less what is on hand; without a
    /// forecast, back to par.
    pub(crate) fn need(&self, store: &StoreId, dish: &DishId, sku: &SkuId, now: Millis, close: Millis) -> i64 {
        let level = self
            .stores
            .get(store)
            .and_then(|s| s.skus.get(sku))
            .map_or(0, |s| s.ledger.qty());
        let per_portion = self
            .catalog
            .dish(dish)
            .and_then(|d| d.recipe.iter().find(|l| l.sku == *sku))
            .map_or(1, |l| l.per_portion);
        let minutes = ((close - now) as f64 / MINUTE as f64).max(0.0);
        let portions = (self.rate(store, dish, now) * minutes).ceil() as i64;
        let forecast = portions * per_portion - level.max(0);
        if forecast > 0 {
            return forecast.max(per_portion);
        }
        let par = self
            .catalog
            .store(store)
            .and_then(|s| s.stock.get(sku))
            .map_or(0, |p| p.par);
        (par - level).max(per_portion)
    }

    /// Proposes a transfer of up to `need` of `sku` to `taker` from the
    /// nearest store not in `tried` that stays at or above its own reorder
    /// point after giving. Returns whether a proposal was made.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn propose(
        &mut self,
        taker: &StoreId,
        sku: &SkuId,
        need: i64,
        tried: Vec<StoreId>,
        reason: String,
        now: Millis,
        changes: &mut Changes,
    ) -> bool {
        let asked = self
            .stores
            .get(taker)
            .and_then(|s| s.plan.transfers.asked.get(sku))
            .cloned()
            .unwrap_or_default();
        let mut candidates: Vec<(u32, StoreId)> = self
            .catalog
            .stores()
            .filter(|s| s.id != *taker && !tried.contains(&s.id) && !asked.contains(&s.id))
            .filter_map(|s| self.catalog.travel(taker, &s.id).map(|m| (m, s.id.clone())))
            .collect();
        candidates.sort();
        for (minutes, giver) in candidates {
            let Some(surplus) = self.surplus(&giver, sku) else {
                continue;
            };
            let qty = need.min(surplus);
            if qty <= 0 {
                continue;
            }
            self.chain.transfer_seq += 1;
            changes.chain();
            if let Some(state) = self.stores.get_mut(taker) {
                state
                    .plan
                    .transfers
                    .asked
                    .entry(sku.clone())
                    .or_default()
                    .push(giver.clone());
                changes.plan(taker.clone());
            }
            let id = DocId::transfer(self.chain.transfer_seq);
            let timeout = (self.catalog.planning().transfer_timeout_minutes * MINUTE as f64).round() as Millis;
            let transfer = Transfer {
                id: id.clone(),
                from: giver,
                to: taker.clone(),
                sku: sku.clone(),
                qty,
                need,
                state: TransferState::Proposed,
                reason: reason.clone(),
                expires_at: Some(now + timeout),
                travel_minutes: minutes,
                tried,
                created_at: now,
                updated_at: now,
                rev: 1,
            };
            self.transfers.insert(id.clone(), transfer);
            changes.transfer(id);
            return true;
        }
        false
    }

    /// What `store` can give of `sku` and stay at or above its reorder
    /// point, and keep what its own promotions need of it.
    pub(crate) fn surplus(&self, store: &StoreId, sku: &SkuId) -> Option<i64> {
        let rp = self.catalog.store(store)?.stock.get(sku)?.reorder_point;
        let level = self.stores.get(store)?.skus.get(sku)?.ledger.qty();
        Some(level - rp.max(self.promotion_reserve(store, sku)))
    }
}
