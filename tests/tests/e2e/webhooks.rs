//! Outbound webhooks against a real HTTP receiver started by the test:
//! deliveries survive `kill -9` while the receiver is down, arrive in
//! `rev` order per document with a stable `webhook-id`, carry the dish's
//! ids on delivery channels, and verify with Python's `hmac`; a dead
//! endpoint ends in dead letters and an alert, a hung one slows nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rumqttc::QoS;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::support::{sale, small_chain, stock_event, temp_data_dir, BrokerProcess, Client, DEADLINE};

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    id: String,
    timestamp: String,
    signature: String,
    pub(crate) body: String,
}

/// A webhook receiver on a loopback port: answers 503 while `down`, and
/// 200 otherwise, keeping what it took.
#[derive(Default)]
pub(crate) struct Receiver {
    taken: Mutex<Vec<Hit>>,
    /// Attempts per webhook-id, refused ones too.
    attempts: Mutex<BTreeMap<String, usize>>,
    down: AtomicBool,
    requests: AtomicUsize,
    changed: Notify,
}

async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let hit = Hit {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
    };
    receiver.requests.fetch_add(1, Ordering::SeqCst);
    *receiver
        .attempts
        .lock()
        .expect("lock")
        .entry(hit.id.clone())
        .or_default() += 1;
    let status = if receiver.down.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        receiver.taken.lock().expect("lock").push(hit);
        StatusCode::OK
    };
    receiver.changed.notify_waiters();
    status
}

impl Receiver {
    /// Starts one on a free loopback port.
    pub(crate) async fn start(down: bool) -> Result<(Arc<Receiver>, SocketAddr)> {
        let receiver = Arc::new(Receiver::default());
        receiver.down.store(down, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((receiver, addr))
    }

    /// Waits until `done` holds of what was taken and the requests made.
    pub(crate) async fn until(&self, what: &str, done: impl Fn(&[Hit], usize) -> bool) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.taken.lock().expect("lock"), self.requests.load(Ordering::SeqCst)) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!("the receiver never saw {what}");
            }
        }
    }

    /// What was taken, each webhook-id once (the first time), in order.
    fn deduplicated(&self) -> Result<Vec<(Hit, Value)>> {
        let taken = self.taken.lock().expect("lock").clone();
        let mut first: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::new();
        for hit in taken {
            match first.get(&hit.id) {
                Some(body) => assert_eq!(body, &hit.body, "{} came again with another body", hit.id),
                None => {
                    first.insert(hit.id.clone(), hit.body.clone());
                    let body: Value = serde_json::from_str(&hit.body).context("a JSON body")?;
                    out.push((hit, body));
                }
            }
        }
        Ok(out)
    }
}

/// The document a delivery is about: its topic's store and item.
fn doc_of(body: &Value) -> String {
    let field = |name: &str| body["data"][name].as_str().unwrap_or_default().to_string();
    match body["type"].as_str().unwrap_or_default() {
        "availability.updated" => format!("{}/{}", field("store"), field("dish")),
        "level.updated" => format!("{}/{}", field("store"), field("sku")),
        other => format!("{other}/{}", field("id")),
    }
}

