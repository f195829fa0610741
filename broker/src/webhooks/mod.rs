//! Outbound webhooks: what the broker tells a chain's systems over HTTP
//! when a dish's availability, a level, a request, a transfer or an alert
//! changes — signed, durable and in order.
//!
//! - [`signing`]: the Standard Webhooks signature (pure);
//! - [`outbox`]: which messages become deliveries to which endpoint, and
//!   one endpoint's queue with its retries (pure);
//! - `sender`: the HTTP side — per endpoint a few sending tasks over
//!   kept-alive connections, where a slow or dead endpoint holds up only
//!   itself.
//!
//! A delivery is queued in the journal record of the group commit that
//! causes it and handed to its endpoint's queue only once that record is
//! synced, so a delivery exists exactly when its change does, and a
//! restart — `kill -9` too — resumes from the queue on disk (`store.rs`:
//! `w/`, with each endpoint's progress in `wc/`). A delivery already sent
//! may be sent again after a crash, under the same `webhook-id`.

pub mod outbox;
mod sender;
pub mod signing;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use outbox::{DeadLetter, Delivery, Kind, Scope, Subscription};
pub use sender::{EndpointStatus, Webhooks};
pub use signing::Secret;

/// Where an endpoint is: an `http://` or `https://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Over TLS.
    pub https: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, from the `/`.
    pub path: String,
}

impl Target {
    /// Takes `url` apart; `Err` says what is wrong with it.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("must start with http:// or https://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported: the signature authenticates".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port.parse::<u16>().map_err(|_| format!("bad port {port:?}"))?;
                (host, port)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.contains(char::is_whitespace) {
            return Err("no host, or whitespace in the path".into());
        }
        Ok(Target {
            https,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The `Host` header's value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.https, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

/// How long a delivery is retried by default: a day.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(86_400);
/// The first wait after a failed attempt, by default.
pub const DEFAULT_FIRST_RETRY: Duration = Duration::from_secs(1);
/// How long one attempt may take, connecting included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A configured endpoint (`[[webhooks]]`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its id, in the configuration, the logs and the API.
    pub id: String,
    /// Where deliveries go.
    pub target: Target,
    /// The URL as configured (shown by the API).
    pub url: String,
    /// The signing key.
    pub secret: Secret,
    /// What it hears about.
    pub subscription: Subscription,
    /// The first wait after a failure; it doubles up to an hour.
    pub first_retry: Duration,
    /// How long a delivery is retried before it is a dead letter.
    pub retry_for: Duration,
    /// A CA certificate (PEM) to trust for `https` besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// The kinds an endpoint asks for, parsed; `Err` names the unknown one.
pub fn parse_kinds(names: &[String]) -> Result<BTreeSet<Kind>, String> {
    if names.is_empty() {
        return Ok(Kind::ALL.into_iter().collect());
    }
    names
        .iter()
        .map(|n| {
            Kind::parse(n).ok_or_else(|| {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind {n:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// The subscriptions of `endpoints`, in order, for routing.
pub fn subscriptions(endpoints: &[Endpoint]) -> Arc<[Subscription]> {
    endpoints.iter().map(|e| e.subscription.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_taken_apart_into_what_a_request_needs() {
        let t = Target::parse("https://hooks.example.com/dishsync?x=1").expect("url");
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.com", 443, "/dishsync?x=1")
        );
        assert_eq!(t.authority(), "hooks.example.com");
        let t = Target::parse("http://127.0.0.1:9000").expect("url");
        assert_eq!(
            (t.port, t.path.as_str(), t.authority()),
            (9000, "/", "127.0.0.1:9000".into())
        );
        let t = Target::parse("http://[::1]:81/h").expect("url");
        assert_eq!((t.host.as_str(), t.authority()), ("::1", "[::1]:81".into()));
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("http://user:pw@x/").is_err());
        assert!(Target::parse("http://x:port/").is_err());
        assert!(Target::parse("http:///path").is_err());
    }

    #[test]
    fn no_kinds_means_every_kind_and_an_unknown_one_is_named() {
        assert_eq!(parse_kinds(&[]).expect("all").len(), Kind::ALL.len());
        let err = parse_kinds(&["level".into(), "levels".into()]).expect_err("unknown");
        assert!(err.contains("\"levels\""), "{err}");
    }
}
