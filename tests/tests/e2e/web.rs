//! The broker's HTTP listener, with a real HTTP client (ureq): health,
//! readiness, and readiness lost when the data directory goes.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::support::{broker_binary, small_chain, temp_data_dir, BrokerProcess, DEADLINE};

/// `GET url`: the status and the body, whatever the status.
pub(crate) fn get(url: &str) -> Result<(u16, String)> {
    match ureq::get(url).call() {
        Ok(response) => {
            let status = response.status();
            Ok((status, response.into_string()?))
        }
        Err(ureq::Error::Status(status, response)) => Ok((status, response.into_string()?)),
        Err(e) => Err(e).context(format!("GET {url}")),
    }
}

#[test]
fn health_and_readiness_answer_over_http_and_readiness_follows_the_storage() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let config = format!("{}\n[web]\nlisten = \"127.0.0.1:0\"\n", small_chain());
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("the broker names its web address")?;

    let (status, body) = get(&format!("http://{web}/healthz"))?;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Every check passes once the broker says it listens.
    let (status, body) = get(&format!("http://{web}/readyz"))?;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body)?;
    assert_eq!(ready["ready"], true, "{ready}");
    for check in ["restored", "rules", "listeners", "storage"] {
        assert_eq!(ready["checks"][check], "ok", "{check}: {ready}");
    }

    let (status, _) = get(&format!("http://{web}/nothing-here"))?;
    assert_eq!(status, 404);
    // Every path the served OpenAPI document names answers one of its
    // documented statuses.
    let (status, openapi) = get(&format!("http://{web}/api/v1/openapi.json"))?;
    assert_eq!(status, 200);
    let openapi: Value = serde_json::from_str(&openapi)?;
    let paths = openapi["paths"].as_object().context("paths")?;
    assert!(paths.len() >= 4, "{openapi}");
    // The operator's routes; the API's are held to it in `api.rs`.
    let operators = paths
        .iter()
        .filter(|(path, _)| !path.starts_with("/api/v1/") || path.as_str() == "/api/v1/openapi.json");
    for (path, item) in operators {
        let (status, _) = get(&format!("http://{web}{path}"))?;
        assert!(
            item["get"]["responses"][status.to_string()].is_object(),
            "{path} answered {status}"
        );
    }
    // The health check a container runs, without an HTTP client of its own.
    let ready = |addr: String| {
        std::process::Command::new(broker_binary())
            .args(["ready", &addr])
            .output()
            .context("running dishsync-broker ready")
    };
    let probed = ready(web.to_string())?;
    assert!(probed.status.success(), "{}", String::from_utf8_lossy(&probed.stderr));
    let nobody = ready(crate::support::free_addr()?.to_string())?;
    assert!(!nobody.status.success(), "nothing listens there");

    // The data directory goes: the broker still lives, and is not ready.
    std::fs::remove_dir_all(&data)?;
    let deadline = Instant::now() + DEADLINE;
    let not_ready = loop {
        let (status, body) = get(&format!("http://{web}/readyz"))?;
        if status == 503 {
            break serde_json::from_str::<Value>(&body)?;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without a data directory: {body}"
        );
    };
    assert_eq!(not_ready["ready"], false, "{not_ready}");
    assert_ne!(not_ready["checks"]["storage"], "ok", "{not_ready}");
    assert_eq!(not_ready["checks"]["rules"], "ok", "{not_ready}");
    let (status, _) = get(&format!("http://{web}/healthz"))?;
    assert_eq!(status, 200, "alive all the same");
    let probed = ready(web.to_string())?;
    assert!(!probed.status.success(), "not ready without a data directory");
    assert!(
        String::from_utf8_lossy(&probed.stderr).contains("503"),
        "{}",
        String::from_utf8_lossy(&probed.stderr)
    );
    Ok(())
}

/// A Prometheus text-format page as `series → value` (`name{labels}` as
/// written), checking that every sample's family was declared with a
/// `# TYPE` line first.
pub(crate) fn parse_metrics(page: &str) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut declared = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("a TYPE line names a kind")?;
            anyhow::ensure!(["counter", "gauge", "histogram"].contains(&kind), "unknown kind {kind}");
            declared.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("a sample has a value")?;
        let name = series.split('{').next().unwrap_or(series);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| declared.contains(*f)))
            .unwrap_or(name);
        anyhow::ensure!(declared.contains(family), "{name} has no TYPE line");
        samples.insert(series.to_string(), value.parse::<f64>().context("a numeric value")?);
    }
    Ok(samples)
}

