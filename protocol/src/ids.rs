//! Validated identifiers.
//!
//! Store, SKU, dish and device ids follow one grammar: lowercase ASCII letters,
//! digits and `-`, 1 to 64 bytes. They appear inside topics, so the grammar
//! also guarantees that an id can never contain `/`, `+` or `#`.
//! Event ids are made by clients (UUIDs, `device:boot:seq`, …) and allow a
//! slightly wider alphabet; they never appear in a topic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} id is empty")]
    Empty {
        /// Which kind of id was being parsed.
        kind: &'static str,
    },
    /// The string is longer than [`MAX_ID_LEN`].
    #[error("{kind} id is longer than {MAX_ID_LEN} bytes")]
    TooLong {
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

fn check(kind: &'static str, s: &str, ok: fn(u8) -> bool, alphabet: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
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
    ($(#[$doc:meta])* $name:ident, $kind:literal, $ok:expr, $alphabet:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s, $ok, $alphabet)?;
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
    StoreId, "store", name_char, "a-z, 0-9 and -"
);
id_type!(
    /// A stock-keeping unit: one ingredient or packaged item.
    SkuId, "sku", name_char, "a-z, 0-9 and -"
);
id_type!(
    /// A dish on a store's menu.
    DishId, "dish", name_char, "a-z, 0-9 and -"
);
id_type!(
    /// A device or person that talks to the broker; equals its MQTT client id.
    DeviceId, "device", name_char, "a-z, 0-9 and -"
);
id_type!(
    /// A document the broker numbers itself: a replenishment request
    /// (`rq-{store}-{n}`) or a transfer (`tr-{n}`).
    DocId, "document", name_char, "a-z, 0-9 and -"
);
id_type!(
    /// A client-made unique id of one input (stock event, sale, void, override).
    EventId, "event", event_char, "A-Z, a-z, 0-9 and - _ . :"
);

impl DocId {
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
    fn grammar() {
        for ok in ["a", "store-1", "0", &"x".repeat(64)] {
            assert!(StoreId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Store", "a/b", "a+b", "a#", "a b", "ä", &"x".repeat(65)] {
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
