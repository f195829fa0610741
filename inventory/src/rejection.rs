//! Why an input is refused ([`Rejection`]), and the checks of its free text.

use std::collections::BTreeMap;

use dishsync_protocol::payload::ErrorCode;
use dishsync_protocol::DishId;

/// Longest free text (`reason`, `ref`, `note`), in bytes.
pub const MAX_TEXT: usize = 256;

/// Why an input was refused. Nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    /// Machine-readable class.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// For `insufficient_stock`: the portions each dish of the sale had left.
    pub portions_left: Option<BTreeMap<DishId, u64>>,
}

impl Rejection {
    /// A rejection of class `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            portions_left: None,
        }
    }
}

pub(crate) fn reject(code: ErrorCode, message: impl Into<String>) -> Rejection {
    Rejection::new(code, message)
}

pub(crate) fn check_text(field: &str, text: &Option<String>) -> Result<(), Rejection> {
    match text {
        Some(t) if t.len() > MAX_TEXT => Err(reject(
            ErrorCode::InvalidField,
            format!("{field} is longer than {MAX_TEXT} bytes"),
        )),
        _ => Ok(()),
    }
}
