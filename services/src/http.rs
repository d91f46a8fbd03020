//! The HTTP front end: health and Prometheus metrics.
//!
//! `/healthz` answers 200 while the process serves; `/metrics` is every Strata metric in the
//! Prometheus text format (object-store calls and bytes, WAL syncs, flushes, cache hits,
//! Kafka requests and latencies).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics() -> impl IntoResponse {
    let families = strata_storage::metrics::metrics().registry.gather();
    let mut out = Vec::new();
    match TextEncoder::new().encode(&families, &mut out) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The HTTP routes.
pub fn router() -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// Serves HTTP until `shutdown` turns true.
pub async fn serve(listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let result = axum::serve(listener, router())
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}
