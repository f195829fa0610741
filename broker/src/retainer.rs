//! Retained-message storage for the embedded broker: in memory only.
//!
//! rmqtt 0.24's built-in storage is a placeholder that keeps nothing, and its
//! retainer plugin is write-behind and expires v3 retained messages (see
//! BROKER-NOTES). dishsync does not need a durable retainer: sled is the
//! source of truth and start-up re-publishes every retained document before
//! any client is accepted. So this keeps retained messages in rmqtt's own
//! topic trie, with no expiry.

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

    async fn set(&self, topic: &TopicName, retain: Retain, _expiry: Option<Duration>) -> Result<()> {
        // Expiry is ignored on purpose: a POS must get availability however
        // long ago it last changed.
        self.inner.set_with_timeout(topic, retain, None).await
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
