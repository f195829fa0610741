//! The cold chain: fridges and freezers whose failure spoils food.
//!
//! Each probe (`Planning::probes`) reports its temperature. Outside its
//! safe range for longer than its grace period — judged by the readings'
//! own stamps, and by the clock when readings stop coming while it is out
//! — the probe is in *fault*: `equipment_fault` is raised, and the SKUs it
//! keeps are `at_risk` on their levels, as are the dishes that use them,
//! until the kitchen decides. A fault stays when the temperature comes
//! back: the food may have spoiled meanwhile. The kitchen answers with one
//! input: *discard* books as waste (reason `equipment_failure`) exactly the
//! stock on hand of each SKU the fault holds, once — replenishment and
//! transfers follow as for any waste — or *keep* lifts the risk; either
//! way the decision and who took it are recorded, and the alert is
//! cleared; a probe still out of range then has a whole grace again before
//! the stock now in it is at risk. A probe that reports nothing for longer than it should raises
//! `probe_silent`, cleared by its next reading.
//!
//! A probe's state is persisted (`e/{store}/{probe}`) when it changes: a
//! breach begins or ends, a fault is raised or decided, silence begins or
//! ends — not at every reading in range. After a restart a probe counts as
//! heard at the restart.

use dishsync_protocol::payload::{ActionIn, AlertKind, ErrorCode, TemperatureIn};
use dishsync_protocol::topic::ProbeAction;
use dishsync_protocol::{DeviceId, EventId, Millis, SkuId, StoreId};
use serde::{Deserialize, Serialize};

use crate::changes::{Changes, Outcome};
use crate::inventory::Inventory;
use crate::rejection::{reject, Rejection};

use super::plan::Subject;

/// The waste reason a discard books.
pub const EQUIPMENT_FAILURE: &str = "equipment_failure";

/// A fault the kitchen has not decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// When the breach that caused it began.
    pub since: Millis,
    /// The SKUs it put at risk.
    pub skus: Vec<SkuId>,
}

/// What the kitchen decided on a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The decision's input id.
    pub id: EventId,
    /// Discarded (else kept).
    pub discarded: bool,
    /// Who decided.
    pub by: DeviceId,
    /// When.
    pub at: Millis,
}

/// A probe's state (persisted as `e/{store}/{probe}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeState {
    /// The latest reading's stamp (or the restart's).
    pub heard: Option<Millis>,
    /// Since when it has been outside its range, while it is.
    pub breach_since: Option<Millis>,
    /// The fault waiting for the kitchen.
    pub fault: Option<Fault>,
    /// Whether `probe_silent` is raised.
    pub silent: bool,
    /// The last decision on a fault.
    pub decided: Option<Decision>,
}

impl Inventory {
    /// Applies a probe's reading: `None` when it changes nothing that is
    /// kept (a reading in range of a probe in range), or from a device
    /// that is no probe of the store.
    pub(crate) fn apply_temperature(
        &mut self,
        store: &StoreId,
        device: &DeviceId,
        reading: &TemperatureIn,
        now: Millis,
    ) -> Result<Option<Outcome>, Rejection> {
        self.store_checked(store)?;
        if !reading.celsius.is_finite() || reading.celsius.abs() > 1_000.0 {
            return Err(reject(
                ErrorCode::InvalidField,
                format!("{} °C is no temperature", reading.celsius),
            ));
        }
        let at = reading.at.0;
        self.not_ahead(at, now)?;
        let Some(binding) = self.catalog.probe(store, device).cloned() else {
            return Ok(None);
        };
        let millicelsius = (reading.celsius * 1000.0).round() as i64;
        let outside = millicelsius < binding.min_millicelsius || millicelsius > binding.max_millicelsius;
        let mut changes = Changes::default();
        let Some(probes) = self.stores.get_mut(store).map(|s| &mut s.probes) else {
            return Ok(None);
        };
        let state = probes.entry(device.clone()).or_default();
        state.heard = Some(state.heard.map_or(at, |h| h.max(at)));
        let was_silent = std::mem::take(&mut state.silent);
        let mut changed = was_silent;
        match (outside, state.breach_since) {
            (true, None) => {
                state.breach_since = Some(at);
                changed = true;
            }
            (false, Some(_)) => {
                state.breach_since = None;
                changed = true;
            }
            _ => {}
        }
        if was_silent {
            self.set_alert(
                store,
                AlertKind::ProbeSilent,
                device.as_str(),
                Subject::device(device),
                false,
                || format!("{device} reports again"),
                now,
                &mut changes,
            );
        }
        self.judge_breach(store, device, at, now, &mut changes);
        if changed {
            changes.probe(store.clone(), device.clone());
        }
        self.bump_menus(now, &mut changes);
        Ok((!changes.is_empty()).then(|| Outcome {
            changes,
            ..Outcome::default()
        }))
    }

