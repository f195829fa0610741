//! What the API answers: the HTTP status of every verdict and refusal, and
//! the error body. Pure.
//!
//! A refused input answers with the document its sender would get on its
//! MQTT errors topic (`topic`, `id`, `code`, `error`, `portions_left`), so
//! an integration reads the same codes as a device: 409 for `id_conflict`,
//! 403 for `not_permitted`, 503 for `unavailable`, 422 for every other
//! refusal. Errors of HTTP itself carry a `code` of their own:
//! `unauthenticated` (401), `not_permitted` (403), `not_found` (404),
//! `oversize` (413), `rate_limited` (429, with `Retry-After`),
//! `unavailable` (503, with `Retry-After`).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dishsync_inventory::Rejection;
use dishsync_protocol::payload::{ErrorCode, ErrorOut};
use serde_json::{json, Value};

use crate::rules::Verdict;

/// The header that marks the answer to a request already applied.
pub const REPLAYED: &str = "idempotent-replayed";

/// An answer other than success.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The JSON body.
    pub body: Value,
    /// Seconds to wait before asking again (429, 503).
    pub retry_after: Option<u64>,
    /// The bearer challenge (401).
    pub challenge: Option<&'static str>,
}

impl ApiError {
    /// `status` with `{"code": code, "error": message}`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({"code": code, "error": message.into()}),
            retry_after: None,
            challenge: None,
        }
    }

    /// 401: no token, or (`invalid`) one that is not valid.
    pub fn unauthenticated(message: &str, invalid: bool) -> ApiError {
        ApiError {
            challenge: Some(if invalid {
                "Bearer realm=\"dishsync\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"dishsync\""
            }),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
        }
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "not_permitted", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413: a body over `limit` bytes.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "oversize",
            format!("the body is larger than {limit} bytes"),
        )
    }

    /// 429: over the caller's rate; a token is due in `wait`.
    pub fn rate_limited(wait: Duration) -> ApiError {
        ApiError {
            retry_after: Some(whole_seconds(wait)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "over this integration's request rate: send again after Retry-After seconds",
            )
        }
    }

    /// 503: the state is still being restored.
    pub fn restoring() -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the broker is restoring its state",
            )
        }
    }

    /// The answer to a refused input on `topic`, as its errors document.
    pub fn refused(topic: &str, id: Option<String>, rejection: &Rejection) -> ApiError {
        let document = ErrorOut {
            topic: topic.to_string(),
            id,
            code: rejection.code,
            error: rejection.message.clone(),
            portions_left: rejection.portions_left.clone(),
        };
        let body = serde_json::to_value(&document).unwrap_or_else(|_| json!({"error": rejection.message}));
        let status = refusal_status(rejection.code);
        ApiError {
            status,
            body,
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1),
            challenge: None,
        }
    }
}

/// At least one second, rounded up.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

/// The status of an input refused with `code`.
pub fn refusal_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotPermitted => StatusCode::FORBIDDEN,
        ErrorCode::IdConflict => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Oversize => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnknownTopic => StatusCode::NOT_FOUND,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// What became of one input, as the API says it: the body, and whether it
/// was applied before (the same request again gets the same body).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `{"id", "status"}`, or the refusal.
    pub answer: Result<Value, ApiError>,
    /// Applied before this request.
    pub replayed: bool,
}

/// The outcome of an input with `id` on `topic` the rules judged `verdict`
/// (`None`: the rules are stopping).
pub fn outcome(topic: &str, id: Option<&str>, verdict: Option<Verdict>) -> Outcome {
    let id_value = id.map_or(Value::Null, Value::from);
    let applied = |replayed| Outcome {
        answer: Ok(json!({"id": id_value, "status": "applied"})),
        replayed,
    };
    match verdict {
        Some(Verdict::Applied) => applied(false),
        Some(Verdict::Duplicate) => applied(true),
        Some(Verdict::Unchanged) => Outcome {
            answer: Ok(json!({"id": id_value, "status": "unchanged"})),
            replayed: false,
        },
        Some(Verdict::Rejected(r)) => Outcome {
            answer: Err(ApiError::refused(topic, id.map(str::to_string), &r)),
            replayed: false,
        },
        None => Outcome {
            answer: Err(ApiError::refused(
                topic,
                id.map(str::to_string),
                &Rejection::new(ErrorCode::Unavailable, "the rules are stopping; send again"),
            )),
            replayed: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_request_again_gets_the_same_body() {
        let first = outcome("stores/s1/sales", Some("sale-1"), Some(Verdict::Applied));
        let again = outcome("stores/s1/sales", Some("sale-1"), Some(Verdict::Duplicate));
        assert_eq!(first.answer, again.answer);
        assert_eq!((first.replayed, again.replayed), (false, true));
        assert_eq!(
            first.answer.expect("applied"),
            json!({"id": "sale-1", "status": "applied"})
        );
    }

    #[test]
    fn refusals_keep_the_mqtt_code_and_answer_its_status() {
        let cases = [
            (ErrorCode::IdConflict, 409),
            (ErrorCode::NotPermitted, 403),
            (ErrorCode::UnknownDish, 422),
            (ErrorCode::MalformedPayload, 422),
            (ErrorCode::InsufficientStock, 422),
            (ErrorCode::Unavailable, 503),
        ];
        for (code, status) in cases {
            let r = Rejection::new(code, "why");
            let answer = outcome("stores/s1/sales", Some("x"), Some(Verdict::Rejected(r)))
                .answer
                .expect_err("refused");
            assert_eq!(answer.status.as_u16(), status, "{code:?}");
            assert_eq!(answer.body["code"], serde_json::to_value(code).expect("code"));
            assert_eq!(answer.body["id"], "x");
            assert_eq!(answer.body["topic"], "stores/s1/sales");
            assert_eq!(answer.body["error"], "why");
        }
        let stopping = outcome("stores/s1/sales", None, None).answer.expect_err("stopping");
        assert_eq!((stopping.status.as_u16(), stopping.retry_after), (503, Some(1)));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::from_millis(250)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2_001)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        let limited = ApiError::rate_limited(Duration::from_millis(1_500));
        assert_eq!((limited.status.as_u16(), limited.retry_after), (429, Some(2)));
    }
}
