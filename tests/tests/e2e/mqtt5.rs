//! MQTT 5 clients: the outcome of an input in its PUBACK reason code, and a
//! POS that loads the whole menu in one message and then follows each dish
//! without the retained burst (Retain Handling 2 on the per-dish filter).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, PubRecReason, Publish, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use crate::availability::stock_and_wait;
use crate::support::{sale, small_chain, stock_event, temp_data_dir, BrokerProcess, Client};

/// Generous: these tests wait for conditions, never for time.
const DEADLINE: Duration = Duration::from_secs(30);

/// An MQTT 5 client and every packet it receives, in order.
struct Client5 {
    mqtt: AsyncClient,
    packets: mpsc::UnboundedReceiver<Packet>,
    /// PUBLISHes that arrived while waiting for something else, in order.
    publishes: VecDeque<Publish>,
}

impl Client5 {
    /// Connects as `client_id` (anonymous) and waits for the CONNACK.
    async fn connect(addr: SocketAddr, client_id: &str) -> Result<Client5> {
        Client5::connect_with(options(addr, client_id)).await
    }

    /// Connects with `opts` and waits for the CONNACK.
    async fn connect_with(opts: MqttOptions) -> Result<Client5> {
        let (mqtt, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, packets) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(packet) = event {
                    if tx.send(packet).is_err() {
                        break;
                    }
                }
            }
        });
        let mut client = Client5 {
            mqtt,
            packets,
            publishes: VecDeque::new(),
        };
        client
            .next("CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(()))
            .await?;
        Ok(client)
    }

    /// Waits for the next packet `pick` accepts; PUBLISHes it passes over
    /// are kept for [`Client5::next_publish`], other packets skipped.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&Packet) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match timeout_at(deadline, self.packets.recv()).await {
                Ok(Some(packet)) => {
                    if let Some(found) = pick(&packet) {
                        return Ok(found);
                    }
                    if let Packet::Publish(p) = packet {
                        self.publishes.push_back(p);
                    }
                }
                Ok(None) => bail!("connection closed while waiting for {what}"),
                Err(_) => bail!("timed out waiting for {what}"),
            }
        }
    }

    /// Subscribes to `filter` and waits for its SUBACK.
    async fn subscribe(&mut self, filter: Filter) -> Result<()> {
        let what = format!("the SUBACK for {}", filter.path);
        self.mqtt.subscribe_many([filter]).await?;
        self.next(&what, |p| matches!(p, Packet::SubAck(_)).then_some(())).await
    }

    /// The next PUBLISH, in the order received.
    async fn next_publish(&mut self) -> Result<Publish> {
        if let Some(p) = self.publishes.pop_front() {
            return Ok(p);
        }
        self.next("a PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes `payload` to `topic` at QoS 1 and returns its PUBACK reason.
    async fn publish_for_reason(&mut self, topic: &str, payload: Vec<u8>) -> Result<PubAckReason> {
        self.mqtt.publish(topic, QoS::AtLeastOnce, false, payload).await?;
        self.next(&format!("the PUBACK for {topic}"), |p| match p {
            Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await
    }
}

/// The options every test client here starts from.
fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(Some(1 << 20));
    opts
}

fn topic_of(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_puback_carries_the_outcome_of_the_input() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let mut tablet = Client5::connect(broker.addr, "tablet-5").await?;
    let event = |id: &str| serde_json::to_vec(&stock_event(id, "receive", 3.0, "pcs", "tablet-5"));
    let events = "stores/s1/stock/bun/events";
    // The same bytes twice: a re-send, not new content under the same id.
    let first = event("t5-1")?;

    let cases: [(&str, &str, Vec<u8>, PubAckReason); 5] = [
        ("applied", events, first.clone(), PubAckReason::Success),
        ("already applied", events, first, PubAckReason::NoMatchingSubscribers),
        (
            "not JSON",
            events,
            b"{three buns".to_vec(),
            PubAckReason::PayloadFormatInvalid,
        ),
        (
            "a broker-owned topic",
            "stores/s1/dishes/burger/availability",
            br#"{"status":"available"}"#.to_vec(),
            PubAckReason::NotAuthorized,
        ),
        (
            "outside the contract",
            "stores/s1/bun/events",
            event("t5-2")?,
            PubAckReason::TopicNameInvalid,
        ),
    ];
    for (what, topic, payload, expected) in cases {
        let reason = tablet.publish_for_reason(topic, payload).await?;
        assert_eq!(reason, expected, "{what}");
    }
    // At QoS 2 the outcome is in the PUBREC: a refused input ends there.
    tablet
        .mqtt
        .publish(events, QoS::ExactlyOnce, false, b"{three buns".to_vec())
        .await?;
    let refused = tablet
        .next("the PUBREC of a refused input", |p| match p {
            Packet::PubRec(rec) => Some(rec.reason),
            _ => None,
        })
        .await?;
    assert_eq!(refused, PubRecReason::PayloadFormatInvalid);

    // Applied once: three buns, not six.
    let mut pos = Client::connect(broker.addr, "pos-5").await?;
    pos.subscribe("stores/s1/stock/bun/level", rumqttc::QoS::AtLeastOnce)
        .await?;
    let level = pos.next_on("stores/s1/stock/bun/level").await?;
    assert_eq!(level["qty"], json!(3), "applied once: {level}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_pos_loads_the_whole_menu_then_follows_each_dish_without_the_retained_burst() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let mut tablet = Client::connect(broker.addr, "tablet-1").await?;
    tablet
        .subscribe("stores/s1/acks/tablet-1", rumqttc::QoS::AtLeastOnce)
        .await?;
    tablet
        .subscribe("stores/s1/availability", rumqttc::QoS::AtLeastOnce)
        .await?;
    stock_and_wait(
        &mut tablet,
        "s1",
        "tablet-1",
        &[
            ("bun", stock_event("r1", "receive", 10.0, "pcs", "tablet-1")),
            ("beef", stock_event("r2", "receive", 3.0, "kg", "tablet-1")),
            ("fries", stock_event("r3", "receive", 2.0, "kg", "tablet-1")),
        ],
    )
    .await?;
    // The whole-menu document follows within 250 ms: wait until it shows all three.
    tablet
        .wait_latest("stores/s1/availability", |m| {
            m["dishes"]["burger"]["portions"] == json!(10) && m["dishes"]["chips"]["portions"] == json!(10)
        })
        .await?;

    let mut pos = Client5::connect(broker.addr, "pos-5").await?;
    let mut dishes = Filter::new("stores/s1/dishes/+/availability", QoS::AtLeastOnce);
    dishes.retain_forward_rule = RetainForwardRule::Never;
    pos.subscribe(dishes).await?;
    pos.subscribe(Filter::new("stores/s1/availability", QoS::AtLeastOnce))
        .await?;

    // The first message is the menu, with every dish: no per-dish burst came first.
    let first = pos.next_publish().await?;
    assert_eq!(topic_of(&first), "stores/s1/availability");
    let menu: Value = serde_json::from_slice(&first.payload)?;
    let on_menu: Vec<&String> = menu["dishes"]
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    assert_eq!(on_menu, ["burger", "chips", "double"]);
    let burger_rev = menu["dishes"]["burger"]["rev"]
        .as_u64()
        .ok_or_else(|| anyhow!("no burger rev in {menu}"))?;

    // A sale: the POS follows the burger on its own topic, newer than the menu.
    tablet
        .publish_json(
            "stores/s1/sales",
            &sale("sale-1", &[("burger", 1)], "tablet-1"),
            rumqttc::QoS::ExactlyOnce,
        )
        .await?;
    let burger = loop {
        let p = pos.next_publish().await?;
        let topic = topic_of(&p);
        assert!(
            !p.retain,
            "{topic} came as a retained message: the per-dish filter asked for none"
        );
        assert_ne!(topic, "stores/s1/dishes/chips/availability", "chips did not change");
        if topic == "stores/s1/dishes/burger/availability" {
            break serde_json::from_slice::<Value>(&p.payload)?;
        }
    };
    assert_eq!(burger["portions"], json!(9));
    assert!(
        burger["rev"].as_u64() > Some(burger_rev),
        "the dish's rev {} is newer than the menu's {burger_rev}",
        burger["rev"]
    );
    Ok(())
}

/// In an open namespace a message keeps its MQTT 5 properties on the way to
/// a subscriber (user properties, content type, response topic), as a plain
/// MQTT 5 broker does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_properties_pass_through_an_open_namespace() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let config = small_chain() + "\n[[namespaces]]\nprefix = \"tools\"\npublish = [\"hq\"]\nsubscribe = [\"hq\"]\n";
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut reader = Client5::connect(broker.addr, "tool-reader").await?;
    reader.subscribe(Filter::new("tools/#", QoS::AtLeastOnce)).await?;
    let writer = Client5::connect(broker.addr, "tool-writer").await?;
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some("tools/replies/tool-writer".into()),
        user_properties: vec![("trace".into(), "abc-123".into())],
        ..Default::default()
    };
    writer
        .mqtt
        .publish_with_properties("tools/label-printer/jobs", QoS::AtLeastOnce, false, "{}", properties)
        .await?;
    let got = reader.next_publish().await?;
    assert_eq!(topic_of(&got), "tools/label-printer/jobs");
    let props = got.properties.ok_or_else(|| anyhow!("no properties arrived"))?;
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("tools/replies/tool-writer"));
    assert_eq!(
        props.user_properties,
        vec![("trace".to_string(), "abc-123".to_string())]
    );
    Ok(())
}

