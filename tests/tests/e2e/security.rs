//! Security against the real broker: logins, the permission matrix, the
//! first publish after CONNECT, TLS, and the limits.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};

use anyhow::{anyhow, Result};
use dishsync_broker::acl::{grant, Access, Family, Grant, Role};
use rumqttc::{QoS, TlsConfiguration};
use serde_json::{json, Value};

use crate::support::{device_entries, small_chain, stock_event, temp_data_dir, BrokerProcess, Client, DEADLINE};

/// Every configurable role: device id, role, store (HQ roles have none).
const DEVICES: [(&str, Role, Option<&str>); 9] = [
    ("scale-1", Role::Scale, Some("s1")),
    ("kds-1", Role::Kds, Some("s1")),
    ("pos-1", Role::Pos, Some("s1")),
    ("manager-1", Role::Manager, Some("s1")),
    ("kitchen-1", Role::CentralKitchen, None),
    ("hq-1", Role::Hq, None),
    ("operator-1", Role::Operator, None),
    // A store's own operator reads that store only, not the HQ topics.
    ("operator-2", Role::Operator, Some("s1")),
    ("bridge-1", Role::Bridge, Some("s1")),
];

fn password(device: &str) -> String {
    format!("pw-{device}-secret")
}

/// The small chain with anonymous access off, every role as a device, and
/// extra `[broker]` lines.
fn secured_chain(broker_lines: &str) -> Result<String> {
    let mut config = small_chain().replace(
        "allow_anonymous = true\n",
        &format!("allow_anonymous = false\n{broker_lines}\n"),
    );
    // `audit-1` watches everything in tests without taking over a session
    // of a device under test.
    config.push_str(&device_entries(
        DEVICES.into_iter().chain([("audit-1", Role::Hq, None)]),
        password,
    )?);
    Ok(config)
}

/// A representative topic filter per family, for subscribing in `store` as
/// `device`; `own` picks the device's own per-device topic.
fn filters(family: Family, store: &str, device: &str) -> Vec<(String, bool)> {
    match family {
        Family::StockEvents => vec![(format!("stores/{store}/stock/+/events"), false)],
        Family::Sales => vec![(format!("stores/{store}/sales"), false)],
        Family::Override => vec![(format!("stores/{store}/dishes/+/override"), false)],
        Family::Presence => vec![
            (format!("stores/{store}/devices/{device}/status"), true),
            (format!("stores/{store}/devices/+/status"), false),
        ],
        Family::Availability => {
            vec![
                (format!("stores/{store}/dishes/+/availability"), false),
                (format!("stores/{store}/availability"), false),
            ]
        }
        Family::Level => vec![(format!("stores/{store}/stock/+/level"), false)],
        Family::AcksErrors => vec![
            (format!("stores/{store}/acks/{device}"), true),
            (format!("stores/{store}/errors/{device}"), true),
            (format!("stores/{store}/acks/+"), false),
            (format!("hq/errors/{device}"), true),
            (format!("hq/acks/{device}"), true),
        ],
        Family::BrokerAlerts => vec![("hq/alerts".to_string(), false)],
        Family::Metrics => vec![("$SYS/dishsync/metrics".to_string(), false)],
        Family::RequestActions => vec![("hq/replenishment/+/+".to_string(), false)],
        Family::Requests => vec![
            (format!("stores/{store}/replenishment/+"), false),
            ("hq/replenishment/+".to_string(), false),
        ],
        Family::TransferActions => {
            vec![
                (format!("stores/{store}/transfers/+/+"), false),
                (format!("stores/{store}/transfers/request"), false),
            ]
        }
        Family::Transfers => vec![(format!("stores/{store}/transfers/+"), false)],
        Family::Alerts => vec![(format!("stores/{store}/alerts"), false)],
        Family::Summary => vec![(format!("hq/stores/{store}/summary"), false)],
        Family::ScaleReadings => vec![
            (format!("stores/{store}/scales/{device}/weight"), true),
            (format!("stores/{store}/scales/+/weight"), false),
        ],
        Family::Catalog => vec![(format!("stores/{store}/catalog"), false)],
        Family::Promotions => vec![
            (format!("stores/{store}/promotions/+"), false),
            ("hq/promotions/+".to_string(), false),
        ],
    }
}

