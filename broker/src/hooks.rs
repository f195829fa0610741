//! The broker's hooks into rmqtt: where MQTT traffic meets permissions and
//! the rules.
//!
//! [`IntakeHook`] answers `MessagePublishCheckAcl`, which rmqtt runs inline in
//! the publisher's session *before* it acknowledges the PUBLISH. In order it
//! resolves the session's identity (fixed at login, see `auth`), holds the
//! publish back while the client is over its publish rate, checks the topic
//! against the contract and the permission matrix (`acl`), decodes input
//! payloads, hands them to the rules task and waits for the commit — so the
//! device's PUBACK/PUBCOMP follows the durable commit. (`MessagePublish`
//! fires before the permission check and cannot drop a message; it is not
//! used.)
//!
//! Outcomes, as the publisher sees them:
//! - applied: routed on to subscribers, PUBACK success;
//! - a re-sent id already applied: not routed again, PUBACK "no matching
//!   subscribers" (a success code in MQTT 5), id acknowledged again;
//! - refused (not permitted, invalid): not routed, not applied,
//!   an error on the sender's `errors` topic, and (MQTT 5) a failure reason
//!   code in the PUBACK.
//!
//! [`SubscribeHook`] answers `ClientSubscribeCheckAcl` with a SUBACK failure
//! for any filter the matrix does not allow. [`DropCounter`] watches
//! `MessageDropped` for messages the broker failed to deliver (full queues),
//! logs them and raises an alert on `hq/alerts`: a silent drop is the worst
//! failure a POS display can have.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dishsync_inventory::Rejection;
use dishsync_protocol::payload::{BrokerAlertOut, ErrorCode, Timestamp};
use dishsync_protocol::topic::Direction;
use dishsync_protocol::{DeviceId, StoreId, Topic};
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::session::Session;
use rmqtt::types::{PublishAclResult, PublishResult, Reason, SubscribeAclResult};
use tracing::warn;

use crate::acl::{Identity, Role, Scope};
use crate::auth::Identities;
use crate::metrics::METRICS;
use crate::namespaces::{self, Namespaces};
use crate::outbound::{publish_doc, Outbound};
use crate::rules::{report, Intake, RulesHandle, Verdict};
use dishsync_inventory::{salvage_id, Input};

pub use dishsync_protocol::ids::UNNAMED_DEVICE;

/// Who a session is: its logged-in identity, or a demo identity when the
/// broker allows anonymous clients. `None`: no rights at all.
#[derive(Clone)]
pub struct Sessions {
    identities: Identities,
    allow_anonymous: bool,
    /// The open namespaces outside the contract.
    namespaces: Arc<Namespaces>,
}

impl Sessions {
    /// Resolves identities from `identities`, with anonymous demo access if
    /// `allow_anonymous`; `namespaces` are carried as plain MQTT.
    pub fn new(identities: Identities, allow_anonymous: bool, namespaces: Arc<Namespaces>) -> Sessions {
        Sessions {
            identities,
            allow_anonymous,
            namespaces,
        }
    }

    fn identity(&self, session: &Session) -> Option<Identity> {
        let client_id: &str = &session.id.client_id;
        match session.id.username.as_deref() {
            Some(username) => self.identities.get(client_id, username),
            None if self.allow_anonymous => Some(anonymous(client_id)),
            None => None,
        }
    }
}

