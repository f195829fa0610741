//! What the broker counts, and its `/metrics` page in the Prometheus text
//! format (version 0.0.4).
//!
//! Counters are plain atomics in one process-wide [`Metrics`] ([`METRICS`]),
//! bumped where the thing happens — a transport's verdict, a group commit,
//! a journal sync, a delivery, a connection — and read at a scrape; gauges
//! that the rules know (requests and transfers) are asked for at the scrape
//! ([`Gauges`]). [`Metrics::render`] is pure: it writes what it is given.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use dishsync_protocol::payload::{ErrorCode, InputCount, MetricsOut, RequestState, Timestamp, TransferState};

use crate::rules::{RulesHandle, Verdict};

/// The broker's counters.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// Upper bounds of the journal sync histogram, seconds.
const SYNC_BUCKETS: [f64; 11] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Inputs by transport, outcome and (for a refusal) code.
type InputKey = (&'static str, &'static str, Option<ErrorCode>);

/// Every counter.
#[derive(Default)]
pub struct Metrics {
    inputs: Mutex<BTreeMap<InputKey, u64>>,
    group_commits: AtomicU64,
    group_inputs: AtomicU64,
    sync_buckets: [AtomicU64; SYNC_BUCKETS.len()],
    sync_count: AtomicU64,
    sync_nanos: AtomicU64,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    alerts_raised: AtomicU64,
    connections: Mutex<BTreeMap<&'static str, i64>>,
    webhook_deliveries: AtomicU64,
    webhook_failed: AtomicU64,
    webhook_dead: AtomicU64,
    webhook_pending: Mutex<BTreeMap<String, u64>>,
    web_sessions: AtomicU64,
    /// Records removed by compaction, by kind.
    compacted: Mutex<BTreeMap<&'static str, u64>>,
    compactions: AtomicU64,
}

/// What the rules are asked for at a scrape.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// Replenishment requests not yet received or cancelled.
    pub open_requests: u64,
    /// Transfers proposed, accepted or dispatched.
    pub active_transfers: u64,
    /// Journal groups not yet checkpointed into sled.
    pub checkpoint_lag: u64,
}

impl Metrics {
    /// An input that came in over `transport` (`mqtt`, `worker`, `demo`
    /// for the demo's own service) got `verdict`.
    pub fn input(&self, transport: &'static str, verdict: &Verdict) {
        let key = match verdict {
            Verdict::Applied => (transport, "applied", None),
            Verdict::Duplicate => (transport, "duplicate", None),
            Verdict::Unchanged => (transport, "unchanged", None),
            Verdict::Rejected(r) => (transport, "refused", Some(r.code)),
        };
        self.count_input(key);
    }

    /// An input refused before it reached the rules (permission, decoding).
    pub fn refused(&self, transport: &'static str, code: ErrorCode) {
        self.count_input((transport, "refused", Some(code)));
    }

    fn count_input(&self, key: InputKey) {
        if let Ok(mut inputs) = self.inputs.lock() {
            *inputs.entry(key).or_default() += 1;
        }
    }

    /// A group of `inputs` inputs was committed.
    pub fn group_committed(&self, inputs: usize) {
        self.group_commits.fetch_add(1, Ordering::Relaxed);
        self.group_inputs.fetch_add(inputs as u64, Ordering::Relaxed);
    }