/// Whether the documented matrix allows `role` (bound to `home`) to
/// subscribe to a filter in `store`.
fn expect_subscribe(role: Role, home: Option<&str>, family: Family, store: Option<&str>, own: bool) -> bool {
    let in_scope = match (home, store) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(h), Some(s)) => h == s,
    };
    in_scope
        && match grant(role, family, Access::Subscribe) {
            Grant::Yes => true,
            Grant::Own => own,
            Grant::No => false,
        }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_gets_exactly_the_documented_permissions() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&secured_chain("")?, &data)?;
    // HQ sees everything routed: an allowed publish reaches it, a refused one
    // does not.
    let mut observer = Client::login(broker.addr, "audit-1", &password("audit-1")).await?;
    observer.subscribe("#", QoS::AtLeastOnce).await?;
    let mut checked = 0;
    for (device, role, home) in DEVICES {
        let mut client = Client::login(broker.addr, device, &password(device)).await?;
        // Subscriptions: every family, own store and the other store.
        for family in Family::ALL {
            for store in ["s1", "s2"] {
                for (filter, own) in filters(family, store, device) {
                    // HQ topics (and the broker's `$SYS` metrics) name no store.
                    let hq_topic =
                        (filter.starts_with("hq/") && !filter.starts_with("hq/stores/")) || filter.starts_with("$SYS/");
                    let mut want = expect_subscribe(role, home, family, if hq_topic { None } else { Some(store) }, own);
                    // `transfers/+` also matches `transfers/request`.
                    if family == Family::Transfers {
                        want &= expect_subscribe(role, home, Family::TransferActions, Some(store), false);
                    }
                    let got = client.granted(&filter).await?;
                    assert_eq!(got, want, "{device} ({role}) subscribe {filter}");
                    checked += 1;
                }
            }
        }
        // Its own acks and errors, wherever it is allowed to read them.
        let feedback = match home {
            Some(h) => vec![
                format!("stores/{h}/acks/{device}"),
                format!("stores/{h}/errors/{device}"),
            ],
            None => vec![format!("stores/+/acks/{device}"), format!("stores/+/errors/{device}")],
        };
        let can_read_feedback = grant(role, Family::AcksErrors, Access::Subscribe) != Grant::No;
        if can_read_feedback {
            for f in &feedback {
                client.subscribe(f, QoS::AtLeastOnce).await?;
            }
        }
        // Publishes: every input family and presence, own store and other.
        for store in ["s1", "s2"] {
            let in_scope = home.is_none_or(|h| h == store);
            let n = checked;
            let inputs: [(Family, String, Value); 3] = [
                (
                    Family::StockEvents,
                    format!("stores/{store}/stock/beef/events"),
                    stock_event(&format!("p{n}-{device}"), "receive", 1.0, "g", device),
                ),
                (
                    Family::Sales,
                    format!("stores/{store}/sales"),
                    json!({"id": format!("p{n}-{device}-sale"), "lines": [{"dish": "burger", "portions": 1}], "at": dishsync_protocol::payload::Timestamp::now().to_string(), "device": device}),
                ),
                (
                    Family::Override,
                    format!("stores/{store}/dishes/burger/override"),
                    json!({"id": format!("p{n}-{device}-86"), "status": "auto", "by": device}),
                ),
            ];
            for (family, topic, body) in inputs {
                let id = body["id"].as_str().unwrap_or_default().to_string();
                let want = in_scope && grant(role, family, Access::Publish) == Grant::Yes;
                client.publish_json(&topic, &body, QoS::AtLeastOnce).await?;
                let routed = observer.seen.len();
                if want {
                    observer
                        .wait_until(&format!("{device} {topic} routed"), |seen| {
                            seen[routed..]
                                .iter()
                                .any(|m| m.topic == topic && m.json["id"] == json!(id))
                        })
                        .await?;
                } else if can_read_feedback {
                    let err = client
                        .wait_until(&format!("{device} {topic} refused"), |seen| {
                            seen.iter()
                                .any(|m| m.topic.contains("/errors/") && m.json["id"] == json!(id))
                        })
                        .await?;
                    let err = err
                        .iter()
                        .rev()
                        .find(|m| m.json["id"] == json!(id))
                        .map(|m| m.json.clone())
                        .unwrap_or_default();
                    assert_eq!(
                        err["code"],
                        json!("not_permitted"),
                        "{device} ({role}) publish {topic}: {err}"
                    );
                }
                checked += 1;
            }
            // Presence: own device, and another device's.
            for (target, own) in [(device, true), ("someone-else", false)] {
                let topic = format!("stores/{store}/devices/{target}/status");
                let want = in_scope
                    && match grant(role, Family::Presence, Access::Publish) {
                        Grant::Yes => true,
                        Grant::Own => own,
                        Grant::No => false,
                    };
                let mark = observer.seen.len();
                client.publish_raw(&topic, b"online".to_vec(), QoS::AtLeastOnce).await?;
                if want {
                    observer
                        .wait_until(&format!("{topic} routed"), |seen| {
                            seen[mark..].iter().any(|m| m.topic == topic)
                        })
                        .await?;
                } else if can_read_feedback {
                    let before = client.seen.iter().filter(|m| m.topic.contains("/errors/")).count();
                    client
                        .wait_until(&format!("{device} presence {topic} refused"), |seen| {
                            seen.iter().filter(|m| m.topic.contains("/errors/")).count() > before
                        })
                        .await?;
                }
                checked += 1;
            }
        }
        // Outputs are never published by clients.
        let before = client.seen.iter().filter(|m| m.topic.contains("/errors/")).count();
        client
            .publish_json(
                "stores/s1/dishes/burger/availability",
                &json!({"status": "available"}),
                QoS::AtLeastOnce,
            )
            .await?;
        if can_read_feedback {
            client
                .wait_until("output refused", |seen| {
                    seen.iter().filter(|m| m.topic.contains("/errors/")).count() > before
                })
                .await?;
        }
        checked += 1;
    }
    // A refused publish was never routed to the observer.
    assert!(observer
        .all_on("stores/s1/dishes/burger/availability")
        .iter()
        .all(|d| d["store"] == json!("s1")));
    eprintln!("{checked} permission checks against the running broker");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_need_the_right_password_and_the_device_id_as_client_id() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&secured_chain("login_failures_per_minute = 4")?, &data)?;
    let addr = broker.addr;
    assert!(Client::login(addr, "pos-1", &password("pos-1")).await.is_ok());
    assert!(Client::connect(addr, "anonymous-1").await.is_err(), "anonymous refused");
    assert!(Client::login(addr, "pos-1", "wrong").await.is_err(), "wrong password");
    assert!(Client::login(addr, "nobody", "pw").await.is_err(), "unknown device");
    let mismatch = Client::connect_with(addr, "pos-2", Some(("pos-1", &password("pos-1"))), None).await;
    assert!(mismatch.is_err(), "client id must be the device id");
    // Four failures from this address within the minute: now even the right
    // password is refused unchecked.
    assert!(
        Client::login(addr, "pos-1", &password("pos-1")).await.is_err(),
        "brake on guessing"
    );
    let log = broker.log();
    assert!(
        log.contains("wrong password") && log.contains("too many failed logins"),
        "{log}"
    );
    assert!(
        !log.contains("pw-pos-1-secret") && !log.contains("$argon2"),
        "no secrets in the log"
    );
    Ok(())
}

