//! Intake: the way into the rules task ([`RulesHandle`]) for every
//! transport — each hands it the same validated [`Input`] (decoded by the
//! core, `Input::decode`) with the identity that sent it — the verdicts it
//! answers with, and the report of a refused input on the sender's errors
//! topic (logged, rate-limited).

use std::collections::HashMap;
use std::sync::Arc;

use dishsync_inventory::{Catalog, Input, Rejection};
use dishsync_protocol::payload::{RequestOut, Timestamp, TransferOut};
use dishsync_protocol::{DeviceId, StoreId};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::render;
use crate::outbound::Publisher;

/// What became of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Applied and committed.
    Applied,
    /// Committed earlier with the same content; acknowledged again, not applied.
    Duplicate,
    /// Well formed, and nothing to apply (a scale reading within its
    /// deadband, or from a scale bound to no SKU).
    Unchanged,
    /// Refused; nothing applied.
    Rejected(Rejection),
}

/// One input on its way to the rules task.
#[derive(Debug)]
pub struct Intake {
    /// The decoded input.
    pub input: Input,
    /// The device that sent it (acks and errors go to its topics).
    pub device: DeviceId,
}

pub(super) enum Command {
    Intake(Intake, oneshot::Sender<Verdict>),
    /// A device connected (true) or disconnected (false).
    Presence(DeviceId, bool),
    /// The requests and transfers shown now, as their documents.
    Documents(oneshot::Sender<Documents>),
    /// A store's alerts: the ids raised now, and the last alert number.
    Alerts(StoreId, oneshot::Sender<Option<AlertIds>>),
    /// The chain runs on a new catalog from now on (a reload).
    Reconfigure(Arc<Catalog>, oneshot::Sender<Reconfigured>),
    /// Every record of the store, between two groups (a cluster worker's
    /// snapshot).
    Snapshot(oneshot::Sender<Result<crate::store::Group, String>>),
}

/// What a new catalog changed in the running chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconfigured {
    /// Level documents published anew.
    pub levels: usize,
    /// Dish availability documents published anew.
    pub dishes: usize,
    /// Documents cleared: dishes and SKUs no longer there.
    pub cleared: usize,
}

/// A store's alerts as the rules hold them: the ids of those raised now
/// and the number of the last one (ids are `al-{store}-{number}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertIds {
    /// Raised and not cleared.
    pub active: Vec<String>,
    /// The last alert number of the store.
    pub last: u64,
}

/// The replenishment requests and transfers the rules show, as published.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// Every request shown (open, or finished less than a day ago).
    pub requests: Vec<RequestOut>,
    /// Every transfer shown.
    pub transfers: Vec<TransferOut>,
}

/// The way into the rules task. Cheap to clone.
#[derive(Clone)]
pub struct RulesHandle {
    pub(super) tx: mpsc::Sender<Command>,
}

impl RulesHandle {
    /// Hands an input to the rules and waits until it is committed or
    /// refused. `None` means the rules task is gone (the broker is stopping).
    pub async fn intake(&self, intake: Intake) -> Option<Verdict> {
        self.submit(intake).await?.await.ok()
    }

    /// Hands an input to the rules, in order, without waiting for its
    /// verdict: the receiver gets it once the input is committed or
    /// refused. `None` means the rules task is gone.
    pub async fn submit(&self, intake: Intake) -> Option<oneshot::Receiver<Verdict>> {
        let (reply, verdict) = oneshot::channel();
        self.tx.send(Command::Intake(intake, reply)).await.ok()?;
        Some(verdict)
    }

    /// The requests and transfers shown now. `None` once the rules stopped.
    pub async fn documents(&self) -> Option<Documents> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Command::Documents(reply)).await.ok()?;
        answer.await.ok()
    }

    /// `store`'s alerts as the rules hold them now. `None` for a store the
    /// rules do not know, or once they stopped.
    pub async fn alert_ids(&self, store: StoreId) -> Option<AlertIds> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Command::Alerts(store, reply)).await.ok()?;
        answer.await.ok().flatten()
    }

    /// Every record of the store as of the last group handed to the
    /// committer ([`Store::dump`](crate::store::Store::dump)), taken between
    /// two inputs. `None` once the rules stopped.
    pub async fn snapshot(&self) -> Option<Result<crate::store::Group, String>> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Command::Snapshot(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Runs the chain on `catalog` from now on (`Inventory::reconfigure`);
    /// its changes join the open group like an input's. `None` once the
    /// rules stopped.
    pub async fn reconfigure(&self, catalog: Arc<Catalog>) -> Option<Reconfigured> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Command::Reconfigure(catalog, reply)).await.ok()?;
        answer.await.ok()
    }

    /// Whether the rules task still takes inputs.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Tells the rules that a device connected or disconnected (freshness).
    pub async fn presence(&self, device: DeviceId, online: bool) {
        let _ = self.tx.send(Command::Presence(device, online)).await;
    }
}

