//! Intake: inputs decoded and validated from their topic and payload
//! ([`decode`], and its inverse [`input_topic`]), the way into the rules
//! task ([`RulesHandle`]) and the verdicts it answers with, and the report
//! of a refused input on the sender's errors topic (logged, rate-limited).

use std::collections::HashMap;

use dishsync_inventory::Rejection;
use dishsync_protocol::payload::{
    ActionIn, ErrorCode, OverrideIn, RequestOut, SaleIn, StockEventIn, Timestamp, TransferOut, TransferRequestIn,
    WeightIn,
};
use dishsync_protocol::topic::{RequestAction, TransferAction};
use dishsync_protocol::{DeviceId, DishId, DocId, EventId, SkuId, StoreId, Topic, MAX_INPUT_PAYLOAD};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::render;
use crate::outbound::Publisher;

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
    let at = reading.at.0;
    format!("{device}:w:{at}").parse().unwrap_or_else(|_| {
        // A device id near the length limit: its hash instead (≤ 39 bytes).
        format!("w:{at}:{:016x}", fnv1a(device.as_str().as_bytes().iter()))
            .parse()
            .expect("w, digits, '-', ':' and hex always form a valid event id")
    })
}

impl Input {
    /// The store the input is for.
    pub fn store(&self) -> &StoreId {
        match self {
            Input::Stock { store, .. }
            | Input::Sale { store, .. }
            | Input::Void { store, .. }
            | Input::Override { store, .. }
            | Input::RequestAction { store, .. }
            | Input::TransferAction { store, .. }
            | Input::TransferRequest { store, .. }
            | Input::Reading { store, .. } => store,
        }
    }

    /// Whether the input is an event its sender keeps until acknowledged:
    /// its id goes into the dedup index and onto the acks topic. Every input
    /// but a scale reading, which is an absolute count (applied again it
    /// changes nothing, and two readings in one millisecond are no
    /// conflict) that the scale does not keep.
    pub fn is_event(&self) -> bool {
        !matches!(self, Input::Reading { .. })
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
            Input::Reading { id, .. } => id,
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
            Input::RequestAction { body, .. } | Input::TransferAction { body, .. } => json(body),
            Input::TransferRequest { body, .. } => json(body),
            Input::Reading { reading, .. } => json(reading),
        };
        let topic = input_topic(self);
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

/// Decodes and validates the payload of an input topic.
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
        other => {
            return Err(Rejection::new(
                ErrorCode::UnknownTopic,
                format!("{other} is not an input topic"),
            ));
        }
    })
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

/// The topic an input arrives on (the inverse of [`decode`]).
pub fn input_topic(input: &Input) -> Topic {
    match input {
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
    }
}

/// What became of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Applied and committed.
    Applied,
    /// Committed earlier with the same content; acknowledged again, not applied.
    Duplicate,
    /// Well formed, and nothing to apply (a scale reading within its
    /// deadband, or from a scale bound to no SKU).
    Unchanged,
    /// Refused; nothing applied.
    Rejected(Rejection),
}

/// One input on its way to the rules task.
#[derive(Debug)]
pub struct Intake {
    /// The decoded input.
    pub input: Input,
    /// The device that sent it (acks and errors go to its topics).
    pub device: DeviceId,
}

pub(super) enum Command {
    Intake(Intake, oneshot::Sender<Verdict>),
    /// A device connected (true) or disconnected (false).
    Presence(DeviceId, bool),
    /// The requests and transfers shown now, as their documents.
    Documents(oneshot::Sender<Documents>),
}

/// The replenishment requests and transfers the rules show, as published.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// Every request shown (open, or finished less than a day ago).
    pub requests: Vec<RequestOut>,
    /// Every transfer shown.
    pub transfers: Vec<TransferOut>,
}

/// The way into the rules task. Cheap to clone.
#[derive(Clone)]
pub struct RulesHandle {
    pub(super) tx: mpsc::Sender<Command>,
}

impl RulesHandle {
    /// Hands an input to the rules and waits until it is committed or
    /// refused. `None` means the rules task is gone (the broker is stopping).
    pub async fn intake(&self, intake: Intake) -> Option<Verdict> {
        self.submit(intake).await?.await.ok()
    }

    /// Hands an input to the rules, in order, without waiting for its
    /// verdict: the receiver gets it once the input is committed or
    /// refused. `None` means the rules task is gone.
    pub async fn submit(&self, intake: Intake) -> Option<oneshot::Receiver<Verdict>> {
        let (reply, verdict) = oneshot::channel();
        self.tx.send(Command::Intake(intake, reply)).await.ok()?;
        Some(verdict)
    }

    /// The requests and transfers shown now. `None` once the rules stopped.
    pub async fn documents(&self) -> Option<Documents> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Command::Documents(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Tells the rules that a device connected or disconnected (freshness).
    pub async fn presence(&self, device: DeviceId, online: bool) {
        let _ = self.tx.send(Command::Presence(device, online)).await;
    }
}

/// At most this many refused inputs per device and minute are logged; the
/// rest are counted, and the next line logged says how many were not.
pub const REFUSALS_LOGGED_PER_MINUTE: u32 = 20;

/// Whether a refusal is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine {
    /// Log it, saying how many of this device's refusals went unlogged
    /// since its last logged one.
    Write {
        /// Refusals not logged before this one.
        unlogged: u64,
    },
    /// Count it only.
    Suppress,
}

