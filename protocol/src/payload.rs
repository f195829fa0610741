//! The JSON documents of the contract, one type per topic.
//!
//! Input documents (`*In`) are strict: unknown fields are refused, so a typo
//! in a field name is an error on the sender's `errors` topic rather than a
//! silently ignored value. Output documents are what the broker publishes.
//! Times travel as RFC 3339 strings ([`Timestamp`]).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, DishId, DocId, EventId, PromotionId, SkuId, StoreId};
use crate::units::{BaseUnit, Unit};
use crate::Millis;

/// A point in time, milliseconds since the Unix epoch, written as RFC 3339
/// (`2026-11-25T18:30:00.000Z`) on the wire. Any offset is accepted on input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub Millis);

impl Timestamp {
    /// Parses RFC 3339.
    pub fn parse(s: &str) -> Option<Timestamp> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| Timestamp(t.timestamp_millis()))
    }

    /// The current wall-clock time. Only shells call this; the domain core is
    /// always handed the time.
    pub fn now() -> Timestamp {
        Timestamp(Utc::now().timestamp_millis())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(f, "{}ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time")))
    }
}

// ---------------------------------------------------------------- inputs

/// What a stock event does to a SKU's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockKind {
    /// Goods received (positive).
    Receive,
    /// Used in production outside recipes (positive qty, lowers stock).
    Consume,
    /// Thrown away (positive qty, lowers stock); `reason` required.
    Waste,
    /// Received from another store (positive).
    TransferIn,
    /// Sent to another store (positive qty, lowers stock).
    TransferOut,
    /// Absolute stocktake: the level *is* `qty` at `at`.
    Count,
    /// Signed correction.
    Adjust,
}

impl StockKind {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            StockKind::Receive => "receive",
            StockKind::Consume => "consume",
            StockKind::Waste => "waste",
            StockKind::TransferIn => "transfer_in",
            StockKind::TransferOut => "transfer_out",
            StockKind::Count => "count",
            StockKind::Adjust => "adjust",
        }
    }
}

/// `stores/{store}/stock/{sku}/events`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockEventIn {
    /// Client-made unique id; the broker applies it at most once.
    pub id: EventId,
    /// What happened.
    pub kind: StockKind,
    /// How much, in `unit`.
    pub qty: f64,
    /// The unit of `qty`; must be of the SKU's family.
    pub unit: Unit,
    /// When it happened (device clock).
    pub at: Timestamp,
    /// The device that recorded it.
    pub device: DeviceId,
    /// Reference (a delivery note, a replenishment request id).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Why (required for `waste`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One line of a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleLine {
    /// The dish sold.
    pub dish: DishId,
    /// How many portions (≥ 1).
    pub portions: u32,
}

/// `stores/{store}/sales` — either a sale (`lines`, `at`, `device`) or a void
/// (`void`: the id of the sale to take back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleIn {
    /// Client-made unique id of this sale or void.
    pub id: EventId,
    /// The dishes sold (absent in a void).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<SaleLine>>,
    /// The id of the sale this message voids (absent in a sale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub void: Option<EventId>,
    /// When (required for a sale; a void without it takes the broker's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// The POS terminal (required for a sale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// A guarded sale: applied only if every line's portions are available
    /// at that moment, otherwise refused with `insufficient_stock`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guarded: bool,
}

/// The chef's setting for a dish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideStatus {
    /// 86: the dish may not be sold, whatever the stock says.
    SoldOut,
    /// Release: availability follows the stock again.
    Auto,
}

/// `stores/{store}/dishes/{dish}/override`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideIn {
    /// Client-made unique id.
    pub id: EventId,
    /// `sold_out` (86) or `auto` (release).
    pub status: OverrideStatus,
    /// Who (a person or device id).
    pub by: DeviceId,
    /// Optional end of a `sold_out`: it lapses by itself at that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// Free text shown to staff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `stores/{store}/scales/{device}/weight`: a raw scale reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightIn {
    /// Grams on the platform.
    pub grams: i64,
    /// When it was read.
    pub at: Timestamp,
    /// Whether the reading has settled.
    #[serde(default)]
    pub stable: bool,
}

