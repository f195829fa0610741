//! The device client: a typed API over rumqttc with a durable outbox.
//!
//! [`Client::start`] opens the outbox and spawns one connection task that
//! owns the MQTT connection. Recording calls ([`Client::record_stock`],
//! [`Client::record_sale`], …) write to the outbox, flush it, and return the
//! event id; the task publishes the outbox in order at QoS 2, removes an entry
//! only when its id appears on `stores/{store}/acks/{device}`, and re-sends
//! every unacknowledged entry after a reconnect or when acks stop coming. The
//! broker applies an id at most once, so this is exactly-once.
//!
//! An input the broker *rejects* (its id on `stores/{store}/errors/{device}`)
//! will never be accepted: it leaves the outbox and is reported as
//! [`Update::Rejected`]. Only `unavailable` (the broker was stopping) is kept
//! and re-sent.
//!
//! The task also keeps the device's presence (`online` on connect, `offline`
//! as last will and on shutdown) and delivers typed [`Update`]s for what the
//! client watches, dropping any copy with an older `rev` than already seen.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dishsync_protocol::payload::{
    AckOut, ActionIn, AlertOut, CatalogOut, DishAvailabilityOut, ErrorCode, ErrorOut, LevelOut, OverrideIn,
    OverrideStatus, RequestOut, SaleIn, SaleLine, StockEventIn, StockKind, StoreAvailabilityOut, Timestamp,
    TransferOut, TransferRequestIn, WeightIn,
};
use dishsync_protocol::topic::{pattern, RequestAction, TransferAction};
use dishsync_protocol::{DeviceId, DishId, DocId, EventId, Published, SkuId, StoreId, Topic, Unit};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::outbox::{Entry, Outbox, OutboxError, Recorded};

/// Unacknowledged messages on the wire at once.
const WINDOW: usize = 256;

/// What the client watches besides its own acks and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Watch {
    /// Every dish's availability in the store.
    Availability,
    /// The store's whole-menu document.
    Menu,
    /// Every SKU's level in the store.
    Levels,
    /// The store's alerts.
    Alerts,
    /// The store's replenishment requests; for an HQ device (the central
    /// kitchen), every store's.
    Requests,
    /// Transfers to and from the store.
    Transfers,
    /// The store's catalog: names, categories, order and prices of its
    /// dishes, its SKUs, its local time offset.
    Catalog,
}

impl Watch {
    /// The topic filter for `store`; `hq` for a device of HQ.
    fn filter(self, store: &StoreId, hq: bool) -> String {
        let pattern = match self {
            Watch::Availability => pattern::DISH_AVAILABILITY,
            Watch::Menu => pattern::STORE_AVAILABILITY,
            Watch::Levels => pattern::STOCK_LEVEL,
            Watch::Alerts => pattern::ALERTS,
            Watch::Requests if hq => pattern::HQ_REQUEST,
            Watch::Requests => pattern::STORE_REQUEST,
            Watch::Transfers => pattern::TRANSFER,
            Watch::Catalog => pattern::CATALOG,
        };
        pattern.filter(Some(store), None)
    }
}

/// How to reach the broker and who this device is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The store this device belongs to.
    pub store: StoreId,
    /// This device; also its MQTT client id.
    pub device: DeviceId,
    /// Username and password, when the broker requires them.
    pub credentials: Option<(String, String)>,
    /// TLS, when the broker's TLS listener is used.
    pub tls: Option<TlsSettings>,
    /// Where the outbox lives (one directory per device).
    pub outbox_dir: PathBuf,
    /// Most messages the outbox holds before recording fails.
    pub outbox_limit: usize,
    /// Re-send what is unacknowledged when no ack arrived for this long.
    pub ack_timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// What to deliver as [`Update`]s.
    pub watch: Vec<Watch>,
    /// An HQ-level device (central kitchen, HQ): its acks and errors come
    /// under whichever store an input concerns.
    pub hq: bool,
    /// Announce `online` on every connect (the device's own presence). A
    /// bridge that speaks for a device turns this off and reports the
    /// device's own link with [`Client::set_presence`].
    pub presence: bool,
}