/// At most this many refused inputs per device and minute are logged; the
/// rest are counted, and the next line logged says how many were not.
pub const REFUSALS_LOGGED_PER_MINUTE: u32 = 20;

/// Whether a refusal is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine {
    /// Log it, saying how many of this device's refusals went unlogged
    /// since its last logged one.
    Write {
        /// Refusals not logged before this one.
        unlogged: u64,
    },
    /// Count it only.
    Suppress,
}

/// The log's brake on refusals, so that a device flooding the broker with
/// bad input cannot fill the disk: a window of a minute per device. Pure:
/// fed the time.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Device → (window start, lines logged in it, refusals not logged).
    windows: HashMap<String, (dishsync_protocol::Millis, u32, u64)>,
}

impl RefusalLog {
    /// Notes a refusal of `device`'s at `now`: whether to log it.
    pub fn note(&mut self, device: &str, now: dishsync_protocol::Millis) -> LogLine {
        const MINUTE: dishsync_protocol::Millis = 60_000;
        if self.windows.len() > 10_000 {
            // Forget devices quiet for a minute.
            self.windows
                .retain(|_, (start, _, unlogged)| now - *start < MINUTE || *unlogged > 0);
        }
        let (start, logged, unlogged) = self.windows.entry(device.to_string()).or_insert((now, 0, 0));
        if now - *start >= MINUTE {
            *start = now;
            *logged = 0;
        }
        if *logged < REFUSALS_LOGGED_PER_MINUTE {
            *logged += 1;
            LogLine::Write {
                unlogged: std::mem::take(unlogged),
            }
        } else {
            *unlogged += 1;
            LogLine::Suppress
        }
    }
}

/// The broker's refusal log brake. A lock, because every connection task
/// reports refusals; it is held for a map lookup and never across an await.
static REFUSALS: std::sync::LazyLock<std::sync::Mutex<RefusalLog>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(RefusalLog::default()));

/// Logs the refusal of an input, at most [`REFUSALS_LOGGED_PER_MINUTE`]
/// lines per device and minute.
pub fn log_refusal(store: Option<&StoreId>, device: &DeviceId, topic: &str, id: Option<&str>, r: &Rejection) {
    let store_name = store.map_or("-", |s| s.as_str());
    let line = REFUSALS.lock().map_or(LogLine::Write { unlogged: 0 }, |mut log| {
        log.note(device.as_str(), Timestamp::now().0)
    });
    if let LogLine::Write { unlogged } = line {
        warn!(store = store_name, %device, topic, id = id.unwrap_or("-"), code = ?r.code, reason = %r.message, unlogged, "input rejected");
    }
}

/// Publishes an error report for a rejected input on the device's errors
/// topic in `store` (`None`: a chain-wide device's input that names no
/// store, reported on `hq/errors/{device}`), and logs it.
pub async fn report(
    out: &dyn Publisher,
    store: Option<&StoreId>,
    device: &DeviceId,
    topic: &str,
    id: Option<String>,
    r: &Rejection,
) {
    log_refusal(store, device, topic, id.as_deref(), r);
    if let Some(m) = render::error(store, device, topic, id, r) {
        out.publish(&m.topic, m.payload, m.retain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_device_cannot_fill_the_log() {
        let mut log = RefusalLog::default();
        let t0 = 1_700_000_000_000;
        let lines: Vec<LogLine> = (0..100).map(|i| log.note("pos-1", t0 + i)).collect();
        let written = lines.iter().filter(|l| matches!(l, LogLine::Write { .. })).count();
        assert_eq!(
            written, REFUSALS_LOGGED_PER_MINUTE as usize,
            "the first ones of the minute"
        );
        // Another device is logged on its own account.
        assert_eq!(log.note("pos-2", t0 + 100), LogLine::Write { unlogged: 0 });
        // A minute later the next line says how many went unlogged.
        assert_eq!(log.note("pos-1", t0 + 60_000), LogLine::Write { unlogged: 80 });
        assert_eq!(log.note("pos-1", t0 + 60_001), LogLine::Write { unlogged: 0 });
    }
}
