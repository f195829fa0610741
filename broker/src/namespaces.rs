//! Open namespaces: topics outside the dishsync contract that the broker
//! carries as plain MQTT, so that a store's broker can also serve its
//! temperature probes, signage and the chain's own tools.
//!
//! A namespace is a first topic level (`probes`, `signage`) with the roles
//! that may publish into it and subscribe to it; with `per_store`, its
//! topics are `{prefix}/{store}/…` and a store-bound identity reaches only
//! its own store's. Inside a namespace the broker applies nothing and
//! decides nothing but the permission: retain, wildcards, QoS 0/1/2, wills,
//! MQTT 5 properties and shared subscriptions behave as the engine does.
//! The contract's own topics (`stores/…`, `hq/…`) keep every rule they
//! have: no namespace may take their place. A real chain's configuration
//! has none unless it names them.
//!
//! Pure policy, like `acl`: no I/O; the hooks consult it.

use std::collections::BTreeSet;

use crate::acl::{Denied, Identity, Role, Scope};

/// The first topic levels the contract owns; no namespace may use them.
pub const CONTRACT_ROOTS: [&str; 2] = ["stores", "hq"];

/// One namespace outside the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Its first topic level.
    pub prefix: String,
    /// Topics are `{prefix}/{store}/…`, each store's its own.
    pub per_store: bool,
    /// Roles that may publish into it.
    pub publish: BTreeSet<Role>,
    /// Roles that may subscribe to it.
    pub subscribe: BTreeSet<Role>,
}

/// Why a prefix cannot be a namespace. The empty prefix is the empty first
/// level: topics that begin with `/` (`/TopicA`), as older devices use.
pub fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.contains(['/', '+', '#']) || prefix.starts_with('$') {
        return Some(format!(
            "{prefix:?} is not one topic level (no '/', '+', '#', no leading '$')"
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Some(format!("{prefix:?} has control characters"));
    }
    CONTRACT_ROOTS
        .contains(&prefix)
        .then(|| format!("{prefix:?} belongs to the dishsync contract"))
}

/// Whether a topic name is one MQTT allows in a PUBLISH: no wildcards, no
/// NUL, no control characters ([MQTT-3.3.2-2], [MQTT-1.5.4-1]).
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#']) && !topic.chars().any(char::is_control)
}

/// What a namespace says of a publish or a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a namespace topic: the contract's rules apply.
    NotOurs,
    /// Allowed, as plain MQTT.
    Allowed,
    /// Refused.
    Denied(Denied),
}

/// Every open namespace of the broker.
#[derive(Debug, Clone, Default)]
pub struct Namespaces(Vec<Namespace>);

