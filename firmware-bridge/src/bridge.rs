//! The bridge daemon: speaks the frame protocol with microcontroller devices
//! on TCP and speaks for them on MQTT.
//!
//! Each device proves itself by challenge–response (HMAC-SHA256 of a fresh
//! nonce with its own key; the key never travels). The bridge then acts as
//! that device on the broker — its own credentials, its own durable outbox
//! (`dishsync-client`), its presence — so the broker's permissions and
//! freshness apply as for any device. A stock event becomes the MQTT event
//! `{device}:{boot}:{seq}`: a retransmit after a device, bridge or broker
//! restart is applied once. The device's `Ack` is sent only after the
//! broker's end-to-end ack. Availability of the dishes a board subscribed to
//! is pushed down as it changes.
//!
//! Scale readings (`Weight`) go to `stores/{store}/scales/{device}/weight`;
//! the device's presence follows its own link to the bridge (`online` when
//! it authenticates, `offline` when it leaves; the bridge's last will covers
//! a bridge crash). Devices connect over TCP or sit on serial lines
//! (`[[serial]]` in the configuration), one device per line.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dishsync_client::protocol::payload::{DishStatus, ErrorCode};
use dishsync_client::protocol::{DeviceId, DishId, EventId, SkuId, StoreId};
use dishsync_client::{Client, ClientConfig, ClientError, OutboxError, Recorded, Update, Watch};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::codec::{encode, Decoder, Message, Status, StockKind, Unit, MAX_FRAME};

/// The bridge's configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Where devices connect (TCP).
    pub listen: SocketAddr,
    /// The broker, host:port.
    pub broker: String,
    /// Where each device's outbox lives.
    pub outbox_dir: PathBuf,
    /// The devices this bridge speaks for.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Serial lines, each with one device on it.
    #[serde(default)]
    pub serial: Vec<SerialConfig>,
}

/// A serial line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The port, e.g. `/dev/ttyUSB0`.
    pub path: String,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_baud() -> u32 {
    115_200
}

/// One device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Its id (as configured in the broker).
    pub id: DeviceId,
    /// Its store.
    pub store: StoreId,
    /// Its shared secret, hex (32 bytes recommended).
    pub key: String,
    /// Its broker password, when the broker requires credentials.
    pub password: Option<String>,
}

impl BridgeConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<BridgeConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: BridgeConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for d in &config.devices {
            hex::decode(&d.key).with_context(|| format!("device {}: key is not hex", d.id))?;
        }
        Ok(config)
    }
}

/// The MAC over `nonce ‖ device ‖ boot as 4 bytes LE` under `key`, ready
/// to finish; `None` for a key the MAC does not take.
fn keyed(key: &[u8], nonce: &[u8; 16], device: &str, boot: u32) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(nonce);
    mac.update(device.as_bytes());
    mac.update(&boot.to_le_bytes());
    Some(mac)
}

/// `HMAC-SHA256(key, nonce ‖ device ‖ boot as 4 bytes LE)`; `None` for a
/// key HMAC does not take (it takes every length).
pub fn proof(key: &[u8], nonce: &[u8; 16], device: &str, boot: u32) -> Option<[u8; 32]> {
    keyed(key, nonce, device, boot).map(|mac| mac.finalize().into_bytes().into())
}

fn verify(key: &[u8], nonce: &[u8; 16], device: &str, boot: u32, proof: &[u8; 32]) -> bool {
    keyed(key, nonce, device, boot).is_some_and(|mac| mac.verify_slice(proof).is_ok())
}

/// Writes one message as a frame.
async fn send(wr: &mut (impl AsyncWriteExt + Unpin), msg: &Message<'_>) -> Result<()> {
    let mut buf = [0u8; MAX_FRAME];
    let n = encode(msg, &mut buf).map_err(|e| anyhow!("encoding {msg:?}: {e:?}"))?;
    wr.write_all(&buf[..n]).await?;
    Ok(())
}

/// A device's standing link to the broker, kept across its reconnections.
struct Link {
    client: Client,
    /// The connection currently serving the device, if any.
    conn: Arc<Mutex<Option<mpsc::UnboundedSender<Update>>>>,
    /// The latest availability per dish (to answer a Subscribe at once).
    availability: Arc<Mutex<HashMap<DishId, (DishStatus, u64)>>>,
}

