//! The dishsync domain core: pure, synchronous, deterministic.
//!
//! [`Inventory`] holds the live state of every store — each SKU's ledger
//! level, each dish's availability and the chef's overrides — and turns one
//! validated input at a time into a state change plus a description of what
//! changed ([`Outcome`]). It never reads a clock (every call takes `now`),
//! never touches a disk or a socket, and never panics on input: a bad input is
//! a [`Rejection`] and leaves the state exactly as it was.
//!
//! The map:
//! - [`input`]: the validated [`Input`] and its one decoder; every input
//!   goes through [`Inventory::apply`];
//! - [`document`]: one [`Document`] type for every document — its storage
//!   key, state and retained messages — so the shell's persist, restore,
//!   re-publish and render are one loop each;
//! - [`catalog`]: SKUs, dishes and recipes, stores with menus and stock
//!   targets;
//! - [`ledger`]: a SKU's level from its latest count and the changes since;
//! - [`planning`]: the rules that act — replenishment, transfers, the sales
//!   forecast, alerts, freshness, usage variance and the HQ summary;
//! - `inventory`: the [`Inventory`] itself — stock, sales, voids, overrides
//!   and the availability they give;
//! - `changes`: what an input changed ([`Changes`], [`Outcome`]);
//! - `state`: the persisted states, sale records and ledger lines;
//! - `reconfigure`: a new catalog while the chain runs (a reload);
//! - `rejection`: why an input is refused ([`Rejection`]);
//! - [`report`]: a store's day from its ledger lines ([`DayReport`]).
//!
//! This file is the map and the crate's surface: no module imports from
//! it, each imports the siblings it uses.
//!
//! What it deliberately does not own:
//! - de-duplication by event id and the sale records a void needs: those live
//!   in the broker's durable store (`dishsync-broker`'s `store` module), which
//!   looks them up and hands them in;
//! - persistence and publication themselves: the broker's rules shell
//!   persists and publishes the [`Document`]s named in [`Changes`].
//!
//! Invariants: `portions = min over the recipe of ⌊max(stock, 0) ÷ per
//! portion⌋`; a `rev` grows by exactly one each time the document it numbers
//! changes; a rejected input changes nothing.
pub mod catalog;
mod changes;
pub mod document;
pub mod input;
mod inventory;
pub mod ledger;
pub mod planning;
mod reconfigure;
mod rejection;
pub mod report;
mod state;

pub use catalog::Catalog;
pub use changes::{Changes, Outcome};
pub use document::{Document, Shown};
pub use input::{reading_id, salvage_id, Input};
pub use inventory::{opening_id, Inventory, MAX_PORTIONS};
pub use planning::{ChainPlan, Request, Retired, StorePlan, Transfer};
pub use rejection::{Rejection, MAX_TEXT};
pub use report::DayReport;
pub use state::{
    DishState, EntryKind, LedgerEntry, MenuState, Override, Restored, SaleRecord, SkuState, StockKindCode,
};

#[cfg(test)]
pub(crate) fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("test id")
}

#[cfg(test)]
mod tests;
