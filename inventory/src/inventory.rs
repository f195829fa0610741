//! The live state of the whole chain ([`Inventory`]): stock, sales, voids
//! and overrides, and the availability they give. Planning's rules are
//! `impl Inventory` blocks of their own in `planning/`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dishsync_protocol::payload::{
    ActiveOverride, DishAvailabilityOut, DishStatus, ErrorCode, LevelOut, LevelState, MenuEntry, OverrideIn,
    OverrideStatus, SaleIn, StockEventIn, StockKind, StoreAvailabilityOut, Timestamp, WeightIn,
};
use dishsync_protocol::{DeviceId, DishId, DocId, EventId, Millis, PromotionId, Quantity, SkuId, StoreId};

use crate::catalog::Catalog;
use crate::changes::{Changes, Outcome};
use crate::input::Input;
use crate::ledger::{Applied, SkuLedger};
use crate::planning::{ChainPlan, Request, StorePlan, Transfer};
use crate::rejection::{check_text, reject, Rejection};
use crate::state::{DishState, EntryKind, LedgerEntry, MenuState, Override, Restored, SaleRecord, SkuState};

/// Most portions of one dish on one sale line.
pub const MAX_PORTIONS: u32 = 10_000;

#[derive(Debug, Clone)]
pub(crate) struct StoreState {
    pub(crate) skus: BTreeMap<SkuId, SkuState>,
    pub(crate) dishes: BTreeMap<DishId, DishState>,
    pub(crate) menu: MenuState,
    pub(crate) plan: StorePlan,
    pub(crate) variance: BTreeMap<SkuId, crate::planning::variance::VarianceState>,
    pub(crate) history: crate::planning::movers::UsageHistory,
    pub(crate) probes: BTreeMap<DeviceId, crate::planning::coldchain::ProbeState>,
    pub(crate) sold: crate::planning::promotion::DailySales,
    pub(crate) promotions: BTreeMap<PromotionId, crate::planning::promotion::StoreReadiness>,
}

impl StoreState {
    /// Starts store-local day `day`: the day before joins the store's
    /// history, and today's counters begin again.
    pub(crate) fn begin_day(&mut self, day: i64) {
        // Day 0 is the counters' start, before any day was seen.
        if self.plan.today.day > 0 && self.plan.today.day < day {
            self.history.keep(&self.plan.today);
        }
        self.sold.roll(day);
        self.plan.begin_day(day);
    }
}

/// The live state of the whole chain.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) stores: BTreeMap<StoreId, StoreState>,
    pub(crate) requests: BTreeMap<DocId, Request>,
    pub(crate) transfers: BTreeMap<DocId, Transfer>,
    pub(crate) promotions: BTreeMap<PromotionId, crate::planning::promotion::Promotion>,
    pub(crate) chain: ChainPlan,
    /// Stores that had no persisted state at restore: they open now, with
    /// their opening stock.
    pub(crate) opening: BTreeSet<StoreId>,
    /// Stores whose day rolled into their history since it was last
    /// persisted.
    pub(crate) rolled: BTreeSet<StoreId>,
    /// No 86 lapses before this (`None`: none has an `until`): a clock tick
    /// looks at the dishes only from then. It may be earlier than the
    /// soonest lapse (an 86 released early), never later.
    pub(crate) next_lapse: Option<Millis>,
}

/// The id an opening count is booked under in the ledger: `opening:{sku}`
/// (for a SKU id too long for that, its first 38 bytes and a hash).
pub fn opening_id(sku: &SkuId) -> Option<EventId> {
    let full = format!("opening:{sku}");
    if full.len() <= dishsync_protocol::ids::MAX_ID_LEN {
        return EventId::new(full).ok();
    }
    let hash = sku.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let head: String = sku.as_str().chars().take(38).collect();
    EventId::new(format!("opening:{head}:{hash:016x}")).ok()
}

/// The opening count of `qty` base units of `sku`, stamped `now`.
pub(crate) fn opening_count(sku: &SkuId, qty: i64, unit: dishsync_protocol::Unit, now: Millis) -> Option<StockEventIn> {
    Some(StockEventIn {
        id: opening_id(sku)?,
        kind: StockKind::Count,
        qty: qty as f64,
        unit,
        at: Timestamp(now),
        device: DeviceId::new("dishsync").ok()?,
        reference: None,
        reason: Some("opening stock".into()),
    })
}

pub(crate) fn level_state(qty: i64, reorder_point: i64) -> LevelState {
    match qty {
        q if q < 0 => LevelState::Negative,
        0 => LevelState::Out,
        q if q <= reorder_point => LevelState::Low,
        _ => LevelState::Ok,
    }
}

impl Inventory {
    /// A chain with every stock level at zero (and so every dish sold out),
    /// each document at revision 1 made at `now`.
    pub fn new(catalog: Arc<Catalog>, now: Millis) -> Inventory {
        Inventory::restore(catalog, Vec::new(), now).0
    }

