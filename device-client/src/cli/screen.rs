//! The live screen of `dishsync watch`: what a store manager reads at a
//! glance, fitted to the terminal (80×24 at the least).
//!
//! [`Screen`] keeps the latest documents the client delivered and renders
//! them, pure: most urgent first — the active alerts, in words, once each;
//! the dishes that are sold out, low or stale (then how many are fine); the
//! SKUs at or below their reorder point; the open requests and transfers —
//! each section cut to the rows that are left, saying how many it left out.
//! Times are the store's local time, from its catalog. The terminal and its
//! colours belong to the command (`cli/mod.rs`); nothing here writes.

use std::collections::BTreeMap;

use dishsync_protocol::payload::{
    AlertKind, AlertOut, AlertState, CatalogOut, DishAvailabilityOut, DishStatus, LevelOut, LevelState, RequestOut,
    RequestState, Timestamp, TransferOut, TransferState,
};
use dishsync_protocol::{DishId, Millis, SkuId};

use crate::client::Update;

/// The smallest screen the view is laid out for.
pub const MIN_ROWS: usize = 24;
/// The narrowest.
pub const MIN_COLS: usize = 80;

/// What the view knows, from the documents delivered so far.
#[derive(Debug, Default)]
pub struct Screen {
    dishes: BTreeMap<DishId, DishAvailabilityOut>,
    levels: BTreeMap<SkuId, LevelOut>,
    requests: BTreeMap<String, RequestOut>,
    transfers: BTreeMap<String, TransferOut>,
    /// Active alerts by id, with the order they were raised in.
    alerts: BTreeMap<String, (u64, AlertOut)>,
    raised: u64,
    catalog: Option<CatalogOut>,
    connected: bool,
}

/// Whether a line is plain, good news, a warning or trouble (the CLI picks
/// the colour, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Headings and plain rows.
    Plain,
    /// Available, ok.
    Good,
    /// Low, predicted, stale.
    Warn,
    /// Sold out, out, negative.
    Bad,
}

/// One rendered row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The text, at most the screen's width.
    pub text: String,
    /// How it reads.
    pub tone: Tone,
}

fn row(text: String, tone: Tone, cols: usize) -> Row {
    Row {
        text: text.chars().take(cols).collect(),
        tone,
    }
}

/// An alert's kind in words.
fn kind_words(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::LowStock => "Low stock",
        AlertKind::NegativeStock => "Below zero",
        AlertKind::SoldOut => "Sold out",
        AlertKind::SelloutPredicted => "Selling out",
        AlertKind::WasteSpike => "Waste",
        AlertKind::DeviceOffline => "Device offline",
        AlertKind::UsageVariance => "Usage variance",
        AlertKind::EquipmentFault => "Equipment fault",
        AlertKind::ProbeSilent => "Probe silent",
        AlertKind::PromotionAtRisk => "Promotion at risk",
    }
}

/// Minutes east of UTC in a `+HH:MM` / `-HH:MM` offset.
fn offset_minutes(offset: &str) -> i64 {
    let (sign, rest) = match offset.as_bytes().first() {
        Some(b'-') => (-1, &offset[1..]),
        Some(b'+') => (1, &offset[1..]),
        _ => (1, offset),
    };
    let mut parts = rest.split(':').map(|p| p.parse::<i64>().unwrap_or(0));
    sign * (parts.next().unwrap_or(0) * 60 + parts.next().unwrap_or(0))
}

