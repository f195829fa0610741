//! The HTTP API under `/api/v1`: the way in for the systems a chain already
//! runs (POS, purchasing, delivery platforms), on the broker's web listener.
//!
//! The path of every input and retained document is its MQTT topic under
//! `/api/v1/` (`POST /api/v1/stores/s1/sales` is a sale on
//! `stores/s1/sales`), with the same JSON payloads as topics.md, so an
//! integration and a device speak one contract. Collections (every level of
//! a store, every open request) are the retained documents under one
//! filter.
//!
//! - [`integrations`]: who calls — bearer tokens, each scoped like the
//!   device of its role;
//! - `inputs`: POSTs, through the one intake path every transport takes
//!   (`hooks::admit`, then the rules task), answered after the commit;
//! - `reads`: GETs of the retained documents, with `ETag` from `rev`;
//! - `ledger`: a store's history, paged by a stable cursor;
//! - `alerts`: a store's alerts, raised now and recent;
//! - `backup`: a consistent backup of the running broker, streamed;
//! - `reload`: the configuration re-read, for an operator;
//! - `report`: a store's day — sales, use and waste — from its ledger;
//! - `webhooks`: the webhook endpoints' queues and dead letters (HQ);
//! - [`answer`]: the HTTP status of every verdict and refusal (pure).
//!
//! The routes answer 503 until the state is restored (the listener opens
//! before, for `/readyz`).

mod alerts;
pub mod answer;
mod backup;
pub(crate) use alerts::record as alerts_record;
pub(crate) use inputs::submit_as;
pub use report::day_bounds;
pub(crate) use report::{day as store_day, Day};
mod inputs;
pub mod integrations;
mod ledger;
mod reads;
mod reload;
mod report;
mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::Router;
use dishsync_protocol::{DeviceId, StoreId};

use crate::acl::Identity;
use crate::current::Current;
use crate::hooks::PublishLimiter;
use crate::namespaces::Namespaces;
use crate::outbound::Outbound;
use crate::rules::RulesHandle;
use answer::ApiError;
use integrations::{Integration, Integrations};

/// What the API serves from, once the state is restored.
pub struct Api {
    rules: RulesHandle,
    namespaces: Arc<Namespaces>,
    out: Outbound,
    store: crate::store::Store,
    /// The chain and who may call, as the configuration says now.
    directory: Current<Directory>,
    /// The webhook endpoints, if any.
    webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    /// The web app's people and sessions, if it serves people.
    people: Option<crate::people::People>,
    /// Re-reads the configuration, when it came from a file.
    reloader: Option<Arc<crate::reload::Reloader>>,
}

/// The parts of the API a reload replaces.
pub struct Directory {
    catalog: Arc<dishsync_inventory::Catalog>,
    integrations: Integrations,
    /// One bucket per integration, at its own rate.
    limiters: HashMap<DeviceId, PublishLimiter>,
}

impl Directory {
    /// The chain `catalog` and its `integrations`; `default_rate` is the
    /// requests per second of an integration that sets none.
    pub fn new(
        catalog: Arc<dishsync_inventory::Catalog>,
        integrations: &[Integration],
        default_rate: u32,
    ) -> Directory {
        let limiters = integrations
            .iter()
            .map(|i| (i.id.clone(), PublishLimiter::new(i.rate.unwrap_or(default_rate))))
            .collect();
        Directory {
            catalog,
            integrations: Integrations::new(integrations),
            limiters,
        }
    }
}

impl Api {
    /// The API over `rules` (inputs), `out` (retained documents) and
    /// `store` (the ledger) of the chain `catalog`, for `integrations`;
    /// `default_rate` is the requests per second of an integration that
    /// sets none.
    pub fn new(
        rules: RulesHandle,
        namespaces: Arc<Namespaces>,
        out: Outbound,
        store: crate::store::Store,
        directory: Current<Directory>,
    ) -> Api {
        Api {
            rules,
            namespaces,
            out,
            store,
            directory,
            webhooks: None,
            people: None,
            reloader: None,
        }
    }

    /// The API telling of `webhooks`' endpoints too.
    pub fn with_webhooks(self, webhooks: Option<Arc<crate::webhooks::Webhooks>>) -> Api {
        Api { webhooks, ..self }
    }

    /// The API serving the web app's `people` too.
    pub fn with_people(self, people: Option<crate::people::People>) -> Api {
        Api { people, ..self }
    }

    /// The API re-reading the configuration with `reloader` too.
    pub fn with_reloader(self, reloader: Option<Arc<crate::reload::Reloader>>) -> Api {
        Api { reloader, ..self }
    }