impl ClientConfig {
    /// A configuration with sensible defaults for everything but identity.
    pub fn new(host: impl Into<String>, port: u16, store: StoreId, device: DeviceId, outbox_dir: PathBuf) -> Self {
        ClientConfig {
            host: host.into(),
            port,
            store,
            device,
            credentials: None,
            tls: None,
            outbox_dir,
            outbox_limit: 100_000,
            ack_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(10),
            watch: Vec::new(),
            hq: false,
            presence: true,
        }
    }
}

/// TLS to the broker: the CA to trust, and optionally this device's
/// certificate and key (PEM) when the broker requires client certificates.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// CA certificate(s) that signed the broker's certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// This device's certificate chain and private key (PEM).
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

/// What failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The outbox refused or failed; nothing was recorded.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The input is invalid before it is even sent.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The connection task has stopped.
    #[error("the client has stopped")]
    Stopped,
}

/// Something the client learned from the broker. More kinds may be added:
/// match with a catch-all arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Update {
    /// The connection is up (true) or down (false).
    Connected(bool),
    /// These recorded ids are committed by the broker.
    Acked(Vec<EventId>),
    /// The broker refused a recorded input; it has left the outbox.
    Rejected(ErrorOut),
    /// A dish's availability changed.
    Availability(DishAvailabilityOut),
    /// The store's catalog (at connect, and after a broker restart).
    Catalog(CatalogOut),
    /// The whole-menu document changed.
    Menu(StoreAvailabilityOut),
    /// A SKU's level changed.
    Level(LevelOut),
    /// An alert was raised or cleared.
    Alert(AlertOut),
    /// A replenishment request changed.
    Request(RequestOut),
    /// A transfer changed.
    Transfer(TransferOut),
    /// A finished request or transfer is no longer shown: the broker
    /// cleared its retained document a day after it finished.
    Cleared(DocId),
}

/// A handle to a running device client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    outbox: Outbox,
    wake: Arc<Notify>,
    /// Best-effort messages (presence, readings) for the connection task.
    live: mpsc::Sender<(String, Vec<u8>, QoS, bool)>,
    stop: watch::Sender<bool>,
    connected: watch::Receiver<bool>,
    /// Messages in the outbox, updated on every record and ack.
    pending: Arc<watch::Sender<usize>>,
}

impl Client {
    /// Opens the outbox and starts the connection task. Returns the handle
    /// and the stream of [`Update`]s. Works with the broker down: recording
    /// goes to the outbox and is sent once the broker is reachable.
    pub fn start(config: ClientConfig) -> Result<(Client, mpsc::UnboundedReceiver<Update>), ClientError> {
        let outbox = Outbox::open(&config.outbox_dir, config.outbox_limit)?;
        let config = Arc::new(config);
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let pending = Arc::new(watch::Sender::new(outbox.len()));
        let (live, live_rx) = mpsc::channel(256);
        let task = Connection {
            live: live_rx,
            states: HashMap::new(),
            unsent: HashMap::new(),
            pending: Arc::clone(&pending),
            config: Arc::clone(&config),
            outbox: outbox.clone(),
            wake: Arc::clone(&wake),
            stop: stop_rx,
            connected: connected_tx,
            updates: updates_tx,
            revs: HashMap::new(),
        };
        tokio::spawn(task.run());
        Ok((
            Client {
                config,
                outbox,
                wake,
                live,
                stop,
                connected,
                pending,
            },
            updates,
        ))
    }

    fn record(&self, topic: Topic, payload: impl FnOnce(&EventId) -> Vec<u8>) -> Result<EventId, ClientError> {
        if *self.stop.borrow() {
            return Err(ClientError::Stopped);
        }
        let id = self.outbox.record(topic.to_string(), payload)?;
        self.pending.send_replace(self.outbox.len());
        self.wake.notify_one();
        Ok(id)
    }

    fn json<T: serde::Serialize>(doc: &T) -> Vec<u8> {
        serde_json::to_vec(doc).unwrap_or_default()
    }

