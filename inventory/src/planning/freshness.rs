//! Freshness: a SKU's level is stale when the scale that keeps it is offline; presence of devices.

use std::collections::BTreeSet;

use dishsync_protocol::payload::AlertKind;
use dishsync_protocol::{DeviceId, Millis, SkuId, StoreId};
use serde::{Deserialize, Serialize};

use crate::changes::Changes;
use crate::inventory::{Inventory, StoreState};

use super::plan::*;

/// The feeding devices offline in one store, and what they feed: whether
/// a SKU's level there is stale.
pub(crate) struct Offline<'a> {
    offline: &'a BTreeSet<DeviceId>,
    feeds: Option<&'a std::collections::BTreeMap<DeviceId, Vec<SkuId>>>,
}

impl Offline<'_> {
    /// Whether a device feeding `sku` is offline.
    pub(crate) fn is_stale(&self, sku: &SkuId) -> bool {
        let Some(feeds) = self.feeds else {
            return false;
        };
        self.offline
            .iter()
            .any(|d| feeds.get(d).is_some_and(|skus| skus.contains(sku)))
    }
}

/// Freshness's slice of a store's plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Freshness {
    /// Feeding devices currently offline.
    pub offline: BTreeSet<DeviceId>,
}

impl Inventory {
    /// Whether a feeding device of `sku` in `store` is offline.
    pub fn is_stale(&self, store: &StoreId, sku: &SkuId) -> bool {
        let Some(state) = self.stores.get(store) else {
            return false;
        };
        self.stale_in(store, state).is_stale(sku)
    }

    /// What makes a SKU stale in `store`, whose state is at hand: the
    /// devices offline there and what each of them feeds.
    pub(crate) fn stale_in<'a>(&'a self, store: &StoreId, state: &'a StoreState) -> Offline<'a> {
        Offline {
            offline: &state.plan.freshness.offline,
            feeds: self.catalog.planning().feeds.get(store),
        }
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
        let was_offline = state.plan.freshness.offline.contains(device);
        if was_offline != online {
            return changes;
        }
        if online {
            state.plan.freshness.offline.remove(device);
        } else {
            state.plan.freshness.offline.insert(device.clone());
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
            || message,
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
}
