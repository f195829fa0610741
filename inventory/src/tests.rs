//! Table-driven and property tests of the core, with no I/O and no clock.

use super::catalog::{CatalogError, Dish, RecipeLine, Sku, StockParams, Store};
use super::*;
use std::sync::Arc;

use dishsync_protocol::payload::{
    DishAvailabilityOut, DishStatus, ErrorCode, LevelState, OverrideIn, OverrideStatus, SaleIn, StockEventIn,
    Timestamp, WeightIn,
};
use dishsync_protocol::payload::{SaleLine, StockKind};
use dishsync_protocol::{BaseUnit, Unit};
use dishsync_protocol::{DeviceId, DishId, Millis, SkuId, StoreId};
use proptest::prelude::*;

fn catalog() -> Arc<Catalog> {
    catalog_opening(&[])
}

/// The test catalog, store s1 opening with `opening` (SKU, base units).
fn catalog_opening(opening: &[(&str, i64)]) -> Arc<Catalog> {
    let sku = |name: &str, unit| Sku {
        id: id(name),
        name: name.into(),
        unit,
        pack: 1,
        shelf_life_days: None,
    };
    let skus = vec![
        sku("bun", BaseUnit::Pcs),
        sku("beef", BaseUnit::G),
        sku("cola", BaseUnit::Ml),
    ];
    let line = |sku: &str, per_portion| RecipeLine {
        sku: id(sku),
        per_portion,
    };
    let dishes = vec![
        Dish {
            id: id("burger"),
            name: "Burger".into(),
            low_mark: 2,
            recipe: vec![line("bun", 1), line("beef", 150)],
            category: None,
            price: None,
            external: Default::default(),
        },
        Dish {
            id: id("double"),
            name: "Double".into(),
            low_mark: 1,
            recipe: vec![line("bun", 1), line("beef", 300)],
            category: None,
            price: None,
            external: Default::default(),
        },
        Dish {
            id: id("soda"),
            name: "Soda".into(),
            low_mark: 0,
            recipe: vec![line("cola", 330)],
            category: None,
            price: None,
            external: Default::default(),
        },
    ];
    let params = StockParams {
        reorder_point: 10,
        par: 40,
        opening: None,
        unit_cost: None,
    };
    let stock = ["bun", "beef", "cola"]
        .iter()
        .map(|s| {
            let opening = opening.iter().find(|(o, _)| o == s).map(|(_, q)| *q);
            (id(s), StockParams { opening, ..params })
        })
        .collect();
    let stores = vec![Store {
        id: id("s1"),
        name: "S1".into(),
        menu: vec![id("burger"), id("double"), id("soda")],
        stock,
        training: false,
    }];
    Arc::new(Catalog::new(skus, dishes, stores).expect("valid catalog"))
}

const T0: Millis = 1_700_000_000_000;

fn ev(eid: &str, kind: StockKind, qty: f64, unit: Unit, at: Millis) -> StockEventIn {
    StockEventIn {
        id: id(eid),
        kind,
        qty,
        unit,
        at: Timestamp(at),
        device: id("scale-1"),
        reference: None,
        reason: (kind == StockKind::Waste).then(|| "dropped".into()),
    }
}

fn sale(eid: &str, lines: &[(&str, u32)], at: Millis) -> SaleIn {
    SaleIn {
        id: id(eid),
        lines: Some(
            lines
                .iter()
                .map(|(d, p)| SaleLine {
                    dish: id(d),
                    portions: *p,
                })
                .collect(),
        ),
        void: None,
        at: Some(Timestamp(at)),
        device: Some(id("pos-1")),
        guarded: false,
    }
}

fn void(eid: &str, of: &str) -> SaleIn {
    SaleIn {
        id: id(eid),
        lines: None,
        void: Some(id(of)),
        at: None,
        device: Some(id("pos-1")),
        guarded: false,
    }
}

fn stocked() -> Inventory {
    let mut inv = Inventory::new(catalog(), T0);
    let s1 = id("s1");
    inv.apply_stock(&s1, &id("bun"), &ev("r1", StockKind::Receive, 10.0, Unit::Pcs, T0), T0)
        .expect("bun");
    inv.apply_stock(&s1, &id("beef"), &ev("r2", StockKind::Receive, 1.0, Unit::Kg, T0), T0)
        .expect("beef");
    inv
}

fn qty(inv: &Inventory, sku: &str) -> i64 {
    inv.level_out(&id("s1"), &id(sku)).expect("level").qty
}

fn dish(inv: &Inventory, d: &str) -> DishAvailabilityOut {
    inv.dish_out(&id("s1"), &id(d)).expect("dish")
}

#[test]
fn fresh_chain_is_sold_out_at_rev_1() {
    let inv = Inventory::new(catalog(), T0);
    let d = dish(&inv, "burger");
    assert_eq!((d.status, d.portions, d.rev), (DishStatus::SoldOut, 0, 1));
    let l = inv.level_out(&id("s1"), &id("beef")).expect("level");
    assert_eq!((l.qty, l.state, l.rev), (0, LevelState::Out, 1));
}

#[test]
fn portions_and_limiting_ingredient() {
    let inv = stocked();
    // 10 buns, 1000 g beef: burger = min(10, 6) = 6 limited by beef.
    let d = dish(&inv, "burger");
    assert_eq!(
        (d.portions, d.limited_by.as_ref().map(|s| s.as_str())),
        (6, Some("beef"))
    );
    assert_eq!(d.status, DishStatus::Available);
    let d = dish(&inv, "double");
    assert_eq!(d.portions, 3);
    assert_eq!(dish(&inv, "soda").status, DishStatus::SoldOut);
}