    /// Records a stock event for `sku`.
    pub fn record_stock(
        &self,
        sku: &SkuId,
        kind: StockKind,
        qty: f64,
        unit: Unit,
        reason: Option<String>,
        reference: Option<String>,
    ) -> Result<EventId, ClientError> {
        if !qty.is_finite() {
            return Err(ClientError::Invalid(format!("quantity {qty} is not a number")));
        }
        let topic = Topic::StockEvents {
            store: self.config.store.clone(),
            sku: sku.clone(),
        };
        let device = self.config.device.clone();
        let at = Timestamp::now();
        self.record(topic, |id| {
            Self::json(&StockEventIn {
                id: id.clone(),
                kind,
                qty,
                unit,
                at,
                device,
                reference,
                reason,
            })
        })
    }

    /// Records a sale of `lines` (dish, portions): a sale that happened,
    /// recorded even if the stock goes negative.
    pub fn record_sale(&self, lines: &[(DishId, u32)]) -> Result<EventId, ClientError> {
        self.sale(lines, false)
    }

    /// Records a guarded sale of `lines`: the broker applies it only if
    /// every line's portions are available when it arrives, atomically
    /// across every POS of the store; otherwise it is refused
    /// (`insufficient_stock`, an [`Update::Rejected`] with the portions
    /// left) and nothing is sold.
    pub fn record_guarded_sale(&self, lines: &[(DishId, u32)]) -> Result<EventId, ClientError> {
        self.sale(lines, true)
    }

    fn sale(&self, lines: &[(DishId, u32)], guarded: bool) -> Result<EventId, ClientError> {
        if lines.is_empty() {
            return Err(ClientError::Invalid("a sale needs at least one line".into()));
        }
        let lines: Vec<SaleLine> = lines
            .iter()
            .map(|(dish, portions)| SaleLine {
                dish: dish.clone(),
                portions: *portions,
            })
            .collect();
        let device = Some(self.config.device.clone());
        let at = Some(Timestamp::now());
        self.record(
            Topic::Sales {
                store: self.config.store.clone(),
            },
            |id| {
                Self::json(&SaleIn {
                    id: id.clone(),
                    lines: Some(lines),
                    void: None,
                    at,
                    device,
                    guarded,
                })
            },
        )
    }

    /// Records a void of the sale `sale`.
    pub fn record_void(&self, sale: &EventId) -> Result<EventId, ClientError> {
        let device = Some(self.config.device.clone());
        let at = Some(Timestamp::now());
        self.record(
            Topic::Sales {
                store: self.config.store.clone(),
            },
            |id| {
                Self::json(&SaleIn {
                    id: id.clone(),
                    lines: None,
                    void: Some(sale.clone()),
                    at,
                    device,
                    guarded: false,
                })
            },
        )
    }

    /// Records a chef's 86 (`SoldOut`, optionally until a time) or its
    /// release (`Auto`).
    pub fn record_override(
        &self,
        dish: &DishId,
        status: OverrideStatus,
        until: Option<Timestamp>,
        note: Option<String>,
    ) -> Result<EventId, ClientError> {
        let topic = Topic::DishOverride {
            store: self.config.store.clone(),
            dish: dish.clone(),
        };
        let by = self.config.device.clone();
        self.record(topic, |id| {
            Self::json(&OverrideIn {
                id: id.clone(),
                status,
                by,
                until,
                note,
            })
        })
    }

