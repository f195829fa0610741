//! Bad input: one clear error on the sender's `errors` topic, nothing
//! applied, the next valid input still applied.

use anyhow::Result;
use rumqttc::QoS;
use serde_json::json;

use crate::availability::stock_and_wait;
use crate::support::{sale, small_chain, stock_event, temp_data_dir, BrokerProcess, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_one_error_and_changes_nothing() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let mut dev = Client::connect(broker.addr, "bad-1").await?;
    dev.subscribe("stores/s1/acks/bad-1", QoS::AtLeastOnce).await?;
    dev.subscribe("stores/+/errors/bad-1", QoS::AtLeastOnce).await?;
    dev.subscribe("stores/s1/stock/beef/level", QoS::AtLeastOnce).await?;
    dev.subscribe("stores/s1/dishes/burger/availability", QoS::AtLeastOnce)
        .await?;
    stock_and_wait(
        &mut dev,
        "s1",
        "bad-1",
        &[("beef", stock_event("ok-0", "receive", 1.0, "kg", "bad-1"))],
    )
    .await?;
    let level = "stores/s1/stock/beef/level";
    let before = dev.wait_latest(level, |d| d["qty"] == json!(1000)).await?;

    let beef = "stores/s1/stock/beef/events";
    let good = stock_event("x", "receive", 1.0, "kg", "bad-1");
    let with = |field: &str, value: serde_json::Value| {
        let mut e = good.clone();
        e[field] = value;
        e
    };
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (beef, b"{\"id\": \"b1\", not json".to_vec(), "s1", "malformed_payload"),
        (
            beef,
            serde_json::to_vec(&json!({"id": "b2", "kind": "receive"}))?,
            "s1",
            "missing_field",
        ),
        (
            beef,
            serde_json::to_vec(&with("id", json!("b2b")).as_object().map(|o| {
                let mut o = o.clone();
                o.insert("qty".into(), json!("two"));
                o
            }))?,
            "s1",
            "malformed_payload",
        ),
        (
            "stores/s1/sales",
            serde_json::to_vec(&{
                let mut s = sale("b2c", &[("burger", 1)], "bad-1");
                s.as_object_mut().map(|o| o.remove("device"));
                s
            })?,
            "s1",
            "missing_field",
        ),
        // A count from a clock two hours fast would freeze the level.
        (
            beef,
            serde_json::to_vec(&{
                let mut e = with("id", json!("b2f"));
                e["kind"] = json!("count");
                e["at"] = json!(dishsync_protocol::payload::Timestamp(
                    dishsync_protocol::payload::Timestamp::now().0 + 2 * 3_600_000
                )
                .to_string());
                e
            })?,
            "s1",
            "clock_ahead",
        ),
        // A device naming another device: the ack would go astray.
        (
            beef,
            serde_json::to_vec(&stock_event("b2d", "receive", 1.0, "kg", "pos-9"))?,
            "s1",
            "device_mismatch",
        ),
        (
            "stores/s1/sales",
            serde_json::to_vec(&sale("b2e", &[("burger", 1)], "pos-9"))?,
            "s1",
            "device_mismatch",
        ),
        (
            beef,
            serde_json::to_vec(&with("id", json!("b3")).as_object().map(|o| {
                let mut o = o.clone();
                o.insert("colour".into(), json!("red"));
                o
            }))?,
            "s1",
            "malformed_payload",
        ),
        (
            "stores/nowhere/stock/beef/events",
            serde_json::to_vec(&with("id", json!("b4")))?,
            "nowhere",
            "unknown_store",
        ),
        (
            "stores/s1/stock/caviar/events",
            serde_json::to_vec(&with("id", json!("b5")))?,
            "s1",
            "unknown_sku",
        ),
        (
            "stores/s1/sales",
            serde_json::to_vec(&sale("b6", &[("pizza", 1)], "bad-1"))?,
            "s1",
            "unknown_dish",
        ),
        (
            beef,
            serde_json::to_vec(&{
                let mut e = with("id", json!("b7"));
                e["unit"] = json!("l");
                e
            })?,
            "s1",
            "wrong_unit",
        ),
        (
            beef,
            serde_json::to_vec(&{
                let mut e = with("id", json!("b8"));
                e["qty"] = json!(-2);
                e
            })?,
            "s1",
            "bad_quantity",
        ),
        (
            beef,
            serde_json::to_vec(&{
                let mut e = with("id", json!("b9"));
                e["kind"] = json!("waste");
                e
            })?,
            "s1",
            "invalid_field",
        ),
        (
            beef,
            {
                let mut p = serde_json::to_vec(&with("id", json!("b10")))?;
                p.resize(20_000, b' ');
                p
            },
            "s1",
            "oversize",
        ),
        (
            "stores/s1/stock/beef/whatever",
            serde_json::to_vec(&with("id", json!("b11")))?,
            "s1",
            "unknown_topic",
        ),
        (
            "stores/s1/stock/beef/level",
            serde_json::to_vec(&json!({"qty": 999999}))?,
            "s1",
            "unknown_topic",
        ),
        (
            "stores/s1/dishes/burger/availability",
            serde_json::to_vec(&json!({"status": "available"}))?,
            "s1",
            "unknown_topic",
        ),
    ];
    for (i, (topic, payload, store, code)) in cases.iter().enumerate() {
        let qos = if i % 2 == 0 { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
        dev.publish_raw(topic, payload.clone(), qos).await?;
        let err = dev.next_on(&format!("stores/{store}/errors/bad-1")).await?;
        assert_eq!(err["code"], json!(code), "case {i} ({topic}): {err}");
        assert_eq!(err["topic"], json!(topic), "case {i}");
        // The id is named whenever the payload has one to read (an
        // oversize payload is not read at all).
        let readable = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .filter(|_| payload.len() <= dishsync_protocol::MAX_INPUT_PAYLOAD)
            .and_then(|v| v["id"].as_str().map(String::from));
        assert_eq!(err["id"], json!(readable), "case {i}: {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "case {i}: a reason is given"
        );
    }

    // The next valid input is applied, and its ack arrives after every error
    // above: count them now — exactly one per bad input.
    stock_and_wait(
        &mut dev,
        "s1",
        "bad-1",
        &[("beef", stock_event("ok-1", "consume", 150.0, "g", "bad-1"))],
    )
    .await?;
    let after = dev.wait_latest(level, |d| d["qty"] == json!(850)).await?;
    assert_eq!(
        after["rev"].as_u64(),
        before["rev"].as_u64().map(|r| r + 1),
        "nothing bad moved the level"
    );
    let errors = dev.seen.iter().filter(|m| m.topic.ends_with("/errors/bad-1")).count();
    assert_eq!(errors, cases.len());
    // The spoofed documents on broker-owned topics were never routed.
    let burger = "stores/s1/dishes/burger/availability";
    assert!(!dev.all_on(burger).is_empty());
    assert!(dev
        .all_on(burger)
        .iter()
        .chain(dev.all_on(level).iter())
        .all(|d| d["store"] == json!("s1")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_is_applied_once_and_a_reused_id_is_refused() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let mut dev = Client::connect(broker.addr, "scale-9").await?;
    dev.subscribe("stores/s1/acks/scale-9", QoS::AtLeastOnce).await?;
    dev.subscribe("stores/s1/errors/scale-9", QoS::AtLeastOnce).await?;
    dev.subscribe("stores/s1/stock/fries/level", QoS::AtLeastOnce).await?;
    let topic = "stores/s1/stock/fries/events";
    let event = stock_event("same-id", "receive", 2.5, "kg", "scale-9");
    for _ in 0..3 {
        dev.publish_json(topic, &event, QoS::ExactlyOnce).await?;
    }
    dev.wait_until("three acks", |seen| {
        seen.iter().filter(|m| m.topic == "stores/s1/acks/scale-9").count() == 3
    })
    .await?;
    let level = dev
        .wait_latest("stores/s1/stock/fries/level", |d| d["qty"] == json!(2500))
        .await?;

    // The same id with other content is an error, not an update.
    dev.publish_json(
        topic,
        &stock_event("same-id", "receive", 9.0, "kg", "scale-9"),
        QoS::ExactlyOnce,
    )
    .await?;
    let err = dev.next_on("stores/s1/errors/scale-9").await?;
    assert_eq!(
        (err["code"].clone(), err["id"].clone()),
        (json!("id_conflict"), json!("same-id"))
    );

    // A later event proves the level never moved past one application.
    stock_and_wait(
        &mut dev,
        "s1",
        "scale-9",
        &[("fries", stock_event("next", "consume", 500.0, "g", "scale-9"))],
    )
    .await?;
    let after = dev
        .wait_latest("stores/s1/stock/fries/level", |d| d["qty"] == json!(2000))
        .await?;
    assert_eq!(after["rev"].as_u64(), level["rev"].as_u64().map(|r| r + 1));
    let levels = dev.all_on("stores/s1/stock/fries/level");
    assert!(
        levels
            .iter()
            .all(|d| d["qty"] != json!(5000) && d["qty"] != json!(7500)),
        "{levels:?}"
    );
    Ok(())
}