// --------------------------------------------------------------- outputs

/// `stores/{store}/probes/{device}/temperature`: a probe's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureIn {
    /// Degrees Celsius.
    pub celsius: f64,
    /// When it was read.
    pub at: Timestamp,
}

/// A dish's availability as a POS sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DishStatus {
    /// Can be sold.
    Available,
    /// Can be sold, few portions left.
    Low,
    /// Cannot be sold.
    SoldOut,
}

/// An active chef's override, as shown in availability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveOverride {
    /// Who set it.
    pub by: DeviceId,
    /// When it lapses, if it does.
    pub until: Option<Timestamp>,
    /// The chef's note.
    pub note: Option<String>,
}

/// `stores/{store}/dishes/{dish}/availability` (retained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DishAvailabilityOut {
    /// The store.
    pub store: StoreId,
    /// The dish.
    pub dish: DishId,
    /// What a POS should do.
    pub status: DishStatus,
    /// Portions the stock allows (before any override).
    pub portions: u64,
    /// The ingredient that binds `portions`.
    pub limited_by: Option<SkuId>,
    /// The chef's 86, while active.
    #[serde(rename = "override")]
    pub override_: Option<ActiveOverride>,
    /// Predicted sell-out time (null until a forecast exists).
    pub sellout_eta: Option<Timestamp>,
    /// True when a feeding device is offline and the count may be out of date.
    pub stale: bool,
    /// True while a SKU of its recipe is at risk (an equipment fault the
    /// kitchen has not decided on).
    #[serde(default)]
    pub at_risk: bool,
    /// +1 with every change of this document.
    pub rev: u64,
    /// When this revision was made.
    pub at: Timestamp,
}

/// One dish inside the whole-menu document: every field of its
/// [`DishAvailabilityOut`] but the store and dish, which the document names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MenuEntry {
    /// As in [`DishAvailabilityOut`].
    pub status: DishStatus,
    /// As in [`DishAvailabilityOut`].
    pub portions: u64,
    /// As in [`DishAvailabilityOut`].
    pub limited_by: Option<SkuId>,
    /// As in [`DishAvailabilityOut`]: the chef's 86 with who, until and
    /// note, while active.
    #[serde(rename = "override")]
    pub override_: Option<ActiveOverride>,
    /// As in [`DishAvailabilityOut`].
    pub sellout_eta: Option<Timestamp>,
    /// As in [`DishAvailabilityOut`].
    pub stale: bool,
    /// As in [`DishAvailabilityOut`].
    #[serde(default)]
    pub at_risk: bool,
    /// The dish topic's `rev` this entry reflects.
    pub rev: u64,
    /// When that revision was made.
    pub at: Timestamp,
}

impl MenuEntry {
    /// The per-dish document of this entry.
    pub fn into_dish(self, store: StoreId, dish: DishId) -> DishAvailabilityOut {
        DishAvailabilityOut {
            store,
            dish,
            status: self.status,
            portions: self.portions,
            limited_by: self.limited_by,
            override_: self.override_,
            sellout_eta: self.sellout_eta,
            stale: self.stale,
            at_risk: self.at_risk,
            rev: self.rev,
            at: self.at,
        }
    }
}

/// One dish of a store's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogDish {
    /// The dish.
    pub dish: DishId,
    /// Its name for people.
    pub name: String,
    /// Where a menu groups it, if configured.
    pub category: Option<String>,
    /// Its place on the store's menu, from 1.
    pub order: u32,
    /// Its price as configured (a decimal string), if the chain publishes
    /// prices.
    pub price: Option<String>,
}

/// One SKU of a store's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSku {
    /// The SKU.
    pub sku: SkuId,
    /// Its name for people.
    pub name: String,
    /// The base unit its level is counted in.
    pub unit: BaseUnit,
}

