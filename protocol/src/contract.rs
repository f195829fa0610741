//! The examples of `topics.md` ([`examples`]). Its tests parse every one
//! into the types of this crate and find an example for every topic of the
//! contract.

const TOPICS_MD: &str = include_str!("../../topics.md");

/// `(topic, body)` of every fenced example in `topics.md` with a `topic=`
/// info string: what other documents of the contract (the HTTP API's
/// OpenAPI document) are held to.
pub fn examples() -> Vec<(String, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{ActionIn, OverrideIn, SaleIn, StockEventIn, TransferRequestIn};
    use crate::payload::{PromotionIn, TemperatureIn, WeightIn};
    use crate::topic::Family;
    use crate::topic::PromotionAction;
    use crate::{Published, Topic};
    use std::collections::BTreeSet;

    /// The kind an example of the broker's is counted as (two topics carry
    /// errors, two carry requests).
    fn published_kind(topic: &Topic, published: &Published) -> &'static str {
        match published {
            Published::Availability(_) => "dish availability",
            Published::Menu(_) => "store availability",
            Published::Level(_) => "level",
            Published::Variance(_) => "variance",
            Published::Acks(_) if matches!(topic, Topic::HqAcks { .. }) => "hq acks",
            Published::Acks(_) => "acks",
            Published::Error(_) if matches!(topic, Topic::HqErrors { .. }) => "hq errors",
            Published::Error(_) => "errors",
            Published::BrokerAlert(_) => "broker alerts",
            Published::Metrics(_) => "metrics",
            Published::Catalog(_) => "catalog",
            Published::Request(_) => "request",
            Published::Transfer(_) => "transfer",
            Published::Alert(_) => "alerts",
            Published::Summary(_) => "summary",
            Published::Promotion(_) => "promotion",
            Published::StorePromotion(_) => "store promotion",
            Published::Cleared(_) => "cleared",
        }
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
                Topic::ProbeTemperature { .. } => {
                    parse::<TemperatureIn>(topic, body);
                    "temperature"
                }
                Topic::ProbeAction { .. } => {
                    parse::<ActionIn>(topic, body);
                    "probe actions"
                }
                Topic::DeviceStatus { .. } => {
                    assert!(matches!(body.trim(), "online" | "offline"), "{topic}: {body}");
                    "status"
                }
                Topic::RequestAction { .. } | Topic::TransferAction { .. } => {
                    parse::<ActionIn>(topic, body);
                    "actions"
                }
                Topic::TransferRequest { .. } => {
                    parse::<TransferRequestIn>(topic, body);
                    "transfer request"
                }
                Topic::PromotionAction {
                    action: PromotionAction::Plan,
                    ..
                } => {
                    parse::<PromotionIn>(topic, body);
                    "promotion plan"
                }
                Topic::PromotionAction {
                    action: PromotionAction::Cancel,
                    ..
                } => {
                    parse::<ActionIn>(topic, body);
                    "promotion cancel"
                }
                output => match Published::decode(&output, body.as_bytes()) {
                    Ok(published) => published_kind(&output, &published),
                    Err(e) => panic!("topics.md example for {topic}: {e}\n{body}"),
                },
            };
            kinds.insert(kind);
        }
        assert_eq!(kinds.len(), 28, "every topic of the contract has an example: {kinds:?}");
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
            "$SYS/dishsync/metrics",
            "hq/replenishment/{id}/{action}",
            "stores/{store}/replenishment/{id}",
            "hq/replenishment/{id}",
            "stores/{store}/transfers/request",
            "stores/{store}/transfers/{id}/{action}",
            "stores/{store}/transfers/{id}",
            "stores/{store}/alerts",
            "hq/stores/{store}/summary",
            "hq/promotions/{promotion}/plan",
            "hq/promotions/{promotion}/cancel",
            "hq/promotions/{promotion}",
            "stores/{store}/promotions/{promotion}",
            "hq/acks/{device}",
        ] {
            assert!(
                TOPICS_MD.contains(&format!("`{pattern}`")),
                "topics.md lacks a section for {pattern}"
            );
        }
    }

    /// Every example topic matches exactly one pattern of the contract, and it
    /// is one of its own family's: the patterns subscription filters are built
    /// from name the topics the parser reads.
    #[test]
    fn every_example_topic_matches_one_pattern_of_its_family() {
        for (topic, _) in examples() {
            let parsed: Topic = topic.parse().unwrap_or_else(|e| panic!("topics.md: {e}"));
            let matching: Vec<(Family, usize)> = Family::ALL
                .iter()
                .flat_map(|f| f.patterns().iter().enumerate().map(move |(i, p)| (*f, i, *p)))
                .filter(|(_, _, p)| p.matches(&topic))
                .map(|(f, i, _)| (f, i))
                .collect();
            let own = Family::of(&parsed);
            if matches!(parsed, Topic::TransferRequest { .. }) {
                // The one overlap: a transfer's pattern (`transfers/*`) also
                // matches the literal `transfers/request`, which the parser
                // reads first.
                assert_eq!(
                    matching,
                    [(Family::TransferActions, 1), (Family::Transfers, 0)],
                    "{topic}"
                );
                continue;
            }
            assert_eq!(matching.len(), 1, "{topic}: {matching:?}");
            assert_eq!(matching[0].0, own, "{topic}: {matching:?}");
        }
    }
}
