//! Validated identifiers.
//!
//! Store, SKU, dish and device ids follow one grammar: lowercase ASCII letters,
//! digits and `-`, 1 to 64 bytes (a store id at most 40: request ids embed
//! it). They appear inside topics, so the grammar also guarantees that an id
//! can never contain `/`, `+` or `#`. The ids the broker makes itself —
//! [`DocId::request`], [`DocId::transfer`], [`DeviceId::unnamed`] — are valid
//! by construction.
//! Event ids are made by clients (UUIDs, `device:boot:seq`, …) and allow a
//! slightly wider alphabet; they never appear in a topic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Longest store id, in bytes: a request id (`rq-{store}-{n}`, `n` up to 20
/// digits) embeds it and stays within [`MAX_ID_LEN`].
pub const MAX_STORE_ID_LEN: usize = 40;

/// The device id an anonymous client acts as when its client id is not a
/// valid id.
pub const UNNAMED_DEVICE: &str = "unnamed";

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} id is empty")]
    Empty {
        /// Which kind of id was being parsed.
        kind: &'static str,
    },
    /// The string is longer than its kind allows.
    #[error("{kind} id is longer than {max} bytes")]
    TooLong {
        /// The longest allowed.
        max: usize,
        /// Which kind of id was being parsed.
        kind: &'static str,
    },
    /// The string has a character outside the id alphabet.
    #[error("{kind} id {value:?} may contain only {alphabet}")]
    BadChar {
        /// Which kind of id was being parsed.
        kind: &'static str,
        /// The offending input (truncated).
        value: String,
        /// The allowed alphabet, for the message.
        alphabet: &'static str,
    },
}

fn check(kind: &'static str, s: &str, ok: fn(u8) -> bool, alphabet: &'static str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if !s.bytes().all(ok) {
        let value = s.chars().take(MAX_ID_LEN).collect();
        return Err(IdError::BadChar { kind, value, alphabet });
    }
    Ok(())
}

fn name_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

fn event_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $ok:expr, $alphabet:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s, $ok, $alphabet, $max)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A store (restaurant) of the chain.
    StoreId, "store", name_char, "a-z, 0-9 and -", MAX_STORE_ID_LEN
);
id_type!(
    /// A stock-keeping unit: one ingredient or packaged item.
    SkuId, "sku", name_char, "a-z, 0-9 and -", MAX_ID_LEN
);
id_type!(
    /// A dish on a store's menu.
    DishId, "dish", name_char, "a-z, 0-9 and -", MAX_ID_LEN
);
id_type!(
    /// A device or person that talks to the broker; equals its MQTT client id.
    DeviceId, "device", name_char, "a-z, 0-9 and -", MAX_ID_LEN
);
id_type!(
    /// A document the broker numbers itself: a replenishment request
    /// (`rq-{store}-{n}`) or a transfer (`tr-{n}`).
    DocId, "document", name_char, "a-z, 0-9 and -", MAX_ID_LEN
);
id_type!(
    /// A promotion HQ plans, named by HQ (`truffle-week`).
    PromotionId, "promotion", name_char, "a-z, 0-9 and -", MAX_ID_LEN
);
id_type!(
    /// A client-made unique id of one input (stock event, sale, void, override).
    EventId, "event", event_char, "A-Z, a-z, 0-9 and - _ . :", MAX_ID_LEN
);

impl DeviceId {
    /// [`UNNAMED_DEVICE`], the device an anonymous client with an invalid
    /// client id acts as.
    pub fn unnamed() -> DeviceId {
        DeviceId(UNNAMED_DEVICE.to_string())
    }
}

impl DocId {
    /// The `seq`th replenishment request of `store`: `rq-{store}-{seq}`, at
    /// most 3 + 40 + 1 + 20 bytes, of the id alphabet.
    pub fn request(store: &StoreId, seq: u64) -> DocId {
        DocId(format!("rq-{store}-{seq}"))
    }

    /// The `seq`th transfer of the chain: `tr-{seq}`.
    pub fn transfer(seq: u64) -> DocId {
        DocId(format!("tr-{seq}"))
    }

    /// A promotion's id as a document id (the same alphabet and bound),
    /// for the clearing of its retained documents.
    pub fn promotion(id: &PromotionId) -> DocId {
        DocId(id.0.clone())
    }

    /// The store a replenishment request id (`rq-{store}-{n}`) belongs to.
    pub fn request_store(&self) -> Option<StoreId> {
        let rest = self.0.strip_prefix("rq-")?;
        let (store, n) = rest.rsplit_once('-')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        StoreId::new(store).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_the_broker_makes_are_valid_by_construction() {
        let longest = StoreId::new("s".repeat(MAX_STORE_ID_LEN)).expect("a store id of the longest length");
        assert!(StoreId::new("s".repeat(MAX_STORE_ID_LEN + 1)).is_err());
        let request = DocId::request(&longest, u64::MAX);
        assert_eq!(
            DocId::new(request.as_str()),
            Ok(request.clone()),
            "within {MAX_ID_LEN} bytes"
        );
        assert_eq!(request.request_store(), Some(longest));
        let transfer = DocId::transfer(u64::MAX);
        assert_eq!(DocId::new(transfer.as_str()), Ok(transfer));
        assert_eq!(DeviceId::new(UNNAMED_DEVICE), Ok(DeviceId::unnamed()));
    }

    #[test]
    fn grammar() {
        for ok in ["a", "store-1", "0", &"x".repeat(64)] {
            assert!(SkuId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Store", "a/b", "a+b", "a#", "a b", "ä", &"x".repeat(65)] {
            assert!(SkuId::new(bad).is_err(), "{bad}");
        }
        // A store id follows the same grammar, at most 40 bytes.
        for ok in ["a", "store-1", "0", &"x".repeat(40)] {
            assert!(StoreId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Store", "a/b", "a+b", "a#", "a b", "ä", &"x".repeat(41)] {
            assert!(StoreId::new(bad).is_err(), "{bad}");
        }
        assert!(EventId::new("scale-1:7:123").is_ok());
        assert!(EventId::new("550E8400-e29b_41d4.a716").is_ok());
        assert!(EventId::new("a/b").is_err());
        let rq = DocId::new("rq-downtown-east-12").expect("doc id");
        assert_eq!(rq.request_store().map(|s| s.to_string()), Some("downtown-east".into()));
        assert_eq!(DocId::new("tr-3").expect("doc id").request_store(), None);
        assert_eq!(DocId::new("rq-x-").expect("doc id").request_store(), None);
    }

    #[test]
    fn serde_validates() {
        let ok: StoreId = serde_json::from_str("\"downtown\"").expect("valid id");
        assert_eq!(ok.as_str(), "downtown");
        assert!(serde_json::from_str::<StoreId>("\"Down Town\"").is_err());
    }
}
