//! The rules shell: the single owner of the [`Inventory`] and the durable
//! [`Store`], reached through [`RulesHandle`].
//!
//! Four jobs, one module each:
//! - [`intake`]: connection tasks decode and validate inputs in parallel
//!   (`Input::decode`, in the core), then hand them to the rules task and
//!   wait for its [`Verdict`];
//! - the rules task (here) applies each input to the pure core at once
//!   (`Inventory::apply`),
//!   into the *open group*; as soon as the committer is free it closes the
//!   group — one journal record with every effect and the current state of
//!   everything changed — renders what the group publishes and hands it
//!   over;
//! - [`render`]: the messages a group publishes, computed from the
//!   inventory without I/O;
//! - `commit`: the committer syncs the journal once for the whole group
//!   and only then answers — so a device's PUBACK/PUBCOMP, which waits for
//!   the verdict, means "durably applied or durably rejected" — storing the
//!   changed retained documents, then answering, then queueing the
//!   documents, acks and errors for
//! - `delivery`: the deliverer, which sends them to current subscribers,
//!   the newest document of each topic first.
//!
//! A lone input is handed over immediately; under load a group holds
//! everything that arrived while the previous one was being synced and
//! published, so a document changed by many inputs is rendered and
//! published once per group.
//!
//! It does not parse topics (that is `dishsync_protocol::Topic`) and makes no
//! domain decision (that is `dishsync_inventory`).
//!
//! Invariant: an event id is applied at most once per store — checked against
//! the committed index and the open group, and recorded in the same journal
//! record as its effects.

mod commit;
mod delivery;
pub mod intake;
pub mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dishsync_inventory::{Changes, Document, Inventory, Rejection, SaleRecord};
use dishsync_protocol::payload::{ErrorCode, Timestamp};
use dishsync_protocol::{DeviceId, EventId, StoreId};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, error, info};

pub use commit::stage_changes;
pub use intake::{
    log_refusal, report, AlertIds, Documents, Intake, LogLine, Reconfigured, RefusalLog, RulesHandle, Verdict,
    REFUSALS_LOGGED_PER_MINUTE,
};

use crate::outbound::{Message, Publisher};
use crate::store::{Commit, Store, StoreError};
use crate::webhooks::Webhooks;
use commit::{committer, Completion};
use intake::Command;

/// Most inputs in one group commit.
const MAX_BATCH: usize = 4096;
/// Inputs waiting for the rules task before senders feel backpressure.
const QUEUE: usize = 16_384;
/// The whole-menu document is re-published at most this often per store.
const MENU_INTERVAL: Duration = Duration::from_millis(250);
/// How often timers (override expiry, delayed menu documents) are checked.
const TICK: Duration = Duration::from_millis(100);
/// Every this many ticks (one second) the rest of the planning timers run.
const FULL_TICK_EVERY: u32 = 10;
/// Each store's forecasts move once in this many ticks (five seconds), a
/// part of the stores on each tick. The ETAs are to the minute, and a sale
/// moves its dish's at once; what is left for the clock is the slow drift
/// as a rate decays.
const FORECAST_PARTS: u32 = 50;

/// The rules task's state.
struct Rules {
    inv: Inventory,
    store: Store,
    /// Inputs applied to the inventory and not yet handed to the committer.
    group: Group,
    /// Held by the group the committer is working on: while it is taken,
    /// the next group keeps growing.
    committer_idle: Arc<Semaphore>,
    /// Where handed-over groups go to be made durable and published.
    committer: mpsc::Sender<Completion>,
    /// The committer task (awaited on shutdown).
    committer_task: tokio::task::JoinHandle<()>,
    /// When each throttled document was last published.
    published: HashMap<Document, Instant>,
    /// Throttled documents that changed but were published too recently.
    due: BTreeSet<Document>,
    /// The ticks so far (modulo [`FORECAST_PARTS`]): the part of the stores
    /// whose forecasts the next tick moves.
    ticks: u32,
    /// Where webhook deliveries go, if anywhere.
    webhooks: Option<Arc<Webhooks>>,
}

