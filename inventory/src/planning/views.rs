//! Views: the retained documents of requests, transfers and the HQ summary, and the states persisted.

use std::collections::{BTreeMap, BTreeSet};

use dishsync_protocol::payload::{DishStatus, RequestOut, SummaryOut, Timestamp, TransferOut, WasteLine};
use dishsync_protocol::{DocId, Millis, SkuId, StoreId};

use crate::inventory::Inventory;

use super::plan::*;

impl Inventory {
    /// A request's retained document.
    pub fn request_out(&self, id: &DocId) -> Option<RequestOut> {
        let r = self.requests.get(id)?;
        Some(RequestOut {
            id: r.id.clone(),
            store: r.store.clone(),
            lines: r.lines.clone(),
            state: r.state,
            reason: r.reason.clone(),
            created_at: Timestamp(r.created_at),
            updated_at: Timestamp(r.updated_at),
            rev: r.rev,
        })
    }

    /// A transfer's retained document.
    pub fn transfer_out(&self, id: &DocId) -> Option<TransferOut> {
        let t = self.transfers.get(id)?;
        let unit = self
            .catalog
            .sku(&t.sku)
            .map_or(dishsync_protocol::BaseUnit::Pcs, |s| s.unit);
        Some(TransferOut {
            id: t.id.clone(),
            from: t.from.clone(),
            to: t.to.clone(),
            sku: t.sku.clone(),
            qty: t.qty,
            unit,
            state: t.state,
            reason: t.reason.clone(),
            expires_at: t.expires_at.map(Timestamp),
            travel_minutes: t.travel_minutes,
            updated_at: Timestamp(t.updated_at),
            rev: t.rev,
        })
    }

    /// A request as persisted.
    pub fn request(&self, id: &DocId) -> Option<&Request> {
        self.requests.get(id)
    }

    /// A transfer as persisted.
    pub fn transfer(&self, id: &DocId) -> Option<&Transfer> {
        self.transfers.get(id)
    }

    /// Every request and transfer currently held (for re-publication).
    pub fn documents(&self) -> (Vec<DocId>, Vec<DocId>) {
        (
            self.requests.keys().cloned().collect(),
            self.transfers.keys().cloned().collect(),
        )
    }

    /// A store's planning state as persisted.
    pub fn plan_state(&self, store: &StoreId) -> Option<&StorePlan> {
        self.stores.get(store).map(|s| &s.plan)
    }

    /// The chain's planning counters as persisted.
    pub fn chain_state(&self) -> ChainPlan {
        self.chain
    }

    /// A store's last days of use and waste, as persisted.
    pub fn history(&self, store: &StoreId) -> Option<&super::movers::UsageHistory> {
        self.stores.get(store).map(|s| &s.history)
    }

    /// A store's portions sold per dish, today and its last days.
    pub fn daily_sales(&self, store: &StoreId) -> Option<&super::promotion::DailySales> {
        self.stores.get(store).map(|s| &s.sold)
    }

    /// The HQ summary of a store.
    pub fn summary_out(&self, store: &StoreId, now: Millis) -> Option<SummaryOut> {
        let state = self.stores.get(store)?;
        let params = &self.catalog.store(store)?.stock;
        let sold_out = state
            .dishes
            .iter()
            .filter(|(_, d)| d.status == DishStatus::SoldOut)
            .map(|(id, _)| id.clone())
            .collect();
        let low = state
            .skus
            .iter()
            .filter(|(sku, s)| params.get(*sku).is_some_and(|p| s.ledger.qty() <= p.reorder_point))
            .map(|(sku, _)| sku.clone())
            .collect();
        let open_requests = self
            .requests
            .values()
            .filter(|r| r.store == *store && r.is_open())
            .map(|r| r.id.clone())
            .collect();
        let open_transfers = self
            .transfers
            .values()
            .filter(|t| t.is_active() && (t.from == *store || t.to == *store))
            .map(|t| t.id.clone())
            .collect();
        let mut waste = BTreeMap::new();
        let mut ratios = Vec::new();
        let skus: BTreeSet<&SkuId> = state
            .plan
            .today
            .waste
            .keys()
            .chain(state.plan.today.used.keys())
            .collect();
        for sku in skus {
            let w = state.plan.today.waste.get(sku).copied().unwrap_or(0);
            let u = state.plan.today.used.get(sku).copied().unwrap_or(0);
            if w + u <= 0 {
                continue;
            }
            let ratio = w as f64 / (w + u) as f64;
            ratios.push(ratio);
            if w > 0 {
                waste.insert(
                    sku.clone(),
                    WasteLine {
                        waste: w,
                        used: u,
                        ratio,
                    },
                );
            }
        }
        let cost = super::cost::today_in_money(&state.plan.today, params, self.catalog.planning().currency.as_deref());
        let counted = ratios.len() as u32;
        let waste_ratio = if ratios.is_empty() {
            0.0
        } else {
            ratios.iter().sum::<f64>() / f64::from(counted)
        };
        let levels = state.skus.iter().map(|(sku, s)| (sku.clone(), s.ledger.qty()));
        let slow_movers = super::movers::slow_movers(&self.catalog, params, levels, &state.history);
        Some(SummaryOut {
            store: store.clone(),
            sold_out,
            low,
            open_requests,
            open_transfers,
            waste_ratio,
            counted,
            waste,
            slow_movers,
            cost,
            rev: state.plan.summary_rev,
            at: Timestamp(now),
        })
    }
}
