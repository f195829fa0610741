//! Promotion readiness with an injected clock: each store's cover of the
//! day judged, the early line timed to the kitchen's last delivery before
//! the start, the transfer when the kitchen is too late, the alert while
//! it runs, calling it off and retiring it — with exact numbers.

use dishsync_protocol::payload::{PromotionIn, PromotionState, Readiness};
use dishsync_protocol::PromotionId;

use super::*;
use crate::planning::promotion::Cover;

/// Day 2, 11:00: the promotion starts.
fn start() -> Millis {
    at(48 + 11, 0)
}

fn plan(eid: &str, stores: &[&str], portions_per_day: Option<f64>, uplift: Option<f64>) -> PromotionIn {
    PromotionIn {
        id: id(eid),
        dish: id("burger"),
        stores: stores.iter().map(|s| id(s)).collect(),
        start: Timestamp(start()),
        end: Timestamp(start() + 3 * 24 * 60 * MINUTE),
        uplift,
        portions_per_day,
        by: id("hq-1"),
        note: Some("burger week".into()),
    }
}

fn planned(inv: &mut Inventory, promotion: &PromotionIn, t: Millis) -> Result<Changes, crate::Rejection> {
    let input = crate::Input::Promotion {
        id: id("p1"),
        plan: promotion.clone(),
    };
    inv.apply(&input, None, t).map(|o| o.expect("an outcome").changes)
}

fn p1() -> PromotionId {
    id("p1")
}

/// Receives `patty` and `bun` pieces at each store, at 9:00 on day 0.
fn stocked(levels: &[(&str, f64, f64)]) -> Inventory {
    let mut inv = Inventory::new(chain(), at(9, 0));
    for (store, patty, bun) in levels {
        stock(
            &mut inv,
            store,
            "patty",
            StockKind::Receive,
            *patty,
            at(9, 0),
            &format!("rp-{store}"),
            None,
        );
        stock(
            &mut inv,
            store,
            "bun",
            StockKind::Receive,
            *bun,
            at(9, 0),
            &format!("rb-{store}"),
            None,
        );
    }
    inv
}

fn cover(sku: &str, need: i64, on_hand: i64, due: i64) -> Cover {
    Cover {
        sku: id(sku),
        need,
        on_hand,
        due,
    }
}

fn status(inv: &Inventory, store: &str) -> (Readiness, Vec<Cover>) {
    let r = inv.readiness(&id(store), &p1()).expect("a readiness");
    (r.status, r.ingredients.clone())
}

