//! Group commit: what a group writes into its journal record (the state of
//! everything it changed, [`stage_changes`]) and the committer that makes
//! each group durable with one sync before it answers the group's devices
//! and hands its messages to the deliverer.

use std::sync::Arc;

use dishsync_inventory::{Changes, Inventory};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tracing::error;

use super::delivery::Deliverer;
use super::intake::Verdict;
use crate::outbound::{Message, Publisher};
use crate::store::{Commit, Store, StoreError};

/// Writes the states of the documents `changes` names into `commit`.
pub fn stage_changes(commit: &mut Commit, inv: &Inventory, changes: &Changes) -> Result<(), StoreError> {
    for doc in &changes.persist {
        commit.document(doc, inv)?;
    }
    Ok(())
}

/// What one group waits to do until it is durable: store the retained
/// documents, answer the devices (their PUBACK/PUBCOMP), then deliver the
/// documents, acks, errors and the throttled documents that were due.
pub(super) struct Completion {
    pub(super) retained: Vec<Message>,
    pub(super) replies: Vec<(oneshot::Sender<Verdict>, Verdict)>,
    pub(super) after: Vec<Message>,
    /// The group's webhook deliveries (endpoint, number, delivery), handed
    /// to their endpoints once the group is durable.
    pub(super) deliveries: Vec<(usize, u64, crate::webhooks::Delivery)>,
    /// Released once the group is answered: the next group may go.
    pub(super) _idle: OwnedSemaphorePermit,
}

/// The committer: makes each group durable (one journal sync), stores its
/// retained documents and answers its devices, then queues its messages for
/// the deliverer. Only one group is with it at a time; the rules task keeps
/// applying inputs to the next group meanwhile, so under load a group holds
/// everything that arrived during the previous one's sync.
pub(super) async fn committer(
    store: Store,
    out: Arc<dyn Publisher>,
    webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    mut rx: mpsc::Receiver<Completion>,
) {
    let deliverer = Arc::new(Deliverer::new());
    let delivering = {
        let deliverer = Arc::clone(&deliverer);
        let out = Arc::clone(&out);
        tokio::spawn(async move { deliverer.run(out).await })
    };
    while let Some(group) = rx.recv().await {
        let started = std::time::Instant::now();
        let flushed = store.flush().await;
        crate::metrics::METRICS.journal_synced(started.elapsed());
        if let Err(e) = flushed {
            // What reached the disk is unknown: stop (the shell does, on
            // this), and let the restart recover from the last complete
            // commit. Devices re-send what they saw no ack for.
            error!(error = %e, "storage failed; stopping the broker");
            store.fail(match e {
                StoreError::Replica(why) => format!("a group commit was not replicated: {why}"),
                e => format!("a journal sync failed: {e}"),
            });
            return;
        }
        // A device holding its PUBACK finds the new state retained.
        for m in &group.retained {
            out.retain(&m.topic, m.payload.clone()).await;
        }
        for (reply, verdict) in group.replies {
            let _ = reply.send(verdict);
        }
        if let Some(webhooks) = &webhooks {
            webhooks.queued(group.deliveries);
        }
        for m in group.after.iter().filter(|m| m.retain) {
            out.retain(&m.topic, m.payload.clone()).await;
        }
        let mut messages = group.retained;
        messages.extend(group.after);
        deliverer.queue(messages).await;
    }
    deliverer.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    deliverer.ready.notify_one();
    let _ = delivering.await;
}
