//! The planning rules through a whole dinner service, with an injected
//! clock: exact requests, transfers, alerts and ETAs, checked against an
//! independent statement of each rule.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{id, Document};

use dishsync_protocol::payload::{
    ActionIn, AlertKind, AlertState, DishStatus, RequestState, SaleIn, SaleLine, StockEventIn, StockKind, Timestamp,
    TransferRequestIn, TransferState,
};
use dishsync_protocol::topic::{RequestAction, TransferAction};
use dishsync_protocol::{BaseUnit, DocId, Millis, Unit};
use proptest::prelude::*;

use crate::catalog::{Dish, Kitchen, Planning, RecipeLine, Sku, StockParams, Store};
use crate::{Catalog, Changes, Inventory};

const MINUTE: Millis = 60_000;
const DAY0: Millis = 20_000 * 24 * 60 * MINUTE;

fn at(h: i64, m: i64) -> Millis {
    DAY0 + (h * 60 + m) * MINUTE
}

const TAU: f64 = 20.0;
const HORIZON: i64 = 30;

fn chain() -> Arc<Catalog> {
    chain_costing(None, None)
}

/// The chain, with unit costs of patties and buns (millionths of a euro
/// per piece).
fn chain_costing(patty: Option<i64>, bun: Option<i64>) -> Arc<Catalog> {
    let skus = vec![
        Sku {
            id: id("patty"),
            name: "Patty".into(),
            unit: BaseUnit::Pcs,
            pack: 10,
            shelf_life_days: None,
        },
        Sku {
            id: id("bun"),
            name: "Bun".into(),
            unit: BaseUnit::Pcs,
            pack: 24,
            shelf_life_days: None,
        },
    ];
    let dishes = vec![Dish {
        id: id("burger"),
        name: "Burger".into(),
        low_mark: 3,
        recipe: vec![
            RecipeLine {
                sku: id("patty"),
                per_portion: 1,
            },
            RecipeLine {
                sku: id("bun"),
                per_portion: 1,
            },
        ],
        category: None,
        price: None,
        external: Default::default(),
    }];
    let stock: BTreeMap<_, _> = [
        (
            id("patty"),
            StockParams {
                reorder_point: 10,
                par: 40,
                opening: None,
                unit_cost: patty,
            },
        ),
        (
            id("bun"),
            StockParams {
                reorder_point: 10,
                par: 60,
                opening: None,
                unit_cost: bun,
            },
        ),
    ]
    .into_iter()
    .collect();
    let store = |s: &str| Store {
        id: id(s),
        name: s.into(),
        menu: vec![id("burger")],
        stock: stock.clone(),
        training: false,
    };
    let catalog = Catalog::new(skus, dishes, vec![store("a"), store("b"), store("c")]).expect("catalog");
    let pair = |x: &str, y: &str, m| ((id(x), id(y)), m);
    let planning = Planning {
        utc_offset_minutes: 0,
        horizon_minutes: HORIZON as u32,
        rate_time_constant_minutes: TAU,
        merge_window_minutes: 2,
        transfer_timeout_minutes: 10.0,
        waste_alert_share: 0.15,
        variance_alert_share: 0.05,
        safety_stock: 0.2,
        currency: Some("EUR".into()),
        kitchen: Kitchen {
            lead_time_minutes: 120,
            windows: vec![7 * 60],
        },
        travel: [pair("a", "b", 10), pair("a", "c", 25), pair("b", "c", 20)]
            .into_iter()
            .collect(),
        hours: ["a", "b", "c"].iter().map(|s| (id(s), (11 * 60, 23 * 60))).collect(),
        feeds: BTreeMap::new(),
        scales: BTreeMap::new(),
        probes: BTreeMap::new(),
        max_clock_skew_seconds: 300,
    };
    Arc::new(catalog.with_planning(planning).expect("planning"))
}

#[allow(clippy::too_many_arguments)]
fn stock(
    inv: &mut Inventory,
    store: &str,
    sku: &str,
    kind: StockKind,
    qty: f64,
    t: Millis,
    eid: &str,
    reference: Option<&str>,
) -> Changes {
    let ev = StockEventIn {
        reference: reference.map(String::from),
        ..pieces(kind, qty, t, eid)
    };
    inv.apply_stock(&id(store), &id(sku), &ev, t)
        .expect("stock event")
        .changes
}

/// A sale of `n` burgers by pos-1 at `t`.
fn burger_sale(n: u32, t: Millis, eid: &str) -> SaleIn {
    SaleIn {
        id: id(eid),
        lines: Some(vec![SaleLine {
            dish: id("burger"),
            portions: n,
        }]),
        void: None,
        at: Some(Timestamp(t)),
        device: Some(id("pos-1")),
        guarded: false,
    }
}

fn sell(inv: &mut Inventory, store: &str, n: u32, t: Millis, eid: &str) -> Changes {
    inv.apply_sale(&id(store), &burger_sale(n, t, eid), t)
        .expect("sale")
        .changes
}

fn action(eid: &str) -> ActionIn {
    ActionIn {
        id: id(eid),
        by: id("someone"),
        note: None,
    }
}

/// The sales rate as its definition states it: Σ 1/τ · e^{-(now - tᵢ)/τ}.
fn reference_rate(sales: &[Millis], now: Millis) -> f64 {
    sales
        .iter()
        .map(|t| (-((now - t) as f64 / MINUTE as f64) / TAU).exp() / TAU)
        .sum()
}

/// The predicted sell-out: `portions ÷ rate` minutes from now, rounded up to
/// the next whole minute.
fn reference_eta(sales: &[Millis], portions: i64, now: Millis) -> Option<Millis> {
    let rate = reference_rate(sales, now);
    if portions <= 0 || rate < 1e-6 {
        return None;
    }
    let t = now + ((portions as f64 / rate) * MINUTE as f64).ceil() as Millis;
    Some((t + MINUTE - 1) / MINUTE * MINUTE)
}

