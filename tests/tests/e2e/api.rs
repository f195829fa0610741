//! The HTTP API (`/api/v1`) with a real HTTP client (ureq) against the real
//! broker: integrations' inputs applied once through the same path as MQTT,
//! every error class, reads with ETag, and the OpenAPI document held to the
//! routes the server answers.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::support::{broker_binary, sale, small_chain, stock_event, temp_data_dir, BrokerProcess, Client};

/// An answer: status, headers asked for, JSON body (`Null` when empty or
/// not JSON).
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// `method url` with `token` (if any), `headers` and `body` (if any).
fn call(method: &str, url: &str, token: Option<&str>, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<Answer> {
    let mut request = ureq::request(method, url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let sent = match body {
        Some(body) => request.set("Content-Type", "application/json").send_bytes(body),
        None => request.call(),
    };
    let response = match sent {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e).context(format!("{method} {url}")),
    };
    let status = response.status();
    let headers = [
        "etag",
        "retry-after",
        "www-authenticate",
        "idempotent-replayed",
        "content-type",
    ]
    .iter()
    .filter_map(|h| response.header(h).map(|v| (h.to_string(), v.to_string())))
    .collect();
    let text = response.into_string()?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer { status, headers, body })
}

/// `POST url` of `body` as JSON with `token`.
fn post_json(url: &str, token: Option<&str>, body: &Value) -> Result<Answer> {
    call("POST", url, token, &[], Some(&serde_json::to_vec(body)?))
}

/// `GET url` with `token`, `If-None-Match: tag`.
fn get_if(url: &str, token: Option<&str>, tag: &str) -> Result<Answer> {
    call("GET", url, token, &[("If-None-Match", tag)], None)
}

