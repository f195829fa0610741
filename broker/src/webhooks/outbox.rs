//! The outbox, pure: which of a group's messages become deliveries to which
//! endpoint ([`route`]), and one endpoint's [`Queue`] — per document, in
//! order; a state document's pending delivery replaced by a newer one, an
//! event never; retries with exponential backoff and jitter until the
//! endpoint's retry period is over, then a dead letter. No I/O, no clock:
//! the sender passes `now` and the jitter in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use dishsync_inventory::Catalog;
use dishsync_protocol::payload::Timestamp;
use dishsync_protocol::{Millis, StoreId, Topic};
use serde::{Deserialize, Serialize};

use crate::outbound::Message;

/// What an endpoint can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A dish's availability (`stores/{store}/dishes/{dish}/availability`),
    /// with the dish's ids on delivery channels.
    Availability,
    /// A SKU's level (`stores/{store}/stock/{sku}/level`).
    Level,
    /// A replenishment request (`stores/{store}/replenishment/{id}`).
    Replenishment,
    /// A transfer between two stores (`stores/{store}/transfers/{id}`).
    Transfer,
    /// An alert raised or cleared (`stores/{store}/alerts`).
    Alert,
    /// A store's readiness for a promotion
    /// (`stores/{store}/promotions/{promotion}`).
    Promotion,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Availability,
        Kind::Level,
        Kind::Replenishment,
        Kind::Transfer,
        Kind::Alert,
        Kind::Promotion,
    ];

    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Availability => "availability",
            Kind::Level => "level",
            Kind::Replenishment => "replenishment",
            Kind::Transfer => "transfer",
            Kind::Alert => "alert",
            Kind::Promotion => "promotion",
        }
    }

    /// The kind a configuration names.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether a newer delivery of the same document makes a pending one
    /// pointless: true of the state documents, false of events.
    pub fn is_state(self) -> bool {
        self != Kind::Alert
    }
}

/// Which stores an endpoint hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every store of the chain.
    Chain,
    /// These stores.
    Stores(BTreeSet<StoreId>),
}

impl Scope {
    fn covers(&self, stores: &[&StoreId]) -> bool {
        match self {
            Scope::Chain => true,
            Scope::Stores(own) => stores.iter().any(|s| own.contains(*s)),
        }
    }
}

/// What routing needs to know of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The kinds it asked for.
    pub kinds: BTreeSet<Kind>,
    /// The stores it hears about.
    pub scope: Scope,
}

/// One delivery, as queued in the commit of its cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// What it is about.
    pub kind: Kind,
    /// The document it is a version of (its topic, or `transfers/{id}`):
    /// deliveries of one document go in order.
    pub doc: String,
    /// The document's `rev`, if it has one.
    pub rev: Option<u64>,
    /// When it was queued.
    pub created: Millis,
    /// The JSON body, exactly as signed and sent.
    pub body: Vec<u8>,
}

impl Delivery {
    /// The `webhook-id` of delivery number `seq`: the same on every retry.
    pub fn id(seq: u64) -> String {
        format!("msg_{seq}")
    }
}

/// The envelope every delivery's body is (Standard Webhooks' shape).
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    event: &'a str,
    timestamp: Timestamp,
    data: serde_json::Value,
}

