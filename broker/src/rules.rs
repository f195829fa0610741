//! The rules shell: the single owner of the [`Inventory`] and the durable
//! [`Store`], reached through [`RulesHandle`].
//!
//! Connection tasks decode and validate inputs in parallel ([`decode`]), then
//! hand them to the rules task and wait for its [`Verdict`]. The rules task
//! applies each input to the pure core at once, into the *open group*; as
//! soon as the committer is free it closes the group — one journal record
//! with every effect and the current state of everything changed — and
//! hands it over. The committer syncs the journal once for the whole group
//! and only then answers — so a device's PUBACK/PUBCOMP, which waits for
//! the verdict, means "durably applied or durably rejected" — storing the
//! changed retained documents, then answering, then queueing the documents,
//! acks and errors for the deliverer (`DeliveryQueue`).
//! A lone input is handed over immediately; under load a group holds
//! everything that arrived while the previous one was being synced and
//! published, so a document changed by many inputs is rendered and
//! published once per group.
//!
//! It does not parse topics (that is `dishsync_protocol::Topic`) and makes no
//! domain decision (that is `dishsync_inventory`).
//!
//! Invariant: an event id is applied at most once per store — checked against
//! the committed index and the open group, and recorded in the same journal
//! record as its effects.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use dishsync_inventory::{Changes, Inventory, Rejection, Retired, SaleRecord};
use dishsync_protocol::payload::{
    AckOut, ActionIn, ErrorCode, ErrorOut, OverrideIn, RequestOut, SaleIn, StockEventIn, Timestamp, TransferOut,
    TransferRequestIn, WeightIn,
};
use dishsync_protocol::topic::{RequestAction, TransferAction};
use dishsync_protocol::{DeviceId, DishId, DocId, EventId, SkuId, StoreId, Topic, MAX_INPUT_PAYLOAD};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::outbound::{publish_doc, Message, Publisher, Rendered};
use crate::store::{Commit, Store, StoreError};

/// Most inputs in one group commit.
const MAX_BATCH: usize = 4096;
/// Inputs waiting for the rules task before senders feel backpressure.
const QUEUE: usize = 16_384;
/// The whole-menu document is re-published at most this often per store.
const MENU_INTERVAL: Duration = Duration::from_millis(250);
/// How often timers (override expiry, delayed menu documents) are checked.
const TICK: Duration = Duration::from_millis(100);
/// Every this many ticks (one second) the whole planning tick runs.
const FULL_TICK_EVERY: u32 = 10;

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

enum Command {
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
    tx: mpsc::Sender<Command>,
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
    let store_name = store.map_or("-", |s| s.as_str());
    let line = REFUSALS.lock().map_or(LogLine::Write { unlogged: 0 }, |mut log| {
        log.note(device.as_str(), Timestamp::now().0)
    });
    if let LogLine::Write { unlogged } = line {
        warn!(store = store_name, %device, topic, id = id.as_deref().unwrap_or("-"), code = ?r.code, reason = %r.message, unlogged, "input rejected");
    }
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
    publish_doc(out, &errors, &body, false).await;
}

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

