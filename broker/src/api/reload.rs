//! `POST /api/v1/admin/reload`: the configuration re-read while the broker
//! runs (`crate::reload`), for an `operator` or `hq` integration of the
//! whole chain. 200 with what was applied and what waits for a restart;
//! 422 `invalid_config` with every problem and its place, the running
//! configuration kept; 409 `no_file` for the built-in demo chain.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::answer::ApiError;
use super::{ready, Slot};
use crate::reload::ReloadError;

/// The `POST`.
pub(super) async fn reload(State(slot): State<Slot>, headers: HeaderMap) -> Response {
    let asked = ready(&slot).and_then(|api| {
        let caller = api.operator(&headers, "reload the configuration")?;
        // Set at start; the reload itself says when there is no file.
        let reloader = api.reloader.clone().ok_or_else(ApiError::restoring)?;
        Ok((caller, reloader))
    });
    let (caller, reloader) = match asked {
        Ok(asked) => asked,
        Err(e) => return e.into_response(),
    };
    match reloader.reload(caller.id.as_str()).await {
        Ok(reloaded) => (StatusCode::OK, Json(reloaded)).into_response(),
        Err(e @ ReloadError::Invalid(_)) => {
            let issues: Vec<_> = e
                .issues()
                .iter()
                .map(|i| json!({"place": i.place, "problem": i.problem}))
                .collect();
            let mut answer = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                "the file is not a valid configuration: nothing was applied, the running configuration is kept",
            );
            answer.body["issues"] = serde_json::Value::Array(issues);
            answer.into_response()
        }
        Err(e @ ReloadError::NoFile) => ApiError::new(StatusCode::CONFLICT, "no_file", e.to_string()).into_response(),
        Err(ReloadError::Stopping) => ApiError::restoring().into_response(),
    }
}