#[test]
fn stock_event_table() {
    use StockKind::*;
    // (event, expected beef level after `stocked()`'s 1000 g, or the error code)
    let cases: Vec<(StockEventIn, Result<i64, ErrorCode>)> = vec![
        (ev("a", Receive, 0.5, Unit::Kg, T0), Ok(1500)),
        (ev("a", Consume, 200.0, Unit::G, T0), Ok(800)),
        (ev("a", Waste, 100.0, Unit::G, T0), Ok(900)),
        (ev("a", TransferIn, 1.0, Unit::Kg, T0), Ok(2000)),
        (ev("a", TransferOut, 1.0, Unit::Kg, T0), Ok(0)),
        (ev("a", Count, 420.0, Unit::G, T0 + 1), Ok(420)),
        (ev("a", Adjust, -30.0, Unit::G, T0), Ok(970)),
        (ev("a", Consume, 2.0, Unit::Kg, T0), Ok(-1000)),
        (ev("a", Receive, 1.0, Unit::L, T0), Err(ErrorCode::WrongUnit)),
        (ev("a", Receive, 1.0, Unit::Pcs, T0), Err(ErrorCode::WrongUnit)),
        (ev("a", Receive, -1.0, Unit::G, T0), Err(ErrorCode::BadQuantity)),
        (ev("a", Receive, 0.0, Unit::G, T0), Err(ErrorCode::BadQuantity)),
        (ev("a", Receive, 0.4, Unit::G, T0), Err(ErrorCode::BadQuantity)),
        (ev("a", Count, -1.0, Unit::G, T0), Err(ErrorCode::BadQuantity)),
        (ev("a", Adjust, 0.0, Unit::G, T0), Err(ErrorCode::BadQuantity)),
        (
            StockEventIn {
                reason: None,
                ..ev("a", Waste, 1.0, Unit::G, T0)
            },
            Err(ErrorCode::InvalidField),
        ),
    ];
    for (event, want) in cases {
        let mut inv = stocked();
        let before = inv.clone();
        let got = inv
            .apply_stock(&id("s1"), &id("beef"), &event, T0 + 5)
            .map(|_| qty(&inv, "beef"));
        match want {
            Ok(level) => assert_eq!(got, Ok(level), "{event:?}"),
            Err(code) => {
                assert_eq!(got.map_err(|r| r.code), Err(code), "{event:?}");
                assert_eq!(
                    inv.level_out(&id("s1"), &id("beef")),
                    before.level_out(&id("s1"), &id("beef"))
                );
            }
        }
    }
}

#[test]
fn unknown_names_are_rejected() {
    let mut inv = stocked();
    let e = ev("x", StockKind::Receive, 1.0, Unit::G, T0);
    let err = inv.apply_stock(&id("nowhere"), &id("beef"), &e, T0).expect_err("store");
    assert_eq!(err.code, ErrorCode::UnknownStore);
    let err = inv.apply_stock(&id("s1"), &id("caviar"), &e, T0).expect_err("sku");
    assert_eq!(err.code, ErrorCode::UnknownSku);
    let err = inv
        .apply_sale(&id("s1"), &sale("s", &[("pizza", 1)], T0), T0)
        .expect_err("dish");
    assert_eq!(err.code, ErrorCode::UnknownDish);
}

#[test]
fn sale_sells_out_and_void_restores_exactly() {
    let mut inv = stocked();
    let rev = dish(&inv, "burger").rev;
    let out = inv
        .apply_sale(
            &id("s1"),
            &sale("s1", &[("burger", 4), ("double", 1)], T0 + 10),
            T0 + 10,
        )
        .expect("sale");
    // 4×150 + 300 = 900 g beef, 5 buns.
    assert_eq!((qty(&inv, "beef"), qty(&inv, "bun")), (100, 5));
    let d = dish(&inv, "burger");
    assert_eq!((d.status, d.portions, d.rev), (DishStatus::SoldOut, 0, rev + 1));
    let (sale_id, record) = out.sale.expect("sale record");
    assert_eq!(sale_id.as_str(), "s1");
    assert_eq!(out.entries.len(), 2);

    let out = inv
        .apply_void(&id("s1"), &void("v1", "s1"), Some(&record), T0 + 20)
        .expect("void");
    assert_eq!((qty(&inv, "beef"), qty(&inv, "bun")), (1000, 10));
    assert_eq!(dish(&inv, "burger").status, DishStatus::Available);
    let (_, voided) = out.sale.expect("updated record");
    assert_eq!(voided.voided_by.as_ref().map(|v| v.as_str()), Some("v1"));

    let again = inv
        .apply_void(&id("s1"), &void("v2", "s1"), Some(&voided), T0 + 30)
        .expect_err("twice");
    assert_eq!(again.code, ErrorCode::BadVoid);
    let unknown = inv
        .apply_void(&id("s1"), &void("v3", "nope"), None, T0 + 30)
        .expect_err("unknown");
    assert_eq!(unknown.code, ErrorCode::BadVoid);
    assert_eq!((qty(&inv, "beef"), qty(&inv, "bun")), (1000, 10));
}

