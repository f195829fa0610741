//! Who may publish and subscribe what: the permission matrix.
//!
//! A pure, synchronous policy over an [`Identity`] fixed at login (see
//! `auth`): no I/O, no lookups, so the publish hook can decide before it
//! acknowledges, even for a device that sends CONNECT and PUBLISH
//! back-to-back. [`MATRIX`] is the single source of truth; `topics.md`
//! renders it and a test keeps the two equal.
//!
//! Rules beyond the matrix: a store-bound identity acts only inside its own
//! store's prefix; HQ-level identities read every store; acks, errors and
//! presence topics are per device — a device reads its own acks and errors
//! and sets only its own presence, while HQ roles and the store's manager
//! read everyone's. A subscription filter is allowed only if every topic it
//! can match is allowed.

use std::fmt;
use std::str::FromStr;

pub use dishsync_protocol::topic::Family;
use dishsync_protocol::{DeviceId, StoreId, Topic};

/// What a device is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A smart scale: books stock, shows levels.
    Scale,
    /// A fridge's or freezer's temperature probe: reports temperatures.
    Probe,
    /// A kitchen display: books waste and 86es dishes; sees availability and levels.
    Kds,
    /// A POS terminal: records sales; sees availability.
    Pos,
    /// A store manager: everything in the store.
    Manager,
    /// The central kitchen: reads every store's stock.
    CentralKitchen,
    /// Head office: reads everything.
    Hq,
    /// An operator: reads everything in scope, publishes nothing.
    Operator,
    /// The firmware bridge: books stock for its devices, pushes availability down.
    Bridge,
    /// An anonymous client of a demo broker: every input in every store.
    Demo,
}

impl Role {
    /// Every role that can be configured (not [`Role::Demo`]).
    pub const CONFIGURABLE: [Role; 9] = [
        Role::Scale,
        Role::Probe,
        Role::Kds,
        Role::Pos,
        Role::Manager,
        Role::CentralKitchen,
        Role::Hq,
        Role::Operator,
        Role::Bridge,
    ];

    /// The name in configuration files and topics.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scale => "scale",
            Role::Probe => "probe",
            Role::Kds => "kds",
            Role::Pos => "pos",
            Role::Manager => "manager",
            Role::CentralKitchen => "central_kitchen",
            Role::Hq => "hq",
            Role::Operator => "operator",
            Role::Bridge => "bridge",
            Role::Demo => "demo",
        }
    }

    /// Whether the role belongs to HQ (no store) rather than a store.
    pub fn is_hq(self) -> bool {
        matches!(self, Role::CentralKitchen | Role::Hq)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::CONFIGURABLE.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Role::CONFIGURABLE.iter().map(|r| r.as_str()).collect();
            format!("unknown role {s:?} (expected one of {})", names.join(", "))
        })
    }
}

/// Where an identity acts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One store.
    Store(StoreId),
    /// The whole chain.
    Chain,
}

/// Who a connected client is, fixed at login.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The device (its MQTT client id).
    pub device: DeviceId,
    /// What it may do.
    pub role: Role,
    /// Where.
    pub scope: Scope,
}

/// What a matrix cell allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Nothing.
    No,
    /// Only the identity's own device topic (acks, errors, presence).
    Own,
    /// Every topic of the family in scope.
    Yes,
}

/// Publish or subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
}

use Grant::{No, Own, Yes};