/// A token bucket per client: `rate` publishes per second, bursts of twice
/// that. An MQTT client over its rate is slowed down, not refused
/// ([`PublishLimiter::wait`]): its publish waits in its own session (which
/// reads nothing more from that client meanwhile) until a token is due.
/// Nothing it sends is lost or reordered, and no other client waits. An
/// HTTP caller cannot be held that way and is told when to come back
/// instead ([`PublishLimiter::try_take`], a 429 with `Retry-After`).
///
/// Behind a lock because every connection task consults it; the critical
/// section is a few arithmetic operations and never awaits.
pub(crate) struct PublishLimiter {
    rate: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// One client's tokens.
struct Bucket {
    refilled: Instant,
    /// Below zero while the client's publishes are held back.
    tokens: f64,
    /// When holding it back was last logged.
    warned: Option<Instant>,
}

/// A client held back is logged at most this often.
const HELD_BACK_WARNING_EVERY: Duration = Duration::from_secs(60);

impl PublishLimiter {
    /// `rate` publishes per second per client (at least one).
    pub(crate) fn new(rate: u32) -> PublishLimiter {
        PublishLimiter {
            rate: f64::from(rate.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `client_id`'s bucket, refilled for `now`, under the lock.
    fn refilled<T>(&self, client_id: &str, now: Instant, take: impl FnOnce(&mut Bucket, f64) -> T) -> Option<T> {
        let mut buckets = self.buckets.lock().ok()?;
        let burst = self.rate * 2.0;
        let bucket = buckets.entry(client_id.to_string()).or_insert(Bucket {
            refilled: now,
            tokens: burst,
            warned: None,
        });
        let earned = now.saturating_duration_since(bucket.refilled).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + earned).min(burst);
        bucket.refilled = now;
        Some(take(bucket, self.rate))
    }

    /// Takes a token for `client_id`'s publish at `now`: how long the
    /// publish must wait for it (zero within the rate), and whether to log
    /// that it is held back (at most every [`HELD_BACK_WARNING_EVERY`]).
    fn wait(&self, client_id: &str, now: Instant) -> (Duration, bool) {
        let taken = self.refilled(client_id, now, |bucket, rate| {
            bucket.tokens -= 1.0;
            if bucket.tokens >= 0.0 {
                return (Duration::ZERO, false);
            }
            let warn = bucket
                .warned
                .is_none_or(|at| now.saturating_duration_since(at) >= HELD_BACK_WARNING_EVERY);
            if warn {
                bucket.warned = Some(now);
            }
            (Duration::from_secs_f64(-bucket.tokens / rate), warn)
        });
        taken.unwrap_or((Duration::ZERO, false))
    }

    /// Takes a token for `client_id` at `now` if one is there; otherwise
    /// takes nothing and says how long until one is.
    pub(crate) fn try_take(&self, client_id: &str, now: Instant) -> Result<(), Duration> {
        let taken = self.refilled(client_id, now, |bucket, rate| {
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                Ok(())
            } else {
                Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
            }
        });
        taken.unwrap_or(Ok(()))
    }
}

/// Decides every PUBLISH and feeds inputs to the rules.
pub struct IntakeHook {
    rules: RulesHandle,
    out: Outbound,
    sessions: Sessions,
    limiter: PublishLimiter,
}

impl IntakeHook {
    /// A hook feeding `rules`, reporting errors through `out`, allowing each
    /// client `max_publish_rate` publishes per second.
    pub fn new(rules: RulesHandle, out: Outbound, sessions: Sessions, max_publish_rate: u32) -> IntakeHook {
        IntakeHook {
            rules,
            out,
            sessions,
            limiter: PublishLimiter::new(max_publish_rate),
        }
    }

