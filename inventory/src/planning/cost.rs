//! What a store's waste and use are worth: today's base units of each SKU
//! times its unit cost (`StockParams::unit_cost`, millionths of the
//! currency per base unit), summed exactly in integers and turned into the
//! currency once. The share the chain's controller asks for is waste cost
//! ÷ (use + waste) cost — one figure across grams, millilitres and pieces,
//! which a ratio of units cannot give.

use std::collections::BTreeMap;

use dishsync_protocol::payload::CostOut;
use dishsync_protocol::SkuId;

use super::actions::Today;
use crate::catalog::StockParams;

/// Millionths of the currency in one unit of it.
const MICROS: f64 = 1e6;

/// Today's waste and use of a store in money over the SKUs with a cost;
/// `None` when no SKU with use or waste today has one.
pub fn today_in_money(today: &Today, params: &BTreeMap<SkuId, StockParams>, currency: Option<&str>) -> Option<CostOut> {
    let skus: std::collections::BTreeSet<&SkuId> = today.waste.keys().chain(today.used.keys()).collect();
    let figures = skus.into_iter().map(|sku| {
        let w = today.waste.get(sku).copied().unwrap_or(0);
        let u = today.used.get(sku).copied().unwrap_or(0);
        (sku, w, u)
    });
    in_money(figures, params, currency)
}

/// The waste and use of `figures` — each SKU once, with its waste and use
/// in base units — in money over the SKUs with a cost in `params`; `None`
/// when no SKU with use or waste has one.
pub fn in_money<'a>(
    figures: impl IntoIterator<Item = (&'a SkuId, i64, i64)>,
    params: &BTreeMap<SkuId, StockParams>,
    currency: Option<&str>,
) -> Option<CostOut> {
    let (mut waste, mut used) = (0i128, 0i128);
    let mut costed = false;
    let mut uncosted = Vec::new();
    for (sku, w, u) in figures {
        if w == 0 && u == 0 {
            continue;
        }
        match params.get(sku).and_then(|p| p.unit_cost) {
            Some(cost) => {
                costed = true;
                waste += i128::from(w) * i128::from(cost);
                used += i128::from(u) * i128::from(cost);
            }
            None => uncosted.push(sku.clone()),
        }
    }
    if !costed {
        return None;
    }
    let share = if waste + used > 0 {
        waste as f64 / (waste + used) as f64
    } else {
        0.0
    };
    Some(CostOut {
        currency: currency.map(str::to_string),
        waste: waste as f64 / MICROS,
        used: used as f64 / MICROS,
        share,
        uncosted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SkuId {
        s.parse().expect("test id")
    }

    fn costing(unit_cost: Option<i64>) -> StockParams {
        StockParams {
            reorder_point: 0,
            par: 0,
            opening: None,
            unit_cost,
        }
    }

    #[test]
    fn waste_and_use_are_summed_in_money_across_units() {
        // Beef at 12.00 a kg (12,000 millionths a gram), buns at 0.35 each,
        // oil at 2.50 a litre; napkins without a cost.
        let params: BTreeMap<SkuId, StockParams> = [
            (id("beef"), costing(Some(12_000))),
            (id("bun"), costing(Some(350_000))),
            (id("oil"), costing(Some(2_500))),
            (id("napkin"), costing(None)),
        ]
        .into_iter()
        .collect();
        let today = Today {
            day: 0,
            waste: [(id("beef"), 450), (id("bun"), 6), (id("napkin"), 40)]
                .into_iter()
                .collect(),
            used: [(id("beef"), 9_000), (id("bun"), 60), (id("oil"), 2_000)]
                .into_iter()
                .collect(),
        };
        let cost = today_in_money(&today, &params, Some("EUR")).expect("costed");
        // Waste: 450 g × 0.012 + 6 × 0.35 = 5.40 + 2.10 = 7.50.
        assert_eq!(cost.waste, 7.5);
        // Use: 9,000 g × 0.012 + 60 × 0.35 + 2,000 ml × 0.0025 = 108 + 21 + 5 = 134.
        assert_eq!(cost.used, 134.0);
        assert_eq!(cost.share, 7_500_000.0 / 141_500_000.0, "from the exact sums");
        assert_eq!(cost.uncosted, vec![id("napkin")]);
        assert_eq!(cost.currency.as_deref(), Some("EUR"));
    }

    #[test]
    fn no_costed_sku_gives_no_figure() {
        let params: BTreeMap<SkuId, StockParams> = [(id("napkin"), costing(None)), (id("beef"), costing(Some(1)))]
            .into_iter()
            .collect();
        let today = Today {
            day: 0,
            waste: [(id("napkin"), 3)].into_iter().collect(),
            used: BTreeMap::new(),
        };
        assert_eq!(today_in_money(&today, &params, None), None);
        assert_eq!(today_in_money(&Today::default(), &params, None), None);
    }
}