/// `stores/{store}/catalog` (retained): what a POS or a menu board needs to
/// show the store's dishes without a second source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogOut {
    /// The store.
    pub store: StoreId,
    /// Its name for people.
    pub name: String,
    /// The store's local time offset from UTC (`+01:00`): what "today"
    /// and service hours are measured in.
    pub utc_offset: String,
    /// A demo or training store, where made-up traffic is welcome.
    pub training: bool,
    /// The menu, in its order.
    pub dishes: Vec<CatalogDish>,
    /// Every SKU the store keeps.
    pub skus: Vec<CatalogSku>,
    /// Grows with every broker start (the catalog changes only with the
    /// configuration, read at start).
    pub rev: u64,
    /// When it was published.
    pub at: Timestamp,
}

/// `stores/{store}/availability` (retained): the whole menu at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreAvailabilityOut {
    /// The store.
    pub store: StoreId,
    /// +1 with every publication of this document.
    pub rev: u64,
    /// When it was made.
    pub at: Timestamp,
    /// Every dish on the store's menu.
    pub dishes: BTreeMap<DishId, MenuEntry>,
}

/// A SKU's stock state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelState {
    /// Above the reorder point.
    Ok,
    /// At or below the reorder point, above zero.
    Low,
    /// Exactly zero.
    Out,
    /// Below zero: more was used than was ever recorded — a count is due.
    Negative,
}

/// `stores/{store}/stock/{sku}/level` (retained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelOut {
    /// The store.
    pub store: StoreId,
    /// The SKU.
    pub sku: SkuId,
    /// Stock in base units.
    pub qty: i64,
    /// The SKU's base unit.
    pub unit: BaseUnit,
    /// The store's reorder point for the SKU, base units.
    pub reorder_point: i64,
    /// The store's par level for the SKU, base units.
    pub par: i64,
    /// ok / low / out / negative.
    pub state: LevelState,
    /// True when the feeding device is offline.
    pub stale: bool,
    /// True while a fridge or freezer holding it is in fault and the
    /// kitchen has not decided (discard or keep).
    #[serde(default)]
    pub at_risk: bool,
    /// +1 with every change.
    pub rev: u64,
    /// When this revision was made.
    pub at: Timestamp,
}

/// `stores/{store}/stock/{sku}/variance` (retained): a SKU's usage
/// variance, count to count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarianceOut {
    /// The store.
    pub store: StoreId,
    /// The SKU.
    pub sku: SkuId,
    /// The SKU's base unit (every quantity below is in it).
    pub unit: BaseUnit,
    /// The last period between two counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<VariancePeriod>,
    /// On a SKU on a scale: the open period, from the last count to the
    /// scale's latest reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<VariancePeriod>,
    /// +1 with every change.
    pub rev: u64,
    /// When this revision was made.
    pub at: Timestamp,
}

/// One period of [`VarianceOut`], base units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariancePeriod {
    /// When the opening count was made.
    pub from: Timestamp,
    /// When the closing count (or reading) was made.
    pub to: Timestamp,
    /// What the opening count found.
    pub opening: i64,
    /// What the closing count (or reading) found.
    pub counted: i64,
    /// Delivered in between.
    pub received: i64,
    /// Came from other stores.
    pub transferred_in: i64,
    /// Sent to other stores.
    pub transferred_out: i64,
    /// Net of adjustments (signed).
    pub adjusted: i64,
    /// opening + received + transferred_in − transferred_out + adjusted − counted.
    pub actual: i64,
    /// Σ sales × recipe, net of voids.
    pub theoretical: i64,
    /// Consumed outside sales (prep, staff meals).
    pub consumed: i64,
    /// Wasted.
    pub waste: i64,
    /// actual − theoretical − waste − consumed.
    pub unexplained: i64,
    /// unexplained ÷ theoretical, when anything was sold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
}

/// `stores/{store}/acks/{device}`: these ids are durably committed (applied,
/// or recognised as already applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckOut {
    /// Committed ids, in commit order.
    pub ids: Vec<EventId>,
}

