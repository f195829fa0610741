//! Delivery completions: per topic, how many of the rules' deliveries the
//! sessions have not taken out of their queues yet — the feedback that
//! paces a topic's next document by what its subscribers actually drain.
//!
//! [`Drain::sent`] counts a topic's last delivery to each subscriber it
//! reached; the engine's `MessageDelivered` hook (the session writes the
//! message to its client) and `MessageDropped` hook (it never will) count
//! each one done ([`Drain::done`]), matched by the message's creation
//! stamp. What is left is how far the sessions are behind on the topic —
//! in the engine's unbounded hand-over channels, its session queues and
//! its sockets, none of which the rules could see otherwise (a session
//! writes its messages in order, so the last delivery written means every
//! earlier one was). The deliverer holds a
//! topic's next document while that backlog is more than a few stragglers
//! (`rules::delivery`), so under overload documents coalesce in its own
//! queue (newest per topic) instead of piling up, every version of every
//! topic, in the engine's.

use std::collections::HashMap;
use std::sync::Mutex;

/// Per topic: its last delivery (by its creation stamp, milliseconds) and
/// how many of that delivery's subscribers have not written it yet —
/// signed, since a session may write it before the hand-over returns and
/// says to how many it went.
#[derive(Default)]
pub struct Drain {
    last: Mutex<HashMap<Box<str>, (i64, i64)>>,
}

impl Drain {
    /// A document of `topic` stamped `created` was handed over to
    /// `subscribers` sessions (two in the same millisecond count as one).
    pub fn sent(&self, topic: &str, created: i64, subscribers: usize) {
        self.count(topic, created, i64::try_from(subscribers).unwrap_or(i64::MAX));
    }

    /// A session wrote (or dropped) a delivery of `topic` stamped
    /// `created`. Only the newest delivery is counted, so one the engine
    /// never reports done holds nothing back for long.
    pub fn done(&self, topic: &str, created: Option<i64>) {
        if let Some(created) = created {
            self.count(topic, created, -1);
        }
    }

    fn count(&self, topic: &str, created: i64, n: i64) {
        if let Ok(mut last) = self.last.lock() {
            match last.get_mut(topic) {
                Some(entry) if entry.0 == created => entry.1 += n,
                Some(entry) if entry.0 > created => {}
                Some(entry) => *entry = (created, n),
                None => {
                    last.insert(topic.into(), (created, n));
                }
            }
        }
    }

    /// Subscribers of `topic`'s last delivery that have not written it.
    pub fn outstanding(&self, topic: &str) -> usize {
        self.last
            .lock()
            .map(|l| l.get(topic).map_or(0, |e| usize::try_from(e.1).unwrap_or(0)))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::Drain;

    #[test]
    fn only_the_last_delivery_of_a_topic_is_waited_for() {
        let d = Drain::default();
        d.sent("t", 1, 3);
        d.sent("u", 1, 0);
        d.done("t", Some(1));
        assert_eq!((d.outstanding("t"), d.outstanding("u")), (2, 0));
        // A newer delivery: the older one's stragglers no longer count.
        d.sent("t", 2, 2);
        d.done("t", Some(1));
        assert_eq!(d.outstanding("t"), 2);
        d.done("t", Some(2));
        d.done("t", None);
        assert_eq!(d.outstanding("t"), 1);
        // Written before the hand-over said to how many it went.
        d.done("t", Some(3));
        d.done("t", Some(3));
        d.sent("t", 3, 3);
        assert_eq!(d.outstanding("t"), 1);
        d.done("t", Some(3));
        assert_eq!(d.outstanding("t"), 0);
    }
}
