//! The configuration re-read while the broker runs: on SIGHUP, or when an
//! operator asks (`POST /api/v1/admin/reload`).
//!
//! The file is read and validated whole first; an invalid file is refused
//! with every problem and its place, and the running configuration stays
//! as it was. A valid one is applied live where it can be, without
//! dropping a connection:
//! - the chain (SKUs, dishes, recipes, stores, menus, stock targets,
//!   planning, scales): the rules run on the new catalog
//!   ([`dishsync_inventory::Inventory::reconfigure`]) and publish every
//!   document it changed, as a restart would;
//! - `[[devices]]`: every login from now on is checked against them;
//! - `[[integrations]]`: every request from now on;
//! - `[[users]]`: every page and tap from now on (a person no longer there
//!   is logged out at their next request).
//!
//! Everything else (listener addresses, TLS, limits, the data directory,
//! namespaces, webhook endpoints) is read at start only: a change to it is
//! reported, by key, and waits for the next restart. Reloads run one at a
//! time.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use dishsync_protocol::DeviceId;
use serde::Serialize;
use tracing::{info, warn};

use crate::api::Directory;
use crate::auth::Credential;
use crate::config::{ConfigError, ConfigIssue, Settings};
use crate::current::Current;
use crate::rules::{Reconfigured, RulesHandle};

/// The command line's overrides of the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`, if given.
    pub listen: Option<SocketAddr>,
    /// `--web-listen`, if given.
    pub web: Option<SocketAddr>,
    /// `--data-dir`, if given.
    pub data_dir: Option<PathBuf>,
}

impl Overrides {
    /// Puts them into `settings`.
    pub fn apply(&self, settings: &mut Settings) {
        if let Some(listen) = self.listen {
            settings.listen = listen;
        }
        if let Some(web) = self.web {
            settings.web = Some(web);
        }
        if let Some(dir) = &self.data_dir {
            settings.data_dir = dir.clone();
        }
    }
}

/// Where the running configuration came from: its file and the command
/// line's overrides, applied again at every reload.
#[derive(Debug, Clone)]
pub struct Source {
    /// The configuration file.
    pub file: PathBuf,
    /// What the command line says instead.
    pub overrides: Overrides,
}

impl Source {
    /// Reads and validates the file, with the overrides applied.
    pub fn read(&self) -> Result<Settings, ConfigError> {
        let mut settings = Settings::load(&self.file)?;
        self.overrides.apply(&mut settings);
        settings.source = Some(self.clone());
        Ok(settings)
    }
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// The file read.
    pub file: String,
    /// Who asked: `signal` for SIGHUP, or the integration's id.
    pub by: String,
    /// The sections applied live.
    pub applied: Vec<&'static str>,
    /// What the chain's new catalog changed: documents published anew or
    /// cleared.
    pub documents: Reconfigured,
    /// Keys that changed and are read at start only: they apply at the
    /// next restart.
    pub at_next_restart: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// The broker runs the built-in demo chain: there is no file to read.
    #[error("the broker runs the built-in demo chain, from no file: there is nothing to re-read")]
    NoFile,
    /// The file is not a valid configuration; the running one is kept.
    #[error("{0}")]
    Invalid(ConfigError),
    /// The rules task is gone (the broker is stopping).
    #[error("the broker is stopping")]
    Stopping,
}

impl ReloadError {
    /// The problems found, with their places (empty unless `Invalid`).
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ReloadError::Invalid(e) => &e.issues,
            _ => &[],
        }
    }
}

/// Re-reads the configuration and applies it to the running parts.
pub struct Reloader {
    /// The configuration running now (one reload at a time holds it).
    running: tokio::sync::Mutex<Settings>,
    rules: RulesHandle,
    devices: Current<HashMap<DeviceId, Credential>>,
    directory: Current<Directory>,
    api: crate::api::Slot,
}

impl Reloader {
    /// Reloads of `running` into the rules, the logins' `devices`, the
    /// API's `directory` and the web app's people (in `api`, once filled).
    pub fn new(
        running: Settings,
        rules: RulesHandle,
        devices: Current<HashMap<DeviceId, Credential>>,
        directory: Current<Directory>,
        api: crate::api::Slot,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            running: tokio::sync::Mutex::new(running),
            rules,
            devices,
            directory,
            api,
        })
    }

    /// Re-reads the file and applies what it changed; `by` names who asked.
    pub async fn reload(&self, by: &str) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock().await;
        let Some(source) = running.source.clone() else {
            warn!(by, "reload asked: the built-in demo chain has no file to re-read");
            return Err(ReloadError::NoFile);
        };
        let next = match tokio::task::spawn_blocking(move || source.read()).await {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                for issue in &e.issues {
                    warn!(by, place = %issue.place, problem = %issue.problem, "reload refused: the running configuration is kept");
                }
                return Err(ReloadError::Invalid(e));
            }
            Err(_) => return Err(ReloadError::Stopping),
        };
        let documents = self
            .rules
            .reconfigure(next.catalog.clone())
            .await
            .ok_or(ReloadError::Stopping)?;
        let mut applied = vec!["catalog"];
        if differs(&running.credentials, &next.credentials) {
            self.devices.set(crate::auth::by_device(next.credentials.clone()));
            applied.push("devices");
        }
        self.directory.set(Directory::new(
            next.catalog.clone(),
            &next.integrations,
            next.max_publish_rate,
        ));
        if differs(&running.integrations, &next.integrations) {
            applied.push("integrations");
        }
        if differs(&running.web_app.users, &next.web_app.users) {
            if let Some(people) = self.api.get().and_then(|api| api.people()) {
                people.reload_users(&next.web_app);
            }
            applied.push("users");
        }
        let at_next_restart = start_only_changes(&running, &next);
        let file = next
            .source
            .as_ref()
            .map(|s| s.file.display().to_string())
            .unwrap_or_default();
        for key in &at_next_restart {
            warn!(by, key, "changed in the file; applies at the next restart");
        }
        info!(by, file, ?applied, ?documents, "configuration reloaded");
        // What runs now, except what waits for a restart.
        let mut kept = next;
        keep_start_only(&running, &mut kept);
        *running = kept;
        Ok(Reloaded {
            file,
            by: by.to_string(),
            applied,
            documents,
            at_next_restart,
        })
    }
}

