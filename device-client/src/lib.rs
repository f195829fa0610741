//! `dishsync-client`: the library devices and POS integrators use to talk to
//! a dishsync broker, and (feature `cli`) the `dishsync` operator CLI built
//! on it.
//!
//! - [`Client`]: connect as a device, record stock events, sales, voids and
//!   overrides through a durable [`Outbox`], receive typed [`Update`]s;
//! - [`outbox`]: the sled-backed outbox that makes recording survive network
//!   loss, process kills and power loss;
//! - `cli` (with the `cli` feature): the `dishsync` command line — its
//!   flags and output (`cli::connection`), the watch screen
//!   (`cli::screen`), simulated store traffic (`cli::sim`). The library
//!   itself pulls in no argument parser, error crate or logger.
//!
//! The wire types are re-exported as [`protocol`] so that integrators build
//! against exactly what the broker speaks.
//!
//! ```no_run
//! # async fn pos() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use dishsync_client::{Client, ClientConfig, Update, Watch};
//!
//! let mut config = ClientConfig::new("127.0.0.1", 1883, "downtown".parse()?, "pos-1".parse()?, "./outbox-pos-1".into());
//! config.watch.push(Watch::Availability);
//! let (client, mut updates) = Client::start(config)?;
//! let sale = client.record_sale(&[("fries".parse()?, 2)])?; // durable from here on
//! while let Some(update) = updates.recv().await {
//!     match update {
//!         Update::Acked(ids) if ids.contains(&sale) => break,
//!         Update::Availability(dish) => println!("{} {:?} {}", dish.dish, dish.status, dish.portions),
//!         _ => {}
//!     }
//! }
//! client.shutdown(Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

#[cfg(feature = "cli")]
pub mod cli;
mod client;
pub mod outbox;

pub use client::{Client, ClientConfig, ClientError, TlsSettings, Update, Watch};
pub use dishsync_protocol as protocol;
pub use outbox::{Outbox, OutboxError, Recorded};
