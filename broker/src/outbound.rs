//! In-process publication: the broker's own messages (availability, levels,
//! acks, errors) go straight into rmqtt's router — no network client.
//!
//! Owns the translation from a contract [`Topic`] plus a serialisable
//! document to an rmqtt publish. Retained documents land in the retainer
//! (`retainer`) as a side effect of routing, whether or not anyone
//! subscribes.

use std::sync::Arc;

use bytes::Bytes;
use dishsync_protocol::Topic;
use rmqtt::codec::types::QoS;
use rmqtt::context::ServerContext;
use rmqtt::session::SessionState;
use rmqtt::types::{CodecPublish, From, Id, Publish};
use rmqtt::utils::timestamp_millis;
use serde::Serialize;
use tracing::warn;

/// The client id our own publications carry.
pub const RULES_CLIENT_ID: &str = "dishsync-rules";

/// A handle that publishes into the embedded broker. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    scx: ServerContext,
    from: Arc<From>,
}

impl Outbound {
    /// Publishes through `scx`'s router.
    pub fn new(scx: ServerContext) -> Outbound {
        let id = Id::new(scx.node.id(), 0, None, None, RULES_CLIENT_ID.into(), None);
        Outbound {
            scx,
            from: Arc::new(From::from_system(id)),
        }
    }

    /// Publishes `body` as JSON on `topic` at QoS 1.
    pub async fn publish<T: Serialize>(&self, topic: &Topic, body: &T, retain: bool) {
        let payload = match serde_json::to_vec(body) {
            Ok(p) => p,
            Err(e) => {
                warn!(%topic, error = %e, "could not encode an outgoing document");
                return;
            }
        };
        let publish = CodecPublish {
            dup: false,
            retain,
            qos: QoS::AtLeastOnce,
            topic: topic.to_string().into(),
            packet_id: None,
            payload: Bytes::from(payload),
            properties: None,
        };
        let publish = Publish::from(publish).create_time(timestamp_millis());
        if let Err(e) =
            SessionState::forwards(&self.scx, (*self.from).clone(), publish, false, None).await
        {
            warn!(%topic, error = %e, "in-process publish failed");
        }
    }
}
