//! Open namespaces: topics outside the dishsync contract carried as plain
//! MQTT — retain, wildcards, QoS 0/1/2, wills, MQTT 5 properties, shared
//! subscriptions — with permissions per role and per store, while the
//! contract's own topics keep every rule they have.

use std::time::Duration;

use anyhow::{anyhow, Result};
use rumqttc::QoS;
use serde_json::json;
use tokio::time::{timeout_at, Instant};

use crate::support::{device_entries, small_chain, temp_data_dir, BrokerProcess, Client, DEADLINE};

const DEVICES: [(&str, &str, Option<&str>); 6] = [
    ("probe-1", "scale", Some("s1")),
    ("kds-1", "kds", Some("s1")),
    ("kds-2", "kds", Some("s2")),
    ("pos-1", "pos", Some("s1")),
    ("hq-1", "hq", None),
    ("hq-2", "hq", None),
];

fn password(device: &str) -> String {
    format!("{device}-pw")
}

/// The small chain, anonymous access off, with two namespaces: `probes`
/// (per store: scales publish, kitchens and HQ read) and `signage` (HQ
/// publishes, POS and HQ read).
fn chain_with_namespaces() -> Result<String> {
    let mut config = small_chain().replace("allow_anonymous = true", "allow_anonymous = false");
    config.push_str(
        "\n[[namespaces]]\nprefix = \"probes\"\nper_store = true\npublish = [\"scale\"]\nsubscribe = [\"kds\", \"hq\"]\n\n\
         [[namespaces]]\nprefix = \"signage\"\npublish = [\"hq\"]\nsubscribe = [\"pos\", \"hq\"]\n\n",
    );
    config.push_str(&device_entries(DEVICES, password)?);
    Ok(config)
}

async fn login(addr: std::net::SocketAddr, device: &str) -> Result<Client> {
    Client::login(addr, device, &password(device)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_outside_the_contract_is_plain_mqtt_with_permissions() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&chain_with_namespaces()?, &data)?;
    let addr = broker.addr;
    let mut probe = login(addr, "probe-1").await?;
    probe.subscribe("stores/s1/errors/probe-1", QoS::AtLeastOnce).await?;

    // Retain: a reading published before anyone listens is there later.
    probe
        .mqtt
        .publish("probes/s1/fridge-1/temp", QoS::AtLeastOnce, true, "3.9")
        .await?;
    // QoS 0, 1 and 2 all arrive; wildcards match.
    let mut kitchen = login(addr, "kds-1").await?;
    kitchen.subscribe("probes/s1/+/temp", QoS::ExactlyOnce).await?;
    kitchen
        .wait_until("the retained reading", |seen| {
            seen.iter()
                .any(|m| m.topic == "probes/s1/fridge-1/temp" && m.text == "3.9")
        })
        .await?;
    let mut hq = login(addr, "hq-1").await?;
    assert!(hq.granted("probes/#").await?, "HQ reads every store's probes");
    for (n, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        probe
            .mqtt
            .publish("probes/s1/fridge-2/temp", qos, false, format!("4.{n}"))
            .await?;
    }
    for who in [&mut kitchen, &mut hq] {
        who.wait_until("QoS 0, 1 and 2", |seen| {
            (0..3).all(|n| {
                seen.iter()
                    .any(|m| m.topic == "probes/s1/fridge-2/temp" && m.text == format!("4.{n}"))
            })
        })
        .await?;
    }

    // Permissions: per role, and per store for a per-store namespace.
    let mut other_kitchen = login(addr, "kds-2").await?;
    assert!(!other_kitchen.granted("probes/s1/#").await?, "another store's probes");
    assert!(other_kitchen.granted("probes/s2/#").await?);
    assert!(
        !other_kitchen.granted("signage/#").await?,
        "a kitchen may not read signage"
    );
    let mut pos = login(addr, "pos-1").await?;
    pos.subscribe("stores/s1/errors/pos-1", QoS::AtLeastOnce).await?;
    assert!(pos.granted("signage/menu-board").await?);
    pos.mqtt
        .publish("probes/s1/fridge-1/temp", QoS::AtLeastOnce, false, "99")
        .await?;
    let refused = pos.next_on("stores/s1/errors/pos-1").await?;
    assert_eq!(refused["code"], json!("not_permitted"), "{refused}");
    probe
        .mqtt
        .publish("probes/s2/fridge-1/temp", QoS::AtLeastOnce, false, "5")
        .await?;
    let refused = probe.next_on("stores/s1/errors/probe-1").await?;
    assert_eq!(refused["code"], json!("not_permitted"), "another store's: {refused}");
    assert!(
        !kitchen.seen.iter().chain(hq.seen.iter()).any(|m| m.text == "99"),
        "a refused publish is not routed"
    );

    // Shared subscriptions: each message to one member of the group.
    let mut second = login(addr, "hq-2").await?;
    hq.subscribe("$share/ops/signage/#", QoS::AtLeastOnce).await?;
    second.subscribe("$share/ops/signage/#", QoS::AtLeastOnce).await?;
    for n in 0..20 {
        hq.mqtt
            .publish("signage/menu-board", QoS::AtLeastOnce, false, format!("frame-{n}"))
            .await?;
    }
    pos.wait_until("every frame at the POS", |seen| {
        seen.iter().filter(|m| m.topic == "signage/menu-board").count() == 20
    })
    .await?;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let shared = |c: &Client| {
            c.seen
                .iter()
                .filter(|m| m.topic == "signage/menu-board" && m.text.starts_with("frame-"))
                .count()
        };
        // The publisher's own plain subscription sees none of these (it
        // subscribed to probes), so every copy it holds is its share.
        if shared(&hq) + shared(&second) >= 20 {
            assert_eq!(
                shared(&hq) + shared(&second),
                20,
                "each frame went to exactly one of the group"
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the group got {} of 20", shared(&hq) + shared(&second)));
        }
        for c in [&mut hq, &mut second] {
            let _ = c.recv_until(Instant::now() + Duration::from_millis(100)).await?;
        }
    }

    // The contract keeps its rules: a made-up topic under stores/ is refused.
    probe
        .mqtt
        .publish("stores/s1/fridge", QoS::AtLeastOnce, false, "x")
        .await?;
    let refused = probe.next_on("stores/s1/errors/probe-1").await?;
    assert_eq!(refused["code"], json!("unknown_topic"), "{refused}");
    Ok(())
}

