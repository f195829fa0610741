//! The inputs the rules take, validated: decoded from their topic and
//! payload by [`Input::decode`] — the one decoder every way in (MQTT, the
//! worker, the HTTP API) uses — with the topic each arrives on
//! ([`Input::topic`], its inverse), its id and the fingerprint of its
//! meaning, under which a re-send is recognised.

use dishsync_protocol::payload::{
    ActionIn, ErrorCode, OverrideIn, PromotionIn, SaleIn, StockEventIn, TemperatureIn, TransferRequestIn, WeightIn,
};
use dishsync_protocol::topic::{ProbeAction, PromotionAction, RequestAction, TransferAction};
use dishsync_protocol::{DeviceId, DishId, DocId, EventId, PromotionId, SkuId, StoreId, Topic, MAX_INPUT_PAYLOAD};
use serde::Serialize;

use crate::rejection::Rejection;

/// A decoded, well-formed input.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A stock event.
    Stock {
        /// The store.
        store: StoreId,
        /// The SKU.
        sku: SkuId,
        /// The event.
        event: StockEventIn,
    },
    /// A sale.
    Sale {
        /// The store.
        store: StoreId,
        /// The sale.
        sale: SaleIn,
    },
    /// A void of a sale.
    Void {
        /// The store.
        store: StoreId,
        /// The void.
        void: SaleIn,
    },
    /// A chef's override.
    Override {
        /// The store.
        store: StoreId,
        /// The dish.
        dish: DishId,
        /// The override.
        ov: OverrideIn,
    },
    /// The central kitchen acts on a replenishment request.
    RequestAction {
        /// The request's store (from its id).
        store: StoreId,
        /// The request.
        request: DocId,
        /// What it does.
        action: RequestAction,
        /// Who, and a note.
        body: ActionIn,
    },
    /// A store acts on a transfer.
    TransferAction {
        /// The acting store.
        store: StoreId,
        /// The transfer.
        transfer: DocId,
        /// What it does.
        action: TransferAction,
        /// Who, and a note.
        body: ActionIn,
    },
    /// A manager asks for a transfer.
    TransferRequest {
        /// The store that needs stock.
        store: StoreId,
        /// What it needs.
        body: TransferRequestIn,
    },
    /// A fridge's or freezer's probe reading.
    Temperature {
        /// The store.
        store: StoreId,
        /// The probe.
        device: DeviceId,
        /// The reading.
        reading: TemperatureIn,
        /// The id it is known by ([`probe_reading_id`]).
        id: EventId,
    },
    /// The kitchen's decision on a probe's fault.
    ProbeAction {
        /// The store.
        store: StoreId,
        /// The probe.
        device: DeviceId,
        /// discard or keep.
        action: ProbeAction,
        /// Who decides, under which id.
        body: ActionIn,
    },
    /// HQ plans a promotion (a chain-wide input: it names no one store).
    Promotion {
        /// The promotion.
        id: PromotionId,
        /// The plan.
        plan: PromotionIn,
    },
    /// HQ calls a promotion off.
    PromotionCancel {
        /// The promotion.
        id: PromotionId,
        /// Who, under which id, and a note.
        body: ActionIn,
    },
    /// A settled scale reading (unsettled ones never reach the rules).
    Reading {
        /// The store.
        store: StoreId,
        /// The scale.
        device: DeviceId,
        /// The reading.
        reading: WeightIn,
        /// The id its count is recorded under ([`reading_id`]).
        id: EventId,
    },
}

/// The id a scale reading's count is recorded under: the scale and the
/// reading's stamp, so a re-sent reading is recognised like any input.
pub fn reading_id(device: &DeviceId, reading: &WeightIn) -> EventId {
    sensor_reading_id(device, "w", reading.at.0)
}

/// The id a probe's reading is known by: the probe and the reading's
/// stamp (as [`reading_id`] for a scale).
pub fn probe_reading_id(device: &DeviceId, reading: &TemperatureIn) -> EventId {
    sensor_reading_id(device, "t", reading.at.0)
}

/// `{device}:{kind}:{at}`, or for a device id near the length limit
/// `{kind}:{at}:{its hash}` (≤ 39 bytes).
fn sensor_reading_id(device: &DeviceId, kind: &str, at: i64) -> EventId {
    format!("{device}:{kind}:{at}").parse().unwrap_or_else(|_| {
        format!("{kind}:{at}:{:016x}", fnv1a(device.as_str().as_bytes().iter()))
            .parse()
            .expect("a letter, digits, '-', ':' and hex always form a valid event id")
    })
}

