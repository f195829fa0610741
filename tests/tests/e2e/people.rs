//! The web app in a real browser (Debian's chromium through WebDriver)
//! against the real broker: logins, who sees what, live pages following
//! MQTT, taps applied once, a transfer worked from the phone, markup shown
//! as text. Screenshots of every view at phone and desktop size are taken
//! on the way (`screenshots`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::support::{sale, small_chain, stock_event, temp_data_dir, BrokerProcess, Client};
use crate::webdriver::{Browser, Driver};

/// Every user's password in these tests.
pub(crate) const PASSWORD: &str = "pass-word-9";

/// `[[users]]` entries: (name, role, store).
pub(crate) fn users(list: &[(&str, &str, Option<&str>)]) -> Result<String> {
    let hash = dishsync_broker::auth::hash_password(PASSWORD)?;
    let mut out = String::new();
    for (name, role, store) in list {
        out.push_str(&format!(
            "[[users]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_hash = \"{hash}\"\n"
        ));
        if let Some(store) = store {
            out.push_str(&format!("store = \"{store}\"\n"));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Where the screenshots go: `DISHSYNC_SCREENSHOTS` (the README's come
/// from `DISHSYNC_SCREENSHOTS=$PWD/docs/screenshots cargo test -p e2e people`),
/// else a directory under `target/`.
fn screenshots() -> PathBuf {
    std::env::var_os("DISHSYNC_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"))
}

/// `GET url` with the session cookie `session` (if any): the status.
fn status_of(url: &str, session: Option<&str>) -> Result<u16> {
    // Redirects are answers here, not followed.
    let mut request = ureq::AgentBuilder::new().redirects(0).build().get(url);
    if let Some(s) = session {
        request = request.set("Cookie", &format!("dishsync_session={s}"));
    }
    Ok(match request.call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => return Err(e.into()),
    })
}

/// `POST url` of `body` with `session` and `csrf` (if any): status and body.
fn post_tap(url: &str, session: Option<&str>, csrf: Option<&str>, body: &Value) -> Result<(u16, Value)> {
    let mut request = ureq::post(url).set("Content-Type", "application/json");
    if let Some(s) = session {
        request = request.set("Cookie", &format!("dishsync_session={s}"));
    }
    if let Some(c) = csrf {
        request = request.set("X-CSRF-Token", c);
    }
    let (code, response) = match request.send_string(&body.to_string()) {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => return Err(e.into()),
    };
    Ok((
        code,
        serde_json::from_str(&response.into_string()?).unwrap_or(Value::Null),
    ))
}

/// The page's CSRF token.
fn csrf_of(browser: &Browser) -> Result<String> {
    let token = browser.execute("return document.querySelector('meta[name=csrf]').content;", &[])?;
    token.as_str().map(str::to_string).context("a CSRF token")
}

/// Waits until the page has its live stream's starting state.
fn live(browser: &Browser) -> Result<()> {
    browser.wait_until("the page is live", "return document.body.dataset.live === 'ready';")
}

/// Logins; who sees what, by the page and by direct HTTP; a sale over
/// MQTT on an open store page and floor board; a dish whose name is markup
/// shown as text; screenshots of the store, manager, kitchen, floor and HQ
/// views at both sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_see_their_stores_live_and_only_theirs() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let chain = small_chain()
        .replace(
            "id = \"burger\"\nname = \"burger\"",
            "id = \"burger\"\nname = \"<script>window.pwned = 1</script> Burger\"",
        )
        .replace(
            "unit = \"pcs\"\nreorder_point = 4\npar = 20\n",
            "unit = \"pcs\"\nreorder_point = 4\npar = 20\ncost = 0.30\n",
        );
    assert!(chain.contains("cost = 0.30"), "{chain}");
    let config = format!(
        "{chain}\n[planning]\ncurrency = \"EUR\"\n\n[web]\nlisten = \"127.0.0.1:0\"\n\n{}",
        users(&[
            ("mgr-a", "store_manager", Some("s1")),
            ("chef-a", "chef", Some("s1")),
            ("ada", "hq", None),
        ])?
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("web")?;
    let mut mqtt = Client::connect(broker.addr, "pos-1").await?;
    mqtt.subscribe("stores/s1/dishes/+/availability", QoS::AtLeastOnce)
        .await?;
    for (sku, qty, unit) in [("bun", 40.0, "pcs"), ("beef", 6000.0, "g"), ("fries", 4000.0, "g")] {
        mqtt.publish_json(
            &format!("stores/s1/stock/{sku}/events"),
            &stock_event(&format!("count-{sku}"), "count", qty, unit, "pos-1"),
            QoS::AtLeastOnce,
        )
        .await?;
    }
    mqtt.wait_latest("stores/s1/dishes/burger/availability", |d| d["portions"] == json!(40))
        .await?;

    let driver = Driver::start()?;
    let shots = screenshots();
    let desktop = driver.browser(1440, 900, &tmp.path().join("desktop"))?;

    // A wrong password is refused, in words, and logs nobody in.
    desktop.log_in(web, "mgr-a", "not-the-password")?;
    desktop.wait_for(".problem", |t| t.contains("Wrong name or password"))?;
    assert!(desktop.cookie("dishsync_session")?.is_none());
    desktop.screenshot(&shots.join("login-desktop.png"))?;

    // The manager lands on their phone view; the store page is live.
    desktop.log_in(web, "mgr-a", PASSWORD)?;
    desktop.wait_until(
        "the manager's view",
        "return location.pathname === '/stores/s1/manager';",
    )?;
    let session = desktop.cookie("dishsync_session")?.context("a session cookie")?;
    desktop.goto(&format!("http://{web}/stores/s1"))?;
    live(&desktop)?;
    let row = "tr[data-dish=burger] td.portions";
    desktop.wait_for(row, |t| t == "40")?;
    // The dish's name is markup, shown as text and never run.
    let name = desktop.wait_for("tr[data-dish=burger] td", |t| t.contains("<script>"))?;
    assert!(desktop.text(&name)?.starts_with("<script>window.pwned = 1</script>"));
    assert_eq!(desktop.execute("return window.pwned === undefined;", &[])?, json!(true));
    // A sale over MQTT shows on the open page.
    mqtt.publish_json(
        "stores/s1/sales",
        &sale("sale-1", &[("burger", 3)], "pos-1"),
        QoS::AtLeastOnce,
    )
    .await?;
    desktop.wait_for(row, |t| t == "37")?;
    // Today's curves: the level, the sale in its hour, the waste by reason.
    let mut dropped = stock_event("waste-1", "waste", 2.0, "pcs", "pos-1");
    dropped["reason"] = json!("dropped");
    mqtt.publish_json("stores/s1/stock/bun/events", &dropped, QoS::AtLeastOnce)
        .await?;
    desktop.wait_for("tr[data-sku=bun] td.num", |t| t == "35 pcs")?;
    desktop.goto(&format!("http://{web}/stores/s1"))?;
    live(&desktop)?;
    desktop.wait_for(".curves svg text", |_| true)?;
    desktop.wait_until(
        "the sale in its hour",
        "return [...document.querySelectorAll('.curves svg text')].some(t => t.textContent === '3');",
    )?;
    desktop.wait_until(
        "the waste by reason",
        "return [...document.querySelectorAll('.curves svg text')].some(t => t.textContent.includes('dropped · 2 pcs'));",
    )?;
    desktop.wait_until(
        "a level curve",
        "return !!document.querySelector('.curves svg path.line');",
    )?;
    let status = desktop.wait_for("#status", |t| t.contains("live"))?;
    assert!(
        desktop.text(&status)?.contains("last update"),
        "the live indicator says when"
    );
    desktop.screenshot(&shots.join("store-desktop.png"))?;

    // Another store: refused by the page and by direct HTTP.
    desktop.goto(&format!("http://{web}/stores/s2"))?;
    desktop.wait_for(".problem", |t| t.contains("may not open"))?;
    for path in ["/stores/s2", "/stores/s2/manager", "/live/stores/s2/store"] {
        assert_eq!(
            status_of(&format!("http://{web}{path}"), Some(&session))?,
            403,
            "{path}"
        );
    }
    assert_eq!(status_of(&format!("http://{web}/live/stores/s1/store"), None)?, 401);
    assert_eq!(
        status_of(&format!("http://{web}/stores/s1"), None)?,
        303,
        "to the login"
    );
    // A POST without the CSRF token, or without the session, is refused;
    // with both, another store's input is refused too.
    desktop.goto(&format!("http://{web}/stores/s1/kitchen"))?;
    live(&desktop)?;
    let csrf = csrf_of(&desktop)?;
    let act = format!("http://{web}/act/stores/s1/dishes/burger/override");
    let release = json!({"id": "t-1", "status": "auto", "by": "mgr-a"});
    let (code, body) = post_tap(&act, Some(&session), None, &release)?;
    assert_eq!((code, &body["code"]), (403, &json!("not_permitted")), "{body}");
    let (code, _) = post_tap(&act, None, Some(&csrf), &release)?;
    assert_eq!(code, 401);
    let elsewhere = format!("http://{web}/act/stores/s2/dishes/burger/override");
    let (code, _) = post_tap(&elsewhere, Some(&session), Some(&csrf), &release)?;
    assert_eq!(code, 403);
    desktop.screenshot(&shots.join("kitchen-desktop.png"))?;
    // A second count of buns — finding the level the ledger has — closes a
    // period: the manager's view shows its usage variance as the retained
    // document has it.
    mqtt.subscribe("stores/s1/stock/bun/level", QoS::AtLeastOnce).await?;
    mqtt.subscribe("stores/s1/stock/bun/variance", QoS::AtLeastOnce).await?;
    let level = mqtt.wait_latest("stores/s1/stock/bun/level", |_| true).await?;
    let qty = level["qty"].as_f64().context("a level")?;
    mqtt.publish_json(
        "stores/s1/stock/bun/events",
        &stock_event("count-bun-2", "count", qty, "pcs", "pos-1"),
        QoS::AtLeastOnce,
    )
    .await?;
    let variance = mqtt
        .wait_latest("stores/s1/stock/bun/variance", |d| {
            d["last"]["counted"] == json!(qty as i64)
        })
        .await?;
    let unexplained = variance["last"]["unexplained"].as_i64().context("unexplained")?;
    desktop.goto(&format!("http://{web}/stores/s1/manager"))?;
    live(&desktop)?;
    desktop.wait_for("tr[data-sku=bun][data-period=last] td.unexplained", |t| {
        t == format!("{unexplained} pcs")
    })?;
    desktop.screenshot(&shots.join("manager-desktop.png"))?;

    // The floor board follows sales too, on a phone.
    let phone = driver.browser(390, 844, &tmp.path().join("phone"))?;
    phone.log_in(web, "mgr-a", PASSWORD)?;
    phone.wait_until("logged in", "return location.pathname === '/stores/s1/manager';")?;
    live(&phone)?;
    phone.screenshot(&shots.join("manager-phone.png"))?;
    phone.goto(&format!("http://{web}/stores/s1/floor"))?;
    live(&phone)?;
    let tile = "li[data-dish=burger] .portions";
    phone.wait_for(tile, |t| t == "35")?;
    mqtt.publish_json(
        "stores/s1/sales",
        &sale("sale-2", &[("burger", 2)], "pos-1"),
        QoS::AtLeastOnce,
    )
    .await?;
    phone.wait_for(tile, |t| t == "33")?;
    phone.screenshot(&shots.join("floor-phone.png"))?;
    phone.goto(&format!("http://{web}/stores/s1/kitchen"))?;
    live(&phone)?;
    phone.screenshot(&shots.join("kitchen-phone.png"))?;
    phone.goto(&format!("http://{web}/stores/s1"))?;
    live(&phone)?;
    phone.screenshot(&shots.join("store-phone.png"))?;
    desktop.goto(&format!("http://{web}/stores/s1/floor"))?;
    live(&desktop)?;
    desktop.screenshot(&shots.join("floor-desktop.png"))?;

    // A chef has no manager's view; HQ sees every store, worst first.
    let chef = driver.browser(390, 844, &tmp.path().join("chef"))?;
    chef.log_in(web, "chef-a", PASSWORD)?;
    chef.wait_until("the kitchen", "return location.pathname === '/stores/s1/kitchen';")?;
    let chef_session = chef.cookie("dishsync_session")?.context("a session")?;
    assert_eq!(
        status_of(&format!("http://{web}/stores/s1/manager"), Some(&chef_session))?,
        403
    );
    // A device of s2 goes offline: HQ's table puts s2 first.
    let scale = Client::connect(broker.addr, "scale-9").await?;
    scale
        .mqtt
        .publish("stores/s2/devices/scale-9/status", QoS::AtLeastOnce, true, "offline")
        .await?;
    desktop.log_in(web, "ada", PASSWORD)?;
    desktop.wait_until("HQ", "return location.pathname === '/hq';")?;
    live(&desktop)?;
    desktop.wait_for("tr[data-store=s2] td.offline", |t| t == "1")?;
    desktop.wait_for("tbody tr", |t| t.starts_with("s2"))?;
    desktop.wait_for("tr[data-store=s1]", |t| t.contains("s1"))?;
    // s1's buns have a cost: its waste reads as a share of ingredient cost,
    // in euros — 2 buns wasted (€0.60) of 5 sold and 2 wasted (€2.10).
    desktop.wait_for("tr[data-store=s1] td.waste", |t| t == "28.6% · €0.60")?;
    desktop.screenshot(&shots.join("hq-desktop.png"))?;
    phone.log_in(web, "ada", PASSWORD)?;
    phone.wait_until("HQ", "return location.pathname === '/hq';")?;
    live(&phone)?;
    phone.wait_for("tr[data-store=s2]", |t| t.contains("s2"))?;
    phone.screenshot(&shots.join("hq-phone.png"))?;

    // Logging out ends the session: its cookie opens nothing after.
    let hq_session = phone.cookie("dishsync_session")?.context("a session")?;
    assert_eq!(status_of(&format!("http://{web}/hq"), Some(&hq_session))?, 200);
    let logout = phone.find(".logout button")?.context("the logout button")?;
    phone.click(&logout)?;
    phone.wait_until("the login page", "return location.pathname === '/login';")?;
    assert_eq!(status_of(&format!("http://{web}/hq"), Some(&hq_session))?, 303);
    // Guessing passwords meets the devices' brake: past the limit, even
    // the right password is refused for a while.
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut last = 0;
    for guess in 0..30 {
        let form = agent.get(&format!("http://{web}/login")).call()?;
        let token = form
            .all("set-cookie")
            .into_iter()
            .find_map(|c| c.strip_prefix("dishsync_login="))
            .and_then(|c| c.split(';').next())
            .context("the form's cookie")?
            .to_string();
        let password = if guess < 29 {
            format!("guess-{guess}")
        } else {
            PASSWORD.to_string()
        };
        let answer = agent
            .post(&format!("http://{web}/login"))
            .set("Cookie", &format!("dishsync_login={token}"))
            .send_form(&[("name", "ada"), ("password", &password), ("csrf", &token)]);
        last = match answer {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => return Err(e.into()),
        };
        if last == 429 {
            break;
        }
        assert_eq!(last, 401, "guess {guess}");
    }
    assert_eq!(last, 429, "the brake holds");
    Ok(())
}

/// An 86 tapped twice on the kitchen view: pending, then done, applied
/// once (one ack for the chef); an MQTT subscriber sees the retained
/// document change; the release likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_86_tapped_twice_in_the_kitchen_is_applied_once() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n{}",
        small_chain(),
        users(&[("chef-a", "chef", Some("s1"))])?
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("web")?;
    let mut mqtt = Client::connect(broker.addr, "watcher").await?;
    mqtt.subscribe("stores/s1/dishes/chips/availability", QoS::AtLeastOnce)
        .await?;
    mqtt.subscribe("stores/s1/acks/chef-a", QoS::AtLeastOnce).await?;
    let driver = Driver::start()?;
    let phone = driver.browser(390, 844, &tmp.path().join("phone"))?;
    phone.log_in(web, "chef-a", PASSWORD)?;
    phone.wait_until("the kitchen", "return location.pathname === '/stores/s1/kitchen';")?;
    live(&phone)?;
    let button = "li[data-dish=chips] button.eighty-six";
    phone.wait_for(button, |_| true)?;
    // Two taps in one go: the second finds the first pending.
    phone.execute(
        "const b = document.querySelector(arguments[0]); b.click(); b.click(); return true;",
        &[json!(button)],
    )?;
    phone.wait_for("li[data-dish=chips] .outcome[data-key='86-chips']", |t| t == "done")?;
    let sold_out = mqtt
        .wait_latest("stores/s1/dishes/chips/availability", |d| {
            d["status"] == "sold_out" && d["override"]["by"] == "chef-a"
        })
        .await?;
    phone.wait_for("li[data-dish=chips] button.release", |_| true)?;
    phone.screenshot(&screenshots().join("kitchen-86-phone.png"))?;
    let release = "li[data-dish=chips] button.release";
    let released = phone.find(release)?.context("the release button")?;
    phone.click(&released)?;
    let after = mqtt
        .wait_latest("stores/s1/dishes/chips/availability", |d| d["override"].is_null())
        .await?;
    assert!(after["rev"].as_u64() > sold_out["rev"].as_u64());
    // A delivery received in the kitchen, with its note.
    mqtt.subscribe("stores/s1/stock/bun/level", QoS::AtLeastOnce).await?;
    let before = mqtt.wait_latest("stores/s1/stock/bun/level", |_| true).await?;
    let form = "form.receive";
    phone.wait_for(form, |_| true)?;
    phone.execute(
        "const f = document.querySelector(arguments[0]); f.elements.sku.value = 'bun'; \
         f.elements.qty.value = '12'; f.elements.ref.value = 'dn-77'; f.requestSubmit(); return true;",
        &[json!(form)],
    )?;
    let want = before["qty"].as_i64().unwrap_or(0) + 12;
    mqtt.wait_latest("stores/s1/stock/bun/level", |d| d["qty"].as_i64() == Some(want))
        .await?;
    phone.wait_for("form.receive ~ .outcome", |t| t == "done")?;
    // Three inputs in all — the 86, its release, the delivery — each
    // acked once.
    let acks = mqtt
        .wait_until("the chef's acks", |seen| {
            seen.iter()
                .filter(|m| m.topic == "stores/s1/acks/chef-a")
                .flat_map(|m| m.json["ids"].as_array().cloned().unwrap_or_default())
                .count()
                >= 3
        })
        .await?;
    let ids: Vec<Value> = acks
        .iter()
        .filter(|m| m.topic == "stores/s1/acks/chef-a")
        .flat_map(|m| m.json["ids"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), 3, "the 86, the release and the delivery, once each: {ids:?}");
    let overrides: Vec<&Value> = mqtt
        .all_on("stores/s1/dishes/chips/availability")
        .into_iter()
        .filter(|d| d["override"]["by"] == "chef-a")
        .collect();
    let revs: std::collections::BTreeSet<u64> = overrides.iter().filter_map(|d| d["rev"].as_u64()).collect();
    assert_eq!(revs.len(), 1, "one 86 document: {overrides:?}");
    Ok(())
}

/// A transfer asked for by one store is accepted and dispatched from the
/// giving manager's phone and received from the taking manager's: both
/// stores' levels move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_worked_from_the_phone_moves_both_stores() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n{}",
        crate::planning::planning_chain(10.0),
        users(&[
            ("mgr-one", "store_manager", Some("s1")),
            ("mgr-two", "store_manager", Some("s2")),
        ])?
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("web")?;
    let mut mqtt = Client::connect(broker.addr, "watcher").await?;
    mqtt.subscribe("stores/+/stock/patty/level", QoS::AtLeastOnce).await?;
    mqtt.subscribe("stores/+/transfers/+", QoS::AtLeastOnce).await?;
    for (store, qty) in [("s1", 8.0), ("s2", 20.0)] {
        mqtt.publish_json(
            &format!("stores/{store}/stock/patty/events"),
            &stock_event(&format!("c-{store}"), "count", qty, "pcs", "watcher"),
            QoS::AtLeastOnce,
        )
        .await?;
    }
    mqtt.wait_latest("stores/s2/stock/patty/level", |d| d["qty"] == json!(20))
        .await?;
    mqtt.publish_json(
        "stores/s1/transfers/request",
        &json!({"id": "ask-1", "sku": "patty", "qty": 5, "unit": "pcs", "by": "watcher"}),
        QoS::AtLeastOnce,
    )
    .await?;
    let seen = mqtt
        .wait_until("a transfer", |seen| {
            seen.iter().any(|m| m.topic.starts_with("stores/s2/transfers/"))
        })
        .await?;
    let transfer = seen
        .iter()
        .find(|m| m.topic.starts_with("stores/s2/transfers/"))
        .and_then(|m| m.json["id"].as_str())
        .context("a transfer id")?
        .to_string();
    let driver = Driver::start()?;
    let giver = driver.browser(390, 844, &tmp.path().join("giver"))?;
    giver.log_in(web, "mgr-two", PASSWORD)?;
    giver.wait_until(
        "the manager's view",
        "return location.pathname === '/stores/s2/manager';",
    )?;
    live(&giver)?;
    for action in ["accept", "dispatch"] {
        let css = format!("li[data-transfer='{transfer}'] button[data-action={action}]");
        let tap = giver.wait_for(&css, |_| true)?;
        giver.click(&tap)?;
        let done = format!("li[data-transfer='{transfer}'] .outcome[data-key='transfer-{transfer}-{action}']");
        giver.wait_for(&done, |t| t == "done")?;
    }
    giver.screenshot(&screenshots().join("transfer-phone.png"))?;
    let taker = driver.browser(390, 844, &tmp.path().join("taker"))?;
    taker.log_in(web, "mgr-one", PASSWORD)?;
    taker.wait_until(
        "the manager's view",
        "return location.pathname === '/stores/s1/manager';",
    )?;
    live(&taker)?;
    let receive = format!("li[data-transfer='{transfer}'] button[data-action=receive]");
    let tap = taker.wait_for(&receive, |_| true)?;
    taker.click(&tap)?;
    let done = format!("li[data-transfer='{transfer}'] .outcome[data-key='transfer-{transfer}-receive']");
    taker.wait_for(&done, |t| t == "done")?;
    for (store, qty) in [("s1", 13), ("s2", 15)] {
        mqtt.wait_latest(&format!("stores/{store}/stock/patty/level"), |d| d["qty"] == json!(qty))
            .await?;
    }
    Ok(())
}