/// Reloads on every SIGHUP from now on, for as long as the broker runs
/// (the signal is caught from the moment this returns, so a SIGHUP sent
/// once the broker says it listens never stops it).
pub fn reload_on_hangup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                warn!(error = %e, "cannot catch SIGHUP: reloads only through the API");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                // The outcome is logged, line by line, by the reload itself.
                let _ = reloader.reload("signal").await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Whether two values of a configuration part differ. The parts hold
/// plain data, in file order, and some (an endpoint's client, a device's
/// identity) have no equality of their own: their full rendering is
/// compared. Never logged: it holds hashes and secrets.
fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// The keys read at start only that differ between `running` and `next`.
fn start_only_changes(running: &Settings, next: &Settings) -> Vec<&'static str> {
    let checks: [(&'static str, bool); 17] = [
        ("broker.listen", differs(&running.listen, &next.listen)),
        ("broker.data_dir", differs(&running.data_dir, &next.data_dir)),
        (
            "broker.allow_anonymous",
            running.allow_anonymous != next.allow_anonymous,
        ),
        ("broker.max_inflight", running.max_inflight != next.max_inflight),
        ("broker.max_mqueue_len", running.max_mqueue_len != next.max_mqueue_len),
        (
            "broker.max_connections",
            running.max_connections != next.max_connections,
        ),
        (
            "broker.max_packet_size",
            running.max_packet_size != next.max_packet_size,
        ),
        (
            "broker.max_publish_rate",
            running.max_publish_rate != next.max_publish_rate,
        ),
        (
            "broker.login_failures_per_minute",
            running.login_failures_per_minute != next.login_failures_per_minute,
        ),
        (
            "broker.checkpoint_interval_ms",
            running.checkpoint_interval != next.checkpoint_interval,
        ),
        (
            "broker.validating_front",
            running.validating_front != next.validating_front,
        ),
        ("broker.tls", differs(&running.tls, &next.tls)),
        (
            "web",
            differs(&(running.web, running.web_tls), &(next.web, next.web_tls)),
        ),
        (
            "web.floor_public, web.session_hours",
            differs(
                &(running.web_app.floor_public, running.web_app.session_ttl),
                &(next.web_app.floor_public, next.web_app.session_ttl),
            ),
        ),
        ("namespaces", differs(&running.namespaces, &next.namespaces)),
        ("webhooks", differs(&running.webhooks, &next.webhooks)),
        ("retention", running.retention != next.retention),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
}

/// Puts back into `next` what `running` was started with and only a
/// restart changes, so that the next reload reports it again.
fn keep_start_only(running: &Settings, next: &mut Settings) {
    let live = Settings {
        credentials: std::mem::take(&mut next.credentials),
        integrations: std::mem::take(&mut next.integrations),
        catalog: next.catalog.clone(),
        source: next.source.take(),
        web_app: crate::people::WebApp {
            users: std::mem::take(&mut next.web_app.users),
            ..running.web_app.clone()
        },
        ..running.clone()
    };
    *next = live;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Settings {
        Settings::parse(text).expect("valid configuration")
    }

    const CHAIN: &str = r#"
[broker]
listen = "127.0.0.1:1883"

[[skus]]
id = "bun"
name = "Bun"
unit = "pcs"
reorder_point = 10
par = 40

[[dishes]]
id = "burger"
name = "Burger"
recipe = [{ sku = "bun", qty = 1 }]

[[stores]]
id = "downtown"
name = "Downtown"
menu = ["burger"]
"#;

    #[test]
    fn a_listener_change_is_reported_and_kept_for_the_restart() {
        let running = settings(CHAIN);
        let next = settings(&CHAIN.replace("127.0.0.1:1883", "127.0.0.1:1884"));
        assert_eq!(start_only_changes(&running, &next), vec!["broker.listen"]);
        let mut kept = next;
        keep_start_only(&running, &mut kept);
        assert_eq!(kept.listen, running.listen);
        assert!(start_only_changes(&running, &kept).is_empty());
    }

    #[test]
    fn a_menu_change_needs_no_restart() {
        let running = settings(CHAIN);
        let next = settings(&CHAIN.replace("reorder_point = 10", "reorder_point = 12"));
        assert!(start_only_changes(&running, &next).is_empty());
    }
}