/// A broker with the small chain, its web listener and four integrations;
/// their tokens by id.
fn broker_with_integrations(data: &std::path::Path) -> Result<(BrokerProcess, BTreeMap<&'static str, String>)> {
    // Buns at 0.30 each, beef at 10.00 a kilo, fries without a cost.
    let chain = small_chain()
        .replace(
            "reorder_point = 4\npar = 20\n",
            "reorder_point = 4\npar = 20\ncost = 0.30\n",
        )
        .replace(
            "reorder_point = 600\npar = 3000\n",
            "reorder_point = 600\npar = 3000\ncost = 10\ncost_unit = \"kg\"\n",
        );
    anyhow::ensure!(chain.matches("cost = ").count() == 2, "{chain}");
    let mut config = format!("{chain}\n[planning]\ncurrency = \"EUR\"\n\n[web]\nlisten = \"127.0.0.1:0\"\n\n");
    let mut tokens = BTreeMap::new();
    let integrations = [
        ("pos-cloud", "pos", "store = \"s1\"\n"),
        ("erp", "manager", "stores = [\"s1\", \"s2\"]\n"),
        ("bi", "hq", ""),
        ("slow-pos", "pos", "store = \"s1\"\nmax_requests_per_second = 1\n"),
    ];
    for (id, role, scope) in integrations {
        let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
        config.push_str(&format!(
            "[[integrations]]\nid = \"{id}\"\nrole = \"{role}\"\ntoken_sha256 = \"{hash}\"\n{scope}\n"
        ));
        tokens.insert(id, token);
    }
    Ok((BrokerProcess::start(&config, data)?, tokens))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_posts_inputs_applied_once_and_reads_what_they_changed() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let (broker, tokens) = broker_with_integrations(&data)?;
    let web = broker.web_addr.context("the web address")?;
    let api = |path: &str| format!("http://{web}/api/v1/{path}");
    let pos = Some(tokens["pos-cloud"].as_str());
    // POS reads availability; levels are for roles that may see them.
    let bi = Some(tokens["bi"].as_str());
    let erp = Some(tokens["erp"].as_str());
    let mut mqtt = Client::connect(broker.addr, "watcher").await?;
    mqtt.subscribe("stores/s1/stock/bun/level", QoS::AtLeastOnce).await?;
    // The manager's system counts the buns.
    let count = stock_event("count-1", "count", 20.0, "pcs", "erp");
    let counted = post_json(&api("stores/s1/stock/bun/events"), erp, &count)?;
    assert_eq!(counted.status, 200, "{}", counted.body);
    mqtt.wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(20))
        .await?;

    // A sale under an Idempotency-Key, three times: applied once, the same
    // answer each time.
    let mut burger = sale("ignored", &[("burger", 1)], "pos-cloud");
    burger.as_object_mut().context("object")?.remove("id");
    let body = serde_json::to_vec(&burger)?;
    let key = [("Idempotency-Key", "pos-cloud-sale-1")];
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(call("POST", &api("stores/s1/sales"), pos, &key, Some(&body))?);
    }
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body, json!({"id": "pos-cloud-sale-1", "status": "applied"}));
        let replayed = answer.headers.get("idempotent-replayed").map(String::as_str);
        assert_eq!(replayed, (n > 0).then_some("true"), "request {n}");
    }
    // The answer came after the commit: the level already shows it, and an
    // MQTT subscriber got the same document.
    let level = call("GET", &api("stores/s1/stock/bun/level"), bi, &[], None)?;
    assert_eq!((level.status, &level.body["qty"]), (200, &json!(19)), "{}", level.body);
    let pushed = mqtt
        .wait_latest("stores/s1/stock/bun/level", |d| d["qty"] == json!(19))
        .await?;
    assert_eq!(pushed["rev"], level.body["rev"]);
    let tag = level.headers.get("etag").context("an ETag")?.clone();
    assert_eq!(tag, format!("\"{}\"", level.body["rev"]));
    let unchanged = get_if(&api("stores/s1/stock/bun/level"), bi, &tag)?;
    assert_eq!((unchanged.status, &unchanged.body), (304, &Value::Null));

    // The same key with other content: 409, with the MQTT code.
    let mut double = sale("x", &[("double", 1)], "pos-cloud");
    double.as_object_mut().context("object")?.remove("id");
    let conflict = call(
        "POST",
        &api("stores/s1/sales"),
        pos,
        &key,
        Some(&serde_json::to_vec(&double)?),
    )?;
    assert_eq!(
        (conflict.status, &conflict.body["code"]),
        (409, &json!("id_conflict")),
        "{}",
        conflict.body
    );
    // Refused inputs: 422 with the code and the reason, nothing applied.
    let refusals: [(Value, &str); 4] = [
        (sale("s-unknown", &[("pizza", 1)], "pos-cloud"), "unknown_dish"),
        (sale("s-other", &[("burger", 1)], "pos-9"), "device_mismatch"),
        (json!({"id": "s-bad", "lines": "many"}), "malformed_payload"),
        (
            json!({"id": "s-field", "lines": [], "at": "2026-11-25T10:00:00Z", "device": "pos-cloud", "colour": 1}),
            "malformed_payload",
        ),
    ];
    for (input, code) in &refusals {
        let refused = post_json(&api("stores/s1/sales"), pos, input)?;
        assert_eq!(
            (refused.status, refused.body["code"].as_str()),
            (422, Some(*code)),
            "{}",
            refused.body
        );
        assert!(!refused.body["error"].as_str().unwrap_or_default().is_empty());
        assert_eq!(refused.body["topic"], "stores/s1/sales");
    }
    let not_json = call("POST", &api("stores/s1/sales"), pos, &[], Some(b"{not json"))?;
    assert_eq!(
        (not_json.status, &not_json.body["code"]),
        (422, &json!("malformed_payload"))
    );
    let two_ids = call(
        "POST",
        &api("stores/s1/sales"),
        pos,
        &[("Idempotency-Key", "k-1")],
        Some(&serde_json::to_vec(&sale("k-2", &[("burger", 1)], "pos-cloud"))?),
    )?;
    assert_eq!((two_ids.status, &two_ids.body["code"]), (422, &json!("invalid_field")));
    let still = get_if(&api("stores/s1/stock/bun/level"), bi, &tag)?;
    assert_eq!(still.status, 304, "nothing refused moved the level");

    // Who may do what: no token, a wrong one, another store, a family the
    // role may not publish, an HQ path.
    let anonymous = call("POST", &api("stores/s1/sales"), None, &[], Some(&body))?;
    assert_eq!(
        (anonymous.status, &anonymous.body["code"]),
        (401, &json!("unauthenticated"))
    );
    assert!(anonymous.headers["www-authenticate"].starts_with("Bearer"));
    let forged = call("GET", &api("stores/s1/stock"), Some("dst_0000"), &[], None)?;
    assert_eq!(forged.status, 401);
    assert!(forged.headers["www-authenticate"].contains("invalid_token"));
    let elsewhere = sale("s2-sale", &[("burger", 1)], "pos-cloud");
    let other_store = post_json(&api("stores/s2/sales"), pos, &elsewhere)?;
    assert_eq!(
        (other_store.status, &other_store.body["code"]),
        (403, &json!("not_permitted"))
    );
    assert_eq!(call("GET", &api("stores/s2/availability"), pos, &[], None)?.status, 403);
    let menu = call("GET", &api("stores/s1/availability"), pos, &[], None)?;
    assert_eq!(menu.status, 200, "{}", menu.body);
    assert_eq!(
        call("GET", &api("stores/s1/stock/bun/level"), pos, &[], None)?.status,
        403,
        "a POS sees no levels, as over MQTT"
    );
    let waste = stock_event("w-1", "waste", 1.0, "pcs", "pos-cloud");
    let pos_waste = post_json(&api("stores/s1/stock/bun/events"), pos, &waste)?;
    assert_eq!(
        (pos_waste.status, &pos_waste.body["code"]),
        (403, &json!("not_permitted")),
        "{}",
        pos_waste.body
    );
    assert_eq!(call("GET", &api("hq/stores"), pos, &[], None)?.status, 403);

    // A body over the input limit: 413.
    let huge = vec![b' '; dishsync_protocol::MAX_INPUT_PAYLOAD + 1];
    let too_large = call("POST", &api("stores/s1/sales"), pos, &[], Some(&huge))?;
    assert_eq!((too_large.status, &too_large.body["code"]), (413, &json!("oversize")));

    // An integration over its rate: 429 with Retry-After, and nothing it
    // sent in the refused request is applied.
    let slow = Some(tokens["slow-pos"].as_str());
    let limited = (0..10)
        .map(|_| call("GET", &api("stores/s1/availability"), slow, &[], None))
        .collect::<Result<Vec<_>>>()?;
    let refused = limited
        .iter()
        .find(|a| a.status == 429)
        .context("the rate is enforced")?;
    assert!(refused.headers["retry-after"].parse::<u64>()? >= 1);
    assert_eq!(refused.body["code"], "rate_limited");
    assert!(
        limited.iter().take(2).all(|a| a.status == 200),
        "a burst of twice the rate"
    );

    // A manager's integration in two stores: a count in each.
    for store in ["s1", "s2"] {
        let count = stock_event(&format!("count-{store}"), "count", 12.0, "pcs", "erp");
        let counted = post_json(&api(&format!("stores/{store}/stock/bun/events")), erp, &count)?;
        assert_eq!(counted.status, 200, "{store}: {}", counted.body);
    }
    // HQ reads every store; the collection's tag follows its documents.
    let levels = call("GET", &api("stores/s2/stock"), bi, &[], None)?;
    assert_eq!(levels.status, 200, "{}", levels.body);
    let listed = levels.body["levels"].as_array().context("levels")?;
    assert_eq!(listed.len(), 3, "{}", levels.body);
    assert!(
        listed.iter().any(|l| l["sku"] == "bun" && l["qty"] == json!(12)),
        "{}",
        levels.body
    );
    let summaries = call("GET", &api("hq/stores"), bi, &[], None)?;
    assert_eq!(
        summaries.body["summaries"].as_array().map(Vec::len),
        Some(2),
        "{}",
        summaries.body
    );
    let collection_tag = levels.headers["etag"].clone();
    let again = get_if(&api("stores/s2/stock"), bi, &collection_tag)?;
    assert_eq!(again.status, 304);
    let recount = stock_event("recount-s2", "count", 11.0, "pcs", "erp");
    let recounted = post_json(&api("stores/s2/stock/bun/events"), erp, &recount)?;
    assert_eq!(recounted.status, 200);
    let moved = get_if(&api("stores/s2/stock"), bi, &collection_tag)?;
    assert_eq!(moved.status, 200, "the tag changed with the level");

    // The day's sales in one batch: each applied on its own; again, each
    // answered as before and applied once.
    let batch = json!({"sales": [
        sale("b-1", &[("chips", 2)], "pos-cloud"),
        sale("b-2", &[("pizza", 1)], "pos-cloud"),
        sale("b-3", &[("burger", 1)], "pos-cloud"),
    ]});
    let batch = serde_json::to_vec(&batch)?;
    for round in 0..2 {
        let answer = call("POST", &api("stores/s1/sales/batch"), pos, &[], Some(&batch))?;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let results = answer.body["results"].as_array().context("results")?;
        let statuses: Vec<&str> = results.iter().filter_map(|r| r["status"].as_str()).collect();
        assert_eq!(statuses, ["applied", "rejected", "applied"], "{}", answer.body);
        assert_eq!(results[1]["code"], "unknown_dish");
        assert_eq!(results[0]["replayed"], json!(round == 1));
    }
    let after = call("GET", &api("stores/s1/stock/bun/level"), bi, &[], None)?;
    assert_eq!(after.body["qty"], json!(11), "the batch's burger once: {}", after.body);

    // The ledger: every change of s1, in order, paged by a stable cursor.
    let whole = call("GET", &api("stores/s1/ledger?sku=bun"), erp, &[], None)?;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let lines = whole.body["lines"].as_array().context("lines")?.clone();
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(
        events,
        ["count-1", "pos-cloud-sale-1", "count-s1", "b-3"],
        "each applied input once, refused ones never: {}",
        whole.body
    );
    assert_eq!(lines[0]["kind"], "count");
    assert_eq!(
        (&lines[1]["kind"], &lines[1]["qty"], &lines[1]["unit"]),
        (&json!("sale"), &json!(-1), &json!("pcs"))
    );
    assert_eq!(whole.body["next"], Value::Null);
    // Who sent each, and when it happened and was applied.
    assert_eq!((&lines[0]["by"], &lines[1]["by"]), (&json!("erp"), &json!("pos-cloud")));
    assert!(lines.iter().all(|l| l["recorded"].is_string() && l["at"].is_string()));
    // Paged one line at a time while sales keep coming: every line once, in
    // order, the new ones after the old.
    let (mut paged, mut cursor, mut live) = (Vec::new(), String::new(), 0);
    loop {
        let page = call(
            "GET",
            &api(&format!("stores/s1/ledger?sku=bun&limit=1{cursor}")),
            erp,
            &[],
            None,
        )?;
        assert_eq!(page.status, 200, "{}", page.body);
        paged.extend(page.body["lines"].as_array().context("lines")?.iter().cloned());
        if live < 3 {
            let sold = post_json(
                &api("stores/s1/sales"),
                pos,
                &sale(&format!("live-{live}"), &[("burger", 1)], "pos-cloud"),
            )?;
            assert_eq!(sold.status, 200, "{}", sold.body);
            live += 1;
        }
        match page.body["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
        assert!(paged.len() <= lines.len() + 3, "the pages end");
    }
    assert_eq!(paged[..lines.len()], lines[..], "the lines there before, unchanged");
    let later: Vec<&str> = paged[lines.len()..]
        .iter()
        .filter_map(|l| l["event"].as_str())
        .collect();
    assert_eq!(later, ["live-0", "live-1", "live-2"]);
    let numbers: Vec<u64> = paged.iter().filter_map(|l| l["line"].as_u64()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let csv = ureq::get(&api("stores/s1/ledger?sku=bun&format=csv"))
        .set("Authorization", &format!("Bearer {}", tokens["erp"]))
        .call()?
        .into_string()?;
    assert_eq!(
        csv.lines().next(),
        Some("line,sku,event,kind,qty,unit,at,recorded,by,reason,ref,moved")
    );
    assert_eq!(csv.lines().count(), 1 + paged.len(), "{csv}");
    assert_eq!(
        call("GET", &api("stores/s1/ledger"), pos, &[], None)?.status,
        403,
        "a POS reads no history"
    );
    assert_eq!(
        call("GET", &api("stores/s2/ledger"), erp, &[], None)?.body["lines"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // The token minted by the command line works like these.
    let minted = std::process::Command::new(broker_binary()).arg("mint-token").output()?;
    let minted = String::from_utf8(minted.stdout)?;
    let mut lines = minted.lines();
    let token = lines.next().context("a token")?;
    let hash_line = lines.next().context("the configuration line")?;
    let hash = dishsync_broker::api::integrations::hex(&dishsync_broker::api::integrations::token_sha256(token));
    assert_eq!(hash_line, format!("token_sha256 = \"{hash}\""));
    assert!(
        !broker.log().contains(token) && !broker.log().contains(&tokens["pos-cloud"]),
        "no token is logged"
    );
    Ok(())
}

/// The day's report of a store over HTTP: portions per dish net of voids,
/// use and waste per SKU with reasons and the waste ratio, as JSON and as
/// CSV; and the same day's ledger read as a window, line for line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_days_report_adds_up_the_ledger_of_the_day() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let (broker, tokens) = broker_with_integrations(&data)?;
    let web = broker.web_addr.context("the web address")?;
    let api = |path: &str| format!("http://{web}/api/v1/{path}");
    let (pos, erp) = (Some(tokens["pos-cloud"].as_str()), Some(tokens["erp"].as_str()));
    let applied = |answer: Answer| -> Result<()> {
        anyhow::ensure!(answer.status == 200, "{} {}", answer.status, answer.body);
        Ok(())
    };
    applied(post_json(
        &api("stores/s1/stock/bun/events"),
        erp,
        &stock_event("c-bun", "count", 50.0, "pcs", "erp"),
    )?)?;
    applied(post_json(
        &api("stores/s1/stock/beef/events"),
        erp,
        &stock_event("c-beef", "count", 3000.0, "g", "erp"),
    )?)?;
    applied(post_json(
        &api("stores/s1/sales"),
        pos,
        &sale("s-1", &[("burger", 2)], "pos-cloud"),
    )?)?;
    applied(post_json(
        &api("stores/s1/sales"),
        pos,
        &sale("s-2", &[("burger", 1), ("double", 1)], "pos-cloud"),
    )?)?;
    applied(post_json(
        &api("stores/s1/sales"),
        pos,
        &json!({"id": "v-1", "void": "s-2", "device": "pos-cloud"}),
    )?)?;
    applied(post_json(
        &api("stores/s1/stock/bun/events"),
        erp,
        &stock_event("w-1", "waste", 3.0, "pcs", "erp"),
    )?)?;
    let mut expired = stock_event("w-2", "waste", 200.0, "g", "erp");
    expired["reason"] = json!("expired");
    applied(post_json(&api("stores/s1/stock/beef/events"), erp, &expired)?)?;

    let report = call("GET", &api("stores/s1/report"), erp, &[], None)?;
    assert_eq!(report.status, 200, "{}", report.body);
    let r = &report.body;
    assert_eq!(r["dishes"]["burger"], json!({"sold": 3, "voided": 1, "net": 2}), "{r}");
    assert_eq!(r["dishes"]["double"], json!({"sold": 1, "voided": 1, "net": 0}), "{r}");
    let bun = &r["skus"]["bun"];
    assert_eq!(
        (&bun["unit"], &bun["sold"], &bun["used"], &bun["waste"], &bun["counted"]),
        (&json!("pcs"), &json!(2), &json!(2), &json!(3), &json!(50)),
        "{r}"
    );
    assert_eq!(bun["waste_by_reason"], json!({"dropped": 3}));
    assert_eq!(bun["ratio"], json!(0.6));
    let beef = &r["skus"]["beef"];
    assert_eq!((&beef["sold"], &beef["waste"]), (&json!(300), &json!(200)), "{r}");
    assert_eq!(beef["waste_by_reason"], json!({"expired": 200}));
    assert_eq!(r["counted"], 2);
    assert_eq!(r["waste_ratio"], json!((0.6 + 0.4) / 2.0));
    // In money: waste 3 buns and 200 g of beef, 0.90 + 2.00; use 2 buns
    // and 300 g, 0.60 + 3.00.
    assert_eq!(
        r["cost"],
        json!({"currency": "EUR", "waste": 2.9, "used": 3.6, "share": 2_900_000.0 / 6_500_000.0}),
        "{r}"
    );
    let date = r["date"].as_str().context("a date")?.to_string();

    let csv = ureq::get(&api(&format!("stores/s1/report?date={date}&format=csv")))
        .set("Authorization", &format!("Bearer {}", tokens["erp"]))
        .call()?
        .into_string()?;
    assert_eq!(csv.lines().next(), Some("store,date,kind,item,measure,qty,unit"));
    for row in [
        format!("s1,{date},dish,burger,net,2,portions"),
        format!("s1,{date},sku,bun,waste:dropped,3,pcs"),
        format!("s1,{date},sku,beef,waste:expired,200,g"),
        format!("s1,{date},store,s1,waste_ratio,0.5000,"),
        format!("s1,{date},store,s1,waste_cost,2.90,EUR"),
        format!("s1,{date},store,s1,used_cost,3.60,EUR"),
        format!("s1,{date},store,s1,waste_cost_share,0.4462,"),
    ] {
        assert!(csv.lines().any(|l| l == row), "{row} missing from\n{csv}");
    }
    // The day's ledger, read as a window of the store's index: the lines
    // the report was made of.
    let from = r["from"].as_str().context("from")?;
    let to = r["to"].as_str().context("to")?;
    let window = call(
        "GET",
        &api(&format!("stores/s1/ledger?from={from}&to={to}")),
        erp,
        &[],
        None,
    )?;
    assert_eq!(
        window.body["lines"].as_array().map(Vec::len),
        r["lines"].as_u64().map(|n| n as usize)
    );
    let another_day = call("GET", &api("stores/s1/report?date=2020-01-01"), erp, &[], None)?;
    assert_eq!(
        (another_day.body["lines"].as_u64(), another_day.body["counted"].as_u64()),
        (Some(0), Some(0))
    );
    let bad = call("GET", &api("stores/s1/report?date=tomorrow"), erp, &[], None)?;
    assert_eq!((bad.status, &bad.body["code"]), (400, &json!("invalid_field")));
    // A query that is not one is answered in the API's words, as JSON.
    for query in [
        "stores/s1/alerts?limit=many",
        "stores/s1/ledger?colour=red",
        "stores/s1/report?day=1",
    ] {
        let bad = call("GET", &api(query), erp, &[], None)?;
        assert_eq!(
            (bad.status, &bad.body["code"]),
            (400, &json!("invalid_field")),
            "{query}"
        );
        assert!(bad.body["error"].as_str().is_some_and(|e| !e.is_empty()), "{query}");
    }
    assert_eq!(
        call("GET", &api("stores/s1/report"), pos, &[], None)?.status,
        403,
        "a POS reads no history"
    );

    // Alerts over HTTP: raised in the commit the answer waits for, then
    // cleared under the same id.
    applied(post_json(
        &api("stores/s1/stock/bun/events"),
        erp,
        &stock_event("c-low", "count", 3.0, "pcs", "erp"),
    )?)?;
    let raised = call("GET", &api("stores/s1/alerts"), erp, &[], None)?;
    assert_eq!(raised.status, 200, "{}", raised.body);
    let low = raised.body["active"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["kind"] == "low_stock" && a["sku"] == "bun"))
        .cloned()
        .with_context(|| format!("bun's low stock is raised: {}", raised.body))?;
    assert_eq!(low["state"], "raised");
    applied(post_json(
        &api("stores/s1/stock/bun/events"),
        erp,
        &stock_event("r-bun", "receive", 20.0, "pcs", "erp"),
    )?)?;
    let cleared = call("GET", &api("stores/s1/alerts?limit=5"), erp, &[], None)?;
    let active = cleared.body["active"].as_array().context("active")?;
    assert!(active.iter().all(|a| a["id"] != low["id"]), "{}", cleared.body);
    let recent = cleared.body["recent"].as_array().context("recent")?;
    assert!(recent.len() <= 5);
    let record = recent
        .iter()
        .find(|a| a["id"] == low["id"])
        .context("the cleared alert")?;
    assert_eq!(record["state"], "cleared");
    assert_eq!(
        call("GET", &api("stores/s2/alerts"), pos, &[], None)?.status,
        403,
        "another store's"
    );
    Ok(())
}

/// Every route the OpenAPI document names is answered by the server with
/// one of the statuses the document gives it, and a path it does not name
/// is not served.
#[test]
fn every_route_of_the_openapi_document_is_served_as_documented() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let (broker, tokens) = broker_with_integrations(&data)?;
    let web = broker.web_addr.context("the web address")?;
    let openapi = call("GET", &format!("http://{web}/api/v1/openapi.json"), None, &[], None)?.body;
    let bi = tokens["bi"].as_str();
    let values = [
        ("{store}", "s1"),
        ("{sku}", "bun"),
        ("{dish}", "burger"),
        ("{transfer}", "tr-1"),
        ("{request}", "rq-s1-1"),
        ("{action}", "accept"),
    ];
    let paths = openapi["paths"].as_object().context("paths")?;
    for (template, item) in paths {
        let path = values.iter().fold(template.clone(), |p, (name, v)| p.replace(name, v));
        for (method, operation) in item.as_object().context("a path item")? {
            let body = (method == "post").then_some(&b"{}"[..]);
            let answer = call(
                &method.to_uppercase(),
                &format!("http://{web}{path}"),
                Some(bi),
                &[],
                body,
            )?;
            let documented = &operation["responses"][answer.status.to_string()];
            assert!(
                documented.is_object(),
                "{method} {path} answered {} (not documented): {}",
                answer.status,
                answer.body
            );
            // Served by a route: the API's own 404 says what is missing.
            if answer.status == 404 {
                assert!(answer.body["error"].is_string(), "{method} {path}: not routed");
            }
        }
    }
    let unrouted = call(
        "GET",
        &format!("http://{web}/api/v1/stores/s1/nothing"),
        Some(bi),
        &[],
        None,
    )?;
    assert_eq!((unrouted.status, &unrouted.body), (404, &Value::Null));
    Ok(())
}

