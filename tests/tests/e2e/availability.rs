//! Availability as a POS sees it: retained on connect, sold out by sales,
//! restored by voids, overridden by the chef.

use anyhow::Result;
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::support::TestDish;

use crate::support::{chain_toml, sale, small_chain, stock_event, temp_data_dir, BrokerProcess, Client};

/// Publishes stock events from `device` and waits for their end-to-end acks.
pub async fn stock_and_wait(client: &mut Client, store: &str, device: &str, events: &[(&str, Value)]) -> Result<()> {
    let acks = format!("stores/{store}/acks/{device}");
    for (sku, ev) in events {
        client
            .publish_json(&format!("stores/{store}/stock/{sku}/events"), ev, QoS::ExactlyOnce)
            .await?;
    }
    let ids: Vec<String> = events
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    client
        .wait_until("acks", |seen| {
            ids.iter().all(|id| {
                seen.iter()
                    .any(|m| m.topic == acks && m.json["ids"].as_array().is_some_and(|a| a.iter().any(|x| x == id)))
            })
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_gets_the_retained_availability_of_all_150_dishes() -> Result<()> {
    let skus: Vec<String> = (0..10).map(|i| format!("sku-{i}")).collect();
    let dish_ids: Vec<String> = (0..150).map(|i| format!("dish-{i:03}")).collect();
    let sku_rows: Vec<(&str, &str, i64, i64)> = skus.iter().map(|s| (s.as_str(), "pcs", 5, 50)).collect();
    // dish-i uses (i % 7 + 1) pieces of sku-(i % 10).
    let dishes: Vec<TestDish> = dish_ids
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), 2, vec![(skus[i % 10].as_str(), (i % 7 + 1) as i64)]))
        .collect();
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&chain_toml(&["big"], &sku_rows, &dishes), &data)?;

    let mut scale = Client::connect(broker.addr, "scale-1").await?;
    scale.subscribe("stores/big/acks/scale-1", QoS::AtLeastOnce).await?;
    let events: Vec<(&str, Value)> = skus
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s.as_str(),
                stock_event(&format!("recv-{i}"), "receive", 30.0 + i as f64, "pcs", "scale-1"),
            )
        })
        .collect();
    stock_and_wait(&mut scale, "big", "scale-1", &events).await?;

    let mut pos = Client::connect(broker.addr, "pos-late").await?;
    pos.subscribe("stores/big/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    pos.wait_until("150 dishes", |seen| {
        let mut topics: Vec<&str> = seen.iter().map(|m| m.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        topics.len() >= 150
    })
    .await?;
    for (i, dish) in dish_ids.iter().enumerate() {
        let doc = pos
            .latest(&format!("stores/big/dishes/{dish}/availability"))
            .cloned()
            .unwrap_or_default();
        let stock = 30 + (i % 10) as u64;
        let want = stock / (i % 7 + 1) as u64;
        assert_eq!(doc["portions"], json!(want), "{dish}: {doc}");
        assert_eq!(doc["limited_by"], json!(skus[i % 10]), "{dish}");
    }
    assert_eq!(pos.seen.len(), 150, "exactly one retained copy per dish");

    let mut menu = Client::connect(broker.addr, "pos-menu").await?;
    menu.subscribe("stores/big/availability", QoS::AtLeastOnce).await?;
    let doc = menu
        .wait_latest("stores/big/availability", |d| {
            d["dishes"].as_object().is_some_and(|m| m.len() == 150)
        })
        .await?;
    assert_eq!(doc["dishes"]["dish-000"]["portions"], json!(30));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_sells_a_dish_out_and_its_void_brings_it_back() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let mut tablet = Client::connect(broker.addr, "tablet-1").await?;
    tablet.subscribe("stores/s1/acks/tablet-1", QoS::AtLeastOnce).await?;
    stock_and_wait(
        &mut tablet,
        "s1",
        "tablet-1",
        &[
            ("bun", stock_event("r1", "receive", 2.0, "pcs", "tablet-1")),
            ("beef", stock_event("r2", "receive", 1.0, "kg", "tablet-1")),
        ],
    )
    .await?;

    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/dishes/burger/availability", QoS::AtLeastOnce)
        .await?;
    pos.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    pos.subscribe("stores/s1/acks/pos-1", QoS::AtLeastOnce).await?;
    pos.subscribe("stores/s1/errors/pos-1", QoS::AtLeastOnce).await?;
    let burger = "stores/s1/dishes/burger/availability";
    let before = pos.wait_latest(burger, |d| d["portions"] == json!(2)).await?;
    assert_eq!(before["status"], json!("available"));

    pos.publish_json(
        "stores/s1/sales",
        &sale("sale-1", &[("burger", 2)], "pos-1"),
        QoS::ExactlyOnce,
    )
    .await?;
    let out = pos.wait_latest(burger, |d| d["status"] == json!("sold_out")).await?;
    assert_eq!(
        (out["portions"].clone(), out["limited_by"].clone()),
        (json!(0), json!("bun"))
    );
    assert_eq!(out["rev"].as_u64(), before["rev"].as_u64().map(|r| r + 1));
    pos.wait_latest("stores/s1/stock/beef/level", |d| d["qty"] == json!(700))
        .await?;

    pos.publish_json(
        "stores/s1/sales",
        &json!({"id": "void-1", "void": "sale-1"}),
        QoS::ExactlyOnce,
    )
    .await?;
    let back = pos.wait_latest(burger, |d| d["status"] == json!("available")).await?;
    assert_eq!(back["portions"], json!(2));
    pos.wait_latest("stores/s1/stock/beef/level", |d| d["qty"] == json!(1000))
        .await?;
    pos.wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(2))
        .await?;

    // A second void of the same sale, and a void of an unknown sale.
    pos.publish_json(
        "stores/s1/sales",
        &json!({"id": "void-2", "void": "sale-1"}),
        QoS::ExactlyOnce,
    )
    .await?;
    let err = pos.next_on("stores/s1/errors/pos-1").await?;
    assert_eq!(
        (err["id"].clone(), err["code"].clone()),
        (json!("void-2"), json!("bad_void"))
    );
    pos.publish_json(
        "stores/s1/sales",
        &json!({"id": "void-3", "void": "sale-404"}),
        QoS::ExactlyOnce,
    )
    .await?;
    let err = pos.next_on("stores/s1/errors/pos-1").await?;
    assert_eq!(
        (err["id"].clone(), err["code"].clone()),
        (json!("void-3"), json!("bad_void"))
    );
    assert_eq!(
        pos.latest("stores/s1/stock/beef/level").map(|d| d["qty"].clone()),
        Some(json!(1000))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_86_wins_until_released_or_until_its_time() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let mut kds = Client::connect(broker.addr, "kds-1").await?;
    kds.subscribe("stores/s1/acks/kds-1", QoS::AtLeastOnce).await?;
    kds.subscribe("stores/s1/dishes/chips/availability", QoS::AtLeastOnce)
        .await?;
    let chips = "stores/s1/dishes/chips/availability";
    stock_and_wait(
        &mut kds,
        "s1",
        "kds-1",
        &[("fries", stock_event("r1", "receive", 2.0, "kg", "kds-1"))],
    )
    .await?;
    kds.wait_latest(chips, |d| d["status"] == json!("available")).await?;

    let topic = "stores/s1/dishes/chips/override";
    kds.publish_json(
        topic,
        &json!({"id": "o1", "status": "sold_out", "by": "chef-anna", "note": "fryer down"}),
        QoS::ExactlyOnce,
    )
    .await?;
    let d = kds.wait_latest(chips, |d| d["status"] == json!("sold_out")).await?;
    assert_eq!(
        (d["override"]["by"].clone(), d["portions"].clone()),
        (json!("chef-anna"), json!(10))
    );

    // More stock does not lift the 86.
    stock_and_wait(
        &mut kds,
        "s1",
        "kds-1",
        &[("fries", stock_event("r2", "receive", 1.0, "kg", "kds-1"))],
    )
    .await?;
    let d = kds.wait_latest(chips, |d| d["portions"] == json!(15)).await?;
    assert_eq!(d["status"], json!("sold_out"));

    kds.publish_json(
        topic,
        &json!({"id": "o2", "status": "auto", "by": "chef-anna"}),
        QoS::ExactlyOnce,
    )
    .await?;
    let d = kds.wait_latest(chips, |d| d["status"] == json!("available")).await?;
    assert_eq!(d["override"], Value::Null);

    // An 86 until a time lapses by itself.
    let until = dishsync_protocol::payload::Timestamp(dishsync_protocol::payload::Timestamp::now().0 + 1500);
    kds.publish_json(
        topic,
        &json!({"id": "o3", "status": "sold_out", "by": "chef-anna", "until": until.to_string()}),
        QoS::ExactlyOnce,
    )
    .await?;
    let d = kds.wait_latest(chips, |d| d["status"] == json!("sold_out")).await?;
    assert_eq!(d["override"]["until"], json!(until.to_string()));
    let d = kds.wait_latest(chips, |d| d["status"] == json!("available")).await?;
    assert_eq!(d["override"], Value::Null);
    Ok(())
}

