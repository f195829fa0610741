//! Rendering: the messages a group's changes publish, computed from the
//! inventory. Pure — no I/O, no lock, no clock — so what a group will
//! publish is decided with the group and sent only after its commit.

use dishsync_inventory::{Changes, Inventory, Rejection, Retired};
use dishsync_protocol::payload::{AckOut, ErrorOut};
use dishsync_protocol::{DeviceId, DocId, EventId, Millis, StoreId, Topic};

use crate::outbound::Message;

/// Where a request is retained: under its store and for HQ.
fn request_topics(id: &DocId, store: &StoreId) -> [Topic; 2] {
    [
        Topic::StoreRequest {
            store: store.clone(),
            id: id.clone(),
        },
        Topic::HqRequest { id: id.clone() },
    ]
}

/// Where a transfer is retained: under both stores.
fn transfer_topics(id: &DocId, from: &StoreId, to: &StoreId) -> [Topic; 2] {
    [from, to].map(|store| Topic::Transfer {
        store: store.clone(),
        id: id.clone(),
    })
}

/// Every document of `changes` from `inv`: levels, dish availability,
/// requests (under the store and HQ), transfers (under both stores), the
/// clearing of retired ones, and alerts. Menu and summary documents are
/// throttled by the caller.
pub fn changes(inv: &Inventory, changes: &Changes) -> Vec<Message> {
    let mut out = Vec::new();
    for (store, sku) in &changes.levels {
        if let Some(doc) = inv.level_out(store, sku) {
            let topic = Topic::StockLevel {
                store: store.clone(),
                sku: sku.clone(),
            };
            out.extend(Message::json(topic, &doc, true));
        }
    }
    for (store, dish) in &changes.dishes {
        if let Some(doc) = inv.dish_out(store, dish) {
            let topic = Topic::DishAvailability {
                store: store.clone(),
                dish: dish.clone(),
            };
            out.extend(Message::json(topic, &doc, true));
        }
    }
    for id in &changes.requests {
        if let Some(doc) = inv.request_out(id) {
            for topic in request_topics(id, &doc.store) {
                out.extend(Message::json(topic, &doc, true));
            }
        }
    }
    for id in &changes.transfers {
        if let Some(doc) = inv.transfer_out(id) {
            for topic in transfer_topics(id, &doc.from, &doc.to) {
                out.extend(Message::json(topic, &doc, true));
            }
        }
    }
    // Shown long enough: an empty retained message clears a finished
    // document for every later subscriber (it stays on record in sled).
    for retired in &changes.retired {
        let topics = match retired {
            Retired::Request { id, store } => request_topics(id, store),
            Retired::Transfer { id, from, to } => transfer_topics(id, from, to),
        };
        out.extend(topics.map(|topic| Message::new(topic, Vec::new(), true)));
    }
    for (store, alert) in &changes.alerts {
        out.extend(Message::json(Topic::Alerts { store: store.clone() }, alert, false));
    }
    out
}

/// A store's HQ summary.
pub fn summary(inv: &Inventory, store: &StoreId, now: Millis) -> Option<Message> {
    let doc = inv.summary_out(store, now)?;
    Message::json(Topic::Summary { store: store.clone() }, &doc, true)
}

/// A store's catalog (names, categories, order, prices).
pub fn catalog(inv: &Inventory, store: &StoreId, now: Millis) -> Option<Message> {
    let doc = inv.catalog_out(store, now)?;
    Message::json(Topic::Catalog { store: store.clone() }, &doc, true)
}

/// A store's whole-menu document.
pub fn menu(inv: &Inventory, store: &StoreId) -> Option<Message> {
    let doc = inv.menu_out(store)?;
    Message::json(Topic::StoreAvailability { store: store.clone() }, &doc, true)
}

/// Every retained document of the chain: each SKU's level, each dish's
/// availability, the requests and transfers shown, and each store's
/// catalog, menu and summary.
pub fn everything(inv: &Inventory, now: Millis) -> Vec<Message> {
    let mut all = Changes::default();
    let catalog = inv.catalog().clone();
    for store in catalog.stores() {
        for sku in catalog.skus() {
            all.levels.insert((store.id.clone(), sku.id.clone()));
        }
        for dish in &store.menu {
            all.dishes.insert((store.id.clone(), dish.clone()));
        }
    }
    let (requests, transfers) = inv.documents();
    all.requests.extend(requests);
    all.transfers.extend(transfers);
    let mut out = changes(inv, &all);
    for store in catalog.stores() {
        out.extend(self::catalog(inv, &store.id, now));
        out.extend(menu(inv, &store.id));
        out.extend(summary(inv, &store.id, now));
    }
    out
}

/// The acks of `ids` to `device` in `store`.
pub fn acks(store: StoreId, device: DeviceId, ids: Vec<EventId>) -> Option<Message> {
    Message::json(Topic::Acks { store, device }, &AckOut { ids }, false)
}

/// The error report of a refused input, on the device's errors topic in
/// `store` (`None`: a chain-wide device's input that names no store, on
/// `hq/errors/{device}`).
pub fn error(
    store: Option<&StoreId>,
    device: &DeviceId,
    topic: &str,
    id: Option<String>,
    r: &Rejection,
) -> Option<Message> {
    let body = ErrorOut {
        topic: topic.to_string(),
        id,
        code: r.code,
        error: r.message.clone(),
        portions_left: r.portions_left.clone(),
    };
    let errors = match store {
        Some(store) => Topic::Errors {
            store: store.clone(),
            device: device.clone(),
        },
        None => Topic::HqErrors { device: device.clone() },
    };
    Message::json(errors, &body, false)
}