impl Input {
    /// The store the input is for; `None` for a chain-wide input (a
    /// promotion), whose id is unique in the chain.
    pub fn store(&self) -> Option<&StoreId> {
        Some(match self {
            Input::Stock { store, .. }
            | Input::Sale { store, .. }
            | Input::Void { store, .. }
            | Input::Override { store, .. }
            | Input::RequestAction { store, .. }
            | Input::TransferAction { store, .. }
            | Input::TransferRequest { store, .. }
            | Input::Reading { store, .. }
            | Input::Temperature { store, .. }
            | Input::ProbeAction { store, .. } => store,
            Input::Promotion { .. } | Input::PromotionCancel { .. } => return None,
        })
    }

    /// Whether the input is an event its sender keeps until acknowledged:
    /// its id goes into the dedup index and onto the acks topic. Every input
    /// but a scale reading, which is an absolute count (applied again it
    /// changes nothing, and two readings in one millisecond are no
    /// conflict) that the scale does not keep.
    pub fn is_event(&self) -> bool {
        !matches!(self, Input::Reading { .. } | Input::Temperature { .. })
    }

    /// A scale reading taken while the load still moves: routed on to
    /// subscribers, never applied (only a settled reading sets a level).
    pub fn is_moving_reading(&self) -> bool {
        matches!(self, Input::Reading { reading, .. } if !reading.stable)
    }

    /// The device the input says sent it (its `device` field), if it has
    /// one.
    pub fn claimed_device(&self) -> Option<&DeviceId> {
        match self {
            Input::Stock { event, .. } => Some(&event.device),
            Input::Sale { sale: s, .. } | Input::Void { void: s, .. } => s.device.as_ref(),
            _ => None,
        }
    }

    /// The input's client-made id.
    pub fn id(&self) -> &EventId {
        match self {
            Input::Stock { event, .. } => &event.id,
            Input::Sale { sale, .. } | Input::Void { void: sale, .. } => &sale.id,
            Input::Override { ov, .. } => &ov.id,
            Input::RequestAction { body, .. } | Input::TransferAction { body, .. } => &body.id,
            Input::TransferRequest { body, .. } => &body.id,
            Input::Reading { id, .. } | Input::Temperature { id, .. } => id,
            Input::ProbeAction { body, .. } | Input::PromotionCancel { body, .. } => &body.id,
            Input::Promotion { plan, .. } => &plan.id,
        }
    }

    /// The topic the input arrives on (the inverse of [`Input::decode`]).
    pub fn topic(&self) -> Topic {
        match self {
            Input::Stock { store, sku, .. } => Topic::StockEvents {
                store: store.clone(),
                sku: sku.clone(),
            },
            Input::Sale { store, .. } | Input::Void { store, .. } => Topic::Sales { store: store.clone() },
            Input::Override { store, dish, .. } => Topic::DishOverride {
                store: store.clone(),
                dish: dish.clone(),
            },
            Input::RequestAction { request, action, .. } => Topic::RequestAction {
                id: request.clone(),
                action: *action,
            },
            Input::TransferAction {
                store,
                transfer,
                action,
                ..
            } => Topic::TransferAction {
                store: store.clone(),
                id: transfer.clone(),
                action: *action,
            },
            Input::TransferRequest { store, .. } => Topic::TransferRequest { store: store.clone() },
            Input::Reading { store, device, .. } => Topic::ScaleWeight {
                store: store.clone(),
                device: device.clone(),
            },
            Input::Temperature { store, device, .. } => Topic::ProbeTemperature {
                store: store.clone(),
                device: device.clone(),
            },
            Input::ProbeAction {
                store, device, action, ..
            } => Topic::ProbeAction {
                store: store.clone(),
                device: device.clone(),
                action: *action,
            },
            Input::Promotion { id, .. } => Topic::PromotionAction {
                id: id.clone(),
                action: PromotionAction::Plan,
            },
            Input::PromotionCancel { id, .. } => Topic::PromotionAction {
                id: id.clone(),
                action: PromotionAction::Cancel,
            },
        }
    }

