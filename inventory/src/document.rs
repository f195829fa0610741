//! The documents the core keeps, one type for all of them.
//!
//! A [`Document`] names one document: a SKU, a dish, a store's menu, its
//! planning state, a replenishment request, a transfer, the chain's
//! counters, the index of what is shown, a store's summary or catalog. It
//! knows the key its state is persisted under ([`Document::key`], and back,
//! [`Document::from_key`]), that state ([`Document::state`], and back,
//! [`Document::restore`]), and the retained messages it is published as
//! ([`Document::render`]: topics and JSON payloads). So the shell's loops —
//! persist what a group changed, restore at start-up, re-publish
//! everything, render a group's documents — are one loop each over
//! documents, and none of them knows a key layout, a topic or a payload.
//!
//! Adding a kind of document is a variant here, with its arm in each
//! method below, and its test.

use dishsync_protocol::{DeviceId, DishId, DocId, Millis, PromotionId, SkuId, StoreId, Topic};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crate::planning::coldchain::ProbeState;
use crate::planning::movers::UsageHistory;
use crate::planning::promotion::{DailySales, Promotion, StoreReadiness};
use crate::planning::variance::VarianceState;
use crate::planning::{ChainPlan, Request, Retired, StorePlan, Transfer};
use crate::state::{DishState, MenuState, Restored, SkuState};

/// One document of the chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Document {
    /// A SKU of a store: its state, `k/{store}/{sku}`; its level,
    /// `stores/{store}/stock/{sku}/level`.
    Sku(StoreId, SkuId),
    /// A dish of a store: its state, `d/{store}/{dish}`; its availability,
    /// `stores/{store}/dishes/{dish}/availability`.
    Dish(StoreId, DishId),
    /// A store's whole menu: its revision, `m/{store}`; the whole-menu
    /// document, `stores/{store}/availability`.
    Menu(StoreId),
    /// A store's planning state, `p/{store}` (not published).
    Plan(StoreId),
    /// A fridge's or freezer's probe, `e/{store}/{probe}` (not published:
    /// its faults show as alerts and on the levels they put at risk).
    Probe(StoreId, DeviceId),
    /// A store's last days of use and waste, `h/{store}` (not published:
    /// the summary's slow movers are judged by it).
    History(StoreId),
    /// A SKU's usage variance in a store: its state, `v/{store}/{sku}`;
    /// its document, `stores/{store}/stock/{sku}/variance`.
    Variance(StoreId, SkuId),
    /// A store's portions sold per dish, today and its last days,
    /// `n/{store}` (not published: a promotion's uplift multiplies them).
    Sold(StoreId),
    /// A promotion, `o/{promotion}`; published for HQ with every store's
    /// readiness, `hq/promotions/{promotion}`.
    Promotion(PromotionId),
    /// A store's readiness for a promotion, `r/{store}/{promotion}`;
    /// published as `stores/{store}/promotions/{promotion}`.
    Readiness(StoreId, PromotionId),
    /// A replenishment request, `q/{id}`; published under its store and for
    /// HQ.
    Request(DocId),
    /// A transfer, `t/{id}`; published under both stores.
    Transfer(DocId),
    /// Which requests and transfers are shown, `s` (not published): the
    /// ones a restart reads.
    Shown,
    /// The chain's planning counters, `c` (not published).
    Chain,
    /// A store's HQ summary, `hq/stores/{store}/summary` (not persisted).
    Summary(StoreId),
    /// A store's catalog, `stores/{store}/catalog` (not persisted).
    Catalog(StoreId),
}

/// The requests and transfers the planning state holds (open or active, or
/// finished less than a day ago): the ones a restart reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    /// Replenishment request ids.
    pub requests: Vec<DocId>,
    /// Transfer ids.
    pub transfers: Vec<DocId>,
}

impl Shown {
    /// The documents it names.
    pub fn documents(&self) -> impl Iterator<Item = Document> + '_ {
        let requests = self.requests.iter().cloned().map(Document::Request);
        requests.chain(self.transfers.iter().cloned().map(Document::Transfer))
    }
}

