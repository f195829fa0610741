//! The topic grammar: the only place in the system that knows topic strings.
//!
//! [`Topic`] parses (`FromStr`) and prints (`Display`) every topic of the
//! contract in `topics.md`. Inputs are what devices publish and the rules
//! consume; outputs are published by the broker alone. [`Family`] groups
//! them as permissions do, and [`pattern`] holds each topic's pattern: the
//! one source the ACL, the worker's and the client's subscription filters
//! are built from.

use std::fmt;
use std::str::FromStr;

use crate::ids::{DeviceId, DishId, DocId, IdError, PromotionId, SkuId, StoreId};

/// Every topic of the dishsync contract.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    // ---- inputs: devices → broker ----
    /// `stores/{store}/stock/{sku}/events` — a stock change of one SKU.
    StockEvents {
        /// The store.
        store: StoreId,
        /// The SKU whose stock changes.
        sku: SkuId,
    },
    /// `stores/{store}/sales` — a sale (dish lines) or a void of one.
    Sales {
        /// The store.
        store: StoreId,
    },
    /// `stores/{store}/dishes/{dish}/override` — a chef's 86 or its release.
    DishOverride {
        /// The store.
        store: StoreId,
        /// The dish.
        dish: DishId,
    },
    /// `stores/{store}/devices/{device}/status` — `online`/`offline`, retained,
    /// set by the device itself (and its last will).
    DeviceStatus {
        /// The store.
        store: StoreId,
        /// The device.
        device: DeviceId,
    },
    /// `stores/{store}/scales/{device}/weight` — raw scale readings, routed
    /// as they are.
    ScaleWeight {
        /// The store.
        store: StoreId,
        /// The scale.
        device: DeviceId,
    },

    // ---- outputs: broker → devices ----
    /// `stores/{store}/dishes/{dish}/availability` — retained.
    DishAvailability {
        /// The store.
        store: StoreId,
        /// The dish.
        dish: DishId,
    },
    /// `stores/{store}/availability` — the whole menu in one retained document.
    StoreAvailability {
        /// The store.
        store: StoreId,
    },
    /// `stores/{store}/stock/{sku}/level` — retained.
    StockLevel {
        /// The store.
        store: StoreId,
        /// The SKU.
        sku: SkuId,
    },
    /// `stores/{store}/stock/{sku}/variance` — retained.
    StockVariance {
        /// The store.
        store: StoreId,
        /// The SKU.
        sku: SkuId,
    },
    /// `stores/{store}/acks/{device}` — ids durably committed.
    Acks {
        /// The store.
        store: StoreId,
        /// The device whose inputs are acknowledged.
        device: DeviceId,
    },
    /// `stores/{store}/errors/{device}` — why an input was rejected.
    Errors {
        /// The store.
        store: StoreId,
        /// The device whose input was rejected.
        device: DeviceId,
    },
    /// `hq/errors/{device}` — why an input of a chain-wide device that
    /// names no store was rejected.
    HqErrors {
        /// The device whose input was rejected.
        device: DeviceId,
    },
    /// `stores/{store}/probes/{device}/temperature` — a fridge's or
    /// freezer's probe reports its temperature.
    ProbeTemperature {
        /// The store.
        store: StoreId,
        /// The probe.
        device: DeviceId,
    },
    /// `stores/{store}/probes/{device}/{action}` — the kitchen decides
    /// what becomes of the stock a probe's fault put at risk.
    ProbeAction {
        /// The store.
        store: StoreId,
        /// The probe.
        device: DeviceId,
        /// discard or keep.
        action: ProbeAction,
    },
    /// `hq/alerts` — alerts about the broker itself (not retained).
    BrokerAlerts,
    /// `$SYS/dishsync/metrics` — what the broker counts, for operators who
    /// watch MQTT only (retained, renewed every few seconds).
    BrokerMetrics,
    /// `stores/{store}/catalog` — the store's menu with names, categories,
    /// order and prices, and its SKUs (retained).
    Catalog {
        /// The store.
        store: StoreId,
    },

    // ---- replenishment, transfers, alerts, summary ----
    /// `hq/replenishment/{id}/{action}` — the central kitchen acts on a request.
    RequestAction {
        /// The request.
        id: DocId,
        /// acknowledge, ship or cancel.
        action: RequestAction,
    },
    /// `stores/{store}/transfers/request` — a manager asks for a transfer.
    TransferRequest {
        /// The store that needs stock.
        store: StoreId,
    },
    /// `stores/{store}/transfers/{id}/{action}` — a store acts on a transfer.
    TransferAction {
        /// The store acting.
        store: StoreId,
        /// The transfer.
        id: DocId,
        /// accept, decline, dispatch, receive or cancel.
        action: TransferAction,
    },
    /// `stores/{store}/replenishment/{id}` — a request's state (retained).
    StoreRequest {
        /// The store.
        store: StoreId,
        /// The request.
        id: DocId,
    },
    /// `hq/replenishment/{id}` — a request's state for the central kitchen (retained).
    HqRequest {
        /// The request.
        id: DocId,
    },
    /// `stores/{store}/transfers/{id}` — a transfer's state, under both stores (retained).
    Transfer {
        /// The store (giver or taker).
        store: StoreId,
        /// The transfer.
        id: DocId,
    },
    /// `stores/{store}/alerts` — raised and cleared alerts (not retained).
    Alerts {
        /// The store.
        store: StoreId,
    },
    /// `hq/stores/{store}/summary` — the store at a glance (retained).
    Summary {
        /// The store.
        store: StoreId,
    },

    // ---- promotions ----
    /// `hq/promotions/{promotion}/{action}` — HQ plans a promotion, or
    /// calls it off.
    PromotionAction {
        /// The promotion.
        id: PromotionId,
        /// plan or cancel.
        action: PromotionAction,
    },
    /// `hq/promotions/{promotion}` — a promotion with every store's
    /// readiness (retained).
    HqPromotion {
        /// The promotion.
        id: PromotionId,
    },
    /// `stores/{store}/promotions/{promotion}` — a store's readiness for a
    /// promotion (retained).
    StorePromotion {
        /// The store.
        store: StoreId,
        /// The promotion.
        id: PromotionId,
    },
    /// `hq/acks/{device}` — ids of a chain-wide device's inputs that name
    /// no store, durably committed.
    HqAcks {
        /// The device whose inputs are acknowledged.
        device: DeviceId,
    },
}