/// Publishes every document of `changes` from `inv`: levels, dish
/// availability, requests (under the store and HQ), transfers (under both
/// stores), the clearing of retired ones, and alerts. Menu and summary
/// documents are throttled by the caller.
pub async fn publish_changes(out: &dyn Publisher, inv: &Inventory, changes: &Changes) {
    for (store, sku) in &changes.levels {
        if let Some(doc) = inv.level_out(store, sku) {
            publish_doc(
                out,
                &Topic::StockLevel {
                    store: store.clone(),
                    sku: sku.clone(),
                },
                &doc,
                true,
            )
            .await;
        }
    }
    for (store, dish) in &changes.dishes {
        if let Some(doc) = inv.dish_out(store, dish) {
            let topic = Topic::DishAvailability {
                store: store.clone(),
                dish: dish.clone(),
            };
            publish_doc(out, &topic, &doc, true).await;
        }
    }
    for id in &changes.requests {
        if let Some(doc) = inv.request_out(id) {
            for topic in request_topics(id, &doc.store) {
                publish_doc(out, &topic, &doc, true).await;
            }
        }
    }
    for id in &changes.transfers {
        if let Some(doc) = inv.transfer_out(id) {
            for topic in transfer_topics(id, &doc.from, &doc.to) {
                publish_doc(out, &topic, &doc, true).await;
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
        for topic in topics {
            out.publish(&topic, Vec::new(), true).await;
        }
    }
    for (store, alert) in &changes.alerts {
        tracing::info!(%store, kind = ?alert.kind, state = ?alert.state, message = %alert.message, "alert");
        publish_doc(out, &Topic::Alerts { store: store.clone() }, alert, false).await;
    }
}

/// Publishes a store's HQ summary.
pub async fn publish_summary(out: &dyn Publisher, inv: &Inventory, store: &StoreId, now: dishsync_protocol::Millis) {
    if let Some(doc) = inv.summary_out(store, now) {
        publish_doc(out, &Topic::Summary { store: store.clone() }, &doc, true).await;
    }
}

/// Publishes a store's catalog (names, categories, order, prices).
pub async fn publish_catalog(out: &dyn Publisher, inv: &Inventory, store: &StoreId, now: dishsync_protocol::Millis) {
    if let Some(doc) = inv.catalog_out(store, now) {
        publish_doc(out, &Topic::Catalog { store: store.clone() }, &doc, true).await;
    }
}

/// Publishes a store's whole-menu document.
pub async fn publish_menu(out: &dyn Publisher, inv: &Inventory, store: &StoreId) {
    if let Some(doc) = inv.menu_out(store) {
        publish_doc(out, &Topic::StoreAvailability { store: store.clone() }, &doc, true).await;
    }
}

/// Writes the states named in `changes` into `commit`.
pub fn stage_changes(commit: &mut Commit, inv: &Inventory, changes: &Changes) -> Result<(), StoreError> {
    for (store, sku) in &changes.skus {
        commit.sku_state(inv, store, sku)?;
    }
    for (store, dish) in &changes.dishes {
        commit.dish_state(inv, store, dish)?;
    }
    for store in &changes.menus {
        commit.menu_state(inv, store)?;
    }
    for store in &changes.plans {
        commit.plan_state(inv, store)?;
    }
    for id in &changes.requests {
        commit.request(inv, id)?;
    }
    for id in &changes.transfers {
        commit.transfer(inv, id)?;
    }
    if !(changes.requests.is_empty() && changes.transfers.is_empty() && changes.retired.is_empty()) {
        commit.shown(inv)?;
    }
    if changes.chain {
        commit.chain_state(inv)?;
    }
    Ok(())
}

/// The rules task's state.
struct Rules {
    inv: Inventory,
    store: Store,
    /// Inputs applied to the inventory and not yet handed to the committer.
    group: Group,
    /// Held by the group the committer is working on: while it is taken,
    /// the next group keeps growing.
    committer_idle: Arc<Semaphore>,
    /// Where handed-over groups go to be made durable and published.
    committer: mpsc::Sender<Completion>,
    /// The committer task (awaited on shutdown).
    committer_task: tokio::task::JoinHandle<()>,
    /// When each throttled document was last published.
    published: HashMap<(Throttled, StoreId), Instant>,
    /// Throttled documents that changed but were published too recently.
    due: BTreeSet<(Throttled, StoreId)>,
    /// Ticks since the last full planning tick.
    ticks: u32,
}

/// The open group commit: everything applied since the last hand-over.
#[derive(Default)]
struct Group {
    /// Ledger lines, ids and sale records written so far (begun lazily, so
    /// that its ledger numbering follows the group handed over before it).
    commit: Option<Commit>,
    /// The documents and states the group changed.
    changes: Changes,
    /// Every input with the verdict it will be answered with.
    decided: Vec<(Intake, oneshot::Sender<Verdict>, Verdict)>,
    /// Ids applied in this group (not yet visible in the store).
    ids: HashMap<(StoreId, EventId), u64>,
    /// Sales recorded in this group, for voids in the same group.
    sales: HashMap<(StoreId, EventId), SaleRecord>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.decided.is_empty() && self.changes.is_empty()
    }
}

/// Documents re-published at most once per interval while things change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Throttled {
    /// `stores/{store}/availability`, every 250 ms at most.
    Menu,
    /// `hq/stores/{store}/summary`, every second at most.
    Summary,
}

impl Throttled {
    fn interval(self) -> Duration {
        match self {
            Throttled::Menu => MENU_INTERVAL,
            Throttled::Summary => Duration::from_secs(1),
        }
    }
}

/// Starts the rules task on the current runtime.
pub fn start(inv: Inventory, store: Store, out: Arc<dyn Publisher>) -> RulesHandle {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(Rules::new(inv, store, out).run(rx));
    RulesHandle { tx }
}

/// What one group waits to do until it is durable: store the retained
/// documents, answer the devices (their PUBACK/PUBCOMP), then deliver the
/// documents, acks, errors and the throttled documents that were due.
struct Completion {
    retained: Vec<Message>,
    replies: Vec<(oneshot::Sender<Verdict>, Verdict)>,
    after: Vec<Message>,
    /// Released once the group is answered: the next group may go.
    _idle: OwnedSemaphorePermit,
}

/// Messages waiting for delivery to current subscribers, at most this many
/// (beyond it the committer, and so the devices, wait).
const DELIVERY_QUEUE: usize = 50_000;

/// Each subscriber a retained document is handed to buys its topic this
/// much time before the topic's next document goes out: a topic 200 POS
/// watch is delivered at most every 5 ms, one 20 POS watch every 0.5 ms. A
/// document that comes sooner waits, and a newer one replaces it while it
/// waits. So under an update storm a topic causes at most 40,000 deliveries
/// a second however many POS subscribe, and a small audience is not held
/// back for a large one's sake.
const TURN_PER_SUBSCRIBER: Duration = Duration::from_micros(25);

/// Half of the timer's resolution (see [`Deliverer::run`]).
const TIMER_SLACK: Duration = Duration::from_micros(500);

