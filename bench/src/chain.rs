//! A chain generator: N stores × S SKUs × D dishes with believable recipes
//! and devices, and a dinner-peak load over them — deterministic for a
//! seed, so a capacity run can be repeated exactly.
//!
//! SKUs come in the three base units (grams, millilitres, pieces) with pack
//! sizes and targets in proportion. Each dish has 3–8 ingredients, drawn
//! with a skew towards a few staples (buns, oil, onions…) that many dishes
//! share, as a real menu does. Each store has its POS terminals, one
//! kitchen display and scales bound to its first SKUs kept in grams. The
//! load ([`Chain::dinner_peak`]) is a store-local evening: sales per POS per
//! minute rising to a peak at 19:30 and falling after, scale readings at
//! their own pace, and now and then a waste or a delivery.

use std::fmt::Write;

use dishsync_broker::demo::Dice;

/// An index in `0..n`, skewed towards the first (about half the draws
/// fall in the first tenth): the staples.
fn skewed(dice: &mut Dice, n: usize) -> usize {
    let u = dice.unit();
    ((u * u * u) * n as f64) as usize % n.max(1)
}

/// The size of a generated chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSize {
    /// Stores.
    pub stores: usize,
    /// SKUs (every store keeps all of them).
    pub skus: usize,
    /// Dishes (every store sells all of them).
    pub dishes: usize,
    /// POS terminals per store.
    pub pos_per_store: usize,
    /// Scales per store (bound to its first SKUs kept in grams).
    pub scales_per_store: usize,
}

/// One SKU of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSku {
    /// Its id.
    pub id: String,
    /// `g`, `ml` or `pcs`.
    pub unit: &'static str,
    /// Pack size, base units.
    pub pack: i64,
    /// Reorder point, base units.
    pub reorder_point: i64,
    /// Par, base units.
    pub par: i64,
}

/// One dish: its recipe, (SKU index, base units per portion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDish {
    /// Its id.
    pub id: String,
    /// Its ingredients.
    pub recipe: Vec<(usize, i64)>,
}

/// A generated chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its size.
    pub size: ChainSize,
    /// The SKUs.
    pub skus: Vec<ChainSku>,
    /// The dishes.
    pub dishes: Vec<ChainDish>,
    /// Per store, the SKU indices its scales are bound to.
    pub scaled: Vec<usize>,
    seed: u64,
}

/// One input of the load: when (ms from the load's start), where, what.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Milliseconds from the start.
    pub at: i64,
    /// The topic.
    pub topic: String,
    /// The device that sends it.
    pub device: String,
    /// Its JSON body, stamped with `at` + the load's start.
    pub body: serde_json::Value,
}

/// Units and what a portion uses of each, base units: (unit, low, high).
const KINDS: [(&str, i64, i64); 3] = [("g", 20, 250), ("ml", 10, 120), ("pcs", 1, 2)];

impl Chain {
    /// The chain of `size` for `seed`.
    pub fn generate(size: ChainSize, seed: u64) -> Chain {
        let mut dice = Dice::new(seed);
        let skus: Vec<ChainSku> = (0..size.skus)
            .map(|i| {
                let (unit, low, high) = KINDS[i % KINDS.len()];
                // A day's use of about 40 portions' worth, give or take.
                let portion = low + dice.below((high - low + 1) as u64) as i64;
                let par = portion * (60 + dice.below(60) as i64);
                ChainSku {
                    id: format!("sku-{i:04}"),
                    unit,
                    pack: (portion * 10).max(1),
                    reorder_point: par / 4,
                    par,
                }
            })
            .collect();
        let dishes = (0..size.dishes)
            .map(|d| {
                let lines = 3 + dice.below(6) as usize;
                let mut recipe: Vec<(usize, i64)> = Vec::new();
                while recipe.len() < lines.min(size.skus) {
                    let sku = skewed(&mut dice, size.skus);
                    if recipe.iter().any(|(s, _)| *s == sku) {
                        continue;
                    }
                    let (_, low, high) = KINDS[sku % KINDS.len()];
                    recipe.push((sku, low + dice.below((high - low + 1) as u64) as i64));
                }
                ChainDish {
                    id: format!("dish-{d:03}"),
                    recipe,
                }
            })
            .collect();
        let scaled = (0..size.skus)
            .filter(|i| KINDS[i % KINDS.len()].0 == "g")
            .take(size.scales_per_store)
            .collect();
        Chain {
            size,
            skus,
            dishes,
            scaled,
            seed,
        }
    }