#[test]
fn a_dinner_service_across_three_stores() {
    let mut inv = Inventory::new(chain(), at(17, 0));
    let mut log: Vec<(Millis, Changes)> = Vec::new();
    // Opening stock, counted at 17:00.
    for (store, patty) in [("a", 30.0), ("b", 50.0), ("c", 15.0)] {
        log.push((
            at(17, 0),
            stock(
                &mut inv,
                store,
                "patty",
                StockKind::Count,
                patty,
                at(17, 0),
                &format!("c-{store}-p"),
                None,
            ),
        ));
        log.push((
            at(17, 0),
            stock(
                &mut inv,
                store,
                "bun",
                StockKind::Count,
                100.0,
                at(17, 0),
                &format!("c-{store}-b"),
                None,
            ),
        ));
    }
    assert!(
        log.iter()
            .all(|(_, c)| c.requests().next().is_none() && c.transfers().next().is_none()),
        "nothing to do at opening"
    );

    // Store a sells a burger every 2 minutes from 18:00, store b every 10.
    let mut sales_a: Vec<Millis> = Vec::new();
    let mut first_prediction: Option<Millis> = None;
    let mut patty_a = 30i64;
    for k in 0..60i64 {
        let t = at(18, 0) + k * 2 * MINUTE;
        if k % 5 == 0 {
            log.push((t, sell(&mut inv, "b", 1, t, &format!("sb-{k}"))));
        }
        sales_a.push(t);
        let changes = sell(&mut inv, "a", 1, t, &format!("sa-{k}"));
        patty_a -= 1;
        // Every published ETA is exactly the reference forecast.
        let dish = inv.dish_out(&id("a"), &id("burger")).expect("dish");
        let want_eta = reference_eta(&sales_a, patty_a.max(0), t);
        assert_eq!(dish.sellout_eta.map(|e| e.0), want_eta, "ETA after sale {k}");
        let predicted = want_eta.is_some_and(|e| e - t <= HORIZON * MINUTE);
        if predicted && first_prediction.is_none() {
            first_prediction = Some(t);
            assert_eq!(dish.status, DishStatus::Low, "a predicted sell-out shows low");
        }
        log.push((t, changes));
        if patty_a == 0 {
            break;
        }
        // The transfer flow, driven by the stores as soon as it is proposed.
        if let Some(tr) = proposed_to(&inv, "b") {
            // b declines: c is asked next.
            let out = inv
                .apply_transfer_action(&id("b"), &tr, TransferAction::Decline, &action("b-no"), &id("b-no"), t)
                .expect("decline");
            log.push((t, out.changes));
        }
        if let Some(tr) = proposed_to(&inv, "c") {
            for (act, eid) in [(TransferAction::Accept, "c-yes"), (TransferAction::Dispatch, "c-go")] {
                let out = inv
                    .apply_transfer_action(&id("c"), &tr, act, &action(eid), &id(eid), t)
                    .expect("giver acts");
                log.push((t, out.changes));
            }
            let out = inv
                .apply_transfer_action(
                    &id("a"),
                    &tr,
                    TransferAction::Receive,
                    &action("a-got"),
                    &id("a-got"),
                    t + 25 * MINUTE,
                )
                .expect("receive");
            patty_a += inv.transfer(&tr).map_or(0, |x| x.qty);
            log.push((t, out.changes));
        }
    }

    // --- replenishment: exactly one request, when patty crossed 10 ---
    let requests: Vec<(Millis, DocId)> = log
        .iter()
        .flat_map(|(t, c)| c.requests().map(move |r| (*t, r.clone())))
        .collect();
    let rq: DocId = id("rq-a-1");
    let raised: Vec<(Millis, &str)> = requests.iter().map(|(t, r)| (*t, r.as_str())).collect();
    let given_at = inv.transfer(&id("tr-2")).map_or(0, |t| t.created_at);
    assert_eq!(
        raised,
        [(given_at, "rq-c-1"), (at(18, 48), "rq-a-1")],
        "c reaches its reorder point by giving; a's 25th sale (30 + 5 transferred) takes patty from 11 to 10"
    );
    let request = inv.request_out(&rq).expect("request");
    assert_eq!(request.lines.len(), 1);
    assert_eq!(
        (request.lines[0].sku.as_str(), request.lines[0].qty),
        ("patty", 30),
        "par 40 − 10, in packs of 10"
    );
    assert_eq!(request.state, RequestState::Open);

    // --- transfers: b first (nearest), declined; c next, within its surplus ---
    let first = first_prediction.expect("a sell-out was predicted");
    let tr1 = inv.transfer(&id("tr-1")).expect("tr-1").clone();
    assert_eq!(
        (tr1.from.as_str(), tr1.to.as_str(), tr1.state),
        ("b", "a", TransferState::Declined)
    );
    assert_eq!(tr1.created_at, first, "proposed when the sell-out was first predicted");
    let sales_then: Vec<Millis> = sales_a.iter().copied().filter(|s| *s <= first).collect();
    let minutes_to_close = (at(23, 0) - first) as f64 / MINUTE as f64;
    let level_then = 30 - sales_then.len() as i64;
    let forecast = (reference_rate(&sales_then, first) * minutes_to_close).ceil() as i64 - level_then;
    assert_eq!(
        tr1.need, forecast,
        "what the rest of service needs, less what is on hand"
    );
    let b_sold = (first - at(18, 0)) / (10 * MINUTE) + 1;
    assert_eq!(
        tr1.qty,
        forecast.min(50 - b_sold - 10),
        "capped by b's surplus over its reorder point"
    );
    let tr2 = inv.transfer(&id("tr-2")).expect("tr-2").clone();
    assert_eq!(
        (tr2.from.as_str(), tr2.to.as_str(), tr2.state),
        ("c", "a", TransferState::Received)
    );
    assert_eq!(tr2.qty, 5, "c has 15 with a reorder point of 10");
    assert_eq!(
        inv.level_out(&id("c"), &id("patty")).expect("c").qty,
        10,
        "c never below its reorder point"
    );
    let tr3 = inv
        .transfer(&id("tr-3"))
        .map(|t| (t.from.to_string(), t.to.to_string(), t.sku.to_string(), t.state));
    assert!(tr3.is_none(), "a store that declined is not asked again: {tr3:?}");

    // --- alerts of store a, in order ---
    let alerts: Vec<(AlertKind, AlertState, String)> = log
        .iter()
        .flat_map(|(_, c)| c.alerts.iter())
        .filter(|(s, _)| s.as_str() == "a")
        .map(|(_, a)| {
            (
                a.kind,
                a.state,
                a.sku
                    .as_ref()
                    .map(|s| s.to_string())
                    .or(a.dish.as_ref().map(|d| d.to_string()))
                    .unwrap_or_default(),
            )
        })
        .collect();
    let low_at = alerts
        .iter()
        .position(|a| *a == (AlertKind::LowStock, AlertState::Raised, "patty".into()));
    let predicted_at = alerts
        .iter()
        .position(|a| *a == (AlertKind::SelloutPredicted, AlertState::Raised, "burger".into()));
    assert!(low_at.is_some() && predicted_at.is_some(), "{alerts:?}");
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.0 == AlertKind::LowStock && a.1 == AlertState::Raised)
            .count(),
        1,
        "raised once per condition: {alerts:?}"
    );
    assert!(alerts.iter().all(|a| a.0 != AlertKind::NegativeStock), "{alerts:?}");

    // --- the central kitchen ships; the receipt closes the request ---
    let t = at(20, 30);
    inv.apply_request_action(&rq, RequestAction::Acknowledge, &action("ck-1"), t)
        .expect("ack");
    inv.apply_request_action(&rq, RequestAction::Ship, &action("ck-2"), t)
        .expect("ship");
    let err = inv
        .apply_request_action(&rq, RequestAction::Acknowledge, &action("ck-3"), t)
        .expect_err("backwards");
    assert_eq!(err.code, dishsync_protocol::payload::ErrorCode::InvalidTransition);
    let changes = stock(
        &mut inv,
        "a",
        "patty",
        StockKind::Receive,
        30.0,
        t,
        "rcv-1",
        Some("rq-a-1"),
    );
    assert!(changes.requests().any(|r| *r == rq));
    assert_eq!(inv.request_out(&rq).expect("rq").state, RequestState::Received);
    // Back above the reorder point: the low-stock alert clears, the SKU re-arms.
    assert!(changes
        .alerts
        .iter()
        .any(|(_, a)| a.kind == AlertKind::LowStock && a.state == AlertState::Cleared));
    assert!(!inv
        .plan_state(&id("a"))
        .expect("plan")
        .replenishment
        .disarmed
        .contains(&id("patty")));

    // Store b never needed anything.
    assert!(inv
        .plan_state(&id("b"))
        .expect("plan")
        .replenishment
        .disarmed
        .is_empty());
    let summary = inv.summary_out(&id("a"), t).expect("summary");
    assert!(summary.open_requests.is_empty() && summary.open_transfers.is_empty());
}