/// A device's will, on a namespace topic it may publish, is published when
/// it drops off without a DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_in_a_namespace_is_published_when_the_device_drops() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&chain_with_namespaces()?, &data)?;
    let mut kitchen = login(broker.addr, "kds-1").await?;
    kitchen.subscribe("probes/s1/fridge-1/status", QoS::AtLeastOnce).await?;

    let (client, eventloop) = connect_with_will(broker.addr, "probe-1", "probes/s1/fridge-1/status").await?;
    let eventloop = eventloop.map_err(|e| anyhow!("the will's CONNECT refused: {e}"))?;
    // The connection drops: no DISCONNECT is sent.
    drop(eventloop);
    drop(client);
    let will = kitchen.next_on("probes/s1/fridge-1/status").await;
    let text = kitchen
        .seen
        .iter()
        .find(|m| m.topic == "probes/s1/fridge-1/status")
        .map(|m| m.text.clone());
    assert!(will.is_ok() || text.is_some(), "no will");
    assert_eq!(text.as_deref(), Some("lost"));
    Ok(())
}

/// What a raw connection attempt gives: its client and, once the broker
/// answered, the event loop or the refusal.
type Attempt = (
    rumqttc::AsyncClient,
    Result<rumqttc::EventLoop, rumqttc::ConnectionError>,
);

/// `device` connects with a will (QoS 1, "lost") on `topic`.
async fn connect_with_will(addr: std::net::SocketAddr, device: &str, topic: &str) -> Result<Attempt> {
    let mut opts = rumqttc::MqttOptions::new(device, "127.0.0.1", addr.port());
    opts.set_last_will(rumqttc::LastWill::new(topic, "lost", QoS::AtLeastOnce, false));
    connect_raw(opts, device).await
}

/// `device` connects with `opts` (its credentials added); its event loop is
/// not polled after the CONNACK, so the connection stays as it is.
async fn connect_raw(mut opts: rumqttc::MqttOptions, device: &str) -> Result<Attempt> {
    opts.set_credentials(device, password(device));
    connect_anonymous(opts).await
}