/// Machine-readable class of a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not the document the topic expects.
    MalformedPayload,
    /// Larger than the input limit.
    Oversize,
    /// A topic the contract does not have, or one only the broker publishes.
    UnknownTopic,
    /// The store is not configured.
    UnknownStore,
    /// The SKU is not configured.
    UnknownSku,
    /// The dish is not configured or not on this store's menu.
    UnknownDish,
    /// A unit of the wrong family, or an unknown unit.
    WrongUnit,
    /// Zero, negative or fractional where that is not allowed.
    BadQuantity,
    /// A required field is missing or an invalid combination was sent.
    InvalidField,
    /// The id was applied before with different content.
    IdConflict,
    /// A void of an unknown or already voided sale.
    BadVoid,
    /// The device's role or store does not allow this topic.
    NotPermitted,
    /// No such replenishment request or transfer.
    UnknownDocument,
    /// The action does not fit the document's state (shipping a cancelled
    /// request, dispatching an unaccepted transfer).
    InvalidTransition,
    /// The broker could not commit; the input was not applied. Retry.
    Unavailable,
    /// A required field is absent.
    MissingField,
    /// The input's `device` is not the device that published it.
    DeviceMismatch,
    /// A guarded sale asked for more portions than are available.
    InsufficientStock,
    /// Stamped further in the future than the broker's clock allows.
    ClockAhead,
}

/// `stores/{store}/errors/{device}`: an input was rejected; nothing of it was
/// applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorOut {
    /// The topic the input was published on.
    pub topic: String,
    /// The input's id, when it could be read.
    pub id: Option<String>,
    /// Machine-readable class.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub error: String,
    /// For `insufficient_stock`: the portions each dish of the sale had
    /// left when it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portions_left: Option<BTreeMap<DishId, u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = Timestamp::parse("2026-11-25T18:30:00+01:00").expect("rfc3339");
        assert_eq!(t.to_string(), "2026-11-25T17:30:00.000Z");
        assert!(Timestamp::parse("yesterday").is_none());
        let back: Timestamp = serde_json::from_str("\"2026-11-25T17:30:00.000Z\"").expect("json");
        assert_eq!(back, t);
    }

    #[test]
    fn stock_event_is_strict() {
        let ok = r#"{"id":"e1","kind":"receive","qty":2.5,"unit":"kg","at":"2026-11-25T17:30:00Z","device":"tab-1","ref":"r-1"}"#;
        let ev: StockEventIn = serde_json::from_str(ok).expect("valid");
        assert_eq!(ev.reference.as_deref(), Some("r-1"));
        let typo =
            r#"{"id":"e1","kind":"waste","qty":1,"unit":"kg","at":"2026-11-25T17:30:00Z","device":"t","reson":"x"}"#;
        assert!(serde_json::from_str::<StockEventIn>(typo).is_err());
        let bad_kind = r#"{"id":"e1","kind":"steal","qty":1,"unit":"kg","at":"2026-11-25T17:30:00Z","device":"t"}"#;
        assert!(serde_json::from_str::<StockEventIn>(bad_kind).is_err());
    }
}

/// One series of [`MetricsOut::inputs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputCount {
    /// How the inputs came in: `mqtt`, `worker`, `demo`.
    pub transport: String,
    /// `applied`, `duplicate`, `unchanged` or `refused`.
    pub outcome: String,
    /// For a refusal, its code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// How many since the broker started.
    pub count: u64,
}

/// `$SYS/dishsync/metrics`: what the broker counts since it started (the
/// figures of `/metrics`), retained and renewed every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsOut {
    /// When the figures were taken.
    pub at: Timestamp,
    /// Inputs by transport, outcome and code.
    pub inputs: Vec<InputCount>,
    /// Group commits (journal records, each synced once).
    pub group_commits: u64,
    /// Inputs in those group commits.
    pub group_commit_inputs: u64,
    /// Journal syncs, and the seconds they took together.
    pub journal_syncs: u64,
    /// Seconds the journal syncs took, together.
    pub journal_sync_seconds: f64,
    /// Messages delivered to current subscribers.
    pub deliveries: u64,
    /// Messages the engine could not deliver.
    pub deliveries_dropped: u64,
    /// Store alerts raised.
    pub alerts_raised: u64,
    /// Connected clients by role.
    pub connections: std::collections::BTreeMap<String, u64>,
    /// Replenishment requests open at the central kitchen.
    pub open_requests: u64,
    /// Transfers proposed, accepted or on their way.
    pub active_transfers: u64,
    /// Journal groups committed and not yet checkpointed (what a restart
    /// replays).
    pub checkpoint_lag_groups: u64,
    /// Webhook deliveries taken by their endpoints.
    #[serde(default)]
    pub webhook_deliveries: u64,
    /// Webhook attempts that failed (each retried, or given up).
    #[serde(default)]
    pub webhook_failed_attempts: u64,
    /// Webhook deliveries given up (dead letters).
    #[serde(default)]
    pub webhook_dead_letters: u64,
    /// Webhook deliveries waiting or being sent, by endpoint.
    #[serde(default)]
    pub webhook_pending: std::collections::BTreeMap<String, u64>,
    /// Web app sessions open.
    #[serde(default)]
    pub web_sessions: u64,
}

