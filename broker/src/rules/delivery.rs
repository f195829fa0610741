//! Delivery: the rendered messages of committed groups go to the current
//! subscribers, one at a time, the newest document of each topic first
//! ([`DeliveryQueue`], pure: fed the time; [`Deliverer`], its task).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use dishsync_protocol::Topic;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::outbound::{Message, Publisher};

/// Messages waiting for delivery to current subscribers, at most this many
/// (beyond it the committer, and so the devices, wait).
const DELIVERY_QUEUE: usize = 50_000;

/// Each subscriber a retained document is handed to buys its topic this
/// much time before the topic's next document goes out: a topic 200 POS
/// watch is delivered at most every 5 ms, one 20 POS watch every 0.5 ms. A
/// document that comes sooner waits, and a newer one replaces it while it
/// waits. So under an update storm a topic causes at most 40,000 deliveries
/// a second however many POS subscribe, and a small audience is not held
/// back for a large one's sake.
const TURN_PER_SUBSCRIBER: Duration = Duration::from_micros(25);

/// Half of the timer's resolution (see [`Deliverer::run`]).
const TIMER_SLACK: Duration = Duration::from_micros(500);

/// The longest a topic's next document waits for the last one's
/// deliveries to be written (a subscriber that stops reading must not hold
/// a topic back for everyone).
pub(super) const MAX_HOLD: Duration = Duration::from_millis(250);

/// After a delivery its subscribers were slow to write, the topic rests
/// this many times as long as they took: under load a topic's deliveries
/// take at most a quarter of its subscribers' time, and the rest is left
/// to the inputs.
const DRAIN_REST: u32 = 3;

/// How often a document waiting on its topic's deliveries looks again.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// How many of a delivery's subscribers may still be writing it when the
/// topic's next document goes: an eighth (stragglers wait for no one).
fn stragglers(subscribers: usize) -> usize {
    subscribers / 8
}

/// A retained topic's last delivery: when its turn ends, to how many.
#[derive(Debug, Clone, Copy)]
struct Turn {
    sent: Instant,
    ends: Instant,
    subscribers: usize,
    /// When all but the stragglers had written it, if a document waited
    /// for that.
    drained: Option<Instant>,
    /// Whether a document found it not drained at its turn's end.
    waited: bool,
}

/// What the deliverer does next.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// Deliver this message now.
    Deliver(Message),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
    /// Nothing is queued.
    Idle,
}

/// Messages on their way to current subscribers, in order. A retained
/// document that a newer one of the same topic supersedes before it is
/// delivered is dropped — a subscriber needs the latest state, and the
/// retained store already holds it — and a retained topic is not delivered
/// again before its turn ends ([`TURN_PER_SUBSCRIBER`]) *and* its last
/// delivery is written by all but [`stragglers`] of its subscribers (the
/// publisher's `outstanding`, from the engine's delivery completions) —
/// and when they were slow to, [`DRAIN_REST`] times as long again — or
/// [`MAX_HOLD`] after its turn: the pace is what the subscribers drain,
/// and under load the inputs keep most of the machine.
/// Everything else (acks, errors, alerts) goes out as queued, never held
/// back by a document.
#[derive(Default)]
pub(super) struct DeliveryQueue {
    queue: VecDeque<(u64, Message)>,
    /// Per retained topic, the position of its newest document.
    newest: HashMap<Topic, u64>,
    next: u64,
    /// Per retained topic, its last delivery.
    turns: HashMap<Topic, Turn>,
    /// Documents waiting for their topic's turn to end: position, message,
    /// due.
    held: HashMap<Topic, (u64, Message, Instant)>,
}

impl DeliveryQueue {
    /// Queues a message.
    pub(super) fn push(&mut self, message: Message) {
        let at = self.next;
        self.next += 1;
        if message.retain {
            self.newest.insert(message.topic.clone(), at);
        }
        self.queue.push_back((at, message));
    }

    /// A document of `topic` went to `subscribers` subscribers at `now`:
    /// its turn lasts [`TURN_PER_SUBSCRIBER`] for each.
    pub(super) fn delivered(&mut self, topic: Topic, now: Instant, subscribers: usize) {
        if subscribers > 0 {
            let per = u32::try_from(subscribers).unwrap_or(u32::MAX);
            let ends = now + TURN_PER_SUBSCRIBER * per;
            self.turns.insert(
                topic,
                Turn {
                    sent: now,
                    ends,
                    subscribers,
                    drained: None,
                    waited: false,
                },
            );
        }
    }