/// A scale bound to a SKU keeps its level from settled readings: net of the
/// tray, rounded to pieces, noise and moving readings ignored, each count in
/// the ledger under the reading's id (checked after a kill -9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_scale_keeps_its_sku_level_from_settled_readings() -> Result<()> {
    let config = small_chain().replace(
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n",
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n\
         scales = { scale-1 = { sku = \"beef\", tare_grams = 300 }, scale-2 = { sku = \"bun\", piece_grams = 60 } }\n",
    );
    let (_tmp, data) = temp_data_dir()?;
    let mut broker = BrokerProcess::start(&config, &data)?;
    let mut pos = Client::connect(broker.addr, "pos-1").await?;
    pos.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    pos.subscribe("stores/s1/dishes/burger/availability", QoS::AtLeastOnce)
        .await?;
    let beef = "stores/s1/stock/beef/level";
    pos.wait_latest(beef, |l| l["qty"] == 0).await?;

    let scale1 = Client::connect(broker.addr, "scale-1").await?;
    let scale2 = Client::connect(broker.addr, "scale-2").await?;
    let t0 = dishsync_protocol::payload::Timestamp::now().0;
    let reading = |grams: i64, stable: bool, k: i64| json!({"grams": grams, "at": dishsync_protocol::payload::Timestamp(t0 + k).to_string(), "stable": stable});
    let weigh = |scale: &Client, device: &str, body: Value| {
        let topic = format!("stores/s1/scales/{device}/weight");
        let mqtt = scale.mqtt.clone();
        async move {
            mqtt.publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&body)?)
                .await?;
            anyhow::Ok(())
        }
    };
    // 605 g of buns at 60 g each: 10.
    weigh(&scale2, "scale-2", reading(605, true, 1)).await?;
    // In order from one scale: a settled 2.3 kg (2,000 g of beef on the
    // 300 g tray), a moving 5 kg, 2,305 g (5 g of noise), a settled 2 kg.
    for (grams, stable, k) in [(2_300, true, 2), (5_000, false, 3), (2_305, true, 4), (2_000, true, 5)] {
        weigh(&scale1, "scale-1", reading(grams, stable, k)).await?;
    }
    pos.wait_latest(beef, |l| l["qty"] == 1_700).await?;
    // Live delivery may skip a document superseded within milliseconds, never
    // show a state that was not: noise and the moving reading are absent.
    let levels: Vec<i64> = pos.all_on(beef).iter().filter_map(|l| l["qty"].as_i64()).collect();
    assert!(
        levels.iter().all(|q| [0, 2_000, 1_700].contains(q)) && levels.last() == Some(&1_700),
        "noise and a moving reading publish nothing: {levels:?}"
    );
    // The two scales publish independently: the buns' level may come after
    // the beef's.
    pos.wait_latest("stores/s1/stock/bun/level", |l| l["qty"] == 10).await?;
    // 1,700 g of beef and 10 buns: 10 burgers.
    pos.wait_latest("stores/s1/dishes/burger/availability", |d| d["portions"] == 10)
        .await?;
    // Two readings stamped in the same millisecond are no id conflict: a
    // reading is an absolute count, not an event with an id to protect.
    pos.subscribe("stores/s1/errors/scale-1", QoS::AtLeastOnce).await?;
    weigh(&scale1, "scale-1", reading(1_900, true, 5)).await?;
    weigh(&scale1, "scale-1", reading(1_300, true, 6)).await?;
    pos.wait_latest(beef, |l| l["qty"] == 1_000).await?;
    assert!(
        pos.all_on("stores/s1/errors/scale-1").is_empty(),
        "no error for a reading"
    );

    broker.kill();
    let counts: Vec<(String, i64)> = dishsync_broker::store::Store::open(&data)?
        .ledger()?
        .filter_map(|e| e.ok())
        .filter(|e| e.sku.as_str() == "beef")
        .map(|e| (e.event.to_string(), e.amount))
        .collect();
    assert_eq!(
        counts,
        [
            (format!("scale-1:w:{}", t0 + 2), 2_000),
            (format!("scale-1:w:{}", t0 + 5), 1_700),
            (format!("scale-1:w:{}", t0 + 5), 1_600),
            (format!("scale-1:w:{}", t0 + 6), 1_000)
        ]
    );
    Ok(())
}