/// Forecasts moved a part of the stores at a time move exactly what one
/// pass over every store moves, each store's dishes in its own part.
#[test]
fn forecasts_moved_in_parts_move_what_one_pass_moves() {
    let mut inv = Inventory::new(chain(), at(17, 0));
    for store in ["a", "b", "c"] {
        for (sku, qty) in [("patty", 40.0), ("bun", 100.0)] {
            let eid = format!("{sku}-{store}");
            stock(&mut inv, store, sku, StockKind::Count, qty, at(17, 0), &eid, None);
        }
        for k in 0..6 {
            sell(&mut inv, store, 2, at(17, 1 + k), &format!("s-{store}-{k}"));
        }
    }
    // Half an hour on, the rates have decayed and every ETA moved.
    let later = at(17, 40);
    let mut whole = inv.clone();
    let all = whole.move_forecasts(later, 0, 1);
    let moved: Vec<_> = all.dishes().map(|(s, d)| (s.clone(), d.clone())).collect();
    assert!(moved.len() >= 3, "every store's burger moved: {moved:?}");
    let mut in_parts: Vec<_> = Vec::new();
    for part in 0..3 {
        let changes = inv.move_forecasts(later, part, 3);
        let stores: std::collections::BTreeSet<_> = changes.dishes().map(|(s, _)| s.clone()).collect();
        assert_eq!(stores.len(), 1, "part {part} is one store: {stores:?}");
        in_parts.extend(changes.dishes().map(|(s, d)| (s.clone(), d.clone())));
    }
    in_parts.sort();
    assert_eq!(in_parts, moved);
    for store in ["a", "b", "c"] {
        assert_eq!(
            inv.dish_state(&id(store), &id("burger")),
            whole.dish_state(&id(store), &id("burger")),
            "{store}"
        );
    }
}

fn proposed_to(inv: &Inventory, giver: &str) -> Option<DocId> {
    let (_, transfers) = inv.documents();
    transfers.into_iter().find(|t| {
        inv.transfer(t)
            .is_some_and(|x| x.from.as_str() == giver && x.state == TransferState::Proposed)
    })
}

#[test]
fn an_unanswered_proposal_expires_and_goes_to_the_next_store() {
    let mut inv = Inventory::new(chain(), at(17, 0));
    for (store, patty) in [("a", 12.0), ("b", 50.0), ("c", 40.0)] {
        stock(
            &mut inv,
            store,
            "patty",
            StockKind::Count,
            patty,
            at(17, 0),
            &format!("c-{store}"),
            None,
        );
        stock(
            &mut inv,
            store,
            "bun",
            StockKind::Count,
            100.0,
            at(17, 0),
            &format!("cb-{store}"),
            None,
        );
    }
    let req = TransferRequestIn {
        id: id("ask-1"),
        sku: id("patty"),
        qty: 20.0,
        unit: Unit::Pcs,
        by: id("manager-a"),
    };
    let out = inv.apply_transfer_request(&id("a"), &req, at(18, 0)).expect("request");
    assert_eq!(out.changes.transfers().count(), 1);
    let tr1 = inv.transfer(&id("tr-1")).expect("tr-1");
    assert_eq!(
        (tr1.from.as_str(), tr1.qty, tr1.expires_at),
        ("b", 20, Some(at(18, 10)))
    );
    assert!(inv.tick(at(18, 9)).transfers().next().is_none(), "not yet");
    let changes = inv.tick(at(18, 10));
    assert_eq!(inv.transfer(&id("tr-1")).expect("tr-1").state, TransferState::Expired);
    assert!(changes.transfers().any(|t| *t == id::<DocId>("tr-2")));
    let tr2 = inv.transfer(&id("tr-2")).expect("tr-2");
    assert_eq!((tr2.from.as_str(), tr2.qty), ("c", 20));
}

#[test]
fn a_noisy_scale_around_the_reorder_point_raises_one_request() {
    let mut inv = Inventory::new(chain(), at(17, 0));
    stock(&mut inv, "a", "patty", StockKind::Count, 11.0, at(17, 0), "c0", None);
    let mut requests = 0;
    for i in 0..40 {
        let kind = if i % 2 == 0 {
            StockKind::Consume
        } else {
            StockKind::Receive
        };
        requests += stock(
            &mut inv,
            "a",
            "patty",
            kind,
            1.0,
            at(17, 1) + i * MINUTE,
            &format!("n{i}"),
            None,
        )
        .requests()
        .count();
    }
    assert_eq!(
        requests, 1,
        "10 ↔ 11 around a reorder point of 10 raises exactly one request"
    );
}

#[test]
fn skus_crossing_within_the_merge_window_share_one_request() {
    let mut inv = Inventory::new(chain(), at(17, 0));
    stock(&mut inv, "a", "patty", StockKind::Count, 11.0, at(17, 0), "c0", None);
    stock(&mut inv, "a", "bun", StockKind::Count, 11.0, at(17, 0), "c1", None);
    stock(&mut inv, "a", "patty", StockKind::Consume, 5.0, at(18, 0), "u0", None);
    stock(&mut inv, "a", "bun", StockKind::Consume, 5.0, at(18, 1), "u1", None);
    let rq = inv.request_out(&id("rq-a-1")).expect("one request");
    let lines: Vec<(&str, i64)> = rq.lines.iter().map(|l| (l.sku.as_str(), l.qty)).collect();
    assert_eq!(
        lines,
        [("patty", 40), ("bun", 72)],
        "par − level, rounded up to packs of 10 and 24"
    );
    assert!(inv.request_out(&id("rq-a-2")).is_none());
}