impl Screen {
    /// Takes in one update from the client.
    pub fn apply(&mut self, update: &Update) {
        match update {
            Update::Availability(d) => {
                self.dishes.insert(d.dish.clone(), d.clone());
            }
            Update::Menu(m) => {
                for (dish, entry) in &m.dishes {
                    // A per-dish document newer than the menu's entry wins.
                    if self.dishes.get(dish).is_none_or(|d| d.rev < entry.rev) {
                        let doc = entry.clone().into_dish(m.store.clone(), dish.clone());
                        self.dishes.insert(dish.clone(), doc);
                    }
                }
            }
            Update::Level(l) => {
                self.levels.insert(l.sku.clone(), l.clone());
            }
            Update::Request(r) => {
                self.requests.insert(r.id.to_string(), r.clone());
            }
            Update::Transfer(t) => {
                self.transfers.insert(t.id.to_string(), t.clone());
            }
            Update::Cleared(id) => {
                self.requests.remove(id.as_str());
                self.transfers.remove(id.as_str());
            }
            Update::Alert(a) => match a.state {
                AlertState::Raised => {
                    if !self.alerts.contains_key(&a.id) {
                        self.raised += 1;
                        self.alerts.insert(a.id.clone(), (self.raised, a.clone()));
                    }
                }
                AlertState::Cleared => {
                    self.alerts.remove(&a.id);
                }
            },
            Update::Catalog(c) => self.catalog = Some(c.clone()),
            Update::Connected(up) => self.connected = *up,
            _ => {}
        }
    }

    /// `t` as the store's local clock time, `HH:MM`.
    fn clock(&self, t: Millis) -> String {
        let offset = self.catalog.as_ref().map_or(0, |c| offset_minutes(&c.utc_offset));
        let minute = (t.div_euclid(60_000) + offset).rem_euclid(24 * 60);
        format!("{:02}:{:02}", minute / 60, minute % 60)
    }

    /// A dish's name for people (its id until the catalog arrives).
    fn dish_name(&self, dish: &DishId) -> String {
        self.catalog
            .as_ref()
            .and_then(|c| c.dishes.iter().find(|d| d.dish == *dish))
            .map_or_else(|| dish.to_string(), |d| d.name.clone())
    }