#[test]
fn sale_validation() {
    let mut inv = stocked();
    let bad = [
        sale("a", &[], T0),
        sale("a", &[("burger", 0)], T0),
        SaleIn {
            at: None,
            ..sale("a", &[("burger", 1)], T0)
        },
        SaleIn {
            device: None,
            ..sale("a", &[("burger", 1)], T0)
        },
        SaleIn {
            void: Some(id("x")),
            ..sale("a", &[("burger", 1)], T0)
        },
    ];
    for s in bad {
        assert!(inv.apply_sale(&id("s1"), &s, T0).is_err(), "{s:?}");
    }
    assert_eq!(qty(&inv, "beef"), 1000);
}

#[test]
fn low_mark() {
    let mut inv = stocked();
    inv.apply_sale(&id("s1"), &sale("s", &[("burger", 4)], T0), T0)
        .expect("sale");
    // 400 g beef left: 2 burgers ≤ low mark 2.
    assert_eq!(dish(&inv, "burger").status, DishStatus::Low);
}

#[test]
fn override_wins_until_released_or_until() {
    let mut inv = stocked();
    let ov = |eid: &str, status, until: Option<Millis>| OverrideIn {
        id: id(eid),
        status,
        by: id("chef-anna"),
        until: until.map(Timestamp),
        note: None,
    };
    inv.apply_override(&id("s1"), &id("burger"), &ov("o1", OverrideStatus::SoldOut, None), T0)
        .expect("86");
    let d = dish(&inv, "burger");
    assert_eq!((d.status, d.portions), (DishStatus::SoldOut, 6));
    assert!(d.override_.is_some());
    // Stock arriving does not lift an 86.
    inv.apply_stock(
        &id("s1"),
        &id("beef"),
        &ev("r", StockKind::Receive, 5.0, Unit::Kg, T0),
        T0,
    )
    .expect("recv");
    assert_eq!(dish(&inv, "burger").status, DishStatus::SoldOut);
    inv.apply_override(&id("s1"), &id("burger"), &ov("o2", OverrideStatus::Auto, None), T0)
        .expect("release");
    assert_eq!(dish(&inv, "burger").status, DishStatus::Available);

    let err = inv
        .apply_override(
            &id("s1"),
            &id("burger"),
            &ov("o3", OverrideStatus::SoldOut, Some(T0 - 1)),
            T0,
        )
        .expect_err("past until");
    assert_eq!(err.code, ErrorCode::InvalidField);

    inv.apply_override(
        &id("s1"),
        &id("burger"),
        &ov("o4", OverrideStatus::SoldOut, Some(T0 + 1000)),
        T0,
    )
    .expect("timed 86");
    assert!(inv.expire_overrides(T0 + 999).is_empty());
    assert_eq!(dish(&inv, "burger").status, DishStatus::SoldOut);
    let changes = inv.expire_overrides(T0 + 1000);
    assert!(changes.publish.contains(&Document::Dish(id("s1"), id("burger"))));
    assert!(changes.publish.contains(&Document::Menu(id("s1"))));
    assert_eq!(dish(&inv, "burger").status, DishStatus::Available);
}

/// A timed 86 lapses on time after a restart, and a clock tick before any
/// lapse is due changes nothing; two 86es lapse each at their own time.
#[test]
fn timed_86es_lapse_on_time_across_a_restart() {
    let mut inv = stocked();
    let timed = |eid: &str, until: Millis| OverrideIn {
        id: id(eid),
        status: OverrideStatus::SoldOut,
        by: id("chef-anna"),
        until: Some(Timestamp(until)),
        note: None,
    };
    inv.apply_override(&id("s1"), &id("burger"), &timed("o1", T0 + 2000), T0)
        .expect("86");
    inv.apply_override(&id("s1"), &id("double"), &timed("o2", T0 + 1000), T0)
        .expect("86");
    let (mut back, _) = Inventory::restore(catalog(), snapshot(&inv), T0 + 10);
    assert!(back.expire_overrides(T0 + 999).is_empty());
    let first = back.expire_overrides(T0 + 1000);
    assert!(first.publish.contains(&Document::Dish(id("s1"), id("double"))));
    assert!(!first.publish.contains(&Document::Dish(id("s1"), id("burger"))));
    assert!(back.expire_overrides(T0 + 1999).is_empty());
    assert_eq!(dish(&back, "burger").status, DishStatus::SoldOut);
    let second = back.expire_overrides(T0 + 2000);
    assert!(second.publish.contains(&Document::Dish(id("s1"), id("burger"))));
    assert!(dish(&back, "burger").override_.is_none());
    assert!(back.expire_overrides(T0 + 100_000).is_empty(), "nothing left to lapse");
}