/// MQTT 3.1.1 CONNECT with username and password.
fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let s = |v: &str| {
        let mut out = (v.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(v.as_bytes());
        out
    };
    let mut body = s("MQTT");
    body.extend_from_slice(&[4, 0b1100_0010, 0, 30]);
    body.extend(s(client_id));
    body.extend(s(username));
    body.extend(s(password));
    let mut packet = vec![0x10];
    packet.extend(remaining_length(body.len()));
    packet.extend(body);
    packet
}

/// MQTT 3.1.1 PUBLISH at QoS 1 with packet id 1.
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&[0, 1]);
    body.extend_from_slice(payload);
    let mut packet = vec![0x32];
    packet.extend(remaining_length(body.len()));
    packet.extend(body);
    packet
}

/// MQTT 3.1.1 SUBSCRIBE to one filter at QoS 1, packet id 1.
fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(1);
    let mut packet = vec![0x82];
    packet.extend(remaining_length(body.len()));
    packet.extend(body);
    packet
}

fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_sent_with_the_connect_is_checked_as_that_device() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&secured_chain("")?, &data)?;
    let mut hq = Client::login(broker.addr, "hq-1", &password("hq-1")).await?;
    hq.subscribe("stores/s1/acks/+", QoS::AtLeastOnce).await?;
    hq.subscribe("stores/s1/errors/+", QoS::AtLeastOnce).await?;
    hq.subscribe("stores/s1/stock/beef/level", QoS::AtLeastOnce).await?;
    // One write: CONNECT immediately followed by PUBLISH.
    for (device, id) in [("scale-1", "raw-1"), ("pos-1", "raw-2")] {
        let mut bytes = connect_packet(device, device, &password(device));
        let event = stock_event(id, "receive", 7.0, "g", device);
        bytes.extend(publish_packet(
            "stores/s1/stock/beef/events",
            &serde_json::to_vec(&event)?,
        ));
        let mut stream = TcpStream::connect(broker.addr)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.write_all(&bytes)?;
        // CONNACK (4 bytes) then PUBACK (4 bytes).
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply)?;
        assert_eq!(&reply[..4], &[0x20, 2, 0, 0], "{device}: CONNACK accepted");
        assert_eq!(reply[4], 0x40, "{device}: PUBACK");
    }
    // The scale's first publish was applied, the POS's refused.
    let ack = hq.next_on("stores/s1/acks/scale-1").await?;
    assert_eq!(ack["ids"], json!(["raw-1"]));
    let err = hq.next_on("stores/s1/errors/pos-1").await?;
    assert_eq!(
        (err["id"].clone(), err["code"].clone()),
        (json!("raw-2"), json!("not_permitted"))
    );
    hq.wait_latest("stores/s1/stock/beef/level", |d| d["qty"] == json!(7))
        .await?;
    Ok(())
}

