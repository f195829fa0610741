//! The first hour: the built-in demo chain as README.md's first command runs
//! it — with its dinner service playing — opens alive (dishes available,
//! low and sold out, requests open where levels are low), and answers the
//! README's walkthrough exactly as written: its `mosquitto_pub` commands
//! are read from README.md and run as they stand.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::QoS;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::{temp_data_dir, BrokerProcess, Client};

/// The `mosquitto_pub` commands of README.md's walkthrough, in order, each
/// joined across its `\` line breaks.
fn walkthrough_commands() -> Result<Vec<String>> {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("## Five-minute walkthrough")
        .ok_or_else(|| anyhow!("README.md has no walkthrough"))?;
    // The walkthrough ends where the next section begins.
    let body = start + "## Five-minute walkthrough".len();
    let end = readme[body..].find("\n## ").map_or(readme.len(), |e| body + e);
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in readme[start..end].lines() {
        let line = line.trim_end();
        if current.is_empty() && !line.starts_with("mosquitto_pub ") {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    Ok(commands)
}

/// Runs one README command against the broker on `port`, as a shell would.
fn run(command: &str, port: u16) -> Result<()> {
    let command = command.replacen("mosquitto_pub ", &format!("mosquitto_pub -p {port} "), 1);
    let out = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .output()
        .context("running sh")?;
    if !out.status.success() {
        bail!("{command}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Waits until the wall clock's second has moved on, so that a reading
/// stamped with `date -u +%FT%TZ` (whole seconds) is later than everything
/// before it, as a person typing the next command gets. The condition is
/// the clock itself: the wait ends at the computed start of the next
/// second, checked again there (bounded, should the clock be stepped).
async fn next_second() {
    let now_ms = || dishsync_protocol::payload::Timestamp::now().0;
    let second = now_ms() / 1000;
    let deadline = Instant::now() + Duration::from_secs(5);
    while now_ms() / 1000 <= second && Instant::now() < deadline {
        let left = ((second + 1) * 1000 - now_ms()).max(1);
        tokio::time::sleep_until(Instant::now() + Duration::from_millis(left.unsigned_abs())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_chain_opens_alive_and_answers_the_readme_walkthrough_as_written() -> Result<()> {
    if Command::new("mosquitto_pub").arg("--help").output().is_err() {
        if std::env::var_os("CI").is_some() {
            bail!("mosquitto-clients must be installed in CI");
        }
        eprintln!("mosquitto-clients not installed: skipping the README walkthrough");
        return Ok(());
    }
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start_demo(&data, &[])?;
    let port = broker.addr.port();

    // A fresh start: the chain is open, not empty.
    let mut hq = Client::connect(broker.addr, "hq-watch").await?;
    hq.subscribe("stores/+/availability", QoS::AtLeastOnce).await?;
    hq.subscribe("hq/stores/+/summary", QoS::AtLeastOnce).await?;
    hq.subscribe("stores/+/catalog", QoS::AtLeastOnce).await?;
    hq.wait_until("every store's menu and summary", |seen| {
        ["downtown", "harbour", "airport"].iter().all(|s| {
            seen.iter().any(|m| m.topic == format!("stores/{s}/availability"))
                && seen.iter().any(|m| m.topic == format!("hq/stores/{s}/summary"))
        })
    })
    .await?;
    let mut statuses = std::collections::BTreeSet::new();
    for store in ["downtown", "harbour", "airport"] {
        let menu = hq
            .latest(&format!("stores/{store}/availability"))
            .cloned()
            .unwrap_or_default();
        for entry in menu["dishes"].as_object().into_iter().flat_map(|d| d.values()) {
            statuses.insert(entry["status"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(
        statuses,
        ["available", "low", "sold_out"].map(String::from).into_iter().collect(),
        "the demo opens with dishes of every status"
    );
    let downtown = hq.latest("hq/stores/downtown/summary").cloned().unwrap_or_default();
    assert!(
        downtown["sold_out"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("fries"))),
        "{downtown}"
    );
    for store in ["downtown", "harbour", "airport"] {
        let summary = hq
            .wait_latest(&format!("hq/stores/{store}/summary"), |s| {
                s["low"].as_array().is_some_and(|l| !l.is_empty())
            })
            .await?;
        assert!(
            summary["open_requests"].as_array().is_some_and(|r| !r.is_empty())
                || summary["low"].as_array().is_none_or(|l| l.is_empty()),
            "a store with low SKUs has a request: {summary}"
        );
    }
    let catalog = hq
        .wait_latest("stores/downtown/catalog", |c| c["store"] == json!("downtown"))
        .await?;
    assert_eq!(catalog["training"], json!(true));
    assert!(catalog["dishes"][0]["name"].is_string() && catalog["dishes"][0]["category"].is_string());

    // The README's walkthrough, command by command.
    let commands = walkthrough_commands()?;
    assert_eq!(commands.len(), 8, "the walkthrough's commands: {commands:#?}");
    let mut watch = Client::connect(broker.addr, "readme-watch").await?;
    let fries = "stores/downtown/dishes/fries/availability";
    watch.subscribe(fries, QoS::AtLeastOnce).await?;
    watch.subscribe("stores/downtown/errors/#", QoS::AtLeastOnce).await?;
    watch.subscribe("stores/downtown/acks/#", QoS::AtLeastOnce).await?;
    watch
        .subscribe("stores/downtown/stock/potato-fries/level", QoS::AtLeastOnce)
        .await?;
    watch
        .wait_latest(fries, |d| d["status"] == json!("sold_out") && d["portions"] == json!(0))
        .await?;
    let acked = |seen: &[crate::support::Received], device: &str, id: &str| {
        seen.iter()
            .filter(|m| m.topic == format!("stores/downtown/acks/{device}"))
            .flat_map(|m| m.json["ids"].as_array().cloned().unwrap_or_default())
            .filter(|i| i == &json!(id))
            .count()
    };

    run(&commands[0], port)?;
    watch
        .wait_latest(fries, |d| d["status"] == json!("low") && d["portions"] == json!(5))
        .await?;
    watch
        .wait_until("rcv-1 acked", |seen| acked(seen, "tablet-1", "rcv-1") == 1)
        .await?;

    run(&commands[1], port)?;
    let sold = watch.wait_latest(fries, |d| d["status"] == json!("sold_out")).await?;
    assert_eq!(
        (sold["portions"].clone(), sold["limited_by"].clone()),
        (json!(0), json!("potato-fries"))
    );

    run(&commands[2], port)?;
    watch.wait_latest(fries, |d| d["portions"] == json!(5)).await?;

    // The same receipt again: acknowledged again, not counted twice.
    run(&commands[3], port)?;
    watch
        .wait_until("rcv-1 acked again", |seen| acked(seen, "tablet-1", "rcv-1") == 2)
        .await?;
    let level = watch
        .latest("stores/downtown/stock/potato-fries/level")
        .cloned()
        .unwrap_or_default();
    assert_eq!(level["qty"], json!(1000), "{level}");

    run(&commands[4], port)?;
    let eighty_sixed = watch.wait_latest(fries, |d| d["override"].is_object()).await?;
    assert_eq!(eighty_sixed["status"], json!("sold_out"));
    assert_eq!(
        (
            eighty_sixed["override"]["by"].clone(),
            eighty_sixed["override"]["note"].clone()
        ),
        (json!("chef-anna"), json!("fryer down"))
    );
    run(&commands[5], port)?;
    watch
        .wait_latest(fries, |d| d["override"].is_null() && d["status"] == json!("low"))
        .await?;

    // The scale's reading, stamped by `date` in whole seconds.
    next_second().await;
    run(&commands[6], port)?;
    let counted = watch
        .wait_latest(fries, |d| {
            d["portions"] == json!(7) && d["status"] == json!("available")
        })
        .await?;
    // mosquitto_pub has left: the scale backing the fries is offline.
    let stale = if counted["stale"] == json!(true) {
        counted
    } else {
        watch.wait_latest(fries, |d| d["stale"] == json!(true)).await?
    };
    assert_eq!(stale["portions"], json!(7));

    run(&commands[7], port)?;
    let refused = watch.next_on("stores/downtown/errors/tablet-1").await?;
    assert_eq!(
        (refused["code"].clone(), refused["id"].clone()),
        (json!("wrong_unit"), json!("rcv-2"))
    );
    let level: Value = watch
        .latest("stores/downtown/stock/potato-fries/level")
        .cloned()
        .unwrap_or_default();
    assert_eq!(level["qty"], json!(1400), "litres of fries changed nothing: {level}");

    // Meanwhile the dinner service keeps the other stores busy: the
    // harbour's menu has moved on since the start.
    let first = hq
        .seen
        .iter()
        .find(|m| m.topic == "stores/harbour/availability")
        .and_then(|m| m.json["rev"].as_u64())
        .ok_or_else(|| anyhow!("no harbour menu"))?;
    hq.wait_latest("stores/harbour/availability", |m| {
        m["rev"].as_u64().is_some_and(|r| r > first + 3)
    })
    .await?;
    Ok(())
}

/// Logs for a file or a log shipper: no terminal colours when standard error
/// is not a terminal, and one JSON object per line with `--log-format json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_carry_no_colours_and_json_logs_parse() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start_demo(&data, &["--no-demo-service"])?;
    let log = broker.log();
    assert!(log.contains("state restored"), "{log}");
    assert!(!log.contains('\u{1b}'), "no ANSI escapes in a file: {log:?}");
    drop(broker);

    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start_demo(&data, &["--no-demo-service", "--log-format", "json"])?;
    let log = broker.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let entry: Value = serde_json::from_str(line).map_err(|e| anyhow!("{e}: {line}"))?;
        assert!(entry["level"].is_string() && entry["fields"].is_object(), "{entry}");
    }
    Ok(())
}
