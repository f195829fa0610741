//! The broker's HTTP listener, with a real HTTP client (ureq): health,
//! readiness, and readiness lost when the data directory goes.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::support::{small_chain, temp_data_dir, BrokerProcess, DEADLINE};

/// `GET url`: the status and the body, whatever the status.
fn get(url: &str) -> Result<(u16, String)> {
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
    Ok(())
}