    /// The screen for a terminal of `rows` × `cols`, at `now`.
    pub fn render(&self, store: &str, now: Millis, rows: usize, cols: usize) -> Vec<Row> {
        let (rows, cols) = (rows.max(MIN_ROWS), cols.max(MIN_COLS));
        let name = self.catalog.as_ref().map_or(store.to_string(), |c| c.name.clone());
        let link = if self.connected { "live" } else { "reconnecting" };
        let mut out = vec![row(
            format!("dishsync · {name} · {link} · {} local", self.clock(now)),
            Tone::Plain,
            cols,
        )];
        // The last row stays free, so the terminal never scrolls.
        let budget = rows - 1;
        // Each section: its heading rows, its rows, what its rows are, and
        // how many rows it asks for at most before the others have theirs.
        let mut sections: Vec<(Vec<Row>, Vec<Row>, &str, usize)> = Vec::new();
        let heading = |text: &str| {
            vec![
                row(String::new(), Tone::Plain, cols),
                row(text.to_string(), Tone::Plain, cols),
            ]
        };

        let mut alerts: Vec<&(u64, AlertOut)> = self.alerts.values().collect();
        alerts.sort_by_key(|a| std::cmp::Reverse(a.0));
        let alert_rows = alerts
            .iter()
            .map(|(_, a)| {
                let tone = match a.kind {
                    AlertKind::SoldOut | AlertKind::NegativeStock | AlertKind::DeviceOffline => Tone::Bad,
                    _ => Tone::Warn,
                };
                row(
                    format!("{}  {:<14}  {}", self.clock(a.at.0), kind_words(a.kind), a.message),
                    tone,
                    cols,
                )
            })
            .collect();
        sections.push((heading("ALERTS"), alert_rows, "more alerts", 5));

        let mut attention: Vec<&DishAvailabilityOut> = self
            .dishes
            .values()
            .filter(|d| d.status != DishStatus::Available || d.stale)
            .collect();
        attention.sort_by_key(|d| {
            (
                d.status != DishStatus::SoldOut,
                d.status != DishStatus::Low,
                d.portions,
                self.dish_name(&d.dish),
            )
        });
        let fine = self.dishes.len() - attention.len();
        let mut dish_heading = heading("DISHES");
        dish_heading.push(row(
            format!(
                "{:<26} {:<9} {:>5}  {:<6} {}",
                "DISH", "STATUS", "LEFT", "OUT AT", "WHY"
            ),
            Tone::Plain,
            cols,
        ));
        let mut dish_rows: Vec<Row> = Vec::new();
        for d in &attention {
            let (word, tone) = match d.status {
                DishStatus::SoldOut => ("sold out", Tone::Bad),
                DishStatus::Low => ("low", Tone::Warn),
                DishStatus::Available => ("ok", Tone::Warn),
            };
            let eta = d.sellout_eta.map_or_else(|| "–".to_string(), |t| self.clock(t.0));
            let mut why = match &d.override_ {
                Some(o) => format!(
                    "86 by {}{}",
                    o.by,
                    o.note.as_ref().map_or(String::new(), |n| format!(": {n}"))
                ),
                None => d.limited_by.as_ref().map_or(String::new(), |s| format!("{s} short")),
            };
            if d.stale {
                why = format!("{why} (scale offline)").trim().to_string();
            }
            let name: String = self.dish_name(&d.dish).chars().take(26).collect();
            dish_rows.push(row(
                format!("{name:<26} {word:<9} {:>5}  {eta:<6} {why}", d.portions),
                tone,
                cols,
            ));
        }
        let fine_line = (fine > 0).then(|| format!("{fine} dishes available"));
        sections.push((dish_heading, dish_rows, "more dishes", usize::MAX));

        let mut short: Vec<&LevelOut> = self.levels.values().filter(|l| l.state != LevelState::Ok).collect();
        short.sort_by_key(|l| (l.state != LevelState::Negative, l.state != LevelState::Out, l.qty));
        let level_rows = short
            .iter()
            .map(|l| {
                let tone = if l.state == LevelState::Low {
                    Tone::Warn
                } else {
                    Tone::Bad
                };
                let word = match l.state {
                    LevelState::Ok => "ok",
                    LevelState::Low => "low",
                    LevelState::Out => "out",
                    LevelState::Negative => "below zero",
                };
                let stale = if l.stale { " (scale offline)" } else { "" };
                row(
                    format!(
                        "{:<26} {:>8} {:<4} {word:<10} reorder at {}{stale}",
                        l.sku.as_str(),
                        l.qty,
                        l.unit.to_string(),
                        l.reorder_point
                    ),
                    tone,
                    cols,
                )
            })
            .collect();
        sections.push((
            heading("STOCK AT OR BELOW ITS REORDER POINT"),
            level_rows,
            "more SKUs",
            5,
        ));

        let mut docs: Vec<Row> = Vec::new();
        for r in self.requests.values().filter(|r| {
            matches!(
                r.state,
                RequestState::Open | RequestState::Acknowledged | RequestState::Shipped
            )
        }) {
            let lines: Vec<String> = r
                .lines
                .iter()
                .map(|l| format!("{} {} {}", l.qty, l.unit, l.sku))
                .collect();
            let state = format!("{:?}", r.state).to_lowercase();
            docs.push(row(
                format!("{:<22} {state:<12} {}", r.id.as_str(), lines.join(", ")),
                Tone::Plain,
                cols,
            ));
        }
        for t in self.transfers.values().filter(|t| {
            matches!(
                t.state,
                TransferState::Proposed | TransferState::Accepted | TransferState::Dispatched
            )
        }) {
            let state = format!("{:?}", t.state).to_lowercase();
            docs.push(row(
                format!(
                    "{:<22} {state:<12} {} {} {}: {} → {}",
                    t.id.as_str(),
                    t.qty,
                    t.unit,
                    t.sku,
                    t.from,
                    t.to
                ),
                Tone::Plain,
                cols,
            ));
        }
        sections.push((heading("REQUESTS AND TRANSFERS"), docs, "more", 4));

        // Lay out: the sections with rows, each under its heading; a section
        // asks for its rows up to its cap, the largest gives way while they
        // do not fit, and rows still free go to what was cut, most urgent
        // first. A cut section ends with how many rows it left out.
        sections.retain(|(_, rows_of, _, _)| !rows_of.is_empty());
        let fine_rows = if fine_line.is_some() { 2 } else { 0 };
        let overhead: usize = sections.iter().map(|(h, ..)| h.len()).sum();
        let room = budget.saturating_sub(out.len() + overhead + fine_rows);
        let mut given: Vec<usize> = sections.iter().map(|(_, r, _, cap)| r.len().min(*cap)).collect();
        while given.iter().sum::<usize>() > room {
            let Some((i, _)) = given
                .iter()
                .enumerate()
                .filter(|(_, g)| **g > 1)
                .max_by_key(|(_, g)| **g)
            else {
                break;
            };
            given[i] -= 1;
        }
        let mut spare = room.saturating_sub(given.iter().sum());
        for (i, (_, rows_of, _, _)) in sections.iter().enumerate() {
            let more = (rows_of.len() - given[i]).min(spare);
            given[i] += more;
            spare -= more;
        }
        for ((headings, rows_of, what, _), give) in sections.into_iter().zip(given) {
            out.extend(headings);
            if give >= rows_of.len() {
                out.extend(rows_of);
            } else {
                let shown = give.saturating_sub(1);
                let cut = rows_of.len() - shown;
                out.extend(rows_of.into_iter().take(shown));
                out.push(row(format!("… and {cut} {what}"), Tone::Plain, cols));
            }
        }
        if let Some(fine) = fine_line {
            out.push(row(String::new(), Tone::Plain, cols));
            out.push(row(fine, Tone::Good, cols));
        }
        out.truncate(budget);
        out
    }
}

