//! Retained-message storage for the embedded broker (in memory only), and
//! the strategy that switches shared subscriptions on.
//!
//! rmqtt 0.24's built-in storage is a placeholder that keeps nothing, and its
//! retainer plugin is write-behind and expires v3 retained messages (see
//! ARCHITECTURE.md, *The engine*). dishsync does not need a durable retainer: sled is the
//! source of truth and start-up re-publishes every retained document before
//! any client is accepted. So this keeps retained messages in memory, with
//! no expiry for the contract's documents; a retained message of an open
//! namespace expires only if its MQTT 5 publisher set a message expiry
//! interval.
//!
//! The messages are kept in one map ordered by topic, not in the engine's
//! topic trie: a chain of 2,000 stores retains 460,000 documents, and the
//! trie's node per topic level, each with a hash table of its own, cost
//! about a kilobyte per document on top of the document itself. A filter's
//! literal levels before its first wildcard name the one range of topics it
//! can match (`stores/s1/dishes/+/availability`: the topics from
//! `stores/s1/dishes`), which is all a subscription reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::retain::RetainStorage;
use rmqtt::types::{Retain, TimedValue, TopicFilter, TopicName};
use rmqtt::Result;

/// Whether MQTT topic filter `filter` matches `topic` (`+` one level, `#`
/// the rest, the level above included; a wildcard at the first level does
/// not match a `$` topic, MQTT 5 §4.7.2).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (literal, Some(level)) if literal == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// The text every topic `filter` matches starts with: its levels before
/// the first wildcard (all of it for a filter without one). A wildcard is
/// a whole level (the engine refuses any other filter), and a range read
/// from a shorter prefix only finds more to check.
fn literal_prefix(filter: &str) -> &str {
    match filter.find(['+', '#']) {
        // `a/b/+`: topics from `a/b` (the slash dropped, so that `a/b/#`
        // finds `a/b` itself).
        Some(start) => &filter[..start.saturating_sub(1)],
        None => filter,
    }
}

/// What the retainer holds.
#[derive(Default)]
struct Retained {
    /// Every retained message by its topic: the message's own topic name,
    /// shared (a clone is a reference count), not a copy of it.
    messages: BTreeMap<TopicName, TimedValue<Retain>>,
    /// The topics whose message expires: what a sweep looks at.
    expiring: BTreeSet<String>,
    /// Sets since the last sweep.
    sets: usize,
}

/// Sets between two sweeps of the expired messages.
const SWEEP_EVERY: usize = 4096;

impl Retained {
    /// Makes `message` the retained one of `topic`, expiring after
    /// `expiry`; an empty payload clears the topic (MQTT 5 §3.3.1.3).
    fn put(&mut self, topic: &TopicName, message: Retain, expiry: Option<Duration>) {
        if message.publish.payload.is_empty() || expiry.is_none() {
            self.expiring.remove(&**topic);
        }
        if message.publish.payload.is_empty() {
            self.messages.remove(&**topic);
            return;
        }
        if expiry.is_some() {
            self.expiring.insert(topic.to_string());
        }
        match self.messages.get_mut(&**topic) {
            Some(held) => *held = TimedValue::new(message, expiry),
            None => {
                self.messages.insert(topic.clone(), TimedValue::new(message, expiry));
            }
        }
    }

    /// Drops the messages whose expiry passed.
    fn sweep(&mut self) {
        let expired: Vec<String> = self
            .expiring
            .iter()
            .filter(|t| self.messages.get(t.as_str()).is_none_or(|m| m.is_expired()))
            .cloned()
            .collect();
        for topic in expired {
            self.expiring.remove(&topic);
            if self.messages.get(topic.as_str()).is_some_and(|m| m.is_expired()) {
                self.messages.remove(topic.as_str());
            }
        }
    }
}

/// In-memory retained messages that never expire unless their publisher
/// asked. A handle: its clones share the messages (one is the engine's,
/// one the rules' for [`MemoryRetainer::store_documents`]).
#[derive(Default, Clone)]
pub struct MemoryRetainer {
    retained: Arc<RwLock<Retained>>,
    /// The most messages held at once.
    most: Arc<std::sync::atomic::AtomicUsize>,
}

