//! The configuration re-read while the broker runs: SIGHUP and the
//! operator's `POST /api/v1/admin/reload`, with a POS that stays connected
//! throughout.

use anyhow::{Context, Result};
use rumqttc::QoS;
use serde_json::Value;

use crate::support::{chain_toml, device_entries, sale, stock_event, temp_data_dir, BrokerProcess, Client};

/// `method url` with `token`: the status and the JSON body.
fn call(method: &str, url: &str, token: &str) -> Result<(u16, Value)> {
    let answer = ureq::request(method, url)
        .set("Authorization", &format!("Bearer {token}"))
        .call();
    let (status, response) = match answer {
        Ok(response) => (response.status(), response),
        Err(ureq::Error::Status(status, response)) => (status, response),
        Err(e) => return Err(e).context(format!("{method} {url}")),
    };
    Ok((
        status,
        serde_json::from_str(&response.into_string()?).unwrap_or(Value::Null),
    ))
}

/// The chain: burger = 1 bun + `beef` g of beef; `more` dishes after it;
/// the devices and integrations given; the web listener on `web`.
fn chain(beef: i64, more: &[crate::support::TestDish<'static>], tail: &str) -> String {
    let mut dishes = vec![("burger", 1, vec![("bun", 1), ("beef", beef)])];
    dishes.extend(more.iter().cloned());
    let mut config = chain_toml(
        &["s1", "s2"],
        &[("bun", "pcs", 2, 20), ("beef", "g", 300, 3000)],
        &dishes,
    );
    config.push_str(tail);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_menu_under_a_connected_pos_and_an_invalid_file_changes_nothing() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let (ops_token, ops_hash) = dishsync_broker::api::integrations::mint_token()?;
    let (pos_token, pos_hash) = dishsync_broker::api::integrations::mint_token()?;
    let password = |device: &str| format!("{device}-secret");
    let tail = |web: &str, devices: &str| {
        format!(
            "{devices}\n[[integrations]]\nid = \"it-ops\"\nrole = \"operator\"\ntoken_sha256 = \"{ops_hash}\"\n\n\
             [[integrations]]\nid = \"pos-cloud\"\nrole = \"pos\"\nstore = \"s1\"\ntoken_sha256 = \"{pos_hash}\"\n\n\
             [web]\nlisten = \"{web}\"\n"
        )
    };
    let kitchen = device_entries([("kds-1", "kds", Some("s1"))], password)?;
    let with_new_pos = device_entries([("kds-1", "kds", Some("s1")), ("pos-9", "pos", Some("s1"))], password)?;
    let before = chain(150, &[], &tail("127.0.0.1:0", &kitchen));
    let broker = BrokerProcess::start(&before, &data)?;
    let file = broker.config.clone().context("the broker runs from a file")?;
    let web = broker.web_addr.context("the broker names its web address")?;
    let reload_url = format!("http://{web}/api/v1/admin/reload");

    // A POS on the menu, connected once for the whole test.
    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    pos.subscribe("stores/s1/catalog", QoS::AtLeastOnce).await?;
    let kds = Client::login(broker.addr, "kds-1", &password("kds-1")).await?;
    for (id, sku, qty, unit) in [("r-bun", "bun", 10.0, "pcs"), ("r-beef", "beef", 1500.0, "g")] {
        kds.publish_json(
            &format!("stores/s1/stock/{sku}/events"),
            &stock_event(id, "receive", qty, unit, "kds-1"),
            QoS::AtLeastOnce,
        )
        .await?;
    }
    let burger = "stores/s1/dishes/burger/availability";
    pos.wait_latest(burger, |d| d["portions"] == 10).await?;
    assert!(
        Client::login(broker.addr, "pos-9", &password("pos-9")).await.is_err(),
        "pos-9 is not a device yet"
    );

    // SIGHUP: the burger takes twice the beef, a cheeseburger joins the
    // menu, pos-9 may log in.
    let after = chain(
        300,
        &[("cheeseburger", 0, vec![("bun", 1), ("beef", 100)])],
        &tail("127.0.0.1:0", &with_new_pos),
    );
    std::fs::write(&file, &after)?;
    broker.hang_up()?;
    let cheeseburger = pos
        .wait_latest("stores/s1/dishes/cheeseburger/availability", |d| d["portions"] == 10)
        .await?;
    assert_eq!(cheeseburger["status"], "available", "{cheeseburger}");
    let burger_now = pos.wait_latest(burger, |d| d["portions"] == 5).await?;
    assert_eq!(burger_now["status"], "available", "1500 g at 300 g: {burger_now}");
    let catalog = pos
        .wait_latest("stores/s1/catalog", |c| {
            c["dishes"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["dish"] == "cheeseburger"))
        })
        .await?;
    assert_eq!(catalog["dishes"].as_array().map(Vec::len), Some(2), "{catalog}");
    broker.wait_for_log("configuration reloaded", 1)?;
    let pos9 = Client::login(broker.addr, "pos-9", &password("pos-9")).await?;
    drop(pos9);
    // Stock is kept: the levels did not move.
    let mut reader = Client::connect(broker.addr, "reader").await?;
    reader.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    reader
        .wait_latest("stores/s1/stock/beef/level", |l| l["qty"] == 1500)
        .await?;
    reader
        .wait_latest("stores/s1/stock/bun/level", |l| l["qty"] == 10)
        .await?;

    // An invalid file: refused whole, with its place; nothing changes.
    let invalid = chain(
        300,
        &[
            ("cheeseburger", 0, vec![("bun", 1), ("beef", 100)]),
            ("melt", 0, vec![("bun", 1), ("cheese", 20)]),
        ],
        &tail("127.0.0.1:0", &kitchen),
    );
    std::fs::write(&file, &invalid)?;
    broker.hang_up()?;
    let log = broker.wait_for_log("reload refused", 1)?;
    assert!(log.contains("cheese"), "the log names the problem: {log}");
    let (status, refused) = call("POST", &reload_url, &ops_token)?;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["code"], "invalid_config", "{refused}");
    let issues = refused["issues"].as_array().context("the problems are listed")?;
    assert!(
        issues
            .iter()
            .any(|i| i["place"].as_str().is_some_and(|p| p.starts_with("dishes["))
                && i["problem"].as_str().is_some_and(|p| p.contains("cheese"))),
        "{refused}"
    );
    // Everything runs as it was: the same menu, pos-9 still a device, and
    // a sale still moves the POS's documents over the same connection.
    let pos9 = Client::login(broker.addr, "pos-9", &password("pos-9")).await?;
    pos9.publish_json(
        "stores/s1/sales",
        &sale("sale-1", &[("cheeseburger", 1)], "pos-9"),
        QoS::AtLeastOnce,
    )
    .await?;
    pos.wait_latest("stores/s1/dishes/cheeseburger/availability", |d| d["portions"] == 9)
        .await?;
    assert!(pos.latest("stores/s1/dishes/melt/availability").is_none());
    let (status, menu) = call("GET", &format!("http://{web}/api/v1/stores/s1/catalog"), &pos_token)?;
    assert_eq!(status, 200);
    assert_eq!(menu["dishes"].as_array().map(Vec::len), Some(2), "{menu}");

    // The operator's reload: what a file changed that waits for a restart
    // is said so, and the rest applies.
    let moved = chain(
        300,
        &[("cheeseburger", 0, vec![("bun", 1), ("beef", 100)])],
        &tail("127.0.0.1:1", &with_new_pos),
    );
    std::fs::write(&file, &moved)?;
    let (status, forbidden) = call("POST", &reload_url, &pos_token)?;
    assert_eq!(status, 403, "a store's POS may not reload: {forbidden}");
    let (status, reloaded) = call("POST", &reload_url, &ops_token)?;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["by"], "it-ops");
    assert_eq!(reloaded["at_next_restart"], serde_json::json!(["web"]), "{reloaded}");
    assert_eq!(
        reloaded["documents"]["dishes"], 0,
        "nothing on the menu changed: {reloaded}"
    );
    let (status, _) = call("GET", &format!("http://{web}/api/v1/stores/s1/catalog"), &pos_token)?;
    assert_eq!(status, 200, "the web listener stays where it is until the restart");
    Ok(())
}