    /// The web app's people, if it serves people.
    pub fn people(&self) -> Option<&crate::people::People> {
        self.people.as_ref()
    }

    /// The chain, as the configuration says now.
    pub fn catalog(&self) -> Arc<dishsync_inventory::Catalog> {
        Arc::clone(&self.directory.get().catalog)
    }

    /// Where the broker publishes (the live pages' stream).
    pub fn outbound(&self) -> &Outbound {
        &self.out
    }

    /// The integration whose bearer token `headers` carry, within its rate.
    fn caller(&self, headers: &HeaderMap) -> Result<Integration, ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = presented else {
            return Err(ApiError::unauthenticated(
                "no bearer token: send Authorization: Bearer <token>",
                false,
            ));
        };
        let directory = self.directory.get();
        let Some(integration) = directory.integrations.find(token.trim()) else {
            return Err(ApiError::unauthenticated("the token is not valid", true));
        };
        if let Some(limiter) = directory.limiters.get(&integration.id) {
            limiter
                .try_take(integration.id.as_str(), Instant::now())
                .map_err(ApiError::rate_limited)?;
        }
        Ok(integration.clone())
    }

    /// The identity the caller acts as in `store` (`None`: an HQ path).
    fn identity(&self, headers: &HeaderMap, store: Option<&StoreId>) -> Result<Identity, ApiError> {
        let integration = self.caller(headers)?;
        integration.identity(store).ok_or_else(|| {
            let store = store.map_or("-", StoreId::as_str);
            ApiError::forbidden(format!("{} may not act in store {store}", integration.id))
        })
    }
}

impl Api {
    /// The caller, if it is chain-wide (HQ, the central kitchen, an
    /// operator): what is about every store.
    fn chain_wide(&self, headers: &HeaderMap) -> Result<Integration, ApiError> {
        let integration = self.caller(headers)?;
        match integration.stores {
            integrations::Stores::Chain => Ok(integration),
            integrations::Stores::Some(_) => Err(ApiError::forbidden(format!(
                "{} belongs to a store; this is for chain-wide integrations",
                integration.id
            ))),
        }
    }
}

impl Api {
    /// The caller, if it is a chain-wide `operator` or `hq` integration:
    /// who may `act` on the broker itself (a backup, a reload).
    fn operator(&self, headers: &HeaderMap, act: &str) -> Result<Integration, ApiError> {
        let caller = self.chain_wide(headers)?;
        if matches!(caller.role, crate::acl::Role::Operator | crate::acl::Role::Hq) {
            Ok(caller)
        } else {
            Err(ApiError::forbidden(format!(
                "{} may not {act}: an operator or hq integration does",
                caller.id
            )))
        }
    }
}

/// Where the [`Api`] is put once the state is restored.
pub type Slot = Arc<OnceLock<Api>>;

/// The API, or 503 while the state is being restored.
fn ready(slot: &Slot) -> Result<&Api, ApiError> {
    slot.get().ok_or_else(ApiError::restoring)
}

/// Every input route: `POST`, its path the input's topic.
pub const INPUT_ROUTES: [&str; 10] = [
    "/api/v1/stores/{store}/stock/{sku}/events",
    "/api/v1/stores/{store}/sales",
    "/api/v1/stores/{store}/dishes/{dish}/override",
    "/api/v1/stores/{store}/probes/{probe}/temperature",
    "/api/v1/stores/{store}/probes/{probe}/{action}",
    "/api/v1/stores/{store}/transfers/request",
    "/api/v1/stores/{store}/transfers/{transfer}/{action}",
    "/api/v1/hq/replenishment/{request}/{action}",
    "/api/v1/hq/promotions/{promotion}/plan",
    "/api/v1/hq/promotions/{promotion}/cancel",
];

/// The day's sales in one request.
pub const BATCH_ROUTE: &str = "/api/v1/stores/{store}/sales/batch";

/// A store's ledger.
pub const LEDGER_ROUTE: &str = "/api/v1/stores/{store}/ledger";

/// A store's alerts.
pub const ALERTS_ROUTE: &str = "/api/v1/stores/{store}/alerts";

/// A store's day.
pub const REPORT_ROUTE: &str = "/api/v1/stores/{store}/report";

/// A backup of the running broker.
pub const BACKUP_ROUTE: &str = "/api/v1/admin/backup";

/// The configuration re-read.
pub const RELOAD_ROUTE: &str = "/api/v1/admin/reload";

/// The webhook endpoints and their queues.
pub const WEBHOOKS_ROUTE: &str = "/api/v1/webhooks";

/// An endpoint's dead letters.
pub const DEAD_LETTERS_ROUTE: &str = "/api/v1/webhooks/{webhook}/dead-letters";