/// An 86 on a dish the stock has already sold out is shown all the same:
/// a new revision, the override with who, until and note in the per-dish
/// document and in the whole-menu entry; its release and its lapse too.
#[test]
fn an_override_of_a_dish_sold_out_by_stock_is_shown() {
    let mut inv = Inventory::new(catalog(), T0);
    let s1: StoreId = id("s1");
    let before = dish(&inv, "burger");
    assert_eq!((before.status, before.portions), (DishStatus::SoldOut, 0));
    let eighty_six = OverrideIn {
        id: id("o1"),
        status: OverrideStatus::SoldOut,
        by: id("chef-anna"),
        until: Some(Timestamp(T0 + 1000)),
        note: Some("fryer down".into()),
    };
    let outcome = inv.apply_override(&s1, &id("burger"), &eighty_six, T0).expect("86");
    assert!(outcome
        .changes
        .publish
        .contains(&Document::Dish(s1.clone(), id("burger"))));
    let d = dish(&inv, "burger");
    assert_eq!(d.rev, before.rev + 1);
    let shown = d.override_.clone().expect("the override is shown");
    assert_eq!(shown.by.as_str(), "chef-anna");
    assert_eq!(shown.note.as_deref(), Some("fryer down"));
    assert_eq!(shown.until, Some(Timestamp(T0 + 1000)));
    let menu = inv.menu_out(&s1).expect("menu");
    let entry = menu.dishes[&id::<DishId>("burger")].clone();
    assert_eq!(
        entry.clone().into_dish(s1.clone(), id("burger")),
        d,
        "one shape for a dish"
    );
    assert_eq!(entry.override_, Some(shown));

    // The lapse of its `until` is a change too.
    let lapsed = inv.expire_overrides(T0 + 1000);
    assert!(lapsed.publish.contains(&Document::Dish(s1.clone(), id("burger"))));
    let d = dish(&inv, "burger");
    assert_eq!((d.override_, d.rev), (None, before.rev + 2));
    // As is a release of an 86 without `until`.
    let untimed = OverrideIn {
        until: None,
        id: id("o2"),
        ..eighty_six
    };
    inv.apply_override(&s1, &id("burger"), &untimed, T0 + 2000).expect("86");
    let release = OverrideIn {
        id: id("o3"),
        status: OverrideStatus::Auto,
        by: id("chef-anna"),
        until: None,
        note: None,
    };
    inv.apply_override(&s1, &id("burger"), &release, T0 + 3000)
        .expect("release");
    let d = dish(&inv, "burger");
    assert_eq!((d.override_, d.rev), (None, before.rev + 4));
}

#[test]
fn revs_move_only_on_change() {
    let mut inv = stocked();
    let soda_rev = dish(&inv, "soda").rev;
    let menu_rev = inv.menu_out(&id("s1")).expect("menu").rev;
    let out = inv
        .apply_stock(
            &id("s1"),
            &id("bun"),
            &ev("b", StockKind::Receive, 1.0, Unit::Pcs, T0),
            T0,
        )
        .expect("bun");
    // Beef still binds both burger dishes: nothing visible changed.
    assert!(out.changes.dishes().next().is_none());
    assert!(out.changes.publish.iter().all(|d| !matches!(d, Document::Menu(_))));
    assert_eq!(out.changes.levels().count(), 1);
    assert_eq!(dish(&inv, "soda").rev, soda_rev);
    inv.apply_stock(
        &id("s1"),
        &id("beef"),
        &ev("c", StockKind::Consume, 150.0, Unit::G, T0),
        T0,
    )
    .expect("beef");
    assert_eq!(inv.menu_out(&id("s1")).expect("menu").rev, menu_rev + 1);
}

#[test]
fn a_change_that_moves_nothing_is_persisted_but_not_published() {
    let mut inv = stocked();
    let (s1, beef): (StoreId, SkuId) = (id("s1"), id("beef"));
    let rev = inv.level_out(&s1, &beef).expect("level").rev;
    // A count equal to the level: nothing to publish, but the count's time
    // must be kept, or a replayed older delta would later move the level.
    let out = inv
        .apply_stock(&s1, &beef, &ev("c", StockKind::Count, 1.0, Unit::Kg, T0 + 100), T0)
        .expect("count");
    assert!(out.changes.persist.contains(&Document::Sku(s1.clone(), beef.clone())));
    assert!(out.changes.levels().next().is_none() && out.changes.dishes().next().is_none());
    let out = inv
        .apply_stock(&s1, &beef, &ev("late", StockKind::Consume, 300.0, Unit::G, T0 + 50), T0)
        .expect("late");
    assert!(!out.entries[0].moved);
    assert!(out.changes.levels().next().is_none());
    assert_eq!(inv.level_out(&s1, &beef).expect("level").rev, rev);
}

/// Everything the shell persists of `inv`, as a restart reads it back.
fn snapshot(inv: &Inventory) -> Vec<Restored> {
    let mut saved = Vec::new();
    for store in inv.catalog().clone().stores() {
        let s = &store.id;
        for sku in store.stock.keys() {
            saved.push(Restored::Sku(
                s.clone(),
                sku.clone(),
                inv.sku_state(s, sku).expect("sku").clone(),
            ));
        }
        for d in &store.menu {
            saved.push(Restored::Dish(
                s.clone(),
                d.clone(),
                inv.dish_state(s, d).expect("dish").clone(),
            ));
        }
        saved.push(Restored::Menu(s.clone(), inv.menu_state(s).expect("menu")));
        saved.push(Restored::Plan(s.clone(), inv.plan_state(s).expect("plan").clone()));
    }
    let (requests, transfers) = inv.documents();
    saved.extend(
        requests
            .iter()
            .filter_map(|r| inv.request(r))
            .cloned()
            .map(Restored::Request),
    );
    saved.extend(
        transfers
            .iter()
            .filter_map(|t| inv.transfer(t))
            .cloned()
            .map(Restored::Transfer),
    );
    saved.push(Restored::Chain(inv.chain_state()));
    saved
}