    async fn check(&self, session: &Session, topic: &str, payload: &[u8]) -> PublishAclResult {
        let Some(identity) = self.sessions.identity(session) else {
            warn!(client_id = %session.id.client_id, topic, "publish from a session without identity refused");
            return refuse(
                PublishAckReason::NotAuthorized,
                &Rejection::new(ErrorCode::NotPermitted, "not logged in"),
            );
        };
        let device = identity.device.clone();
        let (wait, warn) = self.limiter.wait(&session.id.client_id, Instant::now());
        if warn {
            warn!(%device, rate = self.limiter.rate, "publishing faster than max_publish_rate: slowing it down");
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        // [MQTT-3.3.2-2]: a topic name with wildcards (or control
        // characters) is a protocol violation, which closes the connection
        // ([MQTT-4.8.0-1]); it is refused first, so nothing is routed.
        if !namespaces::valid_topic_name(topic) {
            let rejection = Rejection::new(
                ErrorCode::UnknownTopic,
                format!("{topic:?} is not a topic name (wildcards or control characters): closing the connection"),
            );
            warn!(%device, topic, "protocol violation: closing the connection");
            let entry = session.scx.extends.shared().await.entry(session.id.clone());
            if let Some(tx) = entry.tx() {
                let reason = Reason::ProtocolError("topic name with wildcards or control characters".into());
                let _ = tx.unbounded_send(rmqtt::types::Message::Closed(reason));
            }
            METRICS.refused("mqtt", rejection.code);
            return refuse(PublishAckReason::TopicNameInvalid, &rejection);
        }
        match admit(&self.sessions.namespaces, &identity, topic, payload) {
            Err(Refusal { code, rejection, store }) => {
                METRICS.refused("mqtt", rejection.code);
                match (store, &identity.scope) {
                    (Some(store), _) => {
                        report(&self.out, Some(&store), &device, topic, salvage_id(payload), &rejection).await
                    }
                    // A chain-wide device's input that names no store.
                    (None, Scope::Chain) => {
                        report(&self.out, None, &device, topic, salvage_id(payload), &rejection).await
                    }
                    (None, Scope::Store(_)) => warn!(%device, topic, reason = %rejection.message, "publish refused"),
                }
                refuse(code, &rejection)
            }
            Ok(Admitted::Presence) => PublishAclResult::allow(),
            Ok(Admitted::Input(input)) => match self.rules.intake(Intake { input, device }).await.inspect(|v| {
                METRICS.input("mqtt", v);
            }) {
                Some(Verdict::Applied | Verdict::Unchanged) => PublishAclResult::allow(),
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
            },
        }
    }
}

/// Decides a publish that has an identity: refused (with the MQTT reason,
/// the rejection and the store whose errors topic hears of it), passed
/// through (presence, a reading, a namespace message), or an input for the
/// rules.
pub(crate) fn admit(
    namespaces: &Namespaces,
    identity: &Identity,
    topic: &str,
    payload: &[u8],
) -> Result<Admitted, Refusal> {
    // Errors go to the device's own store when the topic names another
    // (it cannot read the other store's errors topic).
    let own_store = match &identity.scope {
        Scope::Store(s) => Some(s.clone()),
        Scope::Chain => None,
    };
    // A topic of an open namespace is plain MQTT: permission only.
    match namespaces.may_publish(identity, topic) {
        namespaces::Verdict::Allowed => return Ok(Admitted::Presence),
        namespaces::Verdict::Denied(denied) => {
            let code = if namespaces::valid_topic_name(topic) {
                PublishAckReason::NotAuthorized
            } else {
                PublishAckReason::TopicNameInvalid
            };
            return Err(Refusal {
                code,
                rejection: Rejection::new(ErrorCode::NotPermitted, denied.0),
                store: own_store,
            });
        }
        namespaces::Verdict::NotOurs => {}
    }
    let parsed = topic.parse::<Topic>().map_err(|e| Refusal {
        code: PublishAckReason::TopicNameInvalid,
        rejection: Rejection::new(ErrorCode::UnknownTopic, e.to_string()),
        store: own_store.clone().or_else(|| Topic::store_prefix(topic)),
    })?;
    let store = own_store.or_else(|| parsed.store().cloned());
    let refusal = |code, error, message: String| Refusal {
        code,
        rejection: Rejection::new(error, message),
        store: store.clone(),
    };
    if parsed.direction() == Direction::Output {
        let message = format!("{topic} is published by the broker only");
        return Err(refusal(
            PublishAckReason::NotAuthorized,
            ErrorCode::UnknownTopic,
            message,
        ));
    }
    identity
        .may_publish(&parsed)
        .map_err(|denied| refusal(PublishAckReason::NotAuthorized, ErrorCode::NotPermitted, denied.0))?;
    match parsed {
        Topic::DeviceStatus { .. } if payload == b"online" || payload == b"offline" => Ok(Admitted::Presence),
        Topic::DeviceStatus { .. } => Err(refusal(
            PublishAckReason::PayloadFormatInvalid,
            ErrorCode::MalformedPayload,
            "device status must be online or offline".into(),
        )),
        _ => match Input::decode(&parsed, payload) {
            // A moving scale reading is only routed; a settled one may
            // set a bound SKU's level: the rules decide.
            Ok(input) if input.is_moving_reading() => Ok(Admitted::Presence),
            // An input names the device that sends it (acks and errors
            // go to the publisher's topics); a bridge speaks for many.
            Ok(input) => match input.claimed_device() {
                Some(claimed) if *claimed != identity.device && identity.role != Role::Bridge => {
                    let message = format!(
                        "the input names device {claimed}, but {} published it: an input's device is the \
                         device that sends it",
                        identity.device
                    );
                    Err(refusal(
                        PublishAckReason::PayloadFormatInvalid,
                        ErrorCode::DeviceMismatch,
                        message,
                    ))
                }
                _ => Ok(Admitted::Input(input)),
            },
            Err(rejection) => Err(Refusal {
                code: PublishAckReason::PayloadFormatInvalid,
                rejection,
                store: store.clone(),
            }),
        },
    }
}

/// What a permitted publish is.
pub(crate) enum Admitted {
    /// A device's presence or reading: routed as it is.
    Presence,
    /// An input for the rules.
    Input(Input),
}

/// Why a publish is refused, and where to say so.
pub(crate) struct Refusal {
    code: PublishAckReason,
    pub(crate) rejection: Rejection,
    store: Option<StoreId>,
}

/// The demo identity of an anonymous client: its client id as device id,
/// or [`UNNAMED_DEVICE`] when that is not a valid id.
pub(crate) fn anonymous(client_id: &str) -> Identity {
    Identity::demo(DeviceId::new(client_id).unwrap_or_else(|_| DeviceId::unnamed()))
}

fn refuse(code: PublishAckReason, r: &Rejection) -> PublishAclResult {
    PublishAclResult(PublishResult::reason_code(code, Some(r.message.clone().into()), false))
}

#[async_trait]
impl Handler for IntakeHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let result = self.check(session, &publish.topic, &publish.payload).await;
                (false, Some(HookResult::PublishAclResult(result)))
            }
            _ => (true, acc),
        }
    }
}

