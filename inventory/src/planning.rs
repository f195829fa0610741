//! Planning: what turns a stock tracker into a system that acts before a
//! person notices — replenishment requests to the central kitchen, transfers
//! between stores, sell-out forecasts, alerts, freshness and the HQ summary.
//!
//! Everything here is condition-based rather than edge-based: after each
//! input, the planning pass (`Inventory::plan`) looks at the levels and dishes that changed and
//! compares the conditions with what is already active (open requests,
//! disarmed SKUs, active alerts, active transfers). That makes the rules
//! idempotent under replays and restarts — nothing is raised twice — and
//! immune to noisy scales: a SKU re-arms for replenishment only once its
//! level is back above the reorder point.
//!
//! Time is store-local for service hours, delivery windows and "today"
//! (`Planning::utc_offset_minutes`); the core is always handed `now`.

use std::collections::{BTreeMap, BTreeSet};

use dishsync_protocol::payload::{
    ActionIn, AlertKind, AlertOut, AlertState, DishStatus, ErrorCode, RequestLine, RequestOut, RequestState,
    SummaryOut, Timestamp, TransferOut, TransferRequestIn, TransferState, WasteLine,
};
use dishsync_protocol::topic::{RequestAction, TransferAction};
use dishsync_protocol::{DeviceId, DishId, DocId, EventId, Millis, Quantity, SkuId, StoreId};
use serde::{Deserialize, Serialize};

use crate::{reject, Changes, EntryKind, Inventory, LedgerEntry, Outcome, Rejection, StockKindCode};

const MINUTE: Millis = 60_000;
const DAY: Millis = 24 * 60 * MINUTE;

/// An exponentially weighted sales rate: `Σ portions/τ · e^{-(now - t)/τ}`,
/// which converges to the true rate (portions per minute) for steady sales.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Portions per minute as of `at`.
    pub per_minute: f64,
    /// When `per_minute` was last updated.
    pub at: Millis,
}

impl Rate {
    fn decay(minutes: f64, tau: f64) -> f64 {
        (-minutes.max(0.0) / tau).exp()
    }

    /// The rate at `now`.
    pub fn at_time(&self, now: Millis, tau: f64) -> f64 {
        self.per_minute * Self::decay((now - self.at) as f64 / MINUTE as f64, tau)
    }

    /// Adds a sale of `portions` at `t`.
    pub fn add(&mut self, portions: f64, t: Millis, tau: f64) {
        let t = t.max(self.at);
        self.per_minute = self.at_time(t, tau) + portions / tau;
        self.at = t;
    }

    /// Takes back a sale of `portions` at `t` (a void).
    pub fn remove(&mut self, portions: f64, t: Millis, tau: f64) {
        let t = t.max(self.at);
        self.per_minute = (self.at_time(t, tau) - portions / tau).max(0.0);
        self.at = t;
    }
}

/// A replenishment request to the central kitchen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `rq-{store}-{n}`.
    pub id: DocId,
    /// The store that needs the goods.
    pub store: StoreId,
    /// What it needs.
    pub lines: Vec<RequestLine>,
    /// Where it stands.
    pub state: RequestState,
    /// Why, or the last action's note.
    pub reason: String,
    /// When raised.
    pub created_at: Millis,
    /// When last changed.
    pub updated_at: Millis,
    /// Document revision.
    pub rev: u64,
}

impl Request {
    /// Still to be delivered.
    pub fn is_open(&self) -> bool {
        matches!(
            self.state,
            RequestState::Open | RequestState::Acknowledged | RequestState::Shipped
        )
    }

    /// Whether it is still shown at `now`: while open, and for
    /// [`FINISHED_SHOWN_FOR`] after it finished.
    pub fn is_shown(&self, now: Millis) -> bool {
        self.is_open() || now - self.updated_at < FINISHED_SHOWN_FOR
    }
}