pub struct Pki {
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
}

/// A test CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate, written as PEM files.
pub fn pki() -> Result<Pki> {
    // rustls is built with more than one crypto provider in this test
    // binary; pick one for the client side.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let dir = tempfile::tempdir()?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "dishsync test CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let server_cert = server.signed_by(&server_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let client = CertificateParams::new(vec!["pos-1".to_string()])?;
    let client_cert = client.signed_by(&client_key, &issuer)?;
    for (name, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server_cert.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client_cert.pem()),
        ("client.key", client_key.serialize_pem()),
    ] {
        std::fs::write(dir.path().join(name), pem)?;
    }
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        dir,
    })
}

fn tls_lines(pki: &Pki, client_ca: bool) -> String {
    let p = |f: &str| pki.dir.path().join(f).display().to_string();
    let mut lines = format!(
        "[broker.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
        p("server.pem"),
        p("server.key")
    );
    if client_ca {
        lines.push_str(&format!("client_ca = \"{}\"\n", p("ca.pem")));
    }
    lines
}

/// Inserts `[broker.tls]` right after the `[broker]` table.
fn with_tls(config: &str, tls: &str) -> String {
    match config.find("\n[[") {
        Some(i) => format!("{}\n{tls}{}", &config[..i], &config[i..]),
        None => format!("{config}\n{tls}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_trusting_the_ca_connect_and_plaintext_to_the_tls_port_fails() -> Result<()> {
    let pki = pki()?;
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&with_tls(&secured_chain("")?, &tls_lines(&pki, false)), &data)?;
    let tls_addr = broker.tls_addr.ok_or_else(|| anyhow!("no TLS listener"))?;
    let tls = TlsConfiguration::Simple {
        ca: pki.ca_pem.clone().into_bytes(),
        alpn: None,
        client_auth: None,
    };
    let mut pos = Client::connect_with(tls_addr, "pos-1", Some(("pos-1", &password("pos-1"))), Some(tls)).await?;
    pos.subscribe("stores/s1/dishes/burger/availability", QoS::AtLeastOnce)
        .await?;
    pos.wait_until("retained availability over TLS", |seen| !seen.is_empty())
        .await?;
    let plain = Client::connect_with(tls_addr, "pos-1", Some(("pos-1", &password("pos-1"))), None).await;
    assert!(plain.is_err(), "plaintext MQTT to the TLS port must fail");

    // The device client library over TLS, with credentials.
    let outbox = tempfile::tempdir()?;
    let mut config = dishsync_client::ClientConfig::new(
        "localhost",
        tls_addr.port(),
        "s1".parse()?,
        "scale-1".parse()?,
        outbox.path().to_path_buf(),
    );
    config.credentials = Some(("scale-1".into(), password("scale-1")));
    config.tls = Some(dishsync_client::TlsSettings {
        ca_pem: pki.ca_pem.clone().into_bytes(),
        client_cert: None,
    });
    let (scale, _updates) = dishsync_client::Client::start(config)?;
    scale.record_stock(
        &"beef".parse()?,
        dishsync_protocol::payload::StockKind::Receive,
        1.0,
        dishsync_protocol::Unit::Kg,
        None,
        None,
    )?;
    assert_eq!(scale.drain(DEADLINE).await, 0, "acknowledged over TLS");
    scale.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_a_certificate_connect() -> Result<()> {
    let pki = pki()?;
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&with_tls(&secured_chain("")?, &tls_lines(&pki, true)), &data)?;
    let tls_addr = broker.tls_addr.ok_or_else(|| anyhow!("no TLS listener"))?;
    let creds = Some(("pos-1", password("pos-1")));
    let creds = creds.as_ref().map(|(u, p)| (*u, p.as_str()));
    let without = TlsConfiguration::Simple {
        ca: pki.ca_pem.clone().into_bytes(),
        alpn: None,
        client_auth: None,
    };
    assert!(
        Client::connect_with(tls_addr, "pos-1", creds, Some(without))
            .await
            .is_err(),
        "no client certificate"
    );
    let cert = std::fs::read(pki.dir.path().join("client.pem"))?;
    let key = std::fs::read(pki.dir.path().join("client.key"))?;
    let with = TlsConfiguration::Simple {
        ca: pki.ca_pem.clone().into_bytes(),
        alpn: None,
        client_auth: Some((cert, key)),
    };
    Client::connect_with(tls_addr, "pos-1", creds, Some(with)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_packets_close_the_connection_and_a_flooding_client_is_slowed_alone() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&secured_chain("max_packet_size = 20000\nmax_publish_rate = 10")?, &data)?;
    let addr = broker.addr;

    // A packet over max_packet_size: the broker closes that connection.
    let mut big = Client::login(addr, "kds-1", &password("kds-1")).await?;
    big.publish_raw("stores/s1/stock/beef/events", vec![b' '; 30_000], QoS::AtLeastOnce)
        .await?;
    assert!(big.wait_until("disconnect", |_| false).await.is_err());

    // One client floods: three times its burst (2 × 10) at once, many times
    // its rate however slowly this machine applies them. Another is served
    // at its normal pace meanwhile.
    let mut flood = Client::login(addr, "scale-1", &password("scale-1")).await?;
    flood.subscribe("stores/s1/acks/scale-1", QoS::AtLeastOnce).await?;
    flood.subscribe("stores/s1/errors/scale-1", QoS::AtLeastOnce).await?;
    let mut calm = Client::login(addr, "manager-1", &password("manager-1")).await?;
    calm.subscribe("stores/s1/acks/manager-1", QoS::AtLeastOnce).await?;
    const FLOOD: usize = 60;
    for i in 0..FLOOD {
        flood
            .publish_json(
                "stores/s1/stock/beef/events",
                &stock_event(&format!("f{i}"), "receive", 1.0, "g", "scale-1"),
                QoS::AtLeastOnce,
            )
            .await?;
    }
    for i in 0..5 {
        calm.publish_json(
            "stores/s1/stock/bun/events",
            &stock_event(&format!("c{i}"), "receive", 1.0, "pcs", "manager-1"),
            QoS::AtLeastOnce,
        )
        .await?;
    }
    let acked = |seen: &[crate::support::Received], topic: &str| -> usize {
        seen.iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.json["ids"].as_array().map_or(0, Vec::len))
            .sum()
    };
    calm.wait_until("all 5 calm events acked", |seen| {
        acked(seen, "stores/s1/acks/manager-1") == 5
    })
    .await?;
    // Slowed down, not refused: every flood event is applied, none lost.
    flood
        .wait_until("every flood event acked", |seen| {
            acked(seen, "stores/s1/acks/scale-1") == FLOOD
        })
        .await?;
    assert_eq!(flood.all_on("stores/s1/errors/scale-1"), Vec::<&Value>::new());
    let mut hq = Client::login(addr, "hq-1", &password("hq-1")).await?;
    hq.subscribe("stores/s1/stock/beef/level", QoS::AtLeastOnce).await?;
    hq.wait_latest("stores/s1/stock/beef/level", |d| d["qty"] == json!(FLOOD))
        .await?;
    let log = broker.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("publishing faster than max_publish_rate"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, for the flood:\n{log}");
    assert!(warnings[0].contains("scale-1"), "{}", warnings[0]);
    Ok(())
}

/// A subscriber that stops reading loses messages alone: what overflows its
/// queue is counted, logged and raised on `hq/alerts`, and everyone else is
/// served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_loses_messages_alone_and_the_drops_are_alerted() -> Result<()> {
    const EVENTS: usize = 1_100;
    let (_tmp, data) = temp_data_dir()?;
    let limits = "max_inflight = 1\nmax_mqueue_len = 1000\nmax_publish_rate = 100000";
    let broker = BrokerProcess::start(&secured_chain(limits)?, &data)?;
    let addr = broker.addr;
    let mut hq = Client::login(addr, "hq-1", &password("hq-1")).await?;
    hq.subscribe("hq/alerts", QoS::AtLeastOnce).await?;
    hq.subscribe("stores/s1/stock/beef/level", QoS::AtLeastOnce).await?;

    // kds-1 subscribes to every level, then never reads or acknowledges
    // again: one message in flight, a thousand queued, the rest dropped.
    let mut stuck = TcpStream::connect(addr)?;
    stuck.set_read_timeout(Some(DEADLINE))?;
    let mut bytes = connect_packet("kds-1", "kds-1", &password("kds-1"));
    bytes.extend(subscribe_packet("stores/s1/stock/+/level"));
    stuck.write_all(&bytes)?;
    let mut reply = [0u8; 9];
    stuck.read_exact(&mut reply)?;
    assert_eq!(&reply[..4], &[0x20, 2, 0, 0], "CONNACK accepted");
    assert_eq!(&reply[4..], &[0x90, 3, 0, 1, 1], "SUBACK granted at QoS 1");

    // One change at a time, each its own group, so each makes a level
    // document for kds-1.
    let mut scale = Client::login(addr, "scale-1", &password("scale-1")).await?;
    scale.subscribe("stores/s1/acks/scale-1", QoS::AtLeastOnce).await?;
    for i in 0..EVENTS {
        let id = format!("d{i}");
        scale
            .publish_json(
                "stores/s1/stock/beef/events",
                &stock_event(&id, "receive", 1.0, "g", "scale-1"),
                QoS::AtLeastOnce,
            )
            .await?;
        scale
            .wait_until(&format!("the ack of {id}"), |seen| {
                seen.iter().any(|m| {
                    m.topic == "stores/s1/acks/scale-1"
                        && m.json["ids"].as_array().is_some_and(|ids| ids.contains(&json!(id)))
                })
            })
            .await?;
    }

    let alert = hq
        .wait_latest("hq/alerts", |a| a["kind"] == json!("messages_dropped"))
        .await?;
    assert!(alert["count"].as_u64().is_some_and(|n| n >= 1), "{alert}");
    assert!(
        alert["message"].as_str().is_some_and(|m| m.contains("kds-1")),
        "{alert}"
    );
    // Everyone else still has every change.
    hq.wait_latest("stores/s1/stock/beef/level", |d| d["qty"] == json!(EVENTS))
        .await?;
    let log = broker.log();
    assert!(
        log.lines()
            .any(|l| l.contains("message dropped before delivery") && l.contains("kds-1")),
        "the drops are in the log"
    );
    drop(stuck);
    Ok(())
}

