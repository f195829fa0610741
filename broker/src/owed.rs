//! Documents owed to subscribers: no latest document is left dropped.
//!
//! The engine keeps a bounded queue of outgoing messages per session
//! (`[broker] max_mqueue_len`) in front of its in-flight window. When a
//! subscriber reads slower than documents come — a slow link, a busy
//! terminal, a machine too slow for the load — that queue fills and the
//! engine drops its *oldest* message, whatever its topic, and says so: the
//! `MessageDropped` hook (`MessageQueueFull`), naming the session. That is
//! the feedback signal. The message dropped may have been its topic's
//! latest document, which would leave that POS stale for good.
//!
//! So a dropped rules' document is owed: (session, topic) recorded here,
//! one entry however many versions were dropped. [`Owed::run`] pays back
//! every [`CHECK_EVERY`] as much as each session's queue has room for below
//! [`BEHIND`] messages — no faster than the session drains: the topic's
//! *current* retained document (the newest, whichever was dropped), at the
//! QoS the session subscribed with, if it still subscribes. A repayment
//! dropped again is owed again. Messages without a retained document
//! (acks, errors, alerts) owe nothing: they are events, answered in their
//! own channel.
//!
//! The bound: once inputs stop, a session that keeps reading holds the
//! latest document of every topic it subscribes to within the time its
//! queue takes to drain below [`BEHIND`], plus one [`CHECK_EVERY`] per
//! [`BEHIND`] topics owed. No latest document is lost; an older one may be
//! skipped for a newer. A subscriber that stops reading costs the others
//! nothing: its debt is one entry per topic.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rmqtt::codec::types::QoS;
use rmqtt::context::ServerContext;
use rmqtt::types::{CodecPublish, From, Id, Publish};
use rmqtt::utils::timestamp_millis;
use tokio::sync::Notify;
use tracing::debug;

use crate::outbound::{Outbound, RULES_CLIENT_ID};

/// How often owed documents are looked at while any are owed.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Owed documents are paid back only while the session's queue holds fewer
/// messages than this (a POS that keeps up holds none queued).
pub const BEHIND: usize = 64;

/// Per session (by client id): its id and the topics owed to it.
type BySession = HashMap<Arc<str>, (Id, BTreeSet<String>)>;

/// The documents owed, per session.
#[derive(Default)]
pub struct Owed {
    owed: Mutex<BySession>,
    wake: Notify,
}

impl Owed {
    /// A new, empty record.
    pub fn new() -> Arc<Owed> {
        Arc::new(Owed::default())
    }

    /// The engine dropped `topic`'s message from `from` for session `to`:
    /// owed, if it was one of the rules'.
    pub fn dropped(&self, to: &Id, from: &From, topic: &str) {
        if &*from.id.client_id == RULES_CLIENT_ID {
            self.behind(to, topic);
        }
    }

    /// `topic`'s newest document is owed to session `to`.
    fn behind(&self, to: &Id, topic: &str) {
        if let Ok(mut owed) = self.owed.lock() {
            let client: Arc<str> = Arc::from(&*to.client_id);
            owed.entry(client)
                .or_insert_with(|| (to.clone(), BTreeSet::new()))
                .1
                .insert(topic.to_string());
        }
        self.wake.notify_one();
    }

    /// Pays owed documents back as the sessions drain; runs until the
    /// runtime stops.
    pub async fn run(self: Arc<Self>, scx: ServerContext, out: Outbound) {
        let from = From::from_system(Id::new(scx.node.id(), 0, None, None, RULES_CLIENT_ID.into(), None));
        loop {
            let empty = self.owed.lock().map(|o| o.is_empty()).unwrap_or(true);
            if empty {
                self.wake.notified().await;
            }
            tokio::time::sleep(CHECK_EVERY).await;
            let owed = match self.owed.lock() {
                Ok(mut owed) => std::mem::take(&mut *owed),
                Err(_) => return,
            };
            for (client, (id, topics)) in owed {
                let left = pay(&scx, &out, &from, &id, topics).await;
                if !left.is_empty() {
                    if let Ok(mut owed) = self.owed.lock() {
                        owed.entry(client)
                            .or_insert_with(|| (id, BTreeSet::new()))
                            .1
                            .extend(left);
                    }
                }
            }
        }
    }
}

/// Hands session `id` the current retained document of as many of `topics`
/// as its queue has room for below half its capacity; the topics still
/// owed. A session that is gone owes nothing: a new one subscribes afresh
/// and gets the retained documents.
async fn pay(scx: &ServerContext, out: &Outbound, from: &From, id: &Id, topics: BTreeSet<String>) -> BTreeSet<String> {
    let entry = scx.extends.shared().await.entry(id.clone());
    let Some(session) = entry.session() else {
        return BTreeSet::new();
    };
    let room = BEHIND.saturating_sub(session.deliver_queue().len());
    if room == 0 {
        return topics;
    }
    let subscriptions = entry.subscriptions().await.unwrap_or_default();
    let mut topics = topics.into_iter();
    let mut paid = 0;
    for topic in topics.by_ref() {
        // Still subscribed, and at which QoS.
        let Some(granted) = subscriptions
            .iter()
            .filter(|s| crate::retainer::filter_matches(&s.topic, &topic))
            .map(|s| s.opts.qos())
            .max_by_key(|q| *q as u8)
        else {
            continue;
        };
        let Some((_, payload)) = out.retained(&topic).await.into_iter().next() else {
            continue;
        };
        let publish = Publish::from(CodecPublish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce.less_value(granted),
            topic: topic.as_str().into(),
            packet_id: None,
            payload: Bytes::clone(&payload),
            properties: None,
        })
        .create_time(timestamp_millis());
        if entry.publish(from.clone(), publish).await.is_err() {
            return BTreeSet::new();
        }
        paid += 1;
        if paid == room {
            break;
        }
    }
    debug!(client = %id.client_id, paid, "owed documents paid back");
    topics.collect()
}
