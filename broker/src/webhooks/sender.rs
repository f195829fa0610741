//! The sending side: per endpoint, [`SENDERS`] tasks take due deliveries
//! from its [`Queue`] and POST them over kept-alive HTTP/1.1 connections
//! (TLS for `https`), each attempt bounded by [`ATTEMPT_TIMEOUT`]. One task
//! per endpoint writes how far the endpoint got (`wc/`) every second. A
//! delivery given up is kept as a dead letter (`wx/`) and raised on
//! `hq/alerts`, at most once per [`ALERT_EVERY`] per endpoint with the
//! running count.
//!
//! Nothing here is on the inputs' path: the committer only pushes into the
//! queues, which never block; an endpoint that is slow or down holds up
//! its own tasks and nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dishsync_protocol::payload::{BrokerAlertOut, Timestamp};
use dishsync_protocol::{Millis, Topic};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::outbox::{DeadLetter, Delivery, Finished, Queue, Subscription, Taken};
use super::{Endpoint, ATTEMPT_TIMEOUT};
use crate::outbound::{publish_doc, Publisher};
use crate::store::Store;

/// Sending tasks per endpoint: deliveries of this many documents can be
/// under way at once.
pub const SENDERS: usize = 4;
/// Shortest time between two dead-letter alerts of one endpoint.
pub const ALERT_EVERY: Duration = Duration::from_secs(10);
/// How often an endpoint's progress is written down.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// The most of a response body read (and thrown away) to keep the
/// connection.
const MAX_RESPONSE: usize = 64 * 1024;

/// Every endpoint's queue and senders.
pub struct Webhooks {
    endpoints: Vec<Arc<Sender>>,
    subscriptions: Arc<[Subscription]>,
}

/// One endpoint: its queue, what wakes its senders, what it counts.
struct Sender {
    endpoint: Endpoint,
    queue: Mutex<Queue>,
    wake: Notify,
    store: Store,
    out: Arc<dyn Publisher>,
    tls: Option<tokio_rustls::TlsConnector>,
    delivered: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_alert: Mutex<Option<Instant>>,
}

/// An endpoint as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    /// Its id.
    pub id: String,
    /// Where it is.
    pub url: String,
    /// What it hears about.
    pub kinds: Vec<&'static str>,
    /// Deliveries waiting or being sent.
    pub pending: usize,
    /// Deliveries it took since the broker started.
    pub delivered: u64,
    /// Failed attempts since the broker started.
    pub failed_attempts: u64,
    /// Deliveries given up since the broker started.
    pub dead_letters: u64,
    /// Pending deliveries replaced by a newer version of their document.
    pub superseded: u64,
    /// What the last failed attempt got.
    pub last_error: Option<String>,
}

