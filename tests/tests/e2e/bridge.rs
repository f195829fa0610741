//! The firmware bridge end to end: a simulated MCU scale or sold-out board
//! → the bridge (child process) → the real broker, and back.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;

use anyhow::{anyhow, Result};
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
        let config = format!(
            "listen = \"{listen}\"\nbroker = \"{broker}\"\noutbox_dir = \"{}\"\n\n\
             [[devices]]\nid = \"scale-7\"\nstore = \"s1\"\nkey = \"{KEY}\"\n\n\
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
        let proof = dishsync_firmware_bridge::bridge::proof(&key, &nonce, "scale-7", 4);
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
