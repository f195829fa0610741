//! The broker's configuration file: TOML in, a validated [`Settings`] out.
//!
//! Parsing refuses unknown fields; validation checks every cross-reference
//! (a recipe naming a SKU that does not exist, a menu naming an unknown dish,
//! a quantity in the wrong unit) and reports *every* problem at once, each
//! with its place in the file (`dishes[3].recipe[1].sku`). The result holds
//! typed values only; nothing downstream re-reads the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dishsync_inventory::catalog::{Dish, Kitchen, Planning, RecipeLine, ScaleBinding, Sku, StockParams, Store};
use dishsync_inventory::Catalog;
use dishsync_protocol::{BaseUnit, DeviceId, DishId, Quantity, SkuId, StoreId, Unit};

use crate::acl::{Identity, Role, Scope};
use crate::auth::{is_valid_hash, Credential};
use serde::Deserialize;

/// The default plaintext listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1883";
/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./dishsync-data";

/// The built-in demo chain, also shipped as `broker/config/demo.toml`.
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    broker: BrokerSection,
    #[serde(default)]
    skus: Vec<SkuSection>,
    #[serde(default)]
    dishes: Vec<DishSection>,
    #[serde(default)]
    stores: Vec<StoreSection>,
    #[serde(default)]
    devices: Vec<DeviceSection>,
    #[serde(default)]
    integrations: Vec<IntegrationSection>,
    #[serde(default)]
    webhooks: Vec<WebhookSection>,
    #[serde(default)]
    users: Vec<UserSection>,
    #[serde(default)]
    planning: PlanningSection,
    central_kitchen: Option<KitchenSection>,
    #[serde(default)]
    travel: Vec<TravelSection>,
    #[serde(default)]
    namespaces: Vec<NamespaceSection>,
    web: Option<WebSection>,
    #[serde(default)]
    retention: RetentionSection,
}

/// `[retention]`: how long history is kept (0 keeps it for good).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionSection {
    ledger_days: Option<f64>,
    event_id_days: Option<f64>,
    sale_days: Option<f64>,
    dead_letter_days: Option<f64>,
    compact_every_minutes: Option<f64>,
}

