//! Who is logged in: a session per login, found by the random token in
//! its cookie, with the CSRF token every state-changing request of the
//! session must carry, ending at logout or `ttl` after the login. Kept in
//! memory: a restart asks everyone to log in again. Only each token's
//! SHA-256 is kept, so the map never holds a usable cookie.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dishsync_protocol::DeviceId;
use sha2::{Digest, Sha256};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who.
    pub user: DeviceId,
    /// What a state-changing request must carry.
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
}

/// Every session.
#[derive(Debug)]
pub struct Sessions {
    by_token: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
}

impl Sessions {
    /// Sessions lasting `ttl` from login.
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            by_token: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for `user` at `now`: its cookie token and its
    /// session. `None` without randomness.
    pub fn start(&self, user: DeviceId, now: Instant) -> Option<(String, Session)> {
        let (token, csrf) = (random_token()?, random_token()?);
        let session = Session {
            user,
            csrf,
            expires: now + self.ttl,
        };
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        map.insert(key(&token), session.clone());
        Some((token, session))
    }

    /// The session of `token` at `now`, if it has not ended.
    pub fn find(&self, token: &str, now: Instant) -> Option<Session> {
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key(token)).filter(|s| s.expires > now).cloned()
    }

    /// Ends the session of `token`.
    pub fn end(&self, token: &str) {
        self.by_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(token));
    }

    /// Sessions open at `now`.
    pub fn open(&self, now: Instant) -> usize {
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|s| s.expires > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_token_until_it_ends_or_expires() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let anna: DeviceId = "anna".parse().expect("id");
        let (token, session) = sessions.start(anna.clone(), t0).expect("randomness");
        assert_eq!(token.len(), 64);
        assert_ne!(token, session.csrf);
        assert_eq!(sessions.find(&token, t0).map(|s| s.user), Some(anna.clone()));
        assert!(
            sessions.find(&session.csrf, t0).is_none(),
            "the CSRF token is no cookie"
        );
        assert!(sessions.find(&token, t0 + Duration::from_secs(61)).is_none(), "expired");
        let (other, _) = sessions.start(anna, t0).expect("randomness");
        sessions.end(&other);
        assert!(sessions.find(&other, t0).is_none(), "logged out");
        assert_eq!(sessions.open(t0), 1);
        assert!(same_token(&token, &token.clone()));
        assert!(!same_token(&token, &other));
    }
}