    /// When `topic`'s next document may go (`None`: now), given how many of
    /// its last delivery are `outstanding`.
    fn held_until(&mut self, topic: &Topic, now: Instant, outstanding: &dyn Fn(&Topic) -> usize) -> Option<Instant> {
        let turn = self.turns.get_mut(topic)?;
        if now < turn.ends {
            return Some(turn.ends);
        }
        let last_chance = turn.ends + MAX_HOLD;
        if now >= last_chance {
            return None;
        }
        if turn.drained.is_none() {
            if outstanding(topic) > stragglers(turn.subscribers) {
                turn.waited = true;
            } else if turn.waited {
                turn.drained = Some(now);
            } else {
                // Written within its turn: the subscribers keep up.
                return None;
            }
        }
        match turn.drained {
            // As long again as the last one took to drain: under load a
            // topic's deliveries take at most half the subscribers' time.
            Some(drained) => {
                let rest = drained + (drained - turn.sent) * DRAIN_REST;
                (now < rest).then_some(rest.min(last_chance))
            }
            None => Some(last_chance.min(now + DRAIN_POLL)),
        }
    }

    /// Messages queued or held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len() + self.held.len()
    }

    /// What to do at `now`, and how many superseded documents were dropped
    /// on the way to it; `outstanding` says how many deliveries of a topic
    /// its subscribers have not written yet.
    pub(super) fn next(&mut self, now: Instant, outstanding: &dyn Fn(&Topic) -> usize) -> (Next, usize) {
        let mut dropped = 0;
        let waiting: Vec<Topic> = self
            .held
            .iter()
            .filter(|(_, (_, _, due))| *due <= now)
            .map(|(topic, _)| topic.clone())
            .collect();
        let mut due = None;
        for topic in waiting {
            match self.held_until(&topic, now, outstanding) {
                None => {
                    due = Some(topic);
                    break;
                }
                Some(until) => {
                    if let Some(held) = self.held.get_mut(&topic) {
                        held.2 = until;
                    }
                }
            }
        }
        if let Some(topic) = due {
            if let Some((at, message, _)) = self.held.remove(&topic) {
                if self.newest.get(&topic) == Some(&at) {
                    self.newest.remove(&topic);
                    return (Next::Deliver(message), dropped);
                }
                // A newer document is queued behind; it takes the turn.
                dropped += 1;
            }
        }
        while let Some((at, message)) = self.queue.pop_front() {
            if !message.retain {
                return (Next::Deliver(message), dropped);
            }
            if self.newest.get(&message.topic) != Some(&at) {
                dropped += 1;
                continue;
            }
            let topic = message.topic.clone();
            match self.held_until(&topic, now, outstanding) {
                Some(due) => {
                    if self.held.insert(topic, (at, message, due)).is_some() {
                        dropped += 1;
                    }
                }
                None => {
                    self.newest.remove(&topic);
                    return (Next::Deliver(message), dropped);
                }
            }
        }
        // Forget turns that can no longer hold anything back.
        self.turns.retain(|_, turn| now < turn.ends + MAX_HOLD);
        match self.held.values().map(|(_, _, due)| *due).min() {
            Some(due) => (Next::WaitUntil(due), dropped),
            None => (Next::Idle, dropped),
        }
    }
}

/// The deliverer: sends queued messages to current subscribers, one at a
/// time (see [`DeliveryQueue`]). Runs beside the committer, so a device's
/// next input is synced while the documents its last one changed are still
/// being delivered.
pub(super) struct Deliverer {
    queue: std::sync::Mutex<DeliveryQueue>,
    /// Signalled when something is queued or the committer stops.
    pub(super) ready: Notify,
    /// One permit per message the queue may still take.
    room: Semaphore,
    pub(super) stopping: std::sync::atomic::AtomicBool,
}