/// Every single-document route: `GET`, its path the document's topic.
pub const DOCUMENT_ROUTES: [&str; 11] = [
    "/api/v1/stores/{store}/availability",
    "/api/v1/stores/{store}/dishes/{dish}/availability",
    "/api/v1/stores/{store}/catalog",
    "/api/v1/stores/{store}/stock/{sku}/level",
    "/api/v1/stores/{store}/stock/{sku}/variance",
    "/api/v1/stores/{store}/replenishment/{request}",
    "/api/v1/stores/{store}/transfers/{transfer}",
    "/api/v1/hq/replenishment/{request}",
    "/api/v1/hq/stores/{store}/summary",
    "/api/v1/stores/{store}/promotions/{promotion}",
    "/api/v1/hq/promotions/{promotion}",
];

/// Every collection route: `GET`, the documents under a filter (path,
/// filter with `{store}` from the path, the key of the list).
pub const COLLECTION_ROUTES: [(&str, &str, &str); 9] = [
    ("/api/v1/stores/{store}/stock", "stores/{store}/stock/+/level", "levels"),
    (
        "/api/v1/stores/{store}/variance",
        "stores/{store}/stock/+/variance",
        "variances",
    ),
    (
        "/api/v1/stores/{store}/dishes",
        "stores/{store}/dishes/+/availability",
        "dishes",
    ),
    (
        "/api/v1/stores/{store}/replenishment",
        "stores/{store}/replenishment/+",
        "requests",
    ),
    (
        "/api/v1/stores/{store}/transfers",
        "stores/{store}/transfers/+",
        "transfers",
    ),
    ("/api/v1/hq/replenishment", "hq/replenishment/+", "requests"),
    ("/api/v1/hq/stores", "hq/stores/+/summary", "summaries"),
    (
        "/api/v1/stores/{store}/promotions",
        "stores/{store}/promotions/+",
        "promotions",
    ),
    ("/api/v1/hq/promotions", "hq/promotions/+", "promotions"),
];

/// The API's routes, serving from `slot` once it is filled.
pub fn router(slot: Slot) -> Router {
    let mut router = Router::new()
        .route(BATCH_ROUTE, post(inputs::batch))
        .route(LEDGER_ROUTE, get(ledger::read))
        .route(REPORT_ROUTE, get(report::read))
        .route(ALERTS_ROUTE, get(alerts::read))
        .route(BACKUP_ROUTE, get(backup::backup))
        .route(RELOAD_ROUTE, post(reload::reload))
        .route(WEBHOOKS_ROUTE, get(webhooks::endpoints))
        .route(DEAD_LETTERS_ROUTE, get(webhooks::dead_letters));
    for path in INPUT_ROUTES {
        router = router.route(path, post(inputs::one));
    }
    for path in DOCUMENT_ROUTES {
        router = router.route(path, get(reads::document));
    }
    for (path, _, _) in COLLECTION_ROUTES {
        router = router.route(path, get(reads::collection));
    }
    router.with_state(slot)
}

/// A query string, or 400 `invalid_field` in the API's own words (axum's
/// `Query` answers its rejections as plain text).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(query)) => Ok(ApiQuery(query)),
            Err(e) => Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_field",
                e.body_text(),
            )),
        }
    }
}

/// Runs a read of the store off the async threads; a storage failure is
/// 503.
async fn read_store<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let unavailable = |e: String| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable", e);
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(e.to_string()))
}

