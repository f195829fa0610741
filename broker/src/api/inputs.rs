//! POSTs of inputs: the body is the input's MQTT payload, the path its
//! topic. Each goes the way every transport's inputs go — decided by
//! `hooks::admit` (permission, decoding, the device it names) and handed
//! to the rules task — and is answered only once the rules committed or
//! refused it ([`super::answer::outcome`]).
//!
//! The input id is the body's `id`, or the `Idempotency-Key` header when
//! the body has none; both, and different, is refused. The same request
//! again is answered as the first was (with `Idempotent-Replayed: true`)
//! and applied once; the same id with other content is 409. A refused input
//! is not recorded, so sending it again is judged again.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dishsync_inventory::{salvage_id, Rejection};
use dishsync_protocol::payload::ErrorCode;
use dishsync_protocol::{Topic, MAX_INPUT_PAYLOAD};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::answer::{outcome, ApiError, Outcome, REPLAYED};
use super::{ready, topic_of, Api, Slot};
use crate::acl::Identity;
use crate::hooks::{admit, Admitted};
use crate::metrics::METRICS;
use crate::rules::{log_refusal, Intake, Verdict};

/// The header an integration may carry its input id in.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Most sales in one batch.
pub const MAX_BATCH: usize = 1_000;

/// `POST` of one input.
pub(super) async fn one(State(slot): State<Slot>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    match one_input(&slot, uri.path(), &headers, body).await {
        Ok(Outcome {
            answer: Ok(body),
            replayed,
        }) => {
            let mut response = (StatusCode::OK, Json(body)).into_response();
            if replayed {
                response
                    .headers_mut()
                    .insert(REPLAYED, HeaderValue::from_static("true"));
            }
            response
        }
        Ok(Outcome { answer: Err(e), .. }) | Err(e) => e.into_response(),
    }
}

async fn one_input(slot: &Slot, path: &str, headers: &HeaderMap, body: Body) -> Result<Outcome, ApiError> {
    let api = ready(slot)?;
    let (topic, identity) = caller_on(api, path, headers)?;
    let bytes = read_body(body, MAX_INPUT_PAYLOAD).await?;
    let key = idempotency_key(headers);
    let payload = keyed(&bytes, key.as_deref()).map_err(|r| refuse(&topic, &identity, salvage_id(&bytes), &r))?;
    let pending = submit(api, &topic, &identity, &payload).await;
    Ok(settle(&topic, pending).await)
}

