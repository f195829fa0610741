//! The will of a connection that is taken over.
//!
//! When a second connection with the same client id takes a session over,
//! the first network connection ends without a DISCONNECT, so its will is
//! due ([MQTT-3.1.2-8]; MQTT 5 §3.1.2.5: at once when it has no will delay).
//! The engine drops it when the session lives on (neither connection asked
//! for a clean start: `last_will_enable` in rmqtt's `session.rs`).
//! [`TakeoverWill`] publishes it in exactly that case, the way the engine
//! publishes any other will; every other case is the engine's, so no will is
//! published twice. A will with a delay is left unpublished, as MQTT 5 says
//! for a session resumed before the delay ran out.
//!
//! Whether the taking-over connection asked for a clean start is known only
//! from its CONNECT: `ClientConnect` records it per client id, and the
//! record is consumed when that client id's connection ends or its login is
//! refused, so at most one is kept per connected client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::session::{Session, SessionState};
use rmqtt::types::{ConnectInfo, From, Publish, Reason};
use tracing::{info, warn};

/// Answers `ClientConnect`, `ClientConnack` and `ClientDisconnected`.
#[derive(Clone, Default)]
pub struct TakeoverWill {
    /// Per client id: whether its latest CONNECT asked for a clean start.
    clean_start: Arc<Mutex<HashMap<String, bool>>>,
}

/// Whether `reason` (one reason or the list a session gathered) says the
/// connection was taken over by another with its client id.
fn taken_over(reason: &Reason) -> bool {
    match reason {
        Reason::Reasons(reasons) => reasons.iter().any(taken_over),
        reason => reason.is_kicked(false),
    }
}

/// Whether the session outlives the connection that `connect` opened
/// (3.1.1: no clean session; MQTT 5: a session expiry above zero).
fn session_outlives(session: &Session, connect: &ConnectInfo) -> bool {
    match connect {
        ConnectInfo::V3(_, c) => !c.clean_session,
        ConnectInfo::V5(..) => !session.fitter.session_expiry_interval(None).is_zero(),
    }
}

impl TakeoverWill {
    fn record(&self, client_id: &str, clean_start: bool) {
        if let Ok(mut map) = self.clean_start.lock() {
            map.insert(client_id.to_string(), clean_start);
        }
    }

    fn take(&self, client_id: &str) -> Option<bool> {
        self.clean_start.lock().ok()?.remove(client_id)
    }

    async fn disconnected(&self, session: &Session, reason: &Reason) {
        let taker_clean_start = self.take(&session.id.client_id);
        if !taken_over(reason) {
            return;
        }
        let Ok(connect) = session.connect_info().await else {
            return;
        };
        let Some(will) = connect.last_will() else {
            return;
        };
        // The engine publishes the will itself unless the session lives on.
        if taker_clean_start != Some(false) || !session_outlives(session, &connect) {
            return;
        }
        if will.will_delay_interval().is_some_and(|d| !d.is_zero()) {
            return;
        }
        let publish = match Publish::try_from(will) {
            Ok(publish) => publish,
            Err(e) => {
                warn!(client_id = %session.id.client_id, error = %e, "the will of a connection taken over is unreadable");
                return;
            }
        };
        let from = From::from_lastwill(session.id.clone());
        let scx = &session.scx;
        let publish = scx
            .extends
            .hook_mgr()
            .message_publish(Some(session), from.clone(), &publish)
            .await
            .unwrap_or(publish);
        let expiry = if publish.retain {
            Some(session.fitter.message_expiry_interval(&publish))
        } else {
            None
        };
        let topic = publish.topic.to_string();
        match SessionState::forwards(scx, from, publish, false, expiry).await {
            Ok(()) => info!(client_id = %session.id.client_id, topic, "connection taken over: its will published"),
            Err(e) => {
                warn!(client_id = %session.id.client_id, topic, error = %e, "publishing the will of a connection taken over failed")
            }
        }
    }
}

#[async_trait]
impl Handler for TakeoverWill {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientConnect(connect) => self.record(&connect.id().client_id, connect.clean_start()),
            Parameter::ClientConnack(connect, ack) if !ack.success() => {
                self.take(&connect.id().client_id);
            }
            Parameter::ClientDisconnected(session, reason) => self.disconnected(session, reason).await,
            _ => {}
        }
        (true, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_is_found_among_the_reasons_a_session_gathered() {
        assert!(taken_over(&Reason::ConnectKicked(false)));
        assert!(taken_over(&Reason::Reasons(vec![
            Reason::ConnectRemoteClose,
            Reason::ConnectKicked(false)
        ])));
        // An operator's kick is not a takeover; nor is a lost connection.
        assert!(!taken_over(&Reason::ConnectKicked(true)));
        assert!(!taken_over(&Reason::Reasons(vec![Reason::ConnectRemoteClose])));
    }
}