    /// A breach longer than the grace (as of `at`) becomes a fault.
    fn judge_breach(&mut self, store: &StoreId, device: &DeviceId, at: Millis, now: Millis, changes: &mut Changes) {
        let Some(binding) = self.catalog.probe(store, device).cloned() else {
            return;
        };
        let Some(state) = self.stores.get_mut(store).and_then(|s| s.probes.get_mut(device)) else {
            return;
        };
        let Some(since) = state.breach_since else { return };
        if state.fault.is_some() || at - since < binding.grace {
            return;
        }
        state.fault = Some(Fault {
            since,
            skus: binding.skus.clone(),
        });
        changes.probe(store.clone(), device.clone());
        let minutes = (at - since) / 60_000;
        let skus: Vec<&str> = binding.skus.iter().map(SkuId::as_str).collect();
        self.set_alert(
            store,
            AlertKind::EquipmentFault,
            device.as_str(),
            Subject::device(device),
            true,
            || {
                format!(
                    "{device} outside {}–{} °C for {minutes} min: {} at risk until discarded or kept",
                    binding.min_millicelsius as f64 / 1000.0,
                    binding.max_millicelsius as f64 / 1000.0,
                    skus.join(", ")
                )
            },
            now,
            changes,
        );
        self.flag_at_risk(store, &binding.skus, now, changes);
    }

    /// What time alone changes: a breach that outlasts its grace with no
    /// reading to say so, and a probe gone silent.
    pub(crate) fn watch_probes(&mut self, now: Millis, changes: &mut Changes) {
        let probes: Vec<(StoreId, DeviceId, Millis)> = self
            .catalog
            .stores()
            .flat_map(|s| {
                self.catalog
                    .probes(&s.id)
                    .map(|(device, b)| (s.id.clone(), device.clone(), b.silent_after))
            })
            .collect();
        for (store, device, silent_after) in probes {
            self.judge_breach(&store, &device, now, now, changes);
            let Some(state) = self.stores.get_mut(&store) else {
                continue;
            };
            let probe = state.probes.entry(device.clone()).or_insert_with(|| ProbeState {
                heard: Some(now),
                ..ProbeState::default()
            });
            let heard = *probe.heard.get_or_insert(now);
            if probe.silent || now - heard <= silent_after {
                continue;
            }
            probe.silent = true;
            changes.probe(store.clone(), device.clone());
            self.set_alert(
                &store,
                AlertKind::ProbeSilent,
                device.as_str(),
                Subject::device(&device),
                true,
                || format!("{device} has reported nothing for {} min", (now - heard) / 60_000),
                now,
                changes,
            );
        }
    }