/// What HQ does with a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromotionAction {
    /// Plans it, or plans it anew (dish, stores, dates, demand).
    Plan,
    /// Calls it off.
    Cancel,
}

impl PromotionAction {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "plan" => Self::Plan,
            "cancel" => Self::Cancel,
            _ => return None,
        })
    }

    /// The action's name in topics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Cancel => "cancel",
        }
    }
}

/// What the central kitchen does with a replenishment request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestAction {
    /// Seen and planned.
    Acknowledge,
    /// On its way.
    Ship,
    /// Will not be delivered.
    Cancel,
}

/// What the kitchen does with the stock an equipment fault put at risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeAction {
    /// Throw it away: exactly the stock on hand is booked as waste.
    Discard,
    /// It is safe: the risk is lifted.
    Keep,
}

impl ProbeAction {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "discard" => Self::Discard,
            "keep" => Self::Keep,
            _ => return None,
        })
    }

    /// The action's name in topics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discard => "discard",
            Self::Keep => "keep",
        }
    }
}

/// What a store does with a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferAction {
    /// The giver agrees.
    Accept,
    /// The giver refuses; the next candidate is asked.
    Decline,
    /// The giver sends the goods (books `transfer_out`).
    Dispatch,
    /// The taker has the goods (books `transfer_in`).
    Receive,
    /// Either store calls it off before dispatch.
    Cancel,
}

impl RequestAction {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "acknowledge" => Self::Acknowledge,
            "ship" => Self::Ship,
            "cancel" => Self::Cancel,
            _ => return None,
        })
    }

    /// The action's name in topics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acknowledge => "acknowledge",
            Self::Ship => "ship",
            Self::Cancel => "cancel",
        }
    }
}

impl TransferAction {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accept" => Self::Accept,
            "decline" => Self::Decline,
            "dispatch" => Self::Dispatch,
            "receive" => Self::Receive,
            "cancel" => Self::Cancel,
            _ => return None,
        })
    }

    /// The action's name in topics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Decline => "decline",
            Self::Dispatch => "dispatch",
            Self::Receive => "receive",
            Self::Cancel => "cancel",
        }
    }
}

/// Who may publish on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Devices publish; the rules consume.
    Input,
    /// Devices publish for each other (presence); the rules only watch.
    Device,
    /// Only the broker publishes.
    Output,
}

