//! Alerts: raised once when a condition starts, cleared once when it ends.

use std::collections::BTreeMap;

use dishsync_protocol::payload::{AlertKind, AlertOut, AlertState, Timestamp};
use dishsync_protocol::{Millis, StoreId};
use serde::{Deserialize, Serialize};

use crate::changes::Changes;
use crate::inventory::Inventory;

use super::plan::*;

/// The alerts' slice of a store's plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertBook {
    /// Last alert number of the store.
    pub seq: u64,
    /// Active alerts: (kind, subject) → alert id.
    pub active: BTreeMap<(AlertKind, String), String>,
}

impl Inventory {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn set_alert(
        &mut self,
        store: &StoreId,
        kind: AlertKind,
        key: &str,
        subject: Subject,
        on: bool,
        message: impl FnOnce() -> String,
        now: Millis,
        changes: &mut Changes,
    ) {
        let Some(state) = self.stores.get_mut(store) else {
            return;
        };
        let slot = (kind, key.to_string());
        let active = state.plan.alerts.active.get(&slot).cloned();
        let (id, alert_state, message) = match (on, active) {
            (true, None) => {
                state.plan.alerts.seq += 1;
                let id = format!("al-{store}-{}", state.plan.alerts.seq);
                state.plan.alerts.active.insert(slot, id.clone());
                (id, AlertState::Raised, message())
            }
            (false, Some(id)) => {
                state.plan.alerts.active.remove(&slot);
                (id, AlertState::Cleared, format!("cleared: {}", message()))
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
}