struct Bridge {
    config: BridgeConfig,
    host: String,
    port: u16,
    links: Mutex<HashMap<DeviceId, Arc<Link>>>,
}

impl Bridge {
    fn link(&self, device: &DeviceConfig) -> Result<Arc<Link>> {
        let mut links = self.links.lock().map_err(|_| anyhow!("lock"))?;
        if let Some(l) = links.get(&device.id) {
            return Ok(Arc::clone(l));
        }
        let mut cfg = ClientConfig::new(
            self.host.clone(),
            self.port,
            device.store.clone(),
            device.id.clone(),
            self.config.outbox_dir.join(device.id.as_str()),
        );
        cfg.credentials = device.password.clone().map(|p| (device.id.to_string(), p));
        cfg.watch = vec![Watch::Availability];
        // Presence follows the device's own link to the bridge.
        cfg.presence = false;
        cfg.ack_timeout = Duration::from_secs(5);
        cfg.max_backoff = Duration::from_secs(2);
        let (client, mut updates) = Client::start(cfg)?;
        let link = Arc::new(Link {
            client,
            conn: Arc::default(),
            availability: Arc::default(),
        });
        let forward = Arc::clone(&link);
        tokio::spawn(async move {
            while let Some(update) = updates.recv().await {
                if let Update::Availability(a) = &update {
                    if let Ok(mut cache) = forward.availability.lock() {
                        cache.insert(a.dish.clone(), (a.status, a.portions));
                    }
                }
                let conn = forward.conn.lock().ok().and_then(|c| c.clone());
                if let Some(tx) = conn {
                    let _ = tx.send(update);
                }
            }
        });
        links.insert(device.id.clone(), Arc::clone(&link));
        Ok(link)
    }
}

/// Runs the bridge until the process stops. Prints
/// `dishsync-bridge listening on tcp://ADDR` once devices can connect.
pub async fn serve(config: BridgeConfig) -> Result<()> {
    let (host, port) = config
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
        .ok_or_else(|| anyhow!("broker {:?} is not host:port", config.broker))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let bridge = Arc::new(Bridge {
        config,
        host,
        port,
        links: Mutex::default(),
    });
    for line in bridge.config.serial.clone() {
        tokio::spawn(serve_serial(Arc::clone(&bridge), line));
    }
    println!("dishsync-bridge listening on tcp://{}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let bridge = Arc::clone(&bridge);
        tokio::spawn(async move {
            if let Err(e) = session(bridge, stream).await {
                warn!(%peer, error = %e, "device session ended");
            }
        });
    }
}

fn contract_kind(k: StockKind) -> dishsync_client::protocol::payload::StockKind {
    use dishsync_client::protocol::payload::StockKind as Contract;
    match k {
        StockKind::Receive => Contract::Receive,
        StockKind::Consume => Contract::Consume,
        StockKind::Waste => Contract::Waste,
        StockKind::Count => Contract::Count,
        StockKind::Adjust => Contract::Adjust,
    }
}

fn contract_unit(u: Unit) -> dishsync_client::protocol::Unit {
    use dishsync_client::protocol::Unit as Contract;
    match u {
        Unit::G => Contract::G,
        Unit::Ml => Contract::Ml,
        Unit::Pcs => Contract::Pcs,
    }
}

fn dish_status(s: DishStatus) -> Status {
    match s {
        DishStatus::Available => Status::Available,
        DishStatus::Low => Status::Low,
        DishStatus::SoldOut => Status::SoldOut,
    }
}

