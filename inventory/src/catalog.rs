//! The chain's catalog: SKUs, dishes with their recipes, stores with their
//! menus and stock parameters. Immutable while the broker runs.
//!
//! Built once from configuration (the broker's `config` module validates the
//! file and reports errors with their place); [`Catalog::new`] re-checks the
//! cross-references so that the core can rely on them without `unwrap`.

use std::collections::{BTreeMap, HashMap};

use dishsync_protocol::{BaseUnit, DeviceId, DishId, Millis, SkuId, StoreId};
use serde::{Deserialize, Serialize};

/// One stock-keeping unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sku {
    /// Its id.
    pub id: SkuId,
    /// Name shown to people.
    pub name: String,
    /// The integer unit stock is kept in.
    pub unit: BaseUnit,
    /// Delivery pack size in base units (≥ 1); replenishment rounds up to it.
    pub pack: i64,
    /// How many days it keeps once delivered, if that is known: stock
    /// covering longer is a slow mover.
    #[serde(default)]
    pub shelf_life_days: Option<u32>,
}

/// How much of one SKU a portion of a dish uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeLine {
    /// The ingredient.
    pub sku: SkuId,
    /// Base units per portion (≥ 1).
    pub per_portion: i64,
}

/// A dish and its recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dish {
    /// Its id.
    pub id: DishId,
    /// Name shown to people.
    pub name: String,
    /// At or below this many portions the dish is `low`.
    pub low_mark: u64,
    /// Ingredients per portion; never empty.
    pub recipe: Vec<RecipeLine>,
    /// Where a menu board or POS groups it (`mains`, `sides`, …).
    #[serde(default)]
    pub category: Option<String>,
    /// Its menu price as written in the configuration (a decimal string,
    /// in the chain's currency), if the chain publishes prices.
    #[serde(default)]
    pub price: Option<String>,
    /// Its ids on delivery channels (`doordash` → the item's id there), for
    /// an adapter that marks it sold out on the channel.
    #[serde(default)]
    pub external: BTreeMap<String, String>,
}

/// A store's targets for one SKU, base units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockParams {
    /// At or below this the level is `low` (and replenishment is due).
    pub reorder_point: i64,
    /// The level a delivery should bring the stock back to.
    pub par: i64,
    /// The stock the store opens with, booked as a count the first time
    /// the store starts (never again).
    #[serde(default)]
    pub opening: Option<i64>,
    /// What one base unit costs the store, in millionths of the chain's
    /// currency (`None`: not costed) — what waste and use are worth.
    #[serde(default)]
    pub unit_cost: Option<i64>,
}

/// One store of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// Its id.
    pub id: StoreId,
    /// Name shown to people.
    pub name: String,
    /// The dishes it sells.
    pub menu: Vec<DishId>,
    /// Its targets for every SKU of the chain.
    pub stock: BTreeMap<SkuId, StockParams>,
    /// A demo or training store: tools that write made-up traffic (`dishsync
    /// sim`) may run against it without `--force`.
    #[serde(default)]
    pub training: bool,
}

/// A scale whose stable readings are the level of one SKU in one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleBinding {
    /// The SKU on the platform (kept in grams, or in pieces with
    /// `piece_grams`).
    pub sku: SkuId,
    /// Grams of the container, taken off every reading.
    pub tare_grams: i64,
    /// For a SKU kept in pieces: grams per piece (readings round to the
    /// nearest piece).
    pub piece_grams: Option<i64>,
    /// A reading less than this many base units from the level is the
    /// scale's noise and changes nothing (≥ 1).
    pub deadband: i64,
}

/// A fridge's or freezer's temperature probe and the SKUs it keeps safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeBinding {
    /// The SKUs stored in it.
    pub skus: Vec<SkuId>,
    /// The safe range, thousandths of a degree Celsius, inclusive.
    pub min_millicelsius: i64,
    /// See `min_millicelsius`.
    pub max_millicelsius: i64,
    /// How long it may stay outside the range before its stock is at risk.
    pub grace: Millis,
    /// How long it may go without a reading before that is an alert.
    pub silent_after: Millis,
}