/// A document's persisted state, borrowed from the inventory. It serializes
/// as the state itself (no tag): the key says what it is.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum State<'a> {
    /// [`Document::Sku`].
    Sku(&'a SkuState),
    /// [`Document::Dish`].
    Dish(&'a DishState),
    /// [`Document::Menu`].
    Menu(MenuState),
    /// [`Document::Plan`].
    Plan(&'a StorePlan),
    /// [`Document::Variance`].
    Variance(&'a VarianceState),
    /// [`Document::History`].
    History(&'a UsageHistory),
    /// [`Document::Probe`].
    Probe(&'a ProbeState),
    /// [`Document::Sold`].
    Sold(&'a DailySales),
    /// [`Document::Promotion`].
    Promotion(&'a Promotion),
    /// [`Document::Readiness`].
    Readiness(&'a StoreReadiness),
    /// [`Document::Request`].
    Request(&'a Request),
    /// [`Document::Transfer`].
    Transfer(&'a Transfer),
    /// [`Document::Shown`].
    Shown(Shown),
    /// [`Document::Chain`].
    Chain(ChainPlan),
}

/// Decodes one persisted value as the type a document's state has (the
/// storage format is the shell's).
pub trait Decode {
    /// Why a value does not decode.
    type Error;
    /// The value as a `T`.
    fn decode<T: DeserializeOwned>(self) -> Result<T, Self::Error>;
}

/// One retained message a document is published as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its topic.
    pub topic: Topic,
    /// Its JSON payload.
    pub payload: Vec<u8>,
}

/// The key prefixes of the documents scanned at start-up: those persisted
/// per store, and the promotions (requests and transfers are read through
/// [`Shown`]).
pub const SCANNED_PREFIXES: [&str; 10] = ["k/", "d/", "m/", "p/", "v/", "h/", "e/", "n/", "r/", "o/"];

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

fn json<T: Serialize>(topic: Topic, doc: &T) -> Option<Published> {
    // The documents are plain data: encoding them cannot fail.
    serde_json::to_vec(doc).ok().map(|payload| Published { topic, payload })
}

impl Document {
    /// The key its state is persisted under; `None` for a document that is
    /// only published.
    pub fn key(&self) -> Option<String> {
        Some(match self {
            Document::Sku(store, sku) => format!("k/{store}/{sku}"),
            Document::Dish(store, dish) => format!("d/{store}/{dish}"),
            Document::Menu(store) => format!("m/{store}"),
            Document::Plan(store) => format!("p/{store}"),
            Document::Variance(store, sku) => format!("v/{store}/{sku}"),
            Document::History(store) => format!("h/{store}"),
            Document::Probe(store, device) => format!("e/{store}/{device}"),
            Document::Sold(store) => format!("n/{store}"),
            Document::Readiness(store, id) => format!("r/{store}/{id}"),
            Document::Promotion(id) => format!("o/{id}"),
            Document::Request(id) => format!("q/{id}"),
            Document::Transfer(id) => format!("t/{id}"),
            Document::Shown => "s".to_string(),
            Document::Chain => "c".to_string(),
            Document::Summary(_) | Document::Catalog(_) => return None,
        })
    }

    /// The document persisted under `key` (the inverse of [`Document::key`]).
    pub fn from_key(key: &str) -> Option<Document> {
        let parts: Vec<&str> = key.split('/').collect();
        Some(match parts.as_slice() {
            ["k", store, sku] => Document::Sku(store.parse().ok()?, sku.parse().ok()?),
            ["d", store, dish] => Document::Dish(store.parse().ok()?, dish.parse().ok()?),
            ["m", store] => Document::Menu(store.parse().ok()?),
            ["p", store] => Document::Plan(store.parse().ok()?),
            ["v", store, sku] => Document::Variance(store.parse().ok()?, sku.parse().ok()?),
            ["h", store] => Document::History(store.parse().ok()?),
            ["e", store, device] => Document::Probe(store.parse().ok()?, device.parse().ok()?),
            ["n", store] => Document::Sold(store.parse().ok()?),
            ["r", store, id] => Document::Readiness(store.parse().ok()?, id.parse().ok()?),
            ["o", id] => Document::Promotion(id.parse().ok()?),
            ["q", id] => Document::Request(id.parse().ok()?),
            ["t", id] => Document::Transfer(id.parse().ok()?),
            ["s"] => Document::Shown,
            ["c"] => Document::Chain,
            _ => return None,
        })
    }

    /// Its state in `inv`, to persist; `None` when it has none (a published
    /// document, or one `inv` does not hold).
    pub fn state<'a>(&self, inv: &'a Inventory) -> Option<State<'a>> {
        Some(match self {
            Document::Sku(store, sku) => State::Sku(inv.sku_state(store, sku)?),
            Document::Dish(store, dish) => State::Dish(inv.dish_state(store, dish)?),
            Document::Menu(store) => State::Menu(inv.menu_state(store)?),
            Document::Plan(store) => State::Plan(inv.plan_state(store)?),
            Document::Variance(store, sku) => State::Variance(inv.variance_state(store, sku)?),
            Document::History(store) => State::History(inv.history(store)?),
            Document::Probe(store, device) => State::Probe(inv.probe_state(store, device)?),
            Document::Sold(store) => State::Sold(inv.daily_sales(store)?),
            Document::Promotion(id) => State::Promotion(inv.promotion(id)?),
            Document::Readiness(store, id) => State::Readiness(inv.readiness(store, id)?),
            Document::Request(id) => State::Request(inv.request(id)?),
            Document::Transfer(id) => State::Transfer(inv.transfer(id)?),
            Document::Shown => {
                let (requests, transfers) = inv.documents();
                State::Shown(Shown { requests, transfers })
            }
            Document::Chain => State::Chain(inv.chain_state()),
            Document::Summary(_) | Document::Catalog(_) => return None,
        })
    }

    /// Its state decoded from what was persisted under its key, as the
    /// restore takes it; `None` for the index of what is shown (the shell
    /// reads it to know which requests and transfers to restore) and for
    /// published documents.
    pub fn restore<D: Decode>(&self, value: D) -> Result<Option<Restored>, D::Error> {
        Ok(Some(match self {
            Document::Sku(store, sku) => Restored::Sku(store.clone(), sku.clone(), value.decode()?),
            Document::Dish(store, dish) => Restored::Dish(store.clone(), dish.clone(), value.decode()?),
            Document::Menu(store) => Restored::Menu(store.clone(), value.decode()?),
            Document::Plan(store) => Restored::Plan(store.clone(), value.decode()?),
            Document::Variance(store, sku) => Restored::Variance(store.clone(), sku.clone(), value.decode()?),
            Document::History(store) => Restored::History(store.clone(), value.decode()?),
            Document::Probe(store, device) => Restored::Probe(store.clone(), device.clone(), value.decode()?),
            Document::Sold(store) => Restored::Sold(store.clone(), value.decode()?),
            Document::Promotion(_) => Restored::Promotion(value.decode()?),
            Document::Readiness(store, id) => Restored::Readiness(store.clone(), id.clone(), value.decode()?),
            Document::Request(_) => Restored::Request(value.decode()?),
            Document::Transfer(_) => Restored::Transfer(value.decode()?),
            Document::Chain => Restored::Chain(value.decode()?),
            Document::Shown | Document::Summary(_) | Document::Catalog(_) => return Ok(None),
        }))
    }

    /// The retained messages it is published as, from `inv` at `now`; none
    /// for a document that is only persisted, or one `inv` does not hold.
    pub fn render(&self, inv: &Inventory, now: Millis) -> Vec<Published> {
        let one = |p: Option<Published>| p.into_iter().collect();
        match self {
            Document::Sku(store, sku) => one(inv.level_out(store, sku).and_then(|doc| {
                let topic = Topic::StockLevel {
                    store: store.clone(),
                    sku: sku.clone(),
                };
                json(topic, &doc)
            })),
            Document::Dish(store, dish) => one(inv.dish_out(store, dish).and_then(|doc| {
                let topic = Topic::DishAvailability {
                    store: store.clone(),
                    dish: dish.clone(),
                };
                json(topic, &doc)
            })),
            Document::Menu(store) => one(inv
                .menu_out(store)
                .and_then(|doc| json(Topic::StoreAvailability { store: store.clone() }, &doc))),
            Document::Request(id) => match inv.request_out(id) {
                Some(doc) => request_topics(id, &doc.store)
                    .into_iter()
                    .filter_map(|topic| json(topic, &doc))
                    .collect(),
                None => Vec::new(),
            },
            Document::Transfer(id) => match inv.transfer_out(id) {
                Some(doc) => transfer_topics(id, &doc.from, &doc.to)
                    .into_iter()
                    .filter_map(|topic| json(topic, &doc))
                    .collect(),
                None => Vec::new(),
            },
            Document::Variance(store, sku) => one(inv.variance_out(store, sku).and_then(|doc| {
                let topic = Topic::StockVariance {
                    store: store.clone(),
                    sku: sku.clone(),
                };
                json(topic, &doc)
            })),
            Document::Summary(store) => one(inv
                .summary_out(store, now)
                .and_then(|doc| json(Topic::Summary { store: store.clone() }, &doc))),
            Document::Catalog(store) => one(inv
                .catalog_out(store, now)
                .and_then(|doc| json(Topic::Catalog { store: store.clone() }, &doc))),
            Document::Promotion(id) => one(inv
                .promotion_out(id)
                .and_then(|doc| json(Topic::HqPromotion { id: id.clone() }, &doc))),
            Document::Readiness(store, id) => one(inv.store_promotion_out(store, id).and_then(|doc| {
                let topic = Topic::StorePromotion {
                    store: store.clone(),
                    id: id.clone(),
                };
                json(topic, &doc)
            })),
            Document::Plan(_)
            | Document::History(_)
            | Document::Probe(..)
            | Document::Sold(_)
            | Document::Shown
            | Document::Chain => Vec::new(),
        }
    }

    /// Every published document of the chain in `inv`: each SKU's level,
    /// each dish's availability, the requests and transfers shown, and each
    /// store's catalog, menu and summary.
    pub fn published(inv: &Inventory) -> Vec<Document> {
        let catalog = inv.catalog();
        let mut all = Vec::new();
        for store in catalog.stores() {
            all.extend(
                catalog
                    .skus()
                    .map(|sku| Document::Sku(store.id.clone(), sku.id.clone())),
            );
            all.extend(
                catalog
                    .skus()
                    .map(|sku| Document::Variance(store.id.clone(), sku.id.clone())),
            );
            all.extend(
                store
                    .menu
                    .iter()
                    .map(|dish| Document::Dish(store.id.clone(), dish.clone())),
            );
        }
        let (requests, transfers) = inv.documents();
        all.extend(requests.into_iter().map(Document::Request));
        all.extend(transfers.into_iter().map(Document::Transfer));
        for p in inv.promotions() {
            all.push(Document::Promotion(p.id.clone()));
            all.extend(p.stores.iter().map(|s| Document::Readiness(s.clone(), p.id.clone())));
        }
        for store in catalog.stores() {
            all.push(Document::Catalog(store.id.clone()));
            all.push(Document::Menu(store.id.clone()));
            all.push(Document::Summary(store.id.clone()));
        }
        all
    }
}

impl Retired {
    /// The topics its retained documents are on, to be cleared.
    pub fn topics(&self) -> Vec<Topic> {
        match self {
            Retired::Request { id, store } => request_topics(id, store).into(),
            Retired::Transfer { id, from, to } => transfer_topics(id, from, to).into(),
            Retired::Dish { store, dish } => vec![Topic::DishAvailability {
                store: store.clone(),
                dish: dish.clone(),
            }],
            Retired::Promotion { id } => vec![Topic::HqPromotion { id: id.clone() }],
            Retired::Readiness { store, id } => vec![Topic::StorePromotion {
                store: store.clone(),
                id: id.clone(),
            }],
            Retired::Sku { store, sku } => vec![
                Topic::StockLevel {
                    store: store.clone(),
                    sku: sku.clone(),
                },
                Topic::StockVariance {
                    store: store.clone(),
                    sku: sku.clone(),
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id;

    #[test]
    fn every_persisted_document_is_found_again_from_its_key() {
        let documents = [
            Document::Sku(id("s1"), id("beef")),
            Document::Dish(id("s1"), id("burger")),
            Document::Menu(id("s1")),
            Document::Plan(id("s1")),
            Document::Variance(id("s1"), id("beef")),
            Document::History(id("s1")),
            Document::Probe(id("s1"), id("fridge-1")),
            Document::Sold(id("s1")),
            Document::Readiness(id("s1"), id("truffle-week")),
            Document::Promotion(id("truffle-week")),
            Document::Request(id("rq-s1-1")),
            Document::Transfer(id("tr-1")),
            Document::Shown,
            Document::Chain,
        ];
        for doc in documents {
            let key = doc.key().expect("persisted");
            assert_eq!(Document::from_key(&key), Some(doc), "{key}");
        }
        assert_eq!(Document::Summary(id("s1")).key(), None);
        assert_eq!(Document::Catalog(id("s1")).key(), None);
        assert_eq!(Document::from_key("l/00000001"), None, "ledger lines are not documents");
        assert_eq!(Document::from_key("k/s1"), None);
        // What start-up scans is exactly those ten kinds.
        let scanned = [
            "k/s1/beef",
            "d/s1/burger",
            "m/s1",
            "p/s1",
            "v/s1/beef",
            "h/s1",
            "e/s1/fridge-1",
            "n/s1",
            "r/s1/truffle-week",
            "o/truffle-week",
        ];
        assert!(scanned.iter().all(|key| Document::from_key(key).is_some()));
        assert_eq!(scanned.len(), SCANNED_PREFIXES.len());
        for (key, prefix) in scanned.iter().zip(SCANNED_PREFIXES) {
            assert!(key.starts_with(prefix));
        }
    }
}
