//! The planning documents — replenishment requests and transfers, their
//! retirement — and a store's and the chain's planning state, put together
//! from the slices the rules keep.

use dishsync_protocol::payload::{RequestLine, RequestState, TransferState};
use dishsync_protocol::{DeviceId, DishId, DocId, Millis, PromotionId, SkuId, StoreId};
use serde::{Deserialize, Serialize};

pub(crate) const MINUTE: Millis = 60_000;
pub(crate) const DAY: Millis = 24 * 60 * MINUTE;

/// An exponentially weighted sales rate: `Σ portions/τ · e^{-(now - t)/τ}`,
/// which converges to the true rate (portions per minute) for steady sales.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Portions per minute as of `at`.
    pub per_minute: f64,
    /// When `per_minute` was last updated.
    pub at: Millis,
}

impl Rate {
    fn decay(minutes: f64, tau: f64) -> f64 {
        (-minutes.max(0.0) / tau).exp()
    }

    /// The rate at `now`.
    pub fn at_time(&self, now: Millis, tau: f64) -> f64 {
        self.per_minute * Self::decay((now - self.at) as f64 / MINUTE as f64, tau)
    }

    /// Adds a sale of `portions` at `t`.
    pub fn add(&mut self, portions: f64, t: Millis, tau: f64) {
        let t = t.max(self.at);
        self.per_minute = self.at_time(t, tau) + portions / tau;
        self.at = t;
    }

    /// Takes back a sale of `portions` at `t` (a void).
    pub fn remove(&mut self, portions: f64, t: Millis, tau: f64) {
        let t = t.max(self.at);
        self.per_minute = (self.at_time(t, tau) - portions / tau).max(0.0);
        self.at = t;
    }
}

/// A replenishment request to the central kitchen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `rq-{store}-{n}`.
    pub id: DocId,
    /// The store that needs the goods.
    pub store: StoreId,
    /// What it needs.
    pub lines: Vec<RequestLine>,
    /// Where it stands.
    pub state: RequestState,
    /// Why, or the last action's note.
    pub reason: String,
    /// When raised.
    pub created_at: Millis,
    /// When last changed.
    pub updated_at: Millis,
    /// Document revision.
    pub rev: u64,
}

impl Request {
    /// Still to be delivered.
    pub fn is_open(&self) -> bool {
        matches!(
            self.state,
            RequestState::Open | RequestState::Acknowledged | RequestState::Shipped
        )
    }

    /// Whether it is still shown at `now`: while open, and for
    /// [`FINISHED_SHOWN_FOR`] after it finished.
    pub fn is_shown(&self, now: Millis) -> bool {
        self.is_open() || now - self.updated_at < FINISHED_SHOWN_FOR
    }
}

/// A transfer between two stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// `tr-{n}`.
    pub id: DocId,
    /// The giver.
    pub from: StoreId,
    /// The taker.
    pub to: StoreId,
    /// The SKU.
    pub sku: SkuId,
    /// Base units.
    pub qty: i64,
    /// What the taker needed (for the next proposal after a decline).
    pub need: i64,
    /// Where it stands.
    pub state: TransferState,
    /// Why, or the last action's note.
    pub reason: String,
    /// When an unanswered proposal expires.
    pub expires_at: Option<Millis>,
    /// Travel minutes between the stores.
    pub travel_minutes: u32,
    /// Stores already asked for this need (declined or expired).
    pub tried: Vec<StoreId>,
    /// When proposed.
    pub created_at: Millis,
    /// When last changed.
    pub updated_at: Millis,
    /// Document revision.
    pub rev: u64,
}

impl Transfer {
    /// Not finished: proposed, accepted or dispatched.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            TransferState::Proposed | TransferState::Accepted | TransferState::Dispatched
        )
    }

    /// Whether it is still shown at `now`: while active, and for
    /// [`FINISHED_SHOWN_FOR`] after it finished.
    pub fn is_shown(&self, now: Millis) -> bool {
        self.is_active() || now - self.updated_at < FINISHED_SHOWN_FOR
    }
}

/// How long a finished request or transfer keeps its retained documents
/// (then they are cleared; it stays on record in the broker's store).
pub const FINISHED_SHOWN_FOR: Millis = DAY;

