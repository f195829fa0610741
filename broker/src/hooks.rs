//! The broker's hooks into rmqtt: where MQTT traffic meets the rules.
//!
//! [`IntakeHook`] answers `MessagePublishCheckAcl`, which rmqtt runs inline in
//! the publisher's session *before* it acknowledges the PUBLISH. It decides
//! whether the topic may be published at all, decodes input payloads, hands
//! them to the rules task and waits for the commit — so the device's
//! PUBACK/PUBCOMP follows the durable commit. (`MessagePublish` fires before
//! the permission check and cannot drop a message; it is not used.)
//!
//! Outcomes, as the publisher sees them:
//! - applied: routed on to subscribers, PUBACK success;
//! - a re-sent id already applied: not routed again, PUBACK "no matching
//!   subscribers" (a success code in MQTT 5), id acknowledged again;
//! - rejected: not routed, not applied, an error on the sender's `errors`
//!   topic, and (MQTT 5) a failure reason code in the PUBACK.
//!
//! [`DropCounter`] watches `MessageDropped` for messages the broker failed to
//! deliver (full queues) and logs them: a silent drop is the worst failure a
//! POS display can have.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dishsync_inventory::Rejection;
use dishsync_protocol::payload::ErrorCode;
use dishsync_protocol::topic::Direction;
use dishsync_protocol::{DeviceId, Topic};
use rmqtt::codec::v5::PublishAckReason;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{PublishAclResult, PublishResult, Reason};
use tracing::warn;

use crate::outbound::Outbound;
use crate::rules::{decode, report, salvage_id, Intake, RulesHandle, Verdict};

/// The device id used for a client whose MQTT client id is not a valid id.
pub const UNNAMED_DEVICE: &str = "unnamed";

/// Decides every PUBLISH and feeds inputs to the rules.
pub struct IntakeHook {
    rules: RulesHandle,
    out: Outbound,
}

impl IntakeHook {
    /// A hook feeding `rules`, reporting errors through `out`.
    pub fn new(rules: RulesHandle, out: Outbound) -> IntakeHook {
        IntakeHook { rules, out }
    }

    async fn check(&self, client_id: &str, topic: &str, payload: &[u8]) -> PublishAclResult {
        let device = DeviceId::new(client_id).unwrap_or_else(|_| unnamed());
        let parsed = match topic.parse::<Topic>() {
            Ok(t) => t,
            Err(e) => {
                let r = Rejection::new(ErrorCode::UnknownTopic, e.to_string());
                match Topic::store_prefix(topic) {
                    Some(store) => report(&self.out, &store, &device, topic, salvage_id(payload), &r).await,
                    None => warn!(%device, topic, "publish outside the contract refused"),
                }
                return refuse(PublishAckReason::TopicNameInvalid, &r);
            }
        };
        let store = parsed.store().clone();
        match parsed.direction() {
            Direction::Output => {
                let r = Rejection::new(
                    ErrorCode::UnknownTopic,
                    format!("{topic} is published by the broker only"),
                );
                report(&self.out, &store, &device, topic, salvage_id(payload), &r).await;
                refuse(PublishAckReason::NotAuthorized, &r)
            }
            Direction::Device => {
                if payload == b"online" || payload == b"offline" {
                    PublishAclResult::allow()
                } else {
                    let r = Rejection::new(ErrorCode::MalformedPayload, "device status must be online or offline");
                    report(&self.out, &store, &device, topic, None, &r).await;
                    refuse(PublishAckReason::PayloadFormatInvalid, &r)
                }
            }
            Direction::Input => {
                let input = match decode(&parsed, payload) {
                    Ok(input) => input,
                    Err(r) => {
                        report(&self.out, &store, &device, topic, salvage_id(payload), &r).await;
                        return refuse(PublishAckReason::PayloadFormatInvalid, &r);
                    }
                };
                match self.rules.intake(Intake { input, device }).await {
                    Some(Verdict::Applied) => PublishAclResult::allow(),
                    Some(Verdict::Duplicate) => PublishAclResult(PublishResult::reason_code(
                        PublishAckReason::NoMatchingSubscribers,
                        Some("already applied".into()),
                        false,
                    )),
                    Some(Verdict::Rejected(r)) => refuse(PublishAckReason::PayloadFormatInvalid, &r),
                    None => refuse(
                        PublishAckReason::ImplementationSpecificError,
                        &Rejection::new(ErrorCode::Unavailable, "the rules are stopping; send again"),
                    ),
                }
            }
        }
    }
}

fn unnamed() -> DeviceId {
    DeviceId::new(UNNAMED_DEVICE).unwrap_or_else(|_| unreachable!("constant id is valid"))
}

fn refuse(code: PublishAckReason, r: &Rejection) -> PublishAclResult {
    PublishAclResult(PublishResult::reason_code(code, Some(r.message.clone().into()), false))
}

#[async_trait]
impl Handler for IntakeHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let result = self
                    .check(&session.id.client_id, &publish.topic, &publish.payload)
                    .await;
                (false, Some(HookResult::PublishAclResult(result)))
            }
            _ => (true, acc),
        }
    }
}

/// Counts and logs messages the broker could not deliver.
#[derive(Default, Clone)]
pub struct DropCounter {
    dropped: Arc<AtomicU64>,
}

impl DropCounter {
    /// Messages dropped on the way to a subscriber since start.
    pub fn count(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Handler for DropCounter {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessageDropped(Some(to), _from, publish, reason) = param {
            // Refused publishes also pass here (with no `to`); those are
            // reported on the errors topic, not counted as drops.
            if !matches!(reason, Reason::PublishResult(_)) {
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(to = %to.client_id, topic = %publish.topic, %reason, total, "message dropped before delivery");
            }
        }
        (true, acc)
    }
}
