//! `GET /api/v1/stores/{store}/alerts`: a store's alerts over HTTP. Alerts
//! are events on MQTT (not retained); here they are a store's record: those
//! raised now, and the most recent ones in their latest state (raised, or
//! cleared). Each alert is kept in the commit that publishes it
//! (`store.rs`, `a/`), and the rules say which ids are raised now and how
//! far the numbering got, so this reads only what it shows. Readable by
//! the roles that may subscribe to the store's alerts.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dishsync_protocol::StoreId;
use serde::Deserialize;
use serde_json::json;

use super::answer::ApiError;
use super::{read_store, ready, Slot};

/// Recent alerts shown unless `limit` says otherwise, and at most.
const DEFAULT_RECENT: u64 = 50;
/// See [`DEFAULT_RECENT`].
const MAX_RECENT: u64 = 500;

/// The query of an alerts read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    limit: Option<u64>,
}

/// The `GET`.
pub(super) async fn read(
    State(slot): State<Slot>,
    Path(store): Path<String>,
    super::ApiQuery(query): super::ApiQuery<AlertsQuery>,
    headers: HeaderMap,
) -> Response {
    alerts(&slot, &store, query, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn alerts(slot: &Slot, store: &str, query: AlertsQuery, headers: &HeaderMap) -> Result<Response, ApiError> {
    let api = ready(slot)?;
    let store: StoreId = store
        .parse()
        .map_err(|e| ApiError::not_found(format!("store {store:?}: {e}")))?;
    let identity = api.identity(headers, Some(&store))?;
    identity
        .may_subscribe(&format!("stores/{store}/alerts"))
        .map_err(|d| ApiError::forbidden(d.0))?;
    let recent = query.limit.unwrap_or(DEFAULT_RECENT).clamp(1, MAX_RECENT);
    Ok(Json(record(api, store, recent).await?).into_response())
}

/// `store`'s alerts raised now and its `recent` latest, newest first.
pub(crate) async fn record(api: &super::Api, store: StoreId, recent: u64) -> Result<serde_json::Value, ApiError> {
    let ids = api
        .rules
        .alert_ids(store.clone())
        .await
        .ok_or_else(|| ApiError::not_found(format!("no store {store}")))?;
    let handle = api.store.clone();
    let reading = store.clone();
    let (active, recent) = read_store(move || {
        let mut active = Vec::new();
        for id in &ids.active {
            active.extend(handle.alert(&reading, id)?);
        }
        let mut shown = Vec::new();
        for n in (ids.last.saturating_sub(recent) + 1..=ids.last).rev() {
            shown.extend(handle.alert(&reading, &format!("al-{reading}-{n}"))?);
        }
        Ok((active, shown))
    })
    .await?;
    Ok(json!({"store": store, "active": active, "recent": recent}))
}