/// Inputs posted over HTTP while the broker is killed with SIGKILL: every
/// one answered 200 before the kill is on disk (sent again after the
/// restart, it is a replay), and sending every one again applies each
/// exactly once.
#[test]
fn http_inputs_survive_kill_9_exactly_once() -> Result<()> {
    use std::sync::{Arc, Mutex};

    // The kill comes after a tenth: the rest are in flight or unsent.
    const INPUTS: usize = 2_000;
    let (_tmp, data) = temp_data_dir()?;
    let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n[[integrations]]\nid = \"erp\"\nrole = \"manager\"\nstore = \"s1\"\n\
         token_sha256 = \"{hash}\"\nmax_requests_per_second = 100000\n",
        small_chain()
    );
    let mut broker = BrokerProcess::start(&config, &data)?;
    let events: Vec<Vec<u8>> = (0..INPUTS)
        .map(|i| serde_json::to_vec(&stock_event(&format!("rcv-{i}"), "receive", 1.0, "pcs", "erp")))
        .collect::<Result<_, _>>()?;
    let post = |web: std::net::SocketAddr, event: &[u8]| {
        call(
            "POST",
            &format!("http://{web}/api/v1/stores/s1/stock/bun/events"),
            Some(&token),
            &[],
            Some(event),
        )
    };

    // Post in order until the broker is gone; note what was answered 200,
    // and say when a tenth was.
    let answered = Arc::new(Mutex::new(Vec::new()));
    let (tenth_tx, tenth) = std::sync::mpsc::channel();
    let web = broker.web_addr.context("the web address")?;
    let poster = {
        let (answered, events, token) = (answered.clone(), events.clone(), token.clone());
        std::thread::spawn(move || {
            for (i, event) in events.iter().enumerate() {
                let sent = call(
                    "POST",
                    &format!("http://{web}/api/v1/stores/s1/stock/bun/events"),
                    Some(&token),
                    &[],
                    Some(event),
                );
                match sent {
                    Ok(a) if a.status == 200 => {
                        answered.lock().map(|mut a| a.push(i)).ok();
                        if i + 1 == INPUTS / 10 {
                            let _ = tenth_tx.send(());
                        }
                    }
                    _ => return,
                }
            }
        })
    };
    tenth
        .recv_timeout(crate::support::DEADLINE)
        .context("the inputs are not answered")?;
    broker.kill();
    poster.join().map_err(|_| anyhow::anyhow!("the poster panicked"))?;
    let answered = answered.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    assert!(
        answered.len() >= INPUTS / 10 && answered.len() < INPUTS,
        "{} answered",
        answered.len()
    );

    // After the restart every input is sent again, as a client that keeps
    // what it sent until it has an answer, and those answered are replays.
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("the web address")?;
    for (i, event) in events.iter().enumerate() {
        let again = post(web, event)?;
        assert_eq!(again.status, 200, "rcv-{i}: {}", again.body);
        if answered.contains(&i) {
            assert_eq!(
                again.headers.get("idempotent-replayed").map(String::as_str),
                Some("true"),
                "rcv-{i} was answered before the kill: it must have been committed"
            );
        }
    }
    let level = call(
        "GET",
        &format!("http://{web}/api/v1/stores/s1/stock/bun/level"),
        Some(&token),
        &[],
        None,
    )?;
    assert_eq!(level.body["qty"], json!(INPUTS), "each input once: {}", level.body);
    Ok(())
}

