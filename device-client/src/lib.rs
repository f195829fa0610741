//! `dishsync-client`: the library devices and POS integrators use to talk to
//! a dishsync broker, and the home of the `dishsync` operator CLI.
//!
//! Today it re-exports the wire contract ([`dishsync_protocol`]) so that
//! integrators build against the same topic and payload types as the broker.
//! The typed client with its durable outbox is the next step for this crate.

pub use dishsync_protocol as protocol;
