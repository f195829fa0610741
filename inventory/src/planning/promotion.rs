//! Promotion readiness: a dish HQ pushes must not be pulled for lack of
//! ingredients.
//!
//! HQ plans a promotion (`hq/promotions/{promotion}/plan`): a dish, the
//! stores, a start and an end, and the demand — an `uplift` on the dish's
//! usual daily sales ([`DailySales`]) or `portions_per_day`. Each store's
//! readiness ([`StoreReadiness`]) judges the *day judged*: the promotion's
//! first day before it starts, the next day (to its end) while it runs.
//! Per ingredient of the dish:
//!
//! - `need` = what the store uses of it on a usual day (its history) plus
//!   what every live promotion of the store adds over that day — (expected
//!   − usual portions) × the recipe's quantity — so an ingredient shared by
//!   two promoted dishes, or by the promoted dish and the rest of the menu,
//!   is counted once against the one stock;
//! - `on_hand` + `due` (requested lines the central kitchen delivers before
//!   the day judged begins, transfers accepted or on their way);
//! - coverage = (`on_hand` + `due`) ÷ `need`.
//!
//! The lowest coverage is the store's, its ingredient the limiting one:
//! `ready` at or above 1 + `[planning] safety_stock`, `at_risk` from 1,
//! `short` below. A short store gets, once, an early replenishment line —
//! raised once the kitchen's next delivery is the last before the day
//! judged begins, so it arrives with that delivery, merged into the
//! store's open request when it has one — or, when the
//! kitchen can no longer deliver in time, a transfer proposal of the
//! limiting ingredient. While the promotion runs, a store not `ready`
//! raises `promotion_at_risk`, cleared when it is ready again or the
//! promotion is over.
//!
//! Everything is re-judged after every change to one of the promotion's
//! stores and on the tick (the day judged moves with time); a store's
//! document gets a new revision only when what it shows changed. A
//! promotion is persisted as `o/{promotion}`, a store's readiness as
//! `r/{store}/{promotion}`; both are shown for a day after the promotion
//! ended or was called off.

use std::collections::{BTreeMap, BTreeSet};

use dishsync_protocol::payload::{
    ActionIn, AlertKind, ErrorCode, IngredientCoverOut, PromotionIn, PromotionOut, PromotionState, PromotionStoreOut,
    Readiness, RequestLine, RequestState, StorePromotionOut, Timestamp, TransferState,
};
use dishsync_protocol::{BaseUnit, DeviceId, DishId, DocId, EventId, Millis, PromotionId, SkuId, StoreId};
use serde::{Deserialize, Serialize};

use crate::changes::{Changes, Outcome};
use crate::document::Document;
use crate::inventory::Inventory;
use crate::rejection::{check_text, reject, Rejection};

use super::plan::*;

/// Largest uplift a plan may give.
pub const MAX_UPLIFT: f64 = 100.0;
/// Most portions per store and day a plan may give.
pub const MAX_PORTIONS_PER_DAY: f64 = 100_000.0;

/// A promotion as HQ planned it (persisted as `o/{promotion}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    /// Its id.
    pub id: PromotionId,
    /// The id of the plan that holds.
    pub plan: EventId,
    /// The dish promoted.
    pub dish: DishId,
    /// The stores it runs in, in the plan's order.
    pub stores: Vec<StoreId>,
    /// When it starts.
    pub start: Millis,
    /// When it ends.
    pub end: Millis,
    /// Expected sales as a multiple of the usual.
    pub uplift: Option<f64>,
    /// Expected portions per store and day.
    pub portions_per_day: Option<f64>,
    /// Who planned it, or called it off.
    pub by: DeviceId,
    /// The plan's note, or the cancellation's.
    pub note: Option<String>,
    /// Where it stands.
    pub state: PromotionState,
    /// Document revision.
    pub rev: u64,
    /// When last changed.
    pub updated_at: Millis,
}

impl Promotion {
    /// Where it stands at `now`, by its dates (a called-off one stays so).
    pub fn state_at(&self, now: Millis) -> PromotionState {
        match self.state {
            PromotionState::Cancelled => PromotionState::Cancelled,
            _ if now >= self.end => PromotionState::Ended,
            _ if now >= self.start => PromotionState::Running,
            _ => PromotionState::Scheduled,
        }
    }