/// Why a topic string is not part of the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The shape of the topic matches nothing in the contract.
    #[error("topic {0:?} is not part of the dishsync contract (see topics.md)")]
    Unknown(String),
    /// The shape matches but an id segment is invalid.
    #[error("topic {topic:?}: {source}")]
    BadId {
        /// The topic as given (truncated).
        topic: String,
        /// What is wrong with the id.
        source: IdError,
    },
}

/// A topic pattern, one level per item: a literal, `*` (any id), `{store}`
/// (the store) or `{device}` (a device). The ACL judges filters against
/// patterns; subscription filters are built from them ([`Pattern::filter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern(&'static [&'static str]);

impl Pattern {
    /// Its levels.
    pub fn levels(self) -> &'static [&'static str] {
        self.0
    }

    /// The MQTT topic filter of the pattern for `store` and `device`: `+`
    /// for any id, and for the store or device where `None` is given.
    pub fn filter(self, store: Option<&StoreId>, device: Option<&DeviceId>) -> String {
        let levels: Vec<&str> = self
            .0
            .iter()
            .map(|level| match *level {
                "*" => "+",
                "{store}" => store.map_or("+", |s| s.as_str()),
                "{device}" => device.map_or("+", |d| d.as_str()),
                literal => literal,
            })
            .collect();
        levels.join("/")
    }

    /// Whether `topic` is one of the pattern's topics.
    pub fn matches(self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        levels.len() == self.0.len()
            && self
                .0
                .iter()
                .zip(&levels)
                .all(|(p, l)| matches!(*p, "*" | "{store}" | "{device}") || p == l)
    }
}

/// The patterns of the contract's topics.
pub mod pattern {
    use super::Pattern;

    /// `stores/{store}/stock/*/events`: stock events of one SKU.
    pub const STOCK_EVENTS: Pattern = Pattern(&["stores", "{store}", "stock", "*", "events"]);
    /// `stores/{store}/sales`: sales and voids.
    pub const SALES: Pattern = Pattern(&["stores", "{store}", "sales"]);
    /// `stores/{store}/dishes/*/override`: a chef's override of a dish.
    pub const DISH_OVERRIDE: Pattern = Pattern(&["stores", "{store}", "dishes", "*", "override"]);
    /// `stores/{store}/devices/{device}/status`: a device's presence.
    pub const DEVICE_STATUS: Pattern = Pattern(&["stores", "{store}", "devices", "{device}", "status"]);
    /// `stores/{store}/dishes/*/availability`: a dish's availability.
    pub const DISH_AVAILABILITY: Pattern = Pattern(&["stores", "{store}", "dishes", "*", "availability"]);
    /// `stores/{store}/availability`: the whole menu.
    pub const STORE_AVAILABILITY: Pattern = Pattern(&["stores", "{store}", "availability"]);
    /// `stores/{store}/stock/*/level`: a SKU's level.
    pub const STOCK_LEVEL: Pattern = Pattern(&["stores", "{store}", "stock", "*", "level"]);
    /// `stores/{store}/stock/{sku}/variance`: a SKU's usage variance.
    pub const STOCK_VARIANCE: Pattern = Pattern(&["stores", "{store}", "stock", "*", "variance"]);
    /// `stores/{store}/acks/{device}`: a device's acks.
    pub const ACKS: Pattern = Pattern(&["stores", "{store}", "acks", "{device}"]);
    /// `stores/{store}/errors/{device}`: a device's errors.
    pub const ERRORS: Pattern = Pattern(&["stores", "{store}", "errors", "{device}"]);
    /// `hq/acks/{device}`: a chain-wide device's acks of inputs that name no store.
    pub const HQ_ACKS: Pattern = Pattern(&["hq", "acks", "{device}"]);
    /// `hq/errors/{device}`: a chain-wide device's errors.
    pub const HQ_ERRORS: Pattern = Pattern(&["hq", "errors", "{device}"]);
    /// `hq/alerts`: the broker's own alerts.
    pub const BROKER_ALERTS: Pattern = Pattern(&["hq", "alerts"]);
    /// `$SYS/dishsync/metrics`: what the broker counts.
    pub const BROKER_METRICS: Pattern = Pattern(&["$SYS", "dishsync", "metrics"]);
    /// `hq/replenishment/*/*`: the central kitchen's actions on requests.
    pub const REQUEST_ACTION: Pattern = Pattern(&["hq", "replenishment", "*", "*"]);
    /// `stores/{store}/replenishment/*`: a store's replenishment requests.
    pub const STORE_REQUEST: Pattern = Pattern(&["stores", "{store}", "replenishment", "*"]);
    /// `hq/replenishment/*`: every replenishment request, for HQ.
    pub const HQ_REQUEST: Pattern = Pattern(&["hq", "replenishment", "*"]);
    /// `stores/{store}/transfers/*/*`: a store's actions on transfers.
    pub const TRANSFER_ACTION: Pattern = Pattern(&["stores", "{store}", "transfers", "*", "*"]);
    /// `stores/{store}/transfers/request`: a manager's transfer requests.
    pub const TRANSFER_REQUEST: Pattern = Pattern(&["stores", "{store}", "transfers", "request"]);
    /// `stores/{store}/transfers/*`: transfers to and from a store.
    pub const TRANSFER: Pattern = Pattern(&["stores", "{store}", "transfers", "*"]);
    /// `stores/{store}/alerts`: a store's alerts.
    pub const ALERTS: Pattern = Pattern(&["stores", "{store}", "alerts"]);
    /// `hq/stores/{store}/summary`: a store's HQ summary.
    pub const SUMMARY: Pattern = Pattern(&["hq", "stores", "{store}", "summary"]);
    /// `stores/{store}/scales/{device}/weight`: a scale's raw readings.
    pub const SCALE_WEIGHT: Pattern = Pattern(&["stores", "{store}", "scales", "{device}", "weight"]);
    /// `stores/{store}/probes/{device}/temperature`: a probe's readings.
    pub const PROBE_TEMPERATURE: Pattern = Pattern(&["stores", "{store}", "probes", "{device}", "temperature"]);
    /// `stores/{store}/probes/*/discard`: the kitchen discards what a fault put at risk.
    pub const PROBE_DISCARD: Pattern = Pattern(&["stores", "{store}", "probes", "*", "discard"]);
    /// `stores/{store}/probes/*/keep`: the kitchen keeps it.
    pub const PROBE_KEEP: Pattern = Pattern(&["stores", "{store}", "probes", "*", "keep"]);
    /// `stores/{store}/catalog`: a store's catalog.
    pub const CATALOG: Pattern = Pattern(&["stores", "{store}", "catalog"]);
    /// `hq/promotions/*/*`: HQ plans or calls off a promotion.
    pub const PROMOTION_ACTION: Pattern = Pattern(&["hq", "promotions", "*", "*"]);
    /// `hq/promotions/*`: a promotion with every store's readiness.
    pub const HQ_PROMOTION: Pattern = Pattern(&["hq", "promotions", "*"]);
    /// `stores/{store}/promotions/*`: a store's readiness for a promotion.
    pub const STORE_PROMOTION: Pattern = Pattern(&["stores", "{store}", "promotions", "*"]);
}

