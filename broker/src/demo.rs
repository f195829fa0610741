//! The demo chain's dinner service: made-up but realistic traffic that keeps
//! the built-in demo chain alive, so that `mosquitto_sub -v -t 'stores/#'`
//! shows a chain at work within seconds of the first start.
//!
//! [`Service`] is a pure script: given the time and the requests and
//! transfers the rules show, it decides the next inputs — POS sales (some
//! guarded) at the harbour and the airport, settled readings of the
//! harbour's fries scale, a waste, an 86 and its release, a transfer asked
//! for and carried out, and every replenishment request acknowledged,
//! shipped and received. Its choices follow a seeded generator, so the same
//! seed plays the same service. [`run`] is the shell: it asks the rules for
//! their documents, steps the script and hands each input to the rules, the
//! one path every input takes. The downtown store is left alone for the
//! README's walkthrough.
//!
//! Invariant: the service writes only into stores configured `training`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dishsync_inventory::Catalog;
use dishsync_protocol::payload::{
    ActionIn, OverrideIn, OverrideStatus, RequestState, SaleIn, SaleLine, StockEventIn, StockKind, Timestamp,
    TransferRequestIn, TransferState, WeightIn,
};
use dishsync_protocol::topic::{RequestAction, TransferAction};
use dishsync_protocol::{DeviceId, DishId, DocId, EventId, Millis, SkuId, StoreId, Unit};
use tracing::{debug, info};

use crate::rules::{Documents, Intake, RulesHandle, Verdict};
use dishsync_inventory::{reading_id, Input};

/// How often the service takes a step.
pub const STEP: Duration = Duration::from_millis(500);

/// The stores the service plays in (the demo chain's), and the fries scale.
const SERVICE_STORES: [&str; 2] = ["harbour", "airport"];
const FRIES: &str = "potato-fries";
const FRIES_SCALE: &str = "scale-h1";
const FRIES_TARE: i64 = 1200;
/// Steps a document waits before the service takes its next action on it.
const ACT_AFTER: u64 = 8;

/// A small, fixed pseudo-random generator (splitmix64): the same seed gives
/// the same service — or the same generated chain — on every machine.
#[derive(Debug, Clone)]
pub struct Dice(u64);

