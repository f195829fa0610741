//! `dishsync-broker`: an embedded rmqtt broker whose rules turn stock events
//! and sales into live, durable dish availability.
//!
//! The map (see ARCHITECTURE.md for the whole workspace):
//! - [`cli`]: the command line (`main` only calls it);
//! - [`config`]: the TOML file → validated [`config::Settings`];
//! - [`server`]: start-up order and the listener;
//! - [`hooks`]: rmqtt hooks — permission check and intake of inputs;
//! - [`rules`]: the rules task, single owner of the inventory and the store;
//! - [`store`]: sled — ledger, dedup index, snapshot;
//! - [`outbound`]: in-process publication into the router;
//! - [`retainer`]: retained-message storage;
//! - [`memory`]: the allocator's page size.
//!
//! The domain decisions themselves are in `dishsync-inventory`.

pub mod acl;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod front;
pub mod hooks;
pub mod memory;
pub mod namespaces;
pub mod outbound;
pub mod retainer;
pub mod rules;
pub mod server;
pub mod store;
pub mod takeover;
pub mod worker;

pub use config::Settings;
pub use server::run;