/// `hq/alerts`: something about the broker itself that operators must know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerAlertOut {
    /// Unique id of this alert.
    pub id: String,
    /// `messages_dropped`: messages could not be delivered to a subscriber;
    /// `webhook_dead_letter`: a webhook delivery was given up.
    pub kind: String,
    /// Human-readable explanation.
    pub message: String,
    /// Running count behind the alert (e.g. messages dropped since start).
    pub count: u64,
    /// When.
    pub at: Timestamp,
}

// ------------------------------------- replenishment, transfers, alerts

/// The body of an action on a request or transfer
/// (`hq/replenishment/{id}/{action}`, `stores/{store}/transfers/{id}/{action}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionIn {
    /// Client-made unique id of this action.
    pub id: EventId,
    /// Who acts.
    pub by: DeviceId,
    /// Free text (≤ 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `stores/{store}/transfers/request`: a manager asks for stock from another
/// store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequestIn {
    /// Client-made unique id.
    pub id: EventId,
    /// The SKU needed.
    pub sku: SkuId,
    /// How much.
    pub qty: f64,
    /// In what unit.
    pub unit: Unit,
    /// Who asks.
    pub by: DeviceId,
}

/// Where a replenishment request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Raised; lines may still be merged in.
    Open,
    /// The central kitchen has seen it.
    Acknowledged,
    /// On its way.
    Shipped,
    /// Every line received (final).
    Received,
    /// Will not come (final).
    Cancelled,
}

/// One line of a replenishment request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// The SKU.
    pub sku: SkuId,
    /// How much, in the SKU's base unit (par − level, rounded up to the pack).
    pub qty: i64,
    /// The base unit.
    pub unit: BaseUnit,
    /// Whether a `receive` with this request as `ref` has arrived for it.
    pub received: bool,
}

/// `hq/replenishment/{id}` and `stores/{store}/replenishment/{id}` (retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOut {
    /// `rq-{store}-{n}`.
    pub id: DocId,
    /// The store that needs the goods.
    pub store: StoreId,
    /// What it needs.
    pub lines: Vec<RequestLine>,
    /// Where it stands.
    pub state: RequestState,
    /// Why it was raised, or the last action's note.
    pub reason: String,
    /// When it was raised.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// +1 with every change.
    pub rev: u64,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Asked of the giver; waiting for accept or decline.
    Proposed,
    /// The giver agreed.
    Accepted,
    /// The giver refused (final; the next candidate gets a new proposal).
    Declined,
    /// Nobody answered in time (final; the next candidate gets a new proposal).
    Expired,
    /// Sent (`transfer_out` booked at the giver).
    Dispatched,
    /// Arrived (`transfer_in` booked at the taker; final).
    Received,
    /// Called off before dispatch (final).
    Cancelled,
}