/// The open group commit: everything applied since the last hand-over.
#[derive(Default)]
struct Group {
    /// Ledger lines, ids and sale records written so far (begun lazily, so
    /// that its ledger numbering follows the group handed over before it).
    commit: Option<Commit>,
    /// The documents and states the group changed.
    changes: Changes,
    /// Every input with the verdict it will be answered with.
    decided: Vec<(Intake, oneshot::Sender<Verdict>, Verdict)>,
    /// Ids applied in this group (not yet visible in the store).
    ids: HashMap<(Option<StoreId>, EventId), u64>,
    /// Sales recorded in this group, for voids in the same group.
    sales: HashMap<(StoreId, EventId), SaleRecord>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.decided.is_empty() && self.changes.is_empty()
    }

    /// The group's commit, begun now if nothing wrote to it yet.
    fn open_commit(&mut self, store: &Store) -> Result<&mut Commit, StoreError> {
        match &mut self.commit {
            Some(commit) => Ok(commit),
            empty => Ok(empty.insert(store.begin()?)),
        }
    }
}

/// How often a document is re-published at most while it changes: the
/// whole-menu document every 250 ms, a summary every second, everything
/// else at once (`None`).
fn throttle(doc: &Document) -> Option<Duration> {
    match doc {
        Document::Menu(_) => Some(MENU_INTERVAL),
        Document::Summary(_) | Document::Promotion(_) => Some(Duration::from_secs(1)),
        _ => None,
    }
}

/// Starts the rules task on the current runtime; each group's webhook
/// deliveries, if any endpoint is configured, are queued in its commit and
/// handed to `webhooks` once it is durable.
pub fn start(inv: Inventory, store: Store, out: Arc<dyn Publisher>, webhooks: Option<Arc<Webhooks>>) -> RulesHandle {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(Rules::new(inv, store, out, webhooks).run(rx));
    RulesHandle { tx }
}

impl Rules {
    fn new(inv: Inventory, store: Store, out: Arc<dyn Publisher>, webhooks: Option<Arc<Webhooks>>) -> Rules {
        let (committer_tx, committer_rx) = mpsc::channel(1);
        let committer_task = tokio::spawn(committer(store.clone(), out, webhooks.clone(), committer_rx));
        Rules {
            inv,
            store,
            webhooks,
            group: Group::default(),
            committer_idle: Arc::new(Semaphore::new(1)),
            committer: committer_tx,
            committer_task,
            published: HashMap::new(),
            due: BTreeSet::new(),
            ticks: 0,
        }
    }

    /// Stops: hands over what is open and lets the committer finish.
    async fn shutdown(mut self) -> Result<(), StoreError> {
        if !self.group.is_empty() {
            let idle = self.idle().await;
            self.hand_over(idle).await?;
        }
        let Rules {
            committer,
            committer_task,
            ..
        } = self;
        drop(committer);
        let _ = committer_task.await;
        Ok(())
    }

