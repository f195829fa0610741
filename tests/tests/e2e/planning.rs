//! Replenishment and transfers over MQTT against the real broker, including
//! an expired proposal and a restart in the middle of a transfer.

use anyhow::Result;
use dishsync_broker::store::Store;
use dishsync_inventory::{EntryKind, StockKindCode};
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::availability::stock_and_wait;
use crate::support::{chain_toml, sale, stock_event, temp_data_dir, BrokerProcess, Client, Watcher};

/// Three stores; s1 is 5 minutes from s2 and 15 from s3. The central
/// kitchen needs ten hours, so a sell-out during service calls for a
/// transfer. s1 opens with stock above its reorder points, so its start
/// raises no request; s2 and s3 open empty (and so with one each).
pub(crate) fn planning_chain(timeout_minutes: f64) -> String {
    let mut config = chain_toml(
        &["s1", "s2", "s3"],
        &[("patty", "pcs", 2, 10), ("bun", "pcs", 2, 40)],
        &[("burger", 1, vec![("patty", 1), ("bun", 1)])],
    );
    config = config.replace(
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n",
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n\
         stock = { patty = { opening = 5 }, bun = { opening = 40 } }\n",
    );
    config = config.replace(
        "[broker]\nallow_anonymous = true\n",
        &format!(
            "[broker]\nallow_anonymous = true\n\n[planning]\ntransfer_timeout_minutes = {timeout_minutes}\nmerge_window_minutes = 0\n\n\
             [central_kitchen]\nlead_time_minutes = 600\ndelivery_windows = []\n\n\
             [[travel]]\nbetween = [\"s1\", \"s2\"]\nminutes = 5\n\n[[travel]]\nbetween = [\"s1\", \"s3\"]\nminutes = 15\n"
        ),
    );
    config
}

/// Books a patty stock event at s1 as `manager-1` and waits for its ack.
async fn book_patty(manager: &mut Client, id: &str, kind: &str, qty: f64) -> Result<()> {
    stock_and_wait(
        manager,
        "s1",
        "manager-1",
        &[("patty", stock_event(id, kind, qty, "pcs", "manager-1"))],
    )
    .await
}

async fn act(client: &mut Client, topic: &str, id: &str, device: &str) -> Result<()> {
    client
        .publish_json(topic, &json!({"id": id, "by": device}), QoS::ExactlyOnce)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replenishment_goes_from_crossing_to_received() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&planning_chain(10.0), &data)?;
    let mut kitchen = Client::connect(broker.addr, "kitchen-1").await?;
    kitchen.subscribe("hq/replenishment/+", QoS::AtLeastOnce).await?;
    kitchen.subscribe("stores/s1/acks/kitchen-1", QoS::AtLeastOnce).await?;
    let mut manager = Client::connect(broker.addr, "manager-1").await?;
    manager.subscribe("stores/s1/replenishment/+", QoS::AtLeastOnce).await?;
    manager.subscribe("stores/s1/alerts", QoS::AtLeastOnce).await?;
    manager.subscribe("stores/s1/acks/manager-1", QoS::AtLeastOnce).await?;

    // Counted at 8, then 5 used: 3 is above the reorder point of 2.
    // Then 2 more: 1 ≤ 2, one request for par 10 − 1 = 9.
    book_patty(&mut manager, "c1", "count", 8.0).await?;
    book_patty(&mut manager, "u1", "consume", 5.0).await?;
    assert!(
        manager.all_on("stores/s1/replenishment/rq-s1-1").is_empty(),
        "3 is above the reorder point"
    );
    book_patty(&mut manager, "u2", "consume", 2.0).await?;
    let hq_topic = "hq/replenishment/rq-s1-1";
    let rq = kitchen.wait_latest(hq_topic, |d| d["state"] == json!("open")).await?;
    assert_eq!(
        rq["lines"],
        json!([{"sku": "patty", "qty": 9, "unit": "pcs", "received": false}])
    );
    let store_copy = manager
        .wait_latest("stores/s1/replenishment/rq-s1-1", |d| d["state"] == json!("open"))
        .await?;
    assert_eq!(store_copy["id"], json!("rq-s1-1"));
    let alert = manager
        .wait_latest("stores/s1/alerts", |d| d["kind"] == json!("low_stock"))
        .await?;
    assert_eq!(
        (alert["state"].clone(), alert["sku"].clone()),
        (json!("raised"), json!("patty"))
    );

    // A wobble around the line raises nothing more.
    book_patty(&mut manager, "w1", "adjust", 1.0).await?;
    book_patty(&mut manager, "w2", "adjust", -1.0).await?;

    act(
        &mut kitchen,
        "hq/replenishment/rq-s1-1/acknowledge",
        "ck-1",
        "kitchen-1",
    )
    .await?;
    kitchen
        .wait_latest(hq_topic, |d| d["state"] == json!("acknowledged"))
        .await?;
    act(&mut kitchen, "hq/replenishment/rq-s1-1/ship", "ck-2", "kitchen-1").await?;
    kitchen
        .wait_latest(hq_topic, |d| d["state"] == json!("shipped"))
        .await?;

    let mut receipt = stock_event("r1", "receive", 9.0, "pcs", "manager-1");
    receipt["ref"] = json!("rq-s1-1");
    stock_and_wait(&mut manager, "s1", "manager-1", &[("patty", receipt)]).await?;
    let done = kitchen
        .wait_latest(hq_topic, |d| d["state"] == json!("received"))
        .await?;
    assert_eq!(done["lines"][0]["received"], json!(true));
    manager
        .wait_latest("stores/s1/replenishment/rq-s1-1", |d| d["state"] == json!("received"))
        .await?;
    manager
        .wait_latest("stores/s1/alerts", |d| {
            d["kind"] == json!("low_stock") && d["state"] == json!("cleared")
        })
        .await?;
    // Only ever one request for s1 (s2 and s3 opened empty: one each).
    let ids: Vec<&str> = kitchen
        .seen
        .iter()
        .filter(|m| m.topic.starts_with("hq/replenishment/rq-s1"))
        .map(|m| m.topic.as_str())
        .collect();
    assert!(ids.iter().all(|t| *t == hq_topic), "{ids:?}");
    for other in ["rq-s2-1", "rq-s3-1"] {
        let rq = kitchen
            .latest(&format!("hq/replenishment/{other}"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            rq["state"],
            json!("open"),
            "a store that opens empty asks at its start: {rq}"
        );
    }
    Ok(())
}

