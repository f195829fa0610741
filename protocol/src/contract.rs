//! The contract test: every example in `topics.md` is parsed into the types
//! of this crate, and every topic of the contract has an example.

use std::collections::BTreeSet;

use crate::payload::WeightIn;
use crate::payload::{
    AckOut, ActionIn, AlertOut, BrokerAlertOut, CatalogOut, DishAvailabilityOut, ErrorOut, LevelOut, OverrideIn,
    RequestOut, SaleIn, StockEventIn, StoreAvailabilityOut, SummaryOut, TransferOut, TransferRequestIn,
};
use crate::Topic;

const TOPICS_MD: &str = include_str!("../../topics.md");

/// `(topic, body)` of every fenced example with a `topic=` info string.
fn examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in TOPICS_MD.lines() {
        match &mut current {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    if let Some(topic) = info.split_whitespace().find_map(|w| w.strip_prefix("topic=")) {
                        current = Some((topic.to_string(), String::new()));
                    }
                }
            }
            Some(_) if line.starts_with("```") => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    out
}

fn parse<T: serde::de::DeserializeOwned>(topic: &str, body: &str) {
    if let Err(e) = serde_json::from_str::<T>(body) {
        panic!("topics.md example for {topic} does not parse: {e}\n{body}");
    }
}

#[test]
fn every_example_in_topics_md_parses() {
    let examples = examples();
    assert!(examples.len() >= 10, "found only {} examples", examples.len());
    let mut kinds = BTreeSet::new();
    for (topic, body) in &examples {
        let parsed: Topic = topic.parse().unwrap_or_else(|e| panic!("topics.md: {e}"));
        let kind = match parsed {
            Topic::StockEvents { .. } => {
                parse::<StockEventIn>(topic, body);
                "stock events"
            }
            Topic::Sales { .. } => {
                parse::<SaleIn>(topic, body);
                "sales"
            }
            Topic::DishOverride { .. } => {
                parse::<OverrideIn>(topic, body);
                "override"
            }
            Topic::ScaleWeight { .. } => {
                parse::<WeightIn>(topic, body);
                "weight"
            }
            Topic::DeviceStatus { .. } => {
                assert!(matches!(body.trim(), "online" | "offline"), "{topic}: {body}");
                "status"
            }
            Topic::DishAvailability { .. } => {
                parse::<DishAvailabilityOut>(topic, body);
                "dish availability"
            }
            Topic::StoreAvailability { .. } => {
                parse::<StoreAvailabilityOut>(topic, body);
                "store availability"
            }
            Topic::StockLevel { .. } => {
                parse::<LevelOut>(topic, body);
                "level"
            }
            Topic::Acks { .. } => {
                parse::<AckOut>(topic, body);
                "acks"
            }
            Topic::Errors { .. } => {
                parse::<ErrorOut>(topic, body);
                "errors"
            }
            Topic::BrokerAlerts => {
                parse::<BrokerAlertOut>(topic, body);
                "broker alerts"
            }
            Topic::HqErrors { .. } => {
                parse::<ErrorOut>(topic, body);
                "hq errors"
            }
            Topic::Catalog { .. } => {
                parse::<CatalogOut>(topic, body);
                "catalog"
            }
            Topic::RequestAction { .. } | Topic::TransferAction { .. } => {
                parse::<ActionIn>(topic, body);
                "actions"
            }
            Topic::TransferRequest { .. } => {
                parse::<TransferRequestIn>(topic, body);
                "transfer request"
            }
            Topic::StoreRequest { .. } | Topic::HqRequest { .. } => {
                parse::<RequestOut>(topic, body);
                "request"
            }
            Topic::Transfer { .. } => {
                parse::<TransferOut>(topic, body);
                "transfer"
            }
            Topic::Alerts { .. } => {
                parse::<AlertOut>(topic, body);
                "alerts"
            }
            Topic::Summary { .. } => {
                parse::<SummaryOut>(topic, body);
                "summary"
            }
        };
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 19, "every topic of the contract has an example: {kinds:?}");
}

#[test]
fn every_topic_pattern_is_documented() {
    for pattern in [
        "stores/{store}/stock/{sku}/events",
        "stores/{store}/sales",
        "stores/{store}/dishes/{dish}/override",
        "stores/{store}/devices/{device}/status",
        "stores/{store}/scales/{device}/weight",
        "stores/{store}/dishes/{dish}/availability",
        "stores/{store}/availability",
        "stores/{store}/stock/{sku}/level",
        "stores/{store}/acks/{device}",
        "stores/{store}/errors/{device}",
        "hq/alerts",
        "hq/replenishment/{id}/{action}",
        "stores/{store}/replenishment/{id}",
        "hq/replenishment/{id}",
        "stores/{store}/transfers/request",
        "stores/{store}/transfers/{id}/{action}",
        "stores/{store}/transfers/{id}",
        "stores/{store}/alerts",
        "hq/stores/{store}/summary",
    ] {
        assert!(
            TOPICS_MD.contains(&format!("`{pattern}`")),
            "topics.md lacks a section for {pattern}"
        );
    }
}
