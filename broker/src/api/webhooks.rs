//! `GET /api/v1/webhooks` and `GET /api/v1/webhooks/{webhook}/dead-letters`:
//! each endpoint's queue and counts, and the deliveries it gave up, for
//! chain-wide integrations (what they hold is about every store).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dishsync_protocol::payload::Timestamp;
use serde::Deserialize;
use serde_json::{json, Value};

use super::answer::ApiError;
use super::{read_store, ready, Slot};
use crate::webhooks::{DeadLetter, Delivery};

/// Dead letters one page holds unless `limit` says fewer, and at most.
const MAX_LIMIT: usize = 500;

/// The query of a dead-letter read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    cursor: Option<u64>,
    limit: Option<usize>,
}

/// The `GET` of every endpoint.
pub(super) async fn endpoints(State(slot): State<Slot>, headers: axum::http::HeaderMap) -> Response {
    let listed = ready(&slot).and_then(|api| {
        api.chain_wide(&headers)?;
        let endpoints = api.webhooks.as_ref().map(|w| w.status()).unwrap_or_default();
        Ok(Json(json!({ "webhooks": endpoints })).into_response())
    });
    listed.unwrap_or_else(IntoResponse::into_response)
}

/// The `GET` of an endpoint's dead letters.
pub(super) async fn dead_letters(
    State(slot): State<Slot>,
    Path(webhook): Path<String>,
    super::ApiQuery(query): super::ApiQuery<DeadLetterQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    letters(&slot, webhook, query, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn letters(
    slot: &Slot,
    webhook: String,
    query: DeadLetterQuery,
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let api = ready(slot)?;
    api.chain_wide(headers)?;
    if !api.webhooks.as_ref().is_some_and(|w| w.has(&webhook)) {
        return Err(ApiError::not_found(format!("no webhook endpoint {webhook:?}")));
    }
    let limit = query.limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
    let store = api.store.clone();
    let from = query.cursor.unwrap_or(0);
    let (letters, next) = read_store(move || store.dead_letters::<DeadLetter>(&webhook, from, limit)).await?;
    let letters: Vec<Value> = letters.iter().map(|(seq, l)| letter_json(*seq, l)).collect();
    Ok(Json(json!({"dead_letters": letters, "next": next})).into_response())
}

/// A dead letter as the API shows it: the delivery as it was sent.
fn letter_json(seq: u64, letter: &DeadLetter) -> Value {
    let body: Value = serde_json::from_slice(&letter.delivery.body).unwrap_or(Value::Null);
    json!({
        "webhook_id": Delivery::id(seq),
        "type": body["type"],
        "doc": letter.delivery.doc,
        "rev": letter.delivery.rev,
        "created": Timestamp(letter.delivery.created).to_string(),
        "dead_at": Timestamp(letter.dead_at).to_string(),
        "attempts": letter.attempts,
        "last_error": letter.last_error,
        "body": body,
    })
}
