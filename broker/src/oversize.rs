//! A delivery larger than its client's Maximum Packet Size is discarded.
//!
//! An MQTT 5 client may say how large a packet it accepts; a server "MUST
//! NOT send packets exceeding Maximum Packet Size to the Client"
//! ([MQTT-3.1.2-24] of MQTT 5) and, where a packet is too large to send,
//! "MUST discard it without sending it and then behave as if it had
//! completed sending that Application Message" ([MQTT-3.1.2-25]). rmqtt
//! 0.24's encoder instead fails the send and the engine closes the
//! connection (`rmqtt-codec` `v5/codec.rs`, `OverMaxPacketSize`), so one
//! large message on a topic a small device subscribes to would cut that
//! device off again at every reconnect.
//!
//! [`Oversize`] answers `MessageExpiryCheck`, the last hook before the
//! engine encodes a delivery: a PUBLISH the engine would refuse to encode
//! is reported as expired, which the engine discards without sending
//! (nothing waits for its acknowledgement). The engine refuses a PUBLISH
//! whose remaining length is above the client's maximum less 5 (room for
//! the largest fixed header, `set_max_outbound_size`), so a packet within 3
//! bytes of the maximum is discarded although it would fit (CONFORMANCE.md,
//! *Gaps left*). The remaining length is the PUBLISH as the engine encodes
//! it, counting a topic alias as present whenever the client accepts
//! aliases (the engine picks one only as it sends): at most 3 bytes too
//! many for such a client, never too few.

use async_trait::async_trait;
use rmqtt::codec::types::Publish as CodecPublish;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::session::Session;
use rmqtt::types::ConnectInfo;
use tracing::info;

/// The bytes of a variable byte integer of `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The remaining length of `publish` encoded as an MQTT 5 PUBLISH packet
/// (all but the fixed header), with a Message Expiry Interval when
/// `expires`, and a topic alias when `alias` (at most).
pub fn remaining_length(publish: &CodecPublish, expires: bool, alias: bool) -> usize {
    let string = |s: &str| 2 + s.len();
    let mut props = 0;
    if alias {
        props += 3;
    }
    if expires {
        props += 5;
    }
    if let Some(p) = &publish.properties {
        props += p.correlation_data.as_ref().map_or(0, |d| 1 + 2 + d.len());
        props += p.content_type.as_ref().map_or(0, |t| 1 + string(t));
        props += if p.is_utf8_payload { 2 } else { 0 };
        props += p.response_topic.as_ref().map_or(0, |t| 1 + string(t));
        props += p
            .subscription_ids
            .iter()
            .map(|id| 1 + varint_len(id.get() as usize))
            .sum::<usize>();
        props += p
            .user_properties
            .iter()
            .map(|(k, v)| 1 + string(k) + string(v))
            .sum::<usize>();
    }
    let packet_id = if publish.qos == rmqtt::codec::types::QoS::AtMostOnce {
        0
    } else {
        2
    };
    string(&publish.topic) + packet_id + varint_len(props) + props + publish.payload.len()
}

/// Whether the engine refuses to encode a PUBLISH of `remaining` bytes for
/// a client whose Maximum Packet Size is `max` (rmqtt-codec 0.3
/// `set_max_outbound_size` keeps 5 bytes for the fixed header).
fn refused(remaining: usize, max: u32) -> bool {
    let max = max as usize;
    remaining > if max > 5 { max - 5 } else { max }
}

/// Answers `MessageExpiryCheck`.
#[derive(Clone, Default)]
pub struct Oversize;

impl Oversize {
    async fn too_large(session: &Session, publish: &rmqtt::types::Publish) -> bool {
        let Ok(connect) = session.connect_info().await else {
            return false;
        };
        let ConnectInfo::V5(_, connect) = connect.as_ref() else {
            return false;
        };
        let Some(max) = connect.max_packet_size else {
            return false;
        };
        let expires = publish
            .properties
            .as_ref()
            .is_some_and(|p| p.message_expiry_interval.is_some());
        let size = remaining_length(&publish.inner, expires, connect.topic_alias_max > 0);
        if refused(size, max.get()) {
            info!(
                client_id = %session.id.client_id,
                topic = %publish.topic,
                size,
                max = max.get(),
                "a delivery larger than the client accepts: discarded"
            );
            return true;
        }
        false
    }
}