#[test]
fn an_offline_scale_makes_its_skus_and_their_dishes_stale() {
    let mut planning = chain().planning().clone();
    planning
        .feeds
        .insert(id("a"), [(id("scale-1"), vec![id("patty")])].into_iter().collect());
    let catalog = {
        let base = chain();
        let skus: Vec<Sku> = base.skus().cloned().collect();
        let dishes: Vec<Dish> = base.dishes().cloned().collect();
        let stores: Vec<Store> = base.stores().cloned().collect();
        Arc::new(
            Catalog::new(skus, dishes, stores)
                .expect("catalog")
                .with_planning(planning)
                .expect("planning"),
        )
    };
    let mut inv = Inventory::new(catalog, at(17, 0));
    let t = at(18, 0);
    let changes = inv.set_presence(&id("a"), &id("scale-1"), false, t);
    assert!(changes.publish.contains(&Document::Sku(id("a"), id("patty"))));
    assert!(inv.level_out(&id("a"), &id("patty")).expect("level").stale);
    assert!(!inv.level_out(&id("a"), &id("bun")).expect("level").stale);
    assert!(inv.dish_out(&id("a"), &id("burger")).expect("dish").stale);
    assert!(changes
        .alerts
        .iter()
        .any(|(_, a)| a.kind == AlertKind::DeviceOffline && a.state == AlertState::Raised));
    assert!(
        inv.set_presence(&id("a"), &id("scale-1"), false, t).is_empty(),
        "offline twice changes nothing"
    );
    assert!(
        inv.set_presence(&id("a"), &id("pos-9"), false, t).is_empty(),
        "a device that feeds nothing"
    );
    let back = inv.set_presence(&id("a"), &id("scale-1"), true, t + MINUTE);
    assert!(back
        .alerts
        .iter()
        .any(|(_, a)| a.kind == AlertKind::DeviceOffline && a.state == AlertState::Cleared));
    assert!(!inv.dish_out(&id("a"), &id("burger")).expect("dish").stale);
}