    /// Waits until the committer is free.
    async fn idle(&self) -> OwnedSemaphorePermit {
        match self.committer_idle.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => {
                error!("the committer stopped; stopping the broker");
                self.store.fail("the committer stopped".into());
                std::future::pending().await
            }
        }
    }

    /// Whether there is anything to hand to the committer.
    fn has_work(&self) -> bool {
        !self.group.is_empty() || self.ready_due().next().is_some()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                // Handing over first: a group never waits on new inputs.
                biased;
                idle = self.committer_idle.clone().acquire_owned(), if self.has_work() => match idle {
                    Ok(idle) => self.hand_over(idle).await,
                    Err(_) => break,
                },
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let mut batch = vec![cmd];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                    self.take_in(batch)
                }
                _ = tick.tick() => {
                    self.on_tick();
                    Ok(())
                }
            };
            if let Err(e) = result {
                // What reached the disk is unknown: stop (the shell does, on
                // this), and let the restart recover from the last complete
                // commit. Devices re-send what they saw no ack for.
                error!(error = %e, "storage failed; stopping the broker");
                self.store.fail(format!("a commit failed: {e}"));
                return;
            }
        }
        let store = self.store.clone();
        if let Err(e) = self.shutdown().await {
            error!(error = %e, "storage failed while stopping");
            store.fail(format!("the last commit failed: {e}"));
        }
        info!("rules task stopped");
    }

    /// Time passes: 86es lapse, a fiftieth of the stores' forecasts move;
    /// the rest of planning (proposal expiry, a new day, retiring) once a
    /// second. The changes join the open group.
    fn on_tick(&mut self) {
        let now = Timestamp::now().0;
        let part = self.ticks;
        self.ticks = (part + 1) % FORECAST_PARTS;
        let mut changes = self.inv.expire_overrides(now);
        // Every store's forecasts every five seconds, a fiftieth of the
        // stores on each tick: the work, and the documents it changes, of a
        // large chain never fall into one group ahead of the inputs after
        // them (a chain of 2,000 stores has up to 160,000 dishes).
        changes.merge(self.inv.move_forecasts(now, part as usize, FORECAST_PARTS as usize));
        if part.is_multiple_of(FULL_TICK_EVERY) {
            changes.merge(self.inv.tick_timers(now));
        }
        self.group.changes.merge(changes);
    }

    /// The throttled documents that are due and whose interval passed.
    fn ready_due(&self) -> impl Iterator<Item = &Document> {
        let now = Instant::now();
        self.due.iter().filter(move |doc| {
            self.published
                .get(*doc)
                .is_none_or(|t| throttle(doc).is_none_or(|interval| now.duration_since(*t) >= interval))
        })
    }

    /// Applies a batch of commands to the inventory, into the open group.
    fn take_in(&mut self, batch: Vec<Command>) -> Result<(), StoreError> {
        let now = Timestamp::now().0;
        for command in batch {
            let (intake, reply) = match command {
                Command::Intake(intake, reply) => (intake, reply),
                Command::Documents(reply) => {
                    let (requests, transfers) = self.inv.documents();
                    let _ = reply.send(Documents {
                        requests: requests.iter().filter_map(|id| self.inv.request_out(id)).collect(),
                        transfers: transfers.iter().filter_map(|id| self.inv.transfer_out(id)).collect(),
                    });
                    continue;
                }
                Command::Alerts(store, reply) => {
                    let ids = self.inv.plan_state(&store).map(|plan| AlertIds {
                        active: plan.alerts.active.values().cloned().collect(),
                        last: plan.alerts.seq,
                    });
                    let _ = reply.send(ids);
                    continue;
                }
                Command::Snapshot(reply) => {
                    // The open group is not in the store yet: the dump holds
                    // exactly the groups handed over.
                    let _ = reply.send(self.store.dump().map_err(|e| e.to_string()));
                    continue;
                }
                Command::Reconfigure(catalog, reply) => {
                    let outcome = self.inv.reconfigure(catalog, now);
                    let answer = Reconfigured {
                        levels: outcome.changes.levels().count(),
                        dishes: outcome.changes.dishes().count(),
                        cleared: outcome.changes.retired.len(),
                    };
                    info!(?answer, "running on the reloaded catalog");
                    if !outcome.entries.is_empty() {
                        self.group.open_commit(&self.store)?.ledger(&outcome.entries)?;
                    }
                    self.group.changes.merge(outcome.changes);
                    let _ = reply.send(answer);
                    continue;
                }
                Command::Presence(device, online) => {
                    let stores: Vec<StoreId> = self
                        .inv
                        .catalog()
                        .planning()
                        .feeds
                        .iter()
                        .filter(|(_, devices)| devices.contains_key(&device))
                        .map(|(s, _)| s.clone())
                        .collect();
                    for store in stores {
                        info!(%store, %device, online, "feeding device presence");
                        self.group
                            .changes
                            .merge(self.inv.set_presence(&store, &device, online, now));
                    }
                    continue;
                }
            };
            let verdict = self.decide(&intake, now)?;
            self.group.decided.push((intake, reply, verdict));
        }
        Ok(())
    }

    /// Applies one input (unless its id was seen) and says how to answer it.
    fn decide(&mut self, intake: &Intake, now: dishsync_protocol::Millis) -> Result<Verdict, StoreError> {
        let store = intake.input.store().cloned();
        let id = intake.input.id().clone();
        let fingerprint = intake.input.fingerprint();
        let key = (store.clone(), id.clone());
        let indexed = intake.input.is_event();
        let prior = match self.group.ids.get(&key) {
            _ if !indexed => None,
            Some(fp) => Some(*fp),
            None => self.store.fingerprint(store.as_ref(), &id)?,
        };
        match prior {
            Some(fp) if fp == fingerprint => return Ok(Verdict::Duplicate),
            Some(_) => {
                return Ok(Verdict::Rejected(Rejection::new(
                    ErrorCode::IdConflict,
                    format!("id {id} was already used for different content"),
                )))
            }
            None => {}
        }
        let voided = match intake.input.voided_sale() {
            Some((store, sale_id)) => match self.group.sales.get(&(store.clone(), sale_id.clone())) {
                Some(r) => Some(r.clone()),
                None => self.store.sale(store, sale_id)?,
            },
            None => None,
        };
        let outcome = match self.inv.apply(&intake.input, voided.as_ref(), now) {
            Ok(Some(outcome)) => outcome,
            Ok(None) => return Ok(Verdict::Unchanged),
            Err(rejection) => return Ok(Verdict::Rejected(rejection)),
        };
        let commit = self.group.open_commit(&self.store)?;
        if indexed {
            commit.event_id(store.as_ref(), &id, fingerprint, now)?;
        }
        commit.ledger(&outcome.entries)?;
        if let (Some(store), Some((sale_id, record))) = (&store, &outcome.sale) {
            commit.sale(store, sale_id, record)?;
        }
        if indexed {
            self.group.ids.insert(key, fingerprint);
        }
        if let (Some(store), Some((sale_id, record))) = (store, outcome.sale) {
            self.group.sales.insert((store, sale_id), record);
        }
        self.group.changes.merge(outcome.changes);
        Ok(Verdict::Applied)
    }

    /// Closes the open group: writes it to the journal with the current
    /// state of everything it changed, renders what it publishes, and hands
    /// it to the (idle) committer.
    async fn hand_over(&mut self, idle: OwnedSemaphorePermit) -> Result<(), StoreError> {
        let Group {
            commit,
            changes,
            decided,
            ..
        } = std::mem::take(&mut self.group);
        let mut commit = match commit {
            Some(commit) => commit,
            None => self.store.begin()?,
        };
        stage_changes(&mut commit, &self.inv, &changes)?;
        for (store, alert) in &changes.alerts {
            commit.alert(store, alert)?;
        }
        let now = Timestamp::now().0;
        let retained = render::changes(&self.inv, &changes, now, |doc| throttle(doc).is_some());
        // Webhook deliveries go into the same journal record as their cause.
        let mut deliveries = Vec::new();
        if let Some(webhooks) = &self.webhooks {
            let routed = crate::webhooks::outbox::route(webhooks.subscriptions(), self.inv.catalog(), &retained, now);
            for (endpoint, delivery) in routed {
                let seq = commit.webhook(webhooks.endpoint_id(endpoint), &delivery)?;
                deliveries.push((endpoint, seq, delivery));
            }
        }
        self.store.apply(commit)?;
        debug!(
            inputs = decided.len(),
            levels = changes.levels().count(),
            dishes = changes.dishes().count(),
            "group committed"
        );

        // Retained state first, so that a device holding its PUBACK already
        // finds the new availability; then the verdicts; then acks and errors.
        for (store, alert) in &changes.alerts {
            info!(%store, kind = ?alert.kind, state = ?alert.state, message = %alert.message, "alert");
            if alert.state == dishsync_protocol::payload::AlertState::Raised {
                crate::metrics::METRICS.alert_raised();
            }
        }
        crate::metrics::METRICS.group_committed(decided.len());
        let mut after = Vec::new();
        let mut acks: BTreeMap<(Option<StoreId>, DeviceId), Vec<EventId>> = BTreeMap::new();
        let mut replies = Vec::with_capacity(decided.len());
        for (intake, reply, verdict) in decided {
            let store = intake.input.store().cloned();
            match &verdict {
                Verdict::Applied | Verdict::Duplicate if intake.input.is_event() => {
                    acks.entry((store, intake.device.clone()))
                        .or_default()
                        .push(intake.input.id().clone());
                }
                Verdict::Applied | Verdict::Duplicate | Verdict::Unchanged => {}
                Verdict::Rejected(r) => {
                    let topic = intake.input.topic().to_string();
                    let id = Some(intake.input.id().to_string());
                    log_refusal(intake.input.store(), &intake.device, &topic, id.as_deref(), r);
                    after.extend(render::error(intake.input.store(), &intake.device, &topic, id, r));
                }
            }
            replies.push((reply, verdict));
        }
        for ((store, device), ids) in acks {
            after.extend(render::acks(store, device, ids));
        }
        // Whole-store documents, at most once per interval each.
        self.mark_due(&changes);
        after.extend(self.render_due());
        let completion = Completion {
            retained,
            replies,
            after,
            deliveries,
            _idle: idle,
        };
        if self.committer.send(completion).await.is_err() {
            error!("the committer stopped; stopping the broker");
            self.store.fail("the committer stopped".into());
        }
        Ok(())
    }

    fn mark_due(&mut self, changes: &Changes) {
        self.due
            .extend(changes.publish.iter().filter(|doc| throttle(doc).is_some()).cloned());
    }

    /// Renders the throttled documents that are due and whose interval
    /// passed.
    fn render_due(&mut self) -> Vec<Message> {
        let ready: Vec<Document> = self.ready_due().cloned().collect();
        let now = Instant::now();
        let mut out = Vec::new();
        for doc in ready {
            self.due.remove(&doc);
            out.extend(render::document(&self.inv, &doc, Timestamp::now().0));
            self.published.insert(doc, now);
        }
        out
    }

    /// Applies a batch and commits it as a group of its own (tests).
    #[cfg(test)]
    async fn process(&mut self, batch: Vec<Command>) -> Result<(), StoreError> {
        self.take_in(batch)?;
        let idle = self.idle().await;
        self.hand_over(idle).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use dishsync_inventory::catalog::{Dish, RecipeLine, Sku, StockParams, Store as StoreDef};
    use dishsync_inventory::Catalog;
    use dishsync_inventory::{Input, Retired, Shown};
    use dishsync_protocol::payload::{StockEventIn, StockKind};
    use dishsync_protocol::Topic;
    use dishsync_protocol::{BaseUnit, Unit};
    use proptest::prelude::*;

    /// Collects what the rules publish.
    #[derive(Default)]
    struct Collector(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl Publisher for Collector {
        async fn publish(&self, topic: &Topic, _payload: Vec<u8>, _retain: bool) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(topic.to_string());
            }
        }

        async fn retain(&self, _topic: &Topic, _payload: Vec<u8>) {}

        async fn deliver(&self, topic: &Topic, payload: Vec<u8>, _retained: bool) -> usize {
            self.publish(topic, payload, false).await;
            1
        }
    }

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("test id")
    }

    fn catalog() -> Arc<Catalog> {
        let sku = |name: &str, unit| Sku {
            id: id(name),
            name: name.into(),
            unit,
            pack: 1,
            shelf_life_days: None,
        };
        let params = StockParams {
            reorder_point: 1,
            par: 10,
            opening: None,
            unit_cost: None,
        };
        Arc::new(
            Catalog::new(
                vec![sku("a", BaseUnit::Pcs), sku("b", BaseUnit::G)],
                vec![Dish {
                    id: id("d"),
                    name: "d".into(),
                    low_mark: 1,
                    recipe: vec![
                        RecipeLine {
                            sku: id("a"),
                            per_portion: 1,
                        },
                        RecipeLine {
                            sku: id("b"),
                            per_portion: 10,
                        },
                    ],
                    category: None,
                    price: None,
                    external: Default::default(),
                }],
                vec![StoreDef {
                    id: id("s1"),
                    name: "s1".into(),
                    menu: vec![id("d")],
                    stock: [(id("a"), params), (id("b"), params)].into_iter().collect(),
                    training: false,
                }],
            )
            .expect("catalog"),
        )
    }

    /// The k-th distinct input of the pool: stock events of several kinds
    /// on two SKUs.
    fn pool(k: usize) -> Input {
        let kinds = [
            StockKind::Receive,
            StockKind::Consume,
            StockKind::Adjust,
            StockKind::Waste,
        ];
        let kind = kinds[k % kinds.len()];
        let (sku, unit) = if k.is_multiple_of(2) {
            ("a", Unit::Pcs)
        } else {
            ("b", Unit::G)
        };
        let qty = (k % 5 + 1) as f64
            * if kind == StockKind::Adjust && k.is_multiple_of(3) {
                -1.0
            } else {
                1.0
            };
        Input::Stock {
            store: id("s1"),
            sku: id(sku),
            event: StockEventIn {
                id: id(&format!("e{k}")),
                kind,
                qty,
                unit,
                at: Timestamp(1_700_000_000_000 + k as i64),
                device: id("dev"),
                reference: None,
                reason: (kind == StockKind::Waste).then(|| "spilt".to_string()),
            },
        }
    }

    fn open(dir: &std::path::Path) -> Rules {
        let store = Store::open(dir).expect("sled");
        let (inv, _) = Inventory::restore(catalog(), store.load().expect("load"), 0);
        Rules::new(inv, store, Arc::new(Collector::default()), None)
    }

    /// Runs `batches` of pool indices through the rules on a real store in
    /// `dir`, reopening everything after batch `restart_after`. A batch
    /// whose `hand_over` is false stays in the open group with the next one
    /// (as under load, while the committer is busy). Returns the verdicts,
    /// the inventory at the end and the inventory restored from the store.
    async fn run(
        dir: &std::path::Path,
        batches: &[(Vec<usize>, bool)],
        restart_after: usize,
    ) -> (Vec<Verdict>, Inventory, Inventory) {
        let mut rules = open(dir);
        let mut verdicts = Vec::new();
        let mut replies = Vec::new();
        for (i, (batch, hand_over)) in batches.iter().enumerate() {
            let mut commands = Vec::new();
            for &k in batch {
                let (tx, rx) = oneshot::channel();
                commands.push(Command::Intake(
                    Intake {
                        input: pool(k),
                        device: id("dev"),
                    },
                    tx,
                ));
                replies.push(rx);
            }
            rules.take_in(commands).expect("apply");
            if *hand_over || i == restart_after || i + 1 == batches.len() {
                let idle = rules.idle().await;
                rules.hand_over(idle).await.expect("commit");
                for rx in replies.drain(..) {
                    verdicts.push(rx.await.expect("verdict"));
                }
            }
            if i == restart_after {
                rules.shutdown().await.expect("shutdown");
                rules = open(dir);
            }
        }
        let inv = rules.inv.clone();
        rules.shutdown().await.expect("shutdown");
        let restored = open(dir);
        let restored_inv = restored.inv.clone();
        restored.shutdown().await.expect("shutdown");
        (verdicts, inv, restored_inv)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the batching, repetition and restarts, every id is applied
        /// exactly once: the state equals applying each distinct input once.
        #[test]
        fn any_input_applied_twice_counts_once(
            batches in prop::collection::vec((prop::collection::vec(0usize..12, 1..8), any::<bool>()), 1..8),
            restart_after in 0usize..8,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let (verdicts, inv, restored) = runtime.block_on(run(dir.path(), &batches, restart_after));

            let mut expected = Inventory::new(catalog(), 0);
            let mut first = std::collections::HashSet::new();
            let flat: Vec<usize> = batches.iter().flat_map(|(b, _)| b).copied().collect();
            for (n, &k) in flat.iter().enumerate() {
                if first.insert(k) {
                    let Input::Stock { store, sku, event } = pool(k) else { unreachable!("pool is stock events") };
                    expected.apply_stock(&store, &sku, &event, event.at.0).expect("valid input");
                    prop_assert_eq!(&verdicts[n], &Verdict::Applied);
                } else {
                    prop_assert_eq!(&verdicts[n], &Verdict::Duplicate);
                }
            }
            for sku in ["a", "b"] {
                let got = inv.level_out(&id("s1"), &id(sku)).map(|l| l.qty);
                let want = expected.level_out(&id("s1"), &id(sku)).map(|l| l.qty);
                prop_assert_eq!(got, want, "sku {}", sku);
                let reopened = restored.level_out(&id("s1"), &id(sku)).map(|l| l.qty);
                prop_assert_eq!(reopened, want, "sku {} after reopening", sku);
            }
        }
    }

    /// A retired request or transfer is cleared — an empty retained
    /// message — under every topic it was retained on.
    #[tokio::test]
    async fn a_retired_document_is_cleared_under_each_of_its_topics() {
        let inv = Inventory::new(catalog(), 0);
        let mut changes = Changes::default();
        changes.retire(Retired::Request {
            id: id("rq-s1-1"),
            store: id("s1"),
        });
        changes.retire(Retired::Transfer {
            id: id("tr-1"),
            from: id("s1"),
            to: id("s2"),
        });
        let out = render::changes(&inv, &changes, 0, |_| false);
        let cleared: Vec<(String, usize, bool)> = out
            .into_iter()
            .map(|m| (m.topic.to_string(), m.payload.len(), m.retain))
            .collect();
        let expected = [
            "stores/s1/replenishment/rq-s1-1",
            "hq/replenishment/rq-s1-1",
            "stores/s1/transfers/tr-1",
            "stores/s2/transfers/tr-1",
        ]
        .map(|topic| (topic.to_string(), 0, true));
        assert_eq!(cleared, expected);
    }

    /// A document's state goes to disk as the state itself, so a data
    /// directory written before documents were one type reads the same.
    #[test]
    fn a_document_is_stored_as_its_state_alone() {
        let mut inv = Inventory::new(catalog(), 0);
        inv.start(0);
        let (s1, a, d): (StoreId, dishsync_protocol::SkuId, dishsync_protocol::DishId) = (id("s1"), id("a"), id("d"));
        fn plain<T: serde::Serialize>(value: &T) -> Vec<u8> {
            postcard::to_allocvec(value).expect("encodes")
        }
        let bytes = |doc: &Document| plain(&doc.state(&inv).expect("a state"));
        assert_eq!(
            bytes(&Document::Sku(s1.clone(), a.clone())),
            plain(inv.sku_state(&s1, &a).expect("sku"))
        );
        assert_eq!(
            bytes(&Document::Dish(s1.clone(), d.clone())),
            plain(inv.dish_state(&s1, &d).expect("dish"))
        );
        assert_eq!(
            bytes(&Document::Menu(s1.clone())),
            plain(&inv.menu_state(&s1).expect("menu"))
        );
        assert_eq!(
            bytes(&Document::Plan(s1.clone())),
            plain(inv.plan_state(&s1).expect("plan"))
        );
        assert_eq!(bytes(&Document::Chain), plain(&inv.chain_state()));
        let (requests, transfers) = inv.documents();
        assert_eq!(bytes(&Document::Shown), plain(&Shown { requests, transfers }));
        assert!(Document::Summary(s1).state(&inv).is_none(), "published only");
    }

    /// Compaction leaves every level as it was, and an id inside its window
    /// is still a duplicate; one past it is applied again.
    #[tokio::test]
    async fn compaction_keeps_the_levels_and_the_ids_inside_their_window() {
        use crate::store::retention::{Compacted, Retention};
        let dir = tempfile::tempdir().expect("tempdir");
        let first: Vec<usize> = (0..12).collect();
        // Two runs: two ledger pages.
        let (mut verdicts, ..) = run(dir.path(), &[(first[..6].to_vec(), true)], usize::MAX).await;
        let (more, before, _) = run(dir.path(), &[(first[6..].to_vec(), true)], usize::MAX).await;
        verdicts.extend(more);
        assert!(verdicts.iter().all(|v| *v == Verdict::Applied));
        let levels = |inv: &Inventory| ["a", "b"].map(|sku| inv.level_out(&id("s1"), &id(sku)).map(|l| (l.qty, l.rev)));
        let compact = |retention: Retention| {
            let store = Store::open(dir.path()).expect("store");
            let done = store
                .compact::<crate::webhooks::DeadLetter>(&retention, Timestamp::now().0 + 1)
                .expect("compacts");
            let restored = store.load().expect("load");
            drop(store);
            (done, restored.len())
        };
        let every = std::time::Duration::from_secs(60);
        // The ledger goes (but its newest page); the ids stay.
        let (done, records) = compact(Retention {
            ledger: Some(std::time::Duration::ZERO),
            event_ids: Some(std::time::Duration::from_secs(86_400)),
            sales: None,
            dead_letters: None,
            every,
        });
        assert_eq!(done.event_ids, 0);
        assert_eq!(done.ledger_lines, 6, "the first run's page");
        assert!(records > 0);
        let (verdicts, after, restored) = run(dir.path(), &[(first.clone(), true)], usize::MAX).await;
        assert!(verdicts.iter().all(|v| *v == Verdict::Duplicate), "{verdicts:?}");
        assert_eq!(levels(&after), levels(&before));
        assert_eq!(levels(&restored), levels(&before));
        // Past the ids' window, the same inputs are new again.
        let (done, _) = compact(Retention {
            ledger: None,
            event_ids: Some(std::time::Duration::ZERO),
            sales: None,
            dead_letters: None,
            every,
        });
        assert_eq!(
            done,
            Compacted {
                event_ids: first.len() as u64,
                ..Compacted::default()
            }
        );
        let (verdicts, ..) = run(dir.path(), &[(vec![0], true)], usize::MAX).await;
        assert_eq!(verdicts, vec![Verdict::Applied]);
    }

    #[tokio::test]
    async fn a_reused_id_with_other_content_is_refused_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (verdicts, _, _) = run(dir.path(), &[(vec![0], true), (vec![0], true)], 0).await;
        assert_eq!(verdicts, vec![Verdict::Applied, Verdict::Duplicate]);
        // `run` shut its rules down; the store is free to reopen.
        let mut rules = open(dir.path());
        let Input::Stock { store, sku, mut event } = pool(0) else {
            unreachable!("stock event")
        };
        event.qty += 1.0;
        let (tx, rx) = oneshot::channel();
        rules
            .process(vec![Command::Intake(
                Intake {
                    input: Input::Stock { store, sku, event },
                    device: id("dev"),
                },
                tx,
            )])
            .await
            .expect("commit");
        let verdict = rx.await.expect("verdict");
        assert!(matches!(verdict, Verdict::Rejected(r) if r.code == ErrorCode::IdConflict));
    }
}