/// A document no longer shown whose retained messages are cleared: a
/// finished request or transfer, or a dish or SKU a reload removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Retired {
    /// A replenishment request of `store`.
    Request {
        /// The request.
        id: DocId,
        /// Its store.
        store: StoreId,
    },
    /// A transfer between two stores.
    Transfer {
        /// The transfer.
        id: DocId,
        /// The giver.
        from: StoreId,
        /// The taker.
        to: StoreId,
    },
    /// A dish a store no longer has on its menu (a reload): its
    /// availability document is cleared.
    Dish {
        /// The store.
        store: StoreId,
        /// The dish.
        dish: DishId,
    },
    /// A SKU the chain no longer keeps (a reload): the store's level
    /// document is cleared.
    Sku {
        /// The store.
        store: StoreId,
        /// The SKU.
        sku: SkuId,
    },
    /// A promotion over for a day: its HQ document is cleared.
    Promotion {
        /// The promotion.
        id: PromotionId,
    },
    /// A store's readiness for a promotion that is over for a day, or that
    /// a new plan left the store out of.
    Readiness {
        /// The store.
        store: StoreId,
        /// The promotion.
        id: PromotionId,
    },
}

/// A store's planning state (persisted with the store): one slice per
/// planning job, each defined beside the rules that keep it. The slices
/// are in the order the state was always written, so a store's record
/// reads the same as when the fields stood side by side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorePlan {
    /// Replenishment: disarmed SKUs and the request counter (`pass`).
    pub replenishment: super::pass::Replenishment,
    /// Active alerts and the alert counter (`alerts`).
    pub alerts: super::alerts::AlertBook,
    /// Today's use and waste (`actions`).
    pub today: super::actions::Today,
    /// The sales rate per dish (`forecast`).
    pub forecast: super::forecast::Forecast,
    /// Feeding devices offline (`freshness`).
    pub freshness: super::freshness::Freshness,
    /// Summary document revision.
    pub summary_rev: u64,
    /// Stores asked today for a transfer of a SKU (`pass`).
    pub transfers: super::pass::TransferAsks,
}

impl StorePlan {
    /// Starts store-local day `day`: today's counters begin again.
    pub(crate) fn begin_day(&mut self, day: i64) {
        self.today = super::actions::Today {
            day,
            ..super::actions::Today::default()
        };
        self.transfers.asked.clear();
    }
}

/// Chain-wide planning counters (persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPlan {
    /// Last transfer number.
    pub transfer_seq: u64,
}

pub(crate) fn round_up(qty: i64, pack: i64) -> i64 {
    let pack = pack.max(1);
    (qty + pack - 1) / pack * pack
}

/// What an alert names.
#[derive(Default)]
pub(crate) struct Subject {
    pub(crate) sku: Option<SkuId>,
    pub(crate) dish: Option<DishId>,
    pub(crate) device: Option<DeviceId>,
}

impl Subject {
    pub(crate) fn sku(sku: &SkuId) -> Subject {
        Subject {
            sku: Some(sku.clone()),
            ..Subject::default()
        }
    }
    pub(crate) fn dish(dish: &DishId) -> Subject {
        Subject {
            dish: Some(dish.clone()),
            ..Subject::default()
        }
    }
    pub(crate) fn device(device: &DeviceId) -> Subject {
        Subject {
            device: Some(device.clone()),
            ..Subject::default()
        }
    }
}

pub(crate) fn state_name(s: RequestState) -> &'static str {
    match s {
        RequestState::Open => "open",
        RequestState::Acknowledged => "acknowledged",
        RequestState::Shipped => "shipped",
        RequestState::Received => "received",
        RequestState::Cancelled => "cancelled",
    }
}

pub(crate) fn transfer_state_name(s: TransferState) -> &'static str {
    match s {
        TransferState::Proposed => "proposed",
        TransferState::Accepted => "accepted",
        TransferState::Declined => "declined",
        TransferState::Expired => "expired",
        TransferState::Dispatched => "dispatched",
        TransferState::Received => "received",
        TransferState::Cancelled => "cancelled",
    }
}