/// Waits for the document on `topic` to satisfy `ok` as an MQTT subscriber
/// (pushed, no polling), then reads `path` over HTTP with `token` and
/// returns what the API shows, which must satisfy `ok` too.
async fn shown(mqtt: &mut Client, topic: &str, url: &str, token: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    mqtt.wait_latest(topic, &ok).await?;
    let answer = call("GET", url, Some(token), &[], None)?;
    anyhow::ensure!(
        answer.status == 200 && ok(&answer.body),
        "{url}: {} {}",
        answer.status,
        answer.body
    );
    Ok(answer.body)
}

/// Replenishment and transfers worked over HTTP alone: the central
/// kitchen's system acts on a request, a manager's system moves stock
/// between its two stores, and both stores' levels follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replenishment_and_transfers_over_http() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let (erp, erp_hash) = dishsync_broker::api::integrations::mint_token()?;
    let (kitchen, kitchen_hash) = dishsync_broker::api::integrations::mint_token()?;
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n\
         [[integrations]]\nid = \"erp\"\nrole = \"manager\"\nstores = [\"s1\", \"s2\"]\ntoken_sha256 = \"{erp_hash}\"\n\n\
         [[integrations]]\nid = \"kitchen-sys\"\nrole = \"central_kitchen\"\ntoken_sha256 = \"{kitchen_hash}\"\n",
        crate::planning::planning_chain(10.0)
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("the web address")?;
    let api = |path: &str| format!("http://{web}/api/v1/{path}");
    let act = |path: &str, token: &str, body: Value| post_json(&api(path), Some(token), &body);
    let mut mqtt = Client::connect(broker.addr, "watcher").await?;
    for filter in [
        "hq/replenishment/+",
        "stores/+/transfers/+",
        "stores/+/stock/patty/level",
    ] {
        mqtt.subscribe(filter, QoS::AtLeastOnce).await?;
    }

    // s1 down to 1 patty raises a request; the kitchen's system works it.
    let count = stock_event("c-s1", "count", 1.0, "pcs", "erp");
    assert_eq!(act("stores/s1/stock/patty/events", &erp, count)?.status, 200);
    let request = "hq/replenishment/rq-s1-1";
    shown(&mut mqtt, request, &api(request), &kitchen, |d| d["state"] == "open").await?;
    let ack = act(
        "hq/replenishment/rq-s1-1/acknowledge",
        &kitchen,
        json!({"id": "k-ack", "by": "kitchen-sys"}),
    )?;
    assert_eq!(ack.status, 200, "{}", ack.body);
    let ship = act(
        "hq/replenishment/rq-s1-1/ship",
        &kitchen,
        json!({"id": "k-ship", "by": "kitchen-sys", "note": "van at 3"}),
    )?;
    assert_eq!(ship.status, 200, "{}", ship.body);
    let shipped = shown(&mut mqtt, request, &api(request), &kitchen, |d| d["state"] == "shipped").await?;
    assert_eq!(shipped["reason"], "van at 3");
    let late = act(
        "hq/replenishment/rq-s1-1/acknowledge",
        &kitchen,
        json!({"id": "k-ack-2", "by": "kitchen-sys"}),
    )?;
    assert_eq!(
        (late.status, &late.body["code"]),
        (422, &json!("invalid_transition")),
        "{}",
        late.body
    );
    assert_eq!(
        act(
            "hq/replenishment/rq-s1-1/cancel",
            &erp,
            json!({"id": "e-cancel", "by": "erp"})
        )?
        .status,
        403,
        "a manager does not act for the central kitchen"
    );

    // Patties from s2 to s1, every step over HTTP.
    let count = stock_event("c-s2", "count", 20.0, "pcs", "erp");
    assert_eq!(act("stores/s2/stock/patty/events", &erp, count)?.status, 200);
    let asked = act(
        "stores/s1/transfers/request",
        &erp,
        json!({"id": "t-ask", "sku": "patty", "qty": 5, "unit": "pcs", "by": "erp"}),
    )?;
    assert_eq!(asked.status, 200, "{}", asked.body);
    let proposed = mqtt
        .wait_until("a transfer", |seen| {
            seen.iter().any(|m| m.topic.starts_with("stores/s1/transfers/"))
        })
        .await?;
    let transfer = proposed
        .iter()
        .find(|m| m.topic.starts_with("stores/s1/transfers/"))
        .and_then(|m| m.json["id"].as_str())
        .context("a transfer id")?
        .to_string();
    let listed = call("GET", &api("stores/s1/transfers"), Some(&erp), &[], None)?;
    assert_eq!(listed.body["transfers"][0]["id"], json!(transfer), "{}", listed.body);
    for (store, verb) in [("s2", "accept"), ("s2", "dispatch"), ("s1", "receive")] {
        let done = act(
            &format!("stores/{store}/transfers/{transfer}/{verb}"),
            &erp,
            json!({"id": format!("t-{verb}"), "by": "erp"}),
        )?;
        assert_eq!(done.status, 200, "{verb}: {}", done.body);
    }
    for (store, qty) in [("s1", 6), ("s2", 15)] {
        let level = format!("stores/{store}/stock/patty/level");
        shown(&mut mqtt, &level, &api(&level), &erp, |d| d["qty"] == json!(qty)).await?;
    }
    let moved = format!("stores/s2/transfers/{transfer}");
    let received = shown(&mut mqtt, &moved, &api(&moved), &erp, |d| d["state"] == "received").await?;
    assert_eq!(received["sku"], "patty");
    Ok(())
}