/// topics.md: a PUBACK means the retained documents already show the
/// change. A POS that subscribes the moment the scale holds its PUBACK gets
/// the new level as its retained document, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_puback_the_retained_level_already_shows_the_change() -> Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let mut opts = MqttOptions::new("scale-1", broker.addr.ip().to_string(), broker.addr.port());
    opts.set_keep_alive(std::time::Duration::from_secs(30));
    let (scale, mut eventloop) = AsyncClient::new(opts, 64);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
    let level = "stores/s1/stock/fries/level";
    for k in 1..=10i64 {
        let ev = stock_event(&format!("r{k}"), "receive", 100.0, "g", "scale-1");
        scale
            .publish(
                "stores/s1/stock/fries/events",
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&ev)?,
            )
            .await?;
        loop {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => anyhow::bail!("scale connection: {e}"),
                Err(_) => anyhow::bail!("no PUBACK in time"),
            }
        }
        let mut pos = Client::connect(broker.addr, &format!("pos-{k}")).await?;
        pos.subscribe(level, QoS::AtLeastOnce).await?;
        let retained = pos.next_on(level).await?;
        assert_eq!(retained["qty"], json!(100 * k), "after PUBACK {k}: {retained}");
    }
    Ok(())
}

/// Eight POS terminals race guarded sales of one burger each for the last
/// three: exactly three are sold, five are refused with the portions left,
/// and the levels are exact — nothing oversold, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pos_terminals_racing_guarded_sales_for_the_last_portions_sell_exactly_those() -> Result<()> {
    const POS: usize = 8;
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let mut manager = Client::connect(broker.addr, "manager-1").await?;
    manager.subscribe("stores/s1/acks/manager-1", QoS::AtLeastOnce).await?;
    manager.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    // 3 buns and plenty of beef: 3 burgers.
    stock_and_wait(
        &mut manager,
        "s1",
        "manager-1",
        &[
            ("bun", stock_event("c-bun", "count", 3.0, "pcs", "manager-1")),
            ("beef", stock_event("c-beef", "count", 3.0, "kg", "manager-1")),
        ],
    )
    .await?;
    let mut terminals = Vec::new();
    for n in 0..POS {
        let device = format!("pos-{n}");
        let mut pos = Client::connect(broker.addr, &device).await?;
        pos.subscribe(&format!("stores/s1/acks/{device}"), QoS::AtLeastOnce)
            .await?;
        pos.subscribe(&format!("stores/s1/errors/{device}"), QoS::AtLeastOnce)
            .await?;
        terminals.push((device, pos));
    }
    // Every terminal publishes before any answer is awaited.
    for (device, pos) in &terminals {
        let mut body = sale(&format!("g-{device}"), &[("burger", 1)], device);
        body["guarded"] = json!(true);
        pos.publish_json("stores/s1/sales", &body, QoS::ExactlyOnce).await?;
    }
    let (mut sold, mut refused) = (0, 0);
    for (device, pos) in &mut terminals {
        let (acks, errors) = (format!("stores/s1/acks/{device}"), format!("stores/s1/errors/{device}"));
        let answer = pos
            .wait_until("an answer", |seen| {
                seen.iter().any(|m| m.topic == acks || m.topic == errors)
            })
            .await?
            .iter()
            .find(|m| m.topic == acks || m.topic == errors)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no answer"))?;
        if answer.topic == acks {
            sold += 1;
        } else {
            refused += 1;
            assert_eq!(answer.json["code"], json!("insufficient_stock"), "{}", answer.json);
            let left = answer.json["portions_left"]["burger"].as_u64();
            assert!(left.is_some_and(|l| l < 3), "{}", answer.json);
        }
    }
    assert_eq!((sold, refused), (3, POS - 3));
    manager
        .wait_latest("stores/s1/stock/bun/level", |l| l["qty"] == json!(0))
        .await?;
    manager
        .wait_latest("stores/s1/stock/beef/level", |l| l["qty"] == json!(3000 - 3 * 150))
        .await?;
    Ok(())
}

