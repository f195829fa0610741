//! The `pages` scenario: many open live pages of one store (the web app's
//! server-sent event streams) while stock changes arrive over MQTT: change
//! → availability at every page, timed from the change's intended send
//! time, and the broker's memory per open page; beside it, the same load
//! with as many MQTT POS instead of pages, in the same run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::{timeout, Instant};

use super::{bench_client, Arrivals, Cli, Server, Target};

/// The password of the scenario's manager.
const PASSWORD: &str = "bench-pass-1";

/// The chain of the scenario: `config(1, 1)`, a web listener and the
/// store's manager.
fn chain() -> Result<String> {
    let hash = dishsync_broker::auth::hash_password(PASSWORD)?;
    Ok(format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n[[users]]\nname = \"bench-mgr\"\nrole = \"store_manager\"\n\
         store = \"s1\"\npassword_hash = \"{hash}\"\n",
        super::config(1, 1)
    ))
}

/// Logs the manager in at `web`: the session cookie.
fn log_in(web: SocketAddr) -> Result<String> {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let page = agent.get(&format!("http://{web}/login")).call()?;
    let cookie = page
        .all("set-cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("dishsync_login="))
        .and_then(|c| c.split(';').next())
        .context("the login form's cookie")?
        .to_string();
    let form = agent
        .post(&format!("http://{web}/login"))
        .set("Cookie", &format!("dishsync_login={cookie}"))
        .send_form(&[
            ("name", "bench-mgr"),
            ("password", PASSWORD),
            ("csrf", &cookie),
            ("next", "/"),
        ]);
    let answer = match form {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    answer
        .all("set-cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("dishsync_session="))
        .and_then(|c| c.split(';').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the login was refused ({})", answer.status()))
}

/// One open store page: its stream read line by line; every availability
/// of dish-0 with its rev and when it came, and a permit once the page
/// has its starting state.
async fn page(
    web: SocketAddr,
    session: String,
    index: usize,
    seen: Arc<Mutex<Vec<Arrivals>>>,
    ready: Arc<tokio::sync::Semaphore>,
) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(web).await?;
    stream.set_nodelay(true)?;
    // HTTP/1.0: the stream comes as it is, not in chunks.
    let request = format!(
        "GET /live/stores/s1/store HTTP/1.0\r\nHost: {web}\r\nCookie: dishsync_session={session}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let mut event = String::new();
    let mut started = false;
    while let Some(line) = lines.next_line().await? {
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
            if event == "ready" && !started {
                started = true;
                ready.add_permits(1);
            }
            continue;
        }
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if event != "doc" || !data.contains("dishes/dish-0/availability") {
            continue;
        }
        let now = Instant::now();
        let doc: Value = serde_json::from_str(data)?;
        let rev = doc["doc"]["rev"].as_u64().unwrap_or(0);
        if let Ok(mut seen) = seen.lock() {
            seen[index].push((rev, now));
        }
    }
    Ok(())
}

/// The change → page latencies (p50, p99, p99.9 in ms), the samples, and
/// the broker's memory per open page (KiB), with `pages` pages open.
async fn pages_run(server: &Server, pages: usize, rate: f64, seconds: f64) -> Result<(f64, f64, f64, usize, f64)> {
    let web = server.web.context("the broker opened no web listener")?;
    let session = tokio::task::spawn_blocking(move || log_in(web)).await??;
    let before = server.rss_kib()?;
    let seen: Arc<Mutex<Vec<Arrivals>>> = Arc::new(Mutex::new(vec![Vec::new(); pages]));
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    for index in 0..pages {
        let (session, seen, ready) = (session.clone(), Arc::clone(&seen), Arc::clone(&ready));
        tasks.push(tokio::spawn(page(web, session, index, seen, ready)));
    }
    timeout(Duration::from_secs(60), ready.acquire_many(pages as u32))
        .await
        .map_err(|_| anyhow!("the pages did not open"))??
        .forget();
    let per_page = (server.rss_kib()?.saturating_sub(before)) as f64 / pages as f64;
    // The starting document of dish-0, as every page has it.
    let r0 = seen
        .lock()
        .map_err(|_| anyhow!("lock"))?
        .iter()
        .filter_map(|p| p.last().map(|(rev, _)| *rev))
        .max()
        .unwrap_or(0);
    for p in seen.lock().map_err(|_| anyhow!("lock"))?.iter_mut() {
        p.clear();
    }
    let (publisher, mut pub_loop) = bench_client("pub-1", server.addr, 10_000);
    let pub_task = tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    let events = (rate * seconds).round() as u64;
    let start = Instant::now() + Duration::from_millis(100);
    super::pace(
        vec![publisher.clone()],
        Target::Dishsync,
        events,
        rate,
        start,
        r0,
        "stores/s1/dishes/dish-0/availability",
    )
    .await?;
    super::wait_for_last(&seen, pages, r0 + events).await?;
    let mut ms = super::change_latencies(&seen.lock().map_err(|_| anyhow!("lock"))?, events, r0, rate, start);
    ms.sort_by(f64::total_cmp);
    let expected = events as usize * pages;
    if ms.len() < expected {
        eprintln!(
            "dishsync-bench: pages: {} of {expected} changes never reached their page within 30 s",
            expected - ms.len()
        );
    }
    if ms.is_empty() {
        bail!("no change reached a page");
    }
    for t in tasks {
        t.abort();
    }
    let _ = publisher.disconnect().await;
    pub_task.abort();
    Ok((
        super::percentile(&ms, 0.5),
        super::percentile(&ms, 0.99),
        super::percentile(&ms, 0.999),
        ms.len(),
        per_page,
    ))
}

/// The scenario: `rounds` rounds of `pages` pages, then as many MQTT POS,
/// each on a fresh broker.
pub(super) async fn pages(cli: &Cli, dir: &Path, rounds: usize, pages: usize, seconds: f64) -> Result<()> {
    let rate = 100.0;
    let config = dir.join("pages.toml");
    std::fs::write(&config, chain()?)?;
    let (mut page_p, mut pos_p, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for on_pages in [true, false] {
            let data = dir.join(format!("pages-{round}-{on_pages}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&data);
            let server = Server::start(Target::Dishsync, &config, &data)?;
            {
                // Enough stock that the dish never sells out.
                let (c, mut l) = bench_client("stocker", server.addr, 10);
                let at = dishsync_protocol::payload::Timestamp::now().to_string();
                c.publish(
                    "stores/s1/stock/sku-0/events",
                    rumqttc::QoS::ExactlyOnce,
                    false,
                    serde_json::to_vec(&serde_json::json!({"id": "init", "kind": "count", "qty": 1000, "unit": "g", "at": at, "device": "stocker"}))?,
                )
                .await?;
                while !matches!(l.poll().await?, rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_))) {}
            }
            if on_pages {
                let (p50, p99, p999, n, kib) = pages_run(&server, pages, rate, seconds).await?;
                page_p.push((p50, p99, p999, n));
                memory.push(kib);
            } else {
                let (p50, p99, p999, n) = super::latency(
                    Target::Dishsync,
                    server.addr,
                    pages,
                    super::Changes {
                        rate,
                        seconds,
                        senders: 1,
                    },
                )
                .await?;
                pos_p.push((p50, p99, p999, n));
            }
            drop(server);
            let _ = std::fs::remove_dir_all(&data);
        }
    }
    let median_of = |v: &[(f64, f64, f64, usize)], pick: fn(&(f64, f64, f64, usize)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(pick).collect();
        super::median(&mut x)
    };
    let (p50, p99, p999) = (
        median_of(&page_p, |r| r.0),
        median_of(&page_p, |r| r.1),
        median_of(&page_p, |r| r.2),
    );
    let (m50, m99, m999) = (
        median_of(&pos_p, |r| r.0),
        median_of(&pos_p, |r| r.1),
        median_of(&pos_p, |r| r.2),
    );
    let kib = super::median(&mut memory);
    let metric = format!("change→{pages} pages vs {pages} MQTT POS, {rate}/s");
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "pages", "metric": metric, "unit": "ms", "goal": "p99 ≤ 50 ms, ≤ 64 KiB per page",
                "pages": {"p50": p50, "p99": p99, "p999": p999}, "mqtt": {"p50": m50, "p99": m99, "p999": m999},
                "p99": p99, "mqtt_p99": m99, "ratio": p99 / m99, "kib_per_page": kib,
                "rounds": {"pages": page_p.iter().map(|r| [r.0, r.1, r.2]).collect::<Vec<_>>(),
                           "mqtt": pos_p.iter().map(|r| [r.0, r.1, r.2]).collect::<Vec<_>>(), "kib_per_page": memory}})
        );
    } else {
        println!(
            "{:<12} {metric:<38} pages p50 {p50:.2} p99 {p99:.2} p99.9 {p999:.2} ms   MQTT POS p50 {m50:.2} p99 {m99:.2} p99.9 {m999:.2} ms   {kib:.1} KiB/page   goal p99 ≤ 50 ms, ≤ 64 KiB",
            "pages"
        );
    }
    Ok(())
}