/// MQTT 5: a connection taken over while its session lives on (a session
/// expiry, no clean start) ends without a DISCONNECT, and its will (no will
/// delay) is published at once (MQTT 5 §3.1.2.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_will_is_published_when_a_resumed_session_is_taken_over() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::LastWill;
    let config = small_chain() + "\n[[namespaces]]\nprefix = \"tools\"\npublish = [\"hq\"]\nsubscribe = [\"hq\"]\n";
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut reader = Client5::connect(broker.addr, "tool-reader").await?;
    reader.subscribe(Filter::new("tools/#", QoS::AtLeastOnce)).await?;
    let resumable = |will: bool| {
        let mut opts = options(broker.addr, "printer-1");
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(300));
        if will {
            opts.set_last_will(LastWill::new(
                "tools/printer-1/status",
                "lost",
                QoS::AtLeastOnce,
                false,
                None,
            ));
        }
        opts
    };
    // The first connection: held open, never polled after its CONNACK (a
    // polled one would reconnect and take the session back).
    let (_first, mut held) = AsyncClient::new(resumable(true), 16);
    timeout_at(Instant::now() + DEADLINE, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = held.poll().await? {
                break Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await??;
    let _taker = Client5::connect_with(resumable(false)).await?;
    let will = reader.next_publish().await?;
    assert_eq!(topic_of(&will), "tools/printer-1/status");
    assert_eq!(&will.payload[..], b"lost");
    Ok(())
}