/// Connects with `opts` as they are; the event loop is not polled after
/// the CONNACK.
async fn connect_anonymous(mut opts: rumqttc::MqttOptions) -> Result<Attempt> {
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 16);
    let polling = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => break Ok(eventloop),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        }
    });
    Ok((client, timeout_at(Instant::now() + DEADLINE, polling).await??))
}

/// A will is a publish the device makes later, so it is checked as one
/// when the device logs in: a will on a namespace topic its role may not
/// publish, or on a contract topic (which only the rules write), refuses
/// the CONNECT as not authorized, and nothing is ever published there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_a_topic_the_device_may_not_publish_refuses_its_login() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&chain_with_namespaces()?, &data)?;
    let mut hq = login(broker.addr, "hq-1").await?;
    hq.subscribe("signage/#", QoS::AtLeastOnce).await?;
    hq.subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    for topic in [
        // A scale is not a signage publisher.
        "signage/menu-board",
        // Another store's probes.
        "probes/s2/fridge-1/status",
        // The contract's own topics.
        "stores/s1/dishes/chips/availability",
        "hq/alerts",
    ] {
        let (_client, refused) = connect_with_will(broker.addr, "probe-1", topic).await?;
        match refused {
            Err(rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized)) => {}
            other => return Err(anyhow!("a will on {topic}: {:?}", other.map(|_| "accepted"))),
        }
    }
    // The same device with a will it may publish still logs in.
    let (_client, accepted) = connect_with_will(broker.addr, "probe-1", "probes/s1/fridge-1/status").await?;
    accepted.map_err(|e| anyhow!("a will on its own probes refused: {e}"))?;
    // Nothing reached the forbidden topics: HQ's next signage message is
    // its own marker, and no availability ever said "lost".
    let board = login(broker.addr, "hq-2").await?;
    board
        .mqtt
        .publish("signage/marker", QoS::AtLeastOnce, false, "end")
        .await?;
    hq.wait_until("the marker", |seen| seen.iter().any(|m| m.topic == "signage/marker"))
        .await?;
    let leaked: Vec<_> = hq
        .seen
        .iter()
        .filter(|m| m.text == "lost")
        .map(|m| m.topic.clone())
        .collect();
    assert!(leaked.is_empty(), "wills published: {leaked:?}");
    Ok(())
}

/// A connection taken over by another with its client id ends without a
/// DISCONNECT, so its will is published ([MQTT-3.1.2-8]) — once, whether
/// the session lives on (neither asked for a clean session) or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_published_once_when_the_connection_is_taken_over() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&chain_with_namespaces()?, &data)?;
    let mut kitchen = login(broker.addr, "kds-1").await?;
    kitchen.subscribe("probes/s1/+/status", QoS::AtLeastOnce).await?;
    for (n, persistent) in [(1, true), (2, false)] {
        let status = format!("probes/s1/fridge-{n}/status");
        let mut first = rumqttc::MqttOptions::new("probe-1", "127.0.0.1", broker.addr.port());
        first.set_clean_session(!persistent);
        first.set_last_will(rumqttc::LastWill::new(&status, "lost", QoS::AtLeastOnce, false));
        let (_first, held) = connect_raw(first, "probe-1").await?;
        let _held = held.map_err(|e| anyhow!("the first connection refused: {e}"))?;
        // The same device again, without a will: it takes the session over.
        let mut second = rumqttc::MqttOptions::new("probe-1", "127.0.0.1", broker.addr.port());
        second.set_clean_session(!persistent);
        let (taker, polled) = connect_raw(second, "probe-1").await?;
        let mut polled = polled.map_err(|e| anyhow!("the takeover refused: {e}"))?;
        taker.publish(&status, QoS::AtLeastOnce, false, "back").await?;
        let pump = tokio::spawn(async move { while polled.poll().await.is_ok() {} });
        let count = |c: &Client, text: &str| c.seen.iter().filter(|m| m.topic == status && m.text == text).count();
        let deadline = Instant::now() + DEADLINE;
        while count(&kitchen, "lost") == 0 || count(&kitchen, "back") == 0 {
            if Instant::now() > deadline {
                pump.abort();
                return Err(anyhow!(
                    "persistent {persistent}: lost {}, back {}",
                    count(&kitchen, "lost"),
                    count(&kitchen, "back")
                ));
            }
            let _ = kitchen.recv_until(Instant::now() + Duration::from_millis(100)).await?;
        }
        assert_eq!(count(&kitchen, "lost"), 1, "persistent {persistent}: the will once");
        taker.disconnect().await?;
        let _ = timeout_at(Instant::now() + DEADLINE, pump).await;
    }
    Ok(())
}

