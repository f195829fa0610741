//! Interoperability: mosquitto's command-line clients, and the MQTT
//! interoperability run (`tests/interop/mqtt_interop.py`, 37 scenarios
//! with Eclipse Paho's Python client) against the broker and, in the same
//! run, against mosquitto. Where a tool is missing, CI fails and a
//! developer's machine is told what was skipped.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::support::{free_addr, mosquitto, small_chain, temp_data_dir, BrokerProcess};

fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--help").output().is_ok()
}

#[test]
fn mosquitto_pub_qos2_changes_the_availability_mosquitto_sub_reads() -> Result<()> {
    if !installed("mosquitto_pub") || !installed("mosquitto_sub") {
        if std::env::var_os("CI").is_some() {
            bail!("mosquitto-clients must be installed in CI");
        }
        eprintln!("mosquitto-clients not installed: skipping the interop test");
        return Ok(());
    }
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let port = broker.addr.port().to_string();
    let event = serde_json::json!({"id": "m-1", "kind": "receive", "qty": 1.2, "unit": "kg",
            "at": dishsync_protocol::payload::Timestamp::now().to_string(), "device": "tablet-m"})
    .to_string();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-i", "tablet-m", "-q", "2"])
        .args(["-t", "stores/s1/stock/fries/events", "-m", &event])
        .status()
        .context("running mosquitto_pub")?;
    assert!(status.success());
    // mosquitto_pub returned after PUBCOMP, which the broker sends only after
    // the commit: the retained availability already shows the event.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-C", "1", "-W", "30"])
        .args(["-t", "stores/s1/dishes/chips/availability"])
        .output()
        .context("running mosquitto_sub")?;
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).context("availability is JSON")?;
    assert_eq!(doc["portions"], 6, "{doc}");
    assert_eq!(doc["status"], "available", "{doc}");
    Ok(())
}

/// A Python with paho-mqtt for the interoperability run: `DISHSYNC_PYTHON`
/// (CI sets it to the virtual environment made from
/// `tests/interop/requirements.txt`), else `python3` when it has paho-mqtt.
fn interop_python() -> Result<Option<PathBuf>> {
    let python = std::env::var_os("DISHSYNC_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let has_paho = Command::new(&python)
        .args(["-c", "import paho.mqtt"])
        .output()
        .is_ok_and(|out| out.status.success());
    if has_paho {
        return Ok(Some(python));
    }
    if std::env::var_os("CI").is_some() {
        bail!(
            "{} cannot import paho.mqtt: CI installs tests/interop/requirements.txt",
            python.display()
        );
    }
    eprintln!("no Python with paho-mqtt (tests/interop/requirements.txt): skipping the interoperability run");
    Ok(None)
}

/// Runs the interoperability run against the MQTT server on `port`, each
/// wait bounded by `deadline` seconds; the scenarios that failed, as
/// "suite name: detail", and how many ran.
fn interop_run(python: &std::path::Path, port: u16, deadline: u32) -> Result<(Vec<(String, String)>, usize)> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/mqtt_interop.py");
    let out = Command::new(python)
        .env("INTEROP_DEADLINE", deadline.to_string())
        .arg(&script)
        .args([
            "--port",
            &port.to_string(),
            "--root",
            "interop",
            "--nosubscribe",
            "test/nosubscribe",
        ])
        .output()
        .context("running the interoperability run")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the interoperability run failed to run: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut failed = Vec::new();
    let mut ran = 0;
    for line in stdout.lines() {
        let outcome: Value = serde_json::from_str(line).with_context(|| format!("a result line: {line}"))?;
        if outcome.get("total").is_some() {
            continue;
        }
        ran += 1;
        if outcome["passed"] != true {
            let name = format!(
                "{} {}",
                outcome["suite"].as_str().unwrap_or("?"),
                outcome["name"].as_str().unwrap_or("?")
            );
            failed.push((name, format!("{} (line {})", outcome["detail"], outcome["line"])));
        }
    }
    Ok((failed, ran))
}