    /// Not over: scheduled or running.
    pub fn is_live(&self) -> bool {
        matches!(self.state, PromotionState::Scheduled | PromotionState::Running)
    }

    /// Called off, or past its end at `now` (even before the tick says
    /// so): it can no longer be planned anew or called off.
    pub fn is_over(&self, now: Millis) -> bool {
        !self.is_live() || self.state_at(now) == PromotionState::Ended
    }

    /// Whether it is still shown at `now`: while live, and for
    /// [`FINISHED_SHOWN_FOR`] after it ended or was called off.
    pub fn is_shown(&self, now: Millis) -> bool {
        self.is_live() || now - self.updated_at < FINISHED_SHOWN_FOR
    }

    fn runs_in(&self, store: &StoreId) -> bool {
        self.stores.contains(store)
    }
}

/// One ingredient's cover at one store, base units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cover {
    /// The SKU.
    pub sku: SkuId,
    /// What the day judged needs of it.
    pub need: i64,
    /// On hand (never below zero).
    pub on_hand: i64,
    /// Due before the day judged begins.
    pub due: i64,
}

impl Cover {
    /// (`on_hand` + `due`) ÷ `need`, down to a thousandth; `None` when
    /// nothing is needed.
    pub fn coverage(&self) -> Option<f64> {
        (self.need > 0).then(|| ((self.on_hand + self.due) * 1000 / self.need) as f64 / 1000.0)
    }
}

/// A store's readiness for a promotion (persisted as
/// `r/{store}/{promotion}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreReadiness {
    /// Where the promotion stood when judged.
    pub state: PromotionState,
    /// Portions of the dish expected per day.
    pub portions_per_day: f64,
    /// ready, at_risk or short.
    pub status: Readiness,
    /// Each ingredient, in recipe order.
    pub ingredients: Vec<Cover>,
    /// The request its early line went into.
    pub request: Option<DocId>,
    /// The transfer proposed for it.
    pub transfer: Option<DocId>,
    /// Document revision.
    pub rev: u64,
    /// When last changed.
    pub at: Millis,
}