/// `POST` of a batch of sales and voids: `{"sales": [payload, …]}`, each
/// applied on its own, in order; the answer lists each one's outcome.
pub(super) async fn batch(State(slot): State<Slot>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    match batch_inputs(&slot, uri.path(), &headers, body).await {
        Ok(results) => (StatusCode::OK, Json(json!({ "results": results }))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn batch_inputs(slot: &Slot, path: &str, headers: &HeaderMap, body: Body) -> Result<Vec<Value>, ApiError> {
    let api = ready(slot)?;
    let sales_path = path.strip_suffix("/batch").unwrap_or(path);
    let (topic, identity) = caller_on(api, sales_path, headers)?;
    let bytes = read_body(body, MAX_BATCH * MAX_INPUT_PAYLOAD / 4).await?;
    let malformed = |message: String| {
        refuse(
            &topic,
            &identity,
            None,
            &Rejection::new(ErrorCode::MalformedPayload, message),
        )
    };
    let mut batch: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|e| malformed(format!("a batch is {{\"sales\": [sale, …]}}: {e}")))?;
    let Some(Value::Array(sales)) = batch.remove("sales") else {
        return Err(malformed("a batch is {\"sales\": [sale, …]}".into()));
    };
    if let Some(extra) = batch.keys().next() {
        return Err(malformed(format!("unknown field {extra:?} in a batch")));
    }
    if sales.len() > MAX_BATCH {
        return Err(ApiError::too_large(MAX_BATCH * MAX_INPUT_PAYLOAD / 4));
    }
    // Every sale handed over first, in order, so that they share group
    // commits; then every verdict.
    let mut pending = Vec::with_capacity(sales.len());
    for sale in &sales {
        let payload = serde_json::to_vec(sale).unwrap_or_default();
        pending.push(submit(api, &topic, &identity, &payload).await);
    }
    let mut results = Vec::with_capacity(pending.len());
    for waiting in pending {
        let Outcome { answer, replayed } = settle(&topic, waiting).await;
        results.push(match answer {
            Ok(mut applied) => {
                applied["replayed"] = Value::from(replayed);
                applied
            }
            Err(refused) => {
                let mut body = refused.body;
                body["status"] = Value::from("rejected");
                body
            }
        });
    }
    Ok(results)
}

/// Decides `payload` on `topic` as `identity` sent it — the way every
/// transport's inputs go — and waits for its verdict (the web app's taps).
pub(crate) async fn submit_as(api: &Api, topic: &str, identity: &Identity, payload: &[u8]) -> Outcome {
    let pending = submit(api, topic, identity, payload).await;
    settle(topic, pending).await
}

/// The input topic `path` names and the identity the caller acts as there.
fn caller_on(api: &Api, path: &str, headers: &HeaderMap) -> Result<(String, Identity), ApiError> {
    let name = topic_of(path);
    let topic: Topic = name
        .parse()
        .map_err(|e: dishsync_protocol::topic::TopicError| ApiError::not_found(e.to_string()))?;
    let identity = api.identity(headers, topic.store())?;
    Ok((name.to_string(), identity))
}

/// An input on its way: refused already, or waiting for its verdict.
enum Pending {
    Refused(ApiError),
    Waiting(Option<String>, Option<oneshot::Receiver<Verdict>>),
}

/// Decides `payload` on `topic` as `identity` sent it and hands it to the
/// rules.
async fn submit(api: &Api, topic: &str, identity: &Identity, payload: &[u8]) -> Pending {
    match admit(&api.namespaces, identity, topic, payload) {
        // Only a refused payload is read again, for the id it may carry.
        Err(refusal) => Pending::Refused(refuse(topic, identity, salvage_id(payload), &refusal.rejection)),
        // Presence and readings are device traffic, not API inputs: the
        // routes name input topics only.
        Ok(Admitted::Presence) => Pending::Refused(ApiError::not_found(format!("{topic} takes no input over HTTP"))),
        Ok(Admitted::Input(input)) => {
            let id = Some(input.id().to_string());
            let intake = Intake {
                input,
                device: identity.device.clone(),
            };
            Pending::Waiting(id, api.rules.submit(intake).await)
        }
    }
}

/// Waits for the verdict of a pending input.
async fn settle(topic: &str, pending: Pending) -> Outcome {
    match pending {
        Pending::Refused(e) => Outcome {
            answer: Err(e),
            replayed: false,
        },
        Pending::Waiting(id, waiting) => {
            let verdict = match waiting {
                Some(receiver) => receiver.await.ok(),
                None => None,
            };
            if let Some(verdict) = &verdict {
                METRICS.input("http", verdict);
            }
            outcome(topic, id.as_deref(), verdict)
        }
    }
}

/// Counts and logs an input refused before the rules saw it, and answers
/// it.
fn refuse(topic: &str, identity: &Identity, id: Option<String>, r: &Rejection) -> ApiError {
    METRICS.refused("http", r.code);
    let store = match &identity.scope {
        crate::acl::Scope::Store(s) => Some(s.clone()),
        crate::acl::Scope::Chain => Topic::store_prefix(topic),
    };
    log_refusal(store.as_ref(), &identity.device, topic, id.as_deref(), r);
    ApiError::refused(topic, id, r)
}

/// The `Idempotency-Key` header, if any.
fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
}

/// The payload with its id: the body as it is when it has an `id` (the
/// key, if any, must be the same), or with the key as its `id`.
pub fn keyed(body: &[u8], key: Option<&str>) -> Result<Vec<u8>, Rejection> {
    let Some(key) = key else {
        return Ok(body.to_vec());
    };
    let mut object: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        Rejection::new(
            ErrorCode::MalformedPayload,
            format!("the body is not a JSON object: {e}"),
        )
    })?;
    match object.get("id") {
        Some(Value::String(id)) if id == key => Ok(body.to_vec()),
        Some(id) => Err(Rejection::new(
            ErrorCode::InvalidField,
            format!("the Idempotency-Key {key:?} is not the body's id {id}: send one, or both the same"),
        )),
        None => {
            object.insert("id".into(), Value::from(key));
            Ok(serde_json::to_vec(&object).unwrap_or_default())
        }
    }
}

/// The body, or 413 past `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_id_unless_the_body_names_another() {
        let sale = br#"{"lines":[{"dish":"burger","portions":1}],"at":"2026-11-25T12:00:00Z","device":"pos"}"#;
        let keyed_sale: Value = serde_json::from_slice(&keyed(sale, Some("k-1")).expect("keyed")).expect("json");
        assert_eq!(keyed_sale["id"], "k-1");
        assert_eq!(keyed_sale["device"], "pos");
        let with_id = br#"{"id":"k-1","kind":"count"}"#;
        assert_eq!(keyed(with_id, Some("k-1")).expect("same"), with_id.to_vec());
        assert_eq!(keyed(with_id, None).expect("no key"), with_id.to_vec());
        let other = keyed(with_id, Some("k-2")).expect_err("two ids");
        assert_eq!(other.code, ErrorCode::InvalidField);
        assert_eq!(
            keyed(b"[1]", Some("k")).expect_err("not an object").code,
            ErrorCode::MalformedPayload
        );
        // Without a key the body goes to the decoder as it is.
        assert_eq!(keyed(b"[1]", None).expect("unchanged"), b"[1]".to_vec());
    }
}
