//! What an input changed ([`Changes`]: the documents to persist and to
//! publish) and the whole result of an accepted one ([`Outcome`]).

use std::collections::BTreeSet;

use dishsync_protocol::payload::AlertOut;
use dishsync_protocol::{DishId, DocId, EventId, PromotionId, SkuId, StoreId};

use crate::document::Document;
use crate::planning::Retired;
use crate::state::{LedgerEntry, SaleRecord};

/// Which documents an input changed: what to persist and what to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Documents whose state is persisted with the change: every SKU an
    /// input touched, for one, even when its level did not move (a count
    /// equal to the level still moves the count's time).
    pub persist: BTreeSet<Document>,
    /// Documents to publish (the shell throttles whole-menu documents and
    /// summaries).
    pub publish: BTreeSet<Document>,
    /// Alerts to publish, in order.
    pub alerts: Vec<(StoreId, AlertOut)>,
    /// Finished requests and transfers no longer shown: their retained
    /// documents are cleared.
    pub retired: BTreeSet<Retired>,
}

impl Changes {
    /// A SKU's state changed, and not its level document.
    pub fn sku(&mut self, store: StoreId, sku: SkuId) {
        self.persist.insert(Document::Sku(store, sku));
    }

    /// A SKU's state and level document changed.
    pub fn level(&mut self, store: StoreId, sku: SkuId) {
        let doc = Document::Sku(store, sku);
        self.persist.insert(doc.clone());
        self.publish.insert(doc);
    }

    /// A dish's state and availability changed.
    pub fn dish(&mut self, store: StoreId, dish: DishId) {
        let doc = Document::Dish(store, dish);
        self.persist.insert(doc.clone());
        self.publish.insert(doc);
    }

    /// A store's whole-menu document changed.
    pub fn menu(&mut self, store: StoreId) {
        let doc = Document::Menu(store);
        self.persist.insert(doc.clone());
        self.publish.insert(doc);
    }

    /// A SKU's variance state changed; its document too when `shown`.
    pub fn variance(&mut self, store: StoreId, sku: SkuId, shown: bool) {
        let doc = Document::Variance(store, sku);
        if shown {
            self.publish.insert(doc.clone());
        }
        self.persist.insert(doc);
    }

    /// A probe's state changed.
    pub fn probe(&mut self, store: StoreId, device: dishsync_protocol::DeviceId) {
        self.persist.insert(Document::Probe(store, device));
    }

    /// A store's history of use and waste changed (a day ended).
    pub fn history(&mut self, store: StoreId) {
        self.persist.insert(Document::History(store));
    }

    /// A promotion's HQ document changed.
    pub fn promotion(&mut self, id: PromotionId) {
        let doc = Document::Promotion(id);
        self.persist.insert(doc.clone());
        self.publish.insert(doc);
    }

    /// A store's readiness for a promotion changed.
    pub fn readiness(&mut self, store: StoreId, id: PromotionId) {
        let doc = Document::Readiness(store, id);
        self.persist.insert(doc.clone());
        self.publish.insert(doc);
    }

    /// A store's daily sales per dish changed.
    pub fn sold(&mut self, store: StoreId) {
        self.persist.insert(Document::Sold(store));
    }

    /// A store's planning state changed.
    pub fn plan(&mut self, store: StoreId) {
        self.persist.insert(Document::Plan(store));
    }

    /// A replenishment request changed.
    pub fn request(&mut self, id: DocId) {
        let doc = Document::Request(id);
        self.persist.insert(doc.clone());
        self.persist.insert(Document::Shown);
        self.publish.insert(doc);
    }

    /// A transfer changed.
    pub fn transfer(&mut self, id: DocId) {
        let doc = Document::Transfer(id);
        self.persist.insert(doc.clone());
        self.persist.insert(Document::Shown);
        self.publish.insert(doc);
    }

    /// A store's HQ summary changed.
    pub fn summary(&mut self, store: StoreId) {
        self.publish.insert(Document::Summary(store));
    }

    /// The chain's counters changed.
    pub fn chain(&mut self) {
        self.persist.insert(Document::Chain);
    }

    /// A request or transfer is no longer shown.
    pub fn retire(&mut self, retired: Retired) {
        self.persist.insert(Document::Shown);
        self.retired.insert(retired);
    }

    /// The SKUs whose level document changed.
    pub fn levels(&self) -> impl Iterator<Item = (&StoreId, &SkuId)> {
        self.publish.iter().filter_map(|d| match d {
            Document::Sku(store, sku) => Some((store, sku)),
            _ => None,
        })
    }

    /// The dishes whose availability changed.
    pub fn dishes(&self) -> impl Iterator<Item = (&StoreId, &DishId)> {
        self.publish.iter().filter_map(|d| match d {
            Document::Dish(store, dish) => Some((store, dish)),
            _ => None,
        })
    }

    /// The requests that changed.
    pub fn requests(&self) -> impl Iterator<Item = &DocId> {
        self.publish.iter().filter_map(|d| match d {
            Document::Request(id) => Some(id),
            _ => None,
        })
    }

    /// The transfers that changed.
    pub fn transfers(&self) -> impl Iterator<Item = &DocId> {
        self.publish.iter().filter_map(|d| match d {
            Document::Transfer(id) => Some(id),
            _ => None,
        })
    }

    /// The stores whose planning state changed.
    pub fn plans(&self) -> impl Iterator<Item = &StoreId> {
        self.persist.iter().filter_map(|d| match d {
            Document::Plan(store) => Some(store),
            _ => None,
        })
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Changes) {
        self.persist.extend(other.persist);
        self.publish.extend(other.publish);
        self.alerts.extend(other.alerts);
        self.retired.extend(other.retired);
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty() && self.publish.is_empty() && self.alerts.is_empty() && self.retired.is_empty()
    }
}

/// The result of an accepted input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Documents to persist and publish.
    pub changes: Changes,
    /// Ledger lines to append.
    pub entries: Vec<LedgerEntry>,
    /// The sale record to store (for a sale, or a void's updated sale).
    pub sale: Option<(EventId, SaleRecord)>,
}
