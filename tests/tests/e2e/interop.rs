//! Interoperability with mosquitto's command-line clients, where installed
//! (CI installs them; without them, and outside CI, the test says so).

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::support::{small_chain, temp_data_dir, BrokerProcess};

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
