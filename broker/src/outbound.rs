//! In-process publication: the broker's own messages (availability, levels,
//! acks, errors) go straight into rmqtt's router — no network client.
//!
//! [`Publisher`] is the seam between the rules shell and a broker: the
//! rules publish through it, [`Outbound`] implements it on rmqtt's router
//! (and a worker attached to an external broker would implement it on an
//! MQTT client). [`Message::json`] is the one place that turns a document
//! into JSON bytes. Retained documents land in the retainer
//! (`retainer`) as a side effect of routing, whether or not anyone
//! subscribes.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use dishsync_protocol::Topic;
use rmqtt::codec::types::QoS;
use rmqtt::context::ServerContext;
use rmqtt::retain::RetainStorage;
use rmqtt::session::SessionState;
use rmqtt::types::{CodecPublish, From, Id, Publish, Retain};
use rmqtt::utils::timestamp_millis;
use serde::Serialize;
use tracing::warn;

use crate::drain::Drain;
use crate::owed::Owed;
use crate::retainer::MemoryRetainer;

/// The client id our own publications carry.
pub const RULES_CLIENT_ID: &str = "dishsync-rules";

/// Where the rules' messages go. Every message is QoS 1.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `payload` on `topic`, retained or not. Failures are logged,
    /// not returned: sled, not the broker, is the source of truth, and
    /// retained state is re-published from it at every start.
    async fn publish(&self, topic: &Topic, payload: Vec<u8>, retain: bool);

    /// Makes `payload` the retained document of `topic` for every later
    /// subscriber, without delivering it to the current ones (the rules
    /// deliver it separately, with [`Publisher::deliver`]).
    async fn retain(&self, topic: &Topic, payload: Vec<u8>);

    /// [`Publisher::retain`] for each of the retained `documents`, in
    /// order: the re-publication of every document (at start-up, after a
    /// takeover).
    async fn retain_all(&self, documents: Vec<Message>) {
        for m in documents {
            self.retain(&m.topic, m.payload).await;
        }
    }

    /// Hands `payload` on `topic`, not retained, to the current subscribers
    /// and says to how many. `retained`: it is the document
    /// [`Publisher::retain`] already stored for the topic (a publisher whose
    /// `retain` also delivers sends it no second time).
    async fn deliver(&self, topic: &Topic, payload: Vec<u8>, retained: bool) -> usize;

    /// Deliveries of `topic`'s documents handed over and not yet written to
    /// their clients (0 where the publisher cannot tell).
    fn outstanding(&self, _topic: &Topic) -> usize {
        0
    }
}

/// Publishes `doc` as JSON on `topic`.
pub async fn publish_doc<T: Serialize + Sync>(out: &dyn Publisher, topic: &Topic, doc: &T, retain: bool) {
    if let Some(m) = Message::json(topic.clone(), doc, retain) {
        out.publish(&m.topic, m.payload, m.retain).await;
    }
}

/// One rendered message, on its way to a [`Publisher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it goes.
    pub topic: Topic,
    /// Its JSON payload (empty: the clearing of a retained document).
    pub payload: Vec<u8>,
    /// Whether it is the topic's retained document.
    pub retain: bool,
}

impl Message {
    /// A message of `payload` on `topic`.
    pub fn new(topic: Topic, payload: Vec<u8>, retain: bool) -> Message {
        Message { topic, payload, retain }
    }

    /// `doc` as JSON on `topic`: the one place a document becomes bytes.
    /// `None` (logged) if it cannot be encoded.
    pub fn json<T: Serialize>(topic: Topic, doc: &T, retain: bool) -> Option<Message> {
        match serde_json::to_vec(doc) {
            Ok(payload) => Some(Message::new(topic, payload, retain)),
            Err(e) => {
                warn!(%topic, error = %e, "could not encode an outgoing document");
                None
            }
        }
    }
}

/// A message as the web app's live pages get it.
#[derive(Debug, Clone)]
pub struct Live {
    /// Its topic.
    pub topic: Arc<str>,
    /// Its payload (empty: a retained document cleared).
    pub payload: Bytes,
}

/// Messages a live page may fall behind by before it is sent everything
/// again.
pub const LIVE_BACKLOG: usize = 4096;

/// A handle that publishes into the embedded broker. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    scx: ServerContext,
    /// The engine's retained store.
    retainer: MemoryRetainer,
    from: Arc<From>,
    /// Every message delivered, for the web app's live pages.
    live: tokio::sync::broadcast::Sender<Live>,
    /// Documents owed to sessions whose queue dropped them (see `owed`).
    owed: Arc<Owed>,
    /// Deliveries the sessions have not written yet (see `drain`).
    drain: Arc<Drain>,
}

impl Outbound {
    /// Publishes through `scx`'s router, whose retained store is
    /// `retainer`.
    pub fn new(scx: ServerContext, retainer: MemoryRetainer) -> Outbound {
        let id = Id::new(scx.node.id(), 0, None, None, RULES_CLIENT_ID.into(), None);
        Outbound {
            scx,
            retainer,
            from: Arc::new(From::from_system(id)),
            live: tokio::sync::broadcast::Sender::new(LIVE_BACKLOG),
            owed: Owed::new(),
            drain: Arc::default(),
        }
    }

