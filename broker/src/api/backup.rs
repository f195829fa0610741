//! `GET /api/v1/admin/backup`: a consistent backup of the running broker's
//! data directory (`store::backup`), streamed as it is written, for an
//! `operator` or `hq` integration of the whole chain. `dishsync-broker
//! backup` is its client; `dishsync-broker restore` rebuilds a data
//! directory from the file.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::{ready, Slot};

/// A writer that hands what is written to an HTTP body, chunk by chunk.
struct ToBody(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ToBody {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(bytes)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `GET`.
pub(super) async fn backup(State(slot): State<Slot>, headers: HeaderMap) -> Response {
    let started = ready(&slot).and_then(|api| {
        let caller = api.operator(&headers, "take backups")?;
        tracing::info!(by = %caller.id, "backup started");
        Ok(api.store.clone())
    });
    let store = match started {
        Ok(store) => store,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::task::spawn_blocking(move || {
        let failed = tx.clone();
        match store.backup(ToBody(tx)) {
            Ok(summary) => tracing::info!(
                pairs = summary.pairs,
                groups = summary.groups,
                last_group = summary.last_group,
                "backup written"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "backup failed");
                // The body ends in an error: the client sees a cut stream.
                let _ = failed.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