/// The deliveries `messages` (one group's, as rendered) make for
/// `endpoints`: each with the index of its endpoint. A transfer, published
/// under both its stores, is one delivery; the clearing of a retired
/// document is none.
pub fn route(
    endpoints: &[Subscription],
    catalog: &Catalog,
    messages: &[Message],
    now: Millis,
) -> Vec<(usize, Delivery)> {
    let mut out = Vec::new();
    if endpoints.is_empty() {
        return out;
    }
    // A transfer's copies, by id: its stores and one payload.
    let mut transfers: BTreeMap<String, (Vec<&StoreId>, &[u8])> = BTreeMap::new();
    let mut documents = Vec::new();
    for m in messages.iter().filter(|m| !m.payload.is_empty()) {
        match &m.topic {
            Topic::DishAvailability { store, .. } => documents.push((Kind::Availability, vec![store], m)),
            Topic::StockLevel { store, .. } => documents.push((Kind::Level, vec![store], m)),
            Topic::StoreRequest { store, .. } => documents.push((Kind::Replenishment, vec![store], m)),
            Topic::Alerts { store } => documents.push((Kind::Alert, vec![store], m)),
            Topic::StorePromotion { store, .. } => documents.push((Kind::Promotion, vec![store], m)),
            Topic::Transfer { store, id } => {
                let copy = transfers.entry(id.to_string()).or_insert((Vec::new(), &m.payload));
                copy.0.push(store);
            }
            _ => {}
        }
    }
    let mut make = |kind: Kind, doc: String, stores: &[&StoreId], payload: &[u8]| {
        let wanted: Vec<usize> = (0..endpoints.len())
            .filter(|&i| endpoints[i].kinds.contains(&kind) && endpoints[i].scope.covers(stores))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let Some((body, rev)) = envelope(kind, stores, payload, catalog, now) else {
            return;
        };
        for i in wanted {
            out.push((
                i,
                Delivery {
                    kind,
                    doc: doc.clone(),
                    rev,
                    created: now,
                    body: body.clone(),
                },
            ));
        }
    };
    for (kind, stores, m) in documents {
        make(kind, m.topic.to_string(), &stores, &m.payload);
    }
    for (id, (stores, payload)) in transfers {
        make(Kind::Transfer, format!("transfers/{id}"), &stores, payload);
    }
    out
}

/// The body of a delivery of `payload` and the document's `rev`; `None`
/// if the payload is not a JSON object (never, for what the rules render).
fn envelope(
    kind: Kind,
    stores: &[&StoreId],
    payload: &[u8],
    catalog: &Catalog,
    now: Millis,
) -> Option<(Vec<u8>, Option<u64>)> {
    let mut data: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload).ok()?;
    let rev = data.get("rev").and_then(serde_json::Value::as_u64);
    let event = match kind {
        Kind::Availability => {
            let external = data
                .get("dish")
                .and_then(|d| d.as_str())
                .and_then(|d| d.parse().ok())
                .and_then(|d| catalog.dish(&d))
                .map(|d| d.external.clone())
                .unwrap_or_default();
            data.insert("external".into(), serde_json::to_value(external).ok()?);
            "availability.updated"
        }
        Kind::Level => "level.updated",
        Kind::Replenishment => "replenishment.updated",
        Kind::Transfer => "transfer.updated",
        Kind::Promotion => "promotion.updated",
        Kind::Alert => {
            // An alert's payload names no store: its topic does.
            if let Some(store) = stores.first() {
                data.entry("store").or_insert_with(|| store.as_str().into());
            }
            match data.get("state").and_then(|s| s.as_str()) {
                Some("cleared") => "alert.cleared",
                _ => "alert.raised",
            }
        }
    };
    let body = serde_json::to_vec(&Envelope {
        event,
        timestamp: Timestamp(now),
        data: serde_json::Value::Object(data),
    })
    .ok()?;
    Some((body, rev))
}

/// The longest wait between two attempts of one delivery.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// The wait before attempt `failures + 1` of a delivery that failed
/// `failures` times (≥ 1): `first` doubling with each failure up to
/// [`MAX_RETRY_DELAY`], times a jitter factor between ½ and 1 (from
/// `jitter` in [0, 1)), so that the deliveries of a recovering endpoint do
/// not all come back at once.
pub fn retry_delay(first: Duration, failures: u32, jitter: f64) -> Duration {
    let doubled = first.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(MAX_RETRY_DELAY).mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// A delivery given up: its endpoint did not take it within its retry
/// period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The delivery.
    pub delivery: Delivery,
    /// Attempts made.
    pub attempts: u32,
    /// What the last attempt got.
    pub last_error: String,
    /// When it was given up.
    pub dead_at: Millis,
}

impl crate::store::retention::Stamped for DeadLetter {
    fn stamp(&self) -> Millis {
        self.dead_at
    }
}

/// A delivery taken for sending: its number and what to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Its number (its `webhook-id` is [`Delivery::id`] of it).
    pub seq: u64,
    /// The delivery.
    pub delivery: Delivery,
}

/// What became of an attempt ([`Queue::finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The endpoint took it.
    Delivered,
    /// It failed and is tried again at this time.
    Retry(Millis),
    /// It failed and its retry period is over: given up.
    Dead(Box<DeadLetter>),
}