/// `stores/{store}/transfers/{id}` under both stores (retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferOut {
    /// `tr-{n}`.
    pub id: DocId,
    /// The giving store.
    pub from: StoreId,
    /// The taking store.
    pub to: StoreId,
    /// The SKU.
    pub sku: SkuId,
    /// How much, in base units.
    pub qty: i64,
    /// The base unit.
    pub unit: BaseUnit,
    /// Where it stands.
    pub state: TransferState,
    /// Why it was proposed, or the last action's note.
    pub reason: String,
    /// When an unanswered proposal expires.
    pub expires_at: Option<Timestamp>,
    /// Travel time between the stores, minutes.
    pub travel_minutes: u32,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// +1 with every change.
    pub rev: u64,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A SKU at or below its reorder point.
    LowStock,
    /// A SKU below zero.
    NegativeStock,
    /// A dish sold out.
    SoldOut,
    /// A dish predicted to sell out within the horizon.
    SelloutPredicted,
    /// Today's waste of a SKU above the configured share of its use.
    WasteSpike,
    /// A device that feeds stock levels is offline.
    DeviceOffline,
    /// A count found more of a SKU's use unexplained than the configured
    /// share of its theoretical use.
    UsageVariance,
    /// A fridge or freezer stayed outside its safe range past its grace
    /// period: the stock it holds is at risk until the kitchen decides.
    EquipmentFault,
    /// A probe reported nothing for longer than it should.
    ProbeSilent,
    /// A running promotion's dish is not covered at a store: `at_risk` or
    /// `short` of its limiting ingredient.
    PromotionAtRisk,
}

/// Raised when a condition starts, cleared when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition started.
    Raised,
    /// The condition ended.
    Cleared,
}

/// `stores/{store}/alerts` (not retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertOut {
    /// Unique id; the clearing message carries the id of the raising one.
    pub id: String,
    /// What it is about.
    pub kind: AlertKind,
    /// raised or cleared.
    pub state: AlertState,
    /// The SKU concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<SkuId>,
    /// The dish concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dish: Option<DishId>,
    /// The device concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// Human-readable.
    pub message: String,
    /// When.
    pub at: Timestamp,
}

/// A slow mover of [`SummaryOut::slow_movers`], base units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowMoverOut {
    /// The SKU.
    pub sku: SkuId,
    /// Its level now.
    pub level: i64,
    /// Its mean daily use over the days kept.
    pub usage_per_day: f64,
    /// level ÷ usage per day; absent when nothing was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover_days: Option<f64>,
    /// How long it keeps, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelf_life_days: Option<u32>,
    /// The store's par now.
    pub par: i64,
    /// usage per day × (review period + lead time) × (1 + safety stock),
    /// rounded up to the pack.
    pub suggested_par: i64,
    /// The days the figures are over (up to 7).
    pub waste_days: u32,
    /// What it wasted over those days.
    pub waste: i64,
}

/// A store's waste against its use today, in money
/// ([`SummaryOut::cost`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostOut {
    /// The currency (`[planning] currency`), if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// What today's waste cost.
    pub waste: f64,
    /// What today's use (sales, consumption, transfers out) cost.
    pub used: f64,
    /// `waste` ÷ (`used` + `waste`); 0 when both are 0.
    pub share: f64,
    /// SKUs with use or waste today and no cost, left out of the figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncosted: Vec<SkuId>,
}

/// Waste against use of one SKU today.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WasteLine {
    /// Wasted today, base units.
    pub waste: i64,
    /// Used today (sales, consumption), base units.
    pub used: i64,
    /// waste ÷ (waste + used).
    pub ratio: f64,
}

/// `hq/stores/{store}/summary` (retained): the store at a glance for HQ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryOut {
    /// The store.
    pub store: StoreId,
    /// Dishes sold out now.
    pub sold_out: Vec<DishId>,
    /// SKUs at or below their reorder point.
    pub low: Vec<SkuId>,
    /// Replenishment requests not yet received or cancelled.
    pub open_requests: Vec<DocId>,
    /// Transfers (to or from the store) not yet finished.
    pub open_transfers: Vec<DocId>,
    /// The mean over the SKUs with any use or waste today of each one's
    /// `ratio`: Σ `waste[…].ratio` ÷ `counted` (SKUs without waste count
    /// as 0).
    pub waste_ratio: f64,
    /// How many SKUs had any use or waste today.
    pub counted: u32,
    /// Today's waste per SKU with any waste.
    pub waste: BTreeMap<SkuId, WasteLine>,
    /// SKUs stocked for longer than they keep or than deliveries need
    /// (waste risk), with a par to stock less.
    #[serde(default)]
    pub slow_movers: Vec<SlowMoverOut>,
    /// Today's waste and use in money, over the SKUs with a cost; absent
    /// when no SKU with use or waste today has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostOut>,
    /// +1 with every publication.
    pub rev: u64,
    /// When.
    pub at: Timestamp,
}