/// Subscribes `staff` to a store's acks for it, transfer documents and
/// patty level.
async fn watch_store(staff: &mut Client, store: &str) -> Result<()> {
    for filter in [
        format!("stores/{store}/acks/staff-1"),
        format!("stores/{store}/transfers/+"),
        format!("stores/{store}/stock/patty/level"),
    ] {
        staff.subscribe(&filter, QoS::AtLeastOnce).await?;
    }
    Ok(())
}

/// Counts patties (`s1_patty` at s1, 20 at s2 and s3) and 50 buns in each
/// store as `staff-1`, waiting for the acks (`staff` must see them).
async fn stock_stores(staff: &mut Client, s1_patty: f64) -> Result<()> {
    for store in ["s1", "s2", "s3"] {
        let patty = if store == "s1" { s1_patty } else { 20.0 };
        stock_and_wait(
            staff,
            store,
            "staff-1",
            &[
                (
                    "patty",
                    stock_event(&format!("{store}-p"), "count", patty, "pcs", "staff-1"),
                ),
                (
                    "bun",
                    stock_event(&format!("{store}-b"), "count", 50.0, "pcs", "staff-1"),
                ),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Stocks the three stores and sells s1 out of burgers; returns the client
/// watching the transfer documents of all stores.
async fn sell_s1_out(broker: &BrokerProcess) -> Result<Client> {
    let mut staff = Client::connect(broker.addr, "staff-1").await?;
    for store in ["s1", "s2", "s3"] {
        watch_store(&mut staff, store).await?;
    }
    stock_stores(&mut staff, 3.0).await?;
    staff
        .publish_json(
            "stores/s1/sales",
            &sale("sale-1", &[("burger", 3)], "staff-1"),
            QoS::ExactlyOnce,
        )
        .await?;
    Ok(staff)
}

fn ledger_of(data: &std::path::Path, store: &str) -> Result<Vec<(StockKindCode, i64)>> {
    let mut out = Vec::new();
    for entry in Store::open(data)?.ledger()? {
        let entry = entry?;
        if let (EntryKind::Stock(kind @ (StockKindCode::TransferIn | StockKindCode::TransferOut)), true) =
            (entry.kind, entry.store.as_str() == store)
        {
            out.push((kind, entry.amount));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_is_declined_re_proposed_accepted_dispatched_and_received() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&planning_chain(10.0), &data)?;
    let mut staff = sell_s1_out(&broker).await?;

    // The nearest store, s2, is asked first; s1 sees the same document.
    let tr1 = staff
        .wait_latest("stores/s2/transfers/tr-1", |d| d["state"] == json!("proposed"))
        .await?;
    assert_eq!(
        (tr1["from"].clone(), tr1["to"].clone(), tr1["sku"].clone()),
        (json!("s2"), json!("s1"), json!("patty"))
    );
    assert_eq!(tr1["qty"], json!(18), "capped by s2's surplus: 20 − reorder point 2");
    staff
        .wait_latest("stores/s1/transfers/tr-1", |d| d["state"] == json!("proposed"))
        .await?;

    act(&mut staff, "stores/s2/transfers/tr-1/decline", "s2-no", "staff-1").await?;
    staff
        .wait_latest("stores/s2/transfers/tr-1", |d| d["state"] == json!("declined"))
        .await?;
    let tr2 = staff
        .wait_latest("stores/s3/transfers/tr-2", |d| d["state"] == json!("proposed"))
        .await?;
    assert_eq!(
        (tr2["from"].clone(), tr2["qty"].clone(), tr2["travel_minutes"].clone()),
        (json!("s3"), json!(18), json!(15))
    );

    // The wrong store cannot accept.
    staff.subscribe("stores/s1/errors/staff-1", QoS::AtLeastOnce).await?;
    act(&mut staff, "stores/s1/transfers/tr-2/accept", "s1-yes", "staff-1").await?;
    let err = staff.next_on("stores/s1/errors/staff-1").await?;
    assert_eq!(
        (err["id"].clone(), err["code"].clone()),
        (json!("s1-yes"), json!("not_permitted"))
    );
    act(&mut staff, "stores/s3/transfers/tr-2/accept", "s3-yes", "staff-1").await?;
    staff
        .wait_latest("stores/s3/transfers/tr-2", |d| d["state"] == json!("accepted"))
        .await?;
    act(&mut staff, "stores/s3/transfers/tr-2/dispatch", "s3-go", "staff-1").await?;
    staff
        .wait_latest("stores/s1/transfers/tr-2", |d| d["state"] == json!("dispatched"))
        .await?;
    staff
        .wait_latest("stores/s3/stock/patty/level", |d| d["qty"] == json!(2))
        .await?;
    act(&mut staff, "stores/s1/transfers/tr-2/receive", "s1-got", "staff-1").await?;
    staff
        .wait_latest("stores/s1/transfers/tr-2", |d| d["state"] == json!("received"))
        .await?;
    staff
        .wait_latest("stores/s1/stock/patty/level", |d| d["qty"] == json!(18))
        .await?;
    assert_eq!(
        staff.latest("stores/s2/stock/patty/level").map(|d| d["qty"].clone()),
        Some(json!(20))
    );
    drop(staff);
    drop(broker);

    assert_eq!(ledger_of(&data, "s3")?, [(StockKindCode::TransferOut, -18)]);
    assert_eq!(ledger_of(&data, "s1")?, [(StockKindCode::TransferIn, 18)]);
    assert!(ledger_of(&data, "s2")?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_proposal_expires_and_moves_on() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    // Proposals expire after three seconds.
    let broker = BrokerProcess::start(&planning_chain(0.05), &data)?;
    let mut staff = sell_s1_out(&broker).await?;
    staff
        .wait_latest("stores/s2/transfers/tr-1", |d| d["state"] == json!("proposed"))
        .await?;
    let expired = staff
        .wait_latest("stores/s2/transfers/tr-1", |d| d["state"] == json!("expired"))
        .await?;
    assert_eq!(expired["expires_at"], Value::Null);
    let tr2 = staff
        .wait_latest("stores/s3/transfers/tr-2", |d| d["state"] == json!("proposed"))
        .await?;
    assert_eq!(tr2["from"], json!("s3"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_transfer_continues_it() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let config = planning_chain(10.0);
    let mut broker = BrokerProcess::start(&config, &data)?;
    let mut staff = sell_s1_out(&broker).await?;
    staff
        .wait_latest("stores/s2/transfers/tr-1", |d| d["state"] == json!("proposed"))
        .await?;
    act(&mut staff, "stores/s2/transfers/tr-1/accept", "s2-yes", "staff-1").await?;
    staff
        .wait_latest("stores/s2/transfers/tr-1", |d| d["state"] == json!("accepted"))
        .await?;
    drop(staff);
    broker.kill();

    let broker = BrokerProcess::start(&config, &data)?;
    let mut staff = Client::connect(broker.addr, "staff-1").await?;
    for store in ["s1", "s2"] {
        watch_store(&mut staff, store).await?;
    }
    // The retained state is back, and the transfer goes on from there.
    let tr = staff
        .wait_latest("stores/s1/transfers/tr-1", |d| d["state"] == json!("accepted"))
        .await?;
    assert_eq!(tr["qty"], json!(18));
    act(&mut staff, "stores/s2/transfers/tr-1/dispatch", "s2-go", "staff-1").await?;
    act(&mut staff, "stores/s1/transfers/tr-1/receive", "s1-got", "staff-1").await?;
    staff
        .wait_latest("stores/s1/transfers/tr-1", |d| d["state"] == json!("received"))
        .await?;
    staff
        .wait_latest("stores/s1/stock/patty/level", |d| d["qty"] == json!(18))
        .await?;
    staff
        .wait_latest("stores/s2/stock/patty/level", |d| d["qty"] == json!(2))
        .await?;
    // No second proposal was made for the same need after the restart.
    assert!(staff.all_on("stores/s1/transfers/tr-2").is_empty());
    Ok(())
}

/// `dishsync watch all --json` shows its store's alerts, replenishment
/// requests and transfers as they happen, not only availability and levels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_the_alerts_requests_and_transfers_of_its_store() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&planning_chain(10.0), &data)?;
    let mut watcher = Watcher::start(
        broker.addr,
        &tmp.path().join("watch"),
        &["--store", "s1", "--device", "manager-1", "watch", "all"],
    )?;
    // The central kitchen watches every store's requests.
    let mut kitchen = Watcher::start(
        broker.addr,
        &tmp.path().join("kitchen"),
        &["--device", "kitchen-1", "--hq", "watch", "requests"],
    )?;

    // s2 and s3 can give; s1 is at its reorder point: a request.
    let mut staff = Client::connect(broker.addr, "staff-1").await?;
    for store in ["s1", "s2", "s3"] {
        staff
            .subscribe(&format!("stores/{store}/acks/staff-1"), QoS::AtLeastOnce)
            .await?;
    }
    stock_stores(&mut staff, 1.0).await?;
    let request = watcher.shown("the request", |v| v["type"] == "request")?;
    assert_eq!(
        (request["data"]["store"].clone(), request["data"]["state"].clone()),
        (json!("s1"), json!("open")),
        "{request}"
    );
    // The request topic is subscribed after the alerts topic: from here
    // on no alert can be missed. Selling the last patty sells burgers out.
    staff
        .publish_json(
            "stores/s1/sales",
            &sale("sale-1", &[("burger", 1)], "staff-1"),
            QoS::ExactlyOnce,
        )
        .await?;
    let alert = watcher.shown("the sold-out alert", |v| {
        v["type"] == "alert" && v["data"]["kind"] == "sold_out" && v["data"]["state"] == "raised"
    })?;
    assert_eq!(alert["data"]["dish"], json!("burger"), "{alert}");
    let transfer = watcher.shown("the transfer proposal", |v| v["type"] == "transfer")?;
    assert_eq!(
        (
            transfer["data"]["from"].clone(),
            transfer["data"]["to"].clone(),
            transfer["data"]["state"].clone()
        ),
        (json!("s2"), json!("s1"), json!("proposed")),
        "{transfer}"
    );
    kitchen.shown("rq-s1-1", |v| v["type"] == "request" && v["data"]["id"] == "rq-s1-1")?;
    Ok(())
}

/// HQ's summary prices the day: patties at 1.20 and buns at 0.25 (0.30 at
/// s1) in euros; a sale and a waste over MQTT move the figures to the cent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_gives_the_days_waste_in_money() -> Result<()> {
    let config = planning_chain(10.0)
        .replace(
            "id = \"patty\"\nname = \"patty\"\nunit = \"pcs\"\nreorder_point = 2\npar = 10\n",
            "id = \"patty\"\nname = \"patty\"\nunit = \"pcs\"\nreorder_point = 2\npar = 10\ncost = 1.20\n",
        )
        .replace(
            "id = \"bun\"\nname = \"bun\"\nunit = \"pcs\"\nreorder_point = 2\npar = 40\n",
            "id = \"bun\"\nname = \"bun\"\nunit = \"pcs\"\nreorder_point = 2\npar = 40\ncost = 0.25\n",
        )
        .replace(
            "stock = { patty = { opening = 5 }, bun = { opening = 40 } }",
            "stock = { patty = { opening = 5 }, bun = { opening = 40, cost = 0.30 } }",
        )
        .replace("[planning]\n", "[planning]\ncurrency = \"EUR\"\n");
    assert!(config.contains("cost = 0.30"), "{config}");
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut hq = Client::connect(broker.addr, "hq-1").await?;
    hq.subscribe("hq/stores/s1/summary", QoS::AtLeastOnce).await?;
    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/acks/pos-1", QoS::AtLeastOnce).await?;
    pos.publish_json(
        "stores/s1/sales",
        &sale("sale-1", &[("burger", 3)], "pos-1"),
        QoS::ExactlyOnce,
    )
    .await?;
    stock_and_wait(
        &mut pos,
        "s1",
        "pos-1",
        &[("patty", stock_event("w-1", "waste", 1.0, "pcs", "pos-1"))],
    )
    .await?;
    // Use: 3 × (1.20 + 0.30) = 4.50; waste: 1.20.
    let summary = hq
        .wait_latest("hq/stores/s1/summary", |s| s["cost"]["waste"] == json!(1.2))
        .await?;
    assert_eq!(
        summary["cost"],
        json!({"currency": "EUR", "waste": 1.2, "used": 4.5, "share": 1.2 / 5.7}),
        "{summary}"
    );
    Ok(())
}

/// Usage variance over MQTT: buns counted, received, sold and wasted, then
/// counted again — the retained variance gives the unexplained use and a
/// `usage_variance` alert; beef on a scale shows its variance live from
/// the readings, and a person's count closes the period. A restart keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_variance_is_published_count_to_count_and_live_on_a_scale() -> Result<()> {
    let config = crate::support::small_chain().replace(
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n",
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\nscales = { scale-1 = { sku = \"beef\" } }\n",
    );
    assert!(config.contains("scale-1"), "{config}");
    let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
    let config = format!(
        "{config}\n[web]\nlisten = \"127.0.0.1:0\"\n\n[[integrations]]\nid = \"erp\"\nrole = \"manager\"\n\
         store = \"s1\"\ntoken_sha256 = \"{hash}\"\n"
    );
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut manager = Client::connect(broker.addr, "manager-1").await?;
    for topic in [
        "stores/s1/acks/manager-1",
        "stores/s1/stock/+/variance",
        "stores/s1/alerts",
    ] {
        manager.subscribe(topic, QoS::AtLeastOnce).await?;
    }
    let bun = |id: &str, kind: &str, qty: f64| ("bun", stock_event(id, kind, qty, "pcs", "manager-1"));
    stock_and_wait(
        &mut manager,
        "s1",
        "manager-1",
        &[bun("c-1", "count", 40.0), bun("r-1", "receive", 20.0)],
    )
    .await?;
    manager
        .publish_json(
            "stores/s1/sales",
            &sale("sale-1", &[("burger", 12)], "manager-1"),
            QoS::ExactlyOnce,
        )
        .await?;
    // 40 + 20 − 12 − 3 = 45 implied; 41 counted: 4 unexplained of 12 sold.
    stock_and_wait(
        &mut manager,
        "s1",
        "manager-1",
        &[bun("w-1", "waste", 3.0), bun("c-2", "count", 41.0)],
    )
    .await?;
    let bun_variance = "stores/s1/stock/bun/variance";
    let doc = manager
        .wait_latest(bun_variance, |d| d["last"]["counted"] == json!(41))
        .await?;
    let last = &doc["last"];
    assert_eq!(
        [
            &last["opening"],
            &last["received"],
            &last["actual"],
            &last["theoretical"],
            &last["waste"],
            &last["unexplained"]
        ],
        [&json!(40), &json!(20), &json!(19), &json!(12), &json!(3), &json!(4)],
        "{doc}"
    );
    assert_eq!(last["share"], json!(4.0 / 12.0));
    let alert = manager
        .wait_latest("stores/s1/alerts", |a| a["kind"] == "usage_variance")
        .await?;
    assert_eq!(
        (&alert["state"], &alert["sku"]),
        (&json!("raised"), &json!("bun")),
        "{alert}"
    );

    // Beef on its scale: a count opens the period, a sale takes 150 g a
    // burger, and the scale's settled readings show the variance live.
    stock_and_wait(
        &mut manager,
        "s1",
        "manager-1",
        &[("beef", stock_event("c-3", "count", 3_000.0, "g", "manager-1"))],
    )
    .await?;
    manager
        .publish_json(
            "stores/s1/sales",
            &sale("sale-2", &[("burger", 4)], "manager-1"),
            QoS::ExactlyOnce,
        )
        .await?;
    let scale = Client::connect(broker.addr, "scale-1").await?;
    let reading =
        json!({"grams": 2_380, "at": dishsync_protocol::payload::Timestamp::now().to_string(), "stable": true});
    scale
        .mqtt
        .publish(
            "stores/s1/scales/scale-1/weight",
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&reading)?,
        )
        .await?;
    // 3,000 − 600 = 2,400 implied; the scale reads 2,380.
    let beef_variance = "stores/s1/stock/beef/variance";
    let live = manager
        .wait_latest(beef_variance, |d| d["live"]["counted"] == json!(2_380))
        .await?;
    assert_eq!(
        (&live["live"]["theoretical"], &live["live"]["unexplained"]),
        (&json!(600), &json!(20)),
        "{live}"
    );
    assert!(live.get("last").is_none(), "a reading closes no period: {live}");

    drop(scale);
    drop(manager);
    drop(broker);
    let broker = BrokerProcess::start(&config, &data)?;
    let mut hq = Client::connect(broker.addr, "watcher").await?;
    hq.subscribe("stores/s1/stock/+/variance", QoS::AtLeastOnce).await?;
    let again = hq
        .wait_latest(bun_variance, |d| d["last"]["counted"] == json!(41))
        .await?;
    assert_eq!(again["last"], doc["last"], "restored as it was");
    let again = hq
        .wait_latest(beef_variance, |d| d["live"]["counted"] == json!(2_380))
        .await?;
    assert_eq!(again["live"], live["live"]);
    // The same documents over HTTP, for a controller's spreadsheet.
    let web = broker.web_addr.ok_or_else(|| anyhow::anyhow!("no web listener"))?;
    let (url, auth) = (
        format!("http://{web}/api/v1/stores/s1/variance"),
        format!("Bearer {token}"),
    );
    let body = tokio::task::spawn_blocking(move || -> Result<String> {
        Ok(ureq::get(&url).set("Authorization", &auth).call()?.into_string()?)
    })
    .await??;
    let listed: Value = serde_json::from_str(&body)?;
    let skus: Vec<&str> = listed["variances"]
        .as_array()
        .map(|all| all.iter().filter_map(|d| d["sku"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(skus, ["beef", "bun"], "{listed}");
    Ok(())
}

/// Slow movers in HQ's summary over MQTT. Yesterday is played through the
/// core with its clock set to yesterday and persisted as the broker
/// persists it — buns delivered, 10 burgers sold, 4 buns wasted — then the
/// broker starts on that data directory: its summary lists buns, 386 on
/// hand at 10 a day, with a suggested par for the kitchen's one delivery a
/// day and the waste they caused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yesterdays_use_makes_slow_movers_in_the_summary() -> Result<()> {
    use dishsync_inventory::{Changes, Input, Inventory};
    use dishsync_protocol::payload::Timestamp;
    let config = crate::support::small_chain()
        .replace("[broker]\nallow_anonymous = true\n", "[broker]\nallow_anonymous = true\n\n[planning]\nsafety_stock = 0.5\n\n[central_kitchen]\nlead_time_minutes = 720\ndelivery_windows = [\"07:00\"]\n");
    assert!(config.contains("safety_stock"), "{config}");
    let config = format!(
        "{config}\n[web]\nlisten = \"127.0.0.1:0\"\n\n{}",
        crate::people::users(&[("ada", "hq", None)])?
    );
    let (tmp, data) = temp_data_dir()?;
    let settings = dishsync_broker::Settings::parse(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    const DAY: i64 = 86_400_000;
    let now = Timestamp::now().0;
    let yesterday = (now.div_euclid(DAY) - 1) * DAY + 10 * 3_600_000;
    let mut inv = Inventory::new(settings.catalog.clone(), yesterday);
    let mut changes = Changes::default();
    let mut entries = Vec::new();
    let inputs = [
        (
            "stores/s1/stock/bun/events",
            json!({"id": "r-1", "kind": "receive", "qty": 400, "unit": "pcs", "at": Timestamp(yesterday).to_string(), "device": "hist"}),
        ),
        (
            "stores/s1/sales",
            json!({"id": "s-1", "lines": [{"dish": "burger", "portions": 10}], "at": Timestamp(yesterday + 1).to_string(), "device": "hist"}),
        ),
        (
            "stores/s1/stock/bun/events",
            json!({"id": "w-1", "kind": "waste", "qty": 4, "unit": "pcs", "at": Timestamp(yesterday + 2).to_string(), "device": "hist", "reason": "stale"}),
        ),
    ];
    for (topic, body) in inputs {
        let input = Input::decode(&topic.parse()?, &serde_json::to_vec(&body)?).map_err(|r| anyhow::anyhow!("{r}"))?;
        let outcome = inv
            .apply(&input, None, yesterday + 3)
            .map_err(|r| anyhow::anyhow!("{r}"))?
            .ok_or_else(|| anyhow::anyhow!("nothing applied"))?;
        changes.merge(outcome.changes);
        entries.extend(outcome.entries);
    }
    // The day ends.
    changes.merge(inv.tick(now));
    {
        let store = Store::open(&data)?;
        let mut commit = store.begin()?;
        commit.ledger(&entries)?;
        dishsync_broker::rules::stage_changes(&mut commit, &inv, &changes)?;
        store.commit(commit).await?;
    }
    let broker = BrokerProcess::start(&config, &data)?;
    let mut hq = Client::connect(broker.addr, "hq-1").await?;
    hq.subscribe("hq/stores/s1/summary", QoS::AtLeastOnce).await?;
    let summary = hq.next_on("hq/stores/s1/summary").await?;
    let movers = summary["slow_movers"].as_array().cloned().unwrap_or_default();
    let bun = movers
        .iter()
        .find(|m| m["sku"] == "bun")
        .ok_or_else(|| anyhow::anyhow!("buns are no slow mover: {summary}"))?;
    // Over the days kept — yesterday, and today too should the broker
    // have started after midnight — 10 a day × (1 day between deliveries +
    // 12 h lead) × 1.5 = 22.5 → 23.
    let days = bun["waste_days"].as_u64().unwrap_or(0);
    anyhow::ensure!((1..=2).contains(&days), "{bun}");
    let usage = 10.0 / days as f64;
    assert_eq!(
        bun,
        &json!({"sku": "bun", "level": 386, "usage_per_day": usage, "cover_days": 386.0 / usage, "par": 20,
                "suggested_par": (usage * 1.5 * 1.5 - 1e-9).ceil() as i64, "waste_days": days, "waste": 4}),
        "{summary}"
    );
    // HQ's view lists it with its suggested par.
    let web = broker.web_addr.ok_or_else(|| anyhow::anyhow!("no web listener"))?;
    let driver = crate::webdriver::Driver::start()?;
    let desktop = driver.browser(1440, 900, &tmp.path().join("hq"))?;
    desktop.log_in(web, "ada", crate::people::PASSWORD)?;
    desktop.wait_until("HQ", "return location.pathname === '/hq';")?;
    let suggested = format!("{} pcs", bun["suggested_par"]);
    desktop.wait_for("tr[data-store=s1][data-sku=bun] td.suggested", |t| t == suggested)?;
    Ok(())
}

/// The cold chain over MQTT: a fridge reports 9 °C for 20 minutes (its
/// readings' own stamps) — past its 15 minutes' grace — so the beef it keeps
/// and the burgers are at risk and `equipment_fault` is raised; the chef
/// discards from the kitchen view in a browser: exactly the beef on hand is
/// booked as waste for the equipment, once — a second discard, over MQTT,
/// is refused in the device's own errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fridge_fault_puts_its_beef_at_risk_and_a_discard_books_it_once() -> Result<()> {
    let config = crate::support::small_chain().replace(
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n",
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n\
         probes = { fridge-1 = { skus = [\"beef\"], min_c = 0, max_c = 5, grace_minutes = 15 } }\n",
    );
    assert!(config.contains("fridge-1"), "{config}");
    let config = format!(
        "{config}\n[web]\nlisten = \"127.0.0.1:0\"\n\n{}",
        crate::people::users(&[("chef-anna", "chef", Some("s1"))])?
    );
    let (tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut chef = Client::connect(broker.addr, "chef-1").await?;
    for topic in [
        "stores/s1/acks/chef-1",
        "stores/s1/errors/chef-1",
        "stores/s1/alerts",
        "stores/s1/stock/beef/level",
        "stores/s1/dishes/burger/availability",
    ] {
        chef.subscribe(topic, QoS::AtLeastOnce).await?;
    }
    stock_and_wait(
        &mut chef,
        "s1",
        "chef-1",
        &[("beef", stock_event("c-1", "count", 3_000.0, "g", "chef-1"))],
    )
    .await?;
    let probe = Client::connect(broker.addr, "fridge-1").await?;
    let now = dishsync_protocol::payload::Timestamp::now().0;
    for minutes_ago in [30, 10] {
        let reading = json!({"celsius": 9.0, "at": dishsync_protocol::payload::Timestamp(now - minutes_ago * 60_000).to_string()});
        probe
            .mqtt
            .publish(
                "stores/s1/probes/fridge-1/temperature",
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&reading)?,
            )
            .await?;
    }
    let fault = chef
        .wait_latest("stores/s1/alerts", |a| a["kind"] == "equipment_fault")
        .await?;
    assert_eq!(
        (&fault["state"], &fault["device"]),
        (&json!("raised"), &json!("fridge-1")),
        "{fault}"
    );
    chef.wait_latest("stores/s1/stock/beef/level", |l| l["at_risk"] == json!(true))
        .await?;
    chef.wait_latest("stores/s1/dishes/burger/availability", |d| d["at_risk"] == json!(true))
        .await?;

    // The chef discards from the kitchen view, on a phone.
    let web = broker.web_addr.ok_or_else(|| anyhow::anyhow!("no web listener"))?;
    let driver = crate::webdriver::Driver::start()?;
    let phone = driver.browser(390, 844, &tmp.path().join("phone"))?;
    phone.log_in(web, "chef-anna", crate::people::PASSWORD)?;
    phone.wait_until("the kitchen", "return location.pathname === '/stores/s1/kitchen';")?;
    phone.wait_until("the page is live", "return document.body.dataset.live === 'ready';")?;
    let card = "li.fault[data-device=fridge-1]";
    phone.wait_for(card, |t| t.contains("fridge-1"))?;
    phone.execute(
        "document.querySelector(arguments[0]).click(); return true;",
        &[json!(format!("{card} button[data-key^=discard]"))],
    )?;
    // Decided: the card goes (a refusal would stay on it, in words).
    phone.wait_until(
        "the fault decided",
        "return document.querySelector('li.fault[data-device=fridge-1]') === null;",
    )?;
    let level = chef
        .wait_latest("stores/s1/stock/beef/level", |l| l["at_risk"] == json!(false))
        .await?;
    assert_eq!(level["qty"], json!(0), "{level}");
    let cleared = chef
        .wait_latest("stores/s1/alerts", |a| {
            a["kind"] == "equipment_fault" && a["state"] == "cleared"
        })
        .await?;
    assert_eq!(cleared["id"], fault["id"]);
    let discard = |id: &str| json!({"id": id, "by": "chef-1"});
    chef.publish_json("stores/s1/probes/fridge-1/discard", &discard("d-2"), QoS::ExactlyOnce)
        .await?;
    let refused = chef.next_on("stores/s1/errors/chef-1").await?;
    assert_eq!(
        (&refused["id"], &refused["code"]),
        (&json!("d-2"), &json!("invalid_transition")),
        "{refused}"
    );

    // The ledger: one waste line of exactly the 3,000 g, for the equipment.
    drop(phone);
    drop(driver);
    drop(chef);
    drop(probe);
    drop(broker);
    let wasted: Vec<(i64, Option<String>)> = Store::open(&data)?
        .ledger()?
        .filter_map(Result::ok)
        .filter(|l| l.kind == EntryKind::Stock(StockKindCode::Waste))
        .map(|l| (l.amount, l.reason))
        .collect();
    assert_eq!(wasted, [(-3_000, Some("equipment_failure".to_string()))]);
    Ok(())
}

/// A promotion's plan, starting `start_in` from now and running a day.
pub(crate) fn promotion_plan(id: &str, dish: &str, stores: &[&str], start_in: std::time::Duration) -> Value {
    use dishsync_protocol::payload::Timestamp;
    let start = Timestamp::now().0 + start_in.as_millis() as i64;
    json!({
        "id": id, "dish": dish, "stores": stores, "portions_per_day": 10,
        "start": Timestamp(start).to_string(), "end": Timestamp(start + 86_400_000).to_string(),
        "by": "hq-1", "note": "burger night",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hq_plans_a_promotion_and_every_store_sees_its_readiness_across_a_kill() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let config = planning_chain(10.0);
    let mut broker = BrokerProcess::start(&config, &data)?;
    let mut hq = Client::connect(broker.addr, "hq-1").await?;
    for filter in [
        "hq/promotions/+",
        "stores/+/promotions/+",
        "hq/acks/hq-1",
        "hq/errors/hq-1",
        "hq/replenishment/+",
    ] {
        hq.subscribe(filter, QoS::AtLeastOnce).await?;
    }
    // A dish that does not exist: refused on HQ's errors topic, nothing shown.
    let hours = |h: u64, m: u64| std::time::Duration::from_secs(h * 3600 + m * 60);
    let bad = promotion_plan("plan-0", "pizza", &["s1"], hours(10, 30));
    hq.publish_json("hq/promotions/p1/plan", &bad, QoS::AtLeastOnce).await?;
    let error = hq.wait_latest("hq/errors/hq-1", |e| e["id"] == json!("plan-0")).await?;
    assert_eq!(
        (error["code"].clone(), error["topic"].clone()),
        (json!("unknown_dish"), json!("hq/promotions/p1/plan"))
    );

    // Ten hours of the kitchen's lead time and 30 minutes before it starts:
    // the next delivery is the last in time, so a short store's line goes
    // now. s1 has 5 patties of the 10 a day needs; s2 opened empty, but its
    // opening request arrives in time.
    let plan = promotion_plan("plan-1", "burger", &["s1", "s2"], hours(10, 30));
    hq.publish_json("hq/promotions/p1/plan", &plan, QoS::ExactlyOnce)
        .await?;
    hq.wait_until("the plan's ack", |seen| {
        seen.iter().any(|m| {
            m.topic == "hq/acks/hq-1"
                && m.json["ids"]
                    .as_array()
                    .is_some_and(|ids| ids.contains(&json!("plan-1")))
        })
    })
    .await?;
    let early = hq
        .wait_latest("hq/replenishment/rq-s1-1", |d| d["state"] == json!("open"))
        .await?;
    assert_eq!(
        early["lines"],
        json!([{"sku": "patty", "qty": 7, "unit": "pcs", "received": false}]),
        "⌈10 × 1.2⌉ − 5"
    );
    assert!(
        early["reason"].as_str().is_some_and(|r| r.contains("promotion p1")),
        "{early}"
    );
    let s1 = hq
        .wait_latest("stores/s1/promotions/p1", |d| d["request"] == json!("rq-s1-1"))
        .await?;
    assert_eq!(
        (s1["status"].clone(), s1["coverage"].clone(), s1["state"].clone()),
        (json!("ready"), json!(1.2), json!("scheduled"))
    );
    assert_eq!(
        s1["ingredients"][0],
        json!({"sku": "patty", "unit": "pcs", "need": 10, "on_hand": 5, "due": 7, "coverage": 1.2})
    );
    let s2 = hq.wait_latest("stores/s2/promotions/p1", |_| true).await?;
    assert_eq!(
        (s2["status"].clone(), s2["limiting"].clone(), s2["coverage"].clone()),
        (json!("at_risk"), json!("patty"), json!(1.0))
    );
    let shown = hq
        .wait_latest("hq/promotions/p1", |d| {
            d["stores"].as_array().is_some_and(|s| s.len() == 2) && d["stores"][1]["status"] == json!("ready")
        })
        .await?;
    let order: Vec<&str> = shown["stores"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["store"].as_str())
        .collect();
    assert_eq!(order, ["s2", "s1"], "worst first");

    // The same plan again is acked and changes nothing.
    let acks_before = hq.all_on("hq/acks/hq-1").len();
    hq.publish_json("hq/promotions/p1/plan", &plan, QoS::ExactlyOnce)
        .await?;
    hq.wait_until("the repeat's ack", |seen| {
        seen.iter().filter(|m| m.topic == "hq/acks/hq-1").count() > acks_before
    })
    .await?;
    let rev = shown["rev"].clone();

    drop(hq);
    broker.kill();
    let broker = BrokerProcess::start(&config, &data)?;
    let mut hq = Client::connect(broker.addr, "hq-1").await?;
    for filter in [
        "hq/promotions/+",
        "stores/+/promotions/+",
        "hq/acks/hq-1",
        "hq/replenishment/+",
    ] {
        hq.subscribe(filter, QoS::AtLeastOnce).await?;
    }
    let back = hq.wait_latest("hq/promotions/p1", |_| true).await?;
    assert_eq!(
        (back["rev"].clone(), back["stores"].clone()),
        (rev, shown["stores"].clone()),
        "as it was"
    );
    let s1_back = hq.wait_latest("stores/s1/promotions/p1", |_| true).await?;
    assert_eq!(s1_back["rev"], s1["rev"]);
    // Re-judged on its first tick, nothing more is asked of the kitchen.
    let requests: Vec<String> = hq
        .seen
        .iter()
        .filter(|m| m.topic.starts_with("hq/replenishment/rq-s1"))
        .map(|m| m.topic.clone())
        .collect();
    assert!(requests.iter().all(|t| t == "hq/replenishment/rq-s1-1"), "{requests:?}");

    // Called off: both documents say so, the HQ one names who.
    hq.publish_json(
        "hq/promotions/p1/cancel",
        &json!({"id": "cancel-1", "by": "hq-1", "note": "supplier recall"}),
        QoS::ExactlyOnce,
    )
    .await?;
    let off = hq
        .wait_latest("hq/promotions/p1", |d| d["state"] == json!("cancelled"))
        .await?;
    assert_eq!(off["note"], json!("supplier recall"));
    hq.wait_latest("stores/s2/promotions/p1", |d| d["state"] == json!("cancelled"))
        .await?;
    hq.wait_until("the cancellation's ack", |seen| {
        seen.iter().any(|m| {
            m.topic == "hq/acks/hq-1"
                && m.json["ids"]
                    .as_array()
                    .is_some_and(|ids| ids.contains(&json!("cancel-1")))
        })
    })
    .await?;
    Ok(())
}