/// The cold chain over HTTP: a probe that reports through a cloud service
/// (an integration of the `probe` role) posts its readings; past the grace
/// the beef is at risk on its level; the store's system keeps it, and a
/// second decision is refused with the same code as over MQTT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_reports_over_http_and_the_kitchen_decides_there() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let chain = small_chain().replace(
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n",
        "[[stores]]\nid = \"s1\"\nname = \"s1\"\n\
         probes = { fridge-1 = { skus = [\"beef\"], min_c = 0, max_c = 5, grace_minutes = 15 } }\n",
    );
    anyhow::ensure!(chain.contains("fridge-1"), "{chain}");
    let mut config = format!("{chain}\n[web]\nlisten = \"127.0.0.1:0\"\n\n");
    let mut tokens = BTreeMap::new();
    for (id, role) in [("fridge-1", "probe"), ("erp", "manager")] {
        let (token, hash) = dishsync_broker::api::integrations::mint_token()?;
        config.push_str(&format!(
            "[[integrations]]\nid = \"{id}\"\nrole = \"{role}\"\nstore = \"s1\"\ntoken_sha256 = \"{hash}\"\n\n"
        ));
        tokens.insert(id, token);
    }
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("the web address")?;
    let api = |path: &str| format!("http://{web}/api/v1/{path}");
    let (probe, erp) = (Some(tokens["fridge-1"].as_str()), Some(tokens["erp"].as_str()));
    let counted = post_json(
        &api("stores/s1/stock/beef/events"),
        erp,
        &stock_event("c-1", "count", 2_000.0, "g", "erp"),
    )?;
    anyhow::ensure!(counted.status == 200, "{}", counted.body);
    let mut watcher = Client::connect(broker.addr, "watcher").await?;
    watcher
        .subscribe("stores/s1/stock/beef/level", QoS::AtLeastOnce)
        .await?;
    let now = dishsync_protocol::payload::Timestamp::now().0;
    for minutes_ago in [30, 10] {
        let reading = json!({"celsius": 9.5, "at": dishsync_protocol::payload::Timestamp(now - minutes_ago * 60_000).to_string()});
        let answer = post_json(&api("stores/s1/probes/fridge-1/temperature"), probe, &reading)?;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // A probe may not decide for the kitchen.
    let decision = |id: &str| json!({"id": id, "by": "erp"});
    let not_its = post_json(&api("stores/s1/probes/fridge-1/keep"), probe, &decision("k-0"))?;
    assert_eq!(not_its.status, 403, "{}", not_its.body);
    watcher
        .wait_latest("stores/s1/stock/beef/level", |l| l["at_risk"] == json!(true))
        .await?;
    let kept = post_json(&api("stores/s1/probes/fridge-1/keep"), erp, &decision("k-1"))?;
    assert_eq!(kept.status, 200, "{}", kept.body);
    let level = call("GET", &api("stores/s1/stock/beef/level"), erp, &[], None)?;
    assert_eq!(
        (&level.body["at_risk"], &level.body["qty"]),
        (&json!(false), &json!(2_000)),
        "{}",
        level.body
    );
    let again = post_json(&api("stores/s1/probes/fridge-1/keep"), erp, &decision("k-2"))?;
    assert_eq!(
        (again.status, &again.body["code"]),
        (422, &json!("invalid_transition")),
        "{}",
        again.body
    );
    Ok(())
}