#[async_trait]
impl Handler for Oversize {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessageExpiryCheck(session, _, publish) = param {
            if Oversize::too_large(session, publish).await {
                return (false, Some(HookResult::MessageExpiry));
            }
        }
        (true, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmqtt::codec::types::QoS;
    use rmqtt::codec::v5::{Codec, Packet, PublishProperties};
    use std::num::{NonZeroU16, NonZeroU32};
    use tokio_util::codec::Encoder;

    /// The remaining length the engine's own encoder writes for `publish`.
    fn encoded(publish: &CodecPublish) -> usize {
        let mut out = bytes::BytesMut::new();
        Codec::new(0, 0)
            .encode(Packet::Publish(Box::new(publish.clone())), &mut out)
            .expect("encodes");
        let header = if out.len() - 2 < 128 { 2 } else { 3 };
        out.len() - header
    }

    /// Whether the engine's encoder, for a client whose maximum is `max`,
    /// refuses `publish`.
    fn engine_refuses(publish: &CodecPublish, max: u32) -> bool {
        let mut codec = Codec::new(0, 0);
        codec.set_max_outbound_size(max);
        codec
            .encode(Packet::Publish(Box::new(publish.clone())), &mut bytes::BytesMut::new())
            .is_err()
    }

    #[test]
    fn the_size_is_what_the_engine_encodes() {
        let mut publish = CodecPublish {
            dup: false,
            retain: false,
            qos: QoS::AtMostOnce,
            topic: "probes/s1/fridge".into(),
            packet_id: None,
            payload: bytes::Bytes::from(vec![b'x'; 20]),
            properties: Some(PublishProperties::default()),
        };
        assert_eq!(remaining_length(&publish, false, false), encoded(&publish));
        // Every property the engine may carry, and a payload long enough
        // for a two-byte remaining length.
        publish.qos = QoS::AtLeastOnce;
        publish.packet_id = NonZeroU16::new(7);
        publish.payload = bytes::Bytes::from(vec![b'x'; 300]);
        let props = publish.properties.as_mut().expect("properties");
        props.correlation_data = Some(bytes::Bytes::from_static(b"334"));
        props.content_type = Some("text/plain".into());
        props.is_utf8_payload = true;
        props.response_topic = Some("probes/s1/reply".into());
        props.subscription_ids = vec![NonZeroU32::new(2).expect("id"), NonZeroU32::new(456_789).expect("id")];
        props.user_properties = vec![("a".into(), "2".into()), ("c".into(), "3".into())];
        assert_eq!(remaining_length(&publish, false, false), encoded(&publish));
        // With the expiry and the alias the engine adds as it sends.
        let props = publish.properties.as_mut().expect("properties");
        props.message_expiry_interval = NonZeroU32::new(60);
        props.topic_alias = NonZeroU16::new(1);
        assert_eq!(remaining_length(&publish, true, true), encoded(&publish));
    }

    #[test]
    fn what_is_discarded_is_what_the_engine_would_refuse() {
        let remaining = |payload: usize| {
            let publish = CodecPublish {
                dup: false,
                retain: false,
                qos: QoS::AtMostOnce,
                topic: "t/a".into(),
                packet_id: None,
                payload: bytes::Bytes::from(vec![b'x'; payload]),
                properties: Some(PublishProperties::default()),
            };
            (remaining_length(&publish, false, false), publish)
        };
        for max in [64u32, 200, 1024] {
            for payload in 40..(max as usize + 10) {
                let (size, publish) = remaining(payload);
                assert_eq!(
                    refused(size, max),
                    engine_refuses(&publish, max),
                    "max {max}, payload {payload}"
                );
            }
        }
    }
}