/// `hq/promotions/{promotion}/plan`: HQ plans a promotion of a dish in
/// some stores, or plans it anew (the latest plan holds). Exactly one of
/// `uplift` and `portions_per_day` says the expected demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionIn {
    /// Client-made unique id of this plan.
    pub id: EventId,
    /// The dish promoted.
    pub dish: DishId,
    /// The stores it runs in.
    pub stores: Vec<StoreId>,
    /// When it starts.
    pub start: Timestamp,
    /// When it ends (after `start`).
    pub end: Timestamp,
    /// Expected sales as a multiple of the dish's usual daily sales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplift: Option<f64>,
    /// Expected portions per store and day (a new dish has no usual sales).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portions_per_day: Option<f64>,
    /// Who plans it.
    pub by: DeviceId,
    /// Free text (≤ 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Whether a store can carry a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Covered with the safety margin.
    Ready,
    /// Covered, but inside the safety margin.
    AtRisk,
    /// Not covered.
    Short,
}

/// Where a promotion stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionState {
    /// Not started yet.
    Scheduled,
    /// Between its start and its end.
    Running,
    /// Past its end (final).
    Ended,
    /// Called off by HQ (final).
    Cancelled,
}

/// One ingredient of a promoted dish at one store, base units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngredientCoverOut {
    /// The SKU.
    pub sku: SkuId,
    /// Its base unit.
    pub unit: BaseUnit,
    /// What the day judged needs of it: the promotion and everything else
    /// the store sells that uses it.
    pub need: i64,
    /// On hand now.
    pub on_hand: i64,
    /// Due before the day judged begins: requested and not received,
    /// transfers accepted or on their way.
    pub due: i64,
    /// (`on_hand` + `due`) ÷ `need`; absent when nothing is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
}

/// `stores/{store}/promotions/{promotion}` (retained): a store's readiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorePromotionOut {
    /// The promotion.
    pub promotion: PromotionId,
    /// The store.
    pub store: StoreId,
    /// The dish promoted.
    pub dish: DishId,
    /// Where the promotion stands.
    pub state: PromotionState,
    /// When it starts.
    pub start: Timestamp,
    /// When it ends.
    pub end: Timestamp,
    /// Portions of the dish expected per day here.
    pub portions_per_day: f64,
    /// ready, at_risk or short.
    pub status: Readiness,
    /// The lowest coverage of an ingredient; absent when nothing is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// The ingredient with that coverage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limiting: Option<SkuId>,
    /// Each ingredient, in recipe order.
    pub ingredients: Vec<IngredientCoverOut>,
    /// The replenishment request an early line for it went into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<DocId>,
    /// The transfer proposed when the central kitchen could not make it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<DocId>,
    /// +1 with every change.
    pub rev: u64,
    /// When it last changed.
    pub at: Timestamp,
}

/// A store's line in a promotion's HQ document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionStoreOut {
    /// The store.
    pub store: StoreId,
    /// ready, at_risk or short.
    pub status: Readiness,
    /// Its lowest coverage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// The ingredient with that coverage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limiting: Option<SkuId>,
}

/// `hq/promotions/{promotion}` (retained): a promotion and every store's
/// readiness, worst first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionOut {
    /// The promotion.
    pub id: PromotionId,
    /// The dish promoted.
    pub dish: DishId,
    /// Where it stands.
    pub state: PromotionState,
    /// When it starts.
    pub start: Timestamp,
    /// When it ends.
    pub end: Timestamp,
    /// As planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplift: Option<f64>,
    /// As planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portions_per_day: Option<f64>,
    /// Who planned it, or called it off.
    pub by: DeviceId,
    /// The plan's note, or the cancellation's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Each store, worst first.
    pub stores: Vec<PromotionStoreOut>,
    /// +1 with every change.
    pub rev: u64,
    /// When it last changed.
    pub at: Timestamp,
}