/// Something wrong with a [`ScaleBinding`]: the field it is in (`""` for
/// the binding as a whole) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleProblem {
    /// `sku`, `piece_grams`, `tare_grams`, `deadband`, or `""`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ScaleBinding {
    /// Everything wrong with this binding for its SKU, kept in `unit`: a
    /// scale weighs grams, so a SKU kept in pieces needs the weight of one
    /// and a SKU kept in ml cannot be weighed.
    pub fn problems(&self, unit: BaseUnit) -> Vec<ScaleProblem> {
        let sku = &self.sku;
        let problem = |field, message: String| ScaleProblem { field, message };
        let mut problems = Vec::new();
        match (unit, self.piece_grams) {
            (BaseUnit::G, None) => {}
            (BaseUnit::Pcs, Some(p)) if p >= 1 => {}
            (BaseUnit::Pcs, Some(_)) => problems.push(problem("piece_grams", "must be at least 1".into())),
            (BaseUnit::Pcs, None) => problems.push(problem(
                "",
                format!("{sku} is kept in pieces: give piece_grams, the weight of one"),
            )),
            (BaseUnit::G, Some(_)) => problems.push(problem(
                "piece_grams",
                format!("{sku} is kept in grams; piece_grams is for SKUs kept in pieces"),
            )),
            (BaseUnit::Ml, _) => problems.push(problem(
                "sku",
                format!("{sku} is kept in ml; a scale can weigh SKUs kept in g or pcs"),
            )),
        }
        if self.tare_grams < 0 {
            problems.push(problem("tare_grams", "must not be negative".into()));
        }
        if self.deadband < 1 {
            problems.push(problem("deadband", "must be at least 1".into()));
        }
        problems
    }
}

/// A reference in the catalog that points nowhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A recipe names an unknown SKU.
    #[error("dish {dish}: recipe uses unknown SKU {sku}")]
    RecipeSku {
        /// The dish.
        dish: DishId,
        /// The missing SKU.
        sku: SkuId,
    },
    /// A dish without ingredients.
    #[error("dish {0}: recipe is empty")]
    EmptyRecipe(DishId),
    /// A recipe line, pack size or stock parameter that is not positive.
    #[error("{0}: must be positive")]
    NotPositive(String),
    /// A menu names an unknown dish.
    #[error("store {store}: menu has unknown dish {dish}")]
    MenuDish {
        /// The store.
        store: StoreId,
        /// The missing dish.
        dish: DishId,
    },
    /// Planning names a store that does not exist.
    #[error("planning refers to unknown store {0}")]
    UnknownStore(StoreId),
    /// Planning names a SKU that does not exist.
    #[error("planning refers to unknown SKU {0}")]
    UnknownSku(SkuId),
    /// A scale binding that cannot turn grams into the SKU's unit.
    #[error("store {store}: scale {device}: {problem}")]
    Scale {
        /// The store.
        store: StoreId,
        /// The scale.
        device: DeviceId,
        /// What is wrong.
        problem: String,
    },
    /// A store lacks stock parameters for a SKU.
    #[error("store {store}: no stock parameters for SKU {sku}")]
    MissingParams {
        /// The store.
        store: StoreId,
        /// The SKU.
        sku: SkuId,
    },
}

/// The central kitchen's delivery capability.
#[derive(Debug, Clone, PartialEq)]
pub struct Kitchen {
    /// Minutes from a request to the earliest delivery it can make.
    pub lead_time_minutes: u32,
    /// Store-local minutes of the day at which deliveries arrive (sorted).
    pub windows: Vec<u32>,
}

/// Everything the planning rules (replenishment, transfers, forecast,
/// alerts) are tuned by.
#[derive(Debug, Clone, PartialEq)]
pub struct Planning {
    /// Store-local time = UTC + this many minutes (service hours, windows, days).
    pub utc_offset_minutes: i32,
    /// A dish whose sell-out is predicted within this many minutes shows `low`.
    pub horizon_minutes: u32,
    /// Time constant of the exponentially weighted sales rate, minutes.
    pub rate_time_constant_minutes: f64,
    /// SKUs of one store crossing within this window join one request.
    pub merge_window_minutes: u32,
    /// An unanswered transfer proposal expires after this many minutes.
    pub transfer_timeout_minutes: f64,
    /// Today's waste above this share of use raises `waste_spike`.
    pub waste_alert_share: f64,
    /// A count whose unexplained use is above this share of the
    /// theoretical use since the last count raises `usage_variance`.
    pub variance_alert_share: f64,
    /// The safety margin of a slow mover's suggested par: usage × (review
    /// period + lead time) × (1 + this).
    pub safety_stock: f64,
    /// The currency unit costs are in (ISO 4217, e.g. `EUR`), if named.
    pub currency: Option<String>,
    /// The central kitchen.
    pub kitchen: Kitchen,
    /// Travel minutes between two stores (both directions).
    pub travel: BTreeMap<(StoreId, StoreId), u32>,
    /// Store-local service hours (open, close minutes of the day); a store
    /// without hours is always open.
    pub hours: BTreeMap<StoreId, (u32, u32)>,
    /// Per store: the SKUs each device feeds (for freshness). A bound scale
    /// feeds its SKU whether or not it is listed here.
    pub feeds: BTreeMap<StoreId, BTreeMap<DeviceId, Vec<SkuId>>>,
    /// Per store: the scales whose stable readings set a SKU's level.
    pub scales: BTreeMap<StoreId, BTreeMap<DeviceId, ScaleBinding>>,
    /// Per store: the temperature probes of its fridges and freezers.
    pub probes: BTreeMap<StoreId, BTreeMap<DeviceId, ProbeBinding>>,
    /// An input stamped more than this many seconds after the broker's
    /// clock is refused (`clock_ahead`): a device with a fast clock would
    /// otherwise freeze a level behind a count from the future.
    pub max_clock_skew_seconds: u32,
}