fn now_ms() -> Millis {
    Timestamp::now().0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A number in [0, 1) for a retry's jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

impl Webhooks {
    /// Loads each endpoint's pending deliveries from `store` and starts
    /// its senders. Call it after the restore and before the rules start.
    pub fn start(endpoints: Vec<Endpoint>, store: &Store, out: Arc<dyn Publisher>) -> anyhow::Result<Arc<Webhooks>> {
        let subscriptions = super::subscriptions(&endpoints);
        let mut senders = Vec::new();
        let now = now_ms();
        for endpoint in endpoints {
            let mut queue = Queue::new(endpoint.first_retry, endpoint.retry_for);
            let cursor = store.webhook_cursor(&endpoint.id)?;
            let backlog: Vec<(u64, Delivery)> = store.webhook_backlog(&endpoint.id, cursor)?;
            for (seq, delivery) in backlog {
                queue.push(seq, delivery, now);
            }
            if !queue.is_empty() {
                info!(endpoint = %endpoint.id, pending = queue.len(), "webhook deliveries resumed");
            }
            crate::metrics::METRICS.webhook_pending(&endpoint.id, queue.len());
            let tls = if endpoint.target.https {
                Some(tls_connector(endpoint.ca_file.as_deref())?)
            } else {
                None
            };
            senders.push(Arc::new(Sender {
                endpoint,
                queue: Mutex::new(queue),
                wake: Notify::new(),
                store: store.clone(),
                out: out.clone(),
                tls,
                delivered: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dead: AtomicU64::new(0),
                last_error: Mutex::new(None),
                last_alert: Mutex::new(None),
            }));
        }
        for sender in &senders {
            for _ in 0..SENDERS {
                tokio::spawn(Arc::clone(sender).send());
            }
            tokio::spawn(Arc::clone(sender).keep_cursor());
        }
        Ok(Arc::new(Webhooks {
            endpoints: senders,
            subscriptions,
        }))
    }

    /// What each endpoint asks for, in order (for routing a group).
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// The id of endpoint `index`.
    pub fn endpoint_id(&self, index: usize) -> &str {
        self.endpoints.get(index).map_or("", |s| s.endpoint.id.as_str())
    }

    /// Hands deliveries whose commit is now durable to their endpoints.
    /// Never waits.
    pub fn queued(&self, deliveries: Vec<(usize, u64, Delivery)>) {
        if deliveries.is_empty() {
            return;
        }
        let now = now_ms();
        let mut woken = vec![false; self.endpoints.len()];
        for (index, seq, delivery) in deliveries {
            if let Some(sender) = self.endpoints.get(index) {
                lock(&sender.queue).push(seq, delivery, now);
                woken[index] = true;
            }
        }
        for (sender, woken) in self.endpoints.iter().zip(woken) {
            if woken {
                let pending = lock(&sender.queue).len();
                crate::metrics::METRICS.webhook_pending(&sender.endpoint.id, pending);
                sender.wake.notify_waiters();
            }
        }
    }

    /// Every endpoint as the API shows it.
    pub fn status(&self) -> Vec<EndpointStatus> {
        self.endpoints.iter().map(|s| s.status()).collect()
    }

    /// Whether an endpoint has this id.
    pub fn has(&self, id: &str) -> bool {
        self.endpoints.iter().any(|s| s.endpoint.id == id)
    }
}

/// Any connection a request can go over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Connection = SendRequest<Full<Bytes>>;

impl Sender {
    fn status(&self) -> EndpointStatus {
        let queue = lock(&self.queue);
        EndpointStatus {
            id: self.endpoint.id.clone(),
            url: self.endpoint.url.clone(),
            kinds: self.endpoint.subscription.kinds.iter().map(|k| k.as_str()).collect(),
            pending: queue.len(),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed_attempts: self.failed.load(Ordering::Relaxed),
            dead_letters: self.dead.load(Ordering::Relaxed),
            superseded: queue.superseded,
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// One sending task: takes the next due delivery, sends it, reports
    /// the outcome; sleeps until one is due or a new one arrives.
    async fn send(self: Arc<Self>) {
        let mut connection: Option<Connection> = None;
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (taken, due) = {
                let mut queue = lock(&self.queue);
                let taken = queue.take(now_ms());
                (taken, queue.next_due())
            };
            let Some(taken) = taken else {
                match due {
                    Some(due) => {
                        let wait = Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0).max(1));
                        tokio::select! {
                            _ = woken => {}
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    None => woken.await,
                }
                continue;
            };
            let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(&mut connection, &taken)).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
            };
            if result.is_err() {
                // A failed connection is not used again.
                connection = None;
            }
            self.finished(&taken, result).await;
        }
    }

    /// Books an attempt's outcome and wakes the other senders: the
    /// document's next delivery may be due now.
    async fn finished(&self, taken: &Taken, result: Result<(), String>) {
        let error = result.as_ref().err().cloned();
        let (finished, pending) = {
            let mut queue = lock(&self.queue);
            (queue.finish(taken, result, now_ms(), jitter()), queue.len())
        };
        crate::metrics::METRICS.webhook_pending(&self.endpoint.id, pending);
        let id = Delivery::id(taken.seq);
        match finished {
            Finished::Delivered => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                crate::metrics::METRICS.webhook_delivered();
                debug!(endpoint = %self.endpoint.id, webhook_id = %id, "webhook delivered");
            }
            Finished::Retry(at) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::METRICS.webhook_failed(false);
                let error = error.unwrap_or_default();
                debug!(endpoint = %self.endpoint.id, webhook_id = %id, %error, retry_in_ms = at - now_ms(), "webhook attempt failed");
                *lock(&self.last_error) = Some(error);
            }
            Finished::Dead(letter) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::METRICS.webhook_failed(true);
                let total = self.dead.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(endpoint = %self.endpoint.id, webhook_id = %id, doc = %letter.delivery.doc, error = %letter.last_error, "webhook delivery given up");
                *lock(&self.last_error) = Some(letter.last_error.clone());
                self.keep_dead_letter(taken.seq, &letter, total).await;
            }
        }
        self.wake.notify_waiters();
    }

    /// Keeps a dead letter and raises it on `hq/alerts` (at most once per
    /// [`ALERT_EVERY`]).
    async fn keep_dead_letter(&self, seq: u64, letter: &DeadLetter, total: u64) {
        let store = self.store.clone();
        let endpoint = self.endpoint.id.clone();
        let kept = {
            let letter = letter.clone();
            tokio::task::spawn_blocking(move || store.put_dead_letter(&endpoint, seq, &letter)).await
        };
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(endpoint = %self.endpoint.id, error = %e, "could not keep a dead letter"),
            Err(e) => warn!(endpoint = %self.endpoint.id, error = %e, "could not keep a dead letter"),
        }
        let due = {
            let mut last = lock(&self.last_alert);
            let due = last.is_none_or(|t| t.elapsed() >= ALERT_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let now = Timestamp::now();
            let alert = BrokerAlertOut {
                id: format!("webhook-dead-{}-{seq}", self.endpoint.id),
                kind: "webhook_dead_letter".into(),
                message: format!(
                    "{total} webhook delivery(ies) to {} given up after {} s of retries (last: {}, {})",
                    self.endpoint.id,
                    self.endpoint.retry_for.as_secs(),
                    letter.delivery.doc,
                    letter.last_error
                ),
                count: total,
                at: now,
            };
            publish_doc(self.out.as_ref(), &Topic::BrokerAlerts, &alert, false).await;
        }
    }

    /// Writes how far the endpoint got, whenever that moved.
    async fn keep_cursor(self: Arc<Self>) {
        let mut written = None;
        loop {
            tokio::time::sleep(CURSOR_EVERY).await;
            let cursor = lock(&self.queue).done_below();
            if written == Some(cursor) {
                continue;
            }
            let store = self.store.clone();
            let endpoint = self.endpoint.id.clone();
            match tokio::task::spawn_blocking(move || store.set_webhook_cursor(&endpoint, cursor)).await {
                Ok(Ok(())) => written = Some(cursor),
                Ok(Err(e)) => warn!(endpoint = %self.endpoint.id, error = %e, "could not note webhook progress"),
                Err(e) => warn!(endpoint = %self.endpoint.id, error = %e, "could not note webhook progress"),
            }
        }
    }

    /// One attempt: `Ok` on a 2xx answer.
    async fn attempt(&self, connection: &mut Option<Connection>, taken: &Taken) -> Result<(), String> {
        let ready = match connection.as_mut() {
            Some(c) => c.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            *connection = Some(self.connect().await?);
        }
        let Some(c) = connection.as_mut() else {
            return Err("no connection".into());
        };
        let id = Delivery::id(taken.seq);
        let timestamp = u64::try_from(Timestamp::now().0 / 1000).unwrap_or(0);
        let body = taken.delivery.body.clone();
        let signature = self.endpoint.secret.sign(&id, timestamp, &body);
        let request = hyper::Request::post(&self.endpoint.target.path)
            .header(hyper::header::HOST, self.endpoint.target.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("dishsync/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = c.send_request(request).await.map_err(|e| format!("sending: {e}"))?;
        let status = response.status();
        // Read the answer out, so the connection can carry the next one.
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE);
        if limited.collect().await.is_err() {
            *connection = None;
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }

    async fn connect(&self) -> Result<Connection, String> {
        let target = &self.endpoint.target;
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", target.host, target.port))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| format!("{}: {e}", target.host))?;
                Box::new(tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?)
            }
            None => Box::new(tcp),
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// A TLS client trusting the system's roots and, if given, `ca_file`.
fn tls_connector(ca_file: Option<&std::path::Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca_file {
        for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
            roots.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