/// With anonymous access off, a scale bound to a SKU logs in with its own
/// credentials and keeps that SKU's level from its own readings; it may not
/// publish another scale's readings. The bridge role speaks for any scale
/// of its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_scale_keeps_its_sku_level_from_its_own_readings() -> Result<()> {
    let config = secured_chain("")?.replace(
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n",
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n\
         scales = { scale-1 = { sku = \"beef\" }, scale-7 = { sku = \"fries\" } }\n",
    );
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut audit = Client::login(broker.addr, "audit-1", &password("audit-1")).await?;
    audit.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    audit
        .wait_latest("stores/s1/stock/beef/level", |l| l["qty"] == 0)
        .await?;

    let mut scale = Client::login(broker.addr, "scale-1", &password("scale-1")).await?;
    scale.subscribe("stores/s1/errors/scale-1", QoS::AtLeastOnce).await?;
    let now = dishsync_protocol::payload::Timestamp::now();
    let reading = json!({"grams": 1_250, "at": now.to_string(), "stable": true});
    scale
        .publish_json("stores/s1/scales/scale-1/weight", &reading, QoS::AtLeastOnce)
        .await?;
    audit
        .wait_latest("stores/s1/stock/beef/level", |l| l["qty"] == 1_250)
        .await?;
    // Another scale's readings are refused, with the reason.
    scale
        .publish_json("stores/s1/scales/scale-7/weight", &reading, QoS::AtLeastOnce)
        .await?;
    let refused = scale.next_on("stores/s1/errors/scale-1").await?;
    assert_eq!(refused["code"], json!("not_permitted"), "{refused}");
    assert_eq!(
        scale.all_on("stores/s1/errors/scale-1").len(),
        1,
        "the own reading was not refused"
    );

    // The bridge role publishes for the scales behind it.
    let bridge = Client::login(broker.addr, "bridge-1", &password("bridge-1")).await?;
    let fries = json!({"grams": 3_000, "at": now.to_string(), "stable": true});
    bridge
        .publish_json("stores/s1/scales/scale-7/weight", &fries, QoS::AtLeastOnce)
        .await?;
    audit
        .wait_latest("stores/s1/stock/fries/level", |l| l["qty"] == 3_000)
        .await?;
    assert_eq!(
        audit.latest("stores/s1/stock/beef/level").map(|l| l["qty"].clone()),
        Some(json!(1_250)),
        "scale-7's refused reading for beef's scale changed nothing"
    );
    Ok(())
}

/// The central kitchen is told of an action on a request id that names no
/// store on `hq/errors/{device}`; it reads every store's catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_device_hears_of_refusals_that_name_no_store() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&secured_chain("")?, &data)?;
    let mut kitchen = Client::login(broker.addr, "kitchen-1", &password("kitchen-1")).await?;
    kitchen.subscribe("hq/errors/kitchen-1", QoS::AtLeastOnce).await?;
    kitchen.subscribe("stores/+/catalog", QoS::AtLeastOnce).await?;
    kitchen
        .publish_json(
            "hq/replenishment/rq-42/ship",
            &json!({"id": "ck-1", "by": "kitchen-1"}),
            QoS::AtLeastOnce,
        )
        .await?;
    let refused = kitchen.next_on("hq/errors/kitchen-1").await?;
    assert_eq!(
        (refused["code"].clone(), refused["id"].clone()),
        (json!("unknown_document"), json!("ck-1")),
        "{refused}"
    );
    let catalog = kitchen
        .wait_latest("stores/s1/catalog", |c| c["store"] == json!("s1"))
        .await?;
    let dishes: Vec<&str> = catalog["dishes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["dish"].as_str())
        .collect();
    assert_eq!(dishes, ["burger", "double", "chips"], "in menu order: {catalog}");
    // Another device's HQ errors are not its to read.
    assert!(!kitchen.granted("hq/errors/hq-1").await?);
    Ok(())
}

/// [MQTT-3.3.2-2] and [MQTT-4.8.0-1]: a PUBLISH whose topic name holds a
/// wildcard (or a control character) is a protocol violation: nothing is
/// routed and the connection is closed (by the validating front, before
/// the engine sees it); a valid one on the same terms is served. Sent as
/// raw bytes: client libraries refuse to send such topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_wildcard_topic_closes_the_connection() -> Result<()> {
    let config =
        secured_chain("")? + "\n[[namespaces]]\nprefix = \"tools\"\npublish = [\"hq\"]\nsubscribe = [\"hq\"]\n";
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut audit = Client::login(broker.addr, "audit-1", &password("audit-1")).await?;
    audit.subscribe("tools/#", QoS::AtLeastOnce).await?;
    for (topic, closed) in [
        ("tools/+/jobs", true),
        ("tools/#", true),
        ("tools/\u{1}bell", true),
        ("stores/s1/+/events", true),
        ("tools/jobs", false),
    ] {
        let mut bytes = connect_packet("hq-1", "hq-1", &password("hq-1"));
        bytes.extend(publish_packet(topic, b"job"));
        let mut stream = TcpStream::connect(broker.addr)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.write_all(&bytes)?;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack)?;
        assert_eq!(connack, [0x20, 2, 0, 0], "{topic:?}: CONNACK accepted");
        if closed {
            // No PUBACK: the violation closes the connection at once.
            let mut rest = Vec::new();
            let read = stream.read_to_end(&mut rest);
            assert!(
                read.is_ok() && rest.is_empty(),
                "{topic:?}: the connection is closed ({read:?}, {rest:?})"
            );
        } else {
            let mut puback = [0u8; 4];
            stream.read_exact(&mut puback)?;
            assert_eq!(puback[0], 0x40, "{topic:?}: PUBACK");
        }
    }
    let routed = audit.next_on("tools/jobs").await?;
    assert!(routed.is_null(), "the payload is not JSON");
    assert_eq!(
        audit.seen.iter().filter(|m| m.topic.starts_with("tools/")).count(),
        1,
        "only the valid publish was routed"
    );
    Ok(())
}