    /// Records a stock event under an id the caller made (a bridge speaking
    /// for a device uses `{device}:{boot}:{seq}`, so that a retransmit after
    /// any restart is applied once). A retransmit, waiting or already
    /// acknowledged, records nothing and keeps the first stamp; the same id
    /// with other content is refused with [`OutboxError::Conflict`].
    pub fn record_stock_as(
        &self,
        id: &EventId,
        sku: &SkuId,
        kind: StockKind,
        qty: f64,
        unit: Unit,
        reason: Option<String>,
    ) -> Result<Recorded, ClientError> {
        if *self.stop.borrow() {
            return Err(ClientError::Stopped);
        }
        let topic = Topic::StockEvents {
            store: self.config.store.clone(),
            sku: sku.clone(),
        };
        // What the device said; the stamp is added once, at the first
        // recording, and kept for every retransmit.
        let content = format!("{sku}|{kind:?}|{qty}|{unit}|{}", reason.as_deref().unwrap_or(""));
        let recorded = self.outbox.record_once(id, topic.to_string(), content.as_bytes(), || {
            Self::json(&StockEventIn {
                id: id.clone(),
                kind,
                qty,
                unit,
                at: Timestamp::now(),
                device: self.config.device.clone(),
                reference: None,
                reason,
            })
        })?;
        if recorded == Recorded::New {
            self.pending.send_replace(self.outbox.len());
            self.wake.notify_one();
        }
        Ok(recorded)
    }

    /// Publishes the device's presence now (retained), when connected. Not
    /// durable: presence is a state, re-sent on every change.
    pub fn set_presence(&self, online: bool) {
        let topic = Topic::DeviceStatus {
            store: self.config.store.clone(),
            device: self.config.device.clone(),
        };
        let payload = if online {
            b"online".to_vec()
        } else {
            b"offline".to_vec()
        };
        let _ = self.live.try_send((topic.to_string(), payload, QoS::AtLeastOnce, true));
    }

    /// Publishes a scale reading now (QoS 0, not durable: the next reading
    /// replaces it).
    pub fn publish_weight(&self, grams: i64, stable: bool) {
        let topic = Topic::ScaleWeight {
            store: self.config.store.clone(),
            device: self.config.device.clone(),
        };
        let reading = WeightIn {
            grams,
            at: Timestamp::now(),
            stable,
        };
        let _ = self
            .live
            .try_send((topic.to_string(), Self::json(&reading), QoS::AtMostOnce, false));
    }

    /// Records a request for stock from another store.
    pub fn record_transfer_request(&self, sku: &SkuId, qty: f64, unit: Unit) -> Result<EventId, ClientError> {
        if !qty.is_finite() || qty <= 0.0 {
            return Err(ClientError::Invalid(format!("quantity {qty} must be positive")));
        }
        let by = self.config.device.clone();
        let sku = sku.clone();
        self.record(
            Topic::TransferRequest {
                store: self.config.store.clone(),
            },
            |id| {
                Self::json(&TransferRequestIn {
                    id: id.clone(),
                    sku,
                    qty,
                    unit,
                    by,
                })
            },
        )
    }

    /// Records this store's action on a transfer.
    pub fn record_transfer_action(
        &self,
        transfer: &DocId,
        action: TransferAction,
        note: Option<String>,
    ) -> Result<EventId, ClientError> {
        let topic = Topic::TransferAction {
            store: self.config.store.clone(),
            id: transfer.clone(),
            action,
        };
        self.record_action(topic, note)
    }

    /// Records the central kitchen's action on a replenishment request.
    pub fn record_request_action(
        &self,
        request: &DocId,
        action: RequestAction,
        note: Option<String>,
    ) -> Result<EventId, ClientError> {
        let topic = Topic::RequestAction {
            id: request.clone(),
            action,
        };
        self.record_action(topic, note)
    }

    /// Records an action on a document (`{"id", "by", "note?"}` on `topic`),
    /// by this device.
    fn record_action(&self, topic: Topic, note: Option<String>) -> Result<EventId, ClientError> {
        let by = self.config.device.clone();
        self.record(topic, |id| {
            Self::json(&ActionIn {
                id: id.clone(),
                by,
                note,
            })
        })
    }

    /// Messages recorded and not yet acknowledged.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The ids of the messages waiting for their ack, in recording order.
    /// Each of them ends in exactly one [`Update::Acked`] or
    /// [`Update::Rejected`], sent once the outbox has let it go.
    pub fn pending_ids(&self) -> Result<Vec<EventId>, ClientError> {
        Ok(self.outbox.pending()?.into_iter().map(|(_, entry)| entry.id).collect())
    }