    /// Rebuilds the chain from persisted states. States of SKUs, dishes and
    /// stores no longer in the catalog are dropped; those the catalog added
    /// start fresh. Every dish is recomputed against the current catalog (a
    /// recipe may have changed): the returned [`Changes`] name what differs
    /// from what was persisted, plus everything that started fresh.
    pub fn restore(
        catalog: Arc<Catalog>,
        restored: impl IntoIterator<Item = Restored>,
        now: Millis,
    ) -> (Inventory, Changes) {
        let mut stores: BTreeMap<StoreId, StoreState> = BTreeMap::new();
        let mut opening: BTreeSet<StoreId> = catalog.stores().map(|s| s.id.clone()).collect();
        let mut requests = BTreeMap::new();
        let mut transfers = BTreeMap::new();
        let mut promotions = BTreeMap::new();
        let mut readiness = Vec::new();
        let mut chain = ChainPlan::default();
        for store in catalog.stores() {
            stores.insert(
                store.id.clone(),
                StoreState {
                    skus: BTreeMap::new(),
                    dishes: BTreeMap::new(),
                    menu: MenuState { rev: 0, at: now },
                    plan: StorePlan::default(),
                    variance: BTreeMap::new(),
                    history: Default::default(),
                    probes: BTreeMap::new(),
                    sold: Default::default(),
                    promotions: BTreeMap::new(),
                },
            );
        }
        for r in restored {
            match r {
                Restored::Sku(store, sku, state) => {
                    opening.remove(&store);
                    if let (Some(s), Some(_)) = (stores.get_mut(&store), catalog.sku(&sku)) {
                        s.skus.insert(sku, state);
                    }
                }
                // Kept if still on the store's menu (below).
                Restored::Dish(store, dish, state) => {
                    if let Some(s) = stores.get_mut(&store) {
                        s.dishes.insert(dish, state);
                    }
                }
                Restored::Menu(store, menu) => {
                    if let Some(s) = stores.get_mut(&store) {
                        s.menu = menu;
                    }
                }
                Restored::Plan(store, plan) => {
                    if let Some(s) = stores.get_mut(&store) {
                        s.plan = plan;
                    }
                }
                // Heard at the restart at the latest: its readings in range
                // were not kept.
                Restored::Probe(store, device, mut state) => {
                    if let Some(s) = stores.get_mut(&store) {
                        if catalog.probe(&store, &device).is_some() {
                            state.heard = Some(state.heard.map_or(now, |h| h.max(now)));
                            s.probes.insert(device, state);
                        }
                    }
                }
                Restored::History(store, history) => {
                    if let Some(s) = stores.get_mut(&store) {
                        s.history = history;
                    }
                }
                Restored::Variance(store, sku, state) => {
                    if let (Some(s), Some(_)) = (stores.get_mut(&store), catalog.sku(&sku)) {
                        s.variance.insert(sku, state);
                    }
                }
                // Finished long ago: on record, no longer shown.
                Restored::Request(r) => {
                    if stores.contains_key(&r.store) && r.is_shown(now) {
                        requests.insert(r.id.clone(), r);
                    }
                }
                Restored::Transfer(t) => {
                    if stores.contains_key(&t.from) && stores.contains_key(&t.to) && t.is_shown(now) {
                        transfers.insert(t.id.clone(), t);
                    }
                }
                Restored::Sold(store, sold) => {
                    if let Some(s) = stores.get_mut(&store) {
                        s.sold = sold;
                    }
                }
                Restored::Promotion(p) => {
                    if p.is_shown(now) {
                        promotions.insert(p.id.clone(), p);
                    }
                }
                Restored::Readiness(store, id, r) => readiness.push((store, id, r)),
                Restored::Chain(c) => chain = c,
            }
        }
        for store in catalog.stores() {
            if let Some(s) = stores.get_mut(&store.id) {
                let menu: BTreeSet<&DishId> = store.menu.iter().collect();
                s.dishes.retain(|dish, _| menu.contains(dish));
            }
        }
        // A store's readiness for a promotion still shown, in a store the
        // promotion still names.
        for (store, id, r) in readiness {
            let named = promotions
                .get(&id)
                .is_some_and(|p: &crate::planning::promotion::Promotion| p.stores.contains(&store));
            if let (true, Some(s)) = (named, stores.get_mut(&store)) {
                s.promotions.insert(id, r);
            }
        }
        let mut changes = Changes::default();
        for store in catalog.stores() {
            let Some(state) = stores.get_mut(&store.id) else {
                continue;
            };
            for sku in catalog.skus() {
                state.skus.entry(sku.id.clone()).or_insert_with(|| {
                    changes.sku(store.id.clone(), sku.id.clone());
                    changes.level(store.id.clone(), sku.id.clone());
                    SkuState {
                        ledger: SkuLedger::default(),
                        rev: 1,
                        at: now,
                    }
                });
            }
        }
        let mut inventory = Inventory {
            catalog: Arc::clone(&catalog),
            stores,
            requests,
            transfers,
            promotions,
            chain,
            opening,
            rolled: BTreeSet::new(),
            next_lapse: None,
        };
        let today = inventory.local_day(now);
        for (id, state) in &mut inventory.stores {
            if state.plan.today.day == 0 {
                state.plan.today.day = today;
                changes.plan(id.clone());
            }
        }
        for store in catalog.stores() {
            for dish in &store.menu {
                inventory.recompute_dish(&store.id, dish, now, &mut changes);
            }
        }
        inventory.bump_menus(now, &mut changes);
        for (id, state) in &mut inventory.stores {
            if state.menu.rev == 0 {
                // A store with an empty menu still has a (empty) document.
                state.menu.rev = 1;
                changes.menu(id.clone());
            }
        }
        (inventory, changes)
    }