/// The topic an API path names (`/api/v1/stores/s1/sales` →
/// `stores/s1/sales`).
fn topic_of(path: &str) -> &str {
    path.strip_prefix("/api/v1/").unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// The schema `schema` names, following a `$ref`.
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(name) => {
                let name = name.trim_start_matches("#/components/schemas/");
                resolve(doc, &doc["components"]["schemas"][name])
            }
            None => schema,
        }
    }

    /// Whether `example` fits `schema`'s fields: every field a property,
    /// every required one there (of one `oneOf` branch too), enums kept,
    /// nested objects and arrays alike.
    fn fits(doc: &Value, schema: &Value, example: &Value, place: &str) -> Result<(), String> {
        let schema = resolve(doc, schema);
        if let Some(allowed) = schema["enum"].as_array() {
            if !allowed.contains(example) {
                return Err(format!("{place}: {example} is not one of {allowed:?}"));
            }
        }
        match example {
            Value::Object(fields) => {
                let properties = schema["properties"]
                    .as_object()
                    .ok_or(format!("{place}: no properties"))?;
                for (name, value) in fields {
                    let property = properties
                        .get(name)
                        .ok_or(format!("{place}: {name} is not in the schema"))?;
                    fits(doc, property, value, &format!("{place}.{name}"))?;
                }
                let has_all = |required: &Value| {
                    required
                        .as_array()
                        .is_none_or(|r| r.iter().all(|n| n.as_str().is_some_and(|n| fields.contains_key(n))))
                };
                if !has_all(&schema["required"]) {
                    return Err(format!("{place}: a required field is missing"));
                }
                if let Some(branches) = schema["oneOf"].as_array() {
                    if !branches.iter().any(|b| has_all(&b["required"])) {
                        return Err(format!("{place}: fits none of the oneOf branches"));
                    }
                }
                Ok(())
            }
            Value::Array(items) if schema["items"].is_object() => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| fits(doc, &schema["items"], item, &format!("{place}[{i}]"))),
            _ => Ok(()),
        }
    }

    /// The route template `path` falls under, statics before parameters.
    fn route_of<'a>(doc: &'a Value, path: &str) -> Option<(&'a String, &'a Value)> {
        let levels: Vec<&str> = path.split('/').collect();
        let mut candidates: Vec<(&String, &Value)> = doc["paths"]
            .as_object()?
            .iter()
            .filter(|(template, _)| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == levels.len() && parts.iter().zip(&levels).all(|(p, l)| p == l || p.starts_with('{'))
            })
            .collect();
        candidates.sort_by_key(|(template, _)| template.matches('{').count());
        candidates.into_iter().next()
    }

    /// Every `$ref` of the OpenAPI document names something it holds.
    #[test]
    fn every_reference_of_the_openapi_document_resolves() {
        fn walk<'a>(value: &'a Value, refs: &mut Vec<&'a str>) {
            match value {
                Value::Object(fields) => {
                    if let Some(Value::String(r)) = fields.get("$ref") {
                        refs.push(r);
                    }
                    fields.values().for_each(|v| walk(v, refs));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        let doc: Value = serde_json::from_str(crate::web::OPENAPI_JSON).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        assert!(refs.len() > 50, "{} references", refs.len());
        for r in refs {
            let target = r
                .strip_prefix("#/")
                .map(|path| path.split('/').fold(&doc, |at, part| &at[part]));
            assert!(target.is_some_and(Value::is_object), "{r} resolves to nothing");
        }
    }

    /// topics.md and the OpenAPI document agree: every example of an input
    /// fits the request body of its route, every example of a retained
    /// document the API serves has the `rev` its ETag is made from, and
    /// every input and document route has an example.
    #[test]
    fn topics_md_and_the_openapi_document_agree_on_every_payload() {
        let doc: Value = serde_json::from_str(crate::web::OPENAPI_JSON).expect("the document is JSON");
        let mut exemplified = std::collections::BTreeSet::new();
        for (topic, body) in dishsync_protocol::contract::examples() {
            // Presence examples are plain words.
            let Ok(example) = serde_json::from_str::<Value>(&body) else {
                continue;
            };
            let Some((template, item)) = route_of(&doc, &format!("/api/v1/{topic}")) else {
                continue;
            };
            if let Some(post) = item.get("post") {
                let schema = &post["requestBody"]["content"]["application/json"]["schema"];
                if let Err(e) = fits(&doc, schema, &example, &topic) {
                    panic!("topics.md's example for {topic} does not fit {template}: {e}\n{body}");
                }
                exemplified.insert(template.clone());
            } else if let Some(get) = item.get("get") {
                let schema = resolve(&doc, &get["responses"]["200"]["content"]["application/json"]["schema"]);
                if schema["required"]
                    .as_array()
                    .is_some_and(|r| r.contains(&Value::from("rev")))
                {
                    assert!(example["rev"].is_u64(), "{topic}: the example has no rev\n{body}");
                }
                exemplified.insert(template.clone());
            }
        }
        // A request's store copy is the document of its HQ topic, whose
        // example topics.md gives.
        let same_as_hq = "/api/v1/stores/{store}/replenishment/{request}";
        for route in INPUT_ROUTES
            .iter()
            .chain(&DOCUMENT_ROUTES)
            .filter(|r| **r != same_as_hq)
        {
            assert!(exemplified.contains(*route), "topics.md has no example for {route}");
        }
        // And the check itself refuses what does not fit.
        let sale = resolve(&doc, &doc["components"]["schemas"]["Sale"]);
        assert!(fits(&doc, sale, &serde_json::json!({"id": "x", "colour": 1}), "sale").is_err());
        assert!(
            fits(&doc, sale, &serde_json::json!({"id": "x"}), "sale").is_err(),
            "no branch"
        );
        assert!(fits(&doc, sale, &serde_json::json!({"id": "x", "void": "y"}), "sale").is_ok());
    }
}
