//! Planning: what turns a stock tracker into a system that acts before a
//! person notices — replenishment requests to the central kitchen, transfers
//! between stores, sell-out forecasts, alerts, freshness and the HQ summary.
//!
//! Everything here is condition-based rather than edge-based: after each
//! input, the planning pass (`Inventory::plan`) looks at the levels and dishes that changed and
//! compares the conditions with what is already active (open requests,
//! disarmed SKUs, active alerts, active transfers). That makes the rules
//! idempotent under replays and restarts — nothing is raised twice — and
//! immune to noisy scales: a SKU re-arms for replenishment only once its
//! level is back above the reorder point.
//!
//! Time is store-local for service hours, delivery windows and "today"
//! (`Planning::utc_offset_minutes`); the core is always handed `now`.
//!
//! `plan` holds the planning documents (requests, transfers) and puts a
//! store's planning state together from its slices, each defined beside
//! the rules that keep it; the rules are one file per job: `time`
//! (store-local time), `forecast` (the sales rate and sell-out times),
//! `freshness` (stale levels, device presence), `alerts`, `pass` (the
//! planning pass: replenishment and transfer proposals), `actions` (on
//! requests and transfers, and what they book), `timers` (what time alone
//! changes), `cost` (waste and use in money), `variance` (usage
//! variance from count to count), `movers` (slow movers and the days of
//! use they are judged by), `coldchain` (fridges and freezers, and the
//! stock their faults put at risk), `promotion` (whether each store can
//! carry a promotion HQ plans, and what it raises when it cannot) and
//! `views` (the documents of requests, transfers and the HQ summary).

pub mod actions;
pub mod alerts;
pub mod coldchain;
pub mod cost;
pub mod forecast;
pub mod freshness;
pub mod movers;
pub mod pass;
mod plan;
pub mod promotion;
mod time;
mod timers;
pub mod variance;
mod views;

pub use plan::{ChainPlan, Rate, Request, Retired, StorePlan, Transfer, FINISHED_SHOWN_FOR};

#[cfg(test)]
mod tests;
