//! A reconnect right after a session ended with its connection.
//!
//! A session that ends with its connection (3.1.1: a clean session; MQTT 5:
//! a Session Expiry of 0, from the CONNECT or the DISCONNECT) is torn down
//! by the engine after the connection has closed: it closes the socket, runs
//! the disconnect hooks, then cleans the session and takes it off its
//! registry. A client that reconnects in between — the client has seen its
//! connection close, so it may — meets the half-ended session: the engine
//! resumes it (CONNACK with session present, [MQTT-3.1.2-4] says it must
//! not) or fails to take it over and refuses the login as "server
//! unavailable" (rmqtt 0.24 `shared.rs`, `kick`: the ended session's
//! channel is gone, so the take-over's answer never comes).
//!
//! [`SessionEnds`] closes that window: the validating front (as soon as
//! such a client has gone) and `ClientDisconnected` mark a client id whose
//! session is ending, and that client id's next `ClientConnect` (which the
//! engine awaits before it looks the session up) waits until the engine's
//! registry no longer holds it, at most [`PATIENCE`]. The mark goes with the
//! reconnect, or soon after `SessionTerminated` when none comes, so no more
//! are kept than sessions are ending.
//!
//! The client may reconnect before the front has even read its DISCONNECT
//! (both connections are tasks on the same runtime): while an earlier
//! connection of the client id is still open at the front, the reconnect
//! gives it [`GRACE`] to be read. A live connection taken over by another
//! with its client id costs that grace once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::session::Session;
use rmqtt::types::ConnectInfo;
use tracing::debug;

/// How long a reconnect waits for the engine to end the earlier session.
pub const PATIENCE: Duration = Duration::from_secs(2);

/// How long a CONNECT waits for the front to read the end of an earlier
/// connection of its client id that is still open.
pub const GRACE: Duration = Duration::from_millis(100);

/// How often the engine's registry is looked at while waiting.
const LOOK_EVERY: Duration = Duration::from_millis(2);

/// Answers `ClientDisconnected` and `ClientConnect`.
#[derive(Clone)]
pub struct SessionEnds {
    scx: ServerContext,
    /// Client ids whose session is being ended by the engine.
    ending: Arc<Mutex<HashSet<String>>>,
    /// Connections open at the validating front, by client id.
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl SessionEnds {
    /// The hook for the engine of `scx`.
    pub fn new(scx: ServerContext) -> SessionEnds {
        SessionEnds {
            scx,
            ending: Arc::default(),
            open: Arc::default(),
        }
    }

    fn ending_ids(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.ending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn disconnected(&self, session: &Session) {
        let Ok(connect) = session.connect_info().await else {
            return;
        };
        let ends = match connect.as_ref() {
            ConnectInfo::V3(_, c) => c.clean_session,
            ConnectInfo::V5(..) => {
                let disconnect = session.disconnect().await.ok().flatten();
                session.fitter.session_expiry_interval(disconnect.as_ref()).is_zero()
            }
        };
        if ends {
            self.ending_ids().insert(session.id.client_id.to_string());
        }
    }

    /// Waits, at most [`PATIENCE`], until the engine's registry no longer
    /// holds the session of `client_id`; then forgets the mark.
    async fn gone(&self, client_id: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.scx.extends.shared().await.exist(client_id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        self.ending_ids().remove(client_id);
    }

    /// Whether an earlier connection of `client_id` than the one now
    /// connecting is still open at the front.
    fn earlier_open(&self, client_id: &str) -> bool {
        self.open_ids().get(client_id).is_some_and(|n| *n > 1)
    }

    fn open_ids(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn connecting(&self, client_id: &str) {
        let grace = tokio::time::Instant::now() + GRACE;
        while !self.ending_ids().contains(client_id)
            && self.earlier_open(client_id)
            && tokio::time::Instant::now() < grace
        {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        if self.ending_ids().contains(client_id) {
            self.gone(client_id).await;
            debug!(client_id, "a reconnect waited for its earlier session to end");
        }
    }

    fn terminated(&self, client_id: &str) {
        if self.ending_ids().contains(client_id) {
            let ends = self.clone();
            let client_id = client_id.to_owned();
            tokio::spawn(async move { ends.gone(&client_id).await });
        }
    }
}

impl crate::front::Connections for SessionEnds {
    fn opened(&self, client_id: &str) {
        *self.open_ids().entry(client_id.to_owned()).or_default() += 1;
    }

    fn ending(&self, client_id: &str) {
        self.ending_ids().insert(client_id.to_owned());
    }

    fn closed(&self, client_id: &str) {
        let mut open = self.open_ids();
        if let Some(n) = open.get_mut(client_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(client_id);
            }
        }
    }
}

#[async_trait]
impl Handler for SessionEnds {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientDisconnected(session, _) => self.disconnected(session).await,
            Parameter::ClientConnect(connect) => self.connecting(&connect.id().client_id).await,
            Parameter::SessionTerminated(session, _) => self.terminated(&session.id.client_id),
            _ => {}
        }
        (true, acc)
    }
}