    /// What a start runs once the state is restored: every store opening
    /// for the first time books its opening stock (a count per SKU under
    /// [`opening_id`], stamped `now`), then the condition pass runs over
    /// every SKU and dish as after a change — a level already at or below
    /// its reorder point gets its request and alert, and a condition
    /// already met (an open request, an active alert) raises nothing again.
    pub fn start(&mut self, now: Millis) -> Outcome {
        let mut outcome = Outcome::default();
        let catalog = Arc::clone(&self.catalog);
        for store in std::mem::take(&mut self.opening) {
            let Some(def) = catalog.store(&store) else { continue };
            for (sku, params) in &def.stock {
                // A new store's level is 0 already: an opening of 0 books
                // nothing (and so sets no count that earlier-stamped
                // changes would fall before).
                let (Some(qty @ 1..), Some(sku_def)) = (params.opening, catalog.sku(sku)) else {
                    continue;
                };
                let Some(count) = opening_count(sku, qty, sku_def.unit.into(), now) else {
                    continue;
                };
                match self.apply_stock(&store, sku, &count, now) {
                    Ok(mut booked) => {
                        self.book_variance(&booked.entries, now, &mut booked.changes);
                        outcome.changes.merge(booked.changes);
                        outcome.entries.extend(booked.entries);
                    }
                    // The configuration was validated: nothing to refuse.
                    Err(_) => continue,
                }
            }
        }
        self.evaluate_all(now, &mut outcome.changes);
        self.finish(now, &mut outcome.changes);
        self.persist_rolled(&mut outcome.changes);
        outcome
    }

    /// Names the histories a new day changed, to persist.
    pub(crate) fn persist_rolled(&mut self, changes: &mut Changes) {
        for store in std::mem::take(&mut self.rolled) {
            changes.history(store.clone());
            changes.sold(store);
        }
    }