    /// The store ids.
    pub fn stores(&self) -> impl Iterator<Item = String> {
        (0..self.size.stores).map(|s| format!("st-{s:04}"))
    }

    /// The chain as a configuration file: `[broker]` with `extra` lines
    /// after it, every SKU, dish and store (opening at par, its scales
    /// bound).
    pub fn toml(&self, extra: &str) -> String {
        let mut out = format!("[broker]\n{extra}\n");
        for s in &self.skus {
            let _ = writeln!(
                out,
                "[[skus]]\nid = \"{}\"\nname = \"{}\"\nunit = \"{}\"\npack = {}\nreorder_point = {}\npar = {}\nopening = {}\n",
                s.id, s.id, s.unit, s.pack, s.reorder_point, s.par, s.par
            );
        }
        for d in &self.dishes {
            let lines: Vec<String> = d
                .recipe
                .iter()
                .map(|(sku, qty)| format!("{{ sku = \"{}\", qty = {qty} }}", self.skus[*sku].id))
                .collect();
            let _ = writeln!(
                out,
                "[[dishes]]\nid = \"{}\"\nname = \"{}\"\nlow_mark = 3\nrecipe = [{}]\n",
                d.id,
                d.id,
                lines.join(", ")
            );
        }
        for store in self.stores() {
            let scales: Vec<String> = self
                .scaled
                .iter()
                .enumerate()
                .map(|(k, sku)| format!("{store}-scale-{k} = {{ sku = \"{}\" }}", self.skus[*sku].id))
                .collect();
            let _ = writeln!(
                out,
                "[[stores]]\nid = \"{store}\"\nname = \"{store}\"\nscales = {{ {} }}\n",
                scales.join(", ")
            );
        }
        out
    }

    /// A dinner peak of `minutes` starting at `start` (ms): per store,
    /// sales from each POS at `sales_per_pos_per_minute` at the peak (a
    /// third of it at the start and the end, the peak at the middle), a
    /// settled reading from each scale every 30 s, and a waste or a
    /// delivery per store every few minutes. In time order.
    pub fn dinner_peak(&self, start: i64, minutes: i64, sales_per_pos_per_minute: f64) -> Vec<Load> {
        self.service(start, minutes * 60_000, sales_per_pos_per_minute)
    }