/// A tap made while the broker is down waits in the page, which says so;
/// once the broker is back (killed with SIGKILL, restarted on the same
/// addresses) the page is live again without a reload, the person is
/// still logged in, and the tap is applied once. The page in Chinese too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_made_while_the_broker_is_down_is_applied_when_it_is_back() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let web = crate::support::free_addr()?;
    let listen = crate::support::free_addr()?;
    let config = format!(
        "{}\n[web]\nlisten = \"{web}\"\n\n{}",
        small_chain(),
        users(&[("chef-a", "chef", Some("s1"))])?
    );
    let mut broker = BrokerProcess::start_on(&config, &data, listen)?;
    let driver = Driver::start()?;
    let phone = driver.browser(390, 844, &tmp.path().join("phone"))?;
    phone.log_in(web, "chef-a", PASSWORD)?;
    phone.wait_until("the kitchen", "return location.pathname === '/stores/s1/kitchen';")?;
    // In Chinese.
    phone.goto(&format!("http://{web}/lang/zh?next=/stores/s1/kitchen"))?;
    live(&phone)?;
    assert_eq!(
        phone.execute("return document.documentElement.lang;", &[])?,
        json!("zh-Hans")
    );
    phone.wait_for("header nav a[aria-current]", |t| t == "厨房")?;
    phone.wait_for("li[data-dish=chips] .portions", |t| t.ends_with("份"))?;
    phone.screenshot(&screenshots().join("kitchen-zh-phone.png"))?;
    phone.goto(&format!("http://{web}/lang/en?next=/stores/s1/kitchen"))?;
    live(&phone)?;

    broker.kill();
    phone.wait_for("#status", |t| t.contains("reconnecting"))?;
    let button = phone.wait_for("li[data-dish=chips] button.eighty-six", |_| true)?;
    phone.click(&button)?;
    phone.wait_for("#queue", |t| t.contains("waiting"))?;
    phone.wait_for("li[data-dish=chips] .outcome[data-key='86-chips']", |t| t == "sending…")?;
    phone.screenshot(&screenshots().join("kitchen-offline-phone.png"))?;

    let _broker = BrokerProcess::start_on(&config, &data, listen)?;
    let mut mqtt = Client::connect(listen, "watcher").await?;
    mqtt.subscribe("stores/s1/dishes/chips/availability", QoS::AtLeastOnce)
        .await?;
    phone.wait_for("li[data-dish=chips] .outcome[data-key='86-chips']", |t| t == "done")?;
    phone.wait_for("#status", |t| t.contains("live"))?;
    phone.wait_until("the queue is empty", "return document.getElementById('queue').hidden;")?;
    assert_eq!(
        phone.url()?,
        format!("http://{web}/stores/s1/kitchen"),
        "still logged in, no reload"
    );
    mqtt.wait_latest("stores/s1/dishes/chips/availability", |d| {
        d["status"] == "sold_out" && d["override"]["by"] == "chef-a"
    })
    .await?;
    Ok(())
}