/// What the deliverer does next.
#[derive(Debug, PartialEq)]
enum Next {
    /// Deliver this message now.
    Deliver(Message),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
    /// Nothing is queued.
    Idle,
}

/// Messages on their way to current subscribers, in order. A retained
/// document that a newer one of the same topic supersedes before it is
/// delivered is dropped — a subscriber needs the latest state, and the
/// retained store already holds it — and a retained topic is not delivered
/// again before its turn ends ([`TURN_PER_SUBSCRIBER`]). Everything else
/// (acks, errors, alerts) goes out as queued, never held back by a document.
#[derive(Default)]
struct DeliveryQueue {
    queue: VecDeque<(u64, Message)>,
    /// Per retained topic, the position of its newest document.
    newest: HashMap<Topic, u64>,
    next: u64,
    /// Per retained topic, when its next document may go out.
    turn_ends: HashMap<Topic, Instant>,
    /// Documents waiting for their topic's turn to end: position, message,
    /// due.
    held: HashMap<Topic, (u64, Message, Instant)>,
}

impl DeliveryQueue {
    /// Queues a message.
    fn push(&mut self, message: Message) {
        let at = self.next;
        self.next += 1;
        if message.2 {
            self.newest.insert(message.0.clone(), at);
        }
        self.queue.push_back((at, message));
    }

    /// A document of `topic` went to `subscribers` subscribers at `now`:
    /// its turn lasts [`TURN_PER_SUBSCRIBER`] for each.
    fn delivered(&mut self, topic: Topic, now: Instant, subscribers: usize) {
        if subscribers > 0 {
            let per = u32::try_from(subscribers).unwrap_or(u32::MAX);
            self.turn_ends.insert(topic, now + TURN_PER_SUBSCRIBER * per);
        }
    }

    /// Messages queued or held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len() + self.held.len()
    }

    /// What to do at `now`, and how many superseded documents were dropped
    /// on the way to it.
    fn next(&mut self, now: Instant) -> (Next, usize) {
        let mut dropped = 0;
        let due = self
            .held
            .iter()
            .filter(|(_, (_, _, due))| *due <= now)
            .map(|(topic, _)| topic.clone())
            .next();
        if let Some(topic) = due {
            if let Some((at, message, _)) = self.held.remove(&topic) {
                if self.newest.get(&topic) == Some(&at) {
                    self.newest.remove(&topic);
                    return (Next::Deliver(message), dropped);
                }
                // A newer document is queued behind; it takes the turn.
                dropped += 1;
            }
        }
        while let Some((at, message)) = self.queue.pop_front() {
            if !message.2 {
                return (Next::Deliver(message), dropped);
            }
            if self.newest.get(&message.0) != Some(&at) {
                dropped += 1;
                continue;
            }
            let topic = message.0.clone();
            match self.turn_ends.get(&topic) {
                Some(end) if now < *end => {
                    let due = *end;
                    if self.held.insert(topic, (at, message, due)).is_some() {
                        dropped += 1;
                    }
                }
                _ => {
                    self.newest.remove(&topic);
                    return (Next::Deliver(message), dropped);
                }
            }
        }
        // Forget turns that can no longer hold anything back.
        self.turn_ends.retain(|_, end| now < *end);
        match self.held.values().map(|(_, _, due)| *due).min() {
            Some(due) => (Next::WaitUntil(due), dropped),
            None => (Next::Idle, dropped),
        }
    }
}

/// The deliverer: sends queued messages to current subscribers, one at a
/// time (see [`DeliveryQueue`]). Runs beside the committer, so a device's
/// next input is synced while the documents its last one changed are still
/// being delivered.
struct Deliverer {
    queue: std::sync::Mutex<DeliveryQueue>,
    /// Signalled when something is queued or the committer stops.
    ready: Notify,
    /// One permit per message the queue may still take.
    room: Semaphore,
    stopping: std::sync::atomic::AtomicBool,
}