/// A POS too slow for the load — one message in flight, a queue of a
/// thousand, not reading while 1,100 changes of fries (each a new level
/// and a new chips dish) come after the last of beef — is not buried under
/// every version: its topics wait for it to drain (newer documents
/// replacing older ones meanwhile), and whatever its full queue would drop
/// is paid back with the topic's newest. Once it reads again it converges
/// to the latest revision of every level and every dish, having been
/// handed far fewer documents than were made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pos_too_slow_for_the_load_converges_to_the_latest_of_every_document() -> Result<()> {
    const FLOOD: usize = 1_100;
    let (_tmp, data) = temp_data_dir()?;
    let config = small_chain().replace(
        "allow_anonymous = true\n",
        "allow_anonymous = true\nmax_inflight = 1\nmax_mqueue_len = 1000\nmax_publish_rate = 100000\n",
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let filters = ["stores/s1/stock/+/level", "stores/s1/dishes/+/availability"];
    // Three levels, three dishes.
    const TOPICS: usize = 6;

    // The slow POS: its retained levels and dishes first, then it stops
    // reading.
    let mut options = rumqttc::MqttOptions::new("slow-pos", broker.addr.ip().to_string(), broker.addr.port());
    options.set_keep_alive(std::time::Duration::from_secs(120));
    let (slow, mut slow_loop) = rumqttc::AsyncClient::new(options, 100);
    for filter in filters {
        slow.subscribe(filter, QoS::AtLeastOnce).await?;
    }
    let mut held: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
    while held.len() < TOPICS {
        let event = tokio::time::timeout_at(deadline, slow_loop.poll()).await??;
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
            let doc: Value = serde_json::from_slice(&p.payload)?;
            held.insert(p.topic.clone(), doc["rev"].as_u64().unwrap_or(0));
        }
    }

    let mut kds = Client::connect(broker.addr, "kds-1").await?;
    kds.subscribe("stores/s1/acks/kds-1", QoS::AtLeastOnce).await?;
    let book = |sku: &'static str, grams: f64, n: usize| {
        (0..n).map(move |i| (sku, stock_event(&format!("{sku}-{i}"), "receive", grams, "g", "kds-1")))
    };
    // Beef changes a few times, then never again; fries change one at a
    // time, each its own group and so its own documents: a level, and a
    // portion more of chips (200 g each).
    // One at a time: the broker takes one unacknowledged message per
    // connection here.
    for event in book("beef", 1.0, 3).chain(book("fries", 200.0, FLOOD)) {
        stock_and_wait(&mut kds, "s1", "kds-1", &[event]).await?;
    }

    // The latest of every level and dish, as a new POS finds it.
    let mut fresh = Client::connect(broker.addr, "fresh-pos").await?;
    for filter in filters {
        fresh.subscribe(filter, QoS::AtLeastOnce).await?;
    }
    fresh
        .wait_until("every level and dish", |seen| seen.len() >= TOPICS)
        .await?;
    let latest: std::collections::BTreeMap<String, u64> = fresh
        .seen
        .iter()
        .map(|m| (m.topic.clone(), m.json["rev"].as_u64().unwrap_or(0)))
        .collect();
    for topic in ["stores/s1/stock/fries/level", "stores/s1/dishes/chips/availability"] {
        assert_eq!(latest[topic], held[topic] + FLOOD as u64, "{topic}");
    }

    // The slow POS reads again, and ends up holding exactly that.
    let mut received = 0usize;
    while held != latest {
        let event = tokio::time::timeout_at(deadline, slow_loop.poll())
            .await
            .map_err(|_| anyhow::anyhow!("the slow POS holds {held:?}, not the latest {latest:?}"))??;
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
            received += 1;
            let doc: Value = serde_json::from_slice(&p.payload)?;
            let rev = doc["rev"].as_u64().unwrap_or(0);
            let mine = held.entry(p.topic.clone()).or_insert(0);
            *mine = (*mine).max(rev);
        }
    }
    assert!(
        received < FLOOD,
        "the {} versions it could not take were coalesced ({received} received)",
        2 * FLOOD
    );
    Ok(())
}

