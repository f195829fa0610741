//! A live page's stream: server-sent events of the documents the broker
//! publishes, under the filters the page's person may subscribe to. First
//! everything retained under them (the page's starting state — and again
//! after a dropped connection, when the browser reconnects, or when the
//! page fell more than [`LIVE_BACKLOG`](crate::outbound::LIVE_BACKLOG)
//! messages behind), then each message as it is delivered. Every document
//! carries its `rev`; a page keeps the highest.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::outbound::Outbound;
use crate::retainer::filter_matches;

/// One event: the topic and the document (`null`: cleared; a string for
/// presence's plain words); `None` for a payload that is not UTF-8.
fn event(topic: &str, payload: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(payload).ok()?;
    let quoted;
    let doc = if payload.is_empty() {
        "null"
    } else if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        text
    } else {
        // Presence is plain words (`online`, `offline`): a JSON string.
        quoted = serde_json::to_string(text).ok()?;
        quoted.as_str()
    };
    let topic = serde_json::to_string(topic).ok()?;
    Some(
        Event::default()
            .event("doc")
            .data(format!("{{\"topic\":{topic},\"doc\":{doc}}}")),
    )
}

/// Events a page may have waiting before its stream waits for it.
const PAGE_QUEUE: usize = 1024;

/// The stream of a page allowed `filters`.
pub fn stream(out: Outbound, filters: Vec<String>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(PAGE_QUEUE);
    tokio::spawn(async move {
        // Listening before the snapshot is read: nothing falls between.
        let mut live = out.live();
        'snapshot: loop {
            for filter in &filters {
                for (topic, payload) in out.retained(filter).await {
                    if let Some(e) = event(&topic, &payload) {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if tx.send(Event::default().event("ready").data("{}")).await.is_err() {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(m) => {
                        if !filters.iter().any(|f| filter_matches(f, &m.topic)) {
                            continue;
                        }
                        if let Some(e) = event(&m.topic, &m.payload) {
                            if tx.send(e).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Fell behind: everything again, then on.
                    Err(RecvError::Lagged(_)) => continue 'snapshot,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