impl Deliverer {
    fn new() -> Deliverer {
        Deliverer {
            queue: std::sync::Mutex::new(DeliveryQueue::default()),
            ready: Notify::new(),
            room: Semaphore::new(DELIVERY_QUEUE),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Queues `messages`, waiting for room first.
    async fn queue(&self, messages: Vec<Message>) {
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let chunk: Vec<Message> = messages.by_ref().take(DELIVERY_QUEUE).collect();
            let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            if let Ok(permits) = self.room.acquire_many(n).await {
                permits.forget();
            }
            if let Ok(mut queue) = self.queue.lock() {
                for m in chunk {
                    queue.push(m);
                }
            }
            self.ready.notify_one();
        }
    }

    async fn run(&self, out: Arc<dyn Publisher>) {
        // Where a timer woke the deliverer, the turn it waited for.
        let mut woken_for: Option<Instant> = None;
        loop {
            let now = Instant::now().max(woken_for.take().unwrap_or_else(Instant::now));
            let (next, dropped) = match self.queue.lock() {
                Ok(mut queue) => queue.next(now),
                Err(_) => return,
            };
            let delivered = usize::from(matches!(next, Next::Deliver(_)));
            self.room.add_permits(dropped + delivered);
            match next {
                Next::Deliver((topic, payload, retained)) => {
                    let subscribers = out.deliver(&topic, payload, retained).await;
                    if retained {
                        if let Ok(mut queue) = self.queue.lock() {
                            queue.delivered(topic, Instant::now(), subscribers);
                        }
                    }
                }
                Next::WaitUntil(due) => {
                    // tokio's timer fires on whole milliseconds, up to one
                    // late: aim half a millisecond early and take the turn
                    // as ended, so a held document is off by ±0.5 ms, not
                    // late by 0–1 ms.
                    tokio::select! {
                        _ = tokio::time::sleep_until(due - TIMER_SLACK) => woken_for = Some(due),
                        _ = self.ready.notified() => {}
                    }
                }
                Next::Idle if self.stopping.load(std::sync::atomic::Ordering::SeqCst) => return,
                Next::Idle => self.ready.notified().await,
            }
        }
    }
}

/// The committer: makes each group durable (one journal sync), stores its
/// retained documents and answers its devices, then queues its messages for
/// the deliverer. Only one group is with it at a time; the rules task keeps
/// applying inputs to the next group meanwhile, so under load a group holds
/// everything that arrived during the previous one's sync.
async fn committer(store: Store, out: Arc<dyn Publisher>, mut rx: mpsc::Receiver<Completion>) {
    let deliverer = Arc::new(Deliverer::new());
    let delivering = {
        let deliverer = Arc::clone(&deliverer);
        let out = Arc::clone(&out);
        tokio::spawn(async move { deliverer.run(out).await })
    };
    while let Some(group) = rx.recv().await {
        if let Err(e) = store.flush().await {
            // What reached the disk is unknown: stop (the shell does, on
            // this), and let the restart recover from the last complete
            // commit. Devices re-send what they saw no ack for.
            error!(error = %e, "storage failed; stopping the broker");
            store.fail(format!("a journal sync failed: {e}"));
            return;
        }
        // A device holding its PUBACK finds the new state retained.
        for (topic, payload, _) in &group.retained {
            out.retain(topic, payload.clone()).await;
        }
        for (reply, verdict) in group.replies {
            let _ = reply.send(verdict);
        }
        for (topic, payload, retain) in &group.after {
            if *retain {
                out.retain(topic, payload.clone()).await;
            }
        }
        let mut messages = group.retained;
        messages.extend(group.after);
        deliverer.queue(messages).await;
    }
    deliverer.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    deliverer.ready.notify_one();
    let _ = delivering.await;
}

impl Rules {
    fn new(inv: Inventory, store: Store, out: Arc<dyn Publisher>) -> Rules {
        let (committer_tx, committer_rx) = mpsc::channel(1);
        let committer_task = tokio::spawn(committer(store.clone(), out, committer_rx));
        Rules {
            inv,
            store,
            group: Group::default(),
            committer_idle: Arc::new(Semaphore::new(1)),
            committer: committer_tx,
            committer_task,
            published: HashMap::new(),
            due: BTreeSet::new(),
            ticks: 0,
        }
    }

    /// Stops: hands over what is open and lets the committer finish.
    async fn shutdown(mut self) -> Result<(), StoreError> {
        if !self.group.is_empty() {
            let idle = self.idle().await;
            self.hand_over(idle).await?;
        }
        let Rules {
            committer,
            committer_task,
            ..
        } = self;
        drop(committer);
        let _ = committer_task.await;
        Ok(())
    }

    /// Waits until the committer is free.
    async fn idle(&self) -> OwnedSemaphorePermit {
        match self.committer_idle.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => {
                error!("the committer stopped; stopping the broker");
                self.store.fail("the committer stopped".into());
                std::future::pending().await
            }
        }
    }