    /// A journal sync took `took`.
    pub fn journal_synced(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bucket, bound) in self.sync_buckets.iter().zip(SYNC_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sync_count.fetch_add(1, Ordering::Relaxed);
        self.sync_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A message was delivered to current subscribers.
    pub fn delivered(&self) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// A message could not be delivered to a subscriber.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// An alert was raised.
    pub fn alert_raised(&self) {
        self.alerts_raised.fetch_add(1, Ordering::Relaxed);
    }

    /// A client of `role` connected (`true`) or disconnected.
    pub fn connection(&self, role: &'static str, connected: bool) {
        if let Ok(mut connections) = self.connections.lock() {
            *connections.entry(role).or_default() += if connected { 1 } else { -1 };
        }
    }

    /// A webhook delivery was taken by its endpoint.
    pub fn webhook_delivered(&self) {
        self.webhook_deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// A webhook attempt failed; `given_up` when it was the last.
    pub fn webhook_failed(&self, given_up: bool) {
        self.webhook_failed.fetch_add(1, Ordering::Relaxed);
        if given_up {
            self.webhook_dead.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `endpoint` has `pending` deliveries waiting or being sent.
    pub fn webhook_pending(&self, endpoint: &str, pending: usize) {
        if let Ok(mut map) = self.webhook_pending.lock() {
            map.insert(endpoint.to_string(), pending as u64);
        }
    }

    /// The web app has `open` sessions.
    pub fn web_sessions(&self, open: usize) {
        self.web_sessions.store(open as u64, Ordering::Relaxed);
    }

    /// A compaction ran and removed `done`.
    pub fn compacted(&self, done: &crate::store::retention::Compacted) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.compacted.lock() {
            for (record, n) in done.removed() {
                *map.entry(record).or_default() += n;
            }
        }
    }

    /// The `/metrics` page, with `gauges` from the rules.
    pub fn render(&self, gauges: Gauges) -> String {
        // Every figure from the one snapshot the retained document carries;
        // only the histogram's buckets are the page's own.
        let m = self.snapshot(gauges, Timestamp::now());
        let mut out = String::from(
            "# HELP dishsync_inputs_total Inputs by transport and outcome (applied, duplicate, unchanged, refused with its code).\n# TYPE dishsync_inputs_total counter\n",
        );
        for i in &m.inputs {
            let code = i.code.map_or(String::new(), |c| format!(",code=\"{}\"", code_name(c)));
            let _ = writeln!(
                out,
                "dishsync_inputs_total{{transport=\"{}\",outcome=\"{}\"{code}}} {}",
                i.transport, i.outcome, i.count
            );
        }
        let counters = [
            (
                "dishsync_group_commits_total",
                "Group commits: journal records, each synced once.",
                m.group_commits,
            ),
            (
                "dishsync_group_commit_inputs_total",
                "Inputs in the group commits (divided by the commits: the mean group size).",
                m.group_commit_inputs,
            ),
            (
                "dishsync_deliveries_total",
                "Messages delivered to current subscribers.",
                m.deliveries,
            ),
            (
                "dishsync_deliveries_dropped_total",
                "Messages the engine could not deliver to a subscriber.",
                m.deliveries_dropped,
            ),
            ("dishsync_alerts_raised_total", "Store alerts raised.", m.alerts_raised),
            (
                "dishsync_webhook_deliveries_total",
                "Webhook deliveries taken by their endpoints.",
                m.webhook_deliveries,
            ),
            (
                "dishsync_webhook_failed_attempts_total",
                "Webhook attempts that failed (retried, or given up).",
                m.webhook_failed_attempts,
            ),
            (
                "dishsync_webhook_dead_letters_total",
                "Webhook deliveries given up after their retry period.",
                m.webhook_dead_letters,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let name = "dishsync_journal_sync_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Journal syncs (one per group commit), seconds.\n# TYPE {name} histogram"
        );
        for (bucket, bound) in self.sync_buckets.iter().zip(SYNC_BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let (count, sum) = (m.journal_syncs, m.journal_sync_seconds);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
        let name = "dishsync_connections";
        let _ = writeln!(out, "# HELP {name} Connected clients by role.\n# TYPE {name} gauge");
        for (role, n) in &m.connections {
            let _ = writeln!(out, "{name}{{role=\"{role}\"}} {n}");
        }
        let gauges = [
            (
                "dishsync_open_requests",
                "Replenishment requests open at the central kitchen.",
                m.open_requests,
            ),
            (
                "dishsync_active_transfers",
                "Transfers proposed, accepted or on their way.",
                m.active_transfers,
            ),
            (
                "dishsync_checkpoint_lag_groups",
                "Journal groups committed and not yet checkpointed into sled (what a restart replays).",
                m.checkpoint_lag_groups,
            ),
            ("dishsync_web_sessions", "Web app sessions open.", m.web_sessions),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let name = "dishsync_webhook_pending";
        let _ = writeln!(
            out,
            "# HELP {name} Webhook deliveries waiting or being sent, by endpoint.\n# TYPE {name} gauge"
        );
        for (endpoint, n) in &m.webhook_pending {
            let _ = writeln!(out, "{name}{{endpoint=\"{endpoint}\"}} {n}");
        }
        let name = "dishsync_compactions_total";
        let _ = writeln!(
            out,
            "# HELP {name} Compactions of the history past its retention.\n# TYPE {name} counter\n{name} {}",
            self.compactions.load(Ordering::Relaxed)
        );
        let name = "dishsync_compacted_records_total";
        let _ = writeln!(
            out,
            "# HELP {name} History records removed past their retention, by kind.\n# TYPE {name} counter"
        );
        if let Ok(map) = self.compacted.lock() {
            for (record, n) in map.iter() {
                let _ = writeln!(out, "{name}{{record=\"{record}\"}} {n}");
            }
        }
        out
    }
}

impl Metrics {
    /// The figures as the retained `$SYS/dishsync/metrics` document, taken
    /// at `at`.
    pub fn snapshot(&self, gauges: Gauges, at: Timestamp) -> MetricsOut {
        let inputs = self.inputs.lock().map_or_else(
            |_| Vec::new(),
            |inputs| {
                inputs
                    .iter()
                    .map(|((transport, outcome, code), n)| InputCount {
                        transport: transport.to_string(),
                        outcome: outcome.to_string(),
                        code: *code,
                        count: *n,
                    })
                    .collect()
            },
        );
        let connections = self.connections.lock().map_or_else(
            |_| BTreeMap::new(),
            |c| {
                c.iter()
                    .map(|(role, n)| (role.to_string(), (*n).max(0) as u64))
                    .collect()
            },
        );
        MetricsOut {
            at,
            inputs,
            group_commits: self.group_commits.load(Ordering::Relaxed),
            group_commit_inputs: self.group_inputs.load(Ordering::Relaxed),
            journal_syncs: self.sync_count.load(Ordering::Relaxed),
            journal_sync_seconds: self.sync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            deliveries: self.deliveries.load(Ordering::Relaxed),
            deliveries_dropped: self.dropped.load(Ordering::Relaxed),
            alerts_raised: self.alerts_raised.load(Ordering::Relaxed),
            connections,
            open_requests: gauges.open_requests,
            active_transfers: gauges.active_transfers,
            checkpoint_lag_groups: gauges.checkpoint_lag,
            webhook_deliveries: self.webhook_deliveries.load(Ordering::Relaxed),
            webhook_failed_attempts: self.webhook_failed.load(Ordering::Relaxed),
            webhook_dead_letters: self.webhook_dead.load(Ordering::Relaxed),
            webhook_pending: self.webhook_pending.lock().map(|m| m.clone()).unwrap_or_default(),
            web_sessions: self.web_sessions.load(Ordering::Relaxed),
        }
    }
}

/// The gauges the rules and the store know, asked for now (the rules'
/// zero once they stopped).
pub async fn gauges(rules: &RulesHandle, store: &crate::store::Store) -> Gauges {
    let checkpoint_lag = store.checkpoint_lag();
    let Some(documents) = rules.documents().await else {
        return Gauges {
            checkpoint_lag,
            ..Gauges::default()
        };
    };
    Gauges {
        checkpoint_lag,
        open_requests: documents
            .requests
            .iter()
            .filter(|r| !matches!(r.state, RequestState::Received | RequestState::Cancelled))
            .count() as u64,
        active_transfers: documents
            .transfers
            .iter()
            .filter(|t| {
                matches!(
                    t.state,
                    TransferState::Proposed | TransferState::Accepted | TransferState::Dispatched
                )
            })
            .count() as u64,
    }
}

/// How often `$SYS/dishsync/metrics` is renewed.
pub const RETAINED_EVERY: Duration = Duration::from_secs(10);

/// Publishes `$SYS/dishsync/metrics` through `out` now and every
/// [`RETAINED_EVERY`], for as long as the broker runs.
pub async fn publish_retained(out: crate::outbound::Outbound, rules: RulesHandle, store: crate::store::Store) {
    let mut tick = tokio::time::interval(RETAINED_EVERY);
    loop {
        tick.tick().await;
        let doc = METRICS.snapshot(gauges(&rules, &store).await, Timestamp::now());
        crate::outbound::publish_doc(&out, &dishsync_protocol::Topic::BrokerMetrics, &doc, true).await;
    }
}

/// An error code as the errors topic spells it.
fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dishsync_inventory::Rejection;

    #[test]
    fn every_counter_is_on_the_page() {
        let m = Metrics::default();
        m.input("mqtt", &Verdict::Applied);
        m.input("mqtt", &Verdict::Applied);
        m.input("mqtt", &Verdict::Rejected(Rejection::new(ErrorCode::UnknownSku, "x")));
        m.refused("mqtt", ErrorCode::NotPermitted);
        m.group_committed(2);
        m.journal_synced(Duration::from_micros(700));
        m.connection("pos", true);
        m.connection("pos", true);
        m.connection("pos", false);
        m.webhook_delivered();
        m.webhook_failed(false);
        m.webhook_failed(true);
        m.webhook_pending("erp", 4);
        m.web_sessions(2);
        let page = m.render(Gauges {
            open_requests: 3,
            active_transfers: 1,
            checkpoint_lag: 2,
        });
        for line in [
            "dishsync_inputs_total{transport=\"mqtt\",outcome=\"applied\"} 2",
            "dishsync_inputs_total{transport=\"mqtt\",outcome=\"refused\",code=\"unknown_sku\"} 1",
            "dishsync_inputs_total{transport=\"mqtt\",outcome=\"refused\",code=\"not_permitted\"} 1",
            "dishsync_group_commits_total 1",
            "dishsync_group_commit_inputs_total 2",
            "dishsync_journal_sync_seconds_bucket{le=\"0.0005\"} 0",
            "dishsync_journal_sync_seconds_bucket{le=\"0.001\"} 1",
            "dishsync_journal_sync_seconds_bucket{le=\"+Inf\"} 1",
            "dishsync_journal_sync_seconds_count 1",
            "dishsync_connections{role=\"pos\"} 1",
            "dishsync_open_requests 3",
            "dishsync_active_transfers 1",
            "dishsync_checkpoint_lag_groups 2",
            "dishsync_webhook_deliveries_total 1",
            "dishsync_webhook_failed_attempts_total 2",
            "dishsync_webhook_dead_letters_total 1",
            "dishsync_webhook_pending{endpoint=\"erp\"} 4",
            "dishsync_web_sessions 2",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} missing from:\n{page}");
        }
    }
}
