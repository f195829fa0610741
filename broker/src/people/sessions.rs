//! Who is logged in: a session per login, found by the random token in
//! its cookie, with the CSRF token every state-changing request of the
//! session must carry, ending at logout or `ttl` after the login. Kept in
//! the data directory (`store.rs`, `ws/`) and in memory, so a restart of
//! the broker — at the dinner rush too — logs nobody out. Only each
//! token's SHA-256 is kept, never a usable cookie.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dishsync_protocol::{DeviceId, Millis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::store::Store;

/// A random token: 32 bytes, hex.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether two tokens are the same, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// One login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who.
    pub user: DeviceId,
    /// What a state-changing request must carry.
    pub csrf: String,
    /// When it ends (Unix millis).
    pub expires: Millis,
}

/// Every session.
pub struct Sessions {
    by_token: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
    /// Where sessions outlive the process, if anywhere.
    store: Option<Store>,
}

impl Sessions {
    /// Sessions lasting `ttl` from login, kept in `store` if given.
    pub fn new(ttl: Duration, store: Option<Store>) -> Sessions {
        Sessions {
            by_token: Mutex::new(HashMap::new()),
            ttl,
            store,
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> Millis {
        Millis::try_from(self.ttl.as_millis()).unwrap_or(Millis::MAX)
    }

    /// Starts a session for `user` at `now`: its cookie token and its
    /// session. `None` without randomness, or when it cannot be kept.
    pub fn start(&self, user: DeviceId, now: Millis) -> Option<(String, Session)> {
        let (token, csrf) = (random_token()?, random_token()?);
        let session = Session {
            user,
            csrf,
            expires: now.saturating_add(self.ttl_ms()),
        };
        if let Some(store) = &self.store {
            let bytes = postcard::to_allocvec(&session).ok()?;
            if let Err(e) = store.put_session(&key(&token), &bytes) {
                warn!(error = %e, "a web session could not be kept");
                return None;
            }
        }
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        map.insert(key(&token), session.clone());
        crate::metrics::METRICS.web_sessions(map.len());
        Some((token, session))
    }

    /// The session of `token` at `now`, if it has not ended.
    pub fn find(&self, token: &str, now: Millis) -> Option<Session> {
        let k = key(token);
        let held = self.by_token.lock().unwrap_or_else(|e| e.into_inner()).get(&k).cloned();
        let session = match held {
            Some(s) => s,
            // Started before the last restart, perhaps.
            None => {
                let bytes = self.store.as_ref()?.session(&k).ok()??;
                let s: Session = postcard::from_bytes(&bytes).ok()?;
                self.by_token
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(k, s.clone());
                s
            }
        };
        (session.expires > now).then_some(session)
    }

    /// Ends the session of `token`.
    pub fn end(&self, token: &str) {
        let k = key(token);
        {
            let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(&k);
            crate::metrics::METRICS.web_sessions(map.len());
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.end_session(&k) {
                warn!(error = %e, "a web session could not be ended on disk");
            }
        }
    }

    /// Sessions open at `now` that this process has seen.
    pub fn open(&self, now: Millis) -> usize {
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|s| s.expires > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_token_until_it_ends_or_expires_and_outlives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        let sessions = Sessions::new(Duration::from_secs(60), Some(store.clone()));
        let t0 = 1_000_000;
        let anna: DeviceId = "anna".parse().expect("id");
        let (token, session) = sessions.start(anna.clone(), t0).expect("randomness");
        assert_eq!(token.len(), 64);
        assert_ne!(token, session.csrf);
        assert_eq!(sessions.find(&token, t0).map(|s| s.user), Some(anna.clone()));
        assert!(
            sessions.find(&session.csrf, t0).is_none(),
            "the CSRF token is no cookie"
        );
        assert!(sessions.find(&token, t0 + 61_000).is_none(), "expired");
        let (other, _) = sessions.start(anna, t0).expect("randomness");
        sessions.end(&other);
        assert!(sessions.find(&other, t0).is_none(), "logged out");
        assert_eq!(sessions.open(t0), 1);
        // Another process on the same data: the same session, not the ended one.
        let again = Sessions::new(Duration::from_secs(60), Some(store));
        assert_eq!(again.find(&token, t0), Some(session));
        assert!(again.find(&other, t0).is_none());
        assert!(same_token(&token, &token.clone()));
        assert!(!same_token(&token, &other));
    }
}