    /// Whether there is anything to hand to the committer.
    fn has_work(&self) -> bool {
        !self.group.is_empty() || self.ready_due().next().is_some()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                // Handing over first: a group never waits on new inputs.
                biased;
                idle = self.committer_idle.clone().acquire_owned(), if self.has_work() => match idle {
                    Ok(idle) => self.hand_over(idle).await,
                    Err(_) => break,
                },
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let mut batch = vec![cmd];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                    self.take_in(batch)
                }
                _ = tick.tick() => {
                    self.on_tick();
                    Ok(())
                }
            };
            if let Err(e) = result {
                // What reached the disk is unknown: stop (the shell does, on
                // this), and let the restart recover from the last complete
                // commit. Devices re-send what they saw no ack for.
                error!(error = %e, "storage failed; stopping the broker");
                self.store.fail(format!("a commit failed: {e}"));
                return;
            }
        }
        let store = self.store.clone();
        if let Err(e) = self.shutdown().await {
            error!(error = %e, "storage failed while stopping");
            store.fail(format!("the last commit failed: {e}"));
        }
        info!("rules task stopped");
    }

    /// Time passes: 86es lapse; the rest of planning (proposal expiry,
    /// forecasts moving, a new day) every few seconds. The changes join the
    /// open group.
    fn on_tick(&mut self) {
        let now = Timestamp::now().0;
        self.ticks += 1;
        let changes = if self.ticks >= FULL_TICK_EVERY {
            self.ticks = 0;
            self.inv.tick(now)
        } else {
            self.inv.expire_overrides(now)
        };
        self.group.changes.merge(changes);
    }

    /// The throttled documents that are due and whose interval passed.
    fn ready_due(&self) -> impl Iterator<Item = &(Throttled, StoreId)> {
        let now = Instant::now();
        self.due.iter().filter(move |key| {
            self.published
                .get(*key)
                .is_none_or(|t| now.duration_since(*t) >= key.0.interval())
        })
    }

    /// Applies a batch of commands to the inventory, into the open group.
    fn take_in(&mut self, batch: Vec<Command>) -> Result<(), StoreError> {
        let now = Timestamp::now().0;
        for command in batch {
            let (intake, reply) = match command {
                Command::Intake(intake, reply) => (intake, reply),
                Command::Documents(reply) => {
                    let (requests, transfers) = self.inv.documents();
                    let _ = reply.send(Documents {
                        requests: requests.iter().filter_map(|id| self.inv.request_out(id)).collect(),
                        transfers: transfers.iter().filter_map(|id| self.inv.transfer_out(id)).collect(),
                    });
                    continue;
                }
                Command::Presence(device, online) => {
                    let stores: Vec<StoreId> = self
                        .inv
                        .catalog()
                        .planning()
                        .feeds
                        .iter()
                        .filter(|(_, devices)| devices.contains_key(&device))
                        .map(|(s, _)| s.clone())
                        .collect();
                    for store in stores {
                        info!(%store, %device, online, "feeding device presence");
                        self.group
                            .changes
                            .merge(self.inv.set_presence(&store, &device, online, now));
                    }
                    continue;
                }
            };
            let verdict = self.decide(&intake, now)?;
            self.group.decided.push((intake, reply, verdict));
        }
        Ok(())
    }

    /// Applies one input (unless its id was seen) and says how to answer it.
    fn decide(&mut self, intake: &Intake, now: dishsync_protocol::Millis) -> Result<Verdict, StoreError> {
        let store = intake.input.store().clone();
        let id = intake.input.id().clone();
        let fingerprint = intake.input.fingerprint();
        let key = (store.clone(), id.clone());
        let indexed = intake.input.is_event();
        let prior = match self.group.ids.get(&key) {
            _ if !indexed => None,
            Some(fp) => Some(*fp),
            None => self.store.fingerprint(&store, &id)?,
        };
        match prior {
            Some(fp) if fp == fingerprint => return Ok(Verdict::Duplicate),
            Some(_) => {
                return Ok(Verdict::Rejected(Rejection::new(
                    ErrorCode::IdConflict,
                    format!("id {id} was already used for different content"),
                )))
            }
            None => {}
        }
        let result = match &intake.input {
            Input::Reading {
                store,
                device,
                reading,
                id,
            } => match self.inv.apply_reading(store, device, reading, id, now) {
                Ok(Some(outcome)) => Ok(outcome),
                Ok(None) => return Ok(Verdict::Unchanged),
                Err(rejection) => Err(rejection),
            },
            Input::Stock { store, sku, event } => self.inv.apply_stock(store, sku, event, now),
            Input::Sale { store, sale } => self.inv.apply_sale(store, sale, now),
            Input::Void { store, void } => {
                let record = match &void.void {
                    Some(sale_id) => match self.group.sales.get(&(store.clone(), sale_id.clone())) {
                        Some(r) => Some(r.clone()),
                        None => self.store.sale(store, sale_id)?,
                    },
                    None => None,
                };
                self.inv.apply_void(store, void, record.as_ref(), now)
            }
            Input::Override { store, dish, ov } => self.inv.apply_override(store, dish, ov, now),
            Input::RequestAction {
                request, action, body, ..
            } => self.inv.apply_request_action(request, *action, body, now),
            Input::TransferAction {
                store,
                transfer,
                action,
                body,
            } => self
                .inv
                .apply_transfer_action(store, transfer, *action, body, &body.id, now),
            Input::TransferRequest { store, body } => self.inv.apply_transfer_request(store, body, now),
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(rejection) => return Ok(Verdict::Rejected(rejection)),
        };
        let commit = match &mut self.group.commit {
            Some(commit) => commit,
            empty => empty.insert(self.store.begin()?),
        };
        if indexed {
            commit.event_id(&store, &id, fingerprint)?;
            self.group.ids.insert(key, fingerprint);
        }
        commit.ledger(&outcome.entries)?;
        if let Some((sale_id, record)) = outcome.sale {
            commit.sale(&store, &sale_id, &record)?;
            self.group.sales.insert((store, sale_id), record);
        }
        self.group.changes.merge(outcome.changes);
        Ok(Verdict::Applied)
    }

    /// Closes the open group: writes it to the journal with the current
    /// state of everything it changed, renders what it publishes, and hands
    /// it to the (idle) committer.
    async fn hand_over(&mut self, idle: OwnedSemaphorePermit) -> Result<(), StoreError> {
        let Group {
            commit,
            changes,
            decided,
            ..
        } = std::mem::take(&mut self.group);
        let mut commit = match commit {
            Some(commit) => commit,
            None => self.store.begin()?,
        };
        stage_changes(&mut commit, &self.inv, &changes)?;
        self.store.apply(commit)?;
        debug!(
            inputs = decided.len(),
            levels = changes.levels.len(),
            dishes = changes.dishes.len(),
            "group committed"
        );

        // Retained state first, so that a device holding its PUBACK already
        // finds the new availability; then the verdicts; then acks and errors.
        let retained = Rendered::default();
        publish_changes(&retained, &self.inv, &changes).await;
        let after = Rendered::default();
        let mut acks: BTreeMap<(StoreId, DeviceId), Vec<EventId>> = BTreeMap::new();
        let mut replies = Vec::with_capacity(decided.len());
        for (intake, reply, verdict) in decided {
            let store = intake.input.store().clone();
            match &verdict {
                Verdict::Applied | Verdict::Duplicate if intake.input.is_event() => {
                    acks.entry((store, intake.device.clone()))
                        .or_default()
                        .push(intake.input.id().clone());
                }
                Verdict::Applied | Verdict::Duplicate | Verdict::Unchanged => {}
                Verdict::Rejected(r) => {
                    let topic = input_topic(&intake.input).to_string();
                    let id = Some(intake.input.id().to_string());
                    report(&after, Some(intake.input.store()), &intake.device, &topic, id, r).await;
                }
            }
            replies.push((reply, verdict));
        }
        for ((store, device), ids) in acks {
            publish_doc(&after, &Topic::Acks { store, device }, &AckOut { ids }, false).await;
        }
        // Whole-store documents, at most once per interval each.
        self.mark_due(&changes);
        self.render_due(&after).await;
        let completion = Completion {
            retained: retained.take(),
            replies,
            after: after.take(),
            _idle: idle,
        };
        if self.committer.send(completion).await.is_err() {
            error!("the committer stopped; stopping the broker");
            self.store.fail("the committer stopped".into());
        }
        Ok(())
    }

    fn mark_due(&mut self, changes: &Changes) {
        self.due
            .extend(changes.menus.iter().map(|s| (Throttled::Menu, s.clone())));
        self.due
            .extend(changes.summaries.iter().map(|s| (Throttled::Summary, s.clone())));
    }

    /// Renders the throttled documents that are due and whose interval
    /// passed.
    async fn render_due(&mut self, out: &Rendered) {
        let ready: Vec<(Throttled, StoreId)> = self.ready_due().cloned().collect();
        let now = Instant::now();
        for key in ready {
            self.due.remove(&key);
            self.published.insert(key.clone(), now);
            match key.0 {
                Throttled::Menu => publish_menu(out, &self.inv, &key.1).await,
                Throttled::Summary => publish_summary(out, &self.inv, &key.1, Timestamp::now().0).await,
            }
        }
    }

    /// Applies a batch and commits it as a group of its own (tests).
    #[cfg(test)]
    async fn process(&mut self, batch: Vec<Command>) -> Result<(), StoreError> {
        self.take_in(batch)?;
        let idle = self.idle().await;
        self.hand_over(idle).await
    }
}