/// `[web]`: the HTTP listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebSection {
    listen: String,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    floor_public: bool,
    session_hours: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSection {
    name: String,
    role: String,
    store: Option<String>,
    stores: Option<Vec<String>>,
    password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceSection {
    prefix: String,
    #[serde(default)]
    per_store: bool,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanningSection {
    utc_offset: Option<String>,
    forecast_horizon_minutes: Option<u32>,
    forecast_time_constant_minutes: Option<f64>,
    merge_window_minutes: Option<u32>,
    transfer_timeout_minutes: Option<f64>,
    waste_alert_share: Option<f64>,
    variance_alert_share: Option<f64>,
    /// Read and ignored: slow movers replaced the over-stock list, and
    /// files written for it still load.
    overstock_factor: Option<f64>,
    safety_stock: Option<f64>,
    max_clock_skew_seconds: Option<u32>,
    currency: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KitchenSection {
    lead_time_minutes: u32,
    delivery_windows: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TravelSection {
    between: [String; 2],
    minutes: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoursSection {
    open: String,
    close: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceSection {
    id: String,
    role: String,
    store: Option<String>,
    password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationSection {
    id: String,
    role: String,
    store: Option<String>,
    stores: Option<Vec<String>>,
    token_sha256: String,
    max_requests_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    id: String,
    url: String,
    secret: String,
    #[serde(default)]
    kinds: Vec<String>,
    store: Option<String>,
    stores: Option<Vec<String>>,
    retry_for_seconds: Option<u64>,
    first_retry_seconds: Option<f64>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    listen: String,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerSection {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    allow_anonymous: bool,
    max_inflight: Option<u16>,
    max_mqueue_len: Option<usize>,
    max_connections: Option<usize>,
    max_packet_size: Option<u32>,
    max_publish_rate: Option<u32>,
    login_failures_per_minute: Option<u32>,
    checkpoint_interval_ms: Option<u64>,
    validating_front: Option<bool>,
    tls: Option<TlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkuSection {
    id: String,
    name: String,
    unit: String,
    #[serde(default = "one")]
    pack: f64,
    reorder_point: f64,
    par: f64,
    opening: Option<f64>,
    cost: Option<f64>,
    cost_unit: Option<String>,
    shelf_life_days: Option<u32>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DishSection {
    id: String,
    name: String,
    #[serde(default)]
    low_mark: u64,
    recipe: Vec<RecipeSection>,
    category: Option<String>,
    price: Option<String>,
    #[serde(default)]
    external: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeSection {
    sku: String,
    qty: f64,
    unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    id: String,
    name: String,
    menu: Option<Vec<String>>,
    #[serde(default)]
    stock: BTreeMap<String, StockSection>,
    hours: Option<HoursSection>,
    #[serde(default)]
    feeds: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    scales: BTreeMap<String, ScaleSection>,
    #[serde(default)]
    probes: BTreeMap<String, ProbeSection>,
    #[serde(default)]
    training: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSection {
    skus: Vec<String>,
    min_c: f64,
    max_c: f64,
    #[serde(default = "fifteen")]
    grace_minutes: f64,
    #[serde(default = "fifteen")]
    silent_minutes: f64,
}

fn fifteen() -> f64 {
    15.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleSection {
    sku: String,
    #[serde(default)]
    tare_grams: i64,
    piece_grams: Option<i64>,
    deadband: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockSection {
    reorder_point: Option<f64>,
    par: Option<f64>,
    opening: Option<f64>,
    cost: Option<f64>,
}

/// Everything the broker needs to run, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The plaintext MQTT listener.
    pub listen: SocketAddr,
    /// Where sled keeps the ledger and state.
    pub data_dir: PathBuf,
    /// Whether clients may connect without credentials (demo only).
    pub allow_anonymous: bool,
    /// Per-connection in-flight window (ARCHITECTURE.md, *The engine*: ≈ 100).
    pub max_inflight: u16,
    /// Per-connection outgoing queue bound (ARCHITECTURE.md, *The engine*: 10k–100k).
    pub max_mqueue_len: usize,
    /// Most client connections at once (per listener).
    pub max_connections: usize,
    /// Largest MQTT packet accepted; a larger one closes the connection.
    pub max_packet_size: u32,
    /// Publishes per second one client may send (bursts up to twice that);
    /// a faster client is slowed down to it.
    pub max_publish_rate: u32,
    /// Failed logins per minute from one address before logins from it are
    /// refused unchecked.
    pub login_failures_per_minute: u32,
    /// How often committed groups move from the journal into sled: longer
    /// means fewer sled writes and a longer journal to replay at start.
    pub checkpoint_interval: std::time::Duration,
    /// Whether the listeners check every packet before the engine does
    /// (`front.rs`, CONFORMANCE.md); TLS then ends in the front.
    pub validating_front: bool,
    /// The TLS listener, if any.
    pub tls: Option<TlsSettings>,
    /// The HTTP listener (health and readiness), if any.
    pub web: Option<SocketAddr>,
    /// Whether it serves over TLS, with the `tls` listener's certificate.
    pub web_tls: bool,
    /// Play the demo chain's dinner service with this seed (set by the
    /// command line for the built-in demo, never by a file).
    pub demo_service: Option<u64>,
    /// Topic namespaces outside the contract, carried as plain MQTT.
    pub namespaces: Vec<crate::namespaces::Namespace>,
    /// Every device allowed to log in.
    pub credentials: Vec<Credential>,
    /// Every system allowed to call the HTTP API.
    pub integrations: Vec<crate::api::integrations::Integration>,
    /// Where webhooks go.
    pub webhooks: Vec<crate::webhooks::Endpoint>,
    /// How long history is kept.
    pub retention: crate::store::retention::Retention,
    /// The web app: who may log in, and how.
    pub web_app: crate::people::WebApp,
    /// The chain.
    pub catalog: Arc<Catalog>,
    /// The file (and command-line overrides) these settings were read
    /// from, for a reload; `None` for the built-in demo chain.
    pub source: Option<crate::reload::Source>,
}

/// The TLS listener.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// One problem in a configuration file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where: a TOML path such as `dishes[3].recipe[1].sku`, or a line.
    pub place: String,
    /// What is wrong.
    pub problem: String,
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file, if it came from one.
    pub file: Option<PathBuf>,
    /// The problems, in file order.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_deref()
            .map_or("configuration".into(), |p| p.display().to_string());
        writeln!(f, "{file}: {} problem(s)", self.issues.len())?;
        for issue in &self.issues {
            writeln!(f, "  {}: {}", issue.place, issue.problem)?;
        }
        Ok(())
    }
}

impl Settings {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            issues: vec![ConfigIssue {
                place: "file".into(),
                problem: e.to_string(),
            }],
        })?;
        Settings::parse(&text).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// The built-in demo chain (anonymous access on).
    pub fn demo() -> Result<Settings, ConfigError> {
        Settings::parse(DEMO_TOML)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Settings, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let place = match e.span() {
                Some(span) => {
                    let line = text.as_bytes()[..span.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1;
                    format!("line {line}")
                }
                None => "file".into(),
            };
            ConfigError {
                file: None,
                issues: vec![ConfigIssue {
                    place,
                    problem: e.message().to_string(),
                }],
            }
        })?;
        let mut v = Validator::default();
        let settings = v.settings(file);
        match settings {
            Some(s) if v.issues.is_empty() => Ok(s),
            _ => Err(ConfigError {
                file: None,
                issues: v.issues,
            }),
        }
    }
}

#[derive(Default)]
struct Validator {
    issues: Vec<ConfigIssue>,
    /// Each SKU's `cost_unit`: a store's `cost` for it is in the same.
    cost_units: BTreeMap<SkuId, Unit>,
}

impl Validator {
    fn issue(&mut self, place: impl Into<String>, problem: impl Into<String>) {
        self.issues.push(ConfigIssue {
            place: place.into(),
            problem: problem.into(),
        });
    }

    fn id<T: std::str::FromStr>(&mut self, place: &str, s: &str) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        match s.parse() {
            Ok(id) => Some(id),
            Err(e) => {
                self.issue(place, e.to_string());
                None
            }
        }
    }

    /// A price `cost` per one `per` as millionths of the currency per base
    /// unit of `base` (`per` measures `base`).
    fn unit_cost(&mut self, place: &str, cost: f64, per: Unit, base: BaseUnit) -> Option<i64> {
        let bases = (Quantity { qty: 1.0, unit: per }).to_base(base).ok()?;
        let micros = cost * 1e6 / bases as f64;
        if !(cost.is_finite() && cost >= 0.0 && micros <= 1e12) {
            self.issue(place, "must be a price of 0 or more");
            return None;
        }
        let rounded = micros.round() as i64;
        if cost > 0.0 && rounded == 0 {
            self.issue(
                place,
                format!("{cost} per {per} is below a millionth per {base}: give it per a larger unit"),
            );
            return None;
        }
        Some(rounded)
    }

    /// A quantity in `unit` (default: the base unit) as a positive-or-zero
    /// integer of `base`.
    fn base_qty(&mut self, place: &str, qty: f64, unit: Option<&str>, base: BaseUnit, min: i64) -> Option<i64> {
        let unit = match unit.map(str::parse::<Unit>) {
            None => Unit::from(base),
            Some(Ok(u)) => u,
            Some(Err(e)) => {
                self.issue(place, e.to_string());
                return None;
            }
        };
        match (Quantity { qty, unit }).to_base(base) {
            Ok(n) if n >= min => Some(n),
            Ok(n) => {
                self.issue(place, format!("{n} {base} is below the minimum of {min}"));
                None
            }
            Err(e) => {
                self.issue(place, e.to_string());
                None
            }
        }
    }

    fn settings(&mut self, file: FileConfig) -> Option<Settings> {
        let broker = self.broker(&file.broker);
        let (skus, defaults) = self.skus(&file.skus);
        let units: BTreeMap<SkuId, BaseUnit> = skus.iter().map(|s| (s.id.clone(), s.unit)).collect();
        let dishes = self.dishes(&file.dishes, &units);
        let stores = self.stores(&file.stores, &dishes, &defaults, &units);
        if stores.is_empty() {
            self.issue("stores", "at least one store is needed");
        }
        let store_ids: BTreeSet<StoreId> = stores.iter().map(|s| s.id.clone()).collect();
        let credentials = self.devices(&file.devices, &store_ids);
        let integrations = self.integrations(&file.integrations, &store_ids, &credentials);
        let webhooks = self.webhooks(&file.webhooks, &store_ids);
        let users = self.users(&file.users, &store_ids, &credentials, &integrations);
        let session_hours = file.web.as_ref().and_then(|w| w.session_hours).unwrap_or(12.0);
        if !(session_hours.is_finite() && (0.01..=720.0).contains(&session_hours)) {
            self.issue("web.session_hours", "must be 0.01 to 720");
        }
        let web_tls = file.web.as_ref().is_some_and(|w| w.tls);
        if web_tls && file.broker.tls.is_none() {
            self.issue("web.tls", "serves with [broker.tls] cert and key: configure them");
        }
        let web_app = crate::people::WebApp {
            secure_cookies: web_tls,
            users,
            session_ttl: std::time::Duration::from_secs_f64(session_hours.clamp(0.01, 720.0) * 3600.0),
            floor_public: file.web.as_ref().is_some_and(|w| w.floor_public),
        };
        let namespaces = self.namespaces(&file.namespaces);
        let retention = self.retention(&file.retention);
        let tls = file.broker.tls.as_ref().and_then(|t| self.tls(t));
        let web = file.web.as_ref().and_then(|w| match w.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                self.issue("web.listen", format!("not an address:port ({e})"));
                None
            }
        });
        if !self.issues.is_empty() {
            return None;
        }
        let planning = self.planning(&file, &store_ids, &units)?;
        if !self.issues.is_empty() {
            return None;
        }
        let catalog = match Catalog::new(skus, dishes, stores).and_then(|c| c.with_planning(planning)) {
            Ok(c) => c,
            Err(e) => {
                self.issue("catalog", e.to_string());
                return None;
            }
        };
        let broker = broker?;
        Some(Settings {
            listen: broker.listen,
            data_dir: file.broker.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            allow_anonymous: file.broker.allow_anonymous,
            max_inflight: broker.max_inflight,
            max_mqueue_len: broker.max_mqueue_len,
            max_connections: broker.max_connections,
            max_packet_size: broker.max_packet_size,
            max_publish_rate: broker.max_publish_rate,
            login_failures_per_minute: broker.login_failures_per_minute,
            checkpoint_interval: broker.checkpoint_interval,
            validating_front: file.broker.validating_front.unwrap_or(true),
            tls,
            web,
            web_tls,
            demo_service: None,
            namespaces,
            credentials,
            integrations,
            webhooks,
            retention,
            web_app,
            catalog: Arc::new(catalog),
            source: None,
        })
    }

    /// `[retention]`: each kind of history's window (0 days: kept for
    /// good) and how often compaction runs.
    fn retention(&mut self, r: &RetentionSection) -> crate::store::retention::Retention {
        use std::time::Duration;
        let defaults = crate::store::retention::Retention::default();
        let mut days = |key: &str, given: Option<f64>, default: Option<Duration>| match given {
            None => default,
            Some(0.0) => None,
            Some(d) if d.is_finite() && d > 0.0 && d <= 36_500.0 => Some(Duration::from_secs_f64(d * 86_400.0)),
            Some(_) => {
                self.issue(
                    format!("retention.{key}"),
                    "must be 0 (keep for good) or more, up to 36500 days",
                );
                default
            }
        };
        let ledger = days("ledger_days", r.ledger_days, defaults.ledger);
        let event_ids = days("event_id_days", r.event_id_days, defaults.event_ids);
        let sales = days("sale_days", r.sale_days, defaults.sales);
        let dead_letters = days("dead_letter_days", r.dead_letter_days, defaults.dead_letters);
        let every = match r.compact_every_minutes {
            None => defaults.every,
            Some(m) if m.is_finite() && (0.01..=1440.0).contains(&m) => Duration::from_secs_f64(m * 60.0),
            Some(_) => {
                self.issue("retention.compact_every_minutes", "must be 0.01 to 1440 (a day)");
                defaults.every
            }
        };
        crate::store::retention::Retention {
            ledger,
            event_ids,
            sales,
            dead_letters,
            every,
        }
    }

    /// `[broker]`: the listener and its limits (`None` when the listen
    /// address is not one; every problem is an issue).
    fn broker(&mut self, b: &BrokerSection) -> Option<BrokerLimits> {
        let listen = match b.listen.as_deref().unwrap_or(DEFAULT_LISTEN).parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                self.issue("broker.listen", format!("not an address:port ({e})"));
                None
            }
        };
        let max_inflight = b.max_inflight.unwrap_or(100);
        if max_inflight == 0 {
            self.issue("broker.max_inflight", "must be at least 1");
        }
        let max_mqueue_len = b.max_mqueue_len.unwrap_or(50_000);
        if max_mqueue_len < 1000 {
            self.issue(
                "broker.max_mqueue_len",
                "must be at least 1000 (small queues drop messages silently)",
            );
        }
        let max_connections = b.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            self.issue("broker.max_connections", "must be at least 1");
        }
        let max_packet_size = b.max_packet_size.unwrap_or(256 * 1024);
        if (max_packet_size as usize) < dishsync_protocol::MAX_INPUT_PAYLOAD + 1024 {
            self.issue(
                "broker.max_packet_size",
                format!(
                    "must be at least {} bytes (inputs may be 16 KiB)",
                    dishsync_protocol::MAX_INPUT_PAYLOAD + 1024
                ),
            );
        }
        let max_publish_rate = b.max_publish_rate.unwrap_or(500);
        if max_publish_rate == 0 {
            self.issue("broker.max_publish_rate", "must be at least 1");
        }
        let checkpoint_ms = b.checkpoint_interval_ms.unwrap_or(500);
        if !(10..=86_400_000).contains(&checkpoint_ms) {
            self.issue("broker.checkpoint_interval_ms", "must be from 10 to 86400000 (a day)");
        }
        Some(BrokerLimits {
            listen: listen?,
            max_inflight,
            max_mqueue_len,
            max_connections,
            max_packet_size,
            max_publish_rate,
            login_failures_per_minute: b.login_failures_per_minute.unwrap_or(10),
            checkpoint_interval: std::time::Duration::from_millis(checkpoint_ms),
        })
    }

    /// `[[skus]]`: the SKUs, and each one's stock targets for every store
    /// that does not set its own.
    fn skus(&mut self, sections: &[SkuSection]) -> (Vec<Sku>, BTreeMap<SkuId, StockParams>) {
        let mut skus = Vec::new();
        let mut defaults = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (i, s) in sections.iter().enumerate() {
            let place = format!("skus[{i}]");
            let Some(id) = self.id::<SkuId>(&format!("{place}.id"), &s.id) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                self.issue(format!("{place}.id"), format!("SKU {id} is defined twice"));
            }
            let unit = match s.unit.as_str() {
                "g" => BaseUnit::G,
                "ml" => BaseUnit::Ml,
                "pcs" => BaseUnit::Pcs,
                other => {
                    self.issue(
                        format!("{place}.unit"),
                        format!("{other:?} is not a base unit (g, ml or pcs)"),
                    );
                    continue;
                }
            };
            let pack = self.base_qty(&format!("{place}.pack"), s.pack, None, unit, 1);
            let rp = self.base_qty(&format!("{place}.reorder_point"), s.reorder_point, None, unit, 0);
            let par = self.base_qty(&format!("{place}.par"), s.par, None, unit, 0);
            let opening = match s.opening {
                Some(q) => self.base_qty(&format!("{place}.opening"), q, None, unit, 0).map(Some),
                None => Some(None),
            };
            let cost_unit = match s.cost_unit.as_deref().map(str::parse::<Unit>) {
                None => Some(Unit::from(unit)),
                Some(Ok(u)) if u.base().0 == unit => Some(u),
                Some(Ok(u)) => {
                    self.issue(
                        format!("{place}.cost_unit"),
                        format!("{u} does not measure {unit} (wrong unit family)"),
                    );
                    None
                }
                Some(Err(e)) => {
                    self.issue(format!("{place}.cost_unit"), e.to_string());
                    None
                }
            };
            let unit_cost = match (s.cost, cost_unit) {
                (Some(cost), Some(per)) => {
                    self.cost_units.insert(id.clone(), per);
                    self.unit_cost(&format!("{place}.cost"), cost, per, unit).map(Some)
                }
                (None, Some(per)) => {
                    self.cost_units.insert(id.clone(), per);
                    Some(None)
                }
                (_, None) => None,
            };
            if let (Some(rp), Some(par), Some(opening), Some(unit_cost)) = (rp, par, opening, unit_cost) {
                if par < rp {
                    self.issue(
                        format!("{place}.par"),
                        format!("par {par} is below the reorder point {rp}"),
                    );
                }
                defaults.insert(
                    id.clone(),
                    StockParams {
                        reorder_point: rp,
                        par,
                        opening,
                        unit_cost,
                    },
                );
            }
            if s.shelf_life_days == Some(0) {
                self.issue(format!("{place}.shelf_life_days"), "must be at least 1");
            }
            if let Some(pack) = pack {
                skus.push(Sku {
                    id,
                    name: s.name.clone(),
                    unit,
                    pack,
                    shelf_life_days: s.shelf_life_days,
                });
            }
        }
        (skus, defaults)
    }

    /// `[[dishes]]`: the dishes and their recipes over the SKUs of `units`.
    fn dishes(&mut self, sections: &[DishSection], units: &BTreeMap<SkuId, BaseUnit>) -> Vec<Dish> {
        let mut dishes = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, d) in sections.iter().enumerate() {
            let place = format!("dishes[{i}]");
            let Some(id) = self.id::<DishId>(&format!("{place}.id"), &d.id) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                self.issue(format!("{place}.id"), format!("dish {id} is defined twice"));
            }
            if d.recipe.is_empty() {
                self.issue(format!("{place}.recipe"), "a dish needs at least one ingredient");
            }
            let mut recipe = Vec::new();
            for (j, line) in d.recipe.iter().enumerate() {
                let lplace = format!("{place}.recipe[{j}]");
                let Some(sku) = self.id::<SkuId>(&format!("{lplace}.sku"), &line.sku) else {
                    continue;
                };
                let Some(&unit) = units.get(&sku) else {
                    self.issue(format!("{lplace}.sku"), format!("unknown SKU {sku}"));
                    continue;
                };
                if let Some(per_portion) =
                    self.base_qty(&format!("{lplace}.qty"), line.qty, line.unit.as_deref(), unit, 1)
                {
                    recipe.push(RecipeLine { sku, per_portion });
                }
            }
            if let Some(price) = &d.price {
                let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
                let valid = match price.split_once('.') {
                    Some((whole, cents)) => digits(whole) && digits(cents) && cents.len() <= 2,
                    None => digits(price),
                };
                if !valid {
                    self.issue(
                        format!("{place}.price"),
                        format!("{price:?} is not a price (digits, and up to two after a point: \"12.50\")"),
                    );
                }
            }
            if d.category.as_ref().is_some_and(|c| c.is_empty() || c.len() > 64) {
                self.issue(format!("{place}.category"), "must be 1 to 64 bytes");
            }
            for (channel, item) in &d.external {
                let plain = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
                if !plain(channel) || !plain(item) {
                    self.issue(
                        format!("{place}.external.{channel}"),
                        "a channel and its item id are 1 to 128 printable ASCII characters",
                    );
                }
            }
            dishes.push(Dish {
                id,
                name: d.name.clone(),
                low_mark: d.low_mark,
                recipe,
                category: d.category.clone(),
                price: d.price.clone(),
                external: d.external.clone(),
            });
        }
        dishes
    }

    /// `[[stores]]`: the stores, their menus over `dishes` and their stock
    /// targets (`defaults` unless a store sets its own).
    fn stores(
        &mut self,
        sections: &[StoreSection],
        dishes: &[Dish],
        defaults: &BTreeMap<SkuId, StockParams>,
        units: &BTreeMap<SkuId, BaseUnit>,
    ) -> Vec<Store> {
        let dish_ids: BTreeSet<DishId> = dishes.iter().map(|d| d.id.clone()).collect();
        let mut stores = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, s) in sections.iter().enumerate() {
            let place = format!("stores[{i}]");
            let Some(id) = self.id::<StoreId>(&format!("{place}.id"), &s.id) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                self.issue(format!("{place}.id"), format!("store {id} is defined twice"));
            }
            let menu = match &s.menu {
                // Every dish, in the order the configuration lists them.
                None => dishes.iter().map(|d| d.id.clone()).collect(),
                Some(names) => {
                    let mut menu = Vec::new();
                    for (j, name) in names.iter().enumerate() {
                        let mplace = format!("{place}.menu[{j}]");
                        let Some(dish) = self.id::<DishId>(&mplace, name) else {
                            continue;
                        };
                        if !dish_ids.contains(&dish) {
                            self.issue(mplace, format!("unknown dish {dish}"));
                        } else if menu.contains(&dish) {
                            self.issue(mplace, format!("dish {dish} is on the menu twice"));
                        } else {
                            menu.push(dish);
                        }
                    }
                    menu
                }
            };
            let mut stock = defaults.clone();
            for (name, params) in &s.stock {
                let splace = format!("{place}.stock.{name}");
                let Some(sku) = self.id::<SkuId>(&splace, name) else {
                    continue;
                };
                let (Some(&unit), Some(default)) = (units.get(&sku), defaults.get(&sku)) else {
                    self.issue(splace, format!("unknown SKU {sku}"));
                    continue;
                };
                let rp = match params.reorder_point {
                    Some(q) => self.base_qty(&format!("{splace}.reorder_point"), q, None, unit, 0),
                    None => Some(default.reorder_point),
                };
                let par = match params.par {
                    Some(q) => self.base_qty(&format!("{splace}.par"), q, None, unit, 0),
                    None => Some(default.par),
                };
                let opening = match params.opening {
                    Some(q) => self.base_qty(&format!("{splace}.opening"), q, None, unit, 0).map(Some),
                    None => Some(default.opening),
                };
                let per = self.cost_units.get(&sku).copied().unwrap_or(Unit::from(unit));
                let unit_cost = match params.cost {
                    Some(cost) => self.unit_cost(&format!("{splace}.cost"), cost, per, unit).map(Some),
                    None => Some(default.unit_cost),
                };
                if let (Some(reorder_point), Some(par), Some(opening), Some(unit_cost)) = (rp, par, opening, unit_cost)
                {
                    if par < reorder_point {
                        self.issue(
                            splace.clone(),
                            format!("par {par} is below the reorder point {reorder_point}"),
                        );
                    }
                    stock.insert(
                        sku,
                        StockParams {
                            reorder_point,
                            par,
                            opening,
                            unit_cost,
                        },
                    );
                }
            }
            stores.push(Store {
                id,
                name: s.name.clone(),
                menu,
                stock,
                training: s.training,
            });
        }
        stores
    }
}