/// Topic families of the contract: what permissions are granted on
/// (topics.md's matrix), each with its patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `stores/{store}/stock/{sku}/events`
    StockEvents,
    /// `stores/{store}/sales`
    Sales,
    /// `stores/{store}/dishes/{dish}/override` and `stores/{store}/probes/{probe}/{discard,keep}`
    Override,
    /// `stores/{store}/devices/{device}/status`
    Presence,
    /// `stores/{store}/dishes/{dish}/availability` and `stores/{store}/availability`
    Availability,
    /// `stores/{store}/stock/{sku}/level` and `stores/{store}/stock/{sku}/variance`
    Level,
    /// `stores/{store}/acks/{device}`, `stores/{store}/errors/{device}`,
    /// `hq/acks/{device}` and `hq/errors/{device}`
    AcksErrors,
    /// `hq/alerts`
    BrokerAlerts,
    /// `hq/replenishment/{id}/{action}`
    RequestActions,
    /// `stores/{store}/replenishment/{id}` and `hq/replenishment/{id}`
    Requests,
    /// `stores/{store}/transfers/{id}/{action}` and `stores/{store}/transfers/request`
    TransferActions,
    /// `stores/{store}/transfers/{id}`
    Transfers,
    /// `stores/{store}/alerts`
    Alerts,
    /// `hq/stores/{store}/summary`
    Summary,
    /// `stores/{store}/scales/{device}/weight` and `stores/{store}/probes/{device}/temperature`
    ScaleReadings,
    /// `stores/{store}/catalog`
    Catalog,
    /// `hq/promotions/{promotion}/{action}`, `hq/promotions/{promotion}` and
    /// `stores/{store}/promotions/{promotion}`
    Promotions,
    /// `$SYS/dishsync/metrics`
    Metrics,
}