#[derive(Debug, Clone)]
enum Step {
    Stock(usize, bool, u8, i64),
    Sale(usize, u32),
    Tick(i64),
    Decline(usize),
    Accept(usize),
    Dispatch(usize),
    Receive(usize),
    Ask(usize, u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..3, any::<bool>(), 0u8..2, 1i64..30).prop_map(|(s, up, k, q)| Step::Stock(s, up, k, q)),
        4 => (0usize..3, 1u32..4).prop_map(|(s, n)| Step::Sale(s, n)),
        1 => (1i64..15).prop_map(Step::Tick),
        1 => (1usize..4).prop_map(Step::Decline),
        1 => (1usize..4).prop_map(Step::Accept),
        1 => (1usize..4).prop_map(Step::Dispatch),
        1 => (1usize..4).prop_map(Step::Receive),
        1 => (0usize..3, 1u8..30).prop_map(|(s, q)| Step::Ask(s, q)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens in whatever order: never two open requests for one
    /// SKU and store, and a dispatched transfer never leaves its giver below
    /// its reorder point.
    #[test]
    fn planning_invariants(steps in prop::collection::vec(step(), 1..80)) {
        let stores = ["a", "b", "c"];
        let skus = ["patty", "bun"];
        let mut inv = Inventory::new(chain(), at(17, 0));
        for s in stores {
            for k in skus {
                stock(&mut inv, s, k, StockKind::Count, 30.0, at(17, 0), &format!("c-{s}-{k}"), None);
            }
        }
        let mut now = at(18, 0);
        for (n, st) in steps.iter().enumerate() {
            now += MINUTE;
            let eid = format!("e{n}");
            let tr = |i: usize| -> DocId { id(&format!("tr-{i}")) };
            match st {
                Step::Stock(s, up, k, q) => {
                    let kind = if *up { StockKind::Receive } else { StockKind::Consume };
                    stock(&mut inv, stores[*s], skus[*k as usize], kind, *q as f64, now, &eid, None);
                }
                Step::Sale(s, p) => { sell(&mut inv, stores[*s], *p, now, &eid); }
                Step::Tick(m) => { now += m * MINUTE; inv.tick(now); }
                Step::Decline(i) | Step::Accept(i) | Step::Dispatch(i) | Step::Receive(i) => {
                    if let Some(t) = inv.transfer(&tr(*i)).cloned() {
                        let (who, act) = match st {
                            Step::Decline(_) => (&t.from, TransferAction::Decline),
                            Step::Accept(_) => (&t.from, TransferAction::Accept),
                            Step::Dispatch(_) => (&t.from, TransferAction::Dispatch),
                            _ => (&t.to, TransferAction::Receive),
                        };
                        let rp = 10;
                        let before = inv.level_out(&t.from, &t.sku).map_or(0, |l| l.qty);
                        if inv.apply_transfer_action(who, &t.id, act, &action(&eid), &id(&eid), now).is_ok() && act == TransferAction::Dispatch {
                            let after = inv.level_out(&t.from, &t.sku).map_or(0, |l| l.qty);
                            prop_assert!(after >= rp, "{} left at {after} (was {before})", t.from);
                        }
                    }
                }
                Step::Ask(s, q) => {
                    let req = TransferRequestIn { id: id(&eid), sku: id("patty"), qty: f64::from(*q), unit: Unit::Pcs, by: id("m") };
                    let _ = inv.apply_transfer_request(&id(stores[*s]), &req, now);
                }
            }
            for s in stores {
                for k in skus {
                    let open = inv.documents().0.iter().filter(|r| {
                        inv.request(r).is_some_and(|r| r.store.as_str() == s && r.is_open() && r.lines.iter().any(|l| l.sku.as_str() == k))
                    }).count();
                    prop_assert!(open <= 1, "{open} open requests for {k} in {s}");
                }
            }
        }
    }
}

#[test]
fn finished_requests_and_transfers_are_shown_for_a_day_then_retired() {
    use crate::planning::{Retired, FINISHED_SHOWN_FOR};
    use crate::{Restored, Transfer};
    use std::collections::BTreeSet;

    let mut inv = Inventory::new(chain(), at(17, 0));
    stock(&mut inv, "a", "patty", StockKind::Count, 11.0, at(17, 0), "c0", None);
    stock(&mut inv, "a", "patty", StockKind::Consume, 5.0, at(18, 0), "u0", None);
    let rq: DocId = id("rq-a-1");
    let done = at(18, 5);
    inv.apply_request_action(&rq, RequestAction::Cancel, &action("ck-1"), done)
        .expect("cancel");
    let request = inv.request(&rq).expect("the request").clone();
    let transfer = Transfer {
        id: id("tr-9"),
        from: id("b"),
        to: id("c"),
        sku: id("patty"),
        qty: 5,
        need: 5,
        state: TransferState::Received,
        reason: "received".into(),
        expires_at: None,
        travel_minutes: 10,
        tried: Vec::new(),
        created_at: at(17, 30),
        updated_at: done,
        rev: 4,
    };
    let shown = |now: Millis| {
        let restored = vec![Restored::Request(request.clone()), Restored::Transfer(transfer.clone())];
        let (inv, _) = Inventory::restore(chain(), restored, now);
        (inv.request_out(&rq).is_some(), inv.transfer_out(&transfer.id).is_some())
    };
    let last_minute = done + FINISHED_SHOWN_FOR - MINUTE;
    assert_eq!(shown(last_minute), (true, true), "a restart within the day shows both");
    assert_eq!(shown(done + FINISHED_SHOWN_FOR), (false, false), "a day later neither");

    // Both shown until a day has passed; then retired, once, with the
    // stores whose topics to clear.
    let (mut inv, _) = Inventory::restore(
        chain(),
        vec![Restored::Request(request.clone()), Restored::Transfer(transfer.clone())],
        last_minute,
    );
    assert!(inv.tick(last_minute).retired.is_empty());
    assert!(inv.request_out(&rq).is_some() && inv.transfer_out(&transfer.id).is_some());
    let retired = inv.tick(done + FINISHED_SHOWN_FOR).retired;
    assert_eq!(
        retired,
        BTreeSet::from([
            Retired::Request {
                id: rq.clone(),
                store: id("a"),
            },
            Retired::Transfer {
                id: transfer.id.clone(),
                from: id("b"),
                to: id("c"),
            },
        ])
    );
    assert!(inv.request_out(&rq).is_none() && inv.transfer_out(&transfer.id).is_none());
    assert!(inv.tick(done + FINISHED_SHOWN_FOR + MINUTE).retired.is_empty());
    // An open request is never retired, however old.
    stock(&mut inv, "b", "patty", StockKind::Count, 11.0, at(17, 0), "c1", None);
    stock(&mut inv, "b", "patty", StockKind::Consume, 5.0, at(18, 0), "u1", None);
    let open: Vec<DocId> = inv.documents().0;
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(inv.tick(at(18, 0) + 10 * FINISHED_SHOWN_FOR).retired.is_empty());
    assert!(inv.request_out(&open[0]).is_some());
}

/// Today's figures count each change in the store-local day of its own
/// stamp: a waste stamped 25 hours ago (a device replaying after a night
/// offline) moves the level but not today's waste, and raises no spike.
#[test]
fn a_waste_stamped_yesterday_counts_in_no_figure_of_today() {
    let mut inv = Inventory::new(chain(), at(9, 0));
    stock(&mut inv, "a", "patty", StockKind::Receive, 100.0, at(9, 0), "r1", None);
    sell(&mut inv, "a", 10, at(12, 0), "s1");
    let late = StockEventIn {
        id: id("w-late"),
        kind: StockKind::Waste,
        qty: 30.0,
        unit: Unit::Pcs,
        at: Timestamp(at(12, 0) - 25 * 60 * MINUTE),
        device: id("dev"),
        reference: None,
        reason: Some("expired".into()),
    };
    let changes = inv
        .apply_stock(&id("a"), &id("patty"), &late, at(12, 1))
        .expect("waste")
        .changes;
    assert!(
        changes.alerts.iter().all(|(_, a)| a.kind != AlertKind::WasteSpike),
        "{changes:?}"
    );
    let level = inv.level_out(&id("a"), &id("patty")).expect("level");
    assert_eq!(level.qty, 60, "the waste moved the level");
    let summary = inv.summary_out(&id("a"), at(12, 2)).expect("summary");
    assert!(summary.waste.is_empty(), "{:?}", summary.waste);
    assert_eq!(
        (summary.counted, summary.waste_ratio),
        (2, 0.0),
        "patty and bun were used today"
    );

    // The same waste stamped today counts, and the ratio can be recomputed
    // from the document alone.
    let today = StockEventIn {
        id: id("w-now"),
        at: Timestamp(at(12, 3)),
        qty: 5.0,
        ..late
    };
    inv.apply_stock(&id("a"), &id("patty"), &today, at(12, 3))
        .expect("waste");
    let summary = inv.summary_out(&id("a"), at(12, 4)).expect("summary");
    let patty = summary
        .waste
        .get(&id::<dishsync_protocol::SkuId>("patty"))
        .expect("patty's waste");
    assert_eq!((patty.waste, patty.used), (5, 10));
    let recomputed: f64 = summary.waste.values().map(|w| w.ratio).sum::<f64>() / f64::from(summary.counted);
    assert!((summary.waste_ratio - recomputed).abs() < 1e-12);
}

/// The summary prices today's waste and use: patties at 1.20, buns at
/// 0.25; a void takes its sale's use back in money too.
#[test]
fn the_summary_gives_todays_waste_as_a_share_of_ingredient_cost() {
    let mut inv = Inventory::new(chain_costing(Some(1_200_000), Some(250_000)), at(9, 0));
    stock(&mut inv, "a", "patty", StockKind::Receive, 100.0, at(9, 0), "r1", None);
    stock(&mut inv, "a", "bun", StockKind::Receive, 100.0, at(9, 0), "r2", None);
    assert_eq!(
        inv.summary_out(&id("a"), at(9, 1)).expect("summary").cost,
        None,
        "nothing used yet"
    );
    sell(&mut inv, "a", 10, at(12, 0), "s1");
    stock(
        &mut inv,
        "a",
        "patty",
        StockKind::Waste,
        3.0,
        at(12, 5),
        "w1",
        Some("dropped"),
    );
    stock(
        &mut inv,
        "a",
        "bun",
        StockKind::Waste,
        2.0,
        at(12, 6),
        "w2",
        Some("stale"),
    );
    let cost = inv
        .summary_out(&id("a"), at(12, 7))
        .expect("summary")
        .cost
        .expect("costed");
    // Use: 10 burgers, each a patty and a bun: 10 × 1.45 = 14.50.
    // Waste: 3 patties and 2 buns: 3.60 + 0.50 = 4.10.
    assert_eq!((cost.used, cost.waste), (14.5, 4.1));
    assert_eq!(cost.share, 4_100_000.0 / 18_600_000.0, "from the exact sums");
    assert_eq!(cost.currency.as_deref(), Some("EUR"));
    assert!(cost.uncosted.is_empty());
    // Another store is not costed for buns: they are named, and left out.
    let mut inv = Inventory::new(chain_costing(Some(1_200_000), None), at(9, 0));
    stock(&mut inv, "a", "patty", StockKind::Receive, 100.0, at(9, 0), "r1", None);
    stock(&mut inv, "a", "bun", StockKind::Receive, 100.0, at(9, 0), "r2", None);
    sell(&mut inv, "a", 10, at(12, 0), "s1");
    let cost = inv
        .summary_out(&id("a"), at(12, 7))
        .expect("summary")
        .cost
        .expect("costed");
    assert_eq!((cost.used, cost.waste, cost.share), (12.0, 0.0, 0.0));
    assert_eq!(cost.uncosted, vec![id::<dishsync_protocol::SkuId>("bun")]);
}

/// A SKU whose stock covers far longer than deliveries need is a slow
/// mover, judged by the days of use kept: its usage rate, its cover, and a
/// par to stock less — usage × (review period + lead time) × (1 + safety),
/// rounded up to the pack — with the waste it caused. The days kept come
/// back after a restore.
#[test]
fn a_slow_mover_gets_a_suggested_par_from_its_days_of_use() {
    let mut inv = Inventory::new(chain(), at(9, 0));
    stock(&mut inv, "a", "patty", StockKind::Receive, 400.0, at(9, 0), "r1", None);
    sell(&mut inv, "a", 10, at(12, 0), "s1");
    stock(&mut inv, "a", "patty", StockKind::Waste, 5.0, at(13, 0), "w1", None);
    let summary = inv.summary_out(&id("a"), at(13, 1)).expect("summary");
    assert!(summary.slow_movers.is_empty(), "no day of use kept yet");
    // The day ends: it joins the store's history.
    let changes = inv.tick(at(24 + 9, 0));
    assert!(changes.persist.contains(&Document::History(id("a"))));
    let summary = inv.summary_out(&id("a"), at(24 + 9, 1)).expect("summary");
    let patty = summary
        .slow_movers
        .iter()
        .find(|m| m.sku.as_str() == "patty")
        .expect("patty moves slowly");
    // 385 on hand at 10 a day: 38.5 days, past twice the daily delivery.
    assert_eq!(
        (patty.level, patty.usage_per_day, patty.cover_days),
        (385, 10.0, Some(38.5))
    );
    // 10 × (1 day + 2 h lead) × 1.2 = 13, rounded up to packs of 10.
    assert_eq!((patty.par, patty.suggested_par), (40, 20));
    assert_eq!((patty.waste, patty.waste_days), (5, 1));
    assert!(
        summary.slow_movers.iter().all(|m| m.sku.as_str() != "bun"),
        "buns are below zero: nothing to stock less of"
    );

    // The history, persisted and restored, judges the same.
    let doc = Document::History(id("a"));
    let persisted = serde_json::to_vec(&doc.state(&inv).expect("a state")).expect("encodes");
    let restored = doc.restore(Json(persisted)).expect("decodes").expect("restored");
    let (back, _) = Inventory::restore(chain(), vec![restored], at(24 + 9, 2));
    assert_eq!(back.history(&id("a")), inv.history(&id("a")));
    let (reloaded, _) = Inventory::restore(chain(), inv.states(), at(24 + 9, 2));
    assert_eq!(reloaded.history(&id("a")), inv.history(&id("a")), "a reload carries it");
}

/// One input through the one path every input takes.
fn through(inv: &mut Inventory, input: crate::Input, t: Millis) -> Changes {
    inv.apply(&input, None, t)
        .expect("applied")
        .expect("an outcome")
        .changes
}

/// A stock event of `qty` pieces by dev at `t` (a waste's reason:
/// dropped).
fn pieces(kind: StockKind, qty: f64, t: Millis, eid: &str) -> StockEventIn {
    StockEventIn {
        id: id(eid),
        kind,
        qty,
        unit: Unit::Pcs,
        at: Timestamp(t),
        device: id("dev"),
        reference: None,
        reason: (kind == StockKind::Waste).then(|| "dropped".into()),
    }
}

fn patty_event(kind: StockKind, qty: f64, t: Millis, eid: &str) -> crate::Input {
    crate::Input::Stock {
        store: id("a"),
        sku: id("patty"),
        event: pieces(kind, qty, t, eid),
    }
}

fn burgers(n: u32, t: Millis, eid: &str) -> crate::Input {
    crate::Input::Sale {
        store: id("a"),
        sale: burger_sale(n, t, eid),
    }
}

/// From count to count, every flow of the patties adds up: the variance
/// document gives the unexplained use exactly, a count beyond 5 % of the
/// theoretical use raises `usage_variance`, and a later count within it
/// clears it. The state comes back the same after a restore.
#[test]
fn usage_variance_is_counted_from_count_to_count() {
    let mut inv = Inventory::new(chain(), at(9, 0));
    let variance = |inv: &Inventory| inv.variance_out(&id("a"), &id("patty"));
    through(&mut inv, patty_event(StockKind::Count, 100.0, at(9, 0), "c1"), at(9, 0));
    assert_eq!(variance(&inv), None, "one count: no period yet");
    through(
        &mut inv,
        patty_event(StockKind::Receive, 50.0, at(10, 0), "r1"),
        at(10, 0),
    );
    through(&mut inv, burgers(30, at(12, 0), "s1"), at(12, 0));
    through(&mut inv, patty_event(StockKind::Waste, 5.0, at(13, 0), "w1"), at(13, 0));
    through(
        &mut inv,
        patty_event(StockKind::TransferOut, 10.0, at(14, 0), "t1"),
        at(14, 0),
    );
    through(
        &mut inv,
        patty_event(StockKind::TransferIn, 4.0, at(15, 0), "t2"),
        at(15, 0),
    );
    through(
        &mut inv,
        patty_event(StockKind::Consume, 2.0, at(16, 0), "m1"),
        at(16, 0),
    );
    through(
        &mut inv,
        patty_event(StockKind::Adjust, -1.0, at(17, 0), "j1"),
        at(17, 0),
    );
    // The ledger implies 106; 98 are counted.
    let changes = through(
        &mut inv,
        patty_event(StockKind::Count, 98.0, at(22, 0), "c2"),
        at(22, 0),
    );
    let doc = variance(&inv).expect("a period");
    let last = doc.last.expect("closed");
    assert_eq!(
        (
            last.opening,
            last.counted,
            last.received,
            last.transferred_in,
            last.transferred_out,
            last.adjusted
        ),
        (100, 98, 50, 4, 10, -1)
    );
    assert_eq!(
        (last.actual, last.theoretical, last.waste, last.consumed),
        (45, 30, 5, 2)
    );
    assert_eq!(last.unexplained, 8);
    assert_eq!(last.share, Some(8.0 / 30.0));
    assert_eq!((last.from, last.to), (Timestamp(at(9, 0)), Timestamp(at(22, 0))));
    assert!(doc.live.is_none(), "no scale");
    let raised: Vec<_> = changes
        .alerts
        .iter()
        .filter(|(_, a)| a.kind == AlertKind::UsageVariance)
        .collect();
    assert_eq!(raised.len(), 1, "{changes:?}");
    assert_eq!(raised[0].1.state, AlertState::Raised);
    assert!(changes.publish.contains(&Document::Variance(id("a"), id("patty"))));

    // Restored from its persisted state, the same document.
    let doc = Document::Variance(id("a"), id("patty"));
    let persisted = serde_json::to_vec(&doc.state(&inv).expect("a state")).expect("encodes");
    let restored = doc.restore(Json(persisted)).expect("decodes").expect("restored");
    let (back, _) = Inventory::restore(chain(), vec![restored], at(22, 1));
    assert_eq!(variance(&back), variance(&inv));
    // A reload carries it (it restores from `states`).
    let (reloaded, _) = Inventory::restore(chain(), inv.states(), at(22, 1));
    assert_eq!(variance(&reloaded), variance(&inv));

    // The next period: 50 sold, 48 counted — nothing unexplained; cleared.
    through(&mut inv, burgers(50, at(23, 0), "s2"), at(23, 0));
    let changes = through(
        &mut inv,
        patty_event(StockKind::Count, 48.0, at(23, 30), "c3"),
        at(23, 30),
    );
    let last = variance(&inv).and_then(|d| d.last).expect("closed");
    assert_eq!((last.opening, last.theoretical, last.unexplained), (98, 50, 0));
    assert!(changes
        .alerts
        .iter()
        .any(|(_, a)| a.kind == AlertKind::UsageVariance && a.state == AlertState::Cleared));
}

/// A persisted state, decoded (as JSON here; the store's format is its own).
struct Json(Vec<u8>);

impl crate::document::Decode for Json {
    type Error = serde_json::Error;

    fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

/// The chain with fridge-1 in store a keeping the patties at 0–5 °C, 15
/// minutes' grace, silent after 10.
fn chain_with_fridge() -> Arc<Catalog> {
    let base = chain();
    let mut planning = base.planning().clone();
    planning.probes.insert(
        id("a"),
        [(
            id("fridge-1"),
            crate::catalog::ProbeBinding {
                skus: vec![id("patty")],
                min_millicelsius: 0,
                max_millicelsius: 5_000,
                grace: 15 * MINUTE,
                silent_after: 10 * MINUTE,
            },
        )]
        .into_iter()
        .collect(),
    );
    Arc::new((*base).clone().with_planning(planning).expect("planning"))
}

fn temperature(celsius: f64, t: Millis) -> crate::Input {
    let reading = dishsync_protocol::payload::TemperatureIn {
        celsius,
        at: Timestamp(t),
    };
    crate::Input::Temperature {
        store: id("a"),
        device: id("fridge-1"),
        id: crate::input::probe_reading_id(&id("fridge-1"), &reading),
        reading,
    }
}

fn decide(action: dishsync_protocol::topic::ProbeAction, eid: &str) -> crate::Input {
    crate::Input::ProbeAction {
        store: id("a"),
        device: id("fridge-1"),
        action,
        body: ActionIn {
            id: id(eid),
            by: id("chef-anna"),
            note: None,
        },
    }
}

fn alerts_of(changes: &Changes, kind: AlertKind) -> Vec<AlertState> {
    changes
        .alerts
        .iter()
        .filter(|(_, a)| a.kind == kind)
        .map(|(_, a)| a.state)
        .collect()
}

/// A fridge outside its range: shorter than the grace, nothing; longer, a
/// fault — the patties and the burgers at risk, and they stay so when the
/// temperature is back; a discard books exactly the patties on hand as
/// waste, once; keep lifts a fault without waste; silence is an alert, and
/// a breach the probe stops reporting becomes a fault by the clock.
#[test]
fn a_fridge_fault_puts_its_stock_at_risk_until_the_kitchen_decides() {
    use dishsync_protocol::topic::ProbeAction;
    let mut inv = Inventory::new(chain_with_fridge(), at(9, 0));
    let apply = |inv: &mut Inventory, input: crate::Input, t: Millis| inv.apply(&input, None, t);
    through(&mut inv, patty_event(StockKind::Count, 40.0, at(9, 0), "c1"), at(9, 0));
    let at_risk = |inv: &Inventory| {
        (
            inv.level_out(&id("a"), &id("patty")).expect("level").at_risk,
            inv.dish_out(&id("a"), &id("burger")).expect("dish").at_risk,
        )
    };
    assert_eq!(
        apply(&mut inv, temperature(4.0, at(9, 0)), at(9, 0)).expect("in range"),
        None
    );
    // 8 °C for 5 minutes, then back: shorter than the grace.
    let began = apply(&mut inv, temperature(8.0, at(9, 5)), at(9, 5))
        .expect("a breach")
        .expect("kept");
    assert!(began
        .changes
        .persist
        .contains(&Document::Probe(id("a"), id("fridge-1"))));
    assert!(began.changes.alerts.is_empty());
    apply(&mut inv, temperature(4.0, at(9, 10)), at(9, 10)).expect("back");
    assert_eq!(at_risk(&inv), (false, false));
    // 9 °C from 9:20 on: at 9:36 it is past the grace.
    apply(&mut inv, temperature(9.0, at(9, 20)), at(9, 20)).expect("a breach");
    let fault = through(&mut inv, temperature(9.0, at(9, 36)), at(9, 36));
    assert_eq!(alerts_of(&fault, AlertKind::EquipmentFault), [AlertState::Raised]);
    assert!(fault.publish.contains(&Document::Sku(id("a"), id("patty"))));
    assert!(fault.publish.contains(&Document::Dish(id("a"), id("burger"))));
    assert_eq!(at_risk(&inv), (true, true));
    apply(&mut inv, temperature(3.0, at(9, 40)), at(9, 40)).expect("back");
    assert_eq!(at_risk(&inv), (true, true), "the food may have spoiled meanwhile");

    // Discard: exactly the 40 on hand, as waste for the equipment.
    let revs = |inv: &Inventory| {
        (
            inv.level_out(&id("a"), &id("patty")).expect("level").rev,
            inv.dish_out(&id("a"), &id("burger")).expect("dish").rev,
            inv.menu_out(&id("a")).expect("menu").rev,
        )
    };
    let before = revs(&inv);
    let outcome = inv
        .apply(&decide(ProbeAction::Discard, "d1"), None, at(9, 45))
        .expect("decided")
        .expect("an outcome");
    let waste: Vec<(i64, Option<&str>)> = outcome
        .entries
        .iter()
        .map(|l| (l.amount, l.reason.as_deref()))
        .collect();
    assert_eq!(waste, [(-40, Some("equipment_failure"))]);
    assert_eq!(
        alerts_of(&outcome.changes, AlertKind::EquipmentFault),
        [AlertState::Cleared]
    );
    assert_eq!(inv.level_out(&id("a"), &id("patty")).expect("level").qty, 0);
    assert_eq!(at_risk(&inv), (false, false));
    assert_eq!(
        revs(&inv),
        (before.0 + 1, before.1 + 1, before.2 + 1),
        "one revision each for the one input"
    );
    let decided = inv
        .probe_state(&id("a"), &id("fridge-1"))
        .and_then(|p| p.decided.clone())
        .expect("recorded");
    assert_eq!((decided.discarded, decided.by.as_str()), (true, "chef-anna"));
    // A second discard finds no fault: refused, nothing booked twice.
    let again = inv
        .apply(&decide(ProbeAction::Discard, "d2"), None, at(9, 46))
        .expect_err("no fault");
    assert_eq!(again.code, dishsync_protocol::payload::ErrorCode::InvalidTransition);
    assert_eq!(inv.level_out(&id("a"), &id("patty")).expect("level").qty, 0);

    // Silent for more than 10 minutes: an alert; its next reading clears it.
    let silent = inv.tick(at(9, 51));
    assert_eq!(alerts_of(&silent, AlertKind::ProbeSilent), [AlertState::Raised]);
    let heard = through(&mut inv, temperature(4.0, at(9, 52)), at(9, 52));
    assert_eq!(alerts_of(&heard, AlertKind::ProbeSilent), [AlertState::Cleared]);

    // Out at 10:00 and then silent: by the clock, a fault at 10:15; kept.
    through(
        &mut inv,
        patty_event(StockKind::Receive, 20.0, at(9, 55), "r1"),
        at(9, 55),
    );
    apply(&mut inv, temperature(12.0, at(10, 0)), at(10, 0)).expect("a breach");
    let by_clock = inv.tick(at(10, 16));
    assert_eq!(alerts_of(&by_clock, AlertKind::EquipmentFault), [AlertState::Raised]);
    assert_eq!(at_risk(&inv), (true, true));
    let kept = inv
        .apply(&decide(ProbeAction::Keep, "k1"), None, at(10, 20))
        .expect("decided")
        .expect("an outcome");
    assert!(kept.entries.is_empty(), "keep books nothing");
    assert_eq!(inv.level_out(&id("a"), &id("patty")).expect("level").qty, 20);
    assert_eq!(at_risk(&inv), (false, false));
    // Still out of range: a whole grace again before the next fault.
    assert!(alerts_of(&inv.tick(at(10, 21)), AlertKind::EquipmentFault).is_empty());
    assert_eq!(
        alerts_of(&inv.tick(at(10, 36)), AlertKind::EquipmentFault),
        [AlertState::Raised]
    );
    inv.apply(&decide(ProbeAction::Keep, "k2"), None, at(10, 37))
        .expect("decided");

    // The probe's state comes back after a restore.
    let doc = Document::Probe(id("a"), id("fridge-1"));
    let persisted = serde_json::to_vec(&doc.state(&inv).expect("a state")).expect("encodes");
    let restored = doc.restore(Json(persisted)).expect("decodes").expect("restored");
    let (reloaded, _) = Inventory::restore(chain_with_fridge(), inv.states(), at(10, 38));
    assert_eq!(
        reloaded.probe_state(&id("a"), &id("fridge-1")).map(|p| &p.decided),
        inv.probe_state(&id("a"), &id("fridge-1")).map(|p| &p.decided),
        "a reload carries it"
    );
    let (back, _) = Inventory::restore(chain_with_fridge(), vec![restored], at(10, 21));
    assert_eq!(
        back.probe_state(&id("a"), &id("fridge-1"))
            .and_then(|p| p.decided.clone()),
        inv.probe_state(&id("a"), &id("fridge-1"))
            .and_then(|p| p.decided.clone())
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the temperatures and however often the kitchen taps
    /// discard, each fault books its stock as waste exactly once, for
    /// exactly what was on hand; a discard with no fault books nothing.
    #[test]
    fn a_fault_is_discarded_once_whatever_the_taps(
        steps in prop::collection::vec((0u8..3, -5.0f64..15.0, 1i64..20), 1..40),
    ) {
        use dishsync_protocol::topic::ProbeAction;
        let mut inv = Inventory::new(chain_with_fridge(), at(9, 0));
        through(&mut inv, patty_event(StockKind::Count, 40.0, at(9, 0), "c0"), at(9, 0));
        let mut t = at(9, 0);
        let (mut faults, mut discards, mut booked) = (0u32, 0u32, 0i64);
        for (n, (what, celsius, minutes)) in steps.into_iter().enumerate() {
            t += minutes * MINUTE;
            let in_fault = |inv: &Inventory| {
                inv.probe_state(&id("a"), &id("fridge-1")).is_some_and(|p| p.fault.is_some())
            };
            let before = in_fault(&inv);
            match what {
                0 | 1 => {
                    // A reading (twice as often as a tap).
                    let _ = inv.apply(&temperature(celsius, t), None, t);
                }
                _ => {
                    let on_hand = inv.level_out(&id("a"), &id("patty")).map_or(0, |l| l.qty);
                    match inv.apply(&decide(ProbeAction::Discard, &format!("d{n}")), None, t) {
                        Ok(Some(outcome)) => {
                            prop_assert!(before, "a discard applied only on a fault");
                            discards += 1;
                            let wasted: i64 = outcome.entries.iter().map(|l| -l.amount).sum();
                            prop_assert_eq!(wasted, on_hand.max(0), "exactly the stock on hand");
                            booked += wasted;
                            // Restock for the next fault.
                            through(&mut inv, patty_event(StockKind::Receive, 10.0, t, &format!("r{n}")), t);
                        }
                        Ok(None) => prop_assert!(false, "a decision always has an outcome"),
                        Err(r) => {
                            prop_assert!(!before, "refused only without a fault");
                            prop_assert_eq!(r.code, dishsync_protocol::payload::ErrorCode::InvalidTransition);
                        }
                    }
                }
            }
            if !before && in_fault(&inv) {
                faults += 1;
            }
        }
        prop_assert!(discards <= faults, "{discards} discards of {faults} faults");
        prop_assert!(booked >= 0);
    }
}

mod promotion;