/// HQ plans a promotion from the browser and sees each store's readiness
/// come in; the store's manager sees it per ingredient on the phone; HQ
/// calls it off, and the record names the person who did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hq_plans_a_promotion_in_the_browser_and_the_store_sees_its_readiness() -> Result<()> {
    let (tmp, data) = temp_data_dir()?;
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n{}",
        crate::planning::planning_chain(10.0),
        users(&[("hq-anna", "hq", None), ("mgr-one", "store_manager", Some("s1"))])?
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("web")?;
    let mut mqtt = Client::connect(broker.addr, "watcher").await?;
    mqtt.subscribe("hq/promotions/+", QoS::AtLeastOnce).await?;

    let driver = Driver::start()?;
    let hq = driver.browser(1440, 900, &tmp.path().join("hq"))?;
    hq.log_in(web, "hq-anna", PASSWORD)?;
    hq.wait_until("the HQ view", "return location.pathname === '/hq';")?;
    live(&hq)?;
    hq.wait_for("form.plan-promotion input[name=store][value=s2]", |_| true)?;
    let id = hq.wait_for("form.plan-promotion input[name=promotion]", |_| true)?;
    hq.type_into(&id, "burger-week")?;
    let amount = hq.wait_for("form.plan-promotion input[name=amount]", |_| true)?;
    hq.type_into(&amount, "10")?;
    // Two days ahead, for a day, in the store's clock (UTC here).
    hq.execute(
        "const f = document.querySelector('form.plan-promotion');
         const local = (days) => new Date(Date.now() + days * 86400000).toISOString().slice(0, 16);
         f.elements.start.value = local(2); f.elements.end.value = local(3);
         f.dispatchEvent(new Event('input', { bubbles: true }));",
        &[],
    )?;
    let plan = hq.wait_for("form.plan-promotion button[type=submit]", |_| true)?;
    hq.click(&plan)?;
    hq.wait_for(".outcome[data-key='promotion-plan-burger-week']", |t| t == "done")?;
    // s1 has 5 patties of the 10 a day needs: short, on patties.
    hq.wait_for("li[data-promotion='burger-week'] tr[data-store=s1] td.coverage", |t| {
        t == "50%"
    })?;
    let row = hq.wait_for("li[data-promotion='burger-week'] tr[data-store=s1]", |_| true)?;
    let text = hq.text(&row)?;
    assert!(text.contains("short") && text.contains("patty"), "{text}");
    hq.screenshot(&screenshots().join("hq-promotion-desktop.png"))?;

    let manager = driver.browser(390, 844, &tmp.path().join("manager"))?;
    manager.log_in(web, "mgr-one", PASSWORD)?;
    manager.wait_until(
        "the manager's view",
        "return location.pathname === '/stores/s1/manager';",
    )?;
    live(&manager)?;
    let patty = manager.wait_for("li[data-promotion='burger-week'] tr[data-sku=patty]", |t| {
        t.contains("50%")
    })?;
    let patty = manager.text(&patty)?;
    assert!(
        patty.contains("10 pcs") && patty.contains("5 pcs"),
        "need 10, on hand 5: {patty}"
    );
    manager.execute(
        "document.querySelector(\"li[data-promotion='burger-week']\").scrollIntoView();",
        &[],
    )?;
    manager.screenshot(&screenshots().join("manager-promotion-phone.png"))?;

    let off = hq.wait_for("li[data-promotion='burger-week'] button.call-off", |_| true)?;
    hq.click(&off)?;
    hq.wait_for(".outcome[data-key='promotion-cancel-burger-week']", |t| t == "done")?;
    let record = mqtt
        .wait_latest("hq/promotions/burger-week", |d| d["state"] == json!("cancelled"))
        .await?;
    assert_eq!(record["by"], json!("hq-anna"), "{record}");
    manager.wait_for("li[data-promotion='burger-week']", |t| t.contains("cancelled"))?;
    Ok(())
}