    /// Whether `id` is still waiting for its ack.
    pub fn is_pending(&self, id: &EventId) -> bool {
        self.outbox.contains(id)
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the outbox is empty or `timeout` passes; returns how many
    /// messages still wait.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let mut pending = self.pending.subscribe();
        let _ = tokio::time::timeout(timeout, pending.wait_for(|n| *n == 0)).await;
        self.outbox.len()
    }

    /// Stops the client: waits up to `timeout` for the outbox to drain,
    /// announces `offline`, disconnects. Returns how many messages still
    /// wait (they stay in the outbox for the next start).
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let left = self.drain(timeout).await;
        let _ = self.stop.send(true);
        self.wake.notify_one();
        let _ = self.outbox.flush();
        left
    }
}

/// The connection task's state.
struct Connection {
    config: Arc<ClientConfig>,
    outbox: Outbox,
    wake: Arc<Notify>,
    live: mpsc::Receiver<(String, Vec<u8>, QoS, bool)>,
    /// Retained states set through `live`, re-published on every connect.
    states: HashMap<String, Vec<u8>>,
    /// The latest reading per topic made while disconnected.
    unsent: HashMap<String, (Vec<u8>, QoS)>,
    stop: watch::Receiver<bool>,
    connected: watch::Sender<bool>,
    pending: Arc<watch::Sender<usize>>,
    updates: mpsc::UnboundedSender<Update>,
    /// Highest `rev` seen per watched topic.
    revs: HashMap<String, u64>,
}

/// What one connection attempt ended with.
enum Ended {
    Stopped,
    Lost,
}

impl Connection {
    fn status_topic(&self) -> String {
        Topic::DeviceStatus {
            store: self.config.store.clone(),
            device: self.config.device.clone(),
        }
        .to_string()
    }