/// Sends raw `bytes` (then `then`, once the first answer is in) and returns
/// everything the broker sent until it closed the connection.
fn exchange(addr: std::net::SocketAddr, bytes: &[u8], then: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(bytes)?;
    let mut got = Vec::new();
    if let Some(then) = then {
        let mut first = [0u8; 64];
        let n = stream.read(&mut first)?;
        got.extend_from_slice(&first[..n]);
        stream.write_all(then)?;
    }
    stream.read_to_end(&mut got)?;
    Ok(got)
}

/// A raw CONNECT at `level` with `flags` and `client_id`, no other fields.
pub(crate) fn raw_connect(level: u8, flags: u8, client_id: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4];
    body.extend_from_slice(b"MQTT");
    body.extend_from_slice(&[level, flags, 0, 30]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut packet = vec![0x10];
    packet.extend(remaining_length(body.len()));
    packet.extend(body);
    packet
}

/// The validating front answers malformed packets as MQTT says, whatever
/// the engine's decoder would have done: an unknown protocol level gets
/// CONNACK 0x01 [MQTT-3.1.2-2]; a reserved CONNECT flag closes
/// [MQTT-3.1.2-3]; a client id with a control character is rejected
/// (CONNACK 0x02); a PINGREQ with a body closes [MQTT-2.2.2-2] — for an
/// MQTT 5 client with DISCONNECT 0x81 first; a DISCONNECT closes at once.
/// Each `read_to_end` returning proves the broker closed the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_answered_as_the_standard_says() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let broker = BrokerProcess::start(&small_chain(), &data)?;
    let addr = broker.addr;
    let accepted = [0x20, 2, 0, 0];
    // (what, the first bytes, the bytes after the first answer, all the
    // broker says before it closes)
    type Case = (&'static str, Vec<u8>, Option<&'static [u8]>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (
            "protocol level 2",
            raw_connect(2, 0b10, b"raw-a"),
            None,
            vec![0x20, 2, 0, 1],
        ),
        (
            "protocol level 6",
            raw_connect(6, 0b10, b"raw-a"),
            None,
            vec![0x20, 2, 0, 1],
        ),
        ("reserved CONNECT flag", raw_connect(4, 0b11, b"raw-a"), None, vec![]),
        (
            "inconsistent will flags",
            raw_connect(4, 0b1_1010, b"raw-a"),
            None,
            vec![],
        ),
        (
            "control character in the client id",
            raw_connect(4, 0b10, b"raw\x01a"),
            None,
            vec![0x20, 2, 0, 2],
        ),
        (
            "PINGREQ with a body",
            raw_connect(4, 0b10, b"raw-b"),
            Some(&[0xc0, 1, 0]),
            accepted.to_vec(),
        ),
        (
            "SUBSCRIBE with reserved flags",
            raw_connect(4, 0b10, b"raw-c"),
            Some(&[0x80, 6, 0, 1, 0, 1, b'#', 0]),
            accepted.to_vec(),
        ),
        (
            "DISCONNECT",
            raw_connect(4, 0b10, b"raw-d"),
            Some(&[0xe0, 0]),
            accepted.to_vec(),
        ),
    ];
    for (what, bytes, then, expected) in cases {
        let got = exchange(addr, &bytes, then)?;
        assert_eq!(got, expected, "{what}");
    }
    // MQTT 5: the CONNACK, then DISCONNECT with reason 0x81 (malformed).
    let got = exchange(addr, &raw_connect(5, 0b10, b"raw-e"), Some(&[0xc0, 1, 0]))?;
    assert_eq!(got.first(), Some(&0x20), "a CONNACK first: {got:?}");
    assert!(got.ends_with(&[0xe0, 1, 0x81]), "then DISCONNECT 0x81: {got:?}");
    // The broker keeps serving everyone else.
    let mut pos = Client::connect(addr, "pos-1").await?;
    pos.subscribe("stores/s1/dishes/burger/availability", QoS::AtLeastOnce)
        .await?;
    pos.wait_until("the retained availability", |seen| !seen.is_empty())
        .await?;
    Ok(())
}

