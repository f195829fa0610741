//! The benchmark program's quick mode: every scenario runs against both
//! brokers and reports finite numbers. (Numbers are for BENCHMARKS.md, not
//! for assertions: a test never depends on speed.)

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

#[test]
fn every_benchmark_scenario_runs_in_quick_mode() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_e2e-bench"))
        .args(["all", "--quick", "--json"])
        .output()
        .context("running the benchmarks")?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("JSON lines")?;
    let scenarios: Vec<&str> = reports.iter().filter_map(|r| r["scenario"].as_str()).collect();
    for s in [
        "throughput",
        "latency",
        "retained",
        "connections",
        "restart",
        "http",
        "ledger",
        "webhooks",
        "pages",
        "backup",
        "retention",
        "capacity",
        "overload",
    ] {
        assert!(scenarios.contains(&s), "{s} missing from {scenarios:?}");
    }
    for r in &reports {
        // The HTTP API's and the webhooks' reference is the MQTT intake;
        // the rest, bare rmqtt.
        let sides = match r["scenario"].as_str() {
            Some("http") => ["http", "mqtt"],
            // A store-day from a long ledger next to one holding only it.
            Some("ledger") => ["p99", "reference_p99"],
            Some("webhooks") => ["delivered", "mqtt_intake"],
            Some("pages") => ["p99", "mqtt_p99"],
            Some("backup") => ["backup_seconds", "copy_seconds"],
            // The directory compacted daily next to one keeping everything.
            Some("retention") => ["compacted_mib", "kept_all_mib"],
            // The largest chain's latency and restart, against their goals.
            Some("capacity") => ["p99", "restart_s"],
            _ => ["dishsync", "bare"],
        };
        for side in sides {
            let v = r[side].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{side} in {r}");
        }
    }
    Ok(())
}

/// The cluster benchmark's quick mode: three fresh NATS clusters (bare,
/// one worker, two workers), every figure finite.
#[test]
fn the_cluster_benchmark_runs_in_quick_mode() -> Result<()> {
    // The clusters it starts count as the tests' one cluster at a time.
    let _turn = crate::cluster::TURN.blocking_lock();
    let out = Command::new(env!("CARGO_BIN_EXE_e2e-bench"))
        .args(["cluster", "--quick", "--json"])
        .output()
        .context("running the cluster benchmark")?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("JSON lines")?;
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (report, sides) in reports
        .iter()
        .zip([["one_worker", "two_workers", "bare_cluster"], ["p50", "p99", "p999"]])
    {
        for side in sides {
            let v = report[side].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{side} in {report}");
        }
    }
    Ok(())
}
