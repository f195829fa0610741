//! The broker's HTTP listener (`[web] listen`, `--web-listen`): health for
//! a supervisor, readiness for a load balancer, metrics for a scraper.
//!
//! - `GET /healthz`: 200 while the process lives and serves HTTP.
//! - `GET /readyz`: 200 when the broker can take inputs — its state is
//!   restored, the rules run, the MQTT listeners are open and the data
//!   directory takes writes — and 503 otherwise, naming each check in a
//!   JSON body (`{"ready": false, "checks": {"storage": "…"}}`).
//! - `GET /metrics`: what the broker counts ([`crate::metrics`]), in the
//!   Prometheus text format.
//! - `GET /api/v1/openapi.json`: the OpenAPI document of these routes,
//!   kept in the repository as `broker/openapi.json`.
//!
//! The listener opens before the state is restored, so a supervisor sees a
//! long restore as "alive, not ready" rather than as a dead process.
//! [`Readiness`] is what the shell tells it as start-up goes; the verdict
//! itself ([`verdict`]) is pure.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::metrics::{Gauges, METRICS};
use crate::rules::RulesHandle;
use crate::store::Store;

/// What `/readyz` says of a restore under way.
pub const BEING_RESTORED: &str = "the state is being restored";

/// What start-up has reached, for `/readyz`.
pub struct Readiness {
    data_dir: PathBuf,
    /// The store and the rules, once the state is restored.
    running: OnceLock<(Store, RulesHandle)>,
    /// Set once every MQTT listener is open.
    listening: OnceLock<()>,
    /// Told when the state is restored.
    restored_tx: tokio::sync::watch::Sender<bool>,
    /// Where the restore is, until it is done.
    restoring: std::sync::Mutex<String>,
}

impl Readiness {
    /// Nothing ready yet; the data directory is `data_dir`.
    pub fn new(data_dir: PathBuf) -> Arc<Readiness> {
        Arc::new(Readiness {
            data_dir,
            running: OnceLock::new(),
            listening: OnceLock::new(),
            restored_tx: tokio::sync::watch::Sender::new(false),
            restoring: std::sync::Mutex::new(BEING_RESTORED.to_string()),
        })
    }

    /// The restore is at `stage` (what `/readyz` says until it is done).
    pub fn restoring(&self, stage: &str) {
        if let Ok(mut now) = self.restoring.lock() {
            *now = stage.to_string();
        }
    }

    /// The state is restored and the rules run.
    pub fn restored(&self, store: Store, rules: RulesHandle) {
        let _ = self.running.set((store, rules));
        self.restored_tx.send_replace(true);
    }

    /// Waits until the state is restored.
    pub async fn until_restored(&self) {
        let _ = self.restored_tx.subscribe().wait_for(|restored| *restored).await;
    }

    /// Every MQTT listener is open.
    pub fn listening(&self) {
        let _ = self.listening.set(());
    }

    /// Each check, as it stands: `Ok` or why not.
    fn checks(&self) -> Vec<(&'static str, Result<(), String>)> {
        let running = self.running.get();
        let restored = running.map(|_| ()).ok_or_else(|| {
            self.restoring
                .lock()
                .map_or_else(|_| BEING_RESTORED.to_string(), |stage| stage.clone())
        });
        let rules = match running {
            Some((_, rules)) if rules.is_running() => Ok(()),
            Some(_) => Err("the rules stopped".to_string()),
            None => Err("the rules start once the state is restored".to_string()),
        };
        let listeners = self
            .listening
            .get()
            .map(|_| ())
            .ok_or_else(|| "the MQTT listeners are not open yet".to_string());
        let storage = match running.and_then(|(store, _)| store.failure()) {
            Some(what) => Err(format!("a write failed: {what}")),
            None => probe(&self.data_dir),
        };
        vec![
            ("restored", restored),
            ("rules", rules),
            ("listeners", listeners),
            ("storage", storage),
        ]
    }
}

