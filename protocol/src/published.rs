//! What the broker publishes, decoded: [`Published::decode`] turns a
//! topic and payload into the typed document or event, for everyone who
//! watches the broker (the device client, a web view, the contract test
//! over `topics.md`).

use crate::payload::{
    AckOut, AlertOut, BrokerAlertOut, CatalogOut, DishAvailabilityOut, ErrorOut, LevelOut, MetricsOut, PromotionOut,
    RequestOut, StoreAvailabilityOut, StorePromotionOut, SummaryOut, TransferOut, VarianceOut,
};
use crate::{DocId, Topic};

/// One message the broker publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// A dish's availability (`stores/{store}/dishes/{dish}/availability`).
    Availability(DishAvailabilityOut),
    /// The whole menu (`stores/{store}/availability`).
    Menu(StoreAvailabilityOut),
    /// A SKU's level (`stores/{store}/stock/{sku}/level`).
    Level(LevelOut),
    /// A SKU's usage variance.
    Variance(VarianceOut),
    /// A replenishment request (under its store, and for HQ).
    Request(RequestOut),
    /// A transfer (under both stores).
    Transfer(TransferOut),
    /// A store's catalog.
    Catalog(CatalogOut),
    /// A store's HQ summary.
    Summary(SummaryOut),
    /// A promotion with every store's readiness, for HQ.
    Promotion(PromotionOut),
    /// A store's readiness for a promotion.
    StorePromotion(StorePromotionOut),
    /// A store's alert, raised or cleared.
    Alert(AlertOut),
    /// The broker's own alert (`hq/alerts`).
    BrokerAlert(BrokerAlertOut),
    /// What the broker counts (`$SYS/dishsync/metrics`).
    Metrics(MetricsOut),
    /// A device's acks.
    Acks(AckOut),
    /// Why a device's input was refused.
    Error(ErrorOut),
    /// A finished request, transfer or promotion no longer shown: its
    /// retained document cleared (an empty payload).
    Cleared(DocId),
}

/// Why a message does not decode as what the broker publishes.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    /// The topic is one devices publish on, not the broker.
    #[error("{0} is not a topic the broker publishes on")]
    NotPublished(String),
    /// The payload is not the topic's document.
    #[error("the payload on {topic} does not parse: {source}")]
    Payload {
        /// The topic.
        topic: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl Published {
    /// The message on `topic` with `payload`.
    pub fn decode(topic: &Topic, payload: &[u8]) -> Result<Published, PublishedError> {
        fn json<T: serde::de::DeserializeOwned>(topic: &Topic, payload: &[u8]) -> Result<T, PublishedError> {
            serde_json::from_slice(payload).map_err(|source| PublishedError::Payload {
                topic: topic.to_string(),
                source,
            })
        }
        Ok(match topic {
            Topic::StoreRequest { id, .. } | Topic::HqRequest { id } | Topic::Transfer { id, .. }
                if payload.is_empty() =>
            {
                Published::Cleared(id.clone())
            }
            Topic::HqPromotion { id } | Topic::StorePromotion { id, .. } if payload.is_empty() => {
                Published::Cleared(DocId::promotion(id))
            }
            Topic::HqPromotion { .. } => Published::Promotion(json(topic, payload)?),
            Topic::StorePromotion { .. } => Published::StorePromotion(json(topic, payload)?),
            Topic::DishAvailability { .. } => Published::Availability(json(topic, payload)?),
            Topic::StoreAvailability { .. } => Published::Menu(json(topic, payload)?),
            Topic::StockLevel { .. } => Published::Level(json(topic, payload)?),
            Topic::StockVariance { .. } => Published::Variance(json(topic, payload)?),
            Topic::StoreRequest { .. } | Topic::HqRequest { .. } => Published::Request(json(topic, payload)?),
            Topic::Transfer { .. } => Published::Transfer(json(topic, payload)?),
            Topic::Catalog { .. } => Published::Catalog(json(topic, payload)?),
            Topic::Summary { .. } => Published::Summary(json(topic, payload)?),
            Topic::Alerts { .. } => Published::Alert(json(topic, payload)?),
            Topic::BrokerAlerts => Published::BrokerAlert(json(topic, payload)?),
            Topic::BrokerMetrics => Published::Metrics(json(topic, payload)?),
            Topic::Acks { .. } | Topic::HqAcks { .. } => Published::Acks(json(topic, payload)?),
            Topic::Errors { .. } | Topic::HqErrors { .. } => Published::Error(json(topic, payload)?),
            Topic::StockEvents { .. }
            | Topic::Sales { .. }
            | Topic::DishOverride { .. }
            | Topic::DeviceStatus { .. }
            | Topic::ScaleWeight { .. }
            | Topic::ProbeTemperature { .. }
            | Topic::ProbeAction { .. }
            | Topic::RequestAction { .. }
            | Topic::TransferRequest { .. }
            | Topic::TransferAction { .. }
            | Topic::PromotionAction { .. } => return Err(PublishedError::NotPublished(topic.to_string())),
        })
    }

    /// The document's revision, for a retained document: a watcher keeps
    /// the highest it saw. `None` for events and a clearing.
    pub fn rev(&self) -> Option<u64> {
        Some(match self {
            Published::Availability(d) => d.rev,
            Published::Menu(d) => d.rev,
            Published::Level(d) => d.rev,
            Published::Variance(d) => d.rev,
            Published::Request(d) => d.rev,
            Published::Transfer(d) => d.rev,
            Published::Catalog(d) => d.rev,
            Published::Summary(d) => d.rev,
            Published::Promotion(d) => d.rev,
            Published::StorePromotion(d) => d.rev,
            Published::Alert(_)
            | Published::BrokerAlert(_)
            | Published::Metrics(_)
            | Published::Acks(_)
            | Published::Error(_)
            | Published::Cleared(_) => return None,
        })
    }
}