    /// The device the input names as the one acting (its `device` or
    /// `by`): where its acks and errors go when no login says otherwise (a
    /// worker's inputs arrive from an external broker).
    pub fn actor(&self) -> Option<DeviceId> {
        match self {
            Input::Stock { event, .. } => Some(event.device.clone()),
            Input::Sale { sale, .. } | Input::Void { void: sale, .. } => sale.device.clone(),
            Input::Override { ov, .. } => Some(ov.by.clone()),
            Input::RequestAction { body, .. } | Input::TransferAction { body, .. } => Some(body.by.clone()),
            Input::TransferRequest { body, .. } => Some(body.by.clone()),
            Input::Reading { device, .. } | Input::Temperature { device, .. } => Some(device.clone()),
            Input::ProbeAction { body, .. } | Input::PromotionCancel { body, .. } => Some(body.by.clone()),
            Input::Promotion { plan, .. } => Some(plan.by.clone()),
        }
    }

    /// The sale a void cancels: its store and id.
    pub fn voided_sale(&self) -> Option<(&StoreId, &EventId)> {
        match self {
            Input::Void { store, void } => void.void.as_ref().map(|id| (store, id)),
            _ => None,
        }
    }

    /// A stable hash of the input's meaning (topic and normalised payload):
    /// equal for a re-send, different for other content under the same id.
    pub fn fingerprint(&self) -> u64 {
        fn json<T: Serialize>(t: &T) -> Vec<u8> {
            serde_json::to_vec(t).unwrap_or_default()
        }
        let body = match self {
            Input::Stock { event, .. } => json(event),
            Input::Sale { sale: s, .. } | Input::Void { void: s, .. } => json(s),
            Input::Override { ov, .. } => json(ov),
            Input::RequestAction { body, .. }
            | Input::TransferAction { body, .. }
            | Input::ProbeAction { body, .. }
            | Input::PromotionCancel { body, .. } => json(body),
            Input::Promotion { plan, .. } => json(plan),
            Input::TransferRequest { body, .. } => json(body),
            Input::Reading { reading, .. } => json(reading),
            Input::Temperature { reading, .. } => json(reading),
        };
        let topic = self.topic();
        fnv1a(
            topic
                .to_string()
                .as_bytes()
                .iter()
                .chain([0u8].iter())
                .chain(body.iter()),
        )
    }
}

/// FNV-1a, 64 bit: a hash whose value is fixed forever, as a persisted
/// fingerprint needs (std's hasher may change between releases).
fn fnv1a<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A payload that does not decode: `missing_field` when only a required
/// field is absent, `malformed_payload` for anything else (not JSON, an
/// unknown field, a wrong type).
fn malformed(e: serde_json::Error) -> Rejection {
    if e.is_data() && e.to_string().starts_with("missing field") {
        return Rejection::new(ErrorCode::MissingField, format!("{e}"));
    }
    Rejection::new(ErrorCode::MalformedPayload, format!("malformed payload: {e}"))
}

impl Input {
    /// Decodes and validates the payload of an input topic: the one decoder
    /// every way in uses.
    pub fn decode(topic: &Topic, payload: &[u8]) -> Result<Input, Rejection> {
        if payload.len() > MAX_INPUT_PAYLOAD {
            return Err(Rejection::new(
                ErrorCode::Oversize,
                format!(
                    "payload of {} bytes exceeds the limit of {MAX_INPUT_PAYLOAD}",
                    payload.len()
                ),
            ));
        }
        Ok(match topic {
            Topic::StockEvents { store, sku } => Input::Stock {
                store: store.clone(),
                sku: sku.clone(),
                event: serde_json::from_slice(payload).map_err(malformed)?,
            },
            Topic::Sales { store } => {
                let sale: SaleIn = serde_json::from_slice(payload).map_err(malformed)?;
                if sale.void.is_some() {
                    Input::Void {
                        store: store.clone(),
                        void: sale,
                    }
                } else {
                    Input::Sale {
                        store: store.clone(),
                        sale,
                    }
                }
            }
            Topic::DishOverride { store, dish } => Input::Override {
                store: store.clone(),
                dish: dish.clone(),
                ov: serde_json::from_slice(payload).map_err(malformed)?,
            },
            Topic::RequestAction { id, action } => Input::RequestAction {
                store: id.request_store().ok_or_else(|| {
                    Rejection::new(
                        ErrorCode::UnknownDocument,
                        format!("{id} is not a replenishment request id"),
                    )
                })?,
                request: id.clone(),
                action: *action,
                body: serde_json::from_slice(payload).map_err(malformed)?,
            },
            Topic::TransferAction { store, id, action } => Input::TransferAction {
                store: store.clone(),
                transfer: id.clone(),
                action: *action,
                body: serde_json::from_slice(payload).map_err(malformed)?,
            },
            Topic::TransferRequest { store } => Input::TransferRequest {
                store: store.clone(),
                body: serde_json::from_slice(payload).map_err(malformed)?,
            },
            Topic::ScaleWeight { store, device } => {
                let reading: WeightIn = serde_json::from_slice(payload).map_err(malformed)?;
                Input::Reading {
                    store: store.clone(),
                    device: device.clone(),
                    id: reading_id(device, &reading),
                    reading,
                }
            }
            Topic::ProbeTemperature { store, device } => {
                let reading: TemperatureIn = serde_json::from_slice(payload).map_err(malformed)?;
                Input::Temperature {
                    store: store.clone(),
                    device: device.clone(),
                    id: probe_reading_id(device, &reading),
                    reading,
                }
            }
            Topic::ProbeAction { store, device, action } => Input::ProbeAction {
                store: store.clone(),
                device: device.clone(),
                action: *action,
                body: serde_json::from_slice(payload).map_err(malformed)?,
            },
            Topic::PromotionAction {
                id,
                action: PromotionAction::Plan,
            } => Input::Promotion {
                id: id.clone(),
                plan: serde_json::from_slice(payload).map_err(malformed)?,
            },
            Topic::PromotionAction {
                id,
                action: PromotionAction::Cancel,
            } => Input::PromotionCancel {
                id: id.clone(),
                body: serde_json::from_slice(payload).map_err(malformed)?,
            },
            other => {
                return Err(Rejection::new(
                    ErrorCode::UnknownTopic,
                    format!("{other} is not an input topic"),
                ));
            }
        })
    }
}

