//! `GET /api/v1/stores/{store}/ledger`: the store's history, every
//! applied change in commit order, paged by a stable cursor.
//!
//! The cursor is a ledger line number: numbers only grow and a line never
//! moves, so paging stays exact while writes continue (new lines land after
//! the last page). One request examines at most [`EXAMINED_PER_PAGE`]
//! lines, so a store with few lines in a long chain-wide ledger gets short
//! pages with a cursor rather than one slow answer — unless the read names
//! a window of at most [`MAX_WINDOW`] (`from`, and `to` or now), which is
//! read from the store's own index and costs what the window holds. Filters: `sku`, `from`
//! and `to` (RFC 3339, on the change's own stamp), `limit`. `format=csv`
//! answers CSV, with the next cursor in the `Next-Cursor` header.
//!
//! Readable by the roles that may read the store's stock events and sales
//! (manager, hq, operator).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dishsync_inventory::{Catalog, LedgerEntry};
use dishsync_protocol::payload::Timestamp;
use dishsync_protocol::{SkuId, StoreId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::ApiError;
use super::{ready, Slot};

/// Lines one request looks at, at most.
pub const EXAMINED_PER_PAGE: usize = 50_000;
/// Lines one page holds unless `limit` says fewer.
pub const DEFAULT_LIMIT: usize = 1_000;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 10_000;
/// The longest `from`–`to` window read from the store's index.
pub const MAX_WINDOW: i64 = 31 * 86_400_000;
/// A window without `to` ends this far past now (stamps a device's clock
/// put slightly ahead).
const WINDOW_AHEAD: i64 = 3_600_000;

/// The query of a ledger read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    sku: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
}

/// Which lines a read wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    store: StoreId,
    sku: Option<SkuId>,
    from: Option<i64>,
    to: Option<i64>,
}

impl Wanted {
    /// Whether `line` is one of them.
    pub fn keeps(&self, line: &LedgerEntry) -> bool {
        line.store == self.store
            && self.sku.as_ref().is_none_or(|s| *s == line.sku)
            && self.from.is_none_or(|f| line.at >= f)
            && self.to.is_none_or(|t| line.at < t)
    }
}

/// One line as the API shows it: the quantity in the SKU's base unit, when
/// it happened (`at`) and when it was applied (`recorded`), who sent it.
/// Serialized straight from the line (a store-day is 10,000 of them).
#[derive(Debug, Serialize)]
pub struct LineOut<'a> {
    line: u64,
    sku: &'a SkuId,
    event: &'a dishsync_protocol::EventId,
    kind: &'static str,
    qty: i64,
    unit: Option<&'static str>,
    at: Timestamp,
    recorded: Option<Timestamp>,
    by: Option<&'a dishsync_protocol::DeviceId>,
    reason: Option<&'a str>,
    #[serde(rename = "ref")]
    reference: Option<&'a str>,
    moved: bool,
}

impl<'a> LineOut<'a> {
    /// Line `number`, `line`, with its SKU's unit from `catalog`.
    pub fn new(number: u64, line: &'a LedgerEntry, catalog: &Catalog) -> LineOut<'a> {
        LineOut {
            line: number,
            sku: &line.sku,
            event: &line.event,
            kind: line.kind.as_str(),
            qty: line.amount,
            unit: catalog.sku(&line.sku).map(|s| s.unit.as_str()),
            at: Timestamp(line.at),
            recorded: line.recorded.map(Timestamp),
            by: line.by.as_ref(),
            reason: line.reason.as_deref(),
            reference: line.reference.as_deref(),
            moved: line.moved,
        }
    }
}

/// A page of the ledger as JSON.
#[derive(Serialize)]
struct PageOut<'a> {
    lines: Vec<LineOut<'a>>,
    next: Option<String>,
}

/// The CSV's columns, the JSON's fields.
const CSV_COLUMNS: [&str; 12] = [
    "line", "sku", "event", "kind", "qty", "unit", "at", "recorded", "by", "reason", "ref", "moved",
];