    /// The deliveries the sessions have not written yet, per topic: done
    /// by the engine's hooks.
    pub fn drain(&self) -> Arc<Drain> {
        Arc::clone(&self.drain)
    }

    /// The documents owed to sessions that are behind: recorded by the
    /// deliveries and the engine's drops, paid back by [`Owed::run`].
    pub fn owed(&self) -> Arc<Owed> {
        Arc::clone(&self.owed)
    }

    /// Every message delivered from now on, as a live page gets it.
    pub fn live(&self) -> tokio::sync::broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// Hands a message to the live pages, if any is open.
    fn to_live(&self, topic: &Topic, payload: &Bytes) {
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Live {
                topic: topic.to_string().into(),
                payload: payload.clone(),
            });
        }
    }

    /// The retained documents whose topics match `filter`, each as its
    /// topic and payload, in topic order: what a subscriber to `filter`
    /// would get now.
    pub async fn retained(&self, filter: &str) -> Vec<(String, Bytes)> {
        let found = self.scx.extends.retain().await.get(&filter.into()).await;
        let mut found: Vec<(String, Bytes)> = match found {
            Ok(found) => found
                .into_iter()
                .map(|(topic, retain)| (topic.to_string(), retain.publish.payload.clone()))
                .collect(),
            Err(e) => {
                warn!(filter, error = %e, "reading retained documents failed");
                Vec::new()
            }
        };
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// `payload` as the retained message of `topic`, from the rules.
    fn retained_message(&self, topic: &Topic, payload: Vec<u8>) -> Retain {
        Retain {
            msg_id: None,
            from: (*self.from).clone(),
            publish: self.message(topic, payload, true),
        }
    }

    /// The QoS 1 message our publications carry, stamped now.
    fn message(&self, topic: &Topic, payload: Vec<u8>, retain: bool) -> Publish {
        let publish = CodecPublish {
            dup: false,
            retain,
            qos: QoS::AtLeastOnce,
            topic: topic.to_string().into(),
            packet_id: None,
            payload: Bytes::from(payload),
            properties: None,
        };
        Publish::from(publish).create_time(timestamp_millis())
    }
}

#[async_trait]
impl Publisher for Outbound {
    async fn publish(&self, topic: &Topic, payload: Vec<u8>, retain: bool) {
        let publish = self.message(topic, payload, retain);
        self.to_live(topic, &publish.payload);
        if let Err(e) = SessionState::forwards(&self.scx, (*self.from).clone(), publish, false, None).await {
            warn!(%topic, error = %e, "in-process publish failed");
        }
    }

    async fn retain_all(&self, documents: Vec<Message>) {
        // Made into the engine's messages on two threads, stored at once.
        let make = |documents: Vec<Message>| -> Vec<Retain> {
            documents
                .into_iter()
                .map(|m| self.retained_message(&m.topic, m.payload))
                .collect()
        };
        let mut first = documents;
        let second = first.split_off(first.len() / 2);
        let (mut made, second) = crate::halves::on_two_threads(first, second, make);
        made.extend(second);
        self.retainer.store_documents(made);
    }

    async fn retain(&self, topic: &Topic, payload: Vec<u8>) {
        let retained = self.retained_message(topic, payload);
        let name = retained.publish.topic.clone();
        if let Err(e) = self.retainer.set(&name, retained, None).await {
            warn!(%topic, error = %e, "storing a retained document failed");
        }
    }

    async fn deliver(&self, topic: &Topic, payload: Vec<u8>, retained: bool) -> usize {
        // What `SessionState::forwards` does for a message that is neither
        // retained, delayed nor stored, except that the number of
        // subscribers it reached is kept. A document a session's full queue
        // drops is owed to it (`owed`, through the `MessageDropped` hook).
        let publish = self.message(topic, payload, false);
        self.to_live(topic, &publish.payload);
        let (name, created) = (publish.topic.clone(), publish.create_time.unwrap_or_default());
        let shared = self.scx.extends.shared().await;
        let subscribers = match shared.forwards(None, (*self.from).clone(), publish).await {
            Ok(subscribers) => subscribers,
            Err((subscribers, failed)) => {
                // Counted before the failures are told (each one done).
                if retained {
                    self.drain.sent(&name, created, subscribers + failed.len());
                }
                self.report_failed(failed).await;
                return subscribers;
            }
        };
        if retained {
            self.drain.sent(&name, created, subscribers);
        }
        subscribers
    }

    fn outstanding(&self, topic: &Topic) -> usize {
        self.drain.outstanding(&topic.to_string())
    }
}

impl Outbound {
    /// Tells the hooks of messages the engine could not hand over.
    async fn report_failed(&self, failed: Vec<(rmqtt::types::To, From, Publish, rmqtt::types::Reason)>) {
        for (to, from, publish, reason) in failed {
            self.scx
                .extends
                .hook_mgr()
                .message_dropped(Some(to), from, publish, reason)
                .await;
        }
    }
}
