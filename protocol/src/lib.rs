//! The dishsync wire contract, shared by the broker, the device client and the
//! firmware bridge so that none of them can drift from `topics.md`.
//!
//! This crate owns the contract and nothing else:
//! - [`ids`]: validated identifiers (`StoreId`, `SkuId`, `DishId`, …);
//! - [`units`]: quantities with a unit and their exact conversion to a SKU's
//!   integer base unit;
//! - [`topic`]: the one place that knows topic strings ([`Topic`]), their
//!   families and patterns (subscription filters are built from them);
//! - [`payload`]: the JSON documents that travel on them;
//! - [`published`]: what the broker publishes, decoded from topic and
//!   payload ([`Published`]), for everyone who watches it;
//! - [`contract`]: the examples of `topics.md`, and (tests) every one of
//!   them parses.
//!
//! It does no I/O and knows no domain rules; the rules live in
//! `dishsync-inventory`, the I/O in the broker and the client.
//!
//! Invariant: every topic string in the system is produced by
//! `Topic::to_string` and every incoming topic is read by `Topic::from_str`.

pub mod ids;
pub mod payload;
pub mod published;
pub mod topic;
pub mod units;

pub mod contract;

pub use ids::{DeviceId, DishId, DocId, EventId, IdError, PromotionId, SkuId, StoreId};
pub use published::Published;
pub use topic::{Topic, TopicError};
pub use units::{BaseUnit, Quantity, Unit, UnitError};

/// Milliseconds since the Unix epoch (UTC). Every `at` on the wire is an
/// RFC 3339 string; inside the system time is this integer.
pub type Millis = i64;

/// Largest payload the rules accept on an input topic, in bytes. Larger
/// inputs are rejected with an error on the sender's `errors` topic.
pub const MAX_INPUT_PAYLOAD: usize = 16 * 1024;