/// The first start books the opening stock and raises a request for every
/// level at or below its reorder point; a restart books nothing again and
/// raises nothing twice.
#[test]
fn a_start_opens_stores_once_and_evaluates_every_level() {
    let cat = catalog_opening(&[("bun", 30), ("cola", 5_000)]);
    let (mut inv, _) = Inventory::restore(Arc::clone(&cat), Vec::new(), T0);
    let started = inv.start(T0);
    let booked: Vec<(String, i64)> = started
        .entries
        .iter()
        .map(|e| (e.event.to_string(), e.amount))
        .collect();
    assert_eq!(booked, [("opening:bun".into(), 30), ("opening:cola".into(), 5_000)]);
    assert_eq!(qty(&inv, "bun"), 30);
    // beef opens at 0, at or below its reorder point of 10: one request.
    let open: Vec<_> = started.changes.requests().filter_map(|r| inv.request_out(r)).collect();
    assert_eq!(open.len(), 1, "{open:?}");
    let lines: Vec<&str> = open[0].lines.iter().map(|l| l.sku.as_str()).collect();
    assert_eq!(lines, ["beef"]);
    assert!(started
        .changes
        .alerts
        .iter()
        .any(|(_, a)| a.sku.as_ref().is_some_and(|s| s.as_str() == "beef")));

    // A restart: nothing is booked again, nothing raised twice.
    let (mut back, _) = Inventory::restore(Arc::clone(&cat), snapshot(&inv), T0 + 60_000);
    let again = back.start(T0 + 60_000);
    assert!(
        again.entries.is_empty(),
        "the opening stock is booked once: {:?}",
        again.entries
    );
    assert!(
        again.changes.requests().next().is_none() && again.changes.alerts.is_empty(),
        "{:?}",
        again.changes
    );
    assert_eq!(qty(&back, "bun"), 30);
    assert_eq!(back.documents().0.len(), 1);
}

#[test]
fn restore_reproduces_state_and_reports_nothing_new() {
    let mut inv = stocked();
    inv.apply_sale(&id("s1"), &sale("s", &[("burger", 1)], T0), T0)
        .expect("sale");
    let s1: StoreId = id("s1");
    let saved = snapshot(&inv);
    let (back, changes) = Inventory::restore(catalog(), saved, T0 + 99);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(back.dish_out(&s1, &id("burger")), inv.dish_out(&s1, &id("burger")));
    assert_eq!(back.menu_out(&s1), inv.menu_out(&s1));
}

/// The test catalog as a reload changes it: the burger takes 200 g of
/// beef, the soda leaves the menu, a cheeseburger (with a new SKU, cheese)
/// joins it, and a second store opens with 6 buns.
fn catalog_reloaded() -> Arc<Catalog> {
    let old = catalog();
    let mut skus: Vec<Sku> = old.skus().cloned().collect();
    skus.push(Sku {
        id: id("cheese"),
        name: "cheese".into(),
        unit: BaseUnit::Pcs,
        pack: 1,
        shelf_life_days: None,
    });
    let mut dishes: Vec<Dish> = old.dishes().cloned().collect();
    for d in &mut dishes {
        if d.id == id::<DishId>("burger") {
            d.recipe[1].per_portion = 200;
        }
    }
    dishes.push(Dish {
        id: id("cheeseburger"),
        name: "Cheeseburger".into(),
        low_mark: 0,
        recipe: vec![
            RecipeLine {
                sku: id("bun"),
                per_portion: 1,
            },
            RecipeLine {
                sku: id("cheese"),
                per_portion: 1,
            },
        ],
        category: None,
        price: None,
        external: Default::default(),
    });
    let mut s1 = old.store(&id("s1")).expect("s1").clone();
    s1.menu = vec![id("burger"), id("double"), id("cheeseburger")];
    let params = StockParams {
        reorder_point: 10,
        par: 40,
        opening: None,
        unit_cost: None,
    };
    s1.stock.insert(id("cheese"), params);
    let mut s2 = s1.clone();
    s2.id = id("s2");
    s2.name = "S2".into();
    s2.stock.insert(
        id("bun"),
        StockParams {
            opening: Some(6),
            ..params
        },
    );
    Arc::new(Catalog::new(skus, dishes, vec![s1, s2]).expect("valid catalog"))
}