/// An independent client passes every scenario of the interoperability run
/// against a broker with an open namespace; mosquitto, run the same way in
/// the same run, is reported beside it (CONFORMANCE.md gives both).
#[test]
fn an_independent_client_passes_every_scenario_of_the_interoperability_run() -> Result<()> {
    let Some(python) = interop_python()? else {
        return Ok(());
    };
    let (tmp, data) = temp_data_dir()?;
    let mut config = small_chain();
    config.push_str("\n[[namespaces]]\nprefix = \"interop\"\npublish = [\"hq\"]\nsubscribe = [\"hq\"]\n");
    let broker = BrokerProcess::start(&config, &data)?;
    // mosquitto as a deployment would run it for this run: one filter
    // refused, so that its subscribe-failure scenarios can pass.
    let acl = tmp.path().join("mosquitto.acl");
    std::fs::write(&acl, "topic readwrite #\ntopic deny test/nosubscribe\n")?;
    let reference_addr = free_addr()?;
    let reference = mosquitto(
        tmp.path(),
        reference_addr,
        &format!("acl_file {}\npersistence false\n", acl.display()),
        "mosquitto's side of the interoperability run",
    )?;
    let mosquitto_run = reference.as_ref().map(|_| {
        let python = python.clone();
        // The reference's failures wait out their deadline: a shorter one
        // keeps the suite quick (its count is reported, not asserted).
        std::thread::spawn(move || interop_run(&python, reference_addr.port(), 10))
    });
    let (failed, ran) = interop_run(&python, broker.addr.port(), 60)?;
    assert_eq!(ran, 37, "10 scenarios for MQTT 3.1.1, 27 for MQTT 5.0");
    assert!(failed.is_empty(), "failed: {failed:#?}");
    eprintln!("interoperability run: dishsync {} of {ran}", ran - failed.len());
    if let Some(run) = mosquitto_run {
        let (failed, ran) = run
            .join()
            .map_err(|_| anyhow::anyhow!("the mosquitto run panicked"))??;
        eprintln!(
            "interoperability run: mosquitto {} of {ran}, failing {:?}",
            ran - failed.len(),
            failed.iter().map(|(name, _)| name).collect::<Vec<_>>()
        );
    }
    drop(reference);
    Ok(())
}

/// A client that reconnects the moment its clean session has ended gets a
/// new session ([MQTT-3.1.2-4]: session present 0) and is not refused,
/// however its reconnect races the engine's teardown of the old one (four
/// clients at once, fifty times each; raw MQTT 3.1.1 packets).
#[test]
fn a_client_that_reconnects_at_once_after_a_clean_session_gets_a_new_one() -> Result<()> {
    use std::io::{Read, Write};
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let connect = |id: &str, clean: bool| crate::security::raw_connect(4, if clean { 0b10 } else { 0 }, id.as_bytes());
    let addr = broker.addr;
    let clients: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || -> Result<Vec<[u8; 4]>> {
                let id = format!("tablet-q{n}");
                let mut answers = Vec::new();
                for _ in 0..50 {
                    let mut first = std::net::TcpStream::connect(addr)?;
                    first.set_read_timeout(Some(crate::support::DEADLINE))?;
                    first.write_all(&connect(&id, true))?;
                    let mut connack = [0u8; 4];
                    first.read_exact(&mut connack)?;
                    anyhow::ensure!(connack == [0x20, 2, 0, 0], "first login: {connack:?}");
                    first.write_all(&[0xe0, 0])?;
                    drop(first);
                    let mut again = std::net::TcpStream::connect(addr)?;
                    again.set_read_timeout(Some(crate::support::DEADLINE))?;
                    again.write_all(&connect(&id, false))?;
                    again.read_exact(&mut connack)?;
                    answers.push(connack);
                    again.write_all(&[0xe0, 0])?;
                }
                Ok(answers)
            })
        })
        .collect();
    for client in clients {
        let answers = client.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        let wrong: Vec<_> = answers.iter().filter(|a| **a != [0x20, 2, 0, 0]).collect();
        assert!(wrong.is_empty(), "CONNACKs other than a new session: {wrong:?}");
    }
    Ok(())
}