impl MemoryRetainer {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Retained> {
        self.retained.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Retained> {
        self.retained.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the rules' `documents` (topic, message), which never expire,
    /// at once: the re-publication of every document at start-up, 460,000
    /// of them at 2,000 stores. Into an empty store they go in one sorted
    /// build; an empty payload clears its topic, and of two for one topic
    /// the later wins.
    pub fn store_documents(&self, documents: Vec<Retain>) {
        let mut retained = self.write();
        if retained.messages.is_empty() {
            let mut documents = documents;
            // Stable: of two for one topic, the later stays last.
            documents.sort_by(|a, b| a.publish.topic.cmp(&b.publish.topic));
            let mut kept: Vec<(TopicName, TimedValue<Retain>)> = Vec::with_capacity(documents.len());
            for message in documents {
                let topic = message.publish.topic.clone();
                if kept.last().is_some_and(|(last, _)| *last == topic) {
                    kept.pop();
                }
                kept.push((topic, TimedValue::new(message, None)));
            }
            kept.retain(|(_, message)| !message.value().publish.payload.is_empty());
            // Sorted, of known length: built in one pass.
            retained.messages = kept.into_iter().collect();
        } else {
            for message in documents {
                let topic = message.publish.topic.clone();
                retained.put(&topic, message, None);
            }
        }
        self.most
            .fetch_max(retained.messages.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait]
impl RetainStorage for MemoryRetainer {
    fn enable(&self) -> bool {
        true
    }

    async fn set(&self, topic: &TopicName, retain: Retain, expiry: Option<Duration>) -> Result<()> {
        // The contract's documents never expire: a POS must get availability
        // however long ago it last changed. A message of an open namespace
        // expires only when its publisher asked so (MQTT 5's message expiry
        // interval), never by the listener's default, as plain MQTT says.
        let contract = crate::namespaces::CONTRACT_ROOTS.contains(&topic.split('/').next().unwrap_or_default());
        let asked = retain
            .publish
            .properties
            .as_ref()
            .is_some_and(|p| p.message_expiry_interval.is_some());
        let expiry = if contract || !asked { None } else { expiry };
        let mut retained = self.write();
        retained.put(topic, retain, expiry);
        retained.sets += 1;
        if retained.sets >= SWEEP_EVERY && !retained.expiring.is_empty() {
            retained.sets = 0;
            retained.sweep();
        }
        self.most
            .fetch_max(retained.messages.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn get(&self, topic_filter: &TopicFilter) -> Result<Vec<(TopicName, Retain)>> {
        let filter: &str = topic_filter;
        let retained = self.read();
        let live = |(topic, message): (&TopicName, &TimedValue<Retain>)| {
            (!message.is_expired() && filter_matches(filter, topic)).then(|| (topic.clone(), message.value().clone()))
        };
        let prefix = literal_prefix(filter);
        let found = if prefix.len() == filter.len() {
            retained
                .messages
                .get_key_value(prefix)
                .and_then(live)
                .into_iter()
                .collect()
        } else {
            retained
                .messages
                .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                .take_while(|(topic, _)| topic.starts_with(prefix))
                .filter_map(live)
                .collect()
        };
        Ok(found)
    }

    async fn count(&self) -> isize {
        self.read().messages.len() as isize
    }

    async fn max(&self) -> isize {
        self.most.load(std::sync::atomic::Ordering::Relaxed) as isize
    }
}

/// Shared subscriptions (`$share/{group}/{filter}`): rmqtt 0.24 ships the
/// feature switched off (its default strategy says "not supported"); this
/// turns it on with a round robin over the group's online members, as MQTT
/// 5 §4.8.2 asks: each message to one member.
#[derive(Default)]
pub struct RoundRobinGroups {
    next: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl rmqtt::subscribe::SharedSubscription for RoundRobinGroups {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &rmqtt::context::ServerContext,
        _group: &rmqtt::types::SharedGroup,
        _publisher_id: &rmqtt::types::Id,
        _topic: &TopicName,
        members: &[(
            rmqtt::types::NodeId,
            rmqtt::types::ClientId,
            rmqtt::types::SubscriptionOptions,
            Option<Vec<rmqtt::types::SubscriptionIdentifier>>,
            Option<rmqtt::types::IsOnline>,
        )],
    ) -> Option<(usize, rmqtt::types::IsOnline)> {
        if members.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The next online member from the turn on; an offline one only if
        // none is online (its session queues the message).
        (0..members.len())
            .map(|k| (start + k) % members.len())
            .find(|i| members[*i].4.unwrap_or(true))
            .map(|i| (i, true))
            .or(Some((start % members.len(), false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        let dish = "stores/s1/dishes/burger/availability";
        assert!(filter_matches("stores/s1/dishes/+/availability", dish));
        assert!(!filter_matches(
            "stores/s1/dishes/+/availability",
            "stores/s2/dishes/burger/availability"
        ));
        assert!(!filter_matches(
            "stores/s1/dishes/+/availability",
            "stores/s1/dishes/burger"
        ));
        assert!(filter_matches("stores/#", dish));
        assert!(filter_matches("stores/s1/#", "stores/s1"));
        assert!(filter_matches("#", "stores/s1"));
        assert!(!filter_matches("#", "$SYS/dishsync/metrics"));
        assert!(!filter_matches("+/dishsync/metrics", "$SYS/dishsync/metrics"));
        assert!(filter_matches("$SYS/dishsync/metrics", "$SYS/dishsync/metrics"));
        assert!(!filter_matches("stores/+", "stores/s1/sales"));
        assert!(filter_matches("stores/s1/alerts", "stores/s1/alerts"));
        assert!(!filter_matches("stores/s1/alerts", "stores/s1/alerts/x"));
    }

    #[test]
    fn a_filter_reads_from_its_literal_levels() {
        assert_eq!(literal_prefix("stores/s1/dishes/+/availability"), "stores/s1/dishes");
        assert_eq!(literal_prefix("stores/s1/#"), "stores/s1");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("+/x"), "");
        assert_eq!(literal_prefix("stores/s1/alerts"), "stores/s1/alerts");
    }

    fn retained(topic: &str, payload: &str, expiry_asked: bool) -> Retain {
        let publish = rmqtt::types::CodecPublish {
            dup: false,
            retain: true,
            qos: rmqtt::codec::types::QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id: None,
            payload: bytes::Bytes::from(payload.to_string()),
            properties: expiry_asked.then(|| rmqtt::codec::v5::PublishProperties {
                message_expiry_interval: std::num::NonZeroU32::new(1),
                ..Default::default()
            }),
        };
        Retain {
            msg_id: None,
            from: rmqtt::types::From::from_custom(rmqtt::types::Id::new(1, 0, None, None, "test".into(), None)),
            publish: rmqtt::types::Publish::from(publish),
        }
    }

    fn topics(found: Vec<(TopicName, Retain)>) -> Vec<String> {
        let mut topics: Vec<String> = found.into_iter().map(|(t, _)| t.to_string()).collect();
        topics.sort();
        topics
    }

    #[tokio::test]
    async fn a_subscription_gets_what_its_filter_matches_and_nothing_else() {
        let retainer = MemoryRetainer::default();
        for topic in [
            "stores/s1/dishes/burger/availability",
            "stores/s1/dishes/fries/availability",
            "stores/s1/dishes/fries",
            "stores/s1/stock/bun/level",
            "stores/s1",
            "stores/s10/dishes/burger/availability",
            "stores/s2/dishes/burger/availability",
            "$SYS/dishsync/metrics",
        ] {
            retainer
                .set(&topic.into(), retained(topic, "{}", false), None)
                .await
                .expect("the retainer answers");
        }
        let get = |filter: &'static str| {
            let retainer = &retainer;
            async move { topics(retainer.get(&filter.into()).await.expect("the retainer answers")) }
        };
        assert_eq!(
            get("stores/s1/dishes/+/availability").await,
            [
                "stores/s1/dishes/burger/availability",
                "stores/s1/dishes/fries/availability"
            ]
        );
        assert_eq!(get("stores/s1/#").await.len(), 5, "{:?}", get("stores/s1/#").await);
        assert_eq!(
            get("+/s2/dishes/+/availability").await,
            ["stores/s2/dishes/burger/availability"]
        );
        assert_eq!(get("stores/s1/stock/bun/level").await, ["stores/s1/stock/bun/level"]);
        assert!(get("stores/s1/stock/beef/level").await.is_empty());
        assert_eq!(get("#").await.len(), 7);
        assert_eq!(get("$SYS/#").await, ["$SYS/dishsync/metrics"]);
        assert_eq!(retainer.count().await, 8);
        // An empty payload clears the topic.
        let bun = "stores/s1/stock/bun/level";
        retainer
            .set(&bun.into(), retained(bun, "", false), None)
            .await
            .expect("the retainer answers");
        assert!(get("stores/s1/stock/bun/level").await.is_empty());
        assert_eq!((retainer.count().await, retainer.max().await), (7, 8));
        // A second set replaces the first.
        let fries = "stores/s1/dishes/fries/availability";
        retainer
            .set(&fries.into(), retained(fries, "{\"rev\":2}", false), None)
            .await
            .expect("the retainer answers");
        let found = retainer.get(&fries.into()).await.expect("the retainer answers");
        assert_eq!(found.len(), 1);
        assert_eq!(&found[0].1.publish.payload[..], b"{\"rev\":2}");
    }

    #[tokio::test]
    async fn documents_stored_at_once_read_as_if_set_one_by_one() {
        let all = [
            ("stores/s1/dishes/burger/availability", "{\"rev\":1}"),
            ("stores/s1/stock/bun/level", "{\"rev\":1}"),
            ("stores/s1/dishes/burger/availability", "{\"rev\":2}"),
            ("hq/requests/r1", "{}"),
            ("hq/requests/r2", ""),
        ];
        let documents = || all.iter().map(|(t, p)| retained(t, p, false)).collect::<Vec<_>>();
        let (at_once, one_by_one) = (MemoryRetainer::default(), MemoryRetainer::default());
        at_once.store_documents(documents());
        for message in documents() {
            one_by_one
                .set(&message.publish.topic.clone(), message, None)
                .await
                .expect("the retainer answers");
        }
        // Into a store that already holds some: the same again.
        let again = MemoryRetainer::default();
        again.store_documents(documents()[..2].to_vec());
        again.store_documents(documents());
        for retainer in [&at_once, &one_by_one, &again] {
            let found = retainer.get(&"#".into()).await.expect("the retainer answers");
            let found: Vec<(String, String)> = found
                .into_iter()
                .map(|(t, r)| (t.to_string(), String::from_utf8_lossy(&r.publish.payload).into_owned()))
                .collect();
            assert_eq!(
                found,
                [
                    ("hq/requests/r1".to_string(), "{}".to_string()),
                    (
                        "stores/s1/dishes/burger/availability".to_string(),
                        "{\"rev\":2}".to_string()
                    ),
                    ("stores/s1/stock/bun/level".to_string(), "{\"rev\":1}".to_string()),
                ]
            );
            assert_eq!(retainer.count().await, 3);
        }
    }

    #[tokio::test]
    async fn only_a_message_whose_publisher_asked_expires() {
        let retainer = MemoryRetainer::default();
        let (open, document) = ("site/oven/temperature", "stores/s1/stock/bun/level");
        let gone = Some(Duration::ZERO);
        retainer
            .set(&open.into(), retained(open, "180", true), gone)
            .await
            .expect("the retainer answers");
        retainer
            .set(&document.into(), retained(document, "{}", true), gone)
            .await
            .expect("the retainer answers");
        let unasked = "site/oven/door";
        retainer
            .set(&unasked.into(), retained(unasked, "shut", false), gone)
            .await
            .expect("the retainer answers");
        let held = |topic: &'static str| {
            let retainer = &retainer;
            async move { retainer.get(&topic.into()).await.expect("the retainer answers").len() }
        };
        assert_eq!(held(open).await, 0, "expired");
        assert_eq!(held(document).await, 1, "a contract document never expires");
        assert_eq!(held(unasked).await, 1, "its publisher did not ask");
        // A sweep drops what expired.
        for i in 0..SWEEP_EVERY {
            let topic = format!("site/oven/{i}");
            retainer
                .set(&topic.as_str().into(), retained(&topic, "1", false), None)
                .await
                .expect("the retainer answers");
        }
        assert!(!retainer.read().messages.contains_key(open));
        assert!(retainer.read().expiring.is_empty());
    }
}