/// The deliveries of one document, in order.
#[derive(Debug, Default)]
struct Document {
    pending: VecDeque<(u64, Delivery)>,
    /// The first is being sent.
    sending: bool,
    /// Failed attempts of the first.
    failures: u32,
    /// When the first may be sent.
    due: Millis,
}

/// One endpoint's pending deliveries: per document, in order, one at a
/// time; documents independent of each other.
#[derive(Debug)]
pub struct Queue {
    documents: HashMap<String, Document>,
    /// Documents whose first delivery waits to be sent, by when it may be.
    schedule: BTreeSet<(Millis, u64, String)>,
    /// The numbers of every pending delivery.
    numbers: BTreeSet<u64>,
    /// The next number the queue expects, to tell where done ends.
    next: u64,
    first_retry: Duration,
    retry_for: Duration,
    /// Deliveries replaced by a newer version of their document.
    pub superseded: u64,
}

impl Queue {
    /// An empty queue whose deliveries are retried from `first_retry` on,
    /// for `retry_for` after they were queued.
    pub fn new(first_retry: Duration, retry_for: Duration) -> Queue {
        Queue {
            documents: HashMap::new(),
            schedule: BTreeSet::new(),
            numbers: BTreeSet::new(),
            next: 0,
            first_retry,
            retry_for,
            superseded: 0,
        }
    }

    /// Deliveries waiting or being sent.
    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    /// Every delivery numbered below this one is done (delivered, replaced
    /// by a newer one, or given up): where a restart resumes.
    pub fn done_below(&self) -> u64 {
        self.numbers.first().copied().unwrap_or(self.next)
    }

    /// Adds delivery `seq` (numbers only grow) at `now`. A pending
    /// delivery of the same state document that is not being sent is
    /// dropped for it; the document keeps its place in time, so a retrying
    /// endpoint is not tried sooner.
    pub fn push(&mut self, seq: u64, delivery: Delivery, now: Millis) {
        self.next = self.next.max(seq + 1);
        let key = delivery.doc.clone();
        let doc = self.documents.entry(key.clone()).or_default();
        if delivery.kind.is_state() {
            let keep = usize::from(doc.sending);
            while doc.pending.len() > keep {
                let Some((old, _)) = doc.pending.pop_back() else { break };
                self.numbers.remove(&old);
                self.superseded += 1;
                if doc.pending.len() == keep {
                    // It was the first, waiting: its place in the schedule
                    // goes to the newer one.
                    self.schedule.remove(&(doc.due, old, key.clone()));
                }
            }
        }
        self.numbers.insert(seq);
        doc.pending.push_back((seq, delivery));
        if doc.pending.len() == 1 {
            if doc.failures == 0 {
                doc.due = now;
            }
            self.schedule.insert((doc.due, seq, key));
        }
    }

    /// The next delivery due at `now`, marked as being sent.
    pub fn take(&mut self, now: Millis) -> Option<Taken> {
        let first = self.schedule.first()?.clone();
        if first.0 > now {
            return None;
        }
        self.schedule.remove(&first);
        let doc = self.documents.get_mut(&first.2)?;
        doc.sending = true;
        let (seq, delivery) = doc.pending.front()?.clone();
        Some(Taken { seq, delivery })
    }

    /// When the next delivery is due, if one waits.
    pub fn next_due(&self) -> Option<Millis> {
        self.schedule.first().map(|(due, _, _)| *due)
    }