    /// The catalog this inventory runs on.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub(crate) fn store_checked(&self, store: &StoreId) -> Result<(), Rejection> {
        if self.stores.contains_key(store) {
            Ok(())
        } else {
            Err(reject(ErrorCode::UnknownStore, format!("unknown store {store}")))
        }
    }

    /// Applies one validated input at `now`: the outcome to persist and
    /// publish, `None` when there is nothing to apply (a scale reading within
    /// its deadband, or from a scale bound to no SKU), or why it is refused
    /// (nothing is applied then). `voided` is the record of the sale a void
    /// cancels ([`Input::voided_sale`]), as the shell found it.
    pub fn apply(
        &mut self,
        input: &Input,
        voided: Option<&SaleRecord>,
        now: Millis,
    ) -> Result<Option<Outcome>, Rejection> {
        let mut outcome = match input {
            Input::Reading {
                store,
                device,
                reading,
                id,
            } => self.apply_reading(store, device, reading, id, now),
            Input::Stock { store, sku, event } => self.apply_stock(store, sku, event, now).map(Some),
            Input::Sale { store, sale } => self.apply_sale(store, sale, now).map(Some),
            Input::Void { store, void } => self.apply_void(store, void, voided, now).map(Some),
            Input::Override { store, dish, ov } => self.apply_override(store, dish, ov, now).map(Some),
            Input::RequestAction {
                request, action, body, ..
            } => self.apply_request_action(request, *action, body, now).map(Some),
            Input::TransferAction {
                store,
                transfer,
                action,
                body,
            } => self
                .apply_transfer_action(store, transfer, *action, body, &body.id, now)
                .map(Some),
            Input::TransferRequest { store, body } => self.apply_transfer_request(store, body, now).map(Some),
            Input::Temperature {
                store, device, reading, ..
            } => self.apply_temperature(store, device, reading, now),
            Input::ProbeAction {
                store,
                device,
                action,
                body,
            } => self.apply_probe_action(store, device, *action, body, now).map(Some),
            Input::Promotion { id, plan } => self.apply_promotion_plan(id, plan, now).map(Some),
            Input::PromotionCancel { id, body } => self.apply_promotion_cancel(id, body, now).map(Some),
        }?;
        // Every line names who sent the input, its reason and reference,
        // and when it was applied.
        if let Some(outcome) = &mut outcome {
            // A stock event's own reason and reference; other inputs keep
            // what the core gave their lines (a discard's waste reason).
            let stock = match input {
                Input::Stock { event, .. } => Some((event.reason.clone(), event.reference.clone())),
                _ => None,
            };
            for entry in &mut outcome.entries {
                entry.by = input.actor();
                if let Some((reason, reference)) = &stock {
                    entry.reason.clone_from(reason);
                    entry.reference.clone_from(reference);
                }
                entry.recorded = Some(now);
            }
            self.book_variance(&outcome.entries, now, &mut outcome.changes);
            self.persist_rolled(&mut outcome.changes);
        }
        Ok(outcome)
    }

    /// Applies a stock event for `sku` in `store`.
    pub fn apply_stock(
        &mut self,
        store: &StoreId,
        sku: &SkuId,
        ev: &StockEventIn,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        self.store_checked(store)?;
        let sku_def = self
            .catalog
            .sku(sku)
            .ok_or_else(|| reject(ErrorCode::UnknownSku, format!("unknown SKU {sku}")))?;
        let base = Quantity {
            qty: ev.qty,
            unit: ev.unit,
        }
        .to_base(sku_def.unit)
        .map_err(|e| {
            let code = match e {
                dishsync_protocol::UnitError::WrongFamily { .. } | dishsync_protocol::UnitError::Unknown(_) => {
                    ErrorCode::WrongUnit
                }
                _ => ErrorCode::BadQuantity,
            };
            reject(code, e.to_string())
        })?;
        check_text("reason", &ev.reason)?;
        check_text("ref", &ev.reference)?;
        let kind = ev.kind;
        let signed = match kind {
            StockKind::Receive | StockKind::TransferIn if base > 0 => base,
            StockKind::Consume | StockKind::Waste | StockKind::TransferOut if base > 0 => -base,
            StockKind::Count if base >= 0 => base,
            StockKind::Adjust if base != 0 => base,
            StockKind::Count => {
                return Err(reject(ErrorCode::BadQuantity, "count must not be negative"));
            }
            StockKind::Adjust => return Err(reject(ErrorCode::BadQuantity, "adjust must not be zero")),
            _ => {
                return Err(reject(
                    ErrorCode::BadQuantity,
                    format!("{} needs a positive quantity", kind.as_str()),
                ))
            }
        };
        if kind == StockKind::Waste && ev.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(reject(ErrorCode::InvalidField, "waste needs a reason"));
        }
        let at = ev.at.0;
        self.not_ahead(at, now)?;
        let state = self.sku_mut(store, sku)?;
        let before = state.ledger.qty();
        let applied = if kind == StockKind::Count {
            state.ledger.count(at, signed).map_err(|too_old| {
                reject(
                    ErrorCode::InvalidField,
                    format!(
                        "count stamped {} is older than the deltas still on record (from {}); count again",
                        Timestamp(at),
                        Timestamp(too_old.oldest)
                    ),
                )
            })?
        } else {
            state.ledger.delta(at, signed)
        };
        let mut outcome = Outcome::default();
        outcome.entries.push(LedgerEntry::new(
            store,
            sku,
            &ev.id,
            EntryKind::Stock(kind.into()),
            signed,
            at,
            applied == Applied::Moved,
        ));
        if applied == Applied::Moved {
            match kind {
                StockKind::Waste => self.count_use(store, sku, base, true, at, now),
                StockKind::Consume => self.count_use(store, sku, base, false, at, now),
                _ => {}
            }
            if matches!(kind, StockKind::Waste | StockKind::Consume) {
                self.check_waste(store, sku, now, &mut outcome.changes);
            }
        }
        if let (StockKind::Receive, Some(reference)) = (kind, &ev.reference) {
            self.receive_against(store, sku, reference, now, &mut outcome.changes);
        }
        self.after_moves(store, &[(sku.clone(), before)], now, &mut outcome.changes);
        Ok(outcome)
    }

    /// Applies a scale reading. A stable reading from a scale bound to a SKU
    /// (`Planning::scales`) is a count of that SKU, recorded as `id`: the
    /// grams less the container's tare, rounded to whole pieces where the
    /// SKU is kept in pieces. A reading within the binding's deadband of the
    /// level is the scale's noise; an unstable reading, an unbound scale and
    /// a platform lighter than its tare (the container lifted off) say
    /// nothing about stock. Those change nothing: `Ok(None)`.
    pub fn apply_reading(
        &mut self,
        store: &StoreId,
        device: &DeviceId,
        reading: &WeightIn,
        id: &EventId,
        now: Millis,
    ) -> Result<Option<Outcome>, Rejection> {
        self.store_checked(store)?;
        let Some(binding) = self.catalog.scale(store, device).cloned() else {
            return Ok(None);
        };
        let net = reading.grams.saturating_sub(binding.tare_grams);
        if !reading.stable || net < 0 {
            return Ok(None);
        }
        let level = match binding.piece_grams {
            Some(piece) => (net + piece / 2) / piece,
            None => net,
        };
        let current = self.sku_state(store, &binding.sku).map(|s| s.ledger.qty());
        if current.is_some_and(|c| level.abs_diff(c) < binding.deadband.unsigned_abs()) {
            return Ok(None);
        }
        let Some(unit) = self.catalog.sku(&binding.sku).map(|s| s.unit) else {
            return Ok(None);
        };
        let count = StockEventIn {
            id: id.clone(),
            kind: StockKind::Count,
            qty: level as f64,
            unit: unit.into(),
            at: reading.at,
            device: device.clone(),
            reference: None,
            reason: None,
        };
        self.apply_stock(store, &binding.sku, &count, now).map(Some)
    }

    /// Applies a sale: depletes every ingredient by recipe × portions.
    pub fn apply_sale(&mut self, store: &StoreId, sale: &SaleIn, now: Millis) -> Result<Outcome, Rejection> {
        self.store_checked(store)?;
        if sale.void.is_some() {
            return Err(reject(
                ErrorCode::InvalidField,
                "a message has either lines (a sale) or void, not both",
            ));
        }
        let lines = sale
            .lines
            .as_ref()
            .ok_or_else(|| reject(ErrorCode::MissingField, "a sale needs lines (or void, for a void)"))?;
        if lines.is_empty() {
            return Err(reject(ErrorCode::InvalidField, "a sale needs at least one line"));
        }
        let at = sale
            .at
            .ok_or_else(|| reject(ErrorCode::MissingField, "a sale needs at"))?
            .0;
        self.not_ahead(at, now)?;
        if sale.device.is_none() {
            return Err(reject(ErrorCode::MissingField, "a sale needs device"));
        }
        let mut taken: BTreeMap<SkuId, i64> = BTreeMap::new();
        for line in lines {
            if !self.catalog.on_menu(store, &line.dish) {
                return Err(reject(
                    ErrorCode::UnknownDish,
                    format!("dish {} is not on the menu of store {store}", line.dish),
                ));
            }
            if line.portions == 0 || line.portions > MAX_PORTIONS {
                return Err(reject(
                    ErrorCode::BadQuantity,
                    format!("portions of {} must be 1 to {MAX_PORTIONS}", line.dish),
                ));
            }
            let dish = self
                .catalog
                .dish(&line.dish)
                .ok_or_else(|| reject(ErrorCode::UnknownDish, format!("unknown dish {}", line.dish)))?;
            for r in &dish.recipe {
                let amount = r.per_portion.saturating_mul(i64::from(line.portions));
                let total = taken.entry(r.sku.clone()).or_insert(0);
                *total = total.saturating_add(amount);
            }
        }
        let at = if sale.guarded {
            self.guard(store, lines, &taken)?;
            // Decided now, so it takes from the stock as it is now (also
            // when stamped before the latest count).
            at.max(now)
        } else {
            at
        };
        let taken: Vec<(SkuId, i64)> = taken.into_iter().collect();
        let deltas: Vec<(SkuId, i64)> = taken.iter().map(|(sku, n)| (sku.clone(), -n)).collect();
        let portions: Vec<(DishId, i64)> = lines.iter().map(|l| (l.dish.clone(), i64::from(l.portions))).collect();
        let mut changes = Changes::default();
        self.record_portions(store, &portions, at, &mut changes);
        self.count_sold(store, &portions, at, now, &mut changes);
        for (sku, n) in &taken {
            self.count_use(store, sku, *n, false, at, now);
        }
        let mut outcome = self.move_stock(store, &sale.id, EntryKind::Sale, at, &deltas, now)?;
        outcome.changes.merge(changes);
        outcome.sale = Some((
            sale.id.clone(),
            SaleRecord {
                at,
                lines: lines.iter().map(|l| (l.dish.clone(), l.portions)).collect(),
                taken,
                voided_by: None,
            },
        ));
        Ok(outcome)
    }

    /// Refuses a stamp further ahead of `now` than the chain allows: a
    /// count from a fast clock would hold the level for hours (every change
    /// stamped now falls before it).
    pub(crate) fn not_ahead(&self, at: Millis, now: Millis) -> Result<(), Rejection> {
        let skew = i64::from(self.catalog.planning().max_clock_skew_seconds) * 1000;
        if at > now.saturating_add(skew) {
            return Err(reject(
                ErrorCode::ClockAhead,
                format!(
                    "stamped {} but the broker's clock says {}: more than {} s ahead (check the device's clock)",
                    Timestamp(at),
                    Timestamp(now),
                    skew / 1000
                ),
            ));
        }
        Ok(())
    }

    /// The check of a guarded sale: every SKU holds what the sale takes
    /// (lines sharing an ingredient counted together) and no dish of it is
    /// 86ed; otherwise `insufficient_stock` with each dish's portions left.
    pub(crate) fn guard(
        &self,
        store: &StoreId,
        lines: &[dishsync_protocol::payload::SaleLine],
        taken: &BTreeMap<SkuId, i64>,
    ) -> Result<(), Rejection> {
        let level = |sku: &SkuId| self.sku_state(store, sku).map_or(0, |s| s.ledger.qty().max(0));
        let short_sku = taken.iter().any(|(sku, n)| *n > level(sku));
        let eighty_sixed = lines
            .iter()
            .any(|l| self.dish_state(store, &l.dish).is_some_and(|d| d.override_.is_some()));
        if !short_sku && !eighty_sixed {
            return Ok(());
        }
        let mut left = BTreeMap::new();
        let mut words = Vec::new();
        for line in lines {
            let portions = match self.dish_state(store, &line.dish) {
                Some(d) if d.override_.is_none() => d.portions,
                _ => 0,
            };
            left.insert(line.dish.clone(), portions);
            words.push(format!("{} {portions} left ({} asked)", line.dish, line.portions));
        }
        Err(Rejection {
            code: ErrorCode::InsufficientStock,
            message: format!("not enough for this sale: {}", words.join(", ")),
            portions_left: Some(left),
        })
    }

    /// Applies a void of the sale described by `record` (looked up by the
    /// caller; `None` when no such sale exists): restores exactly what it took.
    pub fn apply_void(
        &mut self,
        store: &StoreId,
        void: &SaleIn,
        record: Option<&SaleRecord>,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        self.store_checked(store)?;
        let sale_id = void
            .void
            .as_ref()
            .ok_or_else(|| reject(ErrorCode::InvalidField, "a void needs void"))?;
        if void.lines.is_some() {
            return Err(reject(
                ErrorCode::InvalidField,
                "a message has either lines (a sale) or void, not both",
            ));
        }
        let record = record.ok_or_else(|| reject(ErrorCode::BadVoid, format!("no sale {sale_id} to void")))?;
        if let Some(by) = &record.voided_by {
            return Err(reject(
                ErrorCode::BadVoid,
                format!("sale {sale_id} was already voided by {by}"),
            ));
        }
        let at = void.at.map_or(now, |t| t.0);
        self.not_ahead(at, now)?;
        let portions: Vec<(DishId, i64)> = record.lines.iter().map(|(d, p)| (d.clone(), -i64::from(*p))).collect();
        let mut changes = Changes::default();
        self.record_portions(store, &portions, at, &mut changes);
        self.count_sold(store, &portions, record.at, now, &mut changes);
        // Taken back from the day the sale was counted in.
        for (sku, n) in &record.taken {
            self.count_use(store, sku, -n, false, record.at, now);
        }
        let mut outcome = self.move_stock(store, &void.id, EntryKind::Void, at, &record.taken, now)?;
        outcome.changes.merge(changes);
        let mut updated = record.clone();
        updated.voided_by = Some(void.id.clone());
        outcome.sale = Some((sale_id.clone(), updated));
        Ok(outcome)
    }

    pub(crate) fn move_stock(
        &mut self,
        store: &StoreId,
        event: &EventId,
        kind: EntryKind,
        at: Millis,
        deltas: &[(SkuId, i64)],
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        // Check every SKU before touching any: a rejection changes nothing.
        for (sku, _) in deltas {
            self.sku_mut(store, sku)?;
        }
        let mut outcome = Outcome::default();
        let mut moved = Vec::new();
        for &(ref sku, delta) in deltas {
            let ledger = &mut self.sku_mut(store, sku)?.ledger;
            let before = ledger.qty();
            let applied = ledger.delta(at, delta);
            outcome.entries.push(LedgerEntry::new(
                store,
                sku,
                event,
                kind,
                delta,
                at,
                applied == Applied::Moved,
            ));
            moved.push((sku.clone(), before));
        }
        self.after_moves(store, &moved, now, &mut outcome.changes);
        Ok(outcome)
    }

    /// Applies a chef's 86 or its release.
    pub fn apply_override(
        &mut self,
        store: &StoreId,
        dish: &DishId,
        ov: &OverrideIn,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        self.store_checked(store)?;
        if !self.catalog.on_menu(store, dish) {
            return Err(reject(
                ErrorCode::UnknownDish,
                format!("dish {dish} is not on the menu of store {store}"),
            ));
        }
        check_text("note", &ov.note)?;
        let new = match ov.status {
            OverrideStatus::SoldOut => {
                if let Some(until) = ov.until {
                    if until.0 <= now {
                        return Err(reject(ErrorCode::InvalidField, format!("until {until} is in the past")));
                    }
                }
                Some(Override {
                    by: ov.by.clone(),
                    until: ov.until.map(|t| t.0),
                    note: ov.note.clone(),
                })
            }
            OverrideStatus::Auto if ov.until.is_some() => {
                return Err(reject(ErrorCode::InvalidField, "until applies to sold_out only"));
            }
            OverrideStatus::Auto => None,
        };
        if self.dish_state(store, dish).is_none() {
            return Err(reject(ErrorCode::UnknownDish, format!("unknown dish {dish}")));
        }
        let mut outcome = Outcome::default();
        self.recompute_dish_with(store, dish, Some(new), now, &mut outcome.changes);
        self.finish(now, &mut outcome.changes);
        Ok(outcome)
    }

    /// Lapses every 86 whose `until` has passed.
    pub fn expire_overrides(&mut self, now: Millis) -> Changes {
        // Every 100 ms in the shell, over 160,000 dishes at 2,000 stores:
        // only once one may have lapsed.
        if self.next_lapse.is_none_or(|at| at > now) {
            return Changes::default();
        }
        let mut lapsed = Vec::new();
        let mut next_lapse: Option<Millis> = None;
        for (store_id, store) in &self.stores {
            for (dish_id, dish) in &store.dishes {
                match dish.override_.as_ref().and_then(|o| o.until) {
                    Some(until) if until <= now => lapsed.push((store_id.clone(), dish_id.clone())),
                    Some(until) => next_lapse = Some(next_lapse.map_or(until, |n| n.min(until))),
                    None => {}
                }
            }
        }
        self.next_lapse = next_lapse;
        let mut changes = Changes::default();
        for (store, dish) in lapsed {
            self.recompute_dish_with(&store, &dish, Some(None), now, &mut changes);
        }
        self.finish(now, &mut changes);
        changes
    }

    pub(crate) fn sku_mut(&mut self, store: &StoreId, sku: &SkuId) -> Result<&mut SkuState, Rejection> {
        self.stores
            .get_mut(store)
            .and_then(|s| s.skus.get_mut(sku))
            .ok_or_else(|| reject(ErrorCode::UnknownSku, format!("unknown SKU {sku}")))
    }

    /// [`Inventory::touch_levels`], then the end-of-operation pass.
    pub(crate) fn after_moves(&mut self, store: &StoreId, before: &[(SkuId, i64)], now: Millis, changes: &mut Changes) {
        self.touch_levels(store, before, now, changes);
        self.finish(now, changes);
    }

    /// The end of every public operation: new menu revisions, then the
    /// planning pass over what changed.
    pub(crate) fn finish(&mut self, now: Millis, changes: &mut Changes) {
        self.bump_menus(now, changes);
        self.plan(now, changes);
    }

    /// Given each touched SKU with its level before the input, bumps the
    /// level documents whose quantity changed and recomputes the dishes that
    /// use them. A change that moved nothing (stamped before the latest
    /// count, a count equal to the level) publishes nothing.
    pub(crate) fn touch_levels(
        &mut self,
        store: &StoreId,
        before: &[(SkuId, i64)],
        now: Millis,
        changes: &mut Changes,
    ) {
        let catalog = Arc::clone(&self.catalog);
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        let mut dishes: BTreeSet<&DishId> = BTreeSet::new();
        for (sku, qty_before) in before {
            if let Some(s) = state.skus.get_mut(sku) {
                changes.sku(store.clone(), sku.clone());
                if s.ledger.qty() != *qty_before {
                    s.rev += 1;
                    s.at = now;
                    changes.level(store.clone(), sku.clone());
                    dishes.extend(catalog.dishes_using(store, sku));
                }
            }
        }
        for dish in dishes {
            self.recompute_dish(store, dish, now, changes);
        }
    }

    /// Recomputes one dish; bumps its revision when anything visible changed.
    pub(crate) fn recompute_dish(&mut self, store: &StoreId, dish_id: &DishId, now: Millis, changes: &mut Changes) {
        self.recompute_dish_with(store, dish_id, None, now, changes);
    }

    /// Recomputes one dish with a new override (`Some(None)`: released),
    /// or its current one (`None`). The override is compared with the one
    /// the dish had, so an 86 of a dish already sold out by stock is a
    /// change like any other.
    pub(crate) fn recompute_dish_with(
        &mut self,
        store: &StoreId,
        dish_id: &DishId,
        new_override: Option<Option<Override>>,
        now: Millis,
        changes: &mut Changes,
    ) {
        let Some(dish) = self.catalog.dish(dish_id) else {
            return;
        };
        let Some(state) = self.stores.get(store) else {
            return;
        };
        let mut portions: Option<(u64, &SkuId)> = None;
        for line in &dish.recipe {
            let qty = state.skus.get(&line.sku).map_or(0, |s| s.ledger.qty());
            let can = (qty.max(0) / line.per_portion) as u64;
            if portions.is_none_or(|(p, _)| can < p) {
                portions = Some((can, &line.sku));
            }
        }
        let (portions, limited_by) = portions.map_or((0, None), |(p, s)| (p, Some(s.clone())));
        let offline = self.stale_in(store, state);
        let stale = dish.recipe.iter().any(|l| offline.is_stale(&l.sku));
        let sellout_eta = self.eta_at(self.rate_in(state, dish_id, now), portions, now);
        let predicted = self.within_horizon(sellout_eta, now);
        let current = state.dishes.get(dish_id);
        let override_ = new_override.unwrap_or_else(|| current.and_then(|d| d.override_.clone()));
        if let Some(until) = override_.as_ref().and_then(|o| o.until) {
            self.next_lapse = Some(self.next_lapse.map_or(until, |n| n.min(until)));
        }
        let status = if override_.is_some() || portions == 0 {
            DishStatus::SoldOut
        } else if portions <= dish.low_mark || predicted {
            DishStatus::Low
        } else {
            DishStatus::Available
        };
        let unchanged = current.is_some_and(|d| {
            d.portions == portions
                && d.limited_by == limited_by
                && d.status == status
                && d.override_ == override_
                && d.sellout_eta == sellout_eta
                && d.stale == stale
        });
        if unchanged {
            return;
        }
        let rev = current.map_or(0, |d| d.rev) + 1;
        let next = DishState {
            portions,
            limited_by,
            status,
            override_,
            sellout_eta,
            stale,
            rev,
            at: now,
        };
        if let Some(state) = self.stores.get_mut(store) {
            state.dishes.insert(dish_id.clone(), next);
        }
        changes.dish(store.clone(), dish_id.clone());
    }

    /// Gives every store whose dishes changed a new menu revision. Called
    /// once at the end of each public operation.
    pub(crate) fn bump_menus(&mut self, now: Millis, changes: &mut Changes) {
        let touched: BTreeSet<StoreId> = changes.dishes().map(|(s, _)| s.clone()).collect();
        for store in touched {
            if let Some(s) = self.stores.get_mut(&store) {
                s.menu.rev += 1;
                s.menu.at = now;
                changes.menu(store);
            }
        }
    }

    /// A SKU's persisted state.
    pub fn sku_state(&self, store: &StoreId, sku: &SkuId) -> Option<&SkuState> {
        self.stores.get(store)?.skus.get(sku)
    }

    /// A dish's persisted state.
    pub fn dish_state(&self, store: &StoreId, dish: &DishId) -> Option<&DishState> {
        self.stores.get(store)?.dishes.get(dish)
    }

    /// A store's menu document state.
    pub fn menu_state(&self, store: &StoreId) -> Option<MenuState> {
        self.stores.get(store).map(|s| s.menu)
    }

    /// The retained level document of a SKU.
    pub fn level_out(&self, store: &StoreId, sku: &SkuId) -> Option<LevelOut> {
        let state = self.sku_state(store, sku)?;
        let params = self.catalog.store(store)?.stock.get(sku)?;
        let unit = self.catalog.sku(sku)?.unit;
        let qty = state.ledger.qty();
        Some(LevelOut {
            store: store.clone(),
            sku: sku.clone(),
            qty,
            unit,
            reorder_point: params.reorder_point,
            par: params.par,
            state: level_state(qty, params.reorder_point),
            stale: self.is_stale(store, sku),
            at_risk: self.at_risk(store, sku),
            rev: state.rev,
            at: Timestamp(state.at),
        })
    }

    /// The retained availability document of a dish.
    pub fn dish_out(&self, store: &StoreId, dish: &DishId) -> Option<DishAvailabilityOut> {
        let state = self.dish_state(store, dish)?;
        Some(menu_entry(state, self.dish_at_risk(store, dish)).into_dish(store.clone(), dish.clone()))
    }

    /// The retained catalog document of a store, published at `now` (its
    /// `rev`: the catalog changes only with the configuration, read at a
    /// start, and each start's time is later than the last).
    pub fn catalog_out(&self, store: &StoreId, now: Millis) -> Option<dishsync_protocol::payload::CatalogOut> {
        use dishsync_protocol::payload::{CatalogDish, CatalogOut, CatalogSku};
        let def = self.catalog.store(store)?;
        let dishes = def
            .menu
            .iter()
            .enumerate()
            .filter_map(|(i, dish)| {
                let d = self.catalog.dish(dish)?;
                Some(CatalogDish {
                    dish: dish.clone(),
                    name: d.name.clone(),
                    category: d.category.clone(),
                    order: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    price: d.price.clone(),
                })
            })
            .collect();
        let skus = def
            .stock
            .keys()
            .filter_map(|sku| {
                let s = self.catalog.sku(sku)?;
                Some(CatalogSku {
                    sku: sku.clone(),
                    name: s.name.clone(),
                    unit: s.unit,
                })
            })
            .collect();
        let offset = self.catalog.planning().utc_offset_minutes;
        let sign = if offset < 0 { '-' } else { '+' };
        let minutes = offset.unsigned_abs();
        Some(CatalogOut {
            store: store.clone(),
            name: def.name.clone(),
            utc_offset: format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60),
            training: def.training,
            dishes,
            skus,
            rev: u64::try_from(now).unwrap_or_default(),
            at: Timestamp(now),
        })
    }

    /// Whether a SKU of `dish`'s recipe is at risk in `store`.
    fn dish_at_risk(&self, store: &StoreId, dish: &DishId) -> bool {
        self.catalog
            .dish(dish)
            .is_some_and(|d| d.recipe.iter().any(|line| self.at_risk(store, &line.sku)))
    }

    /// The retained whole-menu document of a store.
    pub fn menu_out(&self, store: &StoreId) -> Option<StoreAvailabilityOut> {
        let state = self.stores.get(store)?;
        let dishes = state
            .dishes
            .iter()
            .map(|(id, d)| (id.clone(), menu_entry(d, self.dish_at_risk(store, id))))
            .collect();
        Some(StoreAvailabilityOut {
            store: store.clone(),
            rev: state.menu.rev,
            at: Timestamp(state.menu.at),
            dishes,
        })
    }
}

/// A dish's state as the documents show it.
pub(crate) fn menu_entry(state: &DishState, at_risk: bool) -> MenuEntry {
    MenuEntry {
        status: state.status,
        portions: state.portions,
        limited_by: state.limited_by.clone(),
        override_: state.override_.as_ref().map(|o| ActiveOverride {
            by: o.by.clone(),
            until: o.until.map(Timestamp),
            note: o.note.clone(),
        }),
        sellout_eta: state.sellout_eta.map(Timestamp),
        stale: state.stale,
        at_risk,
        rev: state.rev,
        at: Timestamp(state.at),
    }
}