/// `/metrics` counts inputs by transport and outcome, group commits and
/// their syncs, and connections by role, moving with what the broker does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_broker_does() -> Result<()> {
    use rumqttc::QoS;
    let (_tmp, data) = temp_data_dir()?;
    let config = format!("{}\n[web]\nlisten = \"127.0.0.1:0\"\n", small_chain());
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("the broker names its web address")?;
    let scrape = move || -> Result<std::collections::BTreeMap<String, f64>> {
        let (status, page) = get(&format!("http://{web}/metrics"))?;
        anyhow::ensure!(status == 200, "{status}: {page}");
        parse_metrics(&page)
    };
    let before = tokio::task::spawn_blocking(scrape).await??;
    let at = |m: &std::collections::BTreeMap<String, f64>, series: &str| m.get(series).copied().unwrap_or(0.0);

    let mut tablet = crate::support::Client::connect(broker.addr, "tablet-1").await?;
    tablet.subscribe("stores/s1/acks/tablet-1", QoS::AtLeastOnce).await?;
    tablet.subscribe("stores/s1/errors/tablet-1", QoS::AtLeastOnce).await?;
    crate::availability::stock_and_wait(
        &mut tablet,
        "s1",
        "tablet-1",
        &[(
            "bun",
            crate::support::stock_event("m-1", "receive", 5.0, "pcs", "tablet-1"),
        )],
    )
    .await?;
    tablet
        .publish_json(
            "stores/s1/stock/caviar/events",
            &crate::support::stock_event("m-2", "receive", 1.0, "pcs", "tablet-1"),
            QoS::AtLeastOnce,
        )
        .await?;
    let refused = tablet.next_on("stores/s1/errors/tablet-1").await?;
    let code = refused["code"].as_str().context("an error code")?.to_string();

    let after = tokio::task::spawn_blocking(scrape).await??;
    let applied = "dishsync_inputs_total{transport=\"mqtt\",outcome=\"applied\"}";
    assert_eq!(at(&after, applied) - at(&before, applied), 1.0, "one applied");
    let refusals = format!("dishsync_inputs_total{{transport=\"mqtt\",outcome=\"refused\",code=\"{code}\"}}");
    assert_eq!(
        at(&after, &refusals) - at(&before, &refusals),
        1.0,
        "one refused as {code}"
    );
    for grew in ["dishsync_group_commits_total", "dishsync_journal_sync_seconds_count"] {
        assert!(at(&after, grew) > at(&before, grew), "{grew}");
    }
    assert!(
        at(&after, "dishsync_group_commit_inputs_total") >= at(&after, "dishsync_group_commits_total"),
        "a group holds at least one input"
    );
    let buckets_ok = at(&after, "dishsync_journal_sync_seconds_bucket{le=\"+Inf\"}")
        == at(&after, "dishsync_journal_sync_seconds_count");
    assert!(buckets_ok, "the last bucket holds every sync");
    // What a restart would replay: some groups, or none once checkpointed.
    assert!(after.contains_key("dishsync_checkpoint_lag_groups"), "{after:?}");
    // The anonymous demo client is connected as the demo role.
    assert!(
        after
            .keys()
            .any(|s| s.starts_with("dishsync_connections{role=") && after[s] >= 1.0),
        "{after:?}"
    );
    Ok(())
}

/// The built-in demo has its web listener on (on 8080 as shipped; a free
/// port here).
#[test]
fn the_demo_serves_health_on_its_web_listener() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let demo = BrokerProcess::start_demo(&data, &["--no-demo-service"])?;
    let web = demo.web_addr.context("the demo names its web address")?;
    assert_eq!(get(&format!("http://{web}/readyz"))?.0, 200);
    Ok(())
}

/// The same figures are retained on `$SYS/dishsync/metrics` for an
/// operator who watches MQTT only; a POS may not read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_operator_reads_the_metrics_retained_on_sys() -> Result<()> {
    use dishsync_protocol::payload::MetricsOut;
    use rumqttc::QoS;
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    // An anonymous demo client reads what an operator reads.
    let mut ops = crate::support::Client::connect(broker.addr, "ops-1").await?;
    ops.subscribe("$SYS/dishsync/metrics", QoS::AtLeastOnce).await?;
    let doc: MetricsOut = serde_json::from_value(ops.next_on("$SYS/dishsync/metrics").await?)?;
    // The small chain opens with no stock: one request per store.
    assert_eq!(doc.open_requests, 2, "{doc:?}");
    assert_eq!(doc.group_commits, doc.journal_syncs, "{doc:?}");
    // An input, and the next renewal counts it.
    ops.subscribe("stores/s1/acks/ops-1", QoS::AtLeastOnce).await?;
    crate::availability::stock_and_wait(
        &mut ops,
        "s1",
        "ops-1",
        &[(
            "bun",
            crate::support::stock_event("sys-1", "receive", 5.0, "pcs", "ops-1"),
        )],
    )
    .await?;
    let counted = ops
        .wait_until("a renewal counting the input", |seen| {
            seen.iter().any(|m| {
                m.topic == "$SYS/dishsync/metrics"
                    && serde_json::from_str::<MetricsOut>(&m.text).is_ok_and(|d| {
                        d.inputs
                            .iter()
                            .any(|i| i.transport == "mqtt" && i.outcome == "applied" && i.count >= 1)
                    })
            })
        })
        .await;
    counted.map(|_| ())
}

/// While the restore waits for a data directory another process holds, the
/// broker is alive and not ready, and says why; once it has the directory
/// and has restored, it is ready.
#[test]
fn readiness_is_false_while_the_restore_waits_and_true_after() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let web = crate::support::free_addr()?;
    let config = format!("{}\n[web]\nlisten = \"{web}\"\n", small_chain());
    // Another process's hold on the directory: this one's, through the store.
    let holder = dishsync_broker::store::Store::open(&data)?;
    let mut starting = BrokerProcess::launch(&config, &data, "127.0.0.1:0".parse()?)?;
    assert_eq!(starting.web()?, web);
    // The broker says it waits once it has set its readiness so.
    starting.wait_for_log("in use by another process", 1)?;
    let (status, body) = get(&format!("http://{web}/readyz"))?;
    assert_eq!(status, 503, "{body}");
    let waiting: Value = serde_json::from_str(&body)?;
    assert!(
        waiting["checks"]["restored"]
            .as_str()
            .is_some_and(|why| why.contains("another process holds")),
        "{waiting}"
    );
    assert_eq!(waiting["ready"], false, "{waiting}");
    assert_eq!(get(&format!("http://{web}/healthz"))?.0, 200, "alive meanwhile");
    drop(holder);
    let _broker = starting.listening()?;
    let (status, body) = get(&format!("http://{web}/readyz"))?;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body)?;
    assert_eq!(ready["checks"]["restored"], "ok", "{ready}");
    Ok(())
}