/// The id of a payload that could not be decoded, if one can be read, for
/// the error report.
pub fn salvage_id(payload: &[u8]) -> Option<String> {
    if payload.len() > MAX_INPUT_PAYLOAD {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("id")?.as_str().map(|s| s.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        s.parse().expect("topic")
    }

    #[test]
    fn decode_table() {
        let stock = topic("stores/s1/stock/beef/events");
        let ok = br#"{"id":"e1","kind":"receive","qty":1,"unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1"}"#;
        assert!(matches!(Input::decode(&stock, ok), Ok(Input::Stock { .. })));
        let cases: [(&Topic, &[u8], ErrorCode); 7] = [
            (&stock, b"{not json", ErrorCode::MalformedPayload),
            (&stock, br#"{"id":"e1"}"#, ErrorCode::MissingField),
            (&stock, br#"{"id":"e1","kind":"receive","qty":"one","unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1"}"#, ErrorCode::MalformedPayload),
            (&stock, br#"{"id":"e1","kind":"receive","qty":1,"unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1","colour":"red"}"#, ErrorCode::MalformedPayload),
            (&stock, &[b' '; MAX_INPUT_PAYLOAD + 1], ErrorCode::Oversize),
            (
                &topic("stores/s1/sales"),
                br#"{"id":"s","lines":[{"dish":"x","portions":-1}]}"#,
                ErrorCode::MalformedPayload,
            ),
            (&topic("stores/s1/availability"), b"{}", ErrorCode::UnknownTopic),
        ];
        for (t, payload, code) in cases {
            assert_eq!(Input::decode(t, payload).map_err(|r| r.code).err(), Some(code), "{t}");
        }
        let void = Input::decode(&topic("stores/s1/sales"), br#"{"id":"v1","void":"s1"}"#).expect("void");
        assert!(matches!(void, Input::Void { .. }));
    }

    #[test]
    fn fingerprint_ignores_formatting_not_content() {
        let t = topic("stores/s1/stock/beef/events");
        let a = Input::decode(
            &t,
            br#"{"id":"e1","kind":"receive","qty":1,"unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1"}"#,
        );
        let b = Input::decode(&t, br#"{ "device":"t1", "at":"2026-11-25T19:00:00+01:00", "unit":"kg", "qty":1.0, "kind":"receive", "id":"e1" }"#);
        let c = Input::decode(
            &t,
            br#"{"id":"e1","kind":"receive","qty":2,"unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1"}"#,
        );
        let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        let other_sku = Input::decode(
            &topic("stores/s1/stock/bun/events"),
            br#"{"id":"e1","kind":"receive","qty":1,"unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1"}"#,
        );
        assert_ne!(a.fingerprint(), other_sku.expect("other").fingerprint());
    }

    #[test]
    fn salvage() {
        assert_eq!(salvage_id(br#"{"id":"e9","qty":"x"}"#).as_deref(), Some("e9"));
        assert_eq!(salvage_id(b"garbage"), None);
    }
}