/// Asks the web listener at `addr` (`host:port`) for `/readyz` over plain
/// HTTP/1.0, waiting at most `patience`: `Ok` when it answers 200, or why
/// not.
pub fn probe_ready(addr: &str, patience: std::time::Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut stream = connect(addr, patience)?;
    let io = |e: std::io::Error| format!("{addr}: {e}");
    stream
        .write_all(format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(io)?;
    let mut answer = String::new();
    stream.take(64 << 10).read_to_string(&mut answer).map_err(io)?;
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    if status == "200" {
        Ok(())
    } else {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
        Err(format!("{addr} answered {status}: {body}"))
    }
}

/// A connection to the web listener at `addr` (host:port), reads and
/// writes giving up after `patience` — for the command line's own calls.
pub fn connect(addr: &str, patience: std::time::Duration) -> Result<std::net::TcpStream, String> {
    use std::net::ToSocketAddrs;
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} names no address"))?;
    let stream = std::net::TcpStream::connect_timeout(&target, patience).map_err(|e| format!("{addr}: {e}"))?;
    let io = |e: std::io::Error| format!("{addr}: {e}");
    stream.set_read_timeout(Some(patience)).map_err(io)?;
    stream.set_write_timeout(Some(patience)).map_err(io)?;
    Ok(stream)
}

/// Whether `dir` takes a write now: a small file written, synced and
/// removed.
fn probe(dir: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    let path = dir.join(".ready-probe");
    let written = std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(b"ready").and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::remove_file(&path));
    written.map_err(|e| format!("the data directory {} takes no writes: {e}", dir.display()))
}

