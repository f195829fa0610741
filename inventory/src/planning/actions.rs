//! Actions on requests and transfers — the central kitchen's and the stores' — what a delivery or a transfer books, and the day's use and waste it counts (with the waste-spike alert).

use std::collections::BTreeMap;

use dishsync_protocol::payload::{ActionIn, AlertKind, ErrorCode, RequestState, TransferRequestIn, TransferState};
use dishsync_protocol::topic::{RequestAction, TransferAction};
use dishsync_protocol::{DocId, EventId, Millis, Quantity, SkuId, StoreId};
use serde::{Deserialize, Serialize};

use crate::changes::{Changes, Outcome};
use crate::inventory::Inventory;
use crate::rejection::{check_text, reject, Rejection};
use crate::state::{EntryKind, LedgerEntry, StockKindCode};

use super::plan::*;

/// Today's use and waste: a store's plan's slice for the waste ratio and
/// the waste-spike alert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Today {
    /// The store-local day the counters are for.
    pub day: i64,
    /// Wasted today per SKU, base units.
    pub waste: BTreeMap<SkuId, i64>,
    /// Used today (sales, consumption) per SKU, base units.
    pub used: BTreeMap<SkuId, i64>,
}

impl Inventory {
    /// The central kitchen acts on a replenishment request.
    pub fn apply_request_action(
        &mut self,
        id: &DocId,
        action: RequestAction,
        body: &ActionIn,
        now: Millis,
    ) -> Result<Outcome, Rejection> {
        check_text("note", &body.note)?;
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
        check_text("note", &body.note)?;
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
    pub(crate) fn book(
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
        outcome.entries.push(LedgerEntry::new(
            store,
            sku,
            event,
            EntryKind::Stock(kind),
            delta,
            now,
            applied == crate::ledger::Applied::Moved,
        ));
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
        let rolled = state.plan.today.day != today;
        if rolled {
            // The first change of a new day, before the tick saw it.
            state.begin_day(today);
        }
        let counters = if waste {
            &mut state.plan.today.waste
        } else {
            &mut state.plan.today.used
        };
        *counters.entry(sku.clone()).or_insert(0) += amount;
        if rolled {
            self.rolled.insert(store.clone());
        }
    }

    /// Raises or clears `waste_spike` for `sku`.
    pub(crate) fn check_waste(&mut self, store: &StoreId, sku: &SkuId, now: Millis, changes: &mut Changes) {
        let Some(state) = self.stores.get(store) else { return };
        let waste = state.plan.today.waste.get(sku).copied().unwrap_or(0);
        let used = state.plan.today.used.get(sku).copied().unwrap_or(0);
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
            || msg,
            now,
            changes,
        );
    }
}
