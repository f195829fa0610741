//! People who log in to the web app (`[[users]]`): a name, a role, their
//! store or stores and an argon2 password hash. Each role acts as the
//! device role of its job, so the permission matrix that holds for devices
//! holds for people: a store manager as a `manager`, a chef as a kitchen
//! display (`kds`), floor staff as a `pos`, head office as `hq`. A person's
//! name is the `device` of their inputs and the `by` of their actions.

use dishsync_protocol::{DeviceId, StoreId};

use crate::acl::{Identity, Role};
use crate::api::integrations::Stores;

/// What a person does in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonRole {
    /// Head office: every store.
    Hq,
    /// A store's manager.
    StoreManager,
    /// The kitchen.
    Chef,
    /// The floor: waiters, the counter.
    Staff,
}

impl PersonRole {
    /// Every role, as the configuration spells it.
    pub const ALL: [(&'static str, PersonRole); 4] = [
        ("hq", PersonRole::Hq),
        ("store_manager", PersonRole::StoreManager),
        ("chef", PersonRole::Chef),
        ("staff", PersonRole::Staff),
    ];

    /// The role a configuration names.
    pub fn parse(name: &str) -> Option<PersonRole> {
        PersonRole::ALL.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        PersonRole::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("staff", |(n, _)| n)
    }

    /// The device role it acts as.
    pub fn device_role(self) -> Role {
        match self {
            PersonRole::Hq => Role::Hq,
            PersonRole::StoreManager => Role::Manager,
            PersonRole::Chef => Role::Kds,
            PersonRole::Staff => Role::Pos,
        }
    }

    /// Whether it belongs to HQ rather than to stores.
    pub fn is_chain_wide(self) -> bool {
        self == PersonRole::Hq
    }
}

/// A configured person.
#[derive(Debug, Clone)]
pub struct User {
    /// Their name: the `device` of their inputs, the `by` of their actions.
    pub name: DeviceId,
    /// What they do.
    pub role: PersonRole,
    /// Where.
    pub stores: Stores,
    /// Argon2 PHC string.
    pub password_hash: String,
}

impl User {
    /// The identity they act as in `store` (`None`: an HQ page); `None`
    /// when they may not act there at all.
    pub fn identity(&self, store: Option<&StoreId>) -> Option<Identity> {
        self.stores.identity(&self.name, self.role.device_role(), store)
    }

    /// The stores they see, in order (every store of `all` for HQ).
    pub fn stores_of<'a>(&'a self, all: impl Iterator<Item = &'a StoreId>) -> Vec<StoreId> {
        all.filter(|s| self.stores.holds(s)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: PersonRole, stores: Stores) -> User {
        User {
            name: "anna".parse().expect("id"),
            role,
            stores,
            password_hash: String::new(),
        }
    }

    #[test]
    fn a_person_acts_as_the_device_of_their_job_in_their_stores_only() {
        let s1: StoreId = "s1".parse().expect("id");
        let s2: StoreId = "s2".parse().expect("id");
        let chef = user(PersonRole::Chef, Stores::Some([s1.clone()].into()));
        let identity = chef.identity(Some(&s1)).expect("in s1");
        assert_eq!((identity.role, identity.device.as_str()), (Role::Kds, "anna"));
        assert!(identity
            .may_publish(&"stores/s1/dishes/burger/override".parse().expect("topic"))
            .is_ok());
        assert!(chef.identity(Some(&s2)).is_none(), "not in s2");
        let hq = user(PersonRole::Hq, Stores::Chain);
        assert!(hq.identity(Some(&s2)).is_some());
        assert_eq!(PersonRole::parse("store_manager"), Some(PersonRole::StoreManager));
        assert_eq!(PersonRole::StoreManager.as_str(), "store_manager");
        assert!(PersonRole::parse("manager").is_none());
    }
}