/// A transfer between two stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// `tr-{n}`.
    pub id: DocId,
    /// The giver.
    pub from: StoreId,
    /// The taker.
    pub to: StoreId,
    /// The SKU.
    pub sku: SkuId,
    /// Base units.
    pub qty: i64,
    /// What the taker needed (for the next proposal after a decline).
    pub need: i64,
    /// Where it stands.
    pub state: TransferState,
    /// Why, or the last action's note.
    pub reason: String,
    /// When an unanswered proposal expires.
    pub expires_at: Option<Millis>,
    /// Travel minutes between the stores.
    pub travel_minutes: u32,
    /// Stores already asked for this need (declined or expired).
    pub tried: Vec<StoreId>,
    /// When proposed.
    pub created_at: Millis,
    /// When last changed.
    pub updated_at: Millis,
    /// Document revision.
    pub rev: u64,
}

impl Transfer {
    /// Not finished: proposed, accepted or dispatched.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            TransferState::Proposed | TransferState::Accepted | TransferState::Dispatched
        )
    }

    /// Whether it is still shown at `now`: while active, and for
    /// [`FINISHED_SHOWN_FOR`] after it finished.
    pub fn is_shown(&self, now: Millis) -> bool {
        self.is_active() || now - self.updated_at < FINISHED_SHOWN_FOR
    }
}

/// How long a finished request or transfer keeps its retained documents
/// (then they are cleared; it stays on record in the broker's store).
pub const FINISHED_SHOWN_FOR: Millis = DAY;

/// A finished request or transfer whose retained documents are cleared.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Retired {
    /// A replenishment request of `store`.
    Request {
        /// The request.
        id: DocId,
        /// Its store.
        store: StoreId,
    },
    /// A transfer between two stores.
    Transfer {
        /// The transfer.
        id: DocId,
        /// The giver.
        from: StoreId,
        /// The taker.
        to: StoreId,
    },
}

/// A store's planning state (persisted with the store).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorePlan {
    /// SKUs that raised a request and have not been above their reorder
    /// point since (hysteresis).
    pub disarmed: BTreeSet<SkuId>,
    /// Last request number of the store.
    pub request_seq: u64,
    /// Last alert number of the store.
    pub alert_seq: u64,
    /// Active alerts: (kind, subject) → alert id.
    pub active_alerts: BTreeMap<(AlertKind, String), String>,
    /// The store-local day the counters below are for.
    pub day: i64,
    /// Wasted today per SKU, base units.
    pub waste_today: BTreeMap<SkuId, i64>,
    /// Used today (sales, consumption) per SKU, base units.
    pub used_today: BTreeMap<SkuId, i64>,
    /// Sales rate per dish.
    pub rates: BTreeMap<DishId, Rate>,
    /// Feeding devices currently offline.
    pub offline: BTreeSet<DeviceId>,
    /// Summary document revision.
    pub summary_rev: u64,
    /// Stores already asked today for a transfer of a SKU (a store that
    /// declined or let a proposal expire is not asked again the same day).
    pub asked: BTreeMap<SkuId, Vec<StoreId>>,
}

impl StorePlan {
    /// Starts store-local day `day`: today's counters begin again.
    fn begin_day(&mut self, day: i64) {
        self.day = day;
        self.waste_today.clear();
        self.used_today.clear();
        self.asked.clear();
    }
}

/// Chain-wide planning counters (persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPlan {
    /// Last transfer number.
    pub transfer_seq: u64,
}

fn round_up(qty: i64, pack: i64) -> i64 {
    let pack = pack.max(1);
    (qty + pack - 1) / pack * pack
}

impl Inventory {
    // ------------------------------------------------------------ time

