//! GETs of what the broker publishes: a retained document by its topic,
//! or every retained document under a filter (a collection), exactly as a
//! subscriber gets them, and only where the caller's role may subscribe.
//!
//! A document's `ETag` is its `rev`; a collection's is a digest of its
//! topics and their `rev`s. `If-None-Match` with the current tag answers
//! 304 and no body, so a poller pays only for changes.

use axum::extract::{MatchedPath, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use dishsync_protocol::{StoreId, Topic};
use serde_json::{Map, Value};

use super::answer::ApiError;
use super::{ready, topic_of, Slot, COLLECTION_ROUTES};

/// `GET` of one retained document.
pub(super) async fn document(State(slot): State<Slot>, uri: Uri, headers: HeaderMap) -> Response {
    one_document(&slot, uri.path(), &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn one_document(slot: &Slot, path: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let api = ready(slot)?;
    let name = topic_of(path);
    let topic: Topic = name
        .parse()
        .map_err(|e: dishsync_protocol::topic::TopicError| ApiError::not_found(e.to_string()))?;
    let identity = api.identity(headers, topic.store())?;
    identity.may_subscribe(name).map_err(|d| ApiError::forbidden(d.0))?;
    let Some((_, payload)) = api.out.retained(name).await.into_iter().next() else {
        return Err(ApiError::not_found(format!("nothing is published on {name}")));
    };
    let tag = format!("\"{}\"", rev(&payload));
    Ok(tagged(headers, &tag, payload.to_vec()))
}

/// `GET` of a collection: `{"<key>": [document, …]}` in topic order.
pub(super) async fn collection(
    State(slot): State<Slot>,
    matched: MatchedPath,
    Path(params): Path<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    documents(&slot, matched.as_str(), &params, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn documents(
    slot: &Slot,
    route: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let api = ready(slot)?;
    let Some((_, filter, key)) = COLLECTION_ROUTES.iter().find(|(path, _, _)| *path == route) else {
        return Err(ApiError::not_found(format!("{route} is not a collection")));
    };
    let store = match params.iter().find(|(name, _)| name == "store") {
        Some((_, store)) => Some(
            store
                .parse::<StoreId>()
                .map_err(|e| ApiError::not_found(format!("store {store:?}: {e}")))?,
        ),
        None => None,
    };
    let filter = match &store {
        Some(store) => filter.replace("{store}", store.as_str()),
        None => (*filter).to_string(),
    };
    let identity = api.identity(headers, store.as_ref())?;
    identity.may_subscribe(&filter).map_err(|d| ApiError::forbidden(d.0))?;
    // Each document parsed once: listed, and its rev in the tag.
    let found: Vec<(String, Value)> = api
        .out
        .retained(&filter)
        .await
        .into_iter()
        .filter_map(|(topic, payload)| Some((topic, serde_json::from_slice(&payload).ok()?)))
        .collect();
    let tag = format!(
        "\"c-{:016x}\"",
        digest(
            found
                .iter()
                .map(|(topic, doc)| (topic.as_str(), doc["rev"].as_u64().unwrap_or(0)))
        )
    );
    let listed: Vec<Value> = found.into_iter().map(|(_, doc)| doc).collect();
    let mut body = Map::new();
    body.insert((*key).to_string(), Value::Array(listed));
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    Ok(tagged(headers, &tag, bytes))
}

/// 304 when `If-None-Match` names `tag`, else 200 with `body`; both carry
/// the tag.
fn tagged(headers: &HeaderMap, tag: &str, body: Vec<u8>) -> Response {
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|asked| asked.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    if let Ok(tag) = HeaderValue::from_str(tag) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// A document's `rev` (0 when it has none).
fn rev(payload: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Rev {
        #[serde(default)]
        rev: u64,
    }
    serde_json::from_slice::<Rev>(payload).map_or(0, |r| r.rev)
}

/// FNV-1a over each topic and `rev`: a collection's tag.
fn digest<'a>(entries: impl Iterator<Item = (&'a str, u64)>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (topic, rev) in entries {
        eat(topic.as_bytes());
        eat(&[0]);
        eat(&rev.to_be_bytes());
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_changes_with_any_rev_and_answers_304_when_asked_for() {
        let a = digest([("stores/s1/stock/bun/level", 3), ("stores/s1/stock/patty/level", 9)].into_iter());
        let b = digest([("stores/s1/stock/bun/level", 4), ("stores/s1/stock/patty/level", 9)].into_iter());
        let c = digest([("stores/s1/stock/bun/level", 3)].into_iter());
        assert!(a != b && a != c && b != c);
        assert_eq!(rev(br#"{"qty":3,"rev":17}"#), 17);
        assert_eq!(rev(b"not json"), 0);

        let mut headers = HeaderMap::new();
        assert_eq!(tagged(&headers, "\"17\"", b"{}".to_vec()).status(), StatusCode::OK);
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"16\", \"17\""));
        let unchanged = tagged(&headers, "\"17\"", b"{}".to_vec());
        assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(unchanged.headers()[header::ETAG], "\"17\"");
        assert_eq!(tagged(&headers, "\"18\"", b"{}".to_vec()).status(), StatusCode::OK);
    }
}