/// The log's brake on refusals, so that a device flooding the broker with
/// bad input cannot fill the disk: a window of a minute per device. Pure:
/// fed the time.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Device → (window start, lines logged in it, refusals not logged).
    windows: HashMap<String, (dishsync_protocol::Millis, u32, u64)>,
}

impl RefusalLog {
    /// Notes a refusal of `device`'s at `now`: whether to log it.
    pub fn note(&mut self, device: &str, now: dishsync_protocol::Millis) -> LogLine {
        const MINUTE: dishsync_protocol::Millis = 60_000;
        if self.windows.len() > 10_000 {
            // Forget devices quiet for a minute.
            self.windows
                .retain(|_, (start, _, unlogged)| now - *start < MINUTE || *unlogged > 0);
        }
        let (start, logged, unlogged) = self.windows.entry(device.to_string()).or_insert((now, 0, 0));
        if now - *start >= MINUTE {
            *start = now;
            *logged = 0;
        }
        if *logged < REFUSALS_LOGGED_PER_MINUTE {
            *logged += 1;
            LogLine::Write {
                unlogged: std::mem::take(unlogged),
            }
        } else {
            *unlogged += 1;
            LogLine::Suppress
        }
    }
}

/// The broker's refusal log brake. A lock, because every connection task
/// reports refusals; it is held for a map lookup and never across an await.
static REFUSALS: std::sync::LazyLock<std::sync::Mutex<RefusalLog>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(RefusalLog::default()));

/// Logs the refusal of an input, at most [`REFUSALS_LOGGED_PER_MINUTE`]
/// lines per device and minute.
pub fn log_refusal(store: Option<&StoreId>, device: &DeviceId, topic: &str, id: Option<&str>, r: &Rejection) {
    let store_name = store.map_or("-", |s| s.as_str());
    let line = REFUSALS.lock().map_or(LogLine::Write { unlogged: 0 }, |mut log| {
        log.note(device.as_str(), Timestamp::now().0)
    });
    if let LogLine::Write { unlogged } = line {
        warn!(store = store_name, %device, topic, id = id.unwrap_or("-"), code = ?r.code, reason = %r.message, unlogged, "input rejected");
    }
}

/// Publishes an error report for a rejected input on the device's errors
/// topic in `store` (`None`: a chain-wide device's input that names no
/// store, reported on `hq/errors/{device}`), and logs it.
pub async fn report(
    out: &dyn Publisher,
    store: Option<&StoreId>,
    device: &DeviceId,
    topic: &str,
    id: Option<String>,
    r: &Rejection,
) {
    log_refusal(store, device, topic, id.as_deref(), r);
    if let Some(m) = render::error(store, device, topic, id, r) {
        out.publish(&m.topic, m.payload, m.retain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        s.parse().expect("topic")
    }

    #[test]
    fn a_flooding_device_cannot_fill_the_log() {
        let mut log = RefusalLog::default();
        let t0 = 1_700_000_000_000;
        let lines: Vec<LogLine> = (0..100).map(|i| log.note("pos-1", t0 + i)).collect();
        let written = lines.iter().filter(|l| matches!(l, LogLine::Write { .. })).count();
        assert_eq!(
            written, REFUSALS_LOGGED_PER_MINUTE as usize,
            "the first ones of the minute"
        );
        // Another device is logged on its own account.
        assert_eq!(log.note("pos-2", t0 + 100), LogLine::Write { unlogged: 0 });
        // A minute later the next line says how many went unlogged.
        assert_eq!(log.note("pos-1", t0 + 60_000), LogLine::Write { unlogged: 80 });
        assert_eq!(log.note("pos-1", t0 + 60_001), LogLine::Write { unlogged: 0 });
    }

    #[test]
    fn decode_table() {
        let stock = topic("stores/s1/stock/beef/events");
        let ok = br#"{"id":"e1","kind":"receive","qty":1,"unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1"}"#;
        assert!(matches!(decode(&stock, ok), Ok(Input::Stock { .. })));
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
            assert_eq!(decode(t, payload).map_err(|r| r.code).err(), Some(code), "{t}");
        }
        let void = decode(&topic("stores/s1/sales"), br#"{"id":"v1","void":"s1"}"#).expect("void");
        assert!(matches!(void, Input::Void { .. }));
    }

    #[test]
    fn fingerprint_ignores_formatting_not_content() {
        let t = topic("stores/s1/stock/beef/events");
        let a = decode(
            &t,
            br#"{"id":"e1","kind":"receive","qty":1,"unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1"}"#,
        );
        let b = decode(&t, br#"{ "device":"t1", "at":"2026-11-25T19:00:00+01:00", "unit":"kg", "qty":1.0, "kind":"receive", "id":"e1" }"#);
        let c = decode(
            &t,
            br#"{"id":"e1","kind":"receive","qty":2,"unit":"kg","at":"2026-11-25T18:00:00Z","device":"t1"}"#,
        );
        let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        let other_sku = decode(
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