/// `GET path` over TLS to `addr`, trusting `ca_pem`: the whole answer.
fn https_get(addr: std::net::SocketAddr, ca_pem: &str, path: &str) -> Result<String> {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    // The server may end without TLS's close_notify; what came is the answer.
    let _ = tls.read_to_string(&mut answer);
    Ok(answer)
}

/// The web listener over TLS with the broker's certificate: the web app's
/// cookies are `Secure`, and plaintext HTTP to it gets no answer.
#[test]
fn the_web_listener_serves_tls_with_the_brokers_certificate() -> Result<()> {
    let pki = pki()?;
    let (_tmp, data) = temp_data_dir()?;
    let hash = dishsync_broker::auth::hash_password("pass-word-9")?;
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\ntls = true\n\n\
         [[users]]\nname = \"mgr-a\"\nrole = \"store_manager\"\nstore = \"s1\"\npassword_hash = \"{hash}\"\n",
        crate::support::small_chain()
    );
    let broker = BrokerProcess::start(&with_tls(&config, &tls_lines(&pki, false)), &data)?;
    let web = broker.web_addr.ok_or_else(|| anyhow!("no web listener"))?;
    let login = https_get(web, &pki.ca_pem, "/login")?;
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: dishsync_login="))
        .ok_or_else(|| anyhow!("no login cookie: {login}"))?;
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let ready = https_get(web, &pki.ca_pem, "/readyz")?;
    assert!(ready.contains("\"ready\""), "{ready}");
    let plain = ureq::get(&format!("http://{web}/login"))
        .timeout(std::time::Duration::from_secs(10))
        .call();
    assert!(plain.is_err(), "plaintext HTTP to the TLS listener is not answered");
    Ok(())
}