#[test]
fn three_stores_are_judged_ready_at_risk_and_short_then_the_short_one_gets_its_line_in_time() {
    let mut inv = stocked(&[("a", 70.0, 70.0), ("b", 55.0, 100.0), ("c", 100.0, 20.0)]);
    assert!(inv.documents().0.is_empty(), "no store is below its reorder point");
    let changes = planned(&mut inv, &plan("plan-1", &["a", "b", "c"], Some(50.0), None), at(9, 0)).expect("planned");
    for store in ["a", "b", "c"] {
        assert!(
            changes.publish.contains(&Document::Readiness(id(store), p1())),
            "{store} shown"
        );
    }
    assert!(changes.publish.contains(&Document::Promotion(p1())));
    // 50 portions a day, one patty and one bun each, over the whole first
    // day; ready from 1.2 (the safety stock).
    assert_eq!(
        status(&inv, "a"),
        (
            Readiness::Ready,
            vec![cover("patty", 50, 70, 0), cover("bun", 50, 70, 0)]
        )
    );
    assert_eq!(
        status(&inv, "b"),
        (
            Readiness::AtRisk,
            vec![cover("patty", 50, 55, 0), cover("bun", 50, 100, 0)]
        )
    );
    assert_eq!(
        status(&inv, "c"),
        (
            Readiness::Short,
            vec![cover("patty", 50, 100, 0), cover("bun", 50, 20, 0)]
        )
    );
    let hq = inv.promotion_out(&p1()).expect("the HQ document");
    let order: Vec<(&str, Readiness, Option<f64>, Option<&str>)> = hq
        .stores
        .iter()
        .map(|s| {
            (
                s.store.as_str(),
                s.status,
                s.coverage,
                s.limiting.as_ref().map(|k| k.as_str()),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("c", Readiness::Short, Some(0.4), Some("bun")),
            ("b", Readiness::AtRisk, Some(1.1), Some("patty")),
            ("a", Readiness::Ready, Some(1.4), Some("patty")),
        ],
        "worst first"
    );
    assert_eq!((hq.state, hq.rev), (PromotionState::Scheduled, 1));
    // Two days ahead, an order would wait a day in the store: none yet.
    assert!(inv.documents().0.is_empty(), "no line before its delivery");
    // Day 1, 5:00 still makes the 7:00 delivery of day 1: a later one
    // arrives in time too.
    inv.tick(at(24 + 5, 0));
    assert!(inv.documents().0.is_empty(), "the delivery of day 1 is too early");
    // From 5:01 the next delivery is 7:00 on day 2, the last before 11:00.
    let changes = inv.tick(at(24 + 5, 1));
    let (requests, _) = inv.documents();
    assert_eq!(requests.len(), 1, "one early line");
    let request = inv.request(&requests[0]).expect("the request");
    // ⌈50 × 1.2⌉ − 20 = 40 buns, in packs of 24.
    let lines: Vec<(&str, i64)> = request.lines.iter().map(|l| (l.sku.as_str(), l.qty)).collect();
    assert_eq!((request.store.as_str(), lines), ("c", vec![("bun", 48)]));
    assert!(request.reason.contains("promotion p1"), "{}", request.reason);
    assert!(changes.publish.contains(&Document::Readiness(id("c"), p1())));
    // Due with the 7:00 delivery: 68 of 50, ready.
    assert_eq!(
        status(&inv, "c"),
        (
            Readiness::Ready,
            vec![cover("patty", 50, 100, 0), cover("bun", 50, 20, 48)]
        )
    );
    let shown = inv.store_promotion_out(&id("c"), &p1()).expect("c's document");
    assert_eq!(shown.request.as_ref(), Some(&requests[0]));
    // Once: later ticks raise nothing more, and change nothing shown.
    let rev = shown.rev;
    let changes = inv.tick(at(24 + 6, 0));
    assert!(
        !changes.publish.contains(&Document::Readiness(id("c"), p1())),
        "nothing changed"
    );
    assert_eq!(inv.documents().0.len(), 1);
    assert_eq!(inv.store_promotion_out(&id("c"), &p1()).expect("c").rev, rev);
}

#[test]
fn an_early_line_joins_the_open_request_of_the_store() {
    let mut inv = stocked(&[("a", 70.0, 70.0), ("b", 55.0, 100.0), ("c", 100.0, 20.0)]);
    planned(&mut inv, &plan("plan-1", &["c"], Some(50.0), None), at(9, 0)).expect("planned");
    // Patties cross the reorder point on day 1: the store's own request.
    stock(
        &mut inv,
        "c",
        "patty",
        StockKind::Waste,
        91.0,
        at(24 + 4, 0),
        "w1",
        None,
    );
    let (requests, _) = inv.documents();
    assert_eq!(requests.len(), 1);
    let own: Vec<(String, i64)> = inv
        .request(&requests[0])
        .expect("request")
        .lines
        .iter()
        .map(|l| (l.sku.to_string(), l.qty))
        .collect();
    assert_eq!(own, vec![("patty".to_string(), 40)], "up to par, in packs of 10");
    let rev = inv.request(&requests[0]).expect("request").rev;
    inv.tick(at(24 + 5, 1));
    let (after, _) = inv.documents();
    assert_eq!(after, requests, "no second request");
    let request = inv.request(&requests[0]).expect("request");
    let lines: Vec<(&str, i64)> = request.lines.iter().map(|l| (l.sku.as_str(), l.qty)).collect();
    // Patties: 9 + 40 due against a need of 50 → ⌈60⌉ − 49 = 11 more, in
    // packs of 10; buns: 40, in packs of 24.
    assert_eq!(lines, vec![("patty", 60), ("bun", 48)]);
    assert_eq!(request.rev, rev + 1, "one revision for the merge");
    assert_eq!(status(&inv, "c").0, Readiness::Ready);
}

#[test]
fn when_the_kitchen_is_too_late_the_limiting_ingredient_comes_from_a_store_that_can_spare_it() {
    let mut inv = stocked(&[("a", 70.0, 70.0), ("b", 55.0, 100.0), ("c", 100.0, 20.0)]);
    // Planned an hour before it starts: the kitchen delivers next at 7:00
    // on day 3.
    planned(
        &mut inv,
        &plan("plan-1", &["a", "b", "c"], Some(50.0), None),
        at(48 + 10, 0),
    )
    .expect("planned");
    assert!(inv.documents().0.is_empty(), "no request: it would come too late");
    let tr = proposed_to(&inv, "b").expect("b is nearest with buns to spare");
    let transfer = inv.transfer(&tr).expect("the transfer");
    // b keeps ⌈50 × 1.2⌉ = 60 for its own promotion day: 40 of the 48 c
    // wants.
    assert_eq!(
        (transfer.to.as_str(), transfer.sku.as_str(), transfer.qty),
        ("c", "bun", 40)
    );
    assert_eq!(
        inv.store_promotion_out(&id("c"), &p1()).expect("c").transfer.as_ref(),
        Some(&tr)
    );
    assert_eq!(status(&inv, "c").0, Readiness::Short, "proposed is not on its way");
    let accept = crate::Input::TransferAction {
        store: id("b"),
        transfer: tr.clone(),
        action: TransferAction::Accept,
        body: action("acc-1"),
    };
    through(&mut inv, accept, at(48 + 10, 5));
    assert_eq!(
        status(&inv, "c"),
        (
            Readiness::Ready,
            vec![cover("patty", 50, 100, 0), cover("bun", 50, 20, 40)]
        )
    );
    // b still covers its own day.
    assert_eq!(status(&inv, "b").1[1], cover("bun", 50, 100, 0));
    let (_, transfers) = inv.documents();
    assert_eq!(transfers.len(), 1, "one transfer");
}

#[test]
fn a_store_not_ready_while_it_runs_raises_promotion_at_risk_until_it_is_ready() {
    let mut inv = stocked(&[("b", 55.0, 100.0)]);
    let changes = planned(&mut inv, &plan("plan-1", &["b"], Some(50.0), None), at(9, 0)).expect("planned");
    assert!(
        alerts_of(&changes, AlertKind::PromotionAtRisk).is_empty(),
        "not running yet"
    );
    let changes = inv.tick(start());
    assert_eq!(
        alerts_of(&changes, AlertKind::PromotionAtRisk),
        vec![AlertState::Raised]
    );
    assert_eq!(inv.promotion(&p1()).expect("p1").state, PromotionState::Running);
    let alert = changes
        .alerts
        .iter()
        .find(|(_, a)| a.kind == AlertKind::PromotionAtRisk)
        .expect("alert");
    assert!(alert.1.message.contains("patty covers 110 %"), "{}", alert.1.message);
    // A delivery of patties: ready, cleared.
    let changes = stock(
        &mut inv,
        "b",
        "patty",
        StockKind::Receive,
        10.0,
        start() + MINUTE,
        "r2",
        None,
    );
    assert_eq!(
        alerts_of(&changes, AlertKind::PromotionAtRisk),
        vec![AlertState::Cleared]
    );
    assert_eq!(status(&inv, "b").0, Readiness::Ready);
}

#[test]
fn a_promotion_called_off_clears_its_alert_and_is_retired_a_day_later() {
    let mut inv = stocked(&[("b", 55.0, 100.0)]);
    planned(&mut inv, &plan("plan-1", &["b"], Some(50.0), None), at(9, 0)).expect("planned");
    inv.tick(start());
    let cancel = crate::Input::PromotionCancel {
        id: p1(),
        body: action("cancel-1"),
    };
    let changes = through(&mut inv, cancel.clone(), start() + MINUTE);
    assert_eq!(
        alerts_of(&changes, AlertKind::PromotionAtRisk),
        vec![AlertState::Cleared]
    );
    let hq = inv.promotion_out(&p1()).expect("still shown");
    assert_eq!(
        (hq.state, hq.rev, hq.by.as_str()),
        (PromotionState::Cancelled, 3, "someone")
    );
    let shown = inv.store_promotion_out(&id("b"), &p1()).expect("b");
    assert_eq!(
        (shown.state, shown.status),
        (PromotionState::Cancelled, Readiness::AtRisk),
        "as last judged"
    );
    // Calling it off again, or planning it anew, is refused.
    let again = inv.apply(&cancel, None, start() + 2 * MINUTE).expect_err("over");
    assert_eq!(again.code, dishsync_protocol::payload::ErrorCode::InvalidTransition);
    let anew = planned(
        &mut inv,
        &plan("plan-2", &["b"], Some(50.0), None),
        start() + 2 * MINUTE,
    )
    .expect_err("over");
    assert_eq!(anew.code, dishsync_protocol::payload::ErrorCode::InvalidTransition);
    // A day later it goes.
    let changes = inv.tick(start() + MINUTE + 24 * 60 * MINUTE - 1);
    assert!(inv.promotion(&p1()).is_some(), "shown for a day");
    assert!(changes.retired.is_empty());
    let changes = inv.tick(start() + MINUTE + 24 * 60 * MINUTE);
    assert!(inv.promotion(&p1()).is_none() && inv.readiness(&id("b"), &p1()).is_none());
    assert_eq!(changes.retired.len(), 2, "its document and b's");
}

#[test]
fn a_plan_is_checked_before_anything_is_applied() {
    let mut inv = stocked(&[("a", 70.0, 70.0)]);
    let refused = |inv: &mut Inventory, p: PromotionIn| planned(inv, &p, at(9, 0)).expect_err("refused");
    let code = dishsync_protocol::payload::ErrorCode::InvalidField;
    // An uplift needs a whole day of sales to multiply.
    let e = refused(&mut inv, plan("x1", &["a"], None, Some(2.0)));
    assert_eq!(e.code, code);
    assert!(e.message.contains("no whole day of sales"), "{}", e.message);
    assert_eq!(refused(&mut inv, plan("x2", &["a"], Some(5.0), Some(2.0))).code, code);
    assert_eq!(refused(&mut inv, plan("x3", &["a", "a"], Some(5.0), None)).code, code);
    let mut backwards = plan("x4", &["a"], Some(5.0), None);
    backwards.end = backwards.start;
    assert_eq!(refused(&mut inv, backwards).code, code);
    let e = refused(&mut inv, plan("x5", &["nowhere"], Some(5.0), None));
    assert_eq!(e.code, dishsync_protocol::payload::ErrorCode::UnknownStore);
    let e = refused(&mut inv, plan("x6", &["a"], Some(-1.0), None));
    assert_eq!(e.code, dishsync_protocol::payload::ErrorCode::BadQuantity);
    assert!(inv.promotion(&p1()).is_none(), "nothing applied");
}

#[test]
fn an_uplift_multiplies_the_usual_day_and_counts_once_against_the_usual_use() {
    let mut inv = stocked(&[("a", 400.0, 400.0)]);
    // Day 0: 20 burgers. The day ends and joins the history.
    sell(&mut inv, "a", 20, at(12, 0), "s1");
    inv.tick(at(24 + 9, 0));
    planned(&mut inv, &plan("plan-1", &["a"], None, Some(3.0)), at(24 + 9, 0)).expect("planned");
    let r = inv.readiness(&id("a"), &p1()).expect("a");
    // 3 × 20 = 60 a day; the usual 20 a day of patties and buns is in the
    // store's use already, the uplift adds 40: 60 in all.
    assert_eq!(r.portions_per_day, 60.0);
    assert_eq!(
        r.ingredients,
        vec![cover("patty", 60, 380, 0), cover("bun", 60, 380, 0)]
    );
}

#[test]
fn the_readiness_and_the_promotion_come_back_the_same_after_a_restore() {
    let mut inv = stocked(&[("a", 70.0, 70.0), ("c", 100.0, 20.0)]);
    planned(&mut inv, &plan("plan-1", &["a", "c"], Some(50.0), None), at(9, 0)).expect("planned");
    inv.tick(at(24 + 5, 1));
    let (back, _) = Inventory::restore(chain(), inv.states(), at(24 + 5, 2));
    assert_eq!(back.promotion(&p1()), inv.promotion(&p1()));
    for store in ["a", "c"] {
        assert_eq!(
            back.readiness(&id(store), &p1()),
            inv.readiness(&id(store), &p1()),
            "{store}"
        );
    }
    assert_eq!(back.promotion_out(&p1()), inv.promotion_out(&p1()));
}

#[test]
fn every_input_gives_each_document_it_changes_one_revision() {
    let mut inv = stocked(&[("a", 70.0, 70.0), ("c", 100.0, 20.0)]);
    planned(&mut inv, &plan("plan-1", &["a", "c"], Some(50.0), None), at(9, 0)).expect("planned");
    let revs = |inv: &Inventory| {
        (
            inv.promotion(&p1()).expect("p1").rev,
            inv.readiness(&id("a"), &p1()).expect("a").rev,
            inv.readiness(&id("c"), &p1()).expect("c").rev,
        )
    };
    assert_eq!(revs(&inv), (1, 1, 1));
    // A sale at a changes a's cover, and so the HQ document; c is as it was.
    let changes = sell(&mut inv, "a", 2, at(10, 0), "s1");
    assert!(changes.publish.contains(&Document::Readiness(id("a"), p1())));
    assert!(!changes.publish.contains(&Document::Readiness(id("c"), p1())));
    assert_eq!(revs(&inv), (2, 2, 1));
    // Planned anew for c alone: a's readiness goes, the promotion moves once.
    let changes = planned(&mut inv, &plan("plan-2", &["c"], Some(40.0), None), at(10, 1)).expect("planned anew");
    assert!(inv.readiness(&id("a"), &p1()).is_none());
    assert!(changes
        .retired
        .iter()
        .any(|r| matches!(r, crate::planning::Retired::Readiness { .. })));
    assert_eq!(
        (
            inv.promotion(&p1()).expect("p1").rev,
            inv.readiness(&id("c"), &p1()).expect("c").rev
        ),
        (3, 2)
    );
}