    /// The attempt of `taken` ended at `now`: `Ok` if the endpoint took
    /// it, or what went wrong; `jitter` in [0, 1) spreads the retry.
    pub fn finish(&mut self, taken: &Taken, result: Result<(), String>, now: Millis, jitter: f64) -> Finished {
        let key = &taken.delivery.doc;
        let Some(doc) = self.documents.get_mut(key) else {
            return Finished::Delivered;
        };
        doc.sending = false;
        let finished = match result {
            Ok(()) => {
                doc.failures = 0;
                doc.due = now;
                doc.pending.pop_front();
                Finished::Delivered
            }
            Err(error) => {
                doc.failures += 1;
                let age = Duration::from_millis(u64::try_from(now - taken.delivery.created).unwrap_or(0));
                if age >= self.retry_for {
                    let letter = DeadLetter {
                        delivery: taken.delivery.clone(),
                        attempts: doc.failures,
                        last_error: error,
                        dead_at: now,
                    };
                    doc.failures = 0;
                    doc.due = now;
                    doc.pending.pop_front();
                    Finished::Dead(Box::new(letter))
                } else {
                    let wait = retry_delay(self.first_retry, doc.failures, jitter);
                    doc.due = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                    Finished::Retry(doc.due)
                }
            }
        };
        if !matches!(finished, Finished::Retry(_)) {
            self.numbers.remove(&taken.seq);
        }
        match doc.pending.front() {
            Some((seq, _)) => {
                self.schedule.insert((doc.due, *seq, key.clone()));
            }
            None => {
                self.documents.remove(key);
            }
        }
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(kind: Kind, doc: &str, rev: u64, created: Millis) -> Delivery {
        Delivery {
            kind,
            doc: doc.into(),
            rev: Some(rev),
            created,
            body: format!("{{\"rev\":{rev}}}").into_bytes(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_document_goes_in_order_one_at_a_time_and_documents_do_not_wait_for_each_other() {
        let mut q = Queue::new(Duration::from_secs(1), HOUR);
        q.push(0, delivery(Kind::Alert, "a", 1, 0), 0);
        q.push(1, delivery(Kind::Alert, "a", 2, 0), 0);
        q.push(2, delivery(Kind::Alert, "b", 1, 0), 0);
        let first = q.take(0).expect("a's first");
        assert_eq!(first.seq, 0);
        let other = q.take(0).expect("b, while a's first is out");
        assert_eq!(other.seq, 2);
        assert!(q.take(0).is_none(), "a's second waits for its first");
        assert_eq!(q.finish(&first, Ok(()), 5, 0.0), Finished::Delivered);
        assert_eq!(q.take(5).expect("a's second").seq, 1);
        assert_eq!(q.done_below(), 1);
    }

    #[test]
    fn a_newer_state_replaces_a_waiting_one_but_never_the_one_being_sent_nor_an_event() {
        let mut q = Queue::new(Duration::from_secs(1), HOUR);
        q.push(0, delivery(Kind::Availability, "d", 1, 0), 0);
        let out = q.take(0).expect("rev 1");
        q.push(1, delivery(Kind::Availability, "d", 2, 0), 0);
        q.push(2, delivery(Kind::Availability, "d", 3, 0), 0);
        assert_eq!(q.len(), 2, "rev 1 out, rev 3 waiting; rev 2 replaced");
        assert_eq!(q.superseded, 1);
        q.finish(&out, Ok(()), 1, 0.0);
        let next = q.take(1).expect("rev 3");
        assert_eq!(next.delivery.rev, Some(3));
        q.finish(&next, Ok(()), 2, 0.0);
        assert!(q.is_empty());
        assert_eq!(q.done_below(), 3);

        let mut events = Queue::new(Duration::from_secs(1), HOUR);
        for n in 0..3 {
            events.push(n, delivery(Kind::Alert, "alerts", n, 0), 0);
        }
        assert_eq!(events.len(), 3, "every event is kept");
    }

    #[test]
    fn a_failure_backs_off_with_jitter_and_a_newer_state_keeps_the_wait() {
        let mut q = Queue::new(Duration::from_secs(1), HOUR);
        q.push(0, delivery(Kind::Level, "l", 1, 0), 0);
        let out = q.take(0).expect("first attempt");
        assert_eq!(q.finish(&out, Err("503".into()), 0, 0.0), Finished::Retry(500));
        assert!(q.take(499).is_none());
        q.push(1, delivery(Kind::Level, "l", 2, 100), 100);
        assert_eq!(q.next_due(), Some(500), "the newer one waits as long");
        let out = q.take(500).expect("second attempt, of rev 2");
        assert_eq!(out.delivery.rev, Some(2));
        assert_eq!(q.finish(&out, Err("503".into()), 500, 0.999_999), Finished::Retry(2499));
        assert_eq!(q.done_below(), 1);
    }

    #[test]
    fn the_wait_doubles_up_to_an_hour_and_jitter_takes_at_most_half() {
        let first = Duration::from_secs(1);
        assert_eq!(retry_delay(first, 1, 0.999_999_999).as_secs(), 0);
        assert_eq!(retry_delay(first, 1, 1.0), first);
        assert_eq!(retry_delay(first, 3, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(first, 3, 0.0), Duration::from_secs(2));
        assert_eq!(retry_delay(first, 40, 1.0), MAX_RETRY_DELAY);
        // Over a day, with the longest waits, about thirty attempts.
        let mut at = Duration::ZERO;
        let mut attempts = 1;
        while at < Duration::from_secs(86_400) {
            at += retry_delay(first, attempts, 1.0);
            attempts += 1;
        }
        assert!((25..40).contains(&attempts), "{attempts} attempts in a day");
    }

    #[test]
    fn past_its_retry_period_a_delivery_is_a_dead_letter_and_the_next_goes() {
        let mut q = Queue::new(Duration::from_secs(1), Duration::from_secs(10));
        q.push(0, delivery(Kind::Alert, "a", 1, 0), 0);
        q.push(1, delivery(Kind::Alert, "a", 2, 5_000), 5_000);
        let out = q.take(0).expect("first");
        assert!(matches!(
            q.finish(&out, Err("refused".into()), 0, 0.0),
            Finished::Retry(_)
        ));
        let out = q.take(10_000).expect("again");
        match q.finish(&out, Err("refused".into()), 10_000, 0.0) {
            Finished::Dead(letter) => {
                assert_eq!(letter.attempts, 2);
                assert_eq!(letter.last_error, "refused");
                assert_eq!(letter.delivery.rev, Some(1));
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        assert_eq!(q.take(10_000).expect("the next one").seq, 1);
        assert_eq!(q.done_below(), 1);
    }

    #[test]
    fn a_group_routes_by_kind_and_store_and_a_transfer_once() {
        use dishsync_protocol::payload::AlertState;
        let catalog = Catalog::new(Vec::new(), Vec::new(), Vec::new()).expect("empty catalog");
        let s = |name: &str| -> StoreId { name.parse().expect("id") };
        let msg = |topic: &str, body: &str| Message::new(topic.parse().expect("topic"), body.as_bytes().to_vec(), true);
        let messages = vec![
            msg("stores/a/stock/beef/level", r#"{"store":"a","sku":"beef","rev":4}"#),
            msg("stores/b/stock/beef/level", r#"{"store":"b","sku":"beef","rev":9}"#),
            msg(
                "stores/a/transfers/tr-1",
                r#"{"id":"tr-1","from":"a","to":"b","rev":2}"#,
            ),
            msg(
                "stores/b/transfers/tr-1",
                r#"{"id":"tr-1","from":"a","to":"b","rev":2}"#,
            ),
            msg(
                "stores/a/alerts",
                r#"{"id":"al-1","kind":"low_stock","state":"cleared"}"#,
            ),
            msg("stores/a/replenishment/rq-1", ""),
            msg(
                "stores/b/promotions/p1",
                r#"{"promotion":"p1","store":"b","status":"short","rev":3}"#,
            ),
        ];
        let endpoints = [
            Subscription {
                kinds: [Kind::Level, Kind::Transfer, Kind::Promotion].into(),
                scope: Scope::Stores([s("b")].into()),
            },
            Subscription {
                kinds: [Kind::Alert].into(),
                scope: Scope::Chain,
            },
        ];
        let routed = route(&endpoints, &catalog, &messages, 1_000);
        let got: Vec<(usize, &str, Option<u64>)> = routed.iter().map(|(i, d)| (*i, d.doc.as_str(), d.rev)).collect();
        assert_eq!(
            got,
            [
                (0, "stores/b/stock/beef/level", Some(9)),
                (1, "stores/a/alerts", None),
                (0, "stores/b/promotions/p1", Some(3)),
                (0, "transfers/tr-1", Some(2)),
            ]
        );
        let alert: serde_json::Value = serde_json::from_slice(&routed[1].1.body).expect("json");
        assert_eq!(alert["type"], "alert.cleared");
        assert_eq!(alert["data"]["store"], "a");
        assert_eq!(
            alert["data"]["state"],
            serde_json::to_value(AlertState::Cleared).expect("state")
        );
        assert_eq!(alert["timestamp"], "1970-01-01T00:00:01.000Z");
        let promotion: serde_json::Value = serde_json::from_slice(&routed[2].1.body).expect("json");
        assert_eq!(promotion["type"], "promotion.updated");
    }
}