    fn local_minutes(&self, now: Millis) -> i64 {
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
    fn at_local(&self, day: i64, minute: i64) -> Millis {
        (day * 24 * 60 + minute - i64::from(self.catalog.planning().utc_offset_minutes)) * MINUTE
    }

    /// Whether `store` is in service at `now`, and when it closes.
    fn service(&self, store: &StoreId, now: Millis) -> Option<Millis> {
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

    // ------------------------------------------------------------ forecast

    fn tau(&self) -> f64 {
        self.catalog.planning().rate_time_constant_minutes.max(1.0)
    }

    /// The dish's current sales rate, portions per minute.
    pub fn rate(&self, store: &StoreId, dish: &DishId, now: Millis) -> f64 {
        let tau = self.tau();
        self.stores
            .get(store)
            .and_then(|s| s.plan.rates.get(dish))
            .map_or(0.0, |r| r.at_time(now, tau))
    }

    /// When `portions` run out at the current rate, to the next whole minute.
    pub(crate) fn eta(&self, store: &StoreId, dish: &DishId, portions: u64, now: Millis) -> Option<Millis> {
        let rate = self.rate(store, dish, now);
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
            let rate = state.plan.rates.entry(dish.clone()).or_default();
            if *portions >= 0 {
                rate.add(*portions as f64, at, tau);
            } else {
                rate.remove(-*portions as f64, at, tau);
            }
        }
        changes.plan(store.clone());
    }

    // ------------------------------------------------------------ freshness

    /// Whether a feeding device of `sku` in `store` is offline.
    pub fn is_stale(&self, store: &StoreId, sku: &SkuId) -> bool {
        let Some(state) = self.stores.get(store) else {
            return false;
        };
        let Some(feeds) = self.catalog.planning().feeds.get(store) else {
            return false;
        };
        state
            .plan
            .offline
            .iter()
            .any(|d| feeds.get(d).is_some_and(|skus| skus.contains(sku)))
    }

    /// A feeding device came online or went offline.
    pub fn set_presence(&mut self, store: &StoreId, device: &DeviceId, online: bool, now: Millis) -> Changes {
        let mut changes = Changes::default();
        let catalog = std::sync::Arc::clone(&self.catalog);
        let Some(fed) = catalog.planning().feeds.get(store).and_then(|f| f.get(device)) else {
            return changes;
        };
        let Some(state) = self.stores.get_mut(store) else {
            return changes;
        };
        let was_offline = state.plan.offline.contains(device);
        if was_offline != online {
            return changes;
        }
        if online {
            state.plan.offline.remove(device);
        } else {
            state.plan.offline.insert(device.clone());
        }
        changes.plan(store.clone());
        let message = format!(
            "{device}, which feeds {}, is offline",
            fed.iter().map(SkuId::as_str).collect::<Vec<_>>().join(", ")
        );
        self.set_alert(
            store,
            AlertKind::DeviceOffline,
            device.as_str(),
            Subject::device(device),
            !online,
            message,
            now,
            &mut changes,
        );
        let mut dishes = BTreeSet::new();
        for sku in fed {
            if let Some(s) = self.stores.get_mut(store).and_then(|st| st.skus.get_mut(sku)) {
                s.rev += 1;
                s.at = now;
                changes.sku(store.clone(), sku.clone());
                changes.level(store.clone(), sku.clone());
            }
            dishes.extend(catalog.dishes_using(store, sku).iter().cloned());
        }
        for dish in dishes {
            self.recompute_dish(store, &dish, now, &mut changes);
        }
        self.finish(now, &mut changes);
        changes
    }

    // ------------------------------------------------------------ alerts

    #[allow(clippy::too_many_arguments)]
    fn set_alert(
        &mut self,
        store: &StoreId,
        kind: AlertKind,
        key: &str,
        subject: Subject,
        on: bool,
        message: String,
        now: Millis,
        changes: &mut Changes,
    ) {
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        let slot = (kind, key.to_string());
        let active = state.plan.active_alerts.get(&slot).cloned();
        let (id, alert_state, message) = match (on, active) {
            (true, None) => {
                state.plan.alert_seq += 1;
                let id = format!("al-{store}-{}", state.plan.alert_seq);
                state.plan.active_alerts.insert(slot, id.clone());
                (id, AlertState::Raised, message)
            }
            (false, Some(id)) => {
                state.plan.active_alerts.remove(&slot);
                (id, AlertState::Cleared, format!("cleared: {message}"))
            }
            _ => return,
        };
        changes.plan(store.clone());
        changes.alerts.push((
            store.clone(),
            AlertOut {
                id,
                kind,
                state: alert_state,
                sku: subject.sku,
                dish: subject.dish,
                device: subject.device,
                message,
                at: Timestamp(now),
            },
        ));
    }

    // ------------------------------------------------------------ the pass

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
        for store in touched {
            if let Some(state) = self.stores.get_mut(&store) {
                state.plan.summary_rev += 1;
                changes.plan(store.clone());
                changes.summary(store);
            }
        }
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

    fn check_level(&mut self, store: &StoreId, sku: &SkuId, now: Millis, changes: &mut Changes) {
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
        let msg = format!("{sku} at {qty} {unit}, reorder point {}", params.reorder_point);
        self.set_alert(
            store,
            AlertKind::LowStock,
            sku.as_str(),
            Subject::sku(sku),
            low,
            msg.clone(),
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
            if state.plan.disarmed.remove(sku) {
                changes.plan(store.clone());
            }
            return;
        }
        if state.plan.disarmed.contains(sku) || self.open_request_for(store, sku).is_some() {
            return;
        }
        let pack = self.catalog.sku(sku).map_or(1, |s| s.pack);
        let need = round_up(params.par - qty, pack);
        if need <= 0 {
            return;
        }
        if let Some(state) = self.stores.get_mut(store) {
            state.plan.disarmed.insert(sku.clone());
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
                state.plan.request_seq += 1;
                let id = DocId::request(store, state.plan.request_seq);
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

    fn check_dish(&mut self, store: &StoreId, dish_id: &DishId, now: Millis, changes: &mut Changes) {
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
            format!(
                "{dish_id} is sold out (limited by {})",
                d.limited_by.as_ref().map_or("-", |s| s.as_str())
            ),
            now,
            changes,
        );
        let eta_text = d.sellout_eta.map_or_else(
            || "soon".to_string(),
            |t| format!("at {} local time", self.local_clock(t)),
        );
        self.set_alert(
            store,
            AlertKind::SelloutPredicted,
            dish_id.as_str(),
            Subject::dish(dish_id),
            predicted,
            format!(
                "{dish_id} predicted to sell out {eta_text} ({} portions left)",
                d.portions
            ),
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
                "{dish_id} predicted to sell out {eta_text}; the central kitchen can deliver {sku} only at {}",
                Timestamp(self.kitchen_eta(now))
            )
        };
        self.propose(store, &sku, need, Vec::new(), reason, now, changes);
    }

    /// What the rest of service needs of `sku` for `dish`, base units: the
    /// forecast portions until close, less what is on hand; without a
    /// forecast, back to par.
    fn need(&self, store: &StoreId, dish: &DishId, sku: &SkuId, now: Millis, close: Millis) -> i64 {
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
    fn propose(
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
            .and_then(|s| s.plan.asked.get(sku))
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
                state.plan.asked.entry(sku.clone()).or_default().push(giver.clone());
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

    /// What `store` can give of `sku` and stay at or above its reorder point.
    fn surplus(&self, store: &StoreId, sku: &SkuId) -> Option<i64> {
        let rp = self.catalog.store(store)?.stock.get(sku)?.reorder_point;
        let level = self.stores.get(store)?.skus.get(sku)?.ledger.qty();
        Some(level - rp)
    }

    // ------------------------------------------------------------ actions

    /// The central kitchen acts on a replenishment request.
    pub fn apply_request_action(
        &mut self,
        id: &DocId,
        action: RequestAction,
        body: &ActionIn,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        crate::check_text("note", &body.note)?;
        let request = self
            .requests
            .get_mut(id)
            .ok_or_else(|| reject(ErrorCode::UnknownDocument, format!("no replenishment request {id}")))?;
        use RequestState::*;
        let next = match (action, request.state) {
            (RequestAction::Acknowledge, Open) => Acknowledged,
            (RequestAction::Ship, Open | Acknowledged) => Shipped,
            (RequestAction::Cancel, Open | Acknowledged | Shipped) => Cancelled,
            (a, s) => {
                return Err(reject(
                    ErrorCode::InvalidTransition,
                    format!("cannot {} request {id}: it is {}", a.as_str(), state_name(s)),
                ))
            }
        };
        request.state = next;
        request.updated_at = now;
        request.rev += 1;
        if let Some(note) = &body.note {
            request.reason = note.clone();
        }
        let mut outcome = Outcome::default();
        outcome.changes.request(id.clone());
        self.finish(now, &mut outcome.changes);
        Ok(outcome)
    }

    /// A `receive` with `reference` = a request id closes that request's
    /// line for `sku`; the request is received when every line is.
    pub(crate) fn receive_against(
        &mut self,
        store: &StoreId,
        sku: &SkuId,
        reference: &str,
        now: Millis,
        changes: &mut Changes,
    ) {
        let Ok(id) = DocId::new(reference) else { return };
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        if request.store != *store || !request.is_open() {
            return;
        }
        let mut touched = false;
        for line in request.lines.iter_mut().filter(|l| l.sku == *sku && !l.received) {
            line.received = true;
            touched = true;
        }
        if !touched {
            return;
        }
        if request.lines.iter().all(|l| l.received) {
            request.state = RequestState::Received;
        }
        request.updated_at = now;
        request.rev += 1;
        changes.request(id);
    }

    /// A manager asks for stock from another store.
    pub fn apply_transfer_request(
        &mut self,
        store: &StoreId,
        body: &TransferRequestIn,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        self.store_checked(store)?;
        let sku = self
            .catalog
            .sku(&body.sku)
            .ok_or_else(|| reject(ErrorCode::UnknownSku, format!("unknown SKU {}", body.sku)))?;
        let need = Quantity {
            qty: body.qty,
            unit: body.unit,
        }
        .to_base(sku.unit)
        .map_err(|e| reject(ErrorCode::WrongUnit, e.to_string()))?;
        if need <= 0 {
            return Err(reject(ErrorCode::BadQuantity, "a transfer needs a positive quantity"));
        }
        let mut outcome = Outcome::default();
        let reason = format!("requested by {}", body.by);
        if !self.propose(store, &body.sku, need, Vec::new(), reason, now, &mut outcome.changes) {
            return Err(reject(
                ErrorCode::InvalidTransition,
                format!(
                    "no store within travel range can give {} without going below its reorder point",
                    body.sku
                ),
            ));
        }
        self.finish(now, &mut outcome.changes);
        Ok(outcome)
    }

    /// A store acts on a transfer.
    pub fn apply_transfer_action(
        &mut self,
        store: &StoreId,
        id: &DocId,
        action: TransferAction,
        body: &ActionIn,
        event: &EventId,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        crate::check_text("note", &body.note)?;
        let t = self
            .transfers
            .get(id)
            .cloned()
            .ok_or_else(|| reject(ErrorCode::UnknownDocument, format!("no transfer {id}")))?;
        let actor_ok = match action {
            TransferAction::Accept | TransferAction::Decline | TransferAction::Dispatch => *store == t.from,
            TransferAction::Receive => *store == t.to,
            TransferAction::Cancel => *store == t.from || *store == t.to,
        };
        if !actor_ok {
            return Err(reject(
                ErrorCode::NotPermitted,
                format!(
                    "store {store} cannot {} transfer {id} ({} → {})",
                    action.as_str(),
                    t.from,
                    t.to
                ),
            ));
        }
        use TransferState::*;
        let next = match (action, t.state) {
            (TransferAction::Accept, Proposed) => Accepted,
            (TransferAction::Decline, Proposed | Accepted) => Declined,
            (TransferAction::Dispatch, Accepted) => Dispatched,
            (TransferAction::Receive, Dispatched) => Received,
            (TransferAction::Cancel, Proposed | Accepted) => Cancelled,
            (a, s) => {
                return Err(reject(
                    ErrorCode::InvalidTransition,
                    format!("cannot {} transfer {id}: it is {}", a.as_str(), transfer_state_name(s)),
                ))
            }
        };
        let mut outcome = Outcome::default();
        let mut qty = t.qty;
        if next == Dispatched {
            // Never leave the giver below its reorder point, whatever sold
            // since the proposal.
            let surplus = self.surplus(&t.from, &t.sku).unwrap_or(0);
            qty = qty.min(surplus);
            if qty <= 0 {
                return Err(reject(
                    ErrorCode::InvalidTransition,
                    format!("{} has no {} above its reorder point left to give", t.from, t.sku),
                ));
            }
            self.book(
                &t.from,
                &t.sku,
                -qty,
                StockKindCode::TransferOut,
                event,
                now,
                &mut outcome,
            )?;
        }
        if next == Received {
            self.book(&t.to, &t.sku, qty, StockKindCode::TransferIn, event, now, &mut outcome)?;
        }
        if let Some(tr) = self.transfers.get_mut(id) {
            tr.state = next;
            tr.qty = qty;
            tr.expires_at = None;
            tr.updated_at = now;
            tr.rev += 1;
            if let Some(note) = &body.note {
                tr.reason = note.clone();
            }
        }
        outcome.changes.transfer(id.clone());
        if next == Declined {
            let mut tried = t.tried.clone();
            tried.push(t.from.clone());
            let reason = format!("{} declined {id}; {}", t.from, t.reason);
            self.propose(&t.to, &t.sku, t.need, tried, reason, now, &mut outcome.changes);
        }
        self.finish(now, &mut outcome.changes);
        Ok(outcome)
    }

    /// Books a signed stock change of a transfer into the ledger.
    #[allow(clippy::too_many_arguments)]
    fn book(
        &mut self,
        store: &StoreId,
        sku: &SkuId,
        delta: i64,
        kind: StockKindCode,
        event: &EventId,
        now: Millis,
        outcome: &mut Outcome,
    ) -> Result<(), Rejection> {
        let ledger = &mut self.sku_mut(store, sku)?.ledger;
        let before = ledger.qty();
        let applied = ledger.delta(now, delta);
        outcome.entries.push(LedgerEntry {
            store: store.clone(),
            sku: sku.clone(),
            event: event.clone(),
            kind: EntryKind::Stock(kind),
            amount: delta,
            at: now,
            moved: applied == crate::ledger::Applied::Moved,
        });
        if kind == StockKindCode::TransferOut {
            self.count_use(store, sku, -delta, false, now, now);
        }
        self.touch_levels(store, &[(sku.clone(), before)], now, &mut outcome.changes);
        Ok(())
    }

    /// Counts use or waste for today's waste ratio: in the store-local day
    /// of the change's own stamp `at`, so a change stamped on an earlier day
    /// (a device replaying after a night offline) counts in no day's
    /// figures here (only today's are kept), and never in today's.
    pub(crate) fn count_use(
        &mut self,
        store: &StoreId,
        sku: &SkuId,
        amount: i64,
        waste: bool,
        at: Millis,
        now: Millis,
    ) {
        let today = self.local_day(now);
        if self.local_day(at) != today {
            return;
        }
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        if state.plan.day != today {
            // The first change of a new day, before the tick saw it.
            state.plan.begin_day(today);
        }
        let counters = if waste {
            &mut state.plan.waste_today
        } else {
            &mut state.plan.used_today
        };
        *counters.entry(sku.clone()).or_insert(0) += amount;
    }

    /// Raises or clears `waste_spike` for `sku`.
    pub(crate) fn check_waste(&mut self, store: &StoreId, sku: &SkuId, now: Millis, changes: &mut Changes) {
        let Some(state) = self.stores.get(store) else { return };
        let waste = state.plan.waste_today.get(sku).copied().unwrap_or(0);
        let used = state.plan.used_today.get(sku).copied().unwrap_or(0);
        let share = self.catalog.planning().waste_alert_share;
        let ratio = if waste + used > 0 {
            waste as f64 / (waste + used) as f64
        } else {
            0.0
        };
        let spike = waste > 0 && ratio > share;
        let msg = format!(
            "{sku}: {:.0} % of today's use wasted ({waste} of {})",
            ratio * 100.0,
            waste + used
        );
        changes.plan(store.clone());
        self.set_alert(
            store,
            AlertKind::WasteSpike,
            sku.as_str(),
            Subject::sku(sku),
            spike,
            msg,
            now,
            changes,
        );
    }

    // ------------------------------------------------------------ timers

    /// Everything that happens with time alone: 86es lapse, unanswered
    /// proposals expire (and go to the next candidate), forecasts move,
    /// a new day resets today's counters.
    pub fn tick(&mut self, now: Millis) -> Changes {
        let mut changes = self.expire_overrides(now);
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
        // Forecasts move with time: recompute dishes that have a rate.
        let with_rates: Vec<(StoreId, DishId)> = self
            .stores
            .iter()
            .flat_map(|(s, st)| st.plan.rates.keys().map(move |d| (s.clone(), d.clone())))
            .collect();
        for (store, dish) in with_rates {
            self.recompute_dish(&store, &dish, now, &mut changes);
        }
        // A new day.
        let today = self.local_day(now);
        let stores: Vec<StoreId> = self.stores.keys().cloned().collect();
        for store in stores {
            let Some(state) = self.stores.get_mut(&store) else {
                continue;
            };
            if state.plan.day == today {
                continue;
            }
            state.plan.begin_day(today);
            let spikes: Vec<String> = state
                .plan
                .active_alerts
                .keys()
                .filter(|(k, _)| *k == AlertKind::WasteSpike)
                .map(|(_, s)| s.clone())
                .collect();
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
        self.finish(now, &mut changes);
        changes
    }

    // ------------------------------------------------------------ views

    /// A request's retained document.
    pub fn request_out(&self, id: &DocId) -> Option<RequestOut> {
        let r = self.requests.get(id)?;
        Some(RequestOut {
            id: r.id.clone(),
            store: r.store.clone(),
            lines: r.lines.clone(),
            state: r.state,
            reason: r.reason.clone(),
            created_at: Timestamp(r.created_at),
            updated_at: Timestamp(r.updated_at),
            rev: r.rev,
        })
    }

    /// A transfer's retained document.
    pub fn transfer_out(&self, id: &DocId) -> Option<TransferOut> {
        let t = self.transfers.get(id)?;
        let unit = self
            .catalog
            .sku(&t.sku)
            .map_or(dishsync_protocol::BaseUnit::Pcs, |s| s.unit);
        Some(TransferOut {
            id: t.id.clone(),
            from: t.from.clone(),
            to: t.to.clone(),
            sku: t.sku.clone(),
            qty: t.qty,
            unit,
            state: t.state,
            reason: t.reason.clone(),
            expires_at: t.expires_at.map(Timestamp),
            travel_minutes: t.travel_minutes,
            updated_at: Timestamp(t.updated_at),
            rev: t.rev,
        })
    }

    /// A request as persisted.
    pub fn request(&self, id: &DocId) -> Option<&Request> {
        self.requests.get(id)
    }

    /// A transfer as persisted.
    pub fn transfer(&self, id: &DocId) -> Option<&Transfer> {
        self.transfers.get(id)
    }

    /// Every request and transfer currently held (for re-publication).
    pub fn documents(&self) -> (Vec<DocId>, Vec<DocId>) {
        (
            self.requests.keys().cloned().collect(),
            self.transfers.keys().cloned().collect(),
        )
    }

    /// A store's planning state as persisted.
    pub fn plan_state(&self, store: &StoreId) -> Option<&StorePlan> {
        self.stores.get(store).map(|s| &s.plan)
    }

    /// The chain's planning counters as persisted.
    pub fn chain_state(&self) -> ChainPlan {
        self.chain
    }

    /// The HQ summary of a store.
    pub fn summary_out(&self, store: &StoreId, now: Millis) -> Option<SummaryOut> {
        let state = self.stores.get(store)?;
        let params = &self.catalog.store(store)?.stock;
        let sold_out = state
            .dishes
            .iter()
            .filter(|(_, d)| d.status == DishStatus::SoldOut)
            .map(|(id, _)| id.clone())
            .collect();
        let low = state
            .skus
            .iter()
            .filter(|(sku, s)| params.get(*sku).is_some_and(|p| s.ledger.qty() <= p.reorder_point))
            .map(|(sku, _)| sku.clone())
            .collect();
        let open_requests = self
            .requests
            .values()
            .filter(|r| r.store == *store && r.is_open())
            .map(|r| r.id.clone())
            .collect();
        let open_transfers = self
            .transfers
            .values()
            .filter(|t| t.is_active() && (t.from == *store || t.to == *store))
            .map(|t| t.id.clone())
            .collect();
        let mut waste = BTreeMap::new();
        let mut ratios = Vec::new();
        let skus: BTreeSet<&SkuId> = state
            .plan
            .waste_today
            .keys()
            .chain(state.plan.used_today.keys())
            .collect();
        for sku in skus {
            let w = state.plan.waste_today.get(sku).copied().unwrap_or(0);
            let u = state.plan.used_today.get(sku).copied().unwrap_or(0);
            if w + u <= 0 {
                continue;
            }
            let ratio = w as f64 / (w + u) as f64;
            ratios.push(ratio);
            if w > 0 {
                waste.insert(
                    sku.clone(),
                    WasteLine {
                        waste: w,
                        used: u,
                        ratio,
                    },
                );
            }
        }
        let counted = ratios.len() as u32;
        let waste_ratio = if ratios.is_empty() {
            0.0
        } else {
            ratios.iter().sum::<f64>() / f64::from(counted)
        };
        let close = self.service(store, now);
        let factor = self.catalog.planning().overstock_factor;
        let overstock = state
            .dishes
            .iter()
            .filter(|(dish, d)| {
                // A dish one of whose ingredients is at or below its reorder
                // point (being replenished) is not over-stocked.
                let ingredient_low = self.catalog.dish(dish).is_some_and(|def| {
                    def.recipe.iter().any(|line| {
                        let qty = state.skus.get(&line.sku).map_or(0, |s| s.ledger.qty());
                        params.get(&line.sku).is_some_and(|p| qty <= p.reorder_point)
                    })
                });
                if ingredient_low {
                    return false;
                }
                let Some(close) = close else { return false };
                let Some(rate) = state.plan.rates.get(*dish) else {
                    return false;
                };
                if self.local_day(rate.at) != self.local_day(now) {
                    return false;
                }
                let expected = rate.at_time(now, self.tau()) * ((close - now) as f64 / MINUTE as f64);
                d.portions as f64 > factor * expected.max(1.0)
            })
            .map(|(id, _)| id.clone())
            .collect();
        Some(SummaryOut {
            store: store.clone(),
            sold_out,
            low,
            open_requests,
            open_transfers,
            waste_ratio,
            counted,
            waste,
            overstock,
            rev: state.plan.summary_rev,
            at: Timestamp(now),
        })
    }
}

/// What an alert names.
#[derive(Default)]
struct Subject {
    sku: Option<SkuId>,
    dish: Option<DishId>,
    device: Option<DeviceId>,
}

impl Subject {
    fn sku(sku: &SkuId) -> Subject {
        Subject {
            sku: Some(sku.clone()),
            ..Subject::default()
        }
    }
    fn dish(dish: &DishId) -> Subject {
        Subject {
            dish: Some(dish.clone()),
            ..Subject::default()
        }
    }
    fn device(device: &DeviceId) -> Subject {
        Subject {
            device: Some(device.clone()),
            ..Subject::default()
        }
    }
}

fn state_name(s: RequestState) -> &'static str {
    match s {
        RequestState::Open => "open",
        RequestState::Acknowledged => "acknowledged",
        RequestState::Shipped => "shipped",
        RequestState::Received => "received",
        RequestState::Cancelled => "cancelled",
    }
}

fn transfer_state_name(s: TransferState) -> &'static str {
    match s {
        TransferState::Proposed => "proposed",
        TransferState::Accepted => "accepted",
        TransferState::Declined => "declined",
        TransferState::Expired => "expired",
        TransferState::Dispatched => "dispatched",
        TransferState::Received => "received",
        TransferState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
#[path = "planning_tests.rs"]
mod tests;