/// Anonymous clients (a demo broker) log in through the same check: a will
/// on a document of the broker's refuses the login; a device's own status
/// as its will is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_clients_will_is_checked_like_any_other() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    for (topic, payload, accepted) in [
        ("stores/s1/dishes/chips/availability", "lost", false),
        ("stores/s1/devices/kds-9/status", "offline", true),
    ] {
        let mut opts = rumqttc::MqttOptions::new("kds-9", "127.0.0.1", broker.addr.port());
        opts.set_last_will(rumqttc::LastWill::new(topic, payload, QoS::AtLeastOnce, true));
        let (_client, answer) = connect_anonymous(opts).await?;
        match (answer, accepted) {
            (Ok(_), true) => {}
            (Err(rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized)), false) => {}
            (answer, _) => return Err(anyhow!("a will on {topic}: {:?}", answer.map(|_| "accepted"))),
        }
    }
    Ok(())
}

/// A namespace with the empty prefix carries the topics that begin with
/// `/`, as older devices name them: retained, and matched by `/#`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_first_level_can_be_a_namespace() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let mut config = small_chain();
    config.push_str("\n[[namespaces]]\nprefix = \"\"\npublish = [\"hq\"]\nsubscribe = [\"hq\"]\n");
    let broker = BrokerProcess::start(&config, &data)?;
    let mut legacy = Client::connect(broker.addr, "legacy-1").await?;
    legacy.subscribe("hq/errors/legacy-1", QoS::AtLeastOnce).await?;
    legacy.mqtt.publish("/TopicA", QoS::AtLeastOnce, true, "a").await?;
    let mut reader = Client::connect(broker.addr, "reader-1").await?;
    assert!(reader.granted("/#").await?, "the empty level's filter");
    reader
        .wait_until("the retained /TopicA", |seen| {
            seen.iter().any(|m| m.topic == "/TopicA" && m.text == "a")
        })
        .await?;
    // A topic outside it and outside the contract is still refused.
    legacy.mqtt.publish("TopicA", QoS::AtLeastOnce, false, "b").await?;
    let refused = legacy.next_on("hq/errors/legacy-1").await?;
    assert_eq!(refused["code"], json!("unknown_topic"), "{refused}");
    Ok(())
}

/// A device that goes silent past its keep-alive has lost its connection
/// ([MQTT-3.1.2-24]): it is closed, and its will is published. Raw bytes: a
/// client library would send its PINGREQs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_past_its_keep_alive_is_closed_and_its_will_published() -> Result<()> {
    use std::io::{Read, Write};
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&chain_with_namespaces()?, &data)?;
    let mut kitchen = login(broker.addr, "kds-1").await?;
    kitchen.subscribe("probes/s1/fridge-9/status", QoS::AtLeastOnce).await?;
    // CONNECT: keep-alive 2 s, a will (QoS 1) on the probe's status topic.
    let s = |v: &[u8]| [(v.len() as u16).to_be_bytes().as_slice(), v].concat();
    let mut body = s(b"MQTT");
    body.extend_from_slice(&[4, 0b1100_1110, 0, 2]);
    body.extend(s(b"probe-1"));
    body.extend(s(b"probes/s1/fridge-9/status"));
    body.extend(s(b"lost"));
    body.extend(s(b"probe-1"));
    body.extend(s(password("probe-1").as_bytes()));
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend(body);
    let mut stream = std::net::TcpStream::connect(broker.addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(&connect)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // Silence: the broker closes the connection...
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    // ...and the will goes out.
    let will = kitchen
        .wait_until("the will", |seen| {
            seen.iter().any(|m| m.topic == "probes/s1/fridge-9/status")
        })
        .await?
        .iter()
        .find(|m| m.topic == "probes/s1/fridge-9/status")
        .map(|m| m.text.clone());
    assert_eq!(will.as_deref(), Some("lost"));
    Ok(())
}