/// Checks every taken request's signature with Python's `hmac` — an
/// implementation of the scheme independent of the broker's.
fn python_verifies(secret: &str, hits: &[Hit], dir: &std::path::Path) -> Result<usize> {
    let file = dir.join("hits.jsonl");
    let mut lines = String::new();
    for h in hits {
        lines.push_str(&serde_json::to_string(
            &json!({"id": h.id, "ts": h.timestamp, "sig": h.signature, "body": h.body}),
        )?);
        lines.push('\n');
    }
    std::fs::write(&file, lines)?;
    let script = r#"
import base64, hashlib, hmac, json, sys
key = base64.b64decode(sys.argv[1].removeprefix("whsec_"))
good = 0
for line in open(sys.argv[2]):
    h = json.loads(line)
    signed = f"{h['id']}.{h['ts']}.{h['body']}".encode()
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if not any(hmac.compare_digest(expected, s) for s in h["sig"].split(" ")):
        sys.exit(f"bad signature on {h['id']}")
    good += 1
print(good)
"#;
    let python = std::env::var_os("DISHSYNC_PYTHON").unwrap_or_else(|| "python3".into());
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(secret)
        .arg(&file)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!("python: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// `GET url` with `token`: the status and the JSON body.
fn get_json(url: &str, token: &str) -> Result<(u16, Value)> {
    let answer = ureq::get(url).set("Authorization", &format!("Bearer {token}")).call();
    let (code, response) = match answer {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => return Err(e.into()),
    };
    Ok((code, serde_json::from_str(&response.into_string()?)?))
}

/// The small chain with the burger on two delivery channels, a web
/// listener, an HQ integration and a store's (their tokens returned) and
/// `webhooks`.
fn chain_with_webhooks(webhooks: &str) -> Result<(String, String, String)> {
    let chain = small_chain().replace(
        "id = \"burger\"\n",
        "id = \"burger\"\nexternal = { doordash = \"dd-burger-1\", meituan = \"mt-88\" }\n",
    );
    let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
    let (store_token, hash2) = dishsync_broker::api::integrations::mint_token()?;
    let config = format!(
        "{chain}\n[web]\nlisten = \"127.0.0.1:0\"\n\n[[integrations]]\nid = \"bi\"\nrole = \"hq\"\ntoken_sha256 = \"{hash}\"\n\n\
         [[integrations]]\nid = \"erp\"\nrole = \"manager\"\nstore = \"s1\"\ntoken_sha256 = \"{hash2}\"\n\n{webhooks}"
    );
    Ok((config, token, store_token))
}

/// Sends `n` burger sales from `first` on and waits until the bun level
/// shows `buns_after`.
async fn sell_burgers(mqtt: &mut Client, first: usize, n: usize, buns_after: i64) -> Result<()> {
    for i in first..first + n {
        mqtt.publish_json(
            "stores/s1/sales",
            &sale(&format!("sale-{i}"), &[("burger", 1)], "pos-1"),
            QoS::AtLeastOnce,
        )
        .await?;
    }
    mqtt.wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(buns_after))
        .await?;
    Ok(())
}

/// 500 sales while the receiver is down, the broker killed with SIGKILL
/// half-way: after the restart, once the receiver is up, the newest state
/// of every document changed arrives, the alert raised before the kill
/// too; per document in `rev` order, one body per webhook-id, every
/// signature good by Python's `hmac`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_kill_9_and_arrive_in_order_signed() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let (receiver, addr) = Receiver::start(true).await?;
    let secret = dishsync_broker::webhooks::Secret::generate()?;
    let (config, token, store_token) = chain_with_webhooks(&format!(
        "[[webhooks]]\nid = \"pos-sync\"\nurl = \"http://{addr}/hook\"\nsecret = \"{secret}\"\n\
         kinds = [\"availability\", \"level\", \"alert\"]\nstores = [\"s1\"]\nfirst_retry_seconds = 0.05\n"
    ))?;
    let mut broker = BrokerProcess::start(&config, &data)?;
    let listen = broker.addr;
    let mut mqtt = Client::connect(listen, "pos-1").await?;
    mqtt.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    mqtt.subscribe("stores/s1/alerts", QoS::AtLeastOnce).await?;
    // Enough beef for 250 burgers and the reorder point: beef is low when
    // the kill comes.
    for (id, sku, qty, unit) in [
        ("count-bun", "bun", 600.0, "pcs"),
        ("count-beef", "beef", 38_100.0, "g"),
    ] {
        mqtt.publish_json(
            &format!("stores/s1/stock/{sku}/events"),
            &stock_event(id, "count", qty, unit, "pos-1"),
            QoS::AtLeastOnce,
        )
        .await?;
    }
    mqtt.wait_latest("stores/s1/stock/beef/level", |d| d["qty"] == json!(38_100))
        .await?;
    sell_burgers(&mut mqtt, 0, 250, 350).await?;
    let low = mqtt
        .wait_latest("stores/s1/alerts", |a| a["kind"] == "low_stock" && a["sku"] == "beef")
        .await?;
    // Pending: the receiver refused at least one attempt.
    receiver.until("a refused attempt", |_, requests| requests > 0).await?;
    broker.kill();

    let mut broker = BrokerProcess::start_on(&config, &data, listen)?;
    let mut mqtt = Client::connect(listen, "pos-1").await?;
    mqtt.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    mqtt.subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    sell_burgers(&mut mqtt, 250, 250, 100).await?;
    mqtt.wait_latest("stores/s1/dishes/burger/availability", |d| d["portions"] == json!(0))
        .await?;
    mqtt.wait_latest("stores/s1/dishes/double/availability", |d| d["portions"] == json!(0))
        .await?;
    // The newest of each document, as retained once the last sale is
    // committed: a live copy may still be on its way behind another topic's.
    let mut fresh = Client::connect(listen, "pos-2").await?;
    fresh.subscribe("stores/s1/stock/+/level", QoS::AtLeastOnce).await?;
    fresh
        .subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    fresh
        .wait_until("every retained document", |seen| {
            [
                "stores/s1/stock/bun/level",
                "stores/s1/stock/beef/level",
                "stores/s1/dishes/burger/availability",
                "stores/s1/dishes/double/availability",
            ]
            .iter()
            .all(|t| seen.iter().any(|m| m.topic == *t))
        })
        .await?;
    let retained = |topic: &'static str| {
        let found = fresh.latest(topic).cloned();
        found.with_context(|| format!("no retained {topic}"))
    };
    let (bun, beef) = (
        retained("stores/s1/stock/bun/level")?,
        retained("stores/s1/stock/beef/level")?,
    );
    let burger = retained("stores/s1/dishes/burger/availability")?;
    let double = retained("stores/s1/dishes/double/availability")?;

    receiver.down.store(false, Ordering::SeqCst);
    let newest: BTreeMap<String, u64> = [
        ("s1/bun", &bun),
        ("s1/beef", &beef),
        ("s1/burger", &burger),
        ("s1/double", &double),
    ]
    .into_iter()
    .map(|(doc, d)| (doc.to_string(), d["rev"].as_u64().unwrap_or_default()))
    .collect();
    let low_id = low["id"].clone();
    receiver
        .until("the newest of every document and the alert", |hits, _| {
            let bodies: Vec<Value> = hits.iter().filter_map(|h| serde_json::from_str(&h.body).ok()).collect();
            newest.iter().all(|(doc, rev)| {
                bodies
                    .iter()
                    .any(|b| doc_of(b) == *doc && b["data"]["rev"].as_u64() == Some(*rev))
            }) && bodies
                .iter()
                .any(|b| b["type"] == "alert.raised" && b["data"]["id"] == low_id)
        })
        .await?;

    // Per document, revs only grow; one webhook-id per (document, rev);
    // each (alert, state) once.
    let delivered = receiver.deduplicated()?;
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut ids: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut alerts = BTreeSet::new();
    for (hit, body) in &delivered {
        let doc = doc_of(body);
        if body["type"].as_str().is_some_and(|t| t.starts_with("alert.")) {
            assert_eq!(body["data"]["store"], "s1");
            let state = (body["data"]["id"].to_string(), body["type"].to_string());
            assert!(alerts.insert(state.clone()), "{state:?} delivered twice");
            continue;
        }
        let rev = body["data"]["rev"].as_u64().context("a rev")?;
        if let Some(before) = last.insert(doc.clone(), rev) {
            assert!(rev > before, "{doc}: rev {rev} after {before}");
        }
        if let Some(other) = ids.insert((doc.clone(), rev), hit.id.clone()) {
            bail!("{doc} rev {rev} under two ids: {other} and {}", hit.id);
        }
        if body["type"] == "availability.updated" && body["data"]["dish"] == "burger" {
            assert_eq!(
                body["data"]["external"],
                json!({"doordash": "dd-burger-1", "meituan": "mt-88"})
            );
        }
        assert!(body["data"]["store"] == "s1", "only s1 was asked for: {}", body);
    }
    assert!(
        receiver.attempts.lock().expect("lock").values().any(|n| *n > 1),
        "deliveries refused while the receiver was down were tried again"
    );
    // Every signature is good, by an implementation not the broker's.
    let taken = receiver.taken.lock().expect("lock").clone();
    assert_eq!(python_verifies(&secret, &taken, tmp.path())?, taken.len());

    // The queue drains — as `$SYS/dishsync/metrics` tells, renewed every
    // 10 s — and HQ sees the endpoint empty; a store's system does not.
    mqtt.subscribe("$SYS/dishsync/metrics", QoS::AtLeastOnce).await?;
    mqtt.wait_latest("$SYS/dishsync/metrics", |m| {
        m["webhook_pending"]["pos-sync"] == json!(0)
    })
    .await?;
    let web = broker.web_addr.context("web")?;
    let status = |token: &str| get_json(&format!("http://{web}/api/v1/webhooks"), token);
    let (code, listed) = status(&token)?;
    assert_eq!(code, 200, "{listed}");
    let endpoint = &listed["webhooks"][0];
    assert_eq!(endpoint["id"], "pos-sync");
    assert!(endpoint.get("secret").is_none());
    assert_eq!(endpoint["pending"], 0, "{listed}");
    let (code, refused) = status(&store_token)?;
    assert_eq!((code, &refused["code"]), (403, &json!("not_permitted")), "{refused}");
    // The queue on the metrics page: deliveries counted, none pending,
    // the refused attempts counted as failures.
    let metrics = ureq::get(&format!("http://{web}/metrics")).call()?.into_string()?;
    let value = |series: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    };
    assert!(value("dishsync_webhook_deliveries_total ") > Some(0), "{metrics}");
    assert_eq!(
        value("dishsync_webhook_pending{endpoint=\"pos-sync\"} "),
        Some(0),
        "{metrics}"
    );
    assert!(value("dishsync_webhook_failed_attempts_total ").is_some(), "{metrics}");
    assert!(!broker.log().contains(&secret), "the secret is never logged");
    broker.kill();
    Ok(())
}