impl Dice {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Dice {
        Dice(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..n
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The dinner service script.
#[derive(Debug)]
pub struct Service {
    dice: Dice,
    /// Steps taken.
    step: u64,
    /// Makes ids unique across runs on the same data directory.
    run: Millis,
    /// Each store's menu, most popular first.
    menus: BTreeMap<StoreId, Vec<DishId>>,
    /// Grams of fries in the harbour's tub as the scale would weigh them.
    harbour_fries: i64,
    /// Grams of fries each harbour portion takes.
    fries_per_portion: i64,
    /// The step each request or transfer was last acted on (or first seen).
    acted: BTreeMap<DocId, u64>,
}

fn id<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

impl Service {
    /// A service for `catalog` (the demo chain), starting at `now`.
    pub fn new(catalog: &Catalog, seed: u64, now: Millis) -> Service {
        let menus = catalog
            .stores()
            .filter(|s| s.training && SERVICE_STORES.contains(&s.id.as_str()))
            .map(|s| (s.id.clone(), s.menu.clone()))
            .collect();
        let fries_per_portion = catalog
            .dishes()
            .find(|d| d.id.as_str() == "fries")
            .and_then(|d| d.recipe.first())
            .map_or(200, |l| l.per_portion);
        let harbour_fries = id::<StoreId>("harbour")
            .and_then(|store| catalog.store(&store))
            .and_then(|s| s.stock.get(&id::<SkuId>(FRIES)?)?.opening)
            .unwrap_or(0);
        Service {
            dice: Dice::new(seed),
            step: 0,
            run: now,
            menus,
            harbour_fries,
            fries_per_portion,
            acted: BTreeMap::new(),
        }
    }

    fn event_id(&mut self, what: &str) -> Option<EventId> {
        let n = self.dice.below(1_000_000);
        id(&format!("demo-{}-{}-{what}-{n}", self.run, self.step))
    }

    /// The inputs of the next step, given the time and what the rules show.
    pub fn step(&mut self, now: Millis, docs: &Documents) -> Vec<Intake> {
        self.step += 1;
        let mut out = Vec::new();
        if self.menus.is_empty() {
            return out;
        }
        let at = Timestamp(now);
        // Guests order: most steps, one table somewhere.
        if self.dice.chance(70) {
            out.extend(self.sale(at));
        }
        // The harbour's fries tub is weighed every five seconds.
        if self.step.is_multiple_of(10) {
            out.extend(self.weigh_fries(at));
        }
        match self.step {
            20 => out.extend(self.waste(at)),
            30 => out.extend(self.eighty_six(OverrideStatus::SoldOut)),
            90 => out.extend(self.eighty_six(OverrideStatus::Auto)),
            40 => out.extend(self.ask_transfer()),
            _ => {}
        }
        out.extend(self.carry_out(docs, at));
        out
    }

    fn sale(&mut self, at: Timestamp) -> Option<Intake> {
        let stores: Vec<StoreId> = self.menus.keys().cloned().collect();
        let store = stores.get(self.dice.below(stores.len() as u64) as usize)?.clone();
        let menu = self.menus.get(&store)?;
        // Popular dishes first: the square of a uniform pick leans low.
        let pick = self.dice.below(menu.len() as u64);
        let dish = menu.get((pick * pick / menu.len() as u64) as usize)?.clone();
        let portions = 1 + self.dice.below(2) as u32;
        let device: DeviceId = id(&format!("pos-{}{}", &store.as_str()[..1], 1 + self.dice.below(3)))?;
        let guarded = self.dice.chance(30);
        if store.as_str() == "harbour" && dish.as_str() == "fries" {
            self.harbour_fries -= self.fries_per_portion * i64::from(portions);
        }
        let sale = SaleIn {
            id: self.event_id("sale")?,
            lines: Some(vec![SaleLine { dish, portions }]),
            void: None,
            at: Some(at),
            device: Some(device.clone()),
            guarded,
        };
        Some(Intake {
            input: Input::Sale { store, sale },
            device,
        })
    }

    fn weigh_fries(&mut self, at: Timestamp) -> Option<Intake> {
        let device: DeviceId = id(FRIES_SCALE)?;
        let reading = WeightIn {
            // A few grams of noise, inside the scale's deadband.
            grams: FRIES_TARE + self.harbour_fries.max(0) + self.dice.below(21) as i64 - 10,
            at,
            stable: true,
        };
        Some(Intake {
            input: Input::Reading {
                store: id("harbour")?,
                device: device.clone(),
                id: reading_id(&device, &reading),
                reading,
            },
            device,
        })
    }

    fn waste(&mut self, at: Timestamp) -> Option<Intake> {
        let device: DeviceId = id("kds-a1")?;
        let event = StockEventIn {
            id: self.event_id("waste")?,
            kind: StockKind::Waste,
            qty: 400.0,
            unit: Unit::G,
            at,
            device: device.clone(),
            reference: None,
            reason: Some("burnt batch".into()),
        };
        Some(Intake {
            input: Input::Stock {
                store: id("airport")?,
                sku: id(FRIES)?,
                event,
            },
            device,
        })
    }

    fn eighty_six(&mut self, status: OverrideStatus) -> Option<Intake> {
        let device: DeviceId = id("kds-h1")?;
        let note = (status == OverrideStatus::SoldOut).then(|| "salmon delivery late".to_string());
        let ov = OverrideIn {
            id: self.event_id("86")?,
            status,
            by: id("chef-marco")?,
            until: None,
            note,
        };
        Some(Intake {
            input: Input::Override {
                store: id("harbour")?,
                dish: id("fish-tacos")?,
                ov,
            },
            device,
        })
    }

    fn ask_transfer(&mut self) -> Option<Intake> {
        let device: DeviceId = id("mgr-h1")?;
        let body = TransferRequestIn {
            id: self.event_id("transfer")?,
            sku: id("beef-patty")?,
            qty: 20.0,
            unit: Unit::Pcs,
            by: device.clone(),
        };
        Some(Intake {
            input: Input::TransferRequest {
                store: id("harbour")?,
                body,
            },
            device,
        })
    }

    /// Whether `doc` waited long enough since its last action; marks it.
    fn due(&mut self, doc: &DocId) -> bool {
        let first = *self.acted.entry(doc.clone()).or_insert(self.step);
        if self.step >= first + ACT_AFTER {
            self.acted.insert(doc.clone(), self.step);
            true
        } else {
            false
        }
    }

    /// Every open request of a service store is acknowledged, shipped and
    /// received; every transfer accepted, dispatched and received (its
    /// giver may be any store of the demo chain) — one action per document
    /// every few seconds.
    fn carry_out(&mut self, docs: &Documents, at: Timestamp) -> Vec<Intake> {
        let mut out = Vec::new();
        for r in &docs.requests {
            if !self.menus.contains_key(&r.store) {
                continue;
            }
            let step = match r.state {
                RequestState::Open | RequestState::Acknowledged | RequestState::Shipped => r.state,
                _ => continue,
            };
            if !self.due(&r.id) {
                continue;
            }
            let kitchen: Option<DeviceId> = id("kitchen-1");
            let Some(kitchen) = kitchen else { continue };
            let action = |this: &mut Service, action: RequestAction| -> Option<Intake> {
                Some(Intake {
                    input: Input::RequestAction {
                        store: r.store.clone(),
                        request: r.id.clone(),
                        action,
                        body: ActionIn {
                            id: this.event_id("rq")?,
                            by: kitchen.clone(),
                            note: None,
                        },
                    },
                    device: kitchen.clone(),
                })
            };
            match step {
                RequestState::Open => out.extend(action(self, RequestAction::Acknowledge)),
                RequestState::Acknowledged => out.extend(action(self, RequestAction::Ship)),
                _ => {
                    // Shipped: the store receives every line against it.
                    let Some(device) = id::<DeviceId>(&format!("mgr-{}1", &r.store.as_str()[..1])) else {
                        continue;
                    };
                    for line in r.lines.iter().filter(|l| !l.received) {
                        let Some(event_id) = self.event_id("rcv") else { continue };
                        if r.store.as_str() == "harbour" && line.sku.as_str() == FRIES {
                            self.harbour_fries += line.qty;
                        }
                        out.push(Intake {
                            input: Input::Stock {
                                store: r.store.clone(),
                                sku: line.sku.clone(),
                                event: StockEventIn {
                                    id: event_id,
                                    kind: StockKind::Receive,
                                    qty: line.qty as f64,
                                    unit: line.unit.into(),
                                    at,
                                    device: device.clone(),
                                    reference: Some(r.id.to_string()),
                                    reason: None,
                                },
                            },
                            device: device.clone(),
                        });
                    }
                }
            }
        }
        for t in &docs.transfers {
            let (store, action) = match t.state {
                TransferState::Proposed => (&t.from, TransferAction::Accept),
                TransferState::Accepted => (&t.from, TransferAction::Dispatch),
                TransferState::Dispatched => (&t.to, TransferAction::Receive),
                _ => continue,
            };
            if !self.due(&t.id) {
                continue;
            }
            let (Some(device), Some(event_id)) = (
                id::<DeviceId>(&format!("mgr-{}1", &store.as_str()[..1])),
                self.event_id("tr"),
            ) else {
                continue;
            };
            out.push(Intake {
                input: Input::TransferAction {
                    store: store.clone(),
                    transfer: t.id.clone(),
                    action,
                    body: ActionIn {
                        id: event_id,
                        by: device.clone(),
                        note: None,
                    },
                },
                device,
            });
        }
        out
    }
}

/// Plays the service on `rules` until the broker stops.
pub async fn run(rules: RulesHandle, catalog: Arc<Catalog>, seed: u64) {
    let mut service = Service::new(&catalog, seed, Timestamp::now().0);
    info!(seed, "demo service playing at the harbour and the airport");
    let mut tick = tokio::time::interval(STEP);
    loop {
        tick.tick().await;
        let Some(docs) = rules.documents().await else { return };
        for intake in service.step(Timestamp::now().0, &docs) {
            let Some(verdict) = rules.intake(intake).await else {
                return;
            };
            crate::metrics::METRICS.input("demo", &verdict);
            if let Verdict::Rejected(r) = verdict {
                debug!(code = ?r.code, reason = %r.message, "demo input refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    /// The topics and fingerprints of the first `steps` steps of a service.
    fn play(seed: u64, steps: usize) -> Vec<(String, u64)> {
        let settings = Settings::demo().expect("the demo chain");
        let mut service = Service::new(&settings.catalog, seed, 1_700_000_000_000);
        let docs = Documents::default();
        (0..steps)
            .flat_map(|n| service.step(1_700_000_000_000 + n as Millis * 500, &docs))
            .map(|intake| (intake.input.topic().to_string(), intake.input.fingerprint()))
            .collect()
    }

    #[test]
    fn the_same_seed_plays_the_same_service_and_leaves_downtown_alone() {
        let a = play(7, 120);
        assert_eq!(a, play(7, 120));
        assert_ne!(a, play(8, 120));
        let kinds = |part: &str| a.iter().filter(|(t, _)| t.contains(part)).count();
        assert!(kinds("/sales") > 50, "guests order");
        assert_eq!(kinds("/scales/scale-h1/weight"), 12, "the fries tub every five seconds");
        assert_eq!(kinds("/override"), 2, "an 86 and its release");
        assert_eq!(kinds("/transfers/request"), 1);
        assert!(
            a.iter().all(|(t, _)| !t.starts_with("stores/downtown/")),
            "downtown is the walkthrough's"
        );
    }
}
