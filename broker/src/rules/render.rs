//! Rendering: the messages a group's changes publish, computed from the
//! inventory. Pure — no I/O, no lock, no clock — so what a group will
//! publish is decided with the group and sent only after its commit.

use dishsync_inventory::{Changes, Document, Inventory, Rejection};
use dishsync_protocol::payload::{AckOut, ErrorOut};
use dishsync_protocol::{DeviceId, EventId, Millis, StoreId, Topic};

use crate::outbound::Message;

/// `doc`'s retained messages, from `inv` at `now`.
pub fn document(inv: &Inventory, doc: &Document, now: Millis) -> Vec<Message> {
    doc.render(inv, now)
        .into_iter()
        .map(|p| Message::new(p.topic, p.payload, true))
        .collect()
}

/// Every document `changes` publishes, from `inv` at `now`, but those the
/// shell throttles (`throttled`); the clearing of retired requests and
/// transfers; and the alerts.
pub fn changes(inv: &Inventory, changes: &Changes, now: Millis, throttled: impl Fn(&Document) -> bool) -> Vec<Message> {
    let mut out: Vec<Message> = changes
        .publish
        .iter()
        .filter(|doc| !throttled(doc))
        .flat_map(|doc| document(inv, doc, now))
        .collect();
    // Shown long enough: an empty retained message clears a finished
    // document for every later subscriber (it stays on record in sled).
    for retired in &changes.retired {
        out.extend(
            retired
                .topics()
                .into_iter()
                .map(|topic| Message::new(topic, Vec::new(), true)),
        );
    }
    for (store, alert) in &changes.alerts {
        out.extend(Message::json(Topic::Alerts { store: store.clone() }, alert, false));
    }
    out
}

/// The retained messages of `docs` (a part of every retained document of
/// the chain, [`Document::published`]), from `inv` at `now`.
pub fn documents<'a>(inv: &Inventory, docs: impl ExactSizeIterator<Item = &'a Document>, now: Millis) -> Vec<Message> {
    // Most documents are one message: room for them at once, not grown
    // (and copied) step by step, hundreds of thousands at start-up.
    let mut messages = Vec::with_capacity(docs.len());
    for doc in docs {
        messages.extend(document(inv, doc, now));
    }
    messages
}

/// The acks of `ids` to `device` in `store` (`None`: a chain-wide input's,
/// on `hq/acks/{device}`).
pub fn acks(store: Option<StoreId>, device: DeviceId, ids: Vec<EventId>) -> Option<Message> {
    let topic = match store {
        Some(store) => Topic::Acks { store, device },
        None => Topic::HqAcks { device },
    };
    Message::json(topic, &AckOut { ids }, false)
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