/// Decides every SUBSCRIBE against the permission matrix.
pub struct SubscribeHook {
    sessions: Sessions,
}

impl SubscribeHook {
    /// A hook resolving identities through `sessions`.
    pub fn new(sessions: Sessions) -> SubscribeHook {
        SubscribeHook { sessions }
    }
}

/// May `identity` subscribe to `filter`: wholly in a namespace, the
/// namespace decides; otherwise the contract's matrix, and every namespace
/// a wildcard first level reaches.
fn may_subscribe(identity: &Identity, namespaces: &Namespaces, filter: &str) -> Result<(), String> {
    match namespaces.may_subscribe(identity, filter) {
        (namespaces::Verdict::Denied(d), _) => Err(d.0),
        (namespaces::Verdict::Allowed, _) if namespaces.owns(filter) => Ok(()),
        // Only namespace topics match: the contract has nothing to say.
        (_, true) if !crate::acl::reaches_contract(filter) => Ok(()),
        _ => identity.may_subscribe(filter).map_err(|d| d.0),
    }
}

/// The filter a shared subscription (`$share/{group}/{filter}`) stands for.
fn unshared(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    }
}

#[async_trait]
impl Handler for SubscribeHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::ClientSubscribeCheckAcl(session, subscribe) = param else {
            return (true, acc);
        };
        let filter: &str = &subscribe.topic_filter;
        let verdict = match self.sessions.identity(session) {
            Some(identity) => may_subscribe(&identity, &self.sessions.namespaces, unshared(filter)),
            None => Err("not logged in".to_string()),
        };
        let result = match verdict {
            Ok(()) => SubscribeAclResult::new_success(subscribe.opts.qos(), None),
            Err(reason) => {
                warn!(client_id = %session.id.client_id, filter, reason, "subscription refused");
                SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
            }
        };
        (false, Some(HookResult::SubscribeAclResult(result)))
    }
}

/// Tells the rules when a device connects or disconnects, so that the stock
/// levels it feeds are marked stale while it is away.
pub struct PresenceHook {
    rules: RulesHandle,
    sessions: Sessions,
}

impl PresenceHook {
    /// A hook reporting presence to `rules`.
    pub fn new(rules: RulesHandle, sessions: Sessions) -> PresenceHook {
        PresenceHook { rules, sessions }
    }
}

#[async_trait]
impl Handler for PresenceHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let (session, online) = match param {
            Parameter::ClientConnected(session) => (*session, true),
            Parameter::ClientDisconnected(session, _) => (*session, false),
            _ => return (true, acc),
        };
        if let Some(identity) = self.sessions.identity(session) {
            METRICS.connection(identity.role.as_str(), online);
            self.rules.presence(identity.device, online).await;
        }
        (true, acc)
    }
}

/// Counts and logs messages the broker could not deliver, raises an alert
/// on `hq/alerts` (at most one per [`DropCounter::ALERT_EVERY`]), and
/// records a dropped document as owed to its subscriber (`owed`).
#[derive(Clone)]
pub struct DropCounter {
    dropped: Arc<AtomicU64>,
    last_alert: Arc<Mutex<Option<Instant>>>,
    out: Outbound,
    owed: Arc<crate::owed::Owed>,
    drain: Arc<crate::drain::Drain>,
}

impl DropCounter {
    /// Shortest time between two drop alerts.
    pub const ALERT_EVERY: Duration = Duration::from_secs(10);

    /// A counter that alerts through `out` and records drops in its
    /// documents owed and its drain.
    pub fn new(out: Outbound) -> DropCounter {
        DropCounter {
            dropped: Arc::default(),
            last_alert: Arc::default(),
            owed: out.owed(),
            drain: out.drain(),
            out,
        }
    }