impl Default for Planning {
    fn default() -> Planning {
        Planning {
            utc_offset_minutes: 0,
            horizon_minutes: 45,
            rate_time_constant_minutes: 20.0,
            merge_window_minutes: 2,
            transfer_timeout_minutes: 10.0,
            waste_alert_share: 0.15,
            variance_alert_share: 0.05,
            safety_stock: 0.2,
            currency: None,
            kitchen: Kitchen {
                lead_time_minutes: 120,
                windows: vec![7 * 60],
            },
            travel: BTreeMap::new(),
            hours: BTreeMap::new(),
            feeds: BTreeMap::new(),
            scales: BTreeMap::new(),
            probes: BTreeMap::new(),
            max_clock_skew_seconds: 300,
        }
    }
}

/// The whole chain, indexed for the rules.
#[derive(Debug, Clone)]
pub struct Catalog {
    skus: BTreeMap<SkuId, Sku>,
    dishes: BTreeMap<DishId, Dish>,
    stores: BTreeMap<StoreId, Store>,
    planning: Planning,
    /// Per store: which menu dishes use a SKU.
    uses: HashMap<StoreId, HashMap<SkuId, Vec<DishId>>>,
}

impl Catalog {
    /// Indexes and cross-checks a catalog.
    pub fn new(skus: Vec<Sku>, dishes: Vec<Dish>, stores: Vec<Store>) -> Result<Catalog, CatalogError> {
        let skus: BTreeMap<_, _> = skus.into_iter().map(|s| (s.id.clone(), s)).collect();
        for sku in skus.values() {
            if sku.pack < 1 {
                return Err(CatalogError::NotPositive(format!("sku {} pack", sku.id)));
            }
        }
        let dishes: BTreeMap<_, _> = dishes.into_iter().map(|d| (d.id.clone(), d)).collect();
        for dish in dishes.values() {
            if dish.recipe.is_empty() {
                return Err(CatalogError::EmptyRecipe(dish.id.clone()));
            }
            for line in &dish.recipe {
                if !skus.contains_key(&line.sku) {
                    return Err(CatalogError::RecipeSku {
                        dish: dish.id.clone(),
                        sku: line.sku.clone(),
                    });
                }
                if line.per_portion < 1 {
                    return Err(CatalogError::NotPositive(format!(
                        "dish {} recipe {}",
                        dish.id, line.sku
                    )));
                }
            }
        }
        let mut uses = HashMap::new();
        let stores: BTreeMap<_, _> = stores.into_iter().map(|s| (s.id.clone(), s)).collect();
        for store in stores.values() {
            for sku in skus.keys() {
                if !store.stock.contains_key(sku) {
                    return Err(CatalogError::MissingParams {
                        store: store.id.clone(),
                        sku: sku.clone(),
                    });
                }
            }
            let mut by_sku: HashMap<SkuId, Vec<DishId>> = HashMap::new();
            for dish_id in &store.menu {
                let dish = dishes.get(dish_id).ok_or_else(|| CatalogError::MenuDish {
                    store: store.id.clone(),
                    dish: dish_id.clone(),
                })?;
                for line in &dish.recipe {
                    let users = by_sku.entry(line.sku.clone()).or_default();
                    if !users.contains(dish_id) {
                        users.push(dish_id.clone());
                    }
                }
            }
            uses.insert(store.id.clone(), by_sku);
        }
        Ok(Catalog {
            skus,
            dishes,
            stores,
            uses,
            planning: Planning::default(),
        })
    }