/// HQ's planning system plans a promotion over HTTP: applied once however
/// often it is sent, refused in words where it does not fit, read back as
/// the documents MQTT carries, and out of reach of a store's integration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_is_planned_read_and_called_off_over_http() -> Result<()> {
    let (_tmp, data) = temp_data_dir()?;
    let (planner, planner_hash) = dishsync_broker::api::integrations::mint_token()?;
    let (erp, erp_hash) = dishsync_broker::api::integrations::mint_token()?;
    let config = format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\n\
         [[integrations]]\nid = \"planner\"\nrole = \"hq\"\ntoken_sha256 = \"{planner_hash}\"\n\n\
         [[integrations]]\nid = \"erp\"\nrole = \"manager\"\nstores = [\"s1\"]\ntoken_sha256 = \"{erp_hash}\"\n",
        crate::planning::planning_chain(10.0)
    );
    let broker = BrokerProcess::start(&config, &data)?;
    let web = broker.web_addr.context("the web address")?;
    let api = |path: &str| format!("http://{web}/api/v1/{path}");
    let mut mqtt = Client::connect(broker.addr, "watcher").await?;
    mqtt.subscribe("hq/promotions/+", QoS::AtLeastOnce).await?;
    mqtt.subscribe("stores/+/promotions/+", QoS::AtLeastOnce).await?;

    let mut plan = crate::planning::promotion_plan(
        "plan-1",
        "burger",
        &["s1", "s2"],
        std::time::Duration::from_secs(2 * 86_400),
    );
    plan["by"] = json!("planner");
    // A store's integration may not plan for the chain.
    let refused = post_json(&api("hq/promotions/p1/plan"), Some(&erp), &plan)?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    // Both demands at once: refused in words, nothing applied.
    let mut both = plan.clone();
    both["uplift"] = json!(2.0);
    let bad = post_json(&api("hq/promotions/p1/plan"), Some(&planner), &both)?;
    assert_eq!(
        (bad.status, &bad.body["code"]),
        (422, &json!("invalid_field")),
        "{}",
        bad.body
    );
    assert!(bad.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("exactly one of uplift and portions_per_day")));
    let none = call("GET", &api("hq/promotions/p1"), Some(&planner), &[], None)?;
    assert_eq!(none.status, 404, "{}", none.body);

    let first = post_json(&api("hq/promotions/p1/plan"), Some(&planner), &plan)?;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = post_json(&api("hq/promotions/p1/plan"), Some(&planner), &plan)?;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    let hq = shown(&mut mqtt, "hq/promotions/p1", &api("hq/promotions/p1"), &planner, |d| {
        d["stores"].as_array().is_some_and(|s| s.len() == 2)
    })
    .await?;
    assert_eq!(
        (hq["rev"].clone(), hq["by"].clone()),
        (json!(1), json!("planner")),
        "applied once: {hq}"
    );
    // s1 has 5 patties of the 10 a day needs, two days ahead: short, no
    // line yet.
    let s1 = shown(
        &mut mqtt,
        "stores/s1/promotions/p1",
        &api("stores/s1/promotions/p1"),
        &erp,
        |d| d["status"] == json!("short"),
    )
    .await?;
    assert_eq!(
        (s1["limiting"].clone(), s1["coverage"].clone()),
        (json!("patty"), json!(0.5))
    );
    assert!(s1.get("request").is_none(), "too early for a line: {s1}");
    let listed = call("GET", &api("stores/s1/promotions"), Some(&erp), &[], None)?;
    assert_eq!(
        listed.body["promotions"][0]["promotion"],
        json!("p1"),
        "{}",
        listed.body
    );
    let other = call("GET", &api("stores/s2/promotions/p1"), Some(&erp), &[], None)?;
    assert_eq!(other.status, 403, "another store's: {}", other.body);
    let all = call("GET", &api("hq/promotions"), Some(&planner), &[], None)?;
    assert_eq!(all.body["promotions"][0]["id"], json!("p1"), "{}", all.body);

    let off = post_json(
        &api("hq/promotions/p1/cancel"),
        Some(&planner),
        &json!({"id": "cancel-1", "by": "planner", "note": "menu change"}),
    )?;
    assert_eq!(off.status, 200, "{}", off.body);
    shown(&mut mqtt, "hq/promotions/p1", &api("hq/promotions/p1"), &planner, |d| {
        d["state"] == json!("cancelled") && d["note"] == json!("menu change")
    })
    .await?;
    let late = post_json(
        &api("hq/promotions/p1/cancel"),
        Some(&planner),
        &json!({"id": "cancel-2", "by": "planner"}),
    )?;
    assert_eq!(
        (late.status, &late.body["code"]),
        (422, &json!("invalid_transition")),
        "{}",
        late.body
    );
    Ok(())
}