/// A value as one CSV field (RFC 4180: quoted when it holds a comma, a
/// quote or a line break; empty for null).
pub(super) fn csv_field(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The `GET`.
pub(super) async fn read(
    State(slot): State<Slot>,
    Path(store): Path<String>,
    super::ApiQuery(query): super::ApiQuery<LedgerQuery>,
    headers: HeaderMap,
) -> Response {
    history(&slot, &store, query, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Whether the caller may read `store`'s history: the roles that may read
/// its stock events and sales.
pub(super) fn may_read_history(api: &super::Api, headers: &HeaderMap, store: &StoreId) -> Result<(), ApiError> {
    let identity = api.identity(headers, Some(store))?;
    for filter in [
        format!("stores/{store}/stock/+/events"),
        format!("stores/{store}/sales"),
    ] {
        identity.may_subscribe(&filter).map_err(|d| ApiError::forbidden(d.0))?;
    }
    Ok(())
}

async fn history(slot: &Slot, store: &str, query: LedgerQuery, headers: &HeaderMap) -> Result<Response, ApiError> {
    let api = ready(slot)?;
    let store: StoreId = store
        .parse()
        .map_err(|e| ApiError::not_found(format!("store {store:?}: {e}")))?;
    may_read_history(api, headers, &store)?;
    let bad = |what: &str, e: String| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("{what}: {e}"),
        )
    };
    let time = |what: &str, t: &Option<String>| -> Result<Option<i64>, ApiError> {
        t.as_deref()
            .map(|s| {
                Timestamp::parse(s)
                    .map(|t| t.0)
                    .ok_or_else(|| bad(what, format!("{s:?} is not an RFC 3339 time")))
            })
            .transpose()
    };
    let wanted = Wanted {
        sku: query
            .sku
            .as_deref()
            .map(|s| s.parse::<SkuId>().map_err(|e| bad("sku", e.to_string())))
            .transpose()?,
        from: time("from", &query.from)?,
        to: time("to", &query.to)?,
        store,
    };
    let cursor = match query.cursor.as_deref() {
        Some(c) => c.parse::<u64>().map_err(|e| bad("cursor", e.to_string()))?,
        None => 0,
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let store_handle = api.store.clone();
    // A window of at most a month is read from the store's own index;
    // anything else in commit order, a bounded stretch per request.
    let window = wanted.from.and_then(|from| {
        let to = wanted.to.unwrap_or_else(|| Timestamp::now().0 + WINDOW_AHEAD);
        (to.saturating_sub(from) <= MAX_WINDOW).then_some((from, to))
    });
    let page = match window {
        Some((from, to)) => {
            let store = wanted.store.clone();
            let lines = super::read_store(move || store_handle.ledger_window(&store, from, to)).await?;
            crate::store::LedgerPage {
                lines: lines.into_iter().filter(|(n, _)| *n >= cursor).collect(),
                next: None,
            }
        }
        None => super::read_store(move || store_handle.ledger_from(cursor, EXAMINED_PER_PAGE)).await?,
    };
    let mut kept = Vec::new();
    let mut next = page.next;
    for (number, line) in &page.lines {
        if kept.len() == limit {
            next = Some(*number);
            break;
        }
        if wanted.keeps(line) {
            kept.push(LineOut::new(*number, line, &api.catalog()));
        }
    }
    let next = next.map(|n| n.to_string());
    if query.format.as_deref() == Some("csv") {
        let mut csv = format!("{}\n", CSV_COLUMNS.join(","));
        for line in &kept {
            let line = serde_json::to_value(line).unwrap_or_default();
            let row: Vec<String> = CSV_COLUMNS.iter().map(|k| csv_field(&line[*k])).collect();
            csv.push_str(&row.join(","));
            csv.push('\n');
        }
        let mut response = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response();
        if let Some(next) = next.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
            response.headers_mut().insert("next-cursor", next);
        }
        return Ok(response);
    }
    Ok(Json(PageOut { lines: kept, next }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn free_text_is_quoted_in_csv() {
        assert_eq!(csv_field(&Value::from("dropped")), "dropped");
        assert_eq!(csv_field(&Value::from("burnt, twice")), "\"burnt, twice\"");
        assert_eq!(csv_field(&Value::from("the \"big\" one")), "\"the \"\"big\"\" one\"");
        assert_eq!(csv_field(&Value::Null), "");
        assert_eq!(csv_field(&json!(-3)), "-3");
    }
}
