//! The firmware bridge end to end: a simulated MCU scale or sold-out board
//! → the bridge (child process) → the real broker, and back.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;

use anyhow::{anyhow, Context, Result};
use dishsync_broker::store::Store;
use dishsync_firmware_bridge::{encode, Decoder, Message, StockKind, Unit};
use rumqttc::QoS;
use serde_json::json;
use serialport::SerialPort;

use crate::availability::stock_and_wait;
use crate::support::{
    free_addr, lines_of, sale, small_chain, stock_event, temp_data_dir, BrokerProcess, Client, DEADLINE,
};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn bridge_binary() -> &'static str {
    env!("CARGO_BIN_EXE_e2e-bridge")
}

/// The bridge as a child process, killed on drop.
struct BridgeProcess {
    child: Child,
}

impl BridgeProcess {
    fn start(dir: &Path, broker: SocketAddr, listen: SocketAddr) -> Result<BridgeProcess> {
        BridgeProcess::start_with(dir, broker, listen, "")
    }

    fn start_with(dir: &Path, broker: SocketAddr, listen: SocketAddr, extra: &str) -> Result<BridgeProcess> {
        BridgeProcess::start_as(dir, broker, listen, extra, "")
    }

    /// The bridge, its devices logging in to the broker with `login` lines
    /// added to scale-7's entry (a `password`).
    fn start_as(dir: &Path, broker: SocketAddr, listen: SocketAddr, extra: &str, login: &str) -> Result<BridgeProcess> {
        let config = format!(
            "listen = \"{listen}\"\nbroker = \"{broker}\"\noutbox_dir = \"{}\"\n\n\
             [[devices]]\nid = \"scale-7\"\nstore = \"s1\"\nkey = \"{KEY}\"\n{login}\n\
             [[devices]]\nid = \"board-1\"\nstore = \"s1\"\nkey = \"{KEY}\"\n\n{extra}",
            dir.join("bridge-outbox").display()
        );
        let path = dir.join("bridge.toml");
        std::fs::write(&path, config)?;
        let mut child = Command::new(bridge_binary())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let lines = lines_of(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        wait_line(&lines, |l| l.starts_with("dishsync-bridge listening on tcp://"))
            .map_err(|_| anyhow!("the bridge did not start"))?;
        Ok(BridgeProcess { child })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a simulated device; its stdout lines arrive on the channel.
fn sim(bridge: SocketAddr, device: &str, args: &[&str]) -> Result<(Child, std_mpsc::Receiver<String>)> {
    let mut child = Command::new(bridge_binary())
        .args([
            "sim-device",
            "--bridge",
            &bridge.to_string(),
            "--device",
            device,
            "--key",
            KEY,
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines = lines_of(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
    Ok((child, lines))
}

fn wait_line(rx: &std_mpsc::Receiver<String>, want: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| anyhow!("the device never printed what was expected"))?;
        if want(&line) {
            return Ok(line);
        }
    }
}

fn ledger_ids(data: &Path, prefix: &str) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for entry in Store::open(data)?.ledger()? {
        let id = entry?.event.to_string();
        if id.starts_with(prefix) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_scale_books_stock_through_the_bridge() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let listen = free_addr()?;
    let _bridge = BridgeProcess::start(tmp.path(), broker.addr, listen)?;
    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/stock/fries/level", QoS::AtLeastOnce).await?;
    pos.subscribe("stores/s1/dishes/chips/availability", QoS::AtLeastOnce)
        .await?;
    pos.subscribe("stores/s1/scales/scale-7/weight", QoS::AtLeastOnce)
        .await?;
    pos.subscribe("stores/s1/devices/scale-7/status", QoS::AtLeastOnce)
        .await?;

    let args = [
        "--events", "5", "--sku", "fries", "--qty", "200", "--unit", "g", "--weight", "1234",
    ];
    let (mut device, lines) = sim(listen, "scale-7", &args)?;
    wait_line(&lines, |l| l == "done: 5 of 5 acknowledged")?;
    let _ = device.wait();
    // The reading reached the broker, and presence followed the device's
    // own link: online while connected, offline once it left.
    let reading = pos
        .wait_latest("stores/s1/scales/scale-7/weight", |d| d["grams"] == json!(1234))
        .await?;
    assert_eq!(reading["stable"], json!(true));
    let status = "stores/s1/devices/scale-7/status";
    pos.wait_until("online then offline", |seen| {
        let states: Vec<&str> = seen
            .iter()
            .filter(|m| m.topic == status)
            .map(|m| m.text.as_str())
            .collect();
        states.windows(2).any(|w| w == ["online", "offline"])
    })
    .await?;
    pos.wait_latest("stores/s1/stock/fries/level", |d| d["qty"] == json!(1000))
        .await?;
    pos.wait_latest("stores/s1/dishes/chips/availability", |d| d["portions"] == json!(5))
        .await?;
    drop(pos);
    drop(broker);
    let ids = ledger_ids(&data, "scale-7:")?;
    assert_eq!(
        ids,
        [
            "scale-7:1:1",
            "scale-7:1:2",
            "scale-7:1:3",
            "scale-7:1:4",
            "scale-7:1:5"
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_board_shows_the_sell_out_a_sale_causes() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let listen = free_addr()?;
    let _bridge = BridgeProcess::start(tmp.path(), broker.addr, listen)?;
    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/acks/pos-1", QoS::AtLeastOnce).await?;
    stock_and_wait(
        &mut pos,
        "s1",
        "pos-1",
        &[("fries", stock_event("r1", "receive", 1.0, "kg", "pos-1"))],
    )
    .await?;

    let (mut board, lines) = sim(
        listen,
        "board-1",
        &["--subscribe", "chips", "--until", "chips=sold-out"],
    )?;
    wait_line(&lines, |l| l == "availability chips Available 5")?;
    pos.publish_json(
        "stores/s1/sales",
        &sale("s1", &[("chips", 5)], "pos-1"),
        QoS::ExactlyOnce,
    )
    .await?;
    wait_line(&lines, |l| l == "availability chips SoldOut 0")?;
    wait_line(&lines, |l| l.starts_with("done"))?;
    let status = board.wait()?;
    assert!(status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_killed_and_restarted_while_the_device_retransmits_applies_each_event_once() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let listen = free_addr()?;
    let mut bridge = BridgeProcess::start(tmp.path(), broker.addr, listen)?;
    let (mut device, lines) = sim(
        listen,
        "scale-7",
        &[
            "--events", "40", "--sku", "bun", "--qty", "1", "--unit", "pcs", "--boot", "9",
        ],
    )?;
    wait_line(&lines, |l| l.starts_with("acked"))?;
    bridge.kill();
    let _bridge = BridgeProcess::start(tmp.path(), broker.addr, listen)?;
    wait_line(&lines, |l| l == "done: 40 of 40 acknowledged")?;
    let _ = device.wait();

    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/stock/bun/level", QoS::AtLeastOnce).await?;
    pos.wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(40))
        .await?;
    drop(pos);
    drop(broker);
    let mut ids = ledger_ids(&data, "scale-7:9:")?;
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (total, ids.len()),
        (40, 40),
        "each of the 40 events applied exactly once"
    );
    Ok(())
}

/// Reads frames from a serial port until `want` holds for one.
fn read_until(port: &mut serialport::TTYPort, mut want: impl FnMut(&Message<'_>) -> bool) -> Result<()> {
    use std::io::Read;
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::time::Instant::now() < deadline {
        let n = match port.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e.into()),
        };
        for &b in &buf[..n] {
            if let Some(Ok(msg)) = decoder.push(b) {
                if want(&msg) {
                    return Ok(());
                }
            }
        }
    }
    Err(anyhow!("nothing expected arrived on the serial line"))
}

fn write_frame(port: &mut serialport::TTYPort, msg: &Message<'_>) -> Result<()> {
    let mut out = [0u8; dishsync_firmware_bridge::MAX_FRAME];
    let n = encode(msg, &mut out).map_err(|e| anyhow!("{e:?}"))?;
    std::io::Write::write_all(port, &out[..n])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_a_serial_line_books_stock_through_the_bridge() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    // A pseudo-terminal pair: the bridge opens one end as its serial line,
    // this test is the device on the other.
    let (mut device, line) = serialport::TTYPort::pair()?;
    let path = line.name().ok_or_else(|| anyhow!("the pty has no name"))?;
    let listen = free_addr()?;
    let _bridge = BridgeProcess::start_with(
        tmp.path(),
        broker.addr,
        listen,
        &format!("[[serial]]\npath = \"{path}\"\n"),
    )?;
    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/stock/beef/level", QoS::AtLeastOnce).await?;

    tokio::task::spawn_blocking(move || -> Result<()> {
        device.set_timeout(std::time::Duration::from_millis(100))?;
        let key = hex_key();
        let mut nonce = None;
        read_until(&mut device, |m| match m {
            Message::Challenge { nonce: n } => {
                nonce = Some(*n);
                true
            }
            _ => false,
        })?;
        let nonce = nonce.ok_or_else(|| anyhow!("no challenge"))?;
        let proof = dishsync_firmware_bridge::bridge::proof(&key, &nonce, "scale-7", 4).context("a proof")?;
        write_frame(
            &mut device,
            &Message::Hello {
                device: "scale-7",
                boot: 4,
                firmware: "serial-test",
                proof,
            },
        )?;
        for seq in 1..=3 {
            write_frame(
                &mut device,
                &Message::StockEvent {
                    seq,
                    sku: "beef",
                    kind: StockKind::Receive,
                    qty: 100,
                    unit: Unit::G,
                },
            )?;
        }
        let mut acked = std::collections::BTreeSet::new();
        read_until(&mut device, |m| {
            if let Message::Ack { seq } = m {
                acked.insert(*seq);
            }
            acked.len() == 3
        })?;
        drop(line);
        Ok(())
    })
    .await??;
    pos.wait_latest("stores/s1/stock/beef/level", |d| d["qty"] == json!(300))
        .await?;
    drop(pos);
    drop(broker);
    assert_eq!(
        ledger_ids(&data, "scale-7:4:")?,
        ["scale-7:4:1", "scale-7:4:2", "scale-7:4:3"]
    );
    Ok(())
}

fn hex_key() -> Vec<u8> {
    (0..32u8).collect()
}

/// A firmware device on TCP, driven frame by frame (blocking I/O).
struct TcpDevice {
    stream: std::net::TcpStream,
    decoder: Decoder,
    /// Every message received, as `Debug` text.
    seen: Vec<String>,
    /// Bytes read past the message a wait ended on.
    unread: Vec<u8>,
}

impl TcpDevice {
    /// Connects and reads the challenge; says hello only if `hello`.
    fn connect(bridge: SocketAddr, boot: u32, hello: bool) -> Result<TcpDevice> {
        let stream = std::net::TcpStream::connect(bridge)?;
        stream.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
        let mut device = TcpDevice {
            stream,
            decoder: Decoder::new(),
            seen: Vec::new(),
            unread: Vec::new(),
        };
        let mut nonce = None;
        device.read_until(|m| match m {
            Message::Challenge { nonce: n } => {
                nonce = Some(*n);
                true
            }
            _ => false,
        })?;
        let nonce = nonce.ok_or_else(|| anyhow!("no challenge"))?;
        if hello {
            let proof =
                dishsync_firmware_bridge::bridge::proof(&hex_key(), &nonce, "scale-7", boot).context("a proof")?;
            device.send(&Message::Hello {
                device: "scale-7",
                boot,
                firmware: "tcp-test",
                proof,
            })?;
        }
        Ok(device)
    }

    fn send(&mut self, msg: &Message<'_>) -> Result<()> {
        let mut out = [0u8; dishsync_firmware_bridge::MAX_FRAME];
        let n = encode(msg, &mut out).map_err(|e| anyhow!("{e:?}"))?;
        std::io::Write::write_all(&mut self.stream, &out[..n])?;
        Ok(())
    }

    fn stock(&mut self, seq: u32, qty: i32) -> Result<()> {
        self.send(&Message::StockEvent {
            seq,
            sku: "bun",
            kind: StockKind::Receive,
            qty,
            unit: Unit::Pcs,
        })
    }

    fn read_until(&mut self, mut want: impl FnMut(&Message<'_>) -> bool) -> Result<()> {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::time::Instant::now() < deadline {
            let mut bytes = std::mem::take(&mut self.unread);
            if bytes.is_empty() {
                match self.stream.read(&mut buf) {
                    Ok(0) => return Err(anyhow!("the bridge closed the connection")),
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        continue
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            for (i, &b) in bytes.iter().enumerate() {
                if let Some(Ok(msg)) = self.decoder.push(b) {
                    self.seen.push(format!("{msg:?}"));
                    if want(&msg) {
                        self.unread = bytes[i + 1..].to_vec();
                        return Ok(());
                    }
                }
            }
        }
        Err(anyhow!("nothing expected arrived; saw {:?}", self.seen))
    }

    fn acked(&mut self, seq: u32) -> Result<()> {
        self.read_until(|m| matches!(m, Message::Ack { seq: s } if *s == seq))
    }
}

/// A retransmit of an acknowledged event (its ack lost with the
/// connection) is acknowledged again and applied once, with no error
/// anywhere; the same seq with other content is refused to the device,
/// naming the seq; a stock event before the hello gets Error 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_retransmit_is_acked_once_and_a_conflicting_one_is_refused_by_seq() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let listen = free_addr()?;
    let _bridge = BridgeProcess::start(tmp.path(), broker.addr, listen)?;
    let mut watch = Client::connect(broker.addr, "audit-1").await?;
    watch.subscribe("stores/s1/errors/scale-7", QoS::AtLeastOnce).await?;
    watch.subscribe("stores/s1/stock/bun/level", QoS::AtLeastOnce).await?;

    let seen = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let mut early = TcpDevice::connect(listen, 5, false)?;
        early.stock(1, 3)?;
        early.read_until(|m| matches!(m, Message::Error { code: 2 }))?;
        drop(early);

        let mut device = TcpDevice::connect(listen, 5, true)?;
        device.stock(1, 3)?;
        device.stock(2, 4)?;
        device.acked(1)?;
        device.acked(2)?;
        drop(device);
        // Power stays on (same boot); the acks were lost with the line.
        let mut device = TcpDevice::connect(listen, 5, true)?;
        device.stock(1, 3)?;
        device.acked(1)?;
        // A firmware bug: seq 2 again, with another quantity.
        device.stock(2, 9)?;
        device.read_until(|m| matches!(m, Message::Refused { seq: 2, code: 7 }))?;
        device.acked(2)?;
        // One more event proves the session still serves.
        device.stock(3, 1)?;
        device.acked(3)?;
        Ok(device.seen)
    })
    .await??;
    assert!(
        !seen
            .iter()
            .any(|m| m.starts_with("Error") || m.contains("seq: 1, code")),
        "the retransmit of seq 1 was answered with an ack alone: {seen:?}"
    );
    watch
        .wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(8))
        .await?;
    assert!(
        watch.all_on("stores/s1/errors/scale-7").is_empty(),
        "no error reached the broker's errors topic"
    );
    drop(watch);
    drop(broker);
    assert_eq!(
        ledger_ids(&data, "scale-7:5:")?,
        ["scale-7:5:1", "scale-7:5:2", "scale-7:5:3"]
    );
    Ok(())
}

/// With anonymous access off, a bridged scale logs in to the broker as
/// itself (its password in bridge.toml, its role `scale` in the broker's
/// configuration): its stock events and its readings are applied, each
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_scale_logs_in_with_its_own_credentials() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let hash = dishsync_broker::auth::hash_password("scale-7-secret")?;
    let audit = dishsync_broker::auth::hash_password("audit-secret")?;
    let config = small_chain()
        .replace("allow_anonymous = true", "allow_anonymous = false")
        .replace(
            "[[stores]]\nid = \"s1\"\nname = \"s1\"\n",
            "[[stores]]\nid = \"s1\"\nname = \"s1\"\nscales = { scale-7 = { sku = \"fries\" } }\n",
        )
        + &format!(
            "\n[[devices]]\nid = \"scale-7\"\nrole = \"scale\"\nstore = \"s1\"\npassword_hash = \"{hash}\"\n\n\
             [[devices]]\nid = \"audit-1\"\nrole = \"hq\"\npassword_hash = \"{audit}\"\n"
        );
    let broker = BrokerProcess::start(&config, &data)?;
    let listen = free_addr()?;
    let _bridge = BridgeProcess::start_as(tmp.path(), broker.addr, listen, "", "password = \"scale-7-secret\"")?;
    let mut audit = Client::login(broker.addr, "audit-1", "audit-secret").await?;
    audit.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    audit.subscribe("stores/s1/errors/#", QoS::AtLeastOnce).await?;

    let (mut device, lines) = sim(
        listen,
        "scale-7",
        &[
            "--events", "5", "--sku", "bun", "--qty", "2", "--unit", "pcs", "--boot", "3", "--weight", "1500",
        ],
    )?;
    wait_line(&lines, |l| l == "done: 5 of 5 acknowledged")?;
    let _ = device.wait();
    audit
        .wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(10))
        .await?;
    // The scale's own reading, through the bridge, sets its bound SKU.
    if let Err(e) = audit
        .wait_latest("stores/s1/stock/fries/level", |d| d["qty"] == json!(1500))
        .await
    {
        return Err(anyhow!("{e}; the broker's log:\n{}", broker.log()));
    }
    assert!(
        audit.all_on("stores/s1/errors/scale-7").is_empty(),
        "nothing was refused"
    );
    drop(audit);
    drop(broker);
    assert_eq!(ledger_ids(&data, "scale-7:3:")?.len(), 5);
    Ok(())
}
