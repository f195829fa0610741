//! `GET /api/v1/stores/{store}/report?date=`: the store's day — portions
//! sold per dish, use and waste per SKU with reasons, the waste ratio —
//! made from the day's ledger lines, read from the store's own index
//! (`Store::ledger_window`), and the sale records they name. `format=csv`
//! answers it as rows to pivot. Readable by the roles that may read the
//! store's stock events and sales, like the ledger.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dishsync_inventory::DayReport;
use dishsync_protocol::payload::Timestamp;
use dishsync_protocol::StoreId;
use serde::Deserialize;

use super::answer::ApiError;
use super::{read_store, ready, Slot};

const DAY: i64 = 86_400_000;

/// The query of a report.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    date: Option<String>,
    format: Option<String>,
}

/// The store-local day `date` names (`YYYY-MM-DD`; today when `None`) at
/// `offset_minutes` from UTC: the date and its bounds in UTC millis.
pub fn day_bounds(date: Option<&str>, offset_minutes: i32, now: i64) -> Option<(String, i64, i64)> {
    let offset = i64::from(offset_minutes) * 60_000;
    let local_midnight = match date {
        Some(d) if d.len() == 10 => Timestamp::parse(&format!("{d}T00:00:00Z"))?.0,
        Some(_) => return None,
        None => (now + offset).div_euclid(DAY) * DAY,
    };
    let date = Timestamp(local_midnight).to_string().get(..10)?.to_string();
    Some((date, local_midnight - offset, local_midnight - offset + DAY))
}

/// The `GET`.
pub(super) async fn read(
    State(slot): State<Slot>,
    Path(store): Path<String>,
    super::ApiQuery(query): super::ApiQuery<ReportQuery>,
    headers: HeaderMap,
) -> Response {
    report(&slot, &store, query, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn report(slot: &Slot, store: &str, query: ReportQuery, headers: &HeaderMap) -> Result<Response, ApiError> {
    let api = ready(slot)?;
    let store: StoreId = store
        .parse()
        .map_err(|e| ApiError::not_found(format!("store {store:?}: {e}")))?;
    super::ledger::may_read_history(api, headers, &store)?;
    let offset = api.catalog().planning().utc_offset_minutes;
    let (date, from, to) = day_bounds(query.date.as_deref(), offset, Timestamp::now().0).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("date: {:?} is not a date (YYYY-MM-DD)", query.date.unwrap_or_default()),
        )
    })?;
    let report = day(api, &store, (date, from, to)).await?.report;
    if query.format.as_deref() == Some("csv") {
        let mut csv = String::from("store,date,kind,item,measure,qty,unit\n");
        for row in report.rows() {
            let fields: Vec<String> = [report.store.as_str(), report.date.as_str()]
                .into_iter()
                .map(str::to_string)
                .chain(row)
                .map(|f| super::ledger::csv_field(&serde_json::Value::String(f)))
                .collect();
            csv.push_str(&fields.join(","));
            csv.push('\n');
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response());
    }
    let mut body = serde_json::to_value(&report).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "unavailable",
            e.to_string(),
        )
    })?;
    body["from"] = Timestamp(from).to_string().into();
    body["to"] = Timestamp(to).to_string().into();
    Ok(Json(body).into_response())
}

/// A store's day as its ledger has it: the lines (from the store's own
/// index), the sale records they name, and the report made of them.
pub(crate) struct Day {
    /// The day's lines, in commit order.
    pub lines: crate::store::Numbered<dishsync_inventory::LedgerEntry>,
    /// The sale records the lines name.
    pub sales: std::collections::BTreeMap<dishsync_protocol::EventId, dishsync_inventory::SaleRecord>,
    /// The report.
    pub report: DayReport,
}

/// `store`'s day `date`, `[from, to)`.
pub(crate) async fn day(
    api: &super::Api,
    store: &StoreId,
    (date, from, to): (String, i64, i64),
) -> Result<Day, ApiError> {
    let handle = api.store.clone();
    let reading = store.clone();
    let (lines, sales) = read_store(move || {
        let lines = handle.ledger_window(&reading, from, to)?;
        let mut sales = std::collections::BTreeMap::new();
        for id in DayReport::sales_named(&lines) {
            if let Some(record) = handle.sale(&reading, &id)? {
                sales.insert(id, record);
            }
        }
        Ok((lines, sales))
    })
    .await?;
    let catalog = api.catalog();
    let report = DayReport::build(
        store,
        (date, from, to),
        &lines,
        |id| sales.get(id).cloned(),
        |sku| catalog.sku(sku).map_or("", |s| s.unit.as_str()),
    );
    let report = match catalog.store(store) {
        Some(def) => report.priced(&def.stock, catalog.planning().currency.as_deref()),
        None => report,
    };
    Ok(Day { lines, sales, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_the_store_local_day() {
        let day = |d, offset, now| day_bounds(d, offset, now).expect("a day");
        let (date, from, to) = day(Some("2026-11-25"), 60, 0);
        assert_eq!(date, "2026-11-25");
        assert_eq!(Timestamp(from).to_string(), "2026-11-24T23:00:00.000Z");
        assert_eq!(to - from, DAY);
        // 23:30 UTC at UTC+1 is already the next local day.
        let now = Timestamp::parse("2026-11-25T23:30:00Z").expect("time").0;
        assert_eq!(day(None, 60, now).0, "2026-11-26");
        assert_eq!(day(None, 0, now).0, "2026-11-25");
        assert!(day_bounds(Some("2026-11-25T00:00"), 0, 0).is_none());
        assert!(day_bounds(Some("yesterday!"), 0, 0).is_none());
    }
}