impl Family {
    /// Every family, in matrix order.
    pub const ALL: [Family; 18] = [
        Family::StockEvents,
        Family::Sales,
        Family::Override,
        Family::Presence,
        Family::Availability,
        Family::Level,
        Family::AcksErrors,
        Family::BrokerAlerts,
        Family::RequestActions,
        Family::Requests,
        Family::TransferActions,
        Family::Transfers,
        Family::Alerts,
        Family::Summary,
        Family::ScaleReadings,
        Family::Catalog,
        Family::Promotions,
        Family::Metrics,
    ];

    /// The family of a topic.
    pub fn of(topic: &Topic) -> Family {
        match topic {
            Topic::StockEvents { .. } => Family::StockEvents,
            Topic::Sales { .. } => Family::Sales,
            Topic::DishOverride { .. } | Topic::ProbeAction { .. } => Family::Override,
            Topic::DeviceStatus { .. } => Family::Presence,
            Topic::DishAvailability { .. } | Topic::StoreAvailability { .. } => Family::Availability,
            Topic::StockLevel { .. } | Topic::StockVariance { .. } => Family::Level,
            Topic::Acks { .. } | Topic::Errors { .. } | Topic::HqErrors { .. } | Topic::HqAcks { .. } => {
                Family::AcksErrors
            }
            Topic::BrokerAlerts => Family::BrokerAlerts,
            Topic::BrokerMetrics => Family::Metrics,
            Topic::RequestAction { .. } => Family::RequestActions,
            Topic::StoreRequest { .. } | Topic::HqRequest { .. } => Family::Requests,
            Topic::TransferAction { .. } | Topic::TransferRequest { .. } => Family::TransferActions,
            Topic::Transfer { .. } => Family::Transfers,
            Topic::Alerts { .. } => Family::Alerts,
            Topic::Summary { .. } => Family::Summary,
            Topic::ScaleWeight { .. } | Topic::ProbeTemperature { .. } => Family::ScaleReadings,
            Topic::Catalog { .. } => Family::Catalog,
            Topic::PromotionAction { .. } | Topic::HqPromotion { .. } | Topic::StorePromotion { .. } => {
                Family::Promotions
            }
        }
    }

    /// The topic patterns of the family.
    pub fn patterns(self) -> &'static [Pattern] {
        match self {
            Family::StockEvents => &[pattern::STOCK_EVENTS],
            Family::Sales => &[pattern::SALES],
            Family::Override => &[pattern::DISH_OVERRIDE, pattern::PROBE_DISCARD, pattern::PROBE_KEEP],
            Family::Presence => &[pattern::DEVICE_STATUS],
            Family::Availability => &[pattern::DISH_AVAILABILITY, pattern::STORE_AVAILABILITY],
            Family::Level => &[pattern::STOCK_LEVEL, pattern::STOCK_VARIANCE],
            Family::AcksErrors => &[pattern::ACKS, pattern::ERRORS, pattern::HQ_ACKS, pattern::HQ_ERRORS],
            Family::BrokerAlerts => &[pattern::BROKER_ALERTS],
            Family::Metrics => &[pattern::BROKER_METRICS],
            Family::RequestActions => &[pattern::REQUEST_ACTION],
            Family::Requests => &[pattern::STORE_REQUEST, pattern::HQ_REQUEST],
            Family::TransferActions => &[pattern::TRANSFER_ACTION, pattern::TRANSFER_REQUEST],
            Family::Transfers => &[pattern::TRANSFER],
            Family::Alerts => &[pattern::ALERTS],
            Family::Summary => &[pattern::SUMMARY],
            Family::ScaleReadings => &[pattern::SCALE_WEIGHT, pattern::PROBE_TEMPERATURE],
            Family::Catalog => &[pattern::CATALOG],
            Family::Promotions => &[
                pattern::PROMOTION_ACTION,
                pattern::HQ_PROMOTION,
                pattern::STORE_PROMOTION,
            ],
        }
    }

    /// The family's name in topics.md's matrix.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::StockEvents => "stock events",
            Family::Sales => "sales",
            Family::Override => "override",
            Family::Presence => "presence",
            Family::Availability => "availability",
            Family::Level => "level",
            Family::AcksErrors => "acks, errors",
            Family::BrokerAlerts => "hq alerts",
            Family::Metrics => "metrics",
            Family::RequestActions => "replenishment actions",
            Family::Requests => "replenishment",
            Family::TransferActions => "transfer actions",
            Family::Transfers => "transfers",
            Family::Alerts => "alerts",
            Family::Summary => "summary",
            Family::ScaleReadings => "sensor readings",
            Family::Catalog => "catalog",
            Family::Promotions => "promotions",
        }
    }
}

