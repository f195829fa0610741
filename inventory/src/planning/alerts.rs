//! Alerts: raised once when a condition starts, cleared once when it ends.

use super::*;

impl Inventory {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn set_alert(
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
}