    /// The kitchen's decision on the fault of probe `device`.
    pub(crate) fn apply_probe_action(
        &mut self,
        store: &StoreId,
        device: &DeviceId,
        action: ProbeAction,
        body: &ActionIn,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        self.store_checked(store)?;
        if self.catalog.probe(store, device).is_none() {
            return Err(reject(
                ErrorCode::UnknownDocument,
                format!("{device} is no probe of store {store}"),
            ));
        }
        let fault = self
            .stores
            .get(store)
            .and_then(|s| s.probes.get(device))
            .and_then(|p| p.fault.clone())
            .ok_or_else(|| {
                reject(
                    ErrorCode::InvalidTransition,
                    format!("{device} has no fault to decide on"),
                )
            })?;
        let mut outcome = Outcome::default();
        let discarded = action == ProbeAction::Discard;
        if discarded {
            for sku in &fault.skus {
                let on_hand = self.sku_state(store, sku).map_or(0, |s| s.ledger.qty());
                let unit = self.catalog.sku(sku).map(|s| s.unit);
                let (true, Some(unit)) = (on_hand > 0, unit) else {
                    continue;
                };
                let waste = dishsync_protocol::payload::StockEventIn {
                    id: body.id.clone(),
                    kind: dishsync_protocol::payload::StockKind::Waste,
                    qty: on_hand as f64,
                    unit: unit.into(),
                    at: dishsync_protocol::payload::Timestamp(now),
                    device: body.by.clone(),
                    reference: None,
                    reason: Some(EQUIPMENT_FAILURE.to_string()),
                };
                let booked = self.apply_stock(store, sku, &waste, now)?;
                outcome.changes.merge(booked.changes);
                outcome.entries.extend(booked.entries.into_iter().map(|mut line| {
                    line.reason = Some(EQUIPMENT_FAILURE.to_string());
                    line
                }));
            }
        }
        let Some(probe) = self.stores.get_mut(store).and_then(|s| s.probes.get_mut(device)) else {
            return Ok(outcome);
        };
        probe.fault = None;
        // Still out of range, it has a whole grace again before the stock
        // now in it is at risk: the kitchen dealt with what was.
        if probe.breach_since.is_some() {
            probe.breach_since = Some(now);
        }
        probe.decided = Some(Decision {
            id: body.id.clone(),
            discarded,
            by: body.by.clone(),
            at: now,
        });
        outcome.changes.probe(store.clone(), device.clone());
        self.set_alert(
            store,
            AlertKind::EquipmentFault,
            device.as_str(),
            Subject::device(device),
            false,
            || {
                format!(
                    "{device}: its stock {} by {}",
                    if discarded { "discarded" } else { "kept" },
                    body.by
                )
            },
            now,
            &mut outcome.changes,
        );
        // The discard's waste gave the menu its revision already, if it
        // changed a dish.
        let menu_bumped = outcome
            .changes
            .publish
            .contains(&crate::document::Document::Menu(store.clone()));
        self.flag_at_risk(store, &fault.skus, now, &mut outcome.changes);
        if !menu_bumped {
            self.bump_menus(now, &mut outcome.changes);
        }
        Ok(outcome)
    }

    /// Whether a fault of one of `store`'s probes holds `sku` at risk.
    pub fn at_risk(&self, store: &StoreId, sku: &SkuId) -> bool {
        self.stores.get(store).is_some_and(|s| {
            s.probes
                .values()
                .any(|p| p.fault.as_ref().is_some_and(|f| f.skus.contains(sku)))
        })
    }

    /// A probe's state, as persisted.
    pub fn probe_state(&self, store: &StoreId, device: &DeviceId) -> Option<&ProbeState> {
        self.stores.get(store)?.probes.get(device)
    }

    /// The levels of `skus` and the dishes using them changed their risk:
    /// a new revision of each not already changed by the same input (in
    /// `changes`), which then shows the risk with its other change.
    fn flag_at_risk(&mut self, store: &StoreId, skus: &[SkuId], now: Millis, changes: &mut Changes) {
        use crate::document::Document;
        let catalog = std::sync::Arc::clone(&self.catalog);
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        let mut dishes = std::collections::BTreeSet::new();
        for sku in skus {
            dishes.extend(catalog.dishes_using(store, sku).iter().cloned());
            if changes.publish.contains(&Document::Sku(store.clone(), sku.clone())) {
                continue;
            }
            if let Some(s) = state.skus.get_mut(sku) {
                s.rev += 1;
                s.at = now;
                changes.level(store.clone(), sku.clone());
            }
        }
        for dish in dishes {
            if changes.publish.contains(&Document::Dish(store.clone(), dish.clone())) {
                continue;
            }
            if let Some(d) = state.dishes.get_mut(&dish) {
                d.rev += 1;
                d.at = now;
                changes.dish(store.clone(), dish);
            }
        }
    }
}