impl Topic {
    /// Who may publish on this topic.
    pub fn direction(&self) -> Direction {
        match self {
            Topic::StockEvents { .. }
            | Topic::Sales { .. }
            | Topic::DishOverride { .. }
            | Topic::RequestAction { .. }
            | Topic::TransferRequest { .. }
            | Topic::TransferAction { .. }
            | Topic::ProbeAction { .. }
            | Topic::PromotionAction { .. } => Direction::Input,
            Topic::DeviceStatus { .. } | Topic::ScaleWeight { .. } | Topic::ProbeTemperature { .. } => {
                Direction::Device
            }
            _ => Direction::Output,
        }
    }

    /// The store this topic belongs to; `None` for HQ topics.
    pub fn store(&self) -> Option<&StoreId> {
        Some(match self {
            Topic::StockEvents { store, .. }
            | Topic::Sales { store }
            | Topic::DishOverride { store, .. }
            | Topic::DeviceStatus { store, .. }
            | Topic::ScaleWeight { store, .. }
            | Topic::ProbeTemperature { store, .. }
            | Topic::ProbeAction { store, .. }
            | Topic::DishAvailability { store, .. }
            | Topic::StoreAvailability { store }
            | Topic::StockLevel { store, .. }
            | Topic::StockVariance { store, .. }
            | Topic::Acks { store, .. }
            | Topic::Errors { store, .. }
            | Topic::TransferRequest { store }
            | Topic::TransferAction { store, .. }
            | Topic::StoreRequest { store, .. }
            | Topic::Transfer { store, .. }
            | Topic::Alerts { store }
            | Topic::Catalog { store }
            | Topic::StorePromotion { store, .. }
            | Topic::Summary { store } => store,
            Topic::BrokerAlerts
            | Topic::BrokerMetrics
            | Topic::HqErrors { .. }
            | Topic::HqAcks { .. }
            | Topic::RequestAction { .. }
            | Topic::HqRequest { .. }
            | Topic::PromotionAction { .. }
            | Topic::HqPromotion { .. } => return None,
        })
    }