    fn options(&self) -> MqttOptions {
        let c = &self.config;
        let mut opts = MqttOptions::new(c.device.as_str(), c.host.clone(), c.port);
        opts.set_keep_alive(Duration::from_secs(15));
        opts.set_clean_session(true);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_request_channel_capacity(WINDOW * 2 + 16);
        opts.set_inflight(100);
        opts.set_last_will(LastWill::new(self.status_topic(), "offline", QoS::AtLeastOnce, true));
        if let Some((user, pass)) = &c.credentials {
            opts.set_credentials(user.clone(), pass.clone());
        }
        if let Some(tls) = &c.tls {
            // More than one rustls crypto provider may be compiled in; pick
            // one explicitly (a no-op when one is already installed).
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
                ca: tls.ca_pem.clone(),
                alpn: None,
                client_auth: tls.client_cert.clone(),
            }));
        }
        opts
    }

    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (client, mut eventloop) = AsyncClient::new(self.options(), WINDOW * 2 + 16);
            // Acks, PUBRELs and events are small and often written while an
            // earlier one is unacknowledged: with Nagle's algorithm each such
            // write waits for the broker's delayed ACK (40 ms on Linux).
            let mut network = eventloop.network_options();
            network.set_tcp_nodelay(true);
            eventloop.set_network_options(network);
            match self.session(&client, eventloop).await {
                Ended::Stopped => {
                    let _ = client.try_publish(self.status_topic(), QoS::AtLeastOnce, true, "offline");
                    let _ = client.try_disconnect();
                    info!(device = %self.config.device, "client stopped");
                    return;
                }
                Ended::Lost => {
                    let _ = self.connected.send(false);
                    let _ = self.updates.send(Update::Connected(false));
                }
            }
            let stopped = tokio::select! {
                _ = tokio::time::sleep(backoff) => false,
                _ = self.stop.changed() => true,
            };
            if stopped || *self.stop.borrow() {
                return;
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// One connection, from CONNECT until it is lost or the client stops.
    async fn session(&mut self, client: &AsyncClient, mut eventloop: EventLoop) -> Ended {
        // rumqttc's `poll` is not cancel-safe while it connects: dropped in
        // a `select!` when another branch wins (a reading, the outbox's
        // wake-up), it abandons the half-made connection and the next poll
        // opens another — the broker sees a login, then the same client id
        // taking it over. So the event loop runs on its own, and the session
        // selects on what it reports.
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let lost = event.is_err();
                if events_tx.send(event).is_err() || lost {
                    return;
                }
            }
        });
        let _poller = AbortOnDrop(poller);
        let store = self.config.store.clone();
        let device = self.config.device.clone();
        // Where acks and errors arrive: the device's store, or any store for
        // an HQ device.
        let (acks, errors) = if self.config.hq {
            (
                pattern::ACKS.filter(None, Some(&device)),
                pattern::ERRORS.filter(None, Some(&device)),
            )
        } else {
            (
                Topic::Acks {
                    store: store.clone(),
                    device: device.clone(),
                }
                .to_string(),
                Topic::Errors {
                    store: store.clone(),
                    device: device.clone(),
                }
                .to_string(),
            )
        };
        let is_ack = |t: &str| matches!(t.parse::<Topic>(), Ok(Topic::Acks { device: d, .. }) if d == device);
        let is_error = |t: &str| matches!(t.parse::<Topic>(), Ok(Topic::Errors { device: d, .. }) if d == device);
        // Sequence numbers sent on this connection and not yet acknowledged.
        let mut in_flight: BTreeMap<u64, EventId> = BTreeMap::new();
        let mut last_sent: Option<u64> = None;
        let mut last_progress = Instant::now();
        let mut up = false;
        loop {
            if *self.stop.borrow() {
                return Ended::Stopped;
            }
            let ack_deadline = last_progress + self.config.ack_timeout;
            tokio::select! {
                event = events.recv() => match event.unwrap_or(Err(ConnectionError::RequestsDone)) {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        up = true;
                        let _ = self.connected.send(true);
                        let _ = self.updates.send(Update::Connected(true));
                        let _ = client.try_subscribe(&acks, QoS::AtLeastOnce);
                        let _ = client.try_subscribe(&errors, QoS::AtLeastOnce);
                        for w in &self.config.watch {
                            let _ = client.try_subscribe(w.filter(&store, self.config.hq), QoS::AtLeastOnce);
                        }
                        if self.config.presence {
                            let _ = client.try_publish(self.status_topic(), QoS::AtLeastOnce, true, "online");
                        }
                        for (topic, payload) in &self.states {
                            let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, true, payload.clone());
                        }
                        for (topic, (payload, qos)) in self.unsent.drain() {
                            let _ = client.try_publish(topic, qos, false, payload);
                        }
                        info!(%device, "connected; {} message(s) in the outbox", self.outbox.len());
                        last_progress = Instant::now();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if is_ack(&p.topic) {
                            if let Ok(ack) = serde_json::from_slice::<AckOut>(&p.payload) {
                                self.on_ack(ack.ids, &mut in_flight);
                                last_progress = Instant::now();
                            }
                        } else if is_error(&p.topic) {
                            if let Ok(err) = serde_json::from_slice::<ErrorOut>(&p.payload) {
                                self.on_error(err, &mut in_flight);
                                last_progress = Instant::now();
                            }
                        } else {
                            self.on_watched(&p.topic, &p.payload);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(%device, error = %e, "connection lost");
                        if up {
                            warn!(%device, error = %e, "connection lost; {} message(s) wait", self.outbox.len());
                        }
                        return Ended::Lost;
                    }
                },
                _ = self.wake.notified() => {}
                Some((topic, payload, qos, retain)) = self.live.recv() => {
                    if up {
                        let _ = client.try_publish(topic.clone(), qos, retain, payload.clone());
                    } else if !retain {
                        // A reading made while the link is down: the latest
                        // per topic goes out on connect (it carries its time).
                        self.unsent.insert(topic.clone(), (payload.clone(), qos));
                    }
                    if retain {
                        // A state (presence): the latest is re-sent on every connect.
                        self.states.insert(topic, payload);
                    }
                }
                _ = tokio::time::sleep_until(ack_deadline), if !in_flight.is_empty() => {
                    warn!(%device, in_flight = in_flight.len(), "no ack within the timeout; sending again");
                    in_flight.clear();
                    last_sent = None;
                    last_progress = Instant::now();
                }
                _ = self.stop.changed() => return Ended::Stopped,
            }
            if up {
                self.send_more(client, &mut in_flight, &mut last_sent);
            }
        }
    }

    /// Publishes outbox entries after `last_sent`, in order, up to the window.
    fn send_more(&self, client: &AsyncClient, in_flight: &mut BTreeMap<u64, EventId>, last_sent: &mut Option<u64>) {
        let room = WINDOW.saturating_sub(in_flight.len());
        if room == 0 {
            return;
        }
        let next = match self.outbox.after(*last_sent, room) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot read the outbox");
                return;
            }
        };
        for (seq, Entry { id, topic, payload }) in next {
            if client.try_publish(topic, QoS::ExactlyOnce, false, payload).is_err() {
                return;
            }
            in_flight.insert(seq, id);
            *last_sent = Some(seq);
        }
    }

    fn on_ack(&mut self, ids: Vec<EventId>, in_flight: &mut BTreeMap<u64, EventId>) {
        match self.outbox.remove(&ids) {
            Ok(n) if n > 0 => {
                self.pending.send_replace(self.outbox.len());
                in_flight.retain(|_, id| !ids.contains(id));
                let _ = self.updates.send(Update::Acked(ids));
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot update the outbox"),
        }
    }

    fn on_error(&mut self, err: ErrorOut, in_flight: &mut BTreeMap<u64, EventId>) {
        let id = err.id.as_deref().and_then(|i| EventId::new(i).ok());
        let Some(id) = id.filter(|id| self.outbox.contains(id)) else {
            // Not one of the outbox's messages: report it and nothing more.
            let _ = self.updates.send(Update::Rejected(err));
            return;
        };
        if err.code == ErrorCode::Unavailable {
            // The broker was stopping: the ack timeout sends it again.
            return;
        }
        warn!(%id, code = ?err.code, reason = %err.error, "the broker refused a recorded input");
        if let Err(e) = self.outbox.remove(std::slice::from_ref(&id)) {
            warn!(error = %e, "cannot update the outbox");
        }
        self.pending.send_replace(self.outbox.len());
        in_flight.retain(|_, i| *i != id);
        let _ = self.updates.send(Update::Rejected(err));
    }

    /// Delivers a watched document unless an equal or newer `rev` was seen;
    /// alerts (events, with no `rev`) always, and a cleared request or
    /// transfer as [`Update::Cleared`].
    fn on_watched(&mut self, topic: &str, payload: &[u8]) {
        let published = match topic.parse::<Topic>().map(|parsed| Published::decode(&parsed, payload)) {
            Ok(Ok(published)) => published,
            Ok(Err(e)) => {
                debug!(topic, error = %e, "ignored a message that does not parse");
                return;
            }
            Err(e) => {
                debug!(topic, error = %e, "ignored a message on a topic outside the contract");
                return;
            }
        };
        let rev = published.rev();
        let update = match published {
            Published::Alert(alert) => Update::Alert(alert),
            Published::Cleared(id) => {
                self.revs.remove(topic);
                let _ = self.updates.send(Update::Cleared(id));
                return;
            }
            Published::Availability(d) => Update::Availability(d),
            Published::Menu(d) => Update::Menu(d),
            Published::Level(d) => Update::Level(d),
            Published::Request(d) => Update::Request(d),
            Published::Transfer(d) => Update::Transfer(d),
            Published::Catalog(d) => Update::Catalog(d),
            other => {
                debug!(topic, ?other, "ignored a message that is not a watched document");
                return;
            }
        };
        // A retained document: keep the highest revision seen. Alerts are
        // events, delivered every time.
        if let Some(rev) = rev {
            let last = self.revs.entry(topic.to_string()).or_insert(0);
            if rev <= *last {
                debug!(topic, rev, last = *last, "dropped an older copy");
                return;
            }
            *last = rev;
        }
        let _ = self.updates.send(update);
    }
}

/// Aborts a task when dropped: the event loop of a session that ended.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