    /// The same catalog with `planning`, whose store, SKU and device
    /// references are checked.
    pub fn with_planning(mut self, mut planning: Planning) -> Result<Catalog, CatalogError> {
        for (a, b) in planning.travel.keys() {
            for s in [a, b] {
                if !self.stores.contains_key(s) {
                    return Err(CatalogError::UnknownStore(s.clone()));
                }
            }
        }
        for s in planning.hours.keys().chain(planning.feeds.keys()) {
            if !self.stores.contains_key(s) {
                return Err(CatalogError::UnknownStore(s.clone()));
            }
        }
        for sku in planning.feeds.values().flat_map(|d| d.values()).flatten() {
            if !self.skus.contains_key(sku) {
                return Err(CatalogError::UnknownSku(sku.clone()));
            }
        }
        for (store, scales) in &planning.scales {
            if !self.stores.contains_key(store) {
                return Err(CatalogError::UnknownStore(store.clone()));
            }
            for (device, binding) in scales {
                let sku = self
                    .skus
                    .get(&binding.sku)
                    .ok_or_else(|| CatalogError::UnknownSku(binding.sku.clone()))?;
                if let Some(first) = binding.problems(sku.unit).into_iter().next() {
                    let separator = if first.field.is_empty() { "" } else { ": " };
                    return Err(CatalogError::Scale {
                        store: store.clone(),
                        device: device.clone(),
                        problem: format!("{}{separator}{}", first.field, first.message),
                    });
                }
            }
        }
        // A bound scale feeds its SKU: its going offline makes the level stale.
        for (store, scales) in &planning.scales {
            for (device, binding) in scales {
                let fed = planning
                    .feeds
                    .entry(store.clone())
                    .or_default()
                    .entry(device.clone())
                    .or_default();
                if !fed.contains(&binding.sku) {
                    fed.push(binding.sku.clone());
                }
            }
        }
        self.planning = planning;
        Ok(self)
    }

    /// How the planning rules are tuned.
    pub fn planning(&self) -> &Planning {
        &self.planning
    }

    /// The SKU binding of a scale, if it has one.
    pub fn scale(&self, store: &StoreId, device: &DeviceId) -> Option<&ScaleBinding> {
        self.planning.scales.get(store)?.get(device)
    }

    /// The probe `device` of `store`, if it is one.
    pub fn probe(&self, store: &StoreId, device: &DeviceId) -> Option<&ProbeBinding> {
        self.planning.probes.get(store)?.get(device)
    }

    /// Every probe of `store`.
    pub fn probes(&self, store: &StoreId) -> impl Iterator<Item = (&DeviceId, &ProbeBinding)> {
        self.planning.probes.get(store).into_iter().flatten()
    }

    /// Travel minutes between two stores, if configured.
    pub fn travel(&self, a: &StoreId, b: &StoreId) -> Option<u32> {
        self.planning
            .travel
            .get(&(a.clone(), b.clone()))
            .or_else(|| self.planning.travel.get(&(b.clone(), a.clone())))
            .copied()
    }

    /// A SKU by id.
    pub fn sku(&self, id: &SkuId) -> Option<&Sku> {
        self.skus.get(id)
    }

    /// A dish by id.
    pub fn dish(&self, id: &DishId) -> Option<&Dish> {
        self.dishes.get(id)
    }

    /// A store by id.
    pub fn store(&self, id: &StoreId) -> Option<&Store> {
        self.stores.get(id)
    }

    /// Every SKU.
    pub fn skus(&self) -> impl Iterator<Item = &Sku> {
        self.skus.values()
    }

    /// Every dish.
    pub fn dishes(&self) -> impl Iterator<Item = &Dish> {
        self.dishes.values()
    }

    /// Every store.
    pub fn stores(&self) -> impl Iterator<Item = &Store> {
        self.stores.values()
    }

    /// The dishes on `store`'s menu whose recipe uses `sku`.
    pub fn dishes_using(&self, store: &StoreId, sku: &SkuId) -> &[DishId] {
        self.uses
            .get(store)
            .and_then(|m| m.get(sku))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether `dish` is on `store`'s menu.
    pub fn on_menu(&self, store: &StoreId, dish: &DishId) -> bool {
        self.stores.get(store).is_some_and(|s| s.menu.contains(dish))
    }
}