/// The topic an input arrives on (the inverse of [`decode`]).
pub(crate) fn input_topic(input: &Input) -> Topic {
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use dishsync_inventory::catalog::{Dish, RecipeLine, Sku, StockParams, Store as StoreDef};
    use dishsync_inventory::Catalog;
    use dishsync_protocol::payload::StockKind;
    use dishsync_protocol::{BaseUnit, Unit};
    use proptest::prelude::*;

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

    /// Collects what the rules publish.
    #[derive(Default)]
    struct Collector(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl Publisher for Collector {
        async fn publish(&self, topic: &Topic, _payload: Vec<u8>, _retain: bool) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(topic.to_string());
            }
        }

        async fn retain(&self, _topic: &Topic, _payload: Vec<u8>) {}

        async fn deliver(&self, topic: &Topic, payload: Vec<u8>, _retained: bool) -> usize {
            self.publish(topic, payload, false).await;
            1
        }
    }

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("test id")
    }

    fn catalog() -> Arc<Catalog> {
        let sku = |name: &str, unit| Sku {
            id: id(name),
            name: name.into(),
            unit,
            pack: 1,
        };
        let params = StockParams {
            reorder_point: 1,
            par: 10,
            opening: None,
        };
        Arc::new(
            Catalog::new(
                vec![sku("a", BaseUnit::Pcs), sku("b", BaseUnit::G)],
                vec![Dish {
                    id: id("d"),
                    name: "d".into(),
                    low_mark: 1,
                    recipe: vec![
                        RecipeLine {
                            sku: id("a"),
                            per_portion: 1,
                        },
                        RecipeLine {
                            sku: id("b"),
                            per_portion: 10,
                        },
                    ],
                    category: None,
                    price: None,
                }],
                vec![StoreDef {
                    id: id("s1"),
                    name: "s1".into(),
                    menu: vec![id("d")],
                    stock: [(id("a"), params), (id("b"), params)].into_iter().collect(),
                    training: false,
                }],
            )
            .expect("catalog"),
        )
    }

    /// The k-th distinct input of the pool: stock events of several kinds
    /// on two SKUs.
    fn pool(k: usize) -> Input {
        let kinds = [
            StockKind::Receive,
            StockKind::Consume,
            StockKind::Adjust,
            StockKind::Waste,
        ];
        let kind = kinds[k % kinds.len()];
        let (sku, unit) = if k.is_multiple_of(2) {
            ("a", Unit::Pcs)
        } else {
            ("b", Unit::G)
        };
        let qty = (k % 5 + 1) as f64
            * if kind == StockKind::Adjust && k.is_multiple_of(3) {
                -1.0
            } else {
                1.0
            };
        Input::Stock {
            store: id("s1"),
            sku: id(sku),
            event: StockEventIn {
                id: id(&format!("e{k}")),
                kind,
                qty,
                unit,
                at: Timestamp(1_700_000_000_000 + k as i64),
                device: id("dev"),
                reference: None,
                reason: (kind == StockKind::Waste).then(|| "spilt".to_string()),
            },
        }
    }

    fn open(dir: &std::path::Path) -> Rules {
        let store = Store::open(dir).expect("sled");
        let (inv, _) = Inventory::restore(catalog(), store.load().expect("load"), 0);
        Rules::new(inv, store, Arc::new(Collector::default()))
    }

    /// Runs `batches` of pool indices through the rules on a real store in
    /// `dir`, reopening everything after batch `restart_after`. A batch
    /// whose `hand_over` is false stays in the open group with the next one
    /// (as under load, while the committer is busy). Returns the verdicts,
    /// the inventory at the end and the inventory restored from the store.
    async fn run(
        dir: &std::path::Path,
        batches: &[(Vec<usize>, bool)],
        restart_after: usize,
    ) -> (Vec<Verdict>, Inventory, Inventory) {
        let mut rules = open(dir);
        let mut verdicts = Vec::new();
        let mut replies = Vec::new();
        for (i, (batch, hand_over)) in batches.iter().enumerate() {
            let mut commands = Vec::new();
            for &k in batch {
                let (tx, rx) = oneshot::channel();
                commands.push(Command::Intake(
                    Intake {
                        input: pool(k),
                        device: id("dev"),
                    },
                    tx,
                ));
                replies.push(rx);
            }
            rules.take_in(commands).expect("apply");
            if *hand_over || i == restart_after || i + 1 == batches.len() {
                let idle = rules.idle().await;
                rules.hand_over(idle).await.expect("commit");
                for rx in replies.drain(..) {
                    verdicts.push(rx.await.expect("verdict"));
                }
            }
            if i == restart_after {
                rules.shutdown().await.expect("shutdown");
                rules = open(dir);
            }
        }
        let inv = rules.inv.clone();
        rules.shutdown().await.expect("shutdown");
        let restored = open(dir);
        let restored_inv = restored.inv.clone();
        restored.shutdown().await.expect("shutdown");
        (verdicts, inv, restored_inv)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the batching, repetition and restarts, every id is applied
        /// exactly once: the state equals applying each distinct input once.
        #[test]
        fn any_input_applied_twice_counts_once(
            batches in prop::collection::vec((prop::collection::vec(0usize..12, 1..8), any::<bool>()), 1..8),
            restart_after in 0usize..8,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let (verdicts, inv, restored) = runtime.block_on(run(dir.path(), &batches, restart_after));

            let mut expected = Inventory::new(catalog(), 0);
            let mut first = std::collections::HashSet::new();
            let flat: Vec<usize> = batches.iter().flat_map(|(b, _)| b).copied().collect();
            for (n, &k) in flat.iter().enumerate() {
                if first.insert(k) {
                    let Input::Stock { store, sku, event } = pool(k) else { unreachable!("pool is stock events") };
                    expected.apply_stock(&store, &sku, &event, event.at.0).expect("valid input");
                    prop_assert_eq!(&verdicts[n], &Verdict::Applied);
                } else {
                    prop_assert_eq!(&verdicts[n], &Verdict::Duplicate);
                }
            }
            for sku in ["a", "b"] {
                let got = inv.level_out(&id("s1"), &id(sku)).map(|l| l.qty);
                let want = expected.level_out(&id("s1"), &id(sku)).map(|l| l.qty);
                prop_assert_eq!(got, want, "sku {}", sku);
                let reopened = restored.level_out(&id("s1"), &id(sku)).map(|l| l.qty);
                prop_assert_eq!(reopened, want, "sku {} after reopening", sku);
            }
        }
    }

    /// A retired request or transfer is cleared — an empty retained
    /// message — under every topic it was retained on.
    #[tokio::test]
    async fn a_retired_document_is_cleared_under_each_of_its_topics() {
        let inv = Inventory::new(catalog(), 0);
        let mut changes = Changes::default();
        changes.retired.insert(Retired::Request {
            id: id("rq-s1-1"),
            store: id("s1"),
        });
        changes.retired.insert(Retired::Transfer {
            id: id("tr-1"),
            from: id("s1"),
            to: id("s2"),
        });
        let out = Rendered::default();
        publish_changes(&out, &inv, &changes).await;
        let cleared: Vec<(String, usize, bool)> = out
            .take()
            .into_iter()
            .map(|(topic, payload, retain)| (topic.to_string(), payload.len(), retain))
            .collect();
        let expected = [
            "stores/s1/replenishment/rq-s1-1",
            "hq/replenishment/rq-s1-1",
            "stores/s1/transfers/tr-1",
            "stores/s2/transfers/tr-1",
        ]
        .map(|topic| (topic.to_string(), 0, true));
        assert_eq!(cleared, expected);
    }

    /// Superseded retained documents are dropped before delivery, a topic
    /// is not delivered again before its turn ends — the longer the more
    /// subscribers it has — and everything else goes out in order without
    /// waiting.
    #[test]
    fn the_delivery_queue_keeps_the_newest_document_of_each_topic() {
        let level = |sku: &str| Topic::StockLevel {
            store: id("s1"),
            sku: id(sku),
        };
        let acks = Topic::Acks {
            store: id("s1"),
            device: id("pos-1"),
        };
        // Level a has 200 subscribers, level b 20, level c none.
        let subscribers = |topic: &Topic| match topic {
            t if *t == level("a") => 200,
            t if *t == level("b") => 20,
            _ => 0,
        };
        let mut queue = DeliveryQueue::default();
        let drain = |queue: &mut DeliveryQueue, now: Instant| {
            let mut out = Vec::new();
            let mut dropped = 0;
            loop {
                let (next, d) = queue.next(now);
                dropped += d;
                match next {
                    Next::Deliver((topic, body, retained)) => {
                        if retained {
                            queue.delivered(topic.clone(), now, subscribers(&topic));
                        }
                        out.push(String::from_utf8(body).expect("utf-8"));
                    }
                    other => return (out, dropped, other),
                }
            }
        };
        let t0 = Instant::now();
        for (topic, body, retain) in [
            (level("a"), "a1", true),
            (acks.clone(), "ack1", false),
            (level("b"), "b1", true),
            (level("a"), "a2", true),
            (acks.clone(), "ack2", false),
            (level("a"), "a3", true),
        ] {
            queue.push((topic, body.as_bytes().to_vec(), retain));
        }
        let (out, dropped, then) = drain(&mut queue, t0);
        assert_eq!(out, ["ack1", "b1", "ack2", "a3"]);
        assert_eq!((dropped, then), (2, Next::Idle));

        // a3 just went out to 200: a4 waits 5 ms, a5 replaces it. b1 went
        // out to 20: b2 waits 0.5 ms. c has no subscribers and never waits
        // (c2 replaces c1 only because both were queued). The ack does not
        // wait.
        let a_turn = Duration::from_millis(5);
        let b_turn = Duration::from_micros(500);
        queue.push((level("a"), b"a4".to_vec(), true));
        queue.push((level("b"), b"b2".to_vec(), true));
        queue.push((level("c"), b"c1".to_vec(), true));
        queue.push((acks.clone(), b"ack3".to_vec(), false));
        queue.push((level("a"), b"a5".to_vec(), true));
        queue.push((level("c"), b"c2".to_vec(), true));
        let soon = t0 + Duration::from_micros(100);
        let (out, dropped, then) = drain(&mut queue, soon);
        assert_eq!(out, ["ack3", "c2"]);
        assert_eq!((dropped, then), (2, Next::WaitUntil(t0 + b_turn)));
        assert_eq!(queue.len(), 2);
        queue.push((level("c"), b"c3".to_vec(), true));
        let (out, _, _) = drain(&mut queue, soon);
        assert_eq!(out, ["c3"]);
        let (out, _, then) = drain(&mut queue, t0 + b_turn);
        assert_eq!(out, ["b2"]);
        assert_eq!(then, Next::WaitUntil(t0 + a_turn));
        let (out, _, then) = drain(&mut queue, t0 + a_turn);
        assert_eq!(out, ["a5"]);
        assert_eq!(then, Next::Idle);
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn a_reused_id_with_other_content_is_refused_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (verdicts, _, _) = run(dir.path(), &[(vec![0], true), (vec![0], true)], 0).await;
        assert_eq!(verdicts, vec![Verdict::Applied, Verdict::Duplicate]);
        // `run` shut its rules down; the store is free to reopen.
        let mut rules = open(dir.path());
        let Input::Stock { store, sku, mut event } = pool(0) else {
            unreachable!("stock event")
        };
        event.qty += 1.0;
        let (tx, rx) = oneshot::channel();
        rules
            .process(vec![Command::Intake(
                Intake {
                    input: Input::Stock { store, sku, event },
                    device: id("dev"),
                },
                tx,
            )])
            .await
            .expect("commit");
        let verdict = rx.await.expect("verdict");
        assert!(matches!(verdict, Verdict::Rejected(r) if r.code == ErrorCode::IdConflict));
    }
}
