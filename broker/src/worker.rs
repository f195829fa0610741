//! Worker mode: the same rules attached as an MQTT client to an external
//! broker (EMQX, HiveMQ, VerneMQ, mosquitto — anything MQTT), which is how a
//! chain outgrows one machine (DESIGN §7): each worker owns the stores of
//! its configuration and its own data directory.
//!
//! The worker subscribes to the inputs of its stores at QoS 1 with a
//! persistent session and acknowledges each one to the external broker only
//! after the rules committed or refused it, so inputs that arrive while it
//! is down or restarting wait in that broker. It publishes every output
//! (retained documents, acks, errors, alerts) there, over the same
//! connection and in the same order as the embedded broker delivers them.
//!
//! What changes for devices: the external broker's PUBACK no longer means
//! "applied" — the end-to-end ack on `stores/{store}/acks/{device}` does,
//! and the dishsync client already waits for it. The external broker
//! enforces who may publish what; the worker acks and reports errors to the
//! device an input names (`device` or `by`, or the device in the topic).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dishsync_protocol::topic::pattern;
use dishsync_protocol::{StoreId, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::metrics::METRICS;
use crate::outbound::Publisher;
use crate::rules::{self, report, Intake, RulesHandle, Verdict};
use crate::server::{compact_history, republish_all, restore};
use dishsync_inventory::{salvage_id, Input};

/// Where the worker attaches.
#[derive(Debug, Clone)]
pub struct Attach {
    /// The external broker's host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The worker's client id: stable, so its persistent session (and the
    /// inputs queued in it) survive a restart.
    pub client_id: String,
    /// Username and password at the external broker.
    pub credentials: Option<(String, String)>,
}

/// Inputs in flight between the external broker and the rules.
const PIPELINE: usize = 1_024;

/// Every topic a store's devices send the rules on.
pub(crate) const STORE_INPUTS: [dishsync_protocol::topic::Pattern; 10] = [
    pattern::STOCK_EVENTS,
    pattern::SALES,
    pattern::DISH_OVERRIDE,
    pattern::SCALE_WEIGHT,
    pattern::TRANSFER_REQUEST,
    pattern::TRANSFER_ACTION,
    pattern::DEVICE_STATUS,
    pattern::PROBE_TEMPERATURE,
    pattern::PROBE_DISCARD,
    pattern::PROBE_KEEP,
];

/// The input filters of the stores the worker owns.
fn input_filters(settings: &Settings) -> Vec<String> {
    let mut filters = vec![pattern::REQUEST_ACTION.filter(None, None)];
    for store in settings.catalog.stores() {
        filters.extend(STORE_INPUTS.map(|p| p.filter(Some(&store.id), None)));
    }
    filters
}

/// Runs the rules attached to the external broker until the process is
/// stopped. Prints one line, `dishsync-broker attached to mqtt://HOST:PORT`,
/// once it is subscribed (the first time).
pub async fn run(settings: Settings, attach: Attach) -> anyhow::Result<()> {
    // The HTTP listener first: a long restore is "alive, not ready"; ready
    // once the worker is subscribed at the external broker.
    let readiness = crate::web::Readiness::new(settings.data_dir.clone());
    let web_task = crate::web::open(
        settings.web,
        crate::server::web_tls(&settings)?,
        readiness.clone(),
        None,
    )
    .await?;
    let (store, inventory) = restore(&settings, &readiness, None).await?;
    let mut opts = MqttOptions::new(attach.client_id.clone(), attach.host.clone(), attach.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(settings.max_packet_size as usize, 1 << 20);
    opts.set_inflight(100);
    if let Some((user, pass)) = &attach.credentials {
        opts.set_credentials(user.clone(), pass.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);

    // The connection task only ever polls: it must never wait for the rules,
    // which may be waiting for it to send what they publish. So inputs queue
    // unbounded: as many as the external broker sends before the worker
    // acknowledges them (its in-flight window, or more of a backlog queued
    // while the worker was down — some hundred bytes each).
    let (inputs_tx, mut inputs) = mpsc::unbounded_channel::<Publish>();
    let filters = input_filters(&settings);
    let subscriber = client.clone();
    let external = format!("{}:{}", attach.host, attach.port);
    let attached = readiness.clone();
    tokio::spawn(async move {
        let mut subacks = 0;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    info!(session_present = ack.session_present, "attached");
                    // QoS 1, not 2: the inputs' ids make them exactly-once, and
                    // rumqttc keeps a QoS 2 exchange in memory only, so after a
                    // restart the broker's PUBREL for an input received before
                    // the crash is an error to it, on every reconnect.
                    for filter in &filters {
                        if let Err(e) = subscriber.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            error!(%filter, error = %e, "cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks == filters.len() {
                        // Ready once the state is restored too (which never
                        // waits for this task: it keeps polling).
                        let attached = attached.clone();
                        let external = external.clone();
                        tokio::spawn(async move {
                            attached.until_restored().await;
                            attached.listening();
                            println!("dishsync-broker attached to mqtt://{external}");
                        });
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if inputs_tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "the external broker is unreachable; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    let out = Arc::new(Attached { client: client.clone() });
    republish_all(&*out, &inventory).await;
    let storage = store.clone();
    let rules = start_rules(&settings, &readiness, store, inventory, out.clone())?;

    // Each input is acknowledged to the external broker, in the order it
    // came, once its verdict is in: a crash before that leaves it with the
    // external broker, which sends it again.
    let (verdicts_tx, mut verdicts) = mpsc::channel::<(Publish, Option<oneshot::Receiver<Verdict>>)>(PIPELINE);
    let acker = tokio::spawn(async move {
        while let Some((publish, verdict)) = verdicts.recv().await {
            if let Some(verdict) = verdict {
                let verdict = verdict.await;
                if let Ok(verdict) = &verdict {
                    METRICS.input("worker", verdict);
                }
                if verdict.is_err() {
                    error!("the rules stopped before deciding an input; stopping");
                    return;
                }
            }
            if let Err(e) = client.ack(&publish).await {
                warn!(error = %e, "acknowledging an input to the external broker failed");
            }
        }
    });
    let owned: HashSet<StoreId> = settings.catalog.stores().map(|s| s.id.clone()).collect();
    let mut failed = std::pin::pin!(storage.failed());
    let mut web_task = web_task;
    loop {
        let publish = tokio::select! {
            publish = inputs.recv() => match publish {
                Some(publish) => publish,
                None => break,
            },
            // A failed write stops the worker; the external broker keeps
            // what was not acknowledged.
            what = &mut failed => return Err(crate::store::StorageFailed(what).into()),
            served = &mut web_task => return web_stopped(served),
        };
        let verdict = route(&rules, &*out, &owned, &publish.topic, &publish.payload).await;
        if verdicts_tx.send((publish, verdict)).await.is_err() {
            break;
        }
    }
    drop(verdicts_tx);
    let _ = acker.await;
    stopped(&storage)
}

/// Starts the rules of a worker on `store` and `inventory`, publishing
/// through `out`, and tells `readiness` they run. Webhooks leave from the
/// worker, which holds the commits they are queued in; their alerts go out
/// through `out` too.
pub(crate) fn start_rules(
    settings: &Settings,
    readiness: &crate::web::Readiness,
    store: crate::store::Store,
    inventory: dishsync_inventory::Inventory,
    out: Arc<dyn Publisher>,
) -> anyhow::Result<RulesHandle> {
    let webhooks = crate::server::start_webhooks(settings, &store, out.clone())?;
    let storage = store.clone();
    let rules = rules::start(inventory, store, out, webhooks);
    readiness.restored(storage.clone(), rules.clone());
    compact_history(&storage, settings);
    Ok(rules)
}

/// Why a worker's web listener ended the worker.
pub(crate) fn web_stopped(served: Result<std::io::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match served {
        Ok(result) => result.map_err(|e| anyhow::anyhow!("serving HTTP: {e}")),
        Err(e) => Err(anyhow::anyhow!("the web listener stopped: {e}")),
    }
}

/// How a worker whose inputs ended stops: the rules stop on a failed
/// commit, and then it says so, not that all went well.
pub(crate) fn stopped(storage: &crate::store::Store) -> anyhow::Result<()> {
    match storage.failure() {
        Some(what) => Err(crate::store::StorageFailed(what).into()),
        None => Ok(()),
    }
}

/// Hands one input to the rules (or reports why it cannot be applied);
/// the verdict to wait for before acknowledging it, if any. An input for a
/// store the worker does not own (the central kitchen's action on another
/// region's request) is another worker's: passed over.
pub(crate) async fn route(
    rules: &RulesHandle,
    out: &dyn Publisher,
    owned: &HashSet<StoreId>,
    topic_name: &str,
    payload: &[u8],
) -> Option<oneshot::Receiver<Verdict>> {
    let topic = match topic_name.parse::<Topic>() {
        Ok(topic) => topic,
        Err(e) => {
            warn!(topic = %topic_name, error = %e, "ignored a message outside the contract");
            return None;
        }
    };
    if let Topic::DeviceStatus { device, .. } = &topic {
        match payload {
            b"online" => rules.presence(device.clone(), true).await,
            b"offline" => rules.presence(device.clone(), false).await,
            _ => warn!(%topic, "ignored a device status that is neither online nor offline"),
        }
        return None;
    }
    match Input::decode(&topic, payload) {
        Ok(input) if input.is_moving_reading() => None,
        // A chain-wide input (a promotion's plan) names no store; the
        // workers split the chain by store, so none of them takes it.
        Ok(input) if !input.store().is_some_and(|store| owned.contains(store)) => None,
        Ok(input) => match input.actor() {
            Some(device) => rules.submit(Intake { input, device }).await,
            None => {
                warn!(%topic, id = %input.id(), "ignored an input that names no device");
                None
            }
        },
        Err(rejection) => {
            METRICS.refused("worker", rejection.code);
            let in_topic = match &topic {
                Topic::ScaleWeight { device, .. } | Topic::ProbeTemperature { device, .. } => Some(device.clone()),
                _ => None,
            };
            let device = in_topic.or_else(|| {
                serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v["device"].as_str().or(v["by"].as_str()).and_then(|d| d.parse().ok()))
            });
            match (topic.store(), device) {
                (Some(store), Some(device)) => {
                    report(out, Some(store), &device, topic_name, salvage_id(payload), &rejection).await
                }
                _ => warn!(%topic, reason = %rejection.message, "input rejected"),
            }
            None
        }
    }
}

/// The rules' messages, published on the external broker. A retained
/// document published there ([`Publisher::retain`]) reaches its current
/// subscribers too, so the deliverer's copy of it is not sent again.
pub(crate) struct Attached {
    pub(crate) client: AsyncClient,
}

#[async_trait]
impl Publisher for Attached {
    async fn publish(&self, topic: &Topic, payload: Vec<u8>, retain: bool) {
        if let Err(e) = self
            .client
            .publish(topic.to_string(), QoS::AtLeastOnce, retain, payload)
            .await
        {
            warn!(%topic, error = %e, "publishing on the external broker failed");
        }
    }

    async fn retain(&self, topic: &Topic, payload: Vec<u8>) {
        self.publish(topic, payload, true).await;
    }

    async fn deliver(&self, topic: &Topic, payload: Vec<u8>, retained: bool) -> usize {
        if !retained {
            self.publish(topic, payload, false).await;
        }
        0
    }
}