    /// The load of [`Chain::dinner_peak`] over `span` milliseconds.
    pub fn service(&self, start: i64, span: i64, sales_per_pos_per_minute: f64) -> Vec<Load> {
        let mut dice = Dice::new(self.seed ^ 0x5eed);
        let mut out = Vec::new();
        let stamp = |at: i64| dishsync_protocol::payload::Timestamp(start + at).to_string();
        for (s, store) in self.stores().enumerate() {
            for pos in 0..self.size.pos_per_store {
                let device = format!("{store}-pos-{pos}");
                let mut at = 0i64;
                let mut n = 0u64;
                loop {
                    // The rate at this point of the evening: a third at the
                    // edges, all of it at the middle.
                    let phase = at as f64 / span as f64;
                    let shape = 1.0 / 3.0 + (2.0 / 3.0) * (std::f64::consts::PI * phase).sin();
                    let rate = sales_per_pos_per_minute * shape / 60_000.0;
                    // Exponential gaps: Poisson arrivals.
                    at += (-(1.0 - dice.unit()).ln() / rate.max(1e-9)) as i64;
                    if at >= span {
                        break;
                    }
                    let dish = &self.dishes[skewed(&mut dice, self.dishes.len())];
                    let id = format!("{device}:{n}");
                    n += 1;
                    out.push(Load {
                        at,
                        topic: format!("stores/{store}/sales"),
                        device: device.clone(),
                        body: serde_json::json!({"id": id, "lines": [{"dish": dish.id, "portions": 1 + dice.below(2)}],
                            "at": stamp(at), "device": device}),
                    });
                }
            }
            for (k, sku) in self.scaled.iter().enumerate() {
                let device = format!("{store}-scale-{k}");
                let mut grams = self.skus[*sku].par;
                let mut at = 15_000 + (s as i64 * 97) % 15_000;
                while at < span {
                    grams = (grams - 20 - dice.below(200) as i64).max(0);
                    out.push(Load {
                        at,
                        topic: format!("stores/{store}/scales/{device}/weight"),
                        device: device.clone(),
                        body: serde_json::json!({"grams": grams, "at": stamp(at), "stable": true}),
                    });
                    at += 30_000;
                }
            }
            let mut at = 60_000 + dice.below(120_000) as i64;
            let mut n = 0u64;
            while at < span {
                let sku = &self.skus[dice.below(self.skus.len() as u64) as usize];
                let waste = dice.below(3) > 0;
                let device = format!("{store}-kds");
                let (kind, qty) = if waste {
                    ("waste", sku.pack / 10)
                } else {
                    ("receive", sku.pack)
                };
                out.push(Load {
                    at,
                    topic: format!("stores/{store}/stock/{}/events", sku.id),
                    device: device.clone(),
                    body: serde_json::json!({"id": format!("{device}:{n}"), "kind": kind, "qty": qty.max(1), "unit": sku.unit,
                        "at": stamp(at), "device": device, "reason": if waste { Some("dropped") } else { None }}),
                });
                n += 1;
                at += 120_000 + dice.below(240_000) as i64;
            }
        }
        out.sort_by_key(|l| l.at);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: ChainSize = ChainSize {
        stores: 3,
        skus: 150,
        dishes: 80,
        pos_per_store: 4,
        scales_per_store: 2,
    };

    #[test]
    fn the_same_seed_gives_the_same_chain_and_load() {
        let (a, b) = (Chain::generate(SIZE, 7), Chain::generate(SIZE, 7));
        assert_eq!(a, b);
        assert_eq!(a.toml(""), b.toml(""));
        assert_eq!(a.dinner_peak(0, 30, 2.0), b.dinner_peak(0, 30, 2.0));
        assert_ne!(
            a.toml(""),
            Chain::generate(SIZE, 8).toml(""),
            "another seed, another chain"
        );
    }

    #[test]
    fn recipes_are_believable_and_share_their_staples() {
        let chain = Chain::generate(SIZE, 42);
        let mut uses = vec![0usize; SIZE.skus];
        for dish in &chain.dishes {
            assert!((3..=8).contains(&dish.recipe.len()), "{dish:?}");
            let mut skus: Vec<usize> = dish.recipe.iter().map(|(s, _)| *s).collect();
            skus.dedup();
            assert_eq!(skus.len(), dish.recipe.len(), "an ingredient once per dish");
            for (sku, qty) in &dish.recipe {
                uses[*sku] += 1;
                assert!(*qty >= 1);
            }
        }
        let shared = uses.iter().filter(|n| **n >= 5).count();
        assert!(shared >= 5, "a few staples in many dishes: {uses:?}");
    }

    #[test]
    fn the_chain_is_a_valid_configuration_and_its_load_valid_inputs() {
        let chain = Chain::generate(SIZE, 3);
        let settings =
            dishsync_broker::Settings::parse(&chain.toml("allow_anonymous = true")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.catalog.stores().count(), SIZE.stores);
        assert_eq!(settings.catalog.skus().count(), SIZE.skus);
        let store: dishsync_protocol::StoreId = "st-0000".parse().expect("id");
        assert_eq!(settings.catalog.planning().scales[&store].len(), SIZE.scales_per_store);
        let load = chain.dinner_peak(1_764_000_000_000, 60, 1.5);
        assert!(load.windows(2).all(|w| w[0].at <= w[1].at), "in time order");
        let sales = load.iter().filter(|l| l.topic.ends_with("/sales")).count();
        // 12 POS × 60 min × 1.5 at the peak, shaped: about 2/3 of that.
        assert!((500..=1_200).contains(&sales), "{sales} sales");
        for l in &load {
            let topic: dishsync_protocol::Topic = l.topic.parse().expect("a contract topic");
            let body = serde_json::to_vec(&l.body).expect("json");
            dishsync_inventory::Input::decode(&topic, &body).unwrap_or_else(|r| panic!("{}: {r}", l.topic));
        }
    }
}