/// The permission matrix: per role (in [`Role::CONFIGURABLE`] order, then
/// [`Role::Demo`]), per family (in [`Family::ALL`] order), (publish,
/// subscribe). Outputs are never published by clients, whatever the role.
#[rustfmt::skip]
pub const MATRIX: [(Role, [(Grant, Grant); 18]); 10] = [
    // stock events, sales, override, presence, availability, level, acks+errors, hq alerts,
    // replenishment actions, replenishment, transfer actions, transfers, alerts, summary, sensor readings,
    // catalog, promotions, metrics
    (Role::Scale, [(Yes, No), (No, No), (No, No), (Own, No), (No, No), (No, Yes), (No, Own), (No, No),
        (No, No), (No, No), (No, No), (No, No), (No, No), (No, No), (Own, No), (No, No), (No, No), (No, No)]),
    (Role::Probe, [(No, No), (No, No), (No, No), (Own, No), (No, No), (No, No), (No, Own), (No, No),
        (No, No), (No, No), (No, No), (No, No), (No, No), (No, No), (Own, No), (No, No), (No, No), (No, No)]),
    (Role::Kds, [(Yes, No), (No, No), (Yes, No), (Own, Yes), (No, Yes), (No, Yes), (No, Own), (No, No),
        (No, No), (No, No), (No, Yes), (No, Yes), (No, Yes), (No, No), (No, Yes), (No, Yes), (No, Yes), (No, No)]),
    (Role::Pos, [(No, No), (Yes, No), (No, No), (Own, No), (No, Yes), (No, No), (No, Own), (No, No),
        (No, No), (No, No), (No, No), (No, No), (No, No), (No, No), (No, No), (No, Yes), (No, No), (No, No)]),
    (Role::Manager, [(Yes, Yes), (Yes, Yes), (Yes, Yes), (Own, Yes), (No, Yes), (No, Yes), (No, Yes), (No, No),
        (No, No), (No, Yes), (Yes, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, No)]),
    (Role::CentralKitchen, [(No, No), (No, No), (No, No), (No, No), (No, Yes), (No, Yes), (No, Own), (No, No),
        (Yes, Yes), (No, Yes), (No, No), (No, No), (No, No), (No, No), (No, No), (No, Yes), (No, Yes), (No, No)]),
    (Role::Hq, [(No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes),
        (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (Yes, Yes), (No, Yes)]),
    (Role::Operator, [(No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes),
        (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes)]),
    (Role::Bridge, [(Yes, No), (No, No), (No, No), (Yes, Yes), (No, Yes), (No, Yes), (No, Own), (No, No),
        (No, No), (No, No), (No, No), (No, No), (No, No), (No, No), (Yes, No), (No, Yes), (No, No), (No, No)]),
    (Role::Demo, [(Yes, Yes), (Yes, Yes), (Yes, Yes), (Yes, Yes), (No, Yes), (No, Yes), (No, Yes), (No, Yes),
        (Yes, Yes), (No, Yes), (Yes, Yes), (No, Yes), (No, Yes), (No, Yes), (Yes, Yes), (No, Yes), (Yes, Yes), (No, Yes)]),
];

/// The matrix cell for `role`, `family`, `access`.
pub fn grant(role: Role, family: Family, access: Access) -> Grant {
    let Some((_, row)) = MATRIX.iter().find(|(r, _)| *r == role) else {
        return No;
    };
    let Some(i) = Family::ALL.iter().position(|f| *f == family) else {
        return No;
    };
    match access {
        Access::Publish => row[i].0,
        Access::Subscribe => row[i].1,
    }
}

/// Why a publish or subscribe is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// The device a per-device topic names.
fn topic_device(topic: &Topic) -> Option<&DeviceId> {
    match topic {
        Topic::DeviceStatus { device, .. }
        | Topic::Acks { device, .. }
        | Topic::Errors { device, .. }
        | Topic::HqErrors { device }
        | Topic::HqAcks { device }
        | Topic::ScaleWeight { device, .. }
        | Topic::ProbeTemperature { device, .. } => Some(device),
        _ => None,
    }
}

impl Identity {
    /// An anonymous client of a demo broker.
    pub fn demo(device: DeviceId) -> Identity {
        Identity {
            device,
            role: Role::Demo,
            scope: Scope::Chain,
        }
    }

    fn in_scope(&self, store: &StoreId) -> bool {
        match &self.scope {
            Scope::Chain => true,
            Scope::Store(own) => own == store,
        }
    }

    /// May this identity publish on `topic`?
    pub fn may_publish(&self, topic: &Topic) -> Result<(), Denied> {
        let family = Family::of(topic);
        // Only a refusal needs the words (publishes are on the hot path).
        let who = || format!("{} ({})", self.device, self.role);
        match topic.store() {
            Some(store) if !self.in_scope(store) => {
                return Err(Denied(format!("{} may not publish in store {store}", who())));
            }
            None if self.scope != Scope::Chain => return Err(Denied(format!("{} may not publish HQ topics", who()))),
            _ => {}
        }
        match grant(self.role, family, Access::Publish) {
            Yes => Ok(()),
            Own if topic_device(topic) == Some(&self.device) => Ok(()),
            Own => Err(Denied(format!(
                "{} may publish {} only for itself",
                who(),
                family.as_str()
            ))),
            No => Err(Denied(format!("{} may not publish {}", who(), family.as_str()))),
        }
    }

    /// May this identity subscribe to `filter`? Allowed only if every topic
    /// the filter can match is allowed.
    pub fn may_subscribe(&self, filter: &str) -> Result<(), Denied> {
        let who = format!("{} ({})", self.device, self.role);
        let levels: Vec<&str> = filter.split('/').collect();
        let mut matches_any = false;
        for family in Family::ALL {
            for pattern in family.patterns() {
                let Some(binding) = intersect(&levels, pattern.levels()) else {
                    continue;
                };
                matches_any = true;
                let hq_topic = !pattern.levels().contains(&"{store}");
                let store_ok = match (&self.scope, binding.store) {
                    (Scope::Chain, _) => true,
                    (Scope::Store(_), _) if hq_topic => false,
                    (Scope::Store(own), Some(s)) => own.as_str() == s,
                    (Scope::Store(_), None) => false,
                };
                if !store_ok {
                    return Err(Denied(format!(
                        "{who} may not subscribe to {filter}: it reaches beyond its store"
                    )));
                }
                match grant(self.role, family, Access::Subscribe) {
                    Yes => {}
                    Own if binding.device == Some(self.device.as_str()) => {}
                    Own => {
                        return Err(Denied(format!(
                            "{who} may subscribe to {} only for itself, not {filter}",
                            family.as_str()
                        )))
                    }
                    No => {
                        return Err(Denied(format!(
                            "{who} may not subscribe to {} ({filter})",
                            family.as_str()
                        )))
                    }
                }
            }
        }
        if matches_any {
            Ok(())
        } else {
            Err(Denied(format!("{filter} matches no topic of the dishsync contract")))
        }
    }
}

/// Whether some topic of the contract matches `filter`.
pub fn reaches_contract(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    Family::ALL
        .iter()
        .any(|f| f.patterns().iter().any(|p| intersect(&levels, p.levels()).is_some()))
}

/// The literal store and device a filter fixes for a pattern it can match
/// (`None` where the filter has a wildcard there).
#[derive(Debug, Default)]
struct Binding<'a> {
    store: Option<&'a str>,
    device: Option<&'a str>,
}

