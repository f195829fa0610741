//! Login: per-device credentials (argon2 hashes), the identity each session
//! acts as, and the brake on password guessing.
//!
//! [`Authenticator`] answers rmqtt's `ClientAuthenticate` hook, which runs
//! before the CONNACK. On success it records the session's [`Identity`] in
//! [`Identities`] *before* returning, so the publish hook finds it for the
//! very first PUBLISH, even one sent back-to-back with the CONNECT (the trap
//! of rmqtt-acl, whose rules are built in a background task). The MQTT
//! username and client id must both be the device id. A login's will is
//! checked as the publish it will be (the engine publishes wills past the
//! publish hook): one its device could not publish refuses the login as
//! not authorized.
//!
//! Never logged: passwords and hashes. Failed logins are logged with the
//! device id and address only, and more than a configured number of failures
//! per minute from one address are refused without checking.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use dishsync_protocol::DeviceId;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{AuthResult, LastWill};
use tracing::{info, warn};

use crate::acl::Identity;
use crate::current::Current;
use crate::hooks::{admit, Admitted};
use crate::namespaces::Namespaces;

/// A configured device: who it is and its password hash (PHC string).
#[derive(Debug, Clone)]
pub struct Credential {
    /// Who the device acts as.
    pub identity: Identity,
    /// Argon2 hash in PHC format (`$argon2id$…`).
    pub password_hash: String,
}

/// Hashes a password for the configuration file (argon2id, random salt).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness for the salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(hash.to_string())
}

/// Whether `hash` is a well-formed PHC hash string.
pub fn is_valid_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok()
}