    /// The store named by a `stores/{store}/…` topic string, if it has a valid
    /// one — used to route an error for a topic that is otherwise malformed.
    pub fn store_prefix(topic: &str) -> Option<StoreId> {
        let mut parts = topic.split('/');
        match (parts.next(), parts.next()) {
            (Some("stores"), Some(store)) => StoreId::new(store).ok(),
            _ => None,
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Topic, TopicError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = |source| TopicError::BadId { topic: clip(s), source };
        let store = |i: usize| parts[i].parse::<StoreId>().map_err(bad);
        let sku = |i: usize| parts[i].parse::<SkuId>().map_err(bad);
        let dish = |i: usize| parts[i].parse::<DishId>().map_err(bad);
        let device = |i: usize| parts[i].parse::<DeviceId>().map_err(bad);
        let doc = |i: usize| parts[i].parse::<DocId>().map_err(bad);
        let promotion = |i: usize| parts[i].parse::<PromotionId>().map_err(bad);
        let unknown = || TopicError::Unknown(clip(s));
        Ok(match parts.as_slice() {
            ["stores", _, "stock", _, "events"] => Topic::StockEvents {
                store: store(1)?,
                sku: sku(3)?,
            },
            ["stores", _, "stock", _, "level"] => Topic::StockLevel {
                store: store(1)?,
                sku: sku(3)?,
            },
            ["stores", _, "stock", _, "variance"] => Topic::StockVariance {
                store: store(1)?,
                sku: sku(3)?,
            },
            ["stores", _, "sales"] => Topic::Sales { store: store(1)? },
            ["stores", _, "dishes", _, "override"] => Topic::DishOverride {
                store: store(1)?,
                dish: dish(3)?,
            },
            ["stores", _, "dishes", _, "availability"] => Topic::DishAvailability {
                store: store(1)?,
                dish: dish(3)?,
            },
            ["stores", _, "availability"] => Topic::StoreAvailability { store: store(1)? },
            ["stores", _, "acks", _] => Topic::Acks {
                store: store(1)?,
                device: device(3)?,
            },
            ["stores", _, "errors", _] => Topic::Errors {
                store: store(1)?,
                device: device(3)?,
            },
            ["hq", "alerts"] => Topic::BrokerAlerts,
            ["$SYS", "dishsync", "metrics"] => Topic::BrokerMetrics,
            ["hq", "errors", _] => Topic::HqErrors { device: device(2)? },
            ["hq", "acks", _] => Topic::HqAcks { device: device(2)? },
            ["hq", "promotions", _] => Topic::HqPromotion { id: promotion(2)? },
            ["hq", "promotions", _, action] => Topic::PromotionAction {
                id: promotion(2)?,
                action: PromotionAction::parse(action).ok_or_else(unknown)?,
            },
            ["stores", _, "promotions", _] => Topic::StorePromotion {
                store: store(1)?,
                id: promotion(3)?,
            },
            ["stores", _, "catalog"] => Topic::Catalog { store: store(1)? },
            ["hq", "replenishment", _] => Topic::HqRequest { id: doc(2)? },
            ["hq", "replenishment", _, action] => Topic::RequestAction {
                id: doc(2)?,
                action: RequestAction::parse(action).ok_or_else(unknown)?,
            },
            ["hq", "stores", _, "summary"] => Topic::Summary { store: store(2)? },
            ["stores", _, "alerts"] => Topic::Alerts { store: store(1)? },
            ["stores", _, "replenishment", _] => Topic::StoreRequest {
                store: store(1)?,
                id: doc(3)?,
            },
            ["stores", _, "transfers", "request"] => Topic::TransferRequest { store: store(1)? },
            ["stores", _, "transfers", _] => Topic::Transfer {
                store: store(1)?,
                id: doc(3)?,
            },
            ["stores", _, "transfers", _, action] => Topic::TransferAction {
                store: store(1)?,
                id: doc(3)?,
                action: TransferAction::parse(action).ok_or_else(unknown)?,
            },
            ["stores", _, "scales", _, "weight"] => Topic::ScaleWeight {
                store: store(1)?,
                device: device(3)?,
            },
            ["stores", _, "probes", _, "temperature"] => Topic::ProbeTemperature {
                store: store(1)?,
                device: device(3)?,
            },
            ["stores", _, "probes", _, action] => Topic::ProbeAction {
                store: store(1)?,
                device: device(3)?,
                action: ProbeAction::parse(action).ok_or_else(unknown)?,
            },
            ["stores", _, "devices", _, "status"] => Topic::DeviceStatus {
                store: store(1)?,
                device: device(3)?,
            },
            _ => return Err(TopicError::Unknown(clip(s))),
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::StockEvents { store, sku } => write!(f, "stores/{store}/stock/{sku}/events"),
            Topic::Sales { store } => write!(f, "stores/{store}/sales"),
            Topic::DishOverride { store, dish } => {
                write!(f, "stores/{store}/dishes/{dish}/override")
            }
            Topic::DeviceStatus { store, device } => {
                write!(f, "stores/{store}/devices/{device}/status")
            }
            Topic::ScaleWeight { store, device } => write!(f, "stores/{store}/scales/{device}/weight"),
            Topic::ProbeTemperature { store, device } => write!(f, "stores/{store}/probes/{device}/temperature"),
            Topic::ProbeAction { store, device, action } => {
                write!(f, "stores/{store}/probes/{device}/{}", action.as_str())
            }
            Topic::DishAvailability { store, dish } => {
                write!(f, "stores/{store}/dishes/{dish}/availability")
            }
            Topic::StoreAvailability { store } => write!(f, "stores/{store}/availability"),
            Topic::StockLevel { store, sku } => write!(f, "stores/{store}/stock/{sku}/level"),
            Topic::StockVariance { store, sku } => write!(f, "stores/{store}/stock/{sku}/variance"),
            Topic::Acks { store, device } => write!(f, "stores/{store}/acks/{device}"),
            Topic::Errors { store, device } => write!(f, "stores/{store}/errors/{device}"),
            Topic::BrokerAlerts => f.write_str("hq/alerts"),
            Topic::BrokerMetrics => f.write_str("$SYS/dishsync/metrics"),
            Topic::HqErrors { device } => write!(f, "hq/errors/{device}"),
            Topic::Catalog { store } => write!(f, "stores/{store}/catalog"),
            Topic::RequestAction { id, action } => write!(f, "hq/replenishment/{id}/{}", action.as_str()),
            Topic::TransferRequest { store } => write!(f, "stores/{store}/transfers/request"),
            Topic::TransferAction { store, id, action } => {
                write!(f, "stores/{store}/transfers/{id}/{}", action.as_str())
            }
            Topic::StoreRequest { store, id } => write!(f, "stores/{store}/replenishment/{id}"),
            Topic::HqRequest { id } => write!(f, "hq/replenishment/{id}"),
            Topic::Transfer { store, id } => write!(f, "stores/{store}/transfers/{id}"),
            Topic::Alerts { store } => write!(f, "stores/{store}/alerts"),
            Topic::Summary { store } => write!(f, "hq/stores/{store}/summary"),
            Topic::PromotionAction { id, action } => write!(f, "hq/promotions/{id}/{}", action.as_str()),
            Topic::HqPromotion { id } => write!(f, "hq/promotions/{id}"),
            Topic::StorePromotion { store, id } => write!(f, "stores/{store}/promotions/{id}"),
            Topic::HqAcks { device } => write!(f, "hq/acks/{device}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_builds_the_filter_of_its_topics() {
        let s1: StoreId = "s1".parse().expect("id");
        let pos: DeviceId = "pos-1".parse().expect("id");
        assert_eq!(pattern::STOCK_LEVEL.filter(Some(&s1), None), "stores/s1/stock/+/level");
        assert_eq!(pattern::ACKS.filter(None, Some(&pos)), "stores/+/acks/pos-1");
        assert_eq!(
            pattern::DEVICE_STATUS.filter(Some(&s1), None),
            "stores/s1/devices/+/status"
        );
        assert_eq!(
            pattern::HQ_REQUEST.filter(Some(&s1), None),
            "hq/replenishment/+",
            "no store level"
        );
        // What a filter built for a store matches is that store's topics.
        let level = Topic::StockLevel {
            store: s1.clone(),
            sku: "beef".parse().expect("id"),
        };
        assert!(pattern::STOCK_LEVEL.matches(&level.to_string()));
        assert!(!pattern::STOCK_EVENTS.matches(&level.to_string()));
    }

    #[test]
    fn every_topic_round_trips() {
        let topics = [
            "stores/downtown/stock/beef-patty/events",
            "stores/downtown/stock/beef-patty/level",
            "stores/downtown/sales",
            "stores/downtown/dishes/classic-burger/override",
            "stores/downtown/dishes/classic-burger/availability",
            "stores/downtown/availability",
            "stores/downtown/acks/pos-1",
            "stores/downtown/errors/pos-1",
            "stores/downtown/devices/scale-1/status",
            "stores/downtown/scales/scale-1/weight",
            "stores/downtown/transfers/request",
            "stores/downtown/transfers/tr-7",
            "stores/downtown/transfers/tr-7/accept",
            "stores/downtown/replenishment/rq-downtown-3",
            "stores/downtown/alerts",
            "stores/downtown/catalog",
            "hq/stores/downtown/summary",
        ];
        for t in topics {
            let parsed: Topic = t.parse().expect(t);
            assert_eq!(parsed.to_string(), t);
            assert_eq!(parsed.store().map(|s| s.as_str()), Some("downtown"));
        }
        for t in ["hq/alerts", "hq/errors/kitchen-1", "hq/replenishment/rq-downtown-3"] {
            let parsed: Topic = t.parse().expect(t);
            assert_eq!(parsed.to_string(), t);
            assert_eq!(parsed.store(), None);
        }
    }

    #[test]
    fn outside_the_contract() {
        for t in [
            "",
            "stores",
            "stores/x",
            "stores/x/stock/y",
            "hq/x",
            "stores/x/sales/extra",
            "a/b/c",
        ] {
            assert!(matches!(t.parse::<Topic>(), Err(TopicError::Unknown(_))), "{t}");
        }
        assert!(matches!(
            "stores/Down/sales".parse::<Topic>(),
            Err(TopicError::BadId { .. })
        ));
        assert!(matches!(
            "stores/x/stock/a+b/events".parse::<Topic>(),
            Err(TopicError::BadId { .. })
        ));
        assert_eq!(
            Topic::store_prefix("stores/x/nope").map(|s| s.to_string()),
            Some("x".into())
        );
    }

    #[test]
    fn directions() {
        let input: Topic = "stores/x/sales".parse().expect("valid");
        assert_eq!(input.direction(), Direction::Input);
        let output: Topic = "stores/x/availability".parse().expect("valid");
        assert_eq!(output.direction(), Direction::Output);
    }
}
