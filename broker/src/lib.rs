//! `dishsync-broker`: an embedded rmqtt broker whose rules turn stock events
//! and sales into live, durable dish availability.
//!
//! The map (see ARCHITECTURE.md for the whole workspace):
//! - [`cli`]: the command line (`main` only calls it);
//! - [`config`]: the TOML file → validated [`config::Settings`];
//! - [`reload`]: the configuration re-read while the broker runs;
//! - [`current`]: a reloadable part of it, as its readers see it;
//! - [`server`]: start-up order and the listeners;
//! - [`front`]: the validating front of the MQTT listeners (packets checked
//!   as bytes before the engine sees them);
//! - [`auth`]: logins, identities and the password-guessing brake;
//! - [`acl`]: who may publish and subscribe to what;
//! - [`namespaces`]: topics outside the contract carried as plain MQTT;
//! - [`hooks`]: rmqtt hooks — permission check and intake of inputs;
//! - [`takeover`]: the will of a connection taken over;
//! - [`reconnect`]: a reconnect waits for the session that ended before it;
//! - [`oversize`]: a delivery too large for its client is discarded;
//! - [`rules`]: the rules task, single owner of the inventory and the store;
//! - [`store`]: sled — ledger, dedup index, snapshot;
//! - [`outbound`]: in-process publication into the router;
//! - [`retainer`]: retained-message storage;
//! - [`worker`]: the rules attached to an external broker;
//! - [`web`]: the HTTP listener — health, readiness and metrics;
//! - [`api`]: the HTTP API — integrations' inputs and reads;
//! - [`webhooks`]: what leaves for a chain's systems, signed;
//! - [`people`]: the web app — logins, live pages, taps;
//! - [`metrics`]: what the broker counts, as Prometheus text;
//! - [`demo`]: the built-in demo chain and its dinner service;
//! - [`memory`]: the allocator's page size.
//!
//! The domain decisions themselves are in `dishsync-inventory`.

pub mod acl;
pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod current;
pub mod demo;
pub mod drain;
pub mod front;
pub mod halves;
pub mod hooks;
pub mod memory;
pub mod metrics;
pub mod namespaces;
pub mod outbound;
pub mod oversize;
pub mod owed;
pub mod people;
pub mod reconnect;
pub mod reload;
pub mod retainer;
pub mod rules;
pub mod server;
pub mod store;
pub mod takeover;
pub mod web;
pub mod webhooks;
pub mod worker;

pub use config::Settings;
pub use server::run;