/// A reload keeps every level and the history behind it, recomputes the
/// dish whose recipe changed, adds the new dish and store as a start would,
/// clears what left the menu, and republishes the catalog documents.
#[test]
fn a_reload_keeps_levels_and_runs_on_the_new_catalog() {
    let mut inv = stocked_and_sold();
    let s1: StoreId = id("s1");
    assert_eq!(dish(&inv, "burger").portions, 5, "850 g of beef at 150 g");
    let menu_rev = inv.menu_out(&s1).expect("menu").rev;
    let levels_before: Vec<_> = ["bun", "beef", "cola"]
        .iter()
        .map(|s| inv.level_out(&s1, &id(s)).expect("level"))
        .collect();

    let out = inv.reconfigure(catalog_reloaded(), T0 + 10);

    for before in &levels_before {
        assert_eq!(
            inv.level_out(&s1, &before.sku).as_ref(),
            Some(before),
            "a level is untouched"
        );
    }
    let burger = dish(&inv, "burger");
    assert_eq!(burger.portions, 4, "850 g of beef at 200 g");
    assert!(out.changes.publish.contains(&Document::Dish(s1.clone(), id("burger"))));
    assert!(
        !out.changes.publish.contains(&Document::Dish(s1.clone(), id("double"))),
        "an unchanged dish is not published again"
    );
    let cheeseburger = dish(&inv, "cheeseburger");
    assert_eq!((cheeseburger.portions, cheeseburger.status), (0, DishStatus::SoldOut));
    assert_eq!(qty(&inv, "cheese"), 0);
    assert!(inv.dish_out(&s1, &id("soda")).is_none());
    assert!(out.changes.retired.contains(&Retired::Dish {
        store: s1.clone(),
        dish: id("soda"),
    }));
    let menu = inv.menu_out(&s1).expect("menu");
    assert!(menu.rev > menu_rev);
    assert!(
        menu.dishes.contains_key(&id::<DishId>("cheeseburger")) && !menu.dishes.contains_key(&id::<DishId>("soda"))
    );
    assert!(out.changes.publish.contains(&Document::Catalog(s1.clone())));
    // The new store opens with its opening stock, booked in the ledger.
    let s2: StoreId = id("s2");
    assert_eq!(inv.level_out(&s2, &id("bun")).expect("s2 bun").qty, 6);
    assert_eq!(out.entries.len(), 1);
    assert!(out.changes.publish.contains(&Document::Catalog(s2.clone())));
    // Exactly as a restart with the new configuration.
    let (mut restarted, _) = Inventory::restore(catalog_reloaded(), snapshot(&stocked_and_sold()), T0 + 10);
    restarted.start(T0 + 10);
    for store in [&s1, &s2] {
        for sku in ["bun", "beef", "cola", "cheese"] {
            assert_eq!(
                restarted.level_out(store, &id(sku)).map(|l| (l.qty, l.state)),
                inv.level_out(store, &id(sku)).map(|l| (l.qty, l.state))
            );
        }
        for d in ["burger", "double", "soda", "cheeseburger"] {
            assert_eq!(
                restarted.dish_out(store, &id(d)).map(|a| (a.portions, a.status)),
                inv.dish_out(store, &id(d)).map(|a| (a.portions, a.status))
            );
        }
    }
    // A second reload of the same catalog changes nothing.
    let again = inv.reconfigure(catalog_reloaded(), T0 + 20);
    assert!(again.entries.is_empty());
    assert!(again.changes.levels().next().is_none() && again.changes.dishes().next().is_none());
    assert!(again.changes.retired.is_empty());
}

fn stocked_and_sold() -> Inventory {
    let mut inv = stocked();
    inv.apply_sale(&id("s1"), &sale("s", &[("burger", 1)], T0 + 1), T0 + 1)
        .expect("sale");
    inv
}

/// `states` is what the shell persists: a restore from it is the same
/// chain.
#[test]
fn states_restore_the_same_chain() {
    let inv = stocked_and_sold();
    let s1: StoreId = id("s1");
    let (from_states, changes) = Inventory::restore(catalog(), inv.states(), T0 + 5);
    let (from_snapshot, _) = Inventory::restore(catalog(), snapshot(&inv), T0 + 5);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(from_states.menu_out(&s1), from_snapshot.menu_out(&s1));
    for sku in ["bun", "beef", "cola"] {
        assert_eq!(from_states.level_out(&s1, &id(sku)), inv.level_out(&s1, &id(sku)));
    }
}

proptest! {
    /// portions = min over the recipe of ⌊max(stock, 0) ÷ per portion⌋.
    #[test]
    fn portions_are_min_of_floor(bun in -5i64..50, beef in -500i64..5000) {
        let mut inv = Inventory::new(catalog(), T0);
        let s1: StoreId = id("s1");
        inv.apply_stock(&s1, &id("bun"), &ev("c1", StockKind::Count, 0.0, Unit::Pcs, T0), T0).expect("count");
        inv.apply_stock(&s1, &id("beef"), &ev("c2", StockKind::Count, 0.0, Unit::G, T0), T0).expect("count");
        if bun != 0 {
            inv.apply_stock(&s1, &id("bun"), &ev("a1", StockKind::Adjust, bun as f64, Unit::Pcs, T0), T0).expect("adj");
        }
        if beef != 0 {
            inv.apply_stock(&s1, &id("beef"), &ev("a2", StockKind::Adjust, beef as f64, Unit::G, T0), T0).expect("adj");
        }
        // One bun and 150 g of beef per burger.
        let want = bun.max(0).min(beef.max(0) / 150) as u64;
        prop_assert_eq!(dish(&inv, "burger").portions, want);
        prop_assert_eq!(dish(&inv, "burger").status == DishStatus::SoldOut, want == 0);
    }

    /// A void restores exactly what its sale took, whatever else happened
    /// in between.
    #[test]
    fn void_restores_exactly(
        burgers in 1u32..20, doubles in 0u32..5, between in -400i64..400
    ) {
        let mut inv = stocked();
        let mut lines = vec![("burger", burgers)];
        if doubles > 0 { lines.push(("double", doubles)); }
        let out = inv.apply_sale(&id("s1"), &sale("s", &lines, T0 + 1), T0 + 1).expect("sale");
        if between != 0 {
            inv.apply_stock(&id("s1"), &id("beef"), &ev("adj", StockKind::Adjust, between as f64, Unit::G, T0 + 2), T0 + 2)
                .expect("adjust");
        }
        let (_, record) = out.sale.expect("record");
        inv.apply_void(&id("s1"), &void("v", "s"), Some(&record), T0 + 3).expect("void");
        prop_assert_eq!(qty(&inv, "beef"), 1000 + between);
        prop_assert_eq!(qty(&inv, "bun"), 10);
    }
}