/// The `[broker]` section, checked.
struct BrokerLimits {
    listen: SocketAddr,
    max_inflight: u16,
    max_mqueue_len: usize,
    max_connections: usize,
    max_packet_size: u32,
    max_publish_rate: u32,
    login_failures_per_minute: u32,
    checkpoint_interval: std::time::Duration,
}

/// `HH:MM` → minutes of the day.
fn clock_time(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

impl Validator {
    fn namespaces(&mut self, sections: &[NamespaceSection]) -> Vec<crate::namespaces::Namespace> {
        let mut out: Vec<crate::namespaces::Namespace> = Vec::new();
        for (i, n) in sections.iter().enumerate() {
            let place = format!("namespaces[{i}]");
            if let Some(problem) = crate::namespaces::prefix_problem(&n.prefix) {
                self.issue(format!("{place}.prefix"), problem);
                continue;
            }
            if out.iter().any(|o| o.prefix == n.prefix) {
                self.issue(
                    format!("{place}.prefix"),
                    format!("namespace {} is defined twice", n.prefix),
                );
            }
            let mut roles = |key: &str, names: &[String]| -> std::collections::BTreeSet<Role> {
                names
                    .iter()
                    .enumerate()
                    .filter_map(|(j, name)| match name.parse::<Role>() {
                        Ok(role) => Some(role),
                        Err(e) => {
                            self.issue(format!("{place}.{key}[{j}]"), e);
                            None
                        }
                    })
                    .collect()
            };
            let publish = roles("publish", &n.publish);
            let subscribe = roles("subscribe", &n.subscribe);
            out.push(crate::namespaces::Namespace {
                prefix: n.prefix.clone(),
                per_store: n.per_store,
                publish,
                subscribe,
            });
        }
        out
    }

    fn clock(&mut self, place: String, s: &str) -> Option<u32> {
        let t = clock_time(s);
        if t.is_none() {
            self.issue(place, format!("{s:?} is not a time of day (HH:MM)"));
        }
        t
    }

    fn planning(
        &mut self,
        file: &FileConfig,
        stores: &BTreeSet<StoreId>,
        units: &BTreeMap<SkuId, BaseUnit>,
    ) -> Option<Planning> {
        let mut p = Planning::default();
        let section = &file.planning;
        if let Some(offset) = &section.utc_offset {
            let parsed = offset.strip_prefix(['+', '-']).and_then(clock_time).map(|m| {
                if offset.starts_with('-') {
                    -(m as i32)
                } else {
                    m as i32
                }
            });
            match parsed {
                Some(m) => p.utc_offset_minutes = m,
                None => self.issue(
                    "planning.utc_offset",
                    format!("{offset:?} is not an offset like +01:00"),
                ),
            }
        }
        if let Some(h) = section.forecast_horizon_minutes {
            p.horizon_minutes = h;
        }
        if let Some(t) = section.forecast_time_constant_minutes {
            if t.is_finite() && t >= 1.0 {
                p.rate_time_constant_minutes = t;
            } else {
                self.issue("planning.forecast_time_constant_minutes", "must be at least 1");
            }
        }
        if let Some(m) = section.merge_window_minutes {
            p.merge_window_minutes = m;
        }
        if let Some(m) = section.transfer_timeout_minutes {
            if m.is_finite() && m > 0.0 {
                p.transfer_timeout_minutes = m;
            } else {
                self.issue("planning.transfer_timeout_minutes", "must be positive");
            }
        }
        if let Some(share) = section.waste_alert_share {
            if (0.0..=1.0).contains(&share) {
                p.waste_alert_share = share;
            } else {
                self.issue("planning.waste_alert_share", "must be between 0 and 1");
            }
        }
        if let Some(share) = section.variance_alert_share {
            if share.is_finite() && share > 0.0 {
                p.variance_alert_share = share;
            } else {
                self.issue("planning.variance_alert_share", "must be positive (0.05: 5 %)");
            }
        }
        if let Some(f) = section.overstock_factor {
            if !(f.is_finite() && f > 0.0) {
                self.issue("planning.overstock_factor", "must be positive");
            }
        }
        if let Some(safety) = section.safety_stock {
            if safety.is_finite() && (0.0..=10.0).contains(&safety) {
                p.safety_stock = safety;
            } else {
                self.issue(
                    "planning.safety_stock",
                    "must be from 0 to 10 (0.2: 20 % above the use expected)",
                );
            }
        }
        if let Some(skew) = section.max_clock_skew_seconds {
            p.max_clock_skew_seconds = skew;
        }
        if let Some(code) = &section.currency {
            if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
                p.currency = Some(code.clone());
            } else {
                self.issue(
                    "planning.currency",
                    "must be an ISO 4217 code of three capital letters (EUR, USD)",
                );
            }
        }
        if let Some(k) = &file.central_kitchen {
            let mut windows = Vec::new();
            for (i, w) in k.delivery_windows.iter().enumerate() {
                windows.extend(self.clock(format!("central_kitchen.delivery_windows[{i}]"), w));
            }
            windows.sort_unstable();
            p.kitchen = Kitchen {
                lead_time_minutes: k.lead_time_minutes,
                windows,
            };
        }
        for (i, t) in file.travel.iter().enumerate() {
            let place = format!("travel[{i}].between");
            let a = self.id::<StoreId>(&place, &t.between[0]);
            let b = self.id::<StoreId>(&place, &t.between[1]);
            let (Some(a), Some(b)) = (a, b) else { continue };
            for s in [&a, &b] {
                if !stores.contains(s) {
                    self.issue(place.clone(), format!("unknown store {s}"));
                }
            }
            if a == b {
                self.issue(place.clone(), "a store does not travel to itself");
            }
            p.travel.insert((a, b), t.minutes);
        }
        for (i, s) in file.stores.iter().enumerate() {
            let Ok(store) = s.id.parse::<StoreId>() else { continue };
            if let Some(h) = &s.hours {
                let open = self.clock(format!("stores[{i}].hours.open"), &h.open);
                let close = self.clock(format!("stores[{i}].hours.close"), &h.close);
                if let (Some(open), Some(close)) = (open, close) {
                    p.hours.insert(store.clone(), (open, close));
                }
            }
            let mut feeds = BTreeMap::new();
            for (device, skus) in &s.feeds {
                let place = format!("stores[{i}].feeds.{device}");
                let Some(device) = self.id::<DeviceId>(&place, device) else {
                    continue;
                };
                let mut fed = Vec::new();
                for sku in skus {
                    let Some(sku) = self.id::<SkuId>(&place, sku) else {
                        continue;
                    };
                    if units.contains_key(&sku) {
                        fed.push(sku);
                    } else {
                        self.issue(place.clone(), format!("unknown SKU {sku}"));
                    }
                }
                feeds.insert(device, fed);
            }
            if !feeds.is_empty() {
                p.feeds.insert(store.clone(), feeds);
            }
            let mut scales = BTreeMap::new();
            for (device, scale) in &s.scales {
                let place = format!("stores[{i}].scales.{device}");
                let Some(device) = self.id::<DeviceId>(&place, device) else {
                    continue;
                };
                let Some(sku) = self.id::<SkuId>(&format!("{place}.sku"), &scale.sku) else {
                    continue;
                };
                let Some(unit) = units.get(&sku) else {
                    self.issue(format!("{place}.sku"), format!("unknown SKU {sku}"));
                    continue;
                };
                // Scales wander by a few grams; one piece is always real.
                let deadband = scale.deadband.unwrap_or(if *unit == BaseUnit::Pcs { 1 } else { 10 });
                let binding = ScaleBinding {
                    sku,
                    tare_grams: scale.tare_grams,
                    piece_grams: scale.piece_grams,
                    deadband,
                };
                for problem in binding.problems(*unit) {
                    let at = match problem.field {
                        "" => place.clone(),
                        field => format!("{place}.{field}"),
                    };
                    self.issue(at, problem.message);
                }
                scales.insert(device, binding);
            }
            if !scales.is_empty() {
                p.scales.insert(store.clone(), scales);
            }
            let mut probes = BTreeMap::new();
            for (device, probe) in &s.probes {
                let place = format!("stores[{i}].probes.{device}");
                let Some(device) = self.id::<DeviceId>(&place, device) else {
                    continue;
                };
                let mut skus = Vec::new();
                for (j, sku) in probe.skus.iter().enumerate() {
                    let splace = format!("{place}.skus[{j}]");
                    let Some(sku) = self.id::<SkuId>(&splace, sku) else {
                        continue;
                    };
                    if units.contains_key(&sku) {
                        skus.push(sku);
                    } else {
                        self.issue(splace, format!("unknown SKU {sku}"));
                    }
                }
                let celsius = |c: f64| (c.is_finite() && c.abs() <= 1_000.0).then(|| (c * 1000.0).round() as i64);
                let (Some(min), Some(max)) = (celsius(probe.min_c), celsius(probe.max_c)) else {
                    self.issue(format!("{place}.min_c"), "min_c and max_c must be temperatures in °C");
                    continue;
                };
                if min > max {
                    self.issue(
                        format!("{place}.max_c"),
                        format!("{} is below min_c {}", probe.max_c, probe.min_c),
                    );
                }
                let mut minutes = |key: &str, m: f64| {
                    if m.is_finite() && (0.0..=10_080.0).contains(&m) {
                        (m * 60_000.0).round() as i64
                    } else {
                        self.issue(format!("{place}.{key}"), "must be 0 to 10080 minutes (a week)");
                        0
                    }
                };
                let grace = minutes("grace_minutes", probe.grace_minutes);
                let silent_after = minutes("silent_minutes", probe.silent_minutes);
                probes.insert(
                    device,
                    dishsync_inventory::catalog::ProbeBinding {
                        skus,
                        min_millicelsius: min,
                        max_millicelsius: max,
                        grace,
                        silent_after,
                    },
                );
            }
            if !probes.is_empty() {
                p.probes.insert(store, probes);
            }
        }
        Some(p)
    }

    fn devices(&mut self, devices: &[DeviceSection], stores: &BTreeSet<StoreId>) -> Vec<Credential> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, d) in devices.iter().enumerate() {
            let place = format!("devices[{i}]");
            let Some(device) = self.id::<DeviceId>(&format!("{place}.id"), &d.id) else {
                continue;
            };
            if !seen.insert(device.clone()) {
                self.issue(format!("{place}.id"), format!("device {device} is defined twice"));
            }
            let role = match d.role.parse::<Role>() {
                Ok(r) => r,
                Err(e) => {
                    self.issue(format!("{place}.role"), e);
                    continue;
                }
            };
            let scope = match (&d.store, role.is_hq()) {
                (Some(_), true) => {
                    self.issue(
                        format!("{place}.store"),
                        format!("a {role} device belongs to HQ, not a store"),
                    );
                    continue;
                }
                (None, true) => Scope::Chain,
                (None, false) if role == Role::Operator => Scope::Chain,
                (None, false) => {
                    self.issue(format!("{place}.store"), format!("a {role} device needs its store"));
                    continue;
                }
                (Some(s), false) => {
                    let Some(store) = self.id::<StoreId>(&format!("{place}.store"), s) else {
                        continue;
                    };
                    if !stores.contains(&store) {
                        self.issue(format!("{place}.store"), format!("unknown store {store}"));
                        continue;
                    }
                    Scope::Store(store)
                }
            };
            if !is_valid_hash(&d.password_hash) {
                self.issue(
                    format!("{place}.password_hash"),
                    "not a password hash (make one with `dishsync-broker hash-password`)",
                );
                continue;
            }
            out.push(Credential {
                identity: Identity { device, role, scope },
                password_hash: d.password_hash.clone(),
            });
        }
        out
    }

    fn integrations(
        &mut self,
        sections: &[IntegrationSection],
        stores: &BTreeSet<StoreId>,
        devices: &[Credential],
    ) -> Vec<crate::api::integrations::Integration> {
        use crate::api::integrations::{parse_sha256, Integration, Stores};
        let device_ids: BTreeSet<&DeviceId> = devices.iter().map(|c| &c.identity.device).collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, section) in sections.iter().enumerate() {
            let place = format!("integrations[{i}]");
            let Some(id) = self.id::<DeviceId>(&format!("{place}.id"), &section.id) else {
                continue;
            };
            if !seen.insert(id.clone()) || device_ids.contains(&id) {
                // Its acks and errors topics are its id's: one owner.
                self.issue(
                    format!("{place}.id"),
                    format!("{id} is already a device or an integration"),
                );
            }
            let role = match section.role.parse::<Role>() {
                Ok(r) => r,
                Err(e) => {
                    self.issue(format!("{place}.role"), e);
                    continue;
                }
            };
            let named: Vec<&String> = section.store.iter().chain(section.stores.iter().flatten()).collect();
            let chain_wide = role.is_hq() || role == Role::Operator;
            let scope = match (named.is_empty(), chain_wide) {
                (false, true) => {
                    self.issue(
                        format!("{place}.store"),
                        format!("a {role} integration belongs to HQ, not a store"),
                    );
                    continue;
                }
                (true, true) => Stores::Chain,
                (true, false) => {
                    self.issue(
                        format!("{place}.store"),
                        format!("a {role} integration needs its store or stores"),
                    );
                    continue;
                }
                (false, false) => Stores::Some(self.named_stores(&place, named, stores)),
            };
            let Some(token_sha256) = parse_sha256(&section.token_sha256) else {
                self.issue(
                    format!("{place}.token_sha256"),
                    "not a token hash: 64 hex digits (make a token with `dishsync-broker mint-token`)",
                );
                continue;
            };
            if section.max_requests_per_second == Some(0) {
                self.issue(format!("{place}.max_requests_per_second"), "must be at least 1");
            }
            out.push(Integration {
                id,
                role,
                stores: scope,
                token_sha256,
                rate: section.max_requests_per_second,
            });
        }
        out
    }

    /// `[[users]]`: the people who log in to the web app, each named
    /// unlike any device or integration (their inputs' acks and errors go
    /// to their name's topics).
    fn users(
        &mut self,
        sections: &[UserSection],
        stores: &BTreeSet<StoreId>,
        devices: &[Credential],
        integrations: &[crate::api::integrations::Integration],
    ) -> Vec<crate::people::users::User> {
        use crate::api::integrations::Stores;
        use crate::people::users::{PersonRole, User};
        let taken: BTreeSet<&DeviceId> = devices
            .iter()
            .map(|c| &c.identity.device)
            .chain(integrations.iter().map(|i| &i.id))
            .collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, section) in sections.iter().enumerate() {
            let place = format!("users[{i}]");
            let Some(name) = self.id::<DeviceId>(&format!("{place}.name"), &section.name) else {
                continue;
            };
            if !seen.insert(name.clone()) || taken.contains(&name) {
                self.issue(
                    format!("{place}.name"),
                    format!("{name} is already a user, a device or an integration"),
                );
            }
            let Some(role) = PersonRole::parse(&section.role) else {
                let known: Vec<&str> = PersonRole::ALL.iter().map(|(n, _)| *n).collect();
                self.issue(
                    format!("{place}.role"),
                    format!("unknown role {:?} (known: {})", section.role, known.join(", ")),
                );
                continue;
            };
            let named: Vec<&String> = section.store.iter().chain(section.stores.iter().flatten()).collect();
            let scope = match (named.is_empty(), role.is_chain_wide()) {
                (true, true) => Stores::Chain,
                (false, true) => {
                    self.issue(format!("{place}.store"), "an hq user belongs to HQ, not a store");
                    continue;
                }
                (true, false) => {
                    self.issue(
                        format!("{place}.store"),
                        format!("a {} needs a store or stores", role.as_str()),
                    );
                    continue;
                }
                (false, false) => Stores::Some(self.named_stores(&place, named, stores)),
            };
            if !is_valid_hash(&section.password_hash) {
                self.issue(
                    format!("{place}.password_hash"),
                    "not an argon2 hash (make one with `dishsync-broker hash-password`)",
                );
                continue;
            }
            out.push(User {
                name,
                role,
                stores: scope,
                password_hash: section.password_hash.clone(),
            });
        }
        out
    }

    /// The stores a section of `place` names (`store`, `stores`), each
    /// one of `stores`; every other is an issue.
    fn named_stores(&mut self, place: &str, named: Vec<&String>, stores: &BTreeSet<StoreId>) -> BTreeSet<StoreId> {
        let mut own = BTreeSet::new();
        for s in named {
            if let Some(store) = self.id::<StoreId>(&format!("{place}.stores"), s) {
                if stores.contains(&store) {
                    own.insert(store);
                } else {
                    self.issue(format!("{place}.stores"), format!("unknown store {store}"));
                }
            }
        }
        own
    }

    /// `[[webhooks]]`: the endpoints, each with a valid URL, secret, kinds
    /// and stores.
    fn webhooks(&mut self, sections: &[WebhookSection], stores: &BTreeSet<StoreId>) -> Vec<crate::webhooks::Endpoint> {
        use crate::webhooks::{parse_kinds, Endpoint, Scope, Secret, Subscription, Target};
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, section) in sections.iter().enumerate() {
            let place = format!("webhooks[{i}]");
            let Some(id) = self.id::<DeviceId>(&format!("{place}.id"), &section.id) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                self.issue(format!("{place}.id"), format!("webhook {id} is defined twice"));
            }
            let target = match Target::parse(&section.url) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.issue(format!("{place}.url"), e);
                    None
                }
            };
            // The secret itself is never repeated in a message.
            let secret = Secret::parse(&section.secret);
            if secret.is_none() {
                self.issue(
                    format!("{place}.secret"),
                    "not a signing secret: whsec_ and base64 of at least 24 bytes (make one with \
                     `dishsync-broker webhook-secret`)",
                );
            }
            let kinds = match parse_kinds(&section.kinds) {
                Ok(k) => Some(k),
                Err(e) => {
                    self.issue(format!("{place}.kinds"), e);
                    None
                }
            };
            let named: Vec<&String> = section.store.iter().chain(section.stores.iter().flatten()).collect();
            let scope = if named.is_empty() {
                Scope::Chain
            } else {
                Scope::Stores(self.named_stores(&place, named, stores))
            };
            let retry_for = section
                .retry_for_seconds
                .map_or(crate::webhooks::DEFAULT_RETRY_FOR, std::time::Duration::from_secs);
            if retry_for.is_zero() {
                self.issue(format!("{place}.retry_for_seconds"), "must be at least 1");
            }
            let first_retry = match section.first_retry_seconds {
                None => crate::webhooks::DEFAULT_FIRST_RETRY,
                Some(s) if s.is_finite() && (0.01..=3600.0).contains(&s) => std::time::Duration::from_secs_f64(s),
                Some(_) => {
                    self.issue(format!("{place}.first_retry_seconds"), "must be 0.01 to 3600");
                    continue;
                }
            };
            if let Some(ca) = &section.ca_file {
                if !ca.is_file() {
                    self.issue(format!("{place}.ca_file"), format!("{} is not a file", ca.display()));
                }
            }
            let (Some(target), Some(secret), Some(kinds)) = (target, secret, kinds) else {
                continue;
            };
            out.push(Endpoint {
                id: id.to_string(),
                target,
                url: section.url.clone(),
                secret,
                subscription: Subscription { kinds, scope },
                first_retry,
                retry_for,
                ca_file: section.ca_file.clone(),
            });
        }
        out
    }

    fn tls(&mut self, t: &TlsSection) -> Option<TlsSettings> {
        let listen = match t.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                self.issue("broker.tls.listen", format!("not an address:port ({e})"));
                None
            }
        };
        for (place, path) in [
            ("broker.tls.cert", Some(&t.cert)),
            ("broker.tls.key", Some(&t.key)),
            ("broker.tls.client_ca", t.client_ca.as_ref()),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    self.issue(place, format!("{} is not a readable file", path.display()));
                }
            }
        }
        Some(TlsSettings {
            listen: listen?,
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: t.client_ca.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_chain_is_valid_and_believable() {
        let s = Settings::demo().expect("demo config");
        assert!(s.allow_anonymous);
        let c = &s.catalog;
        assert_eq!(c.stores().count(), 3);
        assert!(c.skus().count() >= 30);
        for store in c.stores() {
            assert!(store.menu.len() >= 20, "{}", store.id);
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = r#"
[broker]
listen = "nowhere"

[[skus]]
id = "beef"
name = "Beef"
unit = "g"
reorder_point = 100
par = 50

[[skus]]
id = "Bad Id"
name = "x"
unit = "oz"
reorder_point = 1
par = 1

[[dishes]]
id = "burger"
name = "Burger"
recipe = [{ sku = "beef", qty = 1, unit = "l" }, { sku = "bun", qty = 1 }]

[[stores]]
id = "s1"
name = "S1"
menu = ["burger", "pizza"]
"#;
        let err = Settings::parse(text).expect_err("invalid");
        let places: Vec<&str> = err.issues.iter().map(|i| i.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "broker.listen",
                "skus[0].par",
                "skus[1].id",
                "dishes[0].recipe[0].qty",
                "dishes[0].recipe[1].sku",
                "stores[0].menu[1]"
            ],
            "{err}"
        );
    }

    /// A chain of one store `s1` selling dish `b` (one bun): `skus` are
    /// more `[[skus]]`, `store` lines go in the store's table, `tail` after
    /// it.
    fn bun_chain(skus: &str, store: &str, tail: &str) -> String {
        format!(
            r#"
[[skus]]
id = "bun"
name = "Bun"
unit = "pcs"
reorder_point = 1
par = 2

{skus}
[[dishes]]
id = "b"
name = "B"
recipe = [{{ sku = "bun", qty = 1 }}]

[[stores]]
id = "s1"
name = "S1"
{store}
{tail}"#
        )
    }

    /// Costs are read per their unit as millionths of the currency per base
    /// unit; a store's cost is per the SKU's unit too.
    #[test]
    fn costs_are_read_per_base_unit_and_checked() {
        let beef = "[[skus]]\nid = \"beef\"\nname = \"Beef\"\nunit = \"g\"\nreorder_point = 1\npar = 2\n\
                    cost = 12.50\ncost_unit = \"kg\"\n";
        let text = bun_chain(
            beef,
            "[stores.stock.beef]\ncost = 14\n[stores.stock.bun]\ncost = 0.35",
            "[planning]\ncurrency = \"EUR\"\n",
        );
        let settings = Settings::parse(&text).expect("valid");
        let stock = &settings.catalog.store(&"s1".parse().expect("id")).expect("s1").stock;
        let cost = |sku: &str| stock[&sku.parse::<SkuId>().expect("id")].unit_cost;
        assert_eq!(cost("beef"), Some(14_000), "14.00 a kg: 0.014 a gram");
        assert_eq!(cost("bun"), Some(350_000));
        assert_eq!(settings.catalog.planning().currency.as_deref(), Some("EUR"));

        let bad = bun_chain(
            "[[skus]]\nid = \"oil\"\nname = \"Oil\"\nunit = \"ml\"\nreorder_point = 1\npar = 2\ncost = 2\ncost_unit = \"kg\"\n\
             [[skus]]\nid = \"salt\"\nname = \"Salt\"\nunit = \"g\"\nreorder_point = 1\npar = 2\ncost = -1\n",
            "[stores.stock.bun]\ncost = 0.0000001",
            "",
        );
        let err = Settings::parse(&bad).expect_err("invalid");
        let places: Vec<&str> = err.issues.iter().map(|i| i.place.as_str()).collect();
        assert_eq!(
            places,
            ["skus[1].cost_unit", "skus[2].cost", "stores[0].stock.bun.cost"],
            "{err}"
        );
        let err = Settings::parse(&bun_chain("", "", "[planning]\ncurrency = \"euro\"\n")).expect_err("invalid");
        assert_eq!(err.issues[0].place, "planning.currency", "{err}");
    }

    #[test]
    fn shelf_life_and_safety_stock_are_read_and_checked() {
        // `overstock_factor` still loads, and changes nothing.
        let text = bun_chain("", "", "[planning]\nsafety_stock = 0.5\noverstock_factor = 3\n")
            .replace("par = 2\n", "par = 2\nshelf_life_days = 3\n");
        let settings = Settings::parse(&text).expect("valid");
        let bun = settings.catalog.sku(&"bun".parse().expect("id")).expect("bun");
        assert_eq!(bun.shelf_life_days, Some(3));
        assert_eq!(settings.catalog.planning().safety_stock, 0.5);
        let bad = bun_chain("", "", "").replace("par = 2\n", "par = 2\nshelf_life_days = 0\n");
        let err = Settings::parse(&bad).expect_err("invalid");
        assert_eq!(err.issues[0].place, "skus[0].shelf_life_days", "{err}");
        let err = Settings::parse(&bun_chain("", "", "[planning]\nsafety_stock = -1\n")).expect_err("invalid");
        assert_eq!(err.issues[0].place, "planning.safety_stock", "{err}");
    }

    #[test]
    fn webhooks_are_checked_and_their_secret_never_repeated() {
        let secret = crate::webhooks::Secret::generate().expect("secret");
        let good = Settings::parse(&bun_chain(
            "",
            "",
            &format!(
                "[[webhooks]]\nid = \"adapter\"\nurl = \"https://hooks.example.com/d\"\nsecret = \"{secret}\"\n\
                 kinds = [\"availability\"]\nstore = \"s1\"\nretry_for_seconds = 60\n"
            ),
        ))
        .expect("valid");
        let endpoint = &good.webhooks[0];
        assert_eq!((endpoint.id.as_str(), endpoint.target.port), ("adapter", 443));
        assert_eq!(endpoint.retry_for, std::time::Duration::from_secs(60));
        assert_eq!(
            endpoint.subscription.kinds,
            [crate::webhooks::Kind::Availability].into_iter().collect()
        );
        let bad = bun_chain(
            "",
            "",
            "[[webhooks]]\nid = \"a\"\nurl = \"ftp://x\"\nsecret = \"whsec_c2VjcmV0LXRoYXQtbGVha3M=\"\n\
             kinds = [\"levels\"]\nstores = [\"s9\"]\nretry_for_seconds = 0\n\n\
             [[webhooks]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"whsec_c2VjcmV0LXRoYXQtbGVha3M=\"\n",
        );
        let err = Settings::parse(&bad).expect_err("invalid");
        let places: Vec<&str> = err.issues.iter().map(|i| i.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "webhooks[0].url",
                "webhooks[0].secret",
                "webhooks[0].kinds",
                "webhooks[0].stores",
                "webhooks[0].retry_for_seconds",
                "webhooks[1].id",
                "webhooks[1].secret",
            ],
            "{err}"
        );
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn scales_are_checked() {
        let sku = |id: &str, unit: &str| {
            format!("[[skus]]\nid = \"{id}\"\nname = \"{id}\"\nunit = \"{unit}\"\nreorder_point = 1\npar = 2\n")
        };
        let skus = [sku("beef", "g"), sku("cola", "ml")].concat();
        let chain = |scales: &str| bun_chain(&skus, scales, "");
        let good = Settings::parse(&chain(
            r#"scales = { scale-1 = { sku = "beef", tare_grams = 350 }, scale-2 = { sku = "bun", piece_grams = 60 } }"#,
        ))
        .expect("valid");
        let s1: StoreId = "s1".parse().expect("id");
        let scale1 = settings_scale(&good, &s1, "scale-1");
        assert_eq!(
            (scale1.tare_grams, scale1.piece_grams, scale1.deadband),
            (350, None, 10)
        );
        assert_eq!(settings_scale(&good, &s1, "scale-2").deadband, 1, "one piece");

        let err = Settings::parse(&chain(
            r#"scales = { a = { sku = "cola" }, b = { sku = "bun" }, c = { sku = "beef", piece_grams = 5 }, d = { sku = "beef", tare_grams = -1, deadband = 0 }, e = { sku = "lamb" }, f = { sku = "beef", colour = "red" } }"#,
        ))
        .expect_err("invalid");
        let places: Vec<&str> = err.issues.iter().map(|i| i.place.as_str()).collect();
        assert!(
            places.iter().all(|p| p.starts_with("line ")),
            "unknown field first: {err}"
        );
        let err = Settings::parse(&chain(
            r#"scales = { a = { sku = "cola" }, b = { sku = "bun" }, c = { sku = "beef", piece_grams = 5 }, d = { sku = "beef", tare_grams = -1, deadband = 0 }, e = { sku = "lamb" } }"#,
        ))
        .expect_err("invalid");
        let places: Vec<&str> = err.issues.iter().map(|i| i.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "stores[0].scales.a.sku",
                "stores[0].scales.b",
                "stores[0].scales.c.piece_grams",
                "stores[0].scales.d.tare_grams",
                "stores[0].scales.d.deadband",
                "stores[0].scales.e.sku"
            ],
            "{err}"
        );
    }

    fn settings_scale<'a>(settings: &'a Settings, store: &StoreId, device: &str) -> &'a ScaleBinding {
        let device: DeviceId = device.parse().expect("id");
        settings.catalog.scale(store, &device).expect("bound")
    }

    #[test]
    fn devices_are_checked() {
        let hash = crate::auth::hash_password("pw").expect("hash");
        let devices = format!(
            r#"
[[devices]]
id = "pos-1"
role = "pos"
store = "s1"
password_hash = "{hash}"

[[devices]]
id = "hq-1"
role = "hq"
password_hash = "{hash}"

[[devices]]
id = "pos-2"
role = "pos"
password_hash = "{hash}"

[[devices]]
id = "pos-3"
role = "cashier"
store = "s1"
password_hash = "{hash}"

[[devices]]
id = "pos-4"
role = "pos"
store = "s9"
password_hash = "secret"
"#
        );
        let text = bun_chain("", "", &devices);
        let err = Settings::parse(&text).expect_err("invalid devices");
        let places: Vec<&str> = err.issues.iter().map(|i| i.place.as_str()).collect();
        assert_eq!(
            places,
            ["devices[2].store", "devices[3].role", "devices[4].store"],
            "{err}"
        );
        assert!(!err.to_string().contains("$argon2"), "no hash in messages");
    }

    #[test]
    fn unknown_fields_and_syntax_errors_name_a_line() {
        let err = Settings::parse("[broker]\nlisten = \"127.0.0.1:1\"\ncolour = \"blue\"\n").expect_err("unknown");
        assert_eq!(err.issues[0].place, "line 3", "{err}");
        assert!(err.issues[0].problem.contains("colour"), "{err}");
        let err = Settings::parse("[broker\n").expect_err("syntax");
        assert_eq!(err.issues[0].place, "line 1", "{err}");
    }
}