/// An endpoint that refuses connections gives its deliveries up after its
/// retry period: dead letters on the API and an alert on `hq/alerts`. One
/// that accepts and never answers holds up only itself: a third endpoint
/// gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_ends_in_dead_letters_and_a_hung_one_slows_nothing() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let (receiver, addr) = Receiver::start(false).await?;
    // A port that refuses: bound, then closed.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // A port that accepts and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0")?;
    let hung_addr = hung.local_addr()?;
    let secret = dishsync_broker::webhooks::Secret::generate()?;
    let mut webhooks = String::new();
    for (id, url, extra) in [
        (
            "dead",
            format!("http://{refused}/hook"),
            "retry_for_seconds = 2\nfirst_retry_seconds = 0.2\n",
        ),
        ("hung", format!("http://{hung_addr}/hook"), ""),
        ("live", format!("http://{addr}/hook"), ""),
    ] {
        webhooks.push_str(&format!(
            "[[webhooks]]\nid = \"{id}\"\nurl = \"{url}\"\nsecret = \"{secret}\"\nkinds = [\"level\"]\n{extra}\n"
        ));
    }
    let (config, token, _) = chain_with_webhooks(&webhooks)?;
    let broker = BrokerProcess::start(&config, &data)?;
    let mut hq = Client::connect(broker.addr, "hq-watch").await?;
    hq.subscribe("hq/alerts", QoS::AtLeastOnce).await?;
    let mut mqtt = Client::connect(broker.addr, "pos-1").await?;
    mqtt.subscribe("stores/+/stock/bun/level", QoS::AtLeastOnce).await?;
    let mut newest = BTreeMap::new();
    for store in ["s1", "s2"] {
        let topic = format!("stores/{store}/stock/bun/events");
        mqtt.publish_json(
            &topic,
            &stock_event(&format!("count-{store}"), "count", 100.0, "pcs", "pos-1"),
            QoS::AtLeastOnce,
        )
        .await?;
        for n in 0..20 {
            let id = format!("recv-{store}-{n}");
            mqtt.publish_json(
                &topic,
                &stock_event(&id, "receive", 1.0, "pcs", "pos-1"),
                QoS::AtLeastOnce,
            )
            .await?;
        }
        let level = mqtt
            .wait_latest(&format!("stores/{store}/stock/bun/level"), |d| d["qty"] == json!(120))
            .await?;
        newest.insert(store.to_string(), level["rev"].as_u64().context("rev")?);
    }
    receiver
        .until("the newest level of both stores on the live endpoint", |hits, _| {
            newest.iter().all(|(store, rev)| {
                hits.iter().any(|h| {
                    serde_json::from_str::<Value>(&h.body)
                        .is_ok_and(|b| b["data"]["store"] == store.as_str() && b["data"]["rev"].as_u64() == Some(*rev))
                })
            })
        })
        .await?;

    let alert = hq
        .wait_latest("hq/alerts", |a| a["kind"] == "webhook_dead_letter")
        .await?;
    assert!(
        alert["message"]
            .as_str()
            .unwrap_or_default()
            .contains("to dead given up"),
        "{alert}"
    );
    let web = broker.web_addr.context("web")?;
    let get = |path: &str, token: &str| get_json(&format!("http://{web}/api/v1/{path}"), token);
    let (code, letters) = get("webhooks/dead/dead-letters", &token)?;
    assert_eq!(code, 200, "{letters}");
    let first = &letters["dead_letters"][0];
    assert!(
        first["webhook_id"].as_str().is_some_and(|id| id.starts_with("msg_")),
        "{letters}"
    );
    assert_eq!(first["type"], "level.updated");
    assert!(first["attempts"].as_u64() >= Some(2), "{first}");
    assert!(
        first["last_error"].as_str().is_some_and(|e| e.contains("connecting")),
        "{first}"
    );
    let (code, _) = get("webhooks/nowhere/dead-letters", &token)?;
    assert_eq!(code, 404);
    let (_, listed) = get("webhooks", &token)?;
    let by_id: BTreeMap<String, &Value> = listed["webhooks"]
        .as_array()
        .context("a list")?
        .iter()
        .map(|w| (w["id"].as_str().unwrap_or_default().to_string(), w))
        .collect();
    assert!(by_id["dead"]["dead_letters"].as_u64() >= Some(1), "{listed}");
    assert!(by_id["live"]["delivered"].as_u64() >= Some(2), "{listed}");
    assert!(by_id["hung"]["delivered"] == 0, "{listed}");
    drop(hung);
    Ok(())
}