fn reading(grams: i64, stable: bool, at: Millis) -> WeightIn {
    WeightIn {
        grams,
        at: Timestamp(at),
        stable,
    }
}

/// s1's catalog with scale-1 under the beef (a 350 g tray, 10 g deadband)
/// and scale-2 under the buns (60 g each, no container).
fn scales() -> Arc<Catalog> {
    let binding = |sku: &str, tare_grams, piece_grams, deadband| catalog::ScaleBinding {
        sku: id(sku),
        tare_grams,
        piece_grams,
        deadband,
    };
    let mut planning = catalog::Planning::default();
    planning.scales.insert(
        id("s1"),
        [
            (id("scale-1"), binding("beef", 350, None, 10)),
            (id("scale-2"), binding("bun", 0, Some(60), 1)),
        ]
        .into_iter()
        .collect(),
    );
    Arc::new((*catalog()).clone().with_planning(planning).expect("valid scales"))
}

#[test]
fn stable_readings_of_a_bound_scale_count_the_sku() {
    let mut inv = Inventory::new(scales(), T0);
    let (s1, scale1, scale2): (StoreId, DeviceId, DeviceId) = (id("s1"), id("scale-1"), id("scale-2"));
    inv.apply_stock(&s1, &id("bun"), &ev("r1", StockKind::Receive, 10.0, Unit::Pcs, T0), T0)
        .expect("bun");
    inv.apply_stock(&s1, &id("beef"), &ev("r2", StockKind::Receive, 1.0, Unit::Kg, T0), T0)
        .expect("beef");
    let apply = |inv: &mut Inventory, device: &DeviceId, r: WeightIn, eid: &str| {
        inv.apply_reading(&s1, device, &r, &id(eid), T0 + 1)
            .expect("a reading is never refused here")
    };

    // 1,355 g on the 350 g tray is 1,005 g of beef: 5 g from the level, noise.
    assert!(apply(&mut inv, &scale1, reading(1_355, true, T0 + 1), "w1").is_none());
    // Moving, lifted off, or an unbound scale: nothing about stock.
    assert!(apply(&mut inv, &scale1, reading(2_000, false, T0 + 2), "w2").is_none());
    assert!(apply(&mut inv, &scale1, reading(120, true, T0 + 3), "w3").is_none());
    assert!(apply(&mut inv, &id("scale-9"), reading(5_000, true, T0 + 4), "w4").is_none());
    assert_eq!(qty(&inv, "beef"), 1_000);

    // 1,250 g is 900 g of beef: a count, in the ledger under the reading's id.
    let outcome = apply(&mut inv, &scale1, reading(1_250, true, T0 + 5), "w5").expect("a count");
    assert_eq!(qty(&inv, "beef"), 900);
    assert_eq!(outcome.entries.len(), 1);
    let line = &outcome.entries[0];
    assert_eq!(
        (line.event.as_str(), line.kind, line.amount, line.at),
        ("w5", EntryKind::Stock(StockKind::Count.into()), 900, T0 + 5)
    );
    assert_eq!(dish(&inv, "burger").portions, 6, "900 g / 150 g");

    // Buns by weight: 545 g is 9.08 buns → 9; 605 g is 10.08 → 10.
    assert!(
        apply(&mut inv, &scale2, reading(605, true, T0 + 6), "w6").is_none(),
        "10 already"
    );
    apply(&mut inv, &scale2, reading(545, true, T0 + 7), "w7").expect("9 buns");
    assert_eq!(qty(&inv, "bun"), 9);
}

#[test]
fn a_scale_binding_must_fit_the_sku() {
    let bind = |sku: &str, piece_grams, deadband| {
        let mut planning = catalog::Planning::default();
        planning.scales.insert(
            id("s1"),
            [(
                id::<DeviceId>("scale-1"),
                catalog::ScaleBinding {
                    sku: id(sku),
                    tare_grams: 0,
                    piece_grams,
                    deadband,
                },
            )]
            .into_iter()
            .collect(),
        );
        (*catalog()).clone().with_planning(planning)
    };
    assert!(bind("beef", None, 5).is_ok());
    assert!(bind("bun", Some(60), 1).is_ok());
    assert!(matches!(bind("cola", None, 5), Err(CatalogError::Scale { .. })), "ml");
    assert!(
        matches!(bind("bun", None, 1), Err(CatalogError::Scale { .. })),
        "pieces need a weight"
    );
    assert!(matches!(bind("beef", Some(60), 5), Err(CatalogError::Scale { .. })));
    assert!(
        matches!(bind("beef", None, 0), Err(CatalogError::Scale { .. })),
        "deadband"
    );
    assert!(matches!(bind("lamb", None, 5), Err(CatalogError::UnknownSku(_))));
    // A bound scale feeds its SKU (freshness).
    let fed = bind("beef", None, 5).expect("valid");
    assert_eq!(
        fed.planning().feeds[&id::<StoreId>("s1")][&id::<DeviceId>("scale-1")],
        vec![id::<SkuId>("beef")]
    );
}