/// Serves one serial line for as long as the bridge runs: a session at a
/// time, a fresh challenge after each (a device that rebooted waits for one).
async fn serve_serial(bridge: Arc<Bridge>, line: SerialConfig) {
    loop {
        match open_serial(&line) {
            Ok(stream) => {
                if let Err(e) = session(Arc::clone(&bridge), stream).await {
                    warn!(path = %line.path, error = %e, "serial session ended");
                }
            }
            Err(e) => warn!(path = %line.path, error = %e, "cannot open the serial line"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Opens a serial port as an async byte stream: two threads pump bytes
/// between the (blocking) port and one end of an in-memory duplex pipe.
fn open_serial(line: &SerialConfig) -> Result<tokio::io::DuplexStream> {
    let port = serialport::new(&line.path, line.baud)
        .timeout(Duration::from_millis(100))
        .open()?;
    let mut reader = port.try_clone()?;
    let mut writer = port;
    let (ours, theirs) = tokio::io::duplex(4096);
    let (mut pipe_rd, mut pipe_wr) = tokio::io::split(theirs);
    let handle = tokio::runtime::Handle::current();
    let h = handle.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if h.block_on(pipe_wr.write_all(&buf[..n])).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            match handle.block_on(pipe_rd.read(&mut buf)) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if std::io::Write::write_all(&mut writer, &buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(ours)
}

/// One device connection: challenge, hello, then frames both ways.
async fn session<S>(bridge: Arc<Bridge>, stream: S) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| anyhow!("no randomness: {e}"))?;
    send(&mut wr, &Message::Challenge { nonce }).await?;

    let mut decoder = Decoder::new();
    let mut buf = [0u8; 512];
    // The hello, within a few seconds.
    let (device, boot, leftover) = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                bail!("closed before hello");
            }
            for (i, &b) in buf[..n].iter().enumerate() {
                match decoder.push(b) {
                    Some(Ok(Message::Hello {
                        device,
                        boot,
                        firmware,
                        proof,
                    })) => {
                        let known = bridge.config.devices.iter().find(|d| d.id.as_str() == device).cloned();
                        let Some(cfg) = known else {
                            send(&mut wr, &Message::Error { code: 3 }).await?;
                            bail!("unknown device {device}");
                        };
                        let key = hex::decode(&cfg.key)?;
                        if !verify(&key, &nonce, device, boot, &proof) {
                            send(&mut wr, &Message::Error { code: 3 }).await?;
                            bail!("device {device}: wrong proof");
                        }
                        info!(device, boot, firmware, "device authenticated");
                        // What arrived right behind the hello is the session's.
                        return Ok((cfg, boot, buf[i + 1..n].to_vec()));
                    }
                    // What needs a session, before the hello: not authenticated.
                    Some(Ok(Message::StockEvent { .. } | Message::Weight { .. } | Message::Subscribe { .. })) => {
                        send(&mut wr, &Message::Error { code: 2 }).await?;
                    }
                    _ => {}
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no hello in time"))??;

    let link = bridge.link(&device)?;
    link.client.set_presence(true);
    let result = serve_device(&link, &device, boot, leftover, &mut rd, &mut wr, &mut decoder).await;
    link.client.set_presence(false);
    result
}

/// The session of an authenticated device until it disconnects.
async fn serve_device(
    link: &Link,
    device: &DeviceConfig,
    boot: u32,
    leftover: Vec<u8>,
    rd: &mut (impl AsyncReadExt + Unpin),
    wr: &mut (impl AsyncWriteExt + Unpin),
    decoder: &mut Decoder,
) -> Result<()> {
    let mut buf = [0u8; 512];
    let (tx, mut updates) = mpsc::unbounded_channel();
    if let Ok(mut slot) = link.conn.lock() {
        *slot = Some(tx);
    }
    // Event ids waiting for the broker's ack → the device's seq.
    let mut pending: HashMap<EventId, u32> = HashMap::new();
    let mut subscribed: BTreeSet<DishId> = BTreeSet::new();
    let prefix = format!("{}:{boot}:", device.id);
    let mut carried = leftover;
    loop {
        tokio::select! {
            n = async {
                if carried.is_empty() {
                    rd.read(&mut buf).await
                } else {
                    let n = carried.len().min(buf.len());
                    buf[..n].copy_from_slice(&carried[..n]);
                    carried.drain(..n);
                    Ok(n)
                }
            } => {
                let n = n?;
                if n == 0 {
                    info!(device = %device.id, "device disconnected");
                    return Ok(());
                }
                let mut out: Vec<Message<'static>> = Vec::new();
                for &b in &buf[..n] {
                    match decoder.push(b) {
                        Some(Ok(Message::StockEvent { seq, sku, kind, qty, unit })) => {
                            let id = EventId::new(format!("{prefix}{seq}"))?;
                            let Ok(sku) = SkuId::new(sku) else {
                                out.extend([Message::Refused { seq, code: 4 }, Message::Ack { seq }]);
                                continue;
                            };
                            // The contract wants a reason for waste; a device has none to give.
                            let reason = (kind == StockKind::Waste).then(|| "reported by the device".to_string());
                            let (kind, unit) = (contract_kind(kind), contract_unit(unit));
                            match link.client.record_stock_as(&id, &sku, kind, f64::from(qty), unit, reason) {
                                Ok(Recorded::New | Recorded::Waiting) => {
                                    pending.insert(id, seq);
                                }
                                // A retransmit of an event the broker has
                                // acknowledged: the ack was lost on the way.
                                Ok(Recorded::Settled) => out.push(Message::Ack { seq }),
                                Err(ClientError::Outbox(OutboxError::Conflict(_))) => {
                                    warn!(device = %device.id, %id, "the device re-used a seq with other content");
                                    out.extend([Message::Refused { seq, code: 7 }, Message::Ack { seq }]);
                                }
                                Err(e) => {
                                    warn!(device = %device.id, error = %e, "cannot record");
                                    out.push(Message::Error { code: 6 });
                                }
                            }
                        }
                        Some(Ok(Message::Subscribe { dish })) => {
                            if let Ok(dish) = DishId::new(dish) {
                                let known = link.availability.lock().ok().and_then(|c| c.get(&dish).copied());
                                if let Some((status, portions)) = known {
                                    let msg = Message::Availability { dish: dish.as_str(), status: dish_status(status), portions: portions as u32 };
                                    send(&mut *wr, &msg).await?;
                                }
                                subscribed.insert(dish);
                            } else {
                                out.push(Message::Error { code: 4 });
                            }
                        }
                        Some(Ok(Message::Ping { n })) => out.push(Message::Pong { n }),
                        Some(Ok(Message::Weight { grams, stable })) => link.client.publish_weight(i64::from(grams), stable),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            warn!(device = %device.id, error = ?e, "bad frame");
                            out.push(Message::Error { code: 1 });
                        }
                        None => {}
                    }
                }
                for m in out {
                    send(&mut *wr, &m).await?;
                }
            }
            update = updates.recv() => {
                let Some(update) = update else { return Ok(()) };
                match update {
                    Update::Acked(ids) => {
                        for id in ids {
                            if let Some(seq) = pending.remove(&id) {
                                send(&mut *wr, &Message::Ack { seq }).await?;
                            }
                        }
                    }
                    Update::Rejected(err) => {
                        let Some(id) = err.id.as_deref().and_then(|i| EventId::new(i).ok()) else { continue };
                        if let Some(seq) = pending.remove(&id) {
                            warn!(device = %device.id, %id, reason = %err.error, "the broker refused an event");
                            let code = if err.code == ErrorCode::IdConflict { 7 } else { 5 };
                            send(&mut *wr, &Message::Refused { seq, code }).await?;
                            send(&mut *wr, &Message::Ack { seq }).await?;
                        }
                    }
                    Update::Availability(a) if subscribed.contains(&a.dish) => {
                        let msg = Message::Availability { dish: a.dish.as_str(), status: dish_status(a.status), portions: a.portions as u32 };
                        send(&mut *wr, &msg).await?;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What a simulated device does.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// The bridge, host:port.
    pub bridge: String,
    /// The device id.
    pub device: String,
    /// Its key, hex.
    pub key: String,
    /// Its boot id (the same boot id after a reconnect means "same power-up").
    pub boot: u32,
    /// Stock events to send, all the same: SKU, kind, quantity, unit.
    pub events: u32,
    /// The SKU of the events.
    pub sku: String,
    /// The quantity of each event.
    pub qty: i32,
    /// The unit of each event.
    pub unit: Unit,
    /// The kind of each event.
    pub kind: StockKind,
    /// A scale reading to send once after the hello, grams.
    pub weight: Option<i32>,
    /// Dishes to subscribe to (a sold-out board).
    pub subscribe: Vec<String>,
    /// Stop once this dish shows this status.
    pub until: Option<(String, Status)>,
    /// Give up after this long.
    pub deadline: Duration,
}

/// Sends every stock event of `sim` that has no ack yet, in order.
async fn send_unacked(wr: &mut (impl AsyncWriteExt + Unpin), sim: &SimDevice, acked: &BTreeSet<u32>) -> Result<()> {
    for seq in (1..=sim.events).filter(|s| !acked.contains(s)) {
        let msg = Message::StockEvent {
            seq,
            sku: &sim.sku,
            kind: sim.kind,
            qty: sim.qty,
            unit: sim.unit,
        };
        send(&mut *wr, &msg).await?;
    }
    Ok(())
}

/// Runs a simulated device: connects (and reconnects) to the bridge, sends
/// its events until each is acknowledged, prints what it receives.
pub async fn sim_device(sim: SimDevice) -> Result<()> {
    let key = hex::decode(&sim.key).context("key is not hex")?;
    let give_up = tokio::time::Instant::now() + sim.deadline;
    let mut acked: BTreeSet<u32> = BTreeSet::new();
    let mut done_until = sim.until.is_none();
    while tokio::time::Instant::now() < give_up {
        let Ok(stream) = TcpStream::connect(&sim.bridge).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (mut rd, mut wr) = stream.into_split();
        let mut decoder = Decoder::new();
        let mut buf = [0u8; 512];
        let mut authenticated = false;
        let mut last_send = tokio::time::Instant::now();
        let result: Result<bool> = async {
            loop {
                if authenticated && acked.len() as u32 == sim.events && done_until {
                    return Ok(true);
                }
                let n = tokio::select! {
                    n = rd.read(&mut buf) => n?,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        // Silence: send what is unacknowledged again.
                        if authenticated && last_send.elapsed() >= Duration::from_secs(2) {
                            send_unacked(&mut wr, &sim, &acked).await?;
                            last_send = tokio::time::Instant::now();
                        }
                        continue;
                    }
                    _ = tokio::time::sleep_until(give_up) => bail!("gave up"),
                };
                if n == 0 {
                    return Ok(false);
                }
                let mut hello = None;
                for &b in &buf[..n] {
                    match decoder.push(b) {
                        Some(Ok(Message::Challenge { nonce })) => hello = Some(nonce),
                        Some(Ok(Message::Ack { seq })) => {
                            if acked.insert(seq) {
                                println!("acked {seq}");
                            }
                        }
                        Some(Ok(Message::Availability { dish, status, portions })) => {
                            println!("availability {dish} {status:?} {portions}");
                            if let Some((d, s)) = &sim.until {
                                if d == dish && *s == status {
                                    done_until = true;
                                }
                            }
                        }
                        Some(Ok(Message::Error { code })) => println!("error {code}"),
                        Some(Ok(Message::Refused { seq, code })) => println!("refused {seq} {code}"),
                        Some(Ok(Message::Pong { .. })) | Some(Ok(_)) | None => {}
                        Some(Err(e)) => println!("bad frame {e:?}"),
                    }
                }
                if let Some(nonce) = hello {
                    let p = proof(&key, &nonce, &sim.device, sim.boot).context("the device key is not usable")?;
                    send(
                        &mut wr,
                        &Message::Hello {
                            device: &sim.device,
                            boot: sim.boot,
                            firmware: "sim-1",
                            proof: p,
                        },
                    )
                    .await?;
                    authenticated = true;
                    if let Some(grams) = sim.weight {
                        send(&mut wr, &Message::Weight { grams, stable: true }).await?;
                    }
                    for dish in &sim.subscribe {
                        send(&mut wr, &Message::Subscribe { dish }).await?;
                    }
                    send_unacked(&mut wr, &sim, &acked).await?;
                    last_send = tokio::time::Instant::now();
                }
            }
        }
        .await;
        match result {
            Ok(true) => {
                println!("done: {} of {} acknowledged", acked.len(), sim.events);
                return Ok(());
            }
            Ok(false) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    bail!("gave up with {} of {} acknowledged", acked.len(), sim.events)
}