impl StoreReadiness {
    /// The ingredient with the lowest coverage, and that coverage.
    pub fn limiting(&self) -> Option<(&Cover, f64)> {
        self.ingredients
            .iter()
            .filter_map(|c| c.coverage().map(|x| (c, x)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// What a store's judgement found (before acting on it).
struct Judged {
    portions_per_day: f64,
    ingredients: Vec<Cover>,
    status: Readiness,
    /// Where the day judged begins.
    from: Millis,
}

impl Inventory {
    /// HQ plans a promotion, or plans it anew.
    pub(crate) fn apply_promotion_plan(
        &mut self,
        id: &PromotionId,
        plan: &PromotionIn,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        check_text("note", &plan.note)?;
        let before = self.promotions.get(id).cloned();
        if let Some(p) = &before {
            if p.is_over(now) {
                return Err(reject(
                    ErrorCode::InvalidTransition,
                    format!("promotion {id} is over; plan a new one"),
                ));
            }
        }
        self.check_plan(plan, now)?;
        let mut promotion = Promotion {
            id: id.clone(),
            plan: plan.id.clone(),
            dish: plan.dish.clone(),
            stores: plan.stores.clone(),
            start: plan.start.0,
            end: plan.end.0,
            uplift: plan.uplift,
            portions_per_day: plan.portions_per_day,
            by: plan.by.clone(),
            note: plan.note.clone(),
            state: PromotionState::Scheduled,
            rev: before.as_ref().map_or(0, |p| p.rev) + 1,
            updated_at: now,
        };
        promotion.state = promotion.state_at(now);
        let mut changes = Changes::default();
        // Stores the new plan leaves out: their readiness goes.
        if let Some(before) = &before {
            for store in before.stores.iter().filter(|s| !plan.stores.contains(s)) {
                self.drop_readiness(id, store, &before.dish, now, &mut changes);
            }
        }
        self.promotions.insert(id.clone(), promotion);
        changes.promotion(id.clone());
        self.review(id, None, now, &mut changes);
        self.finish(now, &mut changes);
        Ok(Outcome {
            changes,
            ..Outcome::default()
        })
    }

    fn check_plan(&self, plan: &PromotionIn, now: Millis) -> Result<(), Rejection> {
        let dish = &plan.dish;
        if self.catalog.dish(dish).is_none() {
            return Err(reject(ErrorCode::UnknownDish, format!("unknown dish {dish}")));
        }
        if plan.stores.is_empty() {
            return Err(reject(ErrorCode::MissingField, "a promotion names at least one store"));
        }
        let mut seen = BTreeSet::new();
        for store in &plan.stores {
            self.store_checked(store)?;
            if !seen.insert(store) {
                return Err(reject(ErrorCode::InvalidField, format!("store {store} is named twice")));
            }
            if !self.catalog.on_menu(store, dish) {
                return Err(reject(
                    ErrorCode::UnknownDish,
                    format!("{dish} is not on the menu of {store}"),
                ));
            }
        }
        if plan.end.0 <= plan.start.0 {
            return Err(reject(ErrorCode::InvalidField, "a promotion ends after it starts"));
        }
        if plan.end.0 <= now {
            return Err(reject(ErrorCode::InvalidField, "the promotion ends in the past"));
        }
        let demand = match (plan.uplift, plan.portions_per_day) {
            (Some(u), None) if u.is_finite() && u > 0.0 && u <= MAX_UPLIFT => u,
            (None, Some(p)) if p.is_finite() && p > 0.0 && p <= MAX_PORTIONS_PER_DAY => p,
            (Some(_), None) | (None, Some(_)) => {
                return Err(reject(
                    ErrorCode::BadQuantity,
                    format!("uplift is above 0 and at most {MAX_UPLIFT}; portions_per_day above 0 and at most {MAX_PORTIONS_PER_DAY}"),
                ))
            }
            _ => {
                return Err(reject(
                    ErrorCode::InvalidField,
                    "a promotion gives exactly one of uplift and portions_per_day",
                ))
            }
        };
        if plan.uplift.is_some() {
            if let Some(store) = plan
                .stores
                .iter()
                .find(|s| self.stores.get(*s).is_some_and(|st| st.sold.per_day(dish).is_none()))
            {
                return Err(reject(
                    ErrorCode::InvalidField,
                    format!(
                        "{store} has no whole day of sales yet to apply an uplift of {demand} to; give portions_per_day"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// HQ calls a promotion off.
    pub(crate) fn apply_promotion_cancel(
        &mut self,
        id: &PromotionId,
        body: &ActionIn,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        check_text("note", &body.note)?;
        let promotion = self
            .promotions
            .get_mut(id)
            .ok_or_else(|| reject(ErrorCode::UnknownDocument, format!("no promotion {id}")))?;
        if promotion.is_over(now) {
            return Err(reject(ErrorCode::InvalidTransition, format!("promotion {id} is over")));
        }
        promotion.state = PromotionState::Cancelled;
        promotion.by = body.by.clone();
        promotion.note = body.note.clone();
        promotion.rev += 1;
        promotion.updated_at = now;
        let mut changes = Changes::default();
        changes.promotion(id.clone());
        self.review(id, None, now, &mut changes);
        self.finish(now, &mut changes);
        Ok(Outcome {
            changes,
            ..Outcome::default()
        })
    }

    /// Re-judges every promotion running in one of `stores` (every
    /// promotion with `None`).
    pub(crate) fn review_promotions(&mut self, stores: Option<&BTreeSet<StoreId>>, now: Millis, changes: &mut Changes) {
        let ids: Vec<PromotionId> = self
            .promotions
            .values()
            .filter(|p| p.is_live())
            .filter(|p| stores.is_none_or(|set| p.stores.iter().any(|s| set.contains(s))))
            .map(|p| p.id.clone())
            .collect();
        for id in ids {
            self.review(&id, stores, now, changes);
        }
    }

    /// Re-judges promotion `id` in those of its stores in `only` (all with
    /// `None`): its state by the clock, then each store's readiness, acted
    /// on.
    fn review(&mut self, id: &PromotionId, only: Option<&BTreeSet<StoreId>>, now: Millis, changes: &mut Changes) {
        let Some(promotion) = self.promotions.get_mut(id) else {
            return;
        };
        let state = promotion.state_at(now);
        let moved = state != promotion.state;
        if moved {
            promotion.state = state;
            promotion.updated_at = now;
            if !changes.publish.contains(&Document::Promotion(id.clone())) {
                promotion.rev += 1;
            }
            changes.promotion(id.clone());
        }
        let promotion = promotion.clone();
        for store in &promotion.stores {
            if !moved && only.is_some_and(|set| !set.contains(store)) {
                continue;
            }
            self.review_store(&promotion, store, now, changes);
        }
    }

    fn review_store(&mut self, promotion: &Promotion, store: &StoreId, now: Millis, changes: &mut Changes) {
        let id = &promotion.id;
        let mut judged = self.judge(promotion, store, now);
        if promotion.is_live() {
            if let Some(j) = &judged {
                if j.status == Readiness::Short && self.act_on_shortfall(promotion, store, j, now, changes) {
                    judged = self.judge(promotion, store, now);
                }
            }
        }
        let running = promotion.state == PromotionState::Running;
        let prior = self.stores.get(store).and_then(|s| s.promotions.get(id)).cloned();
        let next = match (&judged, &prior) {
            (Some(j), _) => StoreReadiness {
                state: promotion.state,
                portions_per_day: j.portions_per_day,
                status: j.status,
                ingredients: j.ingredients.clone(),
                request: prior.as_ref().and_then(|p| p.request.clone()),
                transfer: prior.as_ref().and_then(|p| p.transfer.clone()),
                rev: prior.as_ref().map_or(0, |p| p.rev),
                at: prior.as_ref().map_or(now, |p| p.at),
            },
            // Over: what was judged last stays, with the final state.
            (None, Some(p)) => StoreReadiness {
                state: promotion.state,
                ..p.clone()
            },
            (None, None) => return,
        };
        let limiting = next.limiting().map(|(c, x)| (c.sku.clone(), x));
        let alert = running && next.status != Readiness::Ready;
        let message = match &limiting {
            Some((sku, x)) if alert => format!(
                "promotion {id} of {}: {store} {} — {sku} covers {:.0} % of the day's need",
                promotion.dish,
                readiness_name(next.status),
                x * 100.0
            ),
            _ => format!("promotion {id} of {}: {store} ready", promotion.dish),
        };
        self.set_alert(
            store,
            AlertKind::PromotionAtRisk,
            id.as_str(),
            Subject::dish(&promotion.dish),
            alert,
            || message,
            now,
            changes,
        );
        let shown_same = prior.as_ref().is_some_and(|p| {
            p.state == next.state
                && p.status == next.status
                && p.ingredients == next.ingredients
                && p.portions_per_day == next.portions_per_day
                && p.request == next.request
                && p.transfer == next.transfer
        });
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        let doc = Document::Readiness(store.clone(), id.clone());
        let entry = state.promotions.entry(id.clone()).or_insert(next);
        if shown_same {
            return;
        }
        let bump = !changes.publish.contains(&doc);
        let rev = entry.rev + u64::from(bump);
        if let Some(j) = judged {
            entry.portions_per_day = j.portions_per_day;
            entry.status = j.status;
            entry.ingredients = j.ingredients;
        }
        entry.state = promotion.state;
        entry.rev = rev.max(1);
        entry.at = now;
        changes.readiness(store.clone(), id.clone());
        // The HQ document lists every store's status.
        if !changes.publish.contains(&Document::Promotion(id.clone())) {
            if let Some(p) = self.promotions.get_mut(id) {
                p.rev += 1;
                p.updated_at = now;
            }
        }
        changes.promotion(id.clone());
    }

    /// The store's readiness at `now`; `None` once the promotion is over,
    /// or for a store or dish the catalog no longer has.
    fn judge(&self, promotion: &Promotion, store: &StoreId, now: Millis) -> Option<Judged> {
        if !promotion.is_live() {
            return None;
        }
        let state = self.stores.get(store)?;
        let recipe = &self.catalog.dish(&promotion.dish)?.recipe;
        let from = now.max(promotion.start);
        let to = promotion.end.min(from + DAY);
        if to <= from {
            return None;
        }
        let days = (to - from) as f64 / DAY as f64;
        let portions_per_day = self.expected_per_day(promotion, store);
        let mut ingredients = Vec::with_capacity(recipe.len());
        for line in recipe {
            let sku = &line.sku;
            // A usual day of the SKU, and what every live promotion of the
            // store adds to it over the day judged.
            let usual = state.history.usage_per_day(sku).unwrap_or(0.0) * days;
            let added: f64 = self
                .promotions
                .values()
                .filter(|p| p.is_live() && p.runs_in(store))
                .filter_map(|p| {
                    let per_portion = self
                        .catalog
                        .dish(&p.dish)?
                        .recipe
                        .iter()
                        .find(|l| l.sku == *sku)?
                        .per_portion;
                    let overlap = (to.min(p.end) - from.max(p.start)).max(0) as f64 / DAY as f64;
                    let usual = state.sold.per_day(&p.dish).unwrap_or(0.0);
                    Some((self.expected_per_day(p, store) - usual) * per_portion as f64 * overlap)
                })
                .sum();
            let need = ((usual + added).max(0.0) - 1e-9).ceil() as i64;
            let on_hand = state.skus.get(sku).map_or(0, |s| s.ledger.qty().max(0));
            ingredients.push(Cover {
                sku: sku.clone(),
                need,
                on_hand,
                due: self.due(store, sku, from),
            });
        }
        let lowest = ingredients.iter().filter_map(Cover::coverage).reduce(f64::min);
        let margin = 1.0 + self.catalog.planning().safety_stock;
        let status = match lowest {
            None => Readiness::Ready,
            Some(x) if x >= margin - 1e-9 => Readiness::Ready,
            Some(x) if x >= 1.0 => Readiness::AtRisk,
            Some(_) => Readiness::Short,
        };
        Some(Judged {
            portions_per_day,
            ingredients,
            status,
            from,
        })
    }

    /// Portions per day `promotion` expects at `store`.
    fn expected_per_day(&self, promotion: &Promotion, store: &StoreId) -> f64 {
        match (promotion.portions_per_day, promotion.uplift) {
            (Some(p), _) => p,
            (None, Some(u)) => {
                u * self
                    .stores
                    .get(store)
                    .and_then(|s| s.sold.per_day(&promotion.dish))
                    .unwrap_or(0.0)
            }
            (None, None) => 0.0,
        }
    }

    /// What of `sku` is due at `store` before `by`: lines of open requests
    /// not received that the central kitchen delivers by then, and
    /// transfers accepted or on their way.
    fn due(&self, store: &StoreId, sku: &SkuId, by: Millis) -> i64 {
        let requested: i64 = self
            .requests
            .values()
            .filter(|r| r.store == *store && r.is_open() && self.kitchen_eta(r.created_at) <= by)
            .flat_map(|r| r.lines.iter())
            .filter(|l| l.sku == *sku && !l.received)
            .map(|l| l.qty)
            .sum();
        let moving: i64 = self
            .transfers
            .values()
            .filter(|t| t.to == *store && t.sku == *sku)
            .filter(|t| matches!(t.state, TransferState::Accepted | TransferState::Dispatched))
            .map(|t| t.qty)
            .sum();
        requested + moving
    }

    /// What `store` keeps of `sku` for its live promotions: the most any
    /// of them needs of it on its day judged, with the safety margin, less
    /// what is due by then.
    pub(crate) fn promotion_reserve(&self, store: &StoreId, sku: &SkuId) -> i64 {
        let margin = 1.0 + self.catalog.planning().safety_stock;
        let Some(state) = self.stores.get(store) else {
            return 0;
        };
        state
            .promotions
            .iter()
            .filter(|(id, _)| self.promotions.get(*id).is_some_and(Promotion::is_live))
            .flat_map(|(_, r)| r.ingredients.iter().filter(|c| c.sku == *sku))
            .map(|c| (c.need as f64 * margin - 1e-9).ceil() as i64 - c.due)
            .max()
            .unwrap_or(0)
            .max(0)
    }

    /// A short store's early line or transfer, each once; whether one was
    /// raised.
    fn act_on_shortfall(
        &mut self,
        promotion: &Promotion,
        store: &StoreId,
        judged: &Judged,
        now: Millis,
        changes: &mut Changes,
    ) -> bool {
        let id = &promotion.id;
        let (request, transfer) = self
            .stores
            .get(store)
            .and_then(|s| s.promotions.get(id))
            .map_or((None, None), |r| (r.request.clone(), r.transfer.clone()));
        let margin = 1.0 + self.catalog.planning().safety_stock;
        let short: Vec<(SkuId, i64)> = judged
            .ingredients
            .iter()
            .filter_map(|c| {
                let pack = self.catalog.sku(&c.sku).map_or(1, |s| s.pack);
                let want = (c.need as f64 * margin - 1e-9).ceil() as i64 - c.on_hand - c.due;
                (want > 0).then(|| (c.sku.clone(), round_up(want, pack)))
            })
            .collect();
        if short.is_empty() {
            return false;
        }
        let eta = self.kitchen_eta(now);
        if eta <= judged.from {
            // The kitchen can still deliver: one early line, raised once the
            // next delivery is the last before the day judged (any earlier
            // and the stock would wait for days).
            if request.is_some() || self.delivery_after(eta) <= judged.from {
                return false;
            }
            let reason = format!(
                "promotion {id} of {} from {}: {} short",
                promotion.dish,
                Timestamp(promotion.start),
                short.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", ")
            );
            let rq = self.early_lines(store, &short, reason, now, changes);
            self.link(store, id, Some(rq), None);
            return true;
        }
        if transfer.is_some() {
            return false;
        }
        // The kitchen cannot make it: the limiting ingredient from a store
        // that can give it.
        let Some((sku, qty)) = judged
            .ingredients
            .iter()
            .filter_map(|c| c.coverage().map(|x| (c, x)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .and_then(|(c, _)| short.iter().find(|(s, _)| *s == c.sku).cloned())
        else {
            return false;
        };
        let reason = format!(
            "promotion {id} of {}: {sku} short, and the central kitchen can deliver only at {}",
            promotion.dish,
            Timestamp(self.kitchen_eta(now))
        );
        if !self.propose(store, &sku, qty, Vec::new(), reason, now, changes) {
            return false;
        }
        let tr = DocId::transfer(self.chain.transfer_seq);
        self.link(store, id, None, Some(tr));
        true
    }

    /// Records the request or transfer raised for `store`'s readiness,
    /// creating the readiness when it is the first judgement.
    fn link(&mut self, store: &StoreId, id: &PromotionId, request: Option<DocId>, transfer: Option<DocId>) {
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        let entry = state.promotions.entry(id.clone()).or_insert_with(|| StoreReadiness {
            state: PromotionState::Scheduled,
            portions_per_day: 0.0,
            status: Readiness::Short,
            ingredients: Vec::new(),
            request: None,
            transfer: None,
            rev: 0,
            at: 0,
        });
        if request.is_some() {
            entry.request = request;
        }
        if transfer.is_some() {
            entry.transfer = transfer;
        }
    }

    /// Adds `lines` to the store's open request that the kitchen has not
    /// acknowledged yet, or raises a request of them; its id.
    fn early_lines(
        &mut self,
        store: &StoreId,
        lines: &[(SkuId, i64)],
        reason: String,
        now: Millis,
        changes: &mut Changes,
    ) -> DocId {
        let unit = |inv: &Inventory, sku: &SkuId| inv.catalog.sku(sku).map_or(BaseUnit::Pcs, |s| s.unit);
        let open = self
            .requests
            .values()
            .filter(|r| r.store == *store && r.state == RequestState::Open)
            .max_by_key(|r| r.created_at)
            .map(|r| r.id.clone());
        if let Some(rq) = open {
            let units: Vec<BaseUnit> = lines.iter().map(|(sku, _)| unit(self, sku)).collect();
            let bump = !changes.publish.contains(&Document::Request(rq.clone()));
            if let Some(r) = self.requests.get_mut(&rq) {
                for ((sku, qty), unit) in lines.iter().zip(units) {
                    match r.lines.iter_mut().find(|l| l.sku == *sku && !l.received) {
                        Some(line) => line.qty += qty,
                        None => r.lines.push(RequestLine {
                            sku: sku.clone(),
                            qty: *qty,
                            unit,
                            received: false,
                        }),
                    }
                }
                r.reason = format!("{}; {reason}", r.reason);
                r.updated_at = now;
                r.rev += u64::from(bump);
            }
            changes.request(rq.clone());
            return rq;
        }
        let request_lines = lines
            .iter()
            .map(|(sku, qty)| RequestLine {
                sku: sku.clone(),
                qty: *qty,
                unit: unit(self, sku),
                received: false,
            })
            .collect();
        let seq = match self.stores.get_mut(store) {
            Some(state) => {
                state.plan.replenishment.request_seq += 1;
                state.plan.replenishment.request_seq
            }
            None => 0,
        };
        changes.plan(store.clone());
        let id = DocId::request(store, seq);
        self.requests.insert(
            id.clone(),
            Request {
                id: id.clone(),
                store: store.clone(),
                lines: request_lines,
                state: RequestState::Open,
                reason,
                created_at: now,
                updated_at: now,
                rev: 1,
            },
        );
        changes.request(id.clone());
        id
    }

    /// A store a new plan leaves out: its readiness is cleared, with its
    /// alert.
    fn drop_readiness(&mut self, id: &PromotionId, store: &StoreId, dish: &DishId, now: Millis, changes: &mut Changes) {
        self.set_alert(
            store,
            AlertKind::PromotionAtRisk,
            id.as_str(),
            Subject::dish(dish),
            false,
            || format!("promotion {id} no longer runs in {store}"),
            now,
            changes,
        );
        if let Some(state) = self.stores.get_mut(store) {
            if state.promotions.remove(id).is_some() {
                changes.retire(Retired::Readiness {
                    store: store.clone(),
                    id: id.clone(),
                });
            }
        }
    }

    /// Promotions over for longer than they are shown: their documents
    /// are cleared (they stay on record in the broker's store).
    pub(crate) fn retire_promotions(&mut self, now: Millis, changes: &mut Changes) {
        let over: Vec<Promotion> = self.promotions.values().filter(|p| !p.is_shown(now)).cloned().collect();
        for p in over {
            for store in &p.stores {
                if let Some(state) = self.stores.get_mut(store) {
                    if state.promotions.remove(&p.id).is_some() {
                        changes.retire(Retired::Readiness {
                            store: store.clone(),
                            id: p.id.clone(),
                        });
                    }
                }
            }
            self.promotions.remove(&p.id);
            changes.retire(Retired::Promotion { id: p.id });
        }
    }

    /// A promotion, as persisted.
    pub fn promotion(&self, id: &PromotionId) -> Option<&Promotion> {
        self.promotions.get(id)
    }

    /// The promotions shown, by id.
    pub fn promotions(&self) -> impl Iterator<Item = &Promotion> {
        self.promotions.values()
    }

    /// A store's readiness for a promotion, as persisted.
    pub fn readiness(&self, store: &StoreId, id: &PromotionId) -> Option<&StoreReadiness> {
        self.stores.get(store)?.promotions.get(id)
    }

    /// The promotion's HQ document: every store's readiness, worst first.
    pub fn promotion_out(&self, id: &PromotionId) -> Option<PromotionOut> {
        let p = self.promotions.get(id)?;
        let mut stores: Vec<PromotionStoreOut> = p
            .stores
            .iter()
            .filter_map(|store| {
                let r = self.readiness(store, id)?;
                let limiting = r.limiting();
                Some(PromotionStoreOut {
                    store: store.clone(),
                    status: r.status,
                    coverage: limiting.map(|(_, x)| x),
                    limiting: limiting.map(|(c, _)| c.sku.clone()),
                })
            })
            .collect();
        stores.sort_by(|a, b| {
            b.status
                .cmp(&a.status)
                .then(
                    a.coverage
                        .unwrap_or(f64::INFINITY)
                        .total_cmp(&b.coverage.unwrap_or(f64::INFINITY)),
                )
                .then(a.store.cmp(&b.store))
        });
        Some(PromotionOut {
            id: p.id.clone(),
            dish: p.dish.clone(),
            state: p.state,
            start: Timestamp(p.start),
            end: Timestamp(p.end),
            uplift: p.uplift,
            portions_per_day: p.portions_per_day,
            by: p.by.clone(),
            note: p.note.clone(),
            stores,
            rev: p.rev,
            at: Timestamp(p.updated_at),
        })
    }

    /// A store's readiness document for a promotion.
    pub fn store_promotion_out(&self, store: &StoreId, id: &PromotionId) -> Option<StorePromotionOut> {
        let p = self.promotions.get(id)?;
        let r = self.readiness(store, id)?;
        let limiting = r.limiting();
        Some(StorePromotionOut {
            promotion: id.clone(),
            store: store.clone(),
            dish: p.dish.clone(),
            state: r.state,
            start: Timestamp(p.start),
            end: Timestamp(p.end),
            portions_per_day: (r.portions_per_day * 100.0).round() / 100.0,
            status: r.status,
            coverage: limiting.map(|(_, x)| x),
            limiting: limiting.map(|(c, _)| c.sku.clone()),
            ingredients: r
                .ingredients
                .iter()
                .map(|c| IngredientCoverOut {
                    sku: c.sku.clone(),
                    unit: self.catalog.sku(&c.sku).map_or(BaseUnit::Pcs, |s| s.unit),
                    need: c.need,
                    on_hand: c.on_hand,
                    due: c.due,
                    coverage: c.coverage(),
                })
                .collect(),
            request: r.request.clone(),
            transfer: r.transfer.clone(),
            rev: r.rev,
            at: Timestamp(r.at),
        })
    }
}

/// A readiness as people read it.
pub fn readiness_name(r: Readiness) -> &'static str {
    match r {
        Readiness::Ready => "ready",
        Readiness::AtRisk => "at risk",
        Readiness::Short => "short",
    }
}

/// A store's portions sold per dish: today's, and its last
/// [`super::movers::HISTORY_DAYS`] store-local days' (persisted as
/// `n/{store}`): the usual daily sales a promotion's uplift multiplies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailySales {
    /// The store-local day `today` counts (0 before any).
    pub day: i64,
    /// Portions sold today per dish (voids of today's sales taken back).
    pub today: BTreeMap<DishId, i64>,
    /// Past days, oldest first, each day once.
    pub days: Vec<(i64, BTreeMap<DishId, i64>)>,
}

impl DailySales {
    /// Starts day `day`: the day counted so far joins the past days.
    pub fn roll(&mut self, day: i64) {
        if self.day == day {
            return;
        }
        if self.day > 0 && self.day < day {
            let sold = std::mem::take(&mut self.today);
            self.days.retain(|(d, _)| *d != self.day);
            self.days.push((self.day, sold));
            self.days
                .retain(|(d, _)| *d > day - 1 - super::movers::HISTORY_DAYS as i64);
        }
        self.today.clear();
        self.day = day;
    }

    /// Adds `portions` (negative: a void) of `dish` to today.
    pub fn count(&mut self, dish: &DishId, portions: i64) {
        let n = self.today.entry(dish.clone()).or_insert(0);
        *n = (*n + portions).max(0);
    }

    /// The dish's mean daily portions over the past days kept; `None`
    /// with no whole day kept.
    pub fn per_day(&self, dish: &DishId) -> Option<f64> {
        if self.days.is_empty() {
            return None;
        }
        let sold: i64 = self.days.iter().filter_map(|(_, d)| d.get(dish)).sum();
        Some(sold as f64 / self.days.len() as f64)
    }
}

impl Inventory {
    /// Counts sold (positive) or voided (negative) portions in the day of
    /// `at`, when that is today (as use is counted: `count_use`).
    pub(crate) fn count_sold(
        &mut self,
        store: &StoreId,
        lines: &[(DishId, i64)],
        at: Millis,
        now: Millis,
        changes: &mut Changes,
    ) {
        let today = self.local_day(now);
        if self.local_day(at) != today {
            return;
        }
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        state.sold.roll(today);
        for (dish, portions) in lines {
            state.sold.count(dish, *portions);
        }
        changes.sold(store.clone());
    }
}
