//! Retained-message storage for the embedded broker (in memory only), and
//! the strategy that switches shared subscriptions on.
//!
//! rmqtt 0.24's built-in storage is a placeholder that keeps nothing, and its
//! retainer plugin is write-behind and expires v3 retained messages (see
//! ARCHITECTURE.md, *The engine*). dishsync does not need a durable retainer: sled is the
//! source of truth and start-up re-publishes every retained document before
//! any client is accepted. So this keeps retained messages in rmqtt's own
//! topic trie, with no expiry for the contract's documents; a retained
//! message of an open namespace expires only if its MQTT 5 publisher set a
//! message expiry interval.

use std::time::Duration;

use async_trait::async_trait;
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::types::{Retain, TopicFilter, TopicName};
use rmqtt::Result;

/// In-memory retained messages that never expire.
#[derive(Default)]
pub struct MemoryRetainer {
    inner: DefaultRetainStorage,
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
        self.inner.set_with_timeout(topic, retain, expiry).await
    }

    async fn get(&self, topic_filter: &TopicFilter) -> Result<Vec<(TopicName, Retain)>> {
        self.inner.get_message(topic_filter).await
    }

    async fn count(&self) -> isize {
        self.inner.count().await
    }

    async fn max(&self) -> isize {
        self.inner.max().await
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
