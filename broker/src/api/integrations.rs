//! Integrations: the systems a chain already runs (POS, purchasing,
//! delivery platforms) that call the HTTP API with a bearer token.
//!
//! An integration is configured like a device (`[[integrations]]`: id, a
//! device role, its store or stores) with the SHA-256 of its token, never
//! the token itself. A token is 32 random bytes, so a fast hash is enough
//! (nothing to guess from it); `dishsync-broker mint-token` makes one.
//! Each request acts as the [`Identity`] of that role in the store its path
//! names, so the permission matrix that scopes devices scopes integrations
//! exactly alike. Never logged: tokens and their hashes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use dishsync_protocol::{DeviceId, StoreId};
use sha2::{Digest, Sha256};

use crate::acl::{Identity, Role, Scope};

/// Where an integration may act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stores {
    /// Every store and the HQ topics (an `hq`, `central_kitchen` or
    /// `operator` role).
    Chain,
    /// These stores only.
    Some(BTreeSet<StoreId>),
}

/// A configured integration.
#[derive(Debug, Clone)]
pub struct Integration {
    /// Its id: the `device` its inputs name, and the `by` of its actions.
    pub id: DeviceId,
    /// The device role it acts as.
    pub role: Role,
    /// Where.
    pub stores: Stores,
    /// SHA-256 of its token.
    pub token_sha256: [u8; 32],
    /// Requests per second it may make (bursts up to twice that); `None`:
    /// the broker's `max_publish_rate`.
    pub rate: Option<u32>,
}

impl Integration {
    /// The identity it acts as in `store` (`None`: a path without a store,
    /// an HQ topic). `None` when it may not act there at all.
    pub fn identity(&self, store: Option<&StoreId>) -> Option<Identity> {
        self.stores.identity(&self.id, self.role, store)
    }
}

impl Stores {
    /// The identity `who`, of `role` in these stores, acts as in `store`
    /// (`None`: a path without a store, an HQ topic). `None` when it may
    /// not act there at all.
    pub fn identity(&self, who: &DeviceId, role: Role, store: Option<&StoreId>) -> Option<Identity> {
        let scope = match (self, store) {
            (Stores::Chain, _) => Scope::Chain,
            (Stores::Some(own), Some(store)) if own.contains(store) => Scope::Store(store.clone()),
            (Stores::Some(_), Some(_)) => return None,
            // A store-bound role on an HQ path: the matrix refuses it, in
            // its own words.
            (Stores::Some(own), None) => Scope::Store(own.first()?.clone()),
        };
        Some(Identity {
            device: who.clone(),
            role,
            scope,
        })
    }

    /// Whether `store` is one of them.
    pub fn holds(&self, store: &StoreId) -> bool {
        match self {
            Stores::Chain => true,
            Stores::Some(own) => own.contains(store),
        }
    }
}

/// Every integration, found by its token.
#[derive(Debug, Clone, Default)]
pub struct Integrations {
    by_token: Arc<HashMap<[u8; 32], Integration>>,
}

impl Integrations {
    /// The registry of `integrations`.
    pub fn new(integrations: &[Integration]) -> Integrations {
        let by_token = integrations.iter().map(|i| (i.token_sha256, i.clone())).collect();
        Integrations {
            by_token: Arc::new(by_token),
        }
    }

    /// The integration whose token is `token`.
    pub fn find(&self, token: &str) -> Option<&Integration> {
        self.by_token.get(&token_sha256(token))
    }
}

/// The prefix of every token, so that a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "dst_";

/// SHA-256 of `token`.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The 32 bytes `s` spells in hex, if it does.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let digits = s.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// A new token and the hash to configure for it.
pub fn mint_token() -> anyhow::Result<(String, String)> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
    let hash = hex(&token_sha256(&token));
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("valid id")
    }

    #[test]
    fn a_minted_token_is_found_by_its_hash_and_no_other_is() {
        let (token, hash) = mint_token().expect("token");
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 64);
        let (other, _) = mint_token().expect("token");
        assert_ne!(token, other);
        let pos = Integration {
            id: id("pos-cloud"),
            role: Role::Pos,
            stores: Stores::Some([id("s1")].into()),
            token_sha256: parse_sha256(&hash).expect("hex"),
            rate: None,
        };
        let all = Integrations::new(&[pos]);
        assert_eq!(all.find(&token).map(|i| i.id.as_str()), Some("pos-cloud"));
        assert!(all.find(&other).is_none());
        assert!(all.find("").is_none());
        assert_eq!(parse_sha256("00"), None);
        assert_eq!(parse_sha256(&"zz".repeat(32)), None);
    }

    #[test]
    fn an_integration_acts_only_in_its_stores() {
        let pos = Integration {
            id: id("pos-cloud"),
            role: Role::Pos,
            stores: Stores::Some([id("s1"), id("s2")].into()),
            token_sha256: [0; 32],
            rate: None,
        };
        let s1 = pos.identity(Some(&id("s1"))).expect("its store");
        assert_eq!(s1.scope, Scope::Store(id("s1")));
        assert_eq!(s1.device.as_str(), "pos-cloud");
        assert!(pos.identity(Some(&id("s3"))).is_none());
        let hq = Integration {
            stores: Stores::Chain,
            role: Role::Hq,
            ..pos
        };
        assert_eq!(hq.identity(Some(&id("s3"))).expect("chain").scope, Scope::Chain);
    }
}
