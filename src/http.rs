//! The HTTP endpoints: `/metrics`, `/health/live`, `/health/ready` and `/status`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::status::StatusBoard;

pub fn router(status: Arc<StatusBoard>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/status", get(status_json))
        .with_state(status)
}

/// Serves until `stop`. The server is stopped last, after the leases were released, so that
/// readiness answers 503 through the whole drain.
pub async fn serve(
    listener: TcpListener,
    status: Arc<StatusBoard>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(status))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
        .into_response()
}

/// Whether the process's loops still make rounds; never tied to AWS or Nakadi being reachable,
/// since restarting the pod would not bring them back.
async fn live(State(status): State<Arc<StatusBoard>>) -> StatusCode {
    if status.live() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Ready once the lease table and the stream were reached and the first shard sync is done;
/// not ready from SIGTERM on. Not tied to Nakadi: its outages are what the DLQ absorbs.
async fn ready(State(status): State<Arc<StatusBoard>>) -> StatusCode {
    if status.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn status_json(State(status): State<Arc<StatusBoard>>) -> Json<crate::status::StatusReport> {
    Json(status.report())
}