impl Namespaces {
    /// The namespaces of a configuration (validated there).
    pub fn new(namespaces: Vec<Namespace>) -> Namespaces {
        Namespaces(namespaces)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn named(&self, first: &str) -> Option<&Namespace> {
        self.0.iter().find(|n| n.prefix == first)
    }

    /// Whether `topic` (or a filter) lies wholly in a namespace: its first
    /// level is a namespace's.
    pub fn owns(&self, topic: &str) -> bool {
        self.named(topic.split('/').next().unwrap_or_default()).is_some()
    }

    /// May `who` publish on `topic`?
    pub fn may_publish(&self, who: &Identity, topic: &str) -> Verdict {
        let mut levels = topic.split('/');
        let Some(ns) = levels.next().and_then(|first| self.named(first)) else {
            return Verdict::NotOurs;
        };
        let deny = |why: String| Verdict::Denied(Denied(why));
        if !valid_topic_name(topic) {
            return deny(format!(
                "{topic:?} is not a topic name (wildcards or control characters)"
            ));
        }
        if !(who.role == Role::Demo || ns.publish.contains(&who.role)) {
            return deny(format!(
                "{} ({}) may not publish in {}",
                who.device, who.role, ns.prefix
            ));
        }
        if ns.per_store {
            let store = levels.next();
            if let Scope::Store(own) = &who.scope {
                if store != Some(own.as_str()) {
                    return deny(format!(
                        "{} may publish in {} only under {}/{own}/",
                        who.device, ns.prefix, ns.prefix
                    ));
                }
            }
        }
        Verdict::Allowed
    }

    /// May `who` subscribe to `filter`, as far as the namespaces go? A
    /// filter whose first level is a namespace's is wholly the namespace's
    /// to decide; one whose first level is a wildcard must be allowed by
    /// every namespace it reaches (and by the contract, which the caller
    /// checks).
    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> (Verdict, bool) {
        let levels: Vec<&str> = filter.split('/').collect();
        let first = levels.first().copied().unwrap_or_default();
        if let Some(ns) = self.named(first) {
            return (self.check_subscribe(ns, who, &levels, filter), true);
        }
        if first != "+" && first != "#" {
            return (Verdict::NotOurs, false);
        }
        let mut reached = false;
        for ns in &self.0 {
            reached = true;
            if let Verdict::Denied(d) = self.check_subscribe(ns, who, &levels, filter) {
                return (Verdict::Denied(d), true);
            }
        }
        (if reached { Verdict::Allowed } else { Verdict::NotOurs }, reached)
    }

    fn check_subscribe(&self, ns: &Namespace, who: &Identity, levels: &[&str], filter: &str) -> Verdict {
        if !(who.role == Role::Demo || ns.subscribe.contains(&who.role)) {
            return Verdict::Denied(Denied(format!(
                "{} ({}) may not subscribe in {} ({filter})",
                who.device, who.role, ns.prefix
            )));
        }
        if ns.per_store {
            if let Scope::Store(own) = &who.scope {
                let store = levels.get(1).copied();
                if store != Some(own.as_str()) {
                    return Verdict::Denied(Denied(format!(
                        "{} may subscribe in {} only under {}/{own}/, not {filter}",
                        who.device, ns.prefix, ns.prefix
                    )));
                }
            }
        }
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, store: Option<&str>) -> Identity {
        Identity {
            device: "dev-1".parse().expect("id"),
            role,
            scope: store.map_or(Scope::Chain, |s| Scope::Store(s.parse().expect("id"))),
        }
    }

    fn namespaces() -> Namespaces {
        Namespaces::new(vec![
            Namespace {
                prefix: "probes".into(),
                per_store: true,
                publish: [Role::Scale].into_iter().collect(),
                subscribe: [Role::Kds, Role::Manager, Role::Hq].into_iter().collect(),
            },
            Namespace {
                prefix: "signage".into(),
                per_store: false,
                publish: [Role::Hq].into_iter().collect(),
                subscribe: [Role::Pos, Role::Hq].into_iter().collect(),
            },
        ])
    }

    #[test]
    fn publishing_follows_the_roles_and_the_store() {
        let ns = namespaces();
        let scale = who(Role::Scale, Some("s1"));
        assert_eq!(ns.may_publish(&scale, "probes/s1/fridge-2/temp"), Verdict::Allowed);
        assert!(matches!(
            ns.may_publish(&scale, "probes/s2/fridge-2/temp"),
            Verdict::Denied(_)
        ));
        assert!(matches!(ns.may_publish(&scale, "signage/menu"), Verdict::Denied(_)));
        assert!(matches!(ns.may_publish(&scale, "probes/s1/+/temp"), Verdict::Denied(_)));
        assert!(matches!(ns.may_publish(&scale, "probes/s1/\u{7}"), Verdict::Denied(_)));
        assert_eq!(ns.may_publish(&scale, "stores/s1/sales"), Verdict::NotOurs);
        assert_eq!(ns.may_publish(&who(Role::Hq, None), "signage/menu"), Verdict::Allowed);
    }

    #[test]
    fn a_filter_is_judged_by_every_namespace_it_reaches() {
        let ns = namespaces();
        let kds = who(Role::Kds, Some("s1"));
        assert_eq!(ns.may_subscribe(&kds, "probes/s1/#").0, Verdict::Allowed);
        assert!(matches!(ns.may_subscribe(&kds, "probes/+/#").0, Verdict::Denied(_)));
        assert!(matches!(ns.may_subscribe(&kds, "signage/#").0, Verdict::Denied(_)));
        // `#` reaches signage too, which a KDS may not read.
        assert!(matches!(ns.may_subscribe(&kds, "#").0, Verdict::Denied(_)));
        assert_eq!(ns.may_subscribe(&kds, "stores/s1/alerts"), (Verdict::NotOurs, false));
        let hq = who(Role::Hq, None);
        assert_eq!(ns.may_subscribe(&hq, "#"), (Verdict::Allowed, true));
        assert_eq!(ns.may_subscribe(&hq, "probes/+/fridge-2/temp").0, Verdict::Allowed);
    }

    #[test]
    fn the_contract_keeps_its_roots() {
        assert!(prefix_problem("stores").is_some());
        assert!(prefix_problem("hq").is_some());
        assert!(prefix_problem("a/b").is_some());
        assert!(prefix_problem("$SYS").is_some());
        assert!(prefix_problem("probes").is_none());
    }

    #[test]
    fn the_empty_prefix_is_the_topics_that_begin_with_a_slash() {
        assert!(prefix_problem("").is_none());
        let ns = Namespaces::new(vec![Namespace {
            prefix: String::new(),
            per_store: false,
            publish: [Role::Hq].into_iter().collect(),
            subscribe: [Role::Hq].into_iter().collect(),
        }]);
        let hq = who(Role::Hq, None);
        assert!(ns.owns("/TopicA"));
        assert!(!ns.owns("TopicA"));
        assert_eq!(ns.may_publish(&hq, "/TopicA"), Verdict::Allowed);
        assert_eq!(ns.may_publish(&hq, "TopicA/B"), Verdict::NotOurs);
        assert_eq!(ns.may_subscribe(&hq, "/#").0, Verdict::Allowed);
        assert!(matches!(
            ns.may_subscribe(&who(Role::Kds, Some("s1")), "/+").0,
            Verdict::Denied(_)
        ));
    }
}
