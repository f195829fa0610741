//! A new catalog while the chain runs ([`Inventory::reconfigure`]): what a
//! configuration reload does to the live state.
//!
//! A reload must leave the chain exactly as a restart with the new
//! configuration would: the current state is read back as a restore reads
//! it ([`Inventory::states`]) and restored against the new catalog, then
//! started (a new store books its opening stock; the condition pass runs
//! over every SKU and dish). On top of a restart, a running broker has
//! retained documents that subscribers already hold, so the outcome also
//! names what they must see: the catalog document of every store whose
//! catalog changed, the whole-menu document of a store whose menu changed,
//! and a cleared availability or level document for every dish or SKU a
//! store no longer has.

use std::collections::BTreeSet;
use std::sync::Arc;

use dishsync_protocol::{DishId, Millis, SkuId, StoreId};

use crate::catalog::Catalog;
use crate::changes::Outcome;
use crate::inventory::Inventory;
use crate::planning::Retired;
use crate::state::Restored;

impl Inventory {
    /// Every state this inventory holds, in the form a restore reads back
    /// from the store: `Inventory::restore(catalog, inv.states(), now)`
    /// rebuilds `inv`.
    pub fn states(&self) -> Vec<Restored> {
        let mut states = Vec::new();
        for (store, state) in &self.stores {
            for (sku, s) in &state.skus {
                states.push(Restored::Sku(store.clone(), sku.clone(), s.clone()));
            }
            for (dish, d) in &state.dishes {
                states.push(Restored::Dish(store.clone(), dish.clone(), d.clone()));
            }
            states.push(Restored::Menu(store.clone(), state.menu));
            states.push(Restored::Plan(store.clone(), state.plan.clone()));
            for (sku, v) in &state.variance {
                states.push(Restored::Variance(store.clone(), sku.clone(), v.clone()));
            }
            states.push(Restored::History(store.clone(), state.history.clone()));
            for (device, p) in &state.probes {
                states.push(Restored::Probe(store.clone(), device.clone(), p.clone()));
            }
            states.push(Restored::Sold(store.clone(), state.sold.clone()));
            for (id, r) in &state.promotions {
                states.push(Restored::Readiness(store.clone(), id.clone(), r.clone()));
            }
        }
        states.extend(self.promotions.values().cloned().map(Restored::Promotion));
        states.extend(self.requests.values().cloned().map(Restored::Request));
        states.extend(self.transfers.values().cloned().map(Restored::Transfer));
        states.push(Restored::Chain(self.chain));
        states
    }

    /// Runs on `catalog` from now on. Levels, sales history, overrides,
    /// requests and transfers of what stays are kept; what the catalog
    /// added starts as at a restart (a new store with its opening stock);
    /// dishes whose recipe changed are recomputed. The outcome holds the
    /// opening stock's ledger lines and every document to persist, publish
    /// or clear.
    pub fn reconfigure(&mut self, catalog: Arc<Catalog>, now: Millis) -> Outcome {
        let before: Vec<(StoreId, Option<_>, BTreeSet<DishId>, BTreeSet<SkuId>)> = self
            .stores
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    self.catalog_out(id, now),
                    s.dishes.keys().cloned().collect(),
                    s.skus.keys().cloned().collect(),
                )
            })
            .collect();
        let known: BTreeSet<StoreId> = self.stores.keys().cloned().collect();
        let (next, changes) = Inventory::restore(catalog, self.states(), now);
        *self = next;
        let mut outcome = self.start(now);
        outcome.changes.merge(changes);
        for (store, catalog_before, dishes_before, skus_before) in before {
            let Some(state) = self.stores.get(&store) else {
                // A store no longer in the chain: its documents go.
                retire(&mut outcome, &store, dishes_before, skus_before);
                continue;
            };
            let gone_dishes: Vec<DishId> = dishes_before
                .iter()
                .filter(|d| !state.dishes.contains_key(*d))
                .cloned()
                .collect();
            let gone_skus: Vec<SkuId> = skus_before
                .iter()
                .filter(|s| !state.skus.contains_key(*s))
                .cloned()
                .collect();
            let menu_changed = !gone_dishes.is_empty() || state.dishes.keys().any(|d| !dishes_before.contains(d));
            if menu_changed && !outcome.changes.publish.contains(&crate::Document::Menu(store.clone())) {
                if let Some(s) = self.stores.get_mut(&store) {
                    s.menu.rev += 1;
                    s.menu.at = now;
                }
                outcome.changes.menu(store.clone());
            }
            retire(&mut outcome, &store, gone_dishes, gone_skus);
            if self.catalog_out(&store, now) != catalog_before {
                outcome.changes.publish.insert(crate::Document::Catalog(store));
            }
        }
        // A store the catalog added: its catalog document is new.
        let added: Vec<StoreId> = self.stores.keys().filter(|s| !known.contains(*s)).cloned().collect();
        for store in added {
            outcome.changes.publish.insert(crate::Document::Catalog(store));
        }
        outcome
    }
}

/// Clears the documents of `dishes` and `skus` of `store`.
fn retire(
    outcome: &mut Outcome,
    store: &StoreId,
    dishes: impl IntoIterator<Item = DishId>,
    skus: impl IntoIterator<Item = SkuId>,
) {
    for dish in dishes {
        outcome.changes.retire(Retired::Dish {
            store: store.clone(),
            dish,
        });
    }
    for sku in skus {
        outcome.changes.retire(Retired::Sku {
            store: store.clone(),
            sku,
        });
    }
}
