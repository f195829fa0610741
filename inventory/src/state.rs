//! The states the core persists (a SKU's, a dish's, a store's menu), a
//! sale's record, the ledger's lines, and what a restore hands back.

use dishsync_protocol::payload::{DishStatus, StockKind};
use dishsync_protocol::{DeviceId, DishId, EventId, Millis, SkuId, StoreId};
use serde::{Deserialize, Serialize};

use crate::ledger::SkuLedger;
use crate::planning::{ChainPlan, Request, StorePlan, Transfer};

/// One SKU's persisted state in one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuState {
    /// The level and what is needed to place late counts.
    pub ledger: SkuLedger,
    /// Level document revision.
    pub rev: u64,
    /// When `rev` was made.
    pub at: Millis,
}

/// An active chef's 86.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// Who set it.
    pub by: DeviceId,
    /// When it lapses by itself.
    pub until: Option<Millis>,
    /// The chef's note.
    pub note: Option<String>,
}

/// One dish's persisted state in one store: its last computed availability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DishState {
    /// Portions the stock allows.
    pub portions: u64,
    /// The binding ingredient.
    pub limited_by: Option<SkuId>,
    /// Resulting status, override included.
    pub status: DishStatus,
    /// The chef's 86, while active.
    pub override_: Option<Override>,
    /// Predicted sell-out time at the current sales rate.
    pub sellout_eta: Option<Millis>,
    /// Whether an ingredient's feeding device is offline.
    pub stale: bool,
    /// Availability document revision.
    pub rev: u64,
    /// When `rev` was made.
    pub at: Millis,
}

/// A store's whole-menu document revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuState {
    /// Revision.
    pub rev: u64,
    /// When it was made.
    pub at: Millis,
}

/// What a sale took from stock, kept so that its void restores exactly that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleRecord {
    /// When the sale happened.
    pub at: Millis,
    /// The dishes and portions sold.
    pub lines: Vec<(DishId, u32)>,
    /// Base units taken per SKU.
    pub taken: Vec<(SkuId, i64)>,
    /// The void that took it back, once voided.
    pub voided_by: Option<EventId>,
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A stock event of this kind.
    Stock(StockKindCode),
    /// Depletion by a sale.
    Sale,
    /// Restoration by a void.
    Void,
}

/// [`StockKind`] as a compact, serde-stable code for the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockKindCode {
    /// receive
    Receive,
    /// consume
    Consume,
    /// waste
    Waste,
    /// transfer_in
    TransferIn,
    /// transfer_out
    TransferOut,
    /// count (`amount` is the absolute level)
    Count,
    /// adjust
    Adjust,
}

impl From<StockKind> for StockKindCode {
    fn from(k: StockKind) -> Self {
        match k {
            StockKind::Receive => StockKindCode::Receive,
            StockKind::Consume => StockKindCode::Consume,
            StockKind::Waste => StockKindCode::Waste,
            StockKind::TransferIn => StockKindCode::TransferIn,
            StockKind::TransferOut => StockKindCode::TransferOut,
            StockKind::Count => StockKindCode::Count,
            StockKind::Adjust => StockKindCode::Adjust,
        }
    }
}

impl From<StockKindCode> for StockKind {
    fn from(k: StockKindCode) -> Self {
        match k {
            StockKindCode::Receive => StockKind::Receive,
            StockKindCode::Consume => StockKind::Consume,
            StockKindCode::Waste => StockKind::Waste,
            StockKindCode::TransferIn => StockKind::TransferIn,
            StockKindCode::TransferOut => StockKind::TransferOut,
            StockKindCode::Count => StockKind::Count,
            StockKindCode::Adjust => StockKind::Adjust,
        }
    }
}

impl EntryKind {
    /// Its name where people and integrations read it: a stock event's
    /// kind as topics.md names it, `sale` or `void`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Stock(code) => StockKind::from(code).as_str(),
            EntryKind::Sale => "sale",
            EntryKind::Void => "void",
        }
    }
}

/// One line of the append-only ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The store.
    pub store: StoreId,
    /// The SKU.
    pub sku: SkuId,
    /// The input that caused it.
    pub event: EventId,
    /// What kind of change.
    pub kind: EntryKind,
    /// Signed delta in base units, or the absolute level for a count.
    pub amount: i64,
    /// When it happened (the input's stamp).
    pub at: Millis,
    /// False when stamped before the latest count: recorded, level unmoved.
    pub moved: bool,
    /// Who recorded it: the device, integration or person that sent the
    /// input (its `device` or `by`). `None` on lines written before the
    /// ledger kept it.
    pub by: Option<DeviceId>,
    /// The input's reason (waste), if any.
    pub reason: Option<String>,
    /// The input's reference (a delivery note, a request), if any.
    pub reference: Option<String>,
    /// When the broker applied it (`at` is when it happened). `None` on
    /// lines written before the ledger kept it.
    pub recorded: Option<Millis>,
}

impl LedgerEntry {
    /// A line of `kind` for `amount` of `sku` in `store`, caused by
    /// `event` stamped `at`; who sent it and when it was applied are filled
    /// in by [`crate::Inventory::apply`].
    pub fn new(
        store: &StoreId,
        sku: &SkuId,
        event: &EventId,
        kind: EntryKind,
        amount: i64,
        at: Millis,
        moved: bool,
    ) -> LedgerEntry {
        LedgerEntry {
            store: store.clone(),
            sku: sku.clone(),
            event: event.clone(),
            kind,
            amount,
            at,
            moved,
            by: None,
            reason: None,
            reference: None,
            recorded: None,
        }
    }
}

/// A persisted state handed back at start-up.
#[derive(Debug, Clone)]
pub enum Restored {
    /// A SKU's state.
    Sku(StoreId, SkuId, SkuState),
    /// A dish's state.
    Dish(StoreId, DishId, DishState),
    /// A store's menu document state.
    Menu(StoreId, MenuState),
    /// A store's planning state.
    Plan(StoreId, StorePlan),
    /// A SKU's usage variance state.
    Variance(StoreId, SkuId, crate::planning::variance::VarianceState),
    /// A store's last days of use and waste.
    History(StoreId, crate::planning::movers::UsageHistory),
    /// A fridge's or freezer's probe's state.
    Probe(
        StoreId,
        dishsync_protocol::DeviceId,
        crate::planning::coldchain::ProbeState,
    ),
    /// A store's daily sales per dish.
    Sold(StoreId, crate::planning::promotion::DailySales),
    /// A promotion.
    Promotion(crate::planning::promotion::Promotion),
    /// A store's readiness for a promotion.
    Readiness(
        StoreId,
        dishsync_protocol::PromotionId,
        crate::planning::promotion::StoreReadiness,
    ),
    /// A replenishment request.
    Request(Request),
    /// A transfer.
    Transfer(Transfer),
    /// The chain counters.
    Chain(ChainPlan),
}