/// Whether some topic matches both the filter and the pattern; if so, what
/// the filter fixes.
fn intersect<'a>(filter: &[&'a str], pattern: &[&str]) -> Option<Binding<'a>> {
    let mut binding = Binding::default();
    for (i, p) in pattern.iter().enumerate() {
        let f = *filter.get(i)?;
        if f == "#" {
            return Some(binding);
        }
        let literal = f != "+";
        match *p {
            "{store}" if literal => binding.store = Some(f),
            "{device}" if literal => binding.device = Some(f),
            "*" | "{store}" | "{device}" => {}
            fixed if literal && fixed != f => return None,
            _ => {}
        }
    }
    // A filter longer than the pattern matches only if it ends in `#`
    // right after (`a/b/#` matches `a/b`).
    match filter.len().cmp(&pattern.len()) {
        std::cmp::Ordering::Equal => Some(binding),
        std::cmp::Ordering::Greater if filter.len() == pattern.len() + 1 && filter[pattern.len()] == "#" => {
            Some(binding)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<T: FromStr>(s: &str) -> T
    where
        T::Err: fmt::Debug,
    {
        s.parse().expect("test id")
    }

    fn who(role: Role, store: Option<&str>) -> Identity {
        let scope = store.map_or(Scope::Chain, |s| Scope::Store(id(s)));
        Identity {
            device: id("dev-1"),
            role,
            scope,
        }
    }

    #[test]
    fn filters_are_judged_by_everything_they_can_match() {
        let pos = who(Role::Pos, Some("s1"));
        assert!(pos.may_subscribe("stores/s1/dishes/+/availability").is_ok());
        assert!(pos.may_subscribe("stores/s1/availability").is_ok());
        assert!(pos.may_subscribe("stores/s1/acks/dev-1").is_ok());
        assert!(pos.may_subscribe("stores/s1/acks/+").is_err(), "other devices' acks");
        assert!(
            pos.may_subscribe("stores/s2/dishes/+/availability").is_err(),
            "other store"
        );
        assert!(
            pos.may_subscribe("stores/+/dishes/+/availability").is_err(),
            "every store"
        );
        assert!(pos.may_subscribe("stores/s1/#").is_err(), "includes sales and levels");
        assert!(pos.may_subscribe("#").is_err());
        assert!(pos.may_subscribe("nothing/here").is_err());

        let hq = who(Role::Hq, None);
        assert!(hq.may_subscribe("#").is_ok());
        assert!(hq.may_subscribe("stores/+/stock/+/level").is_ok());
        let manager = who(Role::Manager, Some("s1"));
        assert!(manager.may_subscribe("stores/s1/#").is_ok());
        assert!(manager.may_subscribe("stores/#").is_err());
    }

    #[test]
    fn publishing_is_scoped_to_the_store_and_the_own_device() {
        let scale = who(Role::Scale, Some("s1"));
        assert!(scale.may_publish(&id("stores/s1/stock/beef/events")).is_ok());
        assert!(scale.may_publish(&id("stores/s2/stock/beef/events")).is_err());
        assert!(scale.may_publish(&id("stores/s1/sales")).is_err());
        assert!(scale.may_publish(&id("stores/s1/devices/dev-1/status")).is_ok());
        assert!(scale.may_publish(&id("stores/s1/devices/dev-2/status")).is_err());
        // A bound scale keeps its SKU's level from its own readings only.
        assert!(scale.may_publish(&id("stores/s1/scales/dev-1/weight")).is_ok());
        assert!(scale.may_publish(&id("stores/s1/scales/dev-2/weight")).is_err());
        assert!(scale.may_publish(&id("stores/s2/scales/dev-1/weight")).is_err());
        for role in Role::CONFIGURABLE {
            let anyone = who(role, None);
            for output in [
                "stores/s1/availability",
                "stores/s1/stock/x/level",
                "stores/s1/acks/dev-1",
            ] {
                assert!(anyone.may_publish(&id(output)).is_err(), "{role} {output}");
            }
        }
    }

    #[test]
    fn intersection_edge_cases() {
        let p: &[&str] = &["stores", "{store}", "sales"];
        assert!(intersect(&["stores", "s1", "sales"], p).is_some());
        assert!(intersect(&["stores", "+", "sales"], p).is_some_and(|b| b.store.is_none()));
        assert!(intersect(&["stores", "s1", "sales", "#"], p).is_some());
        assert!(intersect(&["stores", "s1", "sales", "x"], p).is_none());
        assert!(intersect(&["stores", "s1"], p).is_none());
        assert!(intersect(&["stores", "#"], p).is_some());
        assert!(intersect(&["+", "+", "+"], p).is_some());
        assert!(intersect(&["stores", "s1", "alerts"], p).is_none());
    }
}

/// The permission matrix as the Markdown table in `topics.md`.
pub fn matrix_markdown() -> String {
    let cell = |(publish, subscribe): (Grant, Grant)| -> String {
        let part = |g: Grant, verb: &str| match g {
            Yes => Some(verb.to_string()),
            Own => Some(format!("{verb} own")),
            No => None,
        };
        let parts: Vec<String> = [part(publish, "pub"), part(subscribe, "sub")]
            .into_iter()
            .flatten()
            .collect();
        if parts.is_empty() {
            "–".into()
        } else {
            parts.join(", ")
        }
    };
    let mut out = String::from("| role |");
    for f in Family::ALL {
        out.push_str(&format!(" {} |", f.as_str()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(Family::ALL.len()));
    out.push('\n');
    for (role, row) in MATRIX {
        out.push_str(&format!("| {role} |"));
        for grants in row {
            out.push_str(&format!(" {} |", cell(grants)));
        }
        out.push('\n');
    }
    out.push_str(
        "\nA cell grants its topics in the identity's scope. A store-bound identity's scope is \
         `stores/{its store}/…` and `hq/stores/{its store}/…`; the HQ topics that name no store \
         (`hq/alerts`, `$SYS/dishsync/metrics`, `hq/replenishment/…`, `hq/promotions/…`, `hq/acks/…`, \
         `hq/errors/…`) are in the scope of \
         chain-wide identities \
         only (HQ roles, and an `operator` without a store), whatever their role's cell says. A store \
         reads its requests as `stores/{store}/replenishment/{id}` and its errors on its own errors topic.\n",
    );
    out
}

#[cfg(test)]
mod contract {
    /// topics.md documents exactly the matrix the broker enforces.
    #[test]
    fn topics_md_shows_the_enforced_matrix() {
        let doc = include_str!("../../topics.md");
        let table = super::matrix_markdown();
        assert!(
            doc.contains(&table),
            "topics.md must contain the permission matrix:\n{table}"
        );
    }
}