/// Whether `password` matches the PHC `hash` (slow by design: run it off
/// the async threads).
pub fn verify(password: &[u8], hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The identity of every authenticated session, by client id.
///
/// A lock, not an actor: it is read on every PUBLISH and SUBSCRIBE from many
/// connection tasks and written once per login; entries are small and the
/// critical sections never await.
#[derive(Default, Clone)]
pub struct Identities {
    by_client: Arc<Mutex<HashMap<String, Identity>>>,
}

impl Identities {
    /// Records the identity a client id logged in as.
    pub fn insert(&self, client_id: &str, identity: Identity) {
        if let Ok(mut map) = self.by_client.lock() {
            map.insert(client_id.to_string(), identity);
        }
    }

    /// The identity of a session with `client_id` that logged in as
    /// `username` (both must be the device id).
    pub fn get(&self, client_id: &str, username: &str) -> Option<Identity> {
        let map = self.by_client.lock().ok()?;
        map.get(client_id).filter(|i| i.device.as_str() == username).cloned()
    }
}

/// Limits failed logins per client address: past `per_minute` failures
/// within a minute, logins from the address are refused unchecked. Devices
/// over MQTT and people at the web app's login page meet the same rule.
pub struct FailureBrake {
    per_minute: u32,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureBrake {
    /// A brake at `per_minute` failures a minute per address.
    pub fn new(per_minute: u32) -> FailureBrake {
        FailureBrake {
            per_minute: per_minute.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether logins from `ip` are refused now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let Ok(map) = self.failures.lock() else { return true };
        map.get(&ip)
            .is_some_and(|(since, n)| since.elapsed() < Duration::from_secs(60) && *n >= self.per_minute)
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            let entry = map.entry(ip).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= Duration::from_secs(60) {
                *entry = (Instant::now(), 0);
            }
            entry.1 += 1;
            // Forget addresses that have been quiet for a minute.
            map.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
        }
    }
}

/// The devices of `credentials`, by id.
pub fn by_device(credentials: Vec<Credential>) -> HashMap<DeviceId, Credential> {
    credentials
        .into_iter()
        .map(|c| (c.identity.device.clone(), c))
        .collect()
}

/// Answers `ClientAuthenticate`.
pub struct Authenticator {
    /// The devices allowed to log in, as the configuration says now.
    credentials: Current<HashMap<DeviceId, Credential>>,
    /// Clients without a username log in as demo devices.
    allow_anonymous: bool,
    identities: Identities,
    /// A will is checked against these as the publish it will be.
    namespaces: Arc<Namespaces>,
    brake: FailureBrake,
}

impl Authenticator {
    /// Why `identity` may not have `will` (topic, payload), if it may not.
    fn will_refused(&self, identity: &Identity, will: Option<(&str, &[u8])>) -> Option<String> {
        let (topic, payload) = will?;
        match admit(&self.namespaces, identity, topic, payload) {
            Ok(Admitted::Presence) => None,
            Ok(Admitted::Input(_)) => Some("an input for the rules cannot be a will".to_string()),
            Err(refusal) => Some(refusal.rejection.message),
        }
    }

    /// Checks logins against `credentials`, recording identities in
    /// `identities`; a login's will must be a publish its device may make
    /// as it is (presence, or a namespace topic `namespaces` allow it).
    pub fn new(
        credentials: Vec<Credential>,
        identities: Identities,
        namespaces: Arc<Namespaces>,
        allow_anonymous: bool,
        failures_per_minute: u32,
    ) -> Authenticator {
        Authenticator {
            credentials: Current::new(by_device(credentials)),
            allow_anonymous,
            identities,
            namespaces,
            brake: FailureBrake::new(failures_per_minute),
        }
    }

    /// The devices a reload allows from now on: each new login is checked
    /// against them (a session already open keeps the identity it logged
    /// in with until it reconnects).
    pub fn devices(&self) -> Current<HashMap<DeviceId, Credential>> {
        self.credentials.clone()
    }

    async fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        will: Option<(&str, &[u8])>,
        ip: Option<IpAddr>,
    ) -> AuthResult {
        let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if self.brake.blocked(ip) {
            warn!(%ip, client_id, "login refused: too many failed logins from this address");
            return AuthResult::NotAuthorized;
        }
        if username.is_none() && self.allow_anonymous {
            // Anonymous: a demo device, whose will is checked all the same.
            return match self.will_refused(&crate::hooks::anonymous(client_id), will) {
                Some(why) => {
                    warn!(%ip, client_id, will_topic = will.map(|w| w.0), reason = %why, "login refused: the will may not be published");
                    AuthResult::NotAuthorized
                }
                None => AuthResult::Allow(false, None),
            };
        }
        let (Some(username), Some(password)) = (username, password) else {
            warn!(%ip, client_id, "login refused: no credentials");
            self.brake.failed(ip);
            return AuthResult::NotAuthorized;
        };
        let credential = DeviceId::new(username)
            .ok()
            .and_then(|d| self.credentials.get().get(&d).cloned());
        let Some(credential) = credential else {
            warn!(%ip, username, "login refused: unknown device");
            self.brake.failed(ip);
            return AuthResult::BadUsernameOrPassword;
        };
        let hash = credential.password_hash.clone();
        let password = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || verify(&password, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            warn!(%ip, username, "login refused: wrong password");
            self.brake.failed(ip);
            return AuthResult::BadUsernameOrPassword;
        }
        if client_id != username {
            warn!(%ip, username, client_id, "login refused: the client id must be the device id");
            self.brake.failed(ip);
            return AuthResult::NotAuthorized;
        }
        // A will is published later as the device's own message, past
        // every check a PUBLISH meets: it is checked now, as that publish.
        // Only what is routed as it is may be a will (presence, a reading,
        // a namespace message); an input for the rules never is.
        if let Some(why) = self.will_refused(&credential.identity, will) {
            warn!(%ip, username, will_topic = will.map(|w| w.0), reason = %why, "login refused: the will may not be published");
            return AuthResult::NotAuthorized;
        }
        self.identities.insert(client_id, credential.identity.clone());
        info!(device = username, role = %credential.identity.role, %ip, "logged in");
        AuthResult::Allow(false, None)
    }
}

#[async_trait]
impl Handler for Authenticator {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let client_id = info.client_id().to_string();
                let username = info.username().map(|u| u.to_string());
                let password = info.password().map(|p| p.to_vec());
                let ip = info.ipaddress().map(|a| a.ip());
                let will = info.last_will().map(|will| match will {
                    LastWill::V3(w) => (w.topic.to_string(), w.message.to_vec()),
                    LastWill::V5(w) => (w.topic.to_string(), w.message.to_vec()),
                });
                let will = will
                    .as_ref()
                    .map(|(topic, payload)| (topic.as_str(), payload.as_slice()));
                let result = self
                    .check(&client_id, username.as_deref(), password.as_deref(), will, ip)
                    .await;
                (false, Some(HookResult::AuthResult(result)))
            }
            _ => (true, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("correct horse").expect("hash");
        let b = hash_password("correct horse").expect("hash");
        assert_ne!(a, b, "random salt");
        assert!(a.starts_with("$argon2id$"));
        assert!(is_valid_hash(&a));
        assert!(verify(b"correct horse", &a));
        assert!(!verify(b"battery staple", &a));
        assert!(!is_valid_hash("plain-text"));
    }
}