#[cfg(test)]
mod reference {
    use std::collections::BTreeSet;

    /// The fields of every `deny_unknown_fields` struct in `source`: the
    /// keys its parser accepts.
    fn accepted_keys(source: &str) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        let mut lines = source.lines();
        while let Some(line) = lines.next() {
            if line.trim() != "#[serde(deny_unknown_fields)]" {
                continue;
            }
            for field in lines.by_ref().skip(1) {
                let field = field.trim();
                if field.starts_with('}') {
                    break;
                }
                let name = field.trim_start_matches("pub ");
                if let Some((name, _)) = name.split_once(':') {
                    if !name.starts_with("//") && !name.starts_with('#') {
                        keys.insert(name.trim().to_string());
                    }
                }
            }
        }
        keys
    }

    /// The keys CONFIGURATION.md documents: every backticked word in the
    /// first column of its tables and in its headings (the sections).
    fn documented_keys(doc: &str) -> BTreeSet<String> {
        doc.lines()
            .filter_map(|l| match l.strip_prefix("| ") {
                Some(row) => row.split(" |").next(),
                None => l.starts_with('#').then_some(l),
            })
            .flat_map(|cell| {
                // In a heading, only the tables (`[broker]`) are keys.
                let heading = cell.starts_with('#');
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .filter(|w| !heading || w.starts_with('['))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .flat_map(|k| {
                // `[broker.tls]` documents both, `[stores.stock.SKU]` the
                // stock table.
                let k = k.trim_matches(|c| c == '[' || c == ']').to_string();
                k.split('.').map(str::to_string).collect::<Vec<_>>()
            })
            .filter(|k| k != "SKU")
            .collect()
    }

    /// CONFIGURATION.md names exactly the keys the broker's and the
    /// bridge's parsers accept.
    #[test]
    fn the_reference_documents_every_key_and_only_those() {
        let doc = include_str!("../../CONFIGURATION.md");
        // The tables of a file are its sections' fields too.
        let mut accepted = accepted_keys(include_str!("config.rs"));
        accepted.extend(accepted_keys(include_str!("../../firmware-bridge/src/bridge.rs")));
        let documented = documented_keys(doc);
        let undocumented: Vec<&String> = accepted.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "accepted but not in CONFIGURATION.md: {undocumented:?}"
        );
        let unknown: Vec<&String> = documented.difference(&accepted).collect();
        assert!(unknown.is_empty(), "in CONFIGURATION.md but not accepted: {unknown:?}");
    }
}