/// `now` for the screen: the wall clock.
pub fn now() -> Millis {
    Timestamp::now().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use dishsync_protocol::payload::{ActiveOverride, CatalogDish};
    use dishsync_protocol::BaseUnit;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("test id")
    }

    const T: Millis = 1_764_090_000_000; // 17:00 UTC

    fn dish(name: &str, status: DishStatus, portions: u64, rev: u64) -> DishAvailabilityOut {
        DishAvailabilityOut {
            store: id("downtown"),
            dish: id(name),
            status,
            portions,
            limited_by: Some(id("potato-fries")),
            override_: None,
            sellout_eta: None,
            stale: false,
            at_risk: false,
            rev,
            at: Timestamp(T),
        }
    }

    fn alert(n: u32, state: AlertState) -> AlertOut {
        AlertOut {
            id: format!("al-{n}"),
            kind: AlertKind::LowStock,
            state,
            sku: Some(id(&format!("sku-{n}"))),
            dish: None,
            device: None,
            message: format!("sku-{n} at 3 pcs, reorder point 10"),
            at: Timestamp(T),
        }
    }

    fn busy_store() -> Screen {
        let mut s = Screen::default();
        s.apply(&Update::Connected(true));
        s.apply(&Update::Catalog(CatalogOut {
            store: id("downtown"),
            name: "Downtown".into(),
            utc_offset: "+01:00".into(),
            training: false,
            dishes: vec![CatalogDish {
                dish: id("fries"),
                name: "Fries".into(),
                category: None,
                order: 1,
                price: None,
            }],
            skus: Vec::new(),
            rev: 1,
            at: Timestamp(T),
        }));
        for n in 0..40u32 {
            let status = match n % 3 {
                0 => DishStatus::SoldOut,
                1 => DishStatus::Low,
                _ => DishStatus::Available,
            };
            s.apply(&Update::Availability(dish(
                &format!("dish-{n:02}"),
                status,
                u64::from(n % 7),
                1,
            )));
        }
        let mut fries = dish("fries", DishStatus::SoldOut, 0, 3);
        fries.override_ = Some(ActiveOverride {
            by: id("chef-anna"),
            until: None,
            note: Some("fryer down".into()),
        });
        s.apply(&Update::Availability(fries));
        for n in 0..12u32 {
            s.apply(&Update::Alert(alert(n, AlertState::Raised)));
            s.apply(&Update::Level(LevelOut {
                store: id("downtown"),
                sku: id(&format!("sku-{n}")),
                qty: 3,
                unit: BaseUnit::Pcs,
                reorder_point: 10,
                par: 40,
                state: LevelState::Low,
                stale: false,
                at_risk: false,
                rev: 1,
                at: Timestamp(T),
            }));
        }
        s
    }

    #[test]
    fn a_busy_store_fits_a_small_terminal_most_urgent_first() {
        let s = busy_store();
        let screen = s.render("downtown", T, 24, 80);
        assert!(screen.len() <= 23, "the last row stays free: {}", screen.len());
        assert!(screen.iter().all(|r| r.text.chars().count() <= 80));
        assert_eq!(
            screen[0].text, "dishsync · Downtown · live · 18:00 local",
            "store-local time"
        );
        let text: Vec<&str> = screen.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(text[2], "ALERTS");
        assert!(
            text.iter()
                .any(|t| t.starts_with("… and ") && t.ends_with("more alerts")),
            "{text:#?}"
        );
        let dishes = text.iter().position(|t| *t == "DISHES").expect("dishes shown");
        // Sold out first, by name, with who 86ed it and why.
        assert!(text[dishes + 2].contains("sold out"), "{text:#?}");
        assert!(text
            .iter()
            .any(|t| t.starts_with("Fries") && t.contains("86 by chef-anna: fryer down")));
        // Padded columns: the status column starts at the same place.
        fn from_column(t: &str, column: usize) -> String {
            t.chars().skip(column).collect()
        }
        assert!(text[dishes + 2..dishes + 4]
            .iter()
            .all(|t| from_column(t, 27).starts_with("sold out")));
    }

    #[test]
    fn an_alert_shows_once_in_words_and_leaves_when_cleared() {
        let mut s = Screen::default();
        for _ in 0..7 {
            s.apply(&Update::Alert(alert(1, AlertState::Raised)));
        }
        let text: Vec<String> = s.render("s1", T, 24, 80).into_iter().map(|r| r.text).collect();
        let shown: Vec<&String> = text.iter().filter(|t| t.contains("sku-1 at 3 pcs")).collect();
        assert_eq!(shown.len(), 1, "{text:#?}");
        assert!(shown[0].starts_with("17:00  Low stock "), "{}", shown[0]);
        s.apply(&Update::Alert(alert(1, AlertState::Cleared)));
        let text: Vec<String> = s.render("s1", T, 24, 80).into_iter().map(|r| r.text).collect();
        assert!(!text.iter().any(|t| t.contains("sku-1")), "{text:#?}");
    }

    #[test]
    fn an_older_menu_entry_does_not_hide_a_newer_dish_document() {
        let mut s = Screen::default();
        s.apply(&Update::Availability(dish("fries", DishStatus::SoldOut, 0, 5)));
        let mut menu = dishsync_protocol::payload::StoreAvailabilityOut {
            store: id("downtown"),
            rev: 9,
            at: Timestamp(T),
            dishes: BTreeMap::new(),
        };
        let older = dish("fries", DishStatus::Available, 9, 4);
        menu.dishes.insert(
            id("fries"),
            dishsync_protocol::payload::MenuEntry {
                status: older.status,
                portions: older.portions,
                limited_by: older.limited_by,
                override_: None,
                sellout_eta: None,
                stale: false,
                at_risk: false,
                rev: older.rev,
                at: older.at,
            },
        );
        s.apply(&Update::Menu(menu));
        let text: Vec<String> = s.render("s1", T, 24, 80).into_iter().map(|r| r.text).collect();
        assert!(
            text.iter().any(|t| t.starts_with("fries") && t.contains("sold out")),
            "{text:#?}"
        );
    }
}