/// A POS that stops reading while 1,200 different levels change once each
/// (one message in flight, a queue of a thousand) loses the oldest of them
/// to its full queue — each one its topic's latest. Once it reads again it
/// holds the latest of every level all the same: each dropped document is
/// owed to it and paid back with its topic's newest as its queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_a_full_queue_dropped_are_paid_back_with_the_newest() -> Result<()> {
    const SKUS: usize = 1_200;
    let ids: Vec<String> = (0..SKUS).map(|i| format!("k{i}")).collect();
    let skus: Vec<crate::support::TestSku> = ids.iter().map(|id| (id.as_str(), "g", 0, 0)).collect();
    let config = chain_toml(&["s1"], &skus, &[("dish", 0, vec![("k0", 1)])]).replace(
        "allow_anonymous = true\n",
        "allow_anonymous = true\nmax_inflight = 1\nmax_mqueue_len = 1000\nmax_publish_rate = 100000\n",
    );
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut watcher = Client::connect(broker.addr, "watcher").await?;
    watcher.subscribe("hq/alerts", QoS::AtLeastOnce).await?;

    // The POS reads every retained level, then stops reading.
    let mut options = rumqttc::MqttOptions::new("stalled-pos", broker.addr.ip().to_string(), broker.addr.port());
    options.set_keep_alive(std::time::Duration::from_secs(120));
    let (pos, mut pos_loop) = rumqttc::AsyncClient::new(options, 100);
    pos.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    let mut held: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
    let read = |held: &mut std::collections::BTreeMap<String, u64>, event: rumqttc::Event| -> Result<()> {
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
            let rev = serde_json::from_slice::<Value>(&p.payload)?["rev"]
                .as_u64()
                .unwrap_or(0);
            let mine = held.entry(p.topic.clone()).or_insert(0);
            *mine = (*mine).max(rev);
        }
        Ok(())
    };
    while held.len() < SKUS {
        let event = tokio::time::timeout_at(deadline, pos_loop.poll()).await??;
        read(&mut held, event)?;
    }

    // Every level changes once: 1,200 documents of 1,200 topics.
    let mut kds = Client::connect(broker.addr, "kds-1").await?;
    kds.subscribe("stores/s1/acks/kds-1", QoS::AtLeastOnce).await?;
    for id in &ids {
        let event = stock_event(&format!("r-{id}"), "receive", 5.0, "g", "kds-1");
        stock_and_wait(&mut kds, "s1", "kds-1", &[(id.as_str(), event)]).await?;
    }
    let alert = watcher
        .wait_latest("hq/alerts", |a| a["kind"] == json!("messages_dropped"))
        .await?;
    assert!(
        alert["message"].as_str().is_some_and(|m| m.contains("stalled-pos")),
        "{alert}"
    );
    let latest: std::collections::BTreeMap<String, u64> = held.keys().map(|t| (t.clone(), held[t] + 1)).collect();

    // It reads again: every level at its latest.
    while held != latest {
        let event = tokio::time::timeout_at(deadline + crate::support::DEADLINE, pos_loop.poll())
            .await
            .map_err(|_| {
                let behind = latest.iter().filter(|(t, rev)| held.get(*t) < Some(rev)).count();
                anyhow::anyhow!("{behind} levels are behind on the POS")
            })??;
        read(&mut held, event)?;
    }
    Ok(())
}