/// The answer to `/readyz` for `checks`: 200 when every one passes, else
/// 503; the body names each.
pub fn verdict(checks: &[(&'static str, Result<(), String>)]) -> (StatusCode, Value) {
    let ready = checks.iter().all(|(_, c)| c.is_ok());
    let named: Map<String, Value> = checks
        .iter()
        .map(|(name, c)| {
            let state = match c {
                Ok(()) => Value::from("ok"),
                Err(why) => Value::from(why.as_str()),
            };
            (name.to_string(), state)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, json!({ "ready": ready, "checks": named }))
}

/// Opens the web listener on `addr` (if any) — over TLS with `tls` — and
/// serves it in a task of its own, printing `dishsync-broker web on
/// http://ADDR` (or `https://`); the task ends only if serving fails.
pub async fn open(
    addr: Option<std::net::SocketAddr>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    readiness: Arc<Readiness>,
    api: Option<crate::api::Slot>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    use anyhow::Context;
    use axum::serve::ListenerExt;
    let Some(addr) = addr else {
        return Ok(tokio::spawn(std::future::pending()));
    };
    let bound = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the web listener {addr}"))?;
    let local = bound.local_addr().context("reading the web address")?;
    let router = router(readiness, api).into_make_service_with_connect_info::<std::net::SocketAddr>();
    Ok(match tls {
        Some(acceptor) => {
            println!("dishsync-broker web on https://{local}");
            let listener = TlsListener::start(bound, acceptor, local);
            tokio::spawn(async move { axum::serve(listener.tap_io(|_| {}), router).await })
        }
        None => {
            println!("dishsync-broker web on http://{local}");
            tokio::spawn(async move { axum::serve(bound, router).await })
        }
    })
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// The web listener over TLS: connections accepted and their handshakes
/// made in tasks of their own (a client slow to shake hands holds up no
/// other), handed on once secure.
struct TlsListener {
    secured: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    fn start(
        bound: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        local: std::net::SocketAddr,
    ) -> TlsListener {
        let (tx, secured) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match bound.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "web listener: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "web listener: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "web listener: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { secured, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.secured.recv().await {
            Some(secured) => secured,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The listener's OpenAPI document (`broker/openapi.json`), served at
/// [`OPENAPI`].
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Where the routes are; the OpenAPI document describes exactly these.
pub const HEALTHZ: &str = "/healthz";
/// See [`HEALTHZ`].
pub const READYZ: &str = "/readyz";
/// See [`HEALTHZ`].
pub const METRICS_PATH: &str = "/metrics";
/// See [`HEALTHZ`].
pub const OPENAPI: &str = "/api/v1/openapi.json";
/// The listener's own routes, each a GET.
pub const ROUTES: [&str; 4] = [HEALTHZ, READYZ, METRICS_PATH, OPENAPI];

/// Every route of the listener and its method, the API's included: what the
/// OpenAPI document must describe.
pub fn every_route() -> Vec<(&'static str, &'static str)> {
    let mut routes: Vec<(&str, &str)> = ROUTES.iter().map(|r| ("get", *r)).collect();
    routes.extend(crate::api::INPUT_ROUTES.iter().map(|r| ("post", *r)));
    routes.push(("post", crate::api::BATCH_ROUTE));
    routes.push(("get", crate::api::LEDGER_ROUTE));
    routes.push(("get", crate::api::REPORT_ROUTE));
    routes.push(("get", crate::api::ALERTS_ROUTE));
    routes.push(("get", crate::api::BACKUP_ROUTE));
    routes.push(("post", crate::api::RELOAD_ROUTE));
    routes.push(("get", crate::api::WEBHOOKS_ROUTE));
    routes.push(("get", crate::api::DEAD_LETTERS_ROUTE));
    routes.extend(crate::api::DOCUMENT_ROUTES.iter().map(|r| ("get", *r)));
    routes.extend(crate::api::COLLECTION_ROUTES.iter().map(|(r, _, _)| ("get", *r)));
    routes.sort_unstable();
    routes
}

/// The routes; with `api`, the API's too, which serve once it is filled (a
/// worker attached to another broker serves no API: the documents are
/// that broker's).
pub fn router(readiness: Arc<Readiness>, api: Option<crate::api::Slot>) -> Router {
    let own = Router::new()
        .route(HEALTHZ, get(|| async { "ok\n" }))
        .route(READYZ, get(readyz))
        .route(METRICS_PATH, get(metrics))
        .route(
            OPENAPI,
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }),
        )
        .with_state(readiness);
    match api {
        Some(api) => own
            .merge(crate::api::router(api.clone()))
            .merge(crate::people::router(api)),
        None => own,
    }
}

async fn metrics(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    let gauges = match readiness.running.get() {
        Some((store, rules)) => crate::metrics::gauges(rules, store).await,
        None => Gauges::default(),
    };
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        METRICS.render(gauges),
    )
}

async fn readyz(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    // The probe touches the disk: off the async workers.
    let checks = tokio::task::spawn_blocking(move || readiness.checks()).await;
    let (status, body) = match checks {
        Ok(checks) => verdict(&checks),
        Err(e) => verdict(&[("checks", Err(format!("the checks failed to run: {e}")))]),
    };
    (status, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document describes every route and no other, with its
    /// method.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(&str, &str)> = paths
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().expect("a path item").keys();
                methods
                    .filter(|m| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
                    .map(move |m| (m.as_str(), path.as_str()))
            })
            .collect();
        documented.sort_unstable();
        assert_eq!(documented, every_route());
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("a path item") {
                let ok = &operation["responses"]["200"];
                assert!(ok.is_object(), "{method} {path} answers 200");
            }
        }
        // What /readyz answers is what the schema names.
        let (_, body) = verdict(&[
            ("restored", Ok(())),
            ("rules", Ok(())),
            ("listeners", Ok(())),
            ("storage", Ok(())),
        ]);
        let schema = &doc["components"]["schemas"]["Readiness"];
        for key in body.as_object().expect("object").keys() {
            assert!(schema["properties"][key].is_object(), "{key} is described");
        }
        for check in body["checks"].as_object().expect("checks").keys() {
            let required = schema["properties"]["checks"]["required"].as_array().expect("required");
            assert!(required.iter().any(|r| r == check.as_str()), "{check} is described");
        }
    }

    #[test]
    fn ready_only_when_every_check_passes() {
        let (status, body) = verdict(&[("restored", Ok(())), ("storage", Ok(()))]);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"ready": true, "checks": {"restored": "ok", "storage": "ok"}})
        );
        let (status, body) = verdict(&[("restored", Ok(())), ("storage", Err("full".into()))]);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["ready"], false);
        assert_eq!(body["checks"]["storage"], "full");
        assert_eq!(body["checks"]["restored"], "ok");
    }

    #[test]
    fn nothing_is_ready_before_the_restore() {
        let dir = tempfile::tempdir().expect("dir");
        let readiness = Readiness::new(dir.path().to_path_buf());
        let (status, body) = verdict(&readiness.checks());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["restored"], "the state is being restored");
        assert_eq!(body["checks"]["storage"], "ok", "the directory takes writes: {body}");
        let gone = Readiness::new(dir.path().join("missing"));
        assert_ne!(verdict(&gone.checks()).1["checks"]["storage"], "ok");
    }
}