    /// Messages dropped on the way to a subscriber since start.
    pub fn count(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn alert_due(&self) -> bool {
        let Ok(mut last) = self.last_alert.lock() else {
            return false;
        };
        if last.is_some_and(|t| t.elapsed() < Self::ALERT_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

#[async_trait]
impl Handler for DropCounter {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessageDropped(Some(to), from, publish, reason) = param {
            // Refused publishes also pass here (with no `to`); those are
            // reported on the errors topic, not counted as drops.
            if !matches!(reason, Reason::PublishResult(_)) {
                if &*from.id.client_id == crate::outbound::RULES_CLIENT_ID {
                    self.drain.done(&publish.topic, publish.create_time);
                }
                self.owed.dropped(to, from, &publish.topic);
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                METRICS.dropped();
                warn!(to = %to.client_id, topic = %publish.topic, %reason, total, "message dropped before delivery");
                if self.alert_due() {
                    let now = Timestamp::now();
                    let alert = BrokerAlertOut {
                        id: format!("dropped-{}", now.0),
                        kind: "messages_dropped".into(),
                        message: format!(
                            "{total} message(s) could not be delivered (last to {}: {reason})",
                            to.client_id
                        ),
                        count: total,
                        at: now,
                    };
                    publish_doc(&self.out, &Topic::BrokerAlerts, &alert, false).await;
                }
            }
        }
        (true, acc)
    }
}

/// Counts each of the rules' deliveries a session writes to its client as
/// done in the drain (`drain`): the delivery completions that pace a
/// topic's next document.
pub struct DeliveredHook {
    drain: Arc<crate::drain::Drain>,
}

impl DeliveredHook {
    /// The hook of `out`'s drain.
    pub fn new(out: &Outbound) -> DeliveredHook {
        DeliveredHook { drain: out.drain() }
    }
}

#[async_trait]
impl Handler for DeliveredHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessageDelivered(_, from, publish) = param {
            if &*from.id.client_id == crate::outbound::RULES_CLIENT_ID {
                self.drain.done(&publish.topic, publish.create_time);
            }
        }
        (true, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn a_client_over_its_rate_waits_for_its_tokens_and_no_one_else_does() {
        let limiter = PublishLimiter::new(10);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(
                limiter.wait("scale-1", t0),
                (Duration::ZERO, false),
                "a burst of twice the rate"
            );
        }
        let (first, warn) = limiter.wait("scale-1", t0);
        assert!((secs(first) - 0.1).abs() < 1e-9 && warn, "{first:?}");
        let (second, warn) = limiter.wait("scale-1", t0);
        assert!((secs(second) - 0.2).abs() < 1e-9 && !warn, "{second:?}: logged once");
        assert_eq!(limiter.wait("pos-1", t0), (Duration::ZERO, false), "another client");
        // A second later it has earned ten tokens and owes two.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(limiter.wait("scale-1", later), (Duration::ZERO, false));
        // Held back again within the minute: not logged again; after it, logged.
        for _ in 0..8 {
            limiter.wait("scale-1", later);
        }
        assert!(!limiter.wait("scale-1", later).1);
        let minute = t0 + HELD_BACK_WARNING_EVERY;
        assert!(limiter.wait("scale-1", minute).0.is_zero());
        let (_, warn) = (0..2_000)
            .map(|_| limiter.wait("scale-1", minute))
            .find(|(w, _)| !w.is_zero())
            .expect("held back");
        assert!(warn);
    }

    #[test]
    fn an_http_caller_over_its_rate_is_told_when_to_come_back_and_pays_nothing_for_it() {
        let limiter = PublishLimiter::new(4);
        let t0 = Instant::now();
        for _ in 0..8 {
            assert_eq!(limiter.try_take("pos-cloud", t0), Ok(()), "a burst of twice the rate");
        }
        let refused = limiter.try_take("pos-cloud", t0).expect_err("over the rate");
        assert!((secs(refused) - 0.25).abs() < 1e-9, "{refused:?}");
        // Refusals take nothing: a quarter second later one token is there.
        for _ in 0..5 {
            assert!(limiter.try_take("pos-cloud", t0).is_err());
        }
        let later = t0 + Duration::from_millis(250);
        assert_eq!(limiter.try_take("pos-cloud", later), Ok(()));
        assert!(limiter.try_take("pos-cloud", later).is_err());
        assert_eq!(limiter.try_take("erp", t0), Ok(()), "another caller");
    }
}