/// A guarded sale with too little stock, or of an 86ed dish, is refused
/// with the portions left and changes nothing; a plain sale still records
/// what happened, even below zero.
#[test]
fn a_guarded_sale_is_applied_only_when_every_line_is_available() {
    let mut inv = stocked();
    let s1: StoreId = id("s1");
    // 10 buns, 1 kg beef: 6 burgers or 3 doubles, sharing both.
    let guarded = |eid: &str, lines: &[(&str, u32)]| SaleIn {
        guarded: true,
        ..sale(eid, lines, T0)
    };
    let refused = inv
        .apply_sale(&s1, &guarded("g1", &[("burger", 4), ("double", 2)]), T0)
        .expect_err("4 burgers and 2 doubles need 1,200 g of beef");
    assert_eq!(refused.code, ErrorCode::InsufficientStock);
    let left = refused.portions_left.expect("the portions left");
    assert_eq!(left.get(&id::<DishId>("burger")), Some(&6));
    assert_eq!(left.get(&id::<DishId>("double")), Some(&3));
    assert_eq!((qty(&inv, "beef"), qty(&inv, "bun")), (1000, 10), "nothing applied");
    inv.apply_sale(&s1, &guarded("g2", &[("burger", 4), ("double", 1)]), T0)
        .expect("900 g and 5 buns are there");
    assert_eq!((qty(&inv, "beef"), qty(&inv, "bun")), (100, 5));
    // An 86 refuses a guarded sale whatever the stock.
    let ov = OverrideIn {
        id: id("o1"),
        status: OverrideStatus::SoldOut,
        by: id("chef-anna"),
        until: None,
        note: None,
    };
    inv.apply_override(&s1, &id("soda"), &ov, T0).expect("86");
    inv.apply_stock(&s1, &id("cola"), &ev("r3", StockKind::Receive, 1.0, Unit::L, T0), T0)
        .expect("cola");
    let refused = inv
        .apply_sale(&s1, &guarded("g3", &[("soda", 1)]), T0)
        .expect_err("86ed");
    assert_eq!(
        refused
            .portions_left
            .and_then(|l| l.get(&id::<DishId>("soda")).copied()),
        Some(0)
    );
    // A plain sale of what is not there is recorded all the same.
    inv.apply_sale(&s1, &sale("p1", &[("double", 1)], T0), T0)
        .expect("plain sale");
    assert_eq!(qty(&inv, "beef"), -200);
}

proptest! {
    /// Any number of POS racing guarded sales of any sizes for the last
    /// portions: a sale is applied exactly when what it takes is there,
    /// never more is sold than there was, and the level is exact.
    #[test]
    fn racing_guarded_sales_never_oversell(
        stock in 0i64..20,
        asks in prop::collection::vec((0usize..8, 1u32..4), 1..40),
    ) {
        let mut inv = Inventory::new(catalog(), T0);
        let s1: StoreId = id("s1");
        inv.apply_stock(&s1, &id("bun"), &ev("c1", StockKind::Count, stock as f64, Unit::Pcs, T0), T0)
            .expect("bun");
        inv.apply_stock(&s1, &id("beef"), &ev("r2", StockKind::Receive, 100.0, Unit::Kg, T0), T0)
            .expect("beef");
        let mut left = stock;
        let mut sold = 0i64;
        for (n, (pos, portions)) in asks.iter().enumerate() {
            let mut ask = sale(&format!("g{n}"), &[("burger", *portions)], T0 + n as Millis);
            ask.guarded = true;
            ask.device = Some(id(&format!("pos-{pos}")));
            let fits = i64::from(*portions) <= left;
            match inv.apply_sale(&s1, &ask, T0 + n as Millis) {
                Ok(_) => {
                    prop_assert!(fits, "sold {portions} with {left} left");
                    left -= i64::from(*portions);
                    sold += i64::from(*portions);
                }
                Err(r) => {
                    prop_assert!(!fits, "refused {portions} with {left} left: {}", r.message);
                    prop_assert_eq!(r.code, ErrorCode::InsufficientStock);
                    let shown = r.portions_left.and_then(|l| l.get(&id::<DishId>("burger")).copied());
                    prop_assert_eq!(shown, Some(left as u64));
                }
            }
        }
        prop_assert_eq!(qty(&inv, "bun"), stock - sold);
        prop_assert!(qty(&inv, "bun") >= 0);
    }
}

/// A count stamped two hours ahead of the broker's clock would freeze the
/// level until then: it is refused with its own code; within the allowed
/// skew a stamp is fine.
#[test]
fn an_input_from_a_fast_clock_is_refused() {
    let mut inv = stocked();
    let s1: StoreId = id("s1");
    let hours_ahead = ev("c-fast", StockKind::Count, 5.0, Unit::Pcs, T0 + 2 * 3_600_000);
    let refused = inv
        .apply_stock(&s1, &id("bun"), &hours_ahead, T0)
        .expect_err("two hours ahead");
    assert_eq!(refused.code, ErrorCode::ClockAhead);
    assert_eq!(qty(&inv, "bun"), 10, "nothing applied");
    let sale_ahead = sale("s-fast", &[("burger", 1)], T0 + 3_600_000);
    assert_eq!(
        inv.apply_sale(&s1, &sale_ahead, T0).expect_err("an hour ahead").code,
        ErrorCode::ClockAhead
    );
    // A few seconds ahead (clocks differ a little) is applied.
    inv.apply_stock(
        &s1,
        &id("bun"),
        &ev("c-ok", StockKind::Count, 7.0, Unit::Pcs, T0 + 5_000),
        T0,
    )
    .expect("within the skew");
    inv.apply_stock(
        &s1,
        &id("bun"),
        &ev("r-now", StockKind::Receive, 1.0, Unit::Pcs, T0 + 6_000),
        T0 + 6_000,
    )
    .expect("a change after the count");
    assert_eq!(qty(&inv, "bun"), 8);
}