impl Deliverer {
    pub(super) fn new() -> Deliverer {
        Deliverer {
            queue: std::sync::Mutex::new(DeliveryQueue::default()),
            ready: Notify::new(),
            room: Semaphore::new(DELIVERY_QUEUE),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Queues `messages`, waiting for room first.
    pub(super) async fn queue(&self, messages: Vec<Message>) {
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let chunk: Vec<Message> = messages.by_ref().take(DELIVERY_QUEUE).collect();
            let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            if let Ok(permits) = self.room.acquire_many(n).await {
                permits.forget();
            }
            if let Ok(mut queue) = self.queue.lock() {
                for m in chunk {
                    queue.push(m);
                }
            }
            self.ready.notify_one();
        }
    }

    pub(super) async fn run(&self, out: Arc<dyn Publisher>) {
        // Where a timer woke the deliverer, the turn it waited for.
        let mut woken_for: Option<Instant> = None;
        loop {
            let now = Instant::now().max(woken_for.take().unwrap_or_else(Instant::now));
            let (next, dropped) = match self.queue.lock() {
                Ok(mut queue) => queue.next(now, &|topic| out.outstanding(topic)),
                Err(_) => return,
            };
            let delivered = usize::from(matches!(next, Next::Deliver(_)));
            self.room.add_permits(dropped + delivered);
            match next {
                Next::Deliver(Message { topic, payload, retain }) => {
                    let subscribers = out.deliver(&topic, payload, retain).await;
                    crate::metrics::METRICS.delivered();
                    if retain {
                        if let Ok(mut queue) = self.queue.lock() {
                            queue.delivered(topic, Instant::now(), subscribers);
                        }
                    }
                }
                Next::WaitUntil(due) => {
                    // tokio's timer fires on whole milliseconds, up to one
                    // late: aim half a millisecond early and take the turn
                    // as ended, so a held document is off by ±0.5 ms, not
                    // late by 0–1 ms.
                    tokio::select! {
                        _ = tokio::time::sleep_until(due - TIMER_SLACK) => woken_for = Some(due),
                        _ = self.ready.notified() => {}
                    }
                }
                Next::Idle if self.stopping.load(std::sync::atomic::Ordering::SeqCst) => return,
                Next::Idle => self.ready.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("test id")
    }

    /// Superseded retained documents are dropped before delivery, a topic
    /// is not delivered again before its turn ends — the longer the more
    /// subscribers it has — and everything else goes out in order without
    /// waiting.
    #[test]
    fn the_delivery_queue_keeps_the_newest_document_of_each_topic() {
        let level = |sku: &str| Topic::StockLevel {
            store: id("s1"),
            sku: id(sku),
        };
        let acks = Topic::Acks {
            store: id("s1"),
            device: id("pos-1"),
        };
        // Level a has 200 subscribers, level b 20, level c none.
        let subscribers = |topic: &Topic| match topic {
            t if *t == level("a") => 200,
            t if *t == level("b") => 20,
            _ => 0,
        };
        let mut queue = DeliveryQueue::default();
        let drain = |queue: &mut DeliveryQueue, now: Instant| {
            let mut out = Vec::new();
            let mut dropped = 0;
            loop {
                let (next, d) = queue.next(now, &|_| 0);
                dropped += d;
                match next {
                    Next::Deliver(Message {
                        topic,
                        payload: body,
                        retain: retained,
                    }) => {
                        if retained {
                            queue.delivered(topic.clone(), now, subscribers(&topic));
                        }
                        out.push(String::from_utf8(body).expect("utf-8"));
                    }
                    other => return (out, dropped, other),
                }
            }
        };
        let t0 = Instant::now();
        for (topic, body, retain) in [
            (level("a"), "a1", true),
            (acks.clone(), "ack1", false),
            (level("b"), "b1", true),
            (level("a"), "a2", true),
            (acks.clone(), "ack2", false),
            (level("a"), "a3", true),
        ] {
            queue.push(Message::new(topic, body.as_bytes().to_vec(), retain));
        }
        let (out, dropped, then) = drain(&mut queue, t0);
        assert_eq!(out, ["ack1", "b1", "ack2", "a3"]);
        assert_eq!((dropped, then), (2, Next::Idle));

        // a3 just went out to 200: a4 waits 5 ms, a5 replaces it. b1 went
        // out to 20: b2 waits 0.5 ms. c has no subscribers and never waits
        // (c2 replaces c1 only because both were queued). The ack does not
        // wait.
        let a_turn = Duration::from_millis(5);
        let b_turn = Duration::from_micros(500);
        queue.push(Message::new(level("a"), b"a4".to_vec(), true));
        queue.push(Message::new(level("b"), b"b2".to_vec(), true));
        queue.push(Message::new(level("c"), b"c1".to_vec(), true));
        queue.push(Message::new(acks.clone(), b"ack3".to_vec(), false));
        queue.push(Message::new(level("a"), b"a5".to_vec(), true));
        queue.push(Message::new(level("c"), b"c2".to_vec(), true));
        let soon = t0 + Duration::from_micros(100);
        let (out, dropped, then) = drain(&mut queue, soon);
        assert_eq!(out, ["ack3", "c2"]);
        assert_eq!((dropped, then), (2, Next::WaitUntil(t0 + b_turn)));
        assert_eq!(queue.len(), 2);
        queue.push(Message::new(level("c"), b"c3".to_vec(), true));
        let (out, _, _) = drain(&mut queue, soon);
        assert_eq!(out, ["c3"]);
        let (out, _, then) = drain(&mut queue, t0 + b_turn);
        assert_eq!(out, ["b2"]);
        assert_eq!(then, Next::WaitUntil(t0 + a_turn));
        let (out, _, then) = drain(&mut queue, t0 + a_turn);
        assert_eq!(out, ["a5"]);
        assert_eq!(then, Next::Idle);
        assert_eq!(queue.len(), 0);
    }

    /// A topic's next document waits until all but an eighth of its last
    /// delivery's subscribers have written it, then rests three times as
    /// long as that took — or, if they never do, until [`MAX_HOLD`] after
    /// its turn. Subscribers that wrote it within its turn hold nothing up.
    #[test]
    fn a_topics_next_document_waits_for_its_subscribers_to_drain() {
        let level = Topic::StockLevel {
            store: id("s1"),
            sku: id("a"),
        };
        let t0 = Instant::now();
        let turn = Duration::from_millis(5);
        let mut queue = DeliveryQueue::default();
        queue.push(Message::new(level.clone(), b"a1".to_vec(), true));
        assert!(matches!(queue.next(t0, &|_| 0).0, Next::Deliver(_)));
        queue.delivered(level.clone(), t0, 200);
        queue.push(Message::new(level.clone(), b"a2".to_vec(), true));
        // Its turn has ended, but 100 of 200 are still writing a1.
        let busy = |_: &Topic| 100;
        assert_eq!(queue.next(t0 + turn, &busy).0, Next::WaitUntil(t0 + turn + DRAIN_POLL));
        assert_eq!(
            queue.next(t0 + turn + DRAIN_POLL, &busy).0,
            Next::WaitUntil(t0 + turn + DRAIN_POLL * 2)
        );
        // A newer one replaces it while it waits.
        queue.push(Message::new(level.clone(), b"a3".to_vec(), true));
        let (next, dropped) = queue.next(t0 + turn + DRAIN_POLL * 2, &busy);
        assert_eq!((matches!(next, Next::WaitUntil(_)), dropped), (true, 1));
        // 25 of 200 left at 8 ms: drained, after 8 ms of writing; the
        // topic rests three times that.
        let drained = t0 + turn + DRAIN_POLL * 3;
        let rest = drained + (drained - t0) * DRAIN_REST;
        assert_eq!(queue.next(drained, &|_| 25).0, Next::WaitUntil(rest));
        assert_eq!(queue.next(rest - DRAIN_POLL, &|_| 0).0, Next::WaitUntil(rest));
        match queue.next(rest, &|_| 0).0 {
            Next::Deliver(m) => assert_eq!(m.payload, b"a3"),
            other => panic!("{other:?}"),
        }
        // Subscribers that never drain hold it at most MAX_HOLD.
        let t1 = t0 + Duration::from_secs(1);
        queue.delivered(level.clone(), t1, 200);
        queue.push(Message::new(level.clone(), b"a4".to_vec(), true));
        let stuck = |_: &Topic| 200;
        assert!(matches!(
            queue.next(t1 + turn + MAX_HOLD / 2, &stuck).0,
            Next::WaitUntil(_)
        ));
        match queue.next(t1 + turn + MAX_HOLD, &stuck).0 {
            Next::Deliver(m) => assert_eq!(m.payload, b"a4"),
            other => panic!("{other:?}"),
        }
        assert_eq!(queue.len(), 0);
    }
}
