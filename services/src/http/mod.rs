//! The HTTP front end: the Confluent REST Proxy API (v2 and v3), operator views, and metrics.
//!
//! Like the Kafka and QUIC front ends, this is a thin translation onto the broker core
//! ([`Broker`]): produce becomes RecordBatch v2 batches handed to [`Broker::produce`] (with
//! `acks=all`), reads are [`Broker::fetch`], and consumer offsets are committed through the
//! same group coordinator Kafka clients use, so a record or an offset is the same whichever
//! protocol wrote or reads it.
//!
//! | module | serves |
//! |---|---|
//! | [`v2`] | `/topics…`: topic and partition listings, produce (json and binary formats) |
//! | [`consumers`] | `/consumers…`: consumer instances, subscriptions, records, offsets |
//! | [`v3`] | `/v3/clusters…`: cluster, topic admin, produce (single and streamed) |
//! | [`status`] | `/healthz`, `/readyz`, the status page at `/` |
//! | [`openapi`] | the route table, and `/openapi.json` generated from it |
//! | [`produce`] | partition choice and batching shared by v2 and v3 produce |
//! | [`body`] | content types, size limits and JSON parsing with the proxy's errors |
//! | [`error`] | the proxy's error shape and statuses |
//!
//! `/metrics` is every Strata metric in the Prometheus text format. Request bodies larger
//! than `--max-request-bytes` are refused with 413; long polls are capped at
//! [`crate::broker::MAX_FETCH_WAIT`]. A housekeeping task drops idle consumer instances and
//! samples throughput for the status page.

mod body;
mod consumers;
mod error;
mod openapi;
mod produce;
mod status;
mod v2;
mod v3;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;

/// How often idle consumer instances are dropped and throughput is sampled.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    /// The broker core.
    broker: Broker,
    /// Consumer instances.
    consumers: Arc<consumers::Consumers>,
    /// Throughput samples for the status page.
    throughput: Arc<status::Throughput>,
    /// Largest request body accepted (`--max-request-bytes`).
    max_request_bytes: usize,
    /// The OpenAPI document, serialised once.
    openapi: Arc<String>,
}

/// `value` as a v2 answer (`application/vnd.kafka.v2+json`).
fn v2_json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut response = (status, axum::Json(value)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(error::V2_JSON),
    );
    response
}

/// The URL the client reached this server by (from its `Host` header), for links.
fn origin(state: &HttpState, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| state.broker.membership().me().http.clone());
    format!("http://{host}")
}

/// Every Strata metric, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics", body = String, content_type = "text/plain")))]
async fn metrics() -> Response {
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

/// Unknown paths get the proxy's error shape.
async fn not_found() -> error::ApiError {
    error::ApiError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
}

/// The HTTP routes over `broker`.
pub fn router(broker: Broker, max_request_bytes: usize) -> Router {
    router_with_state(broker, max_request_bytes).0
}

fn router_with_state(broker: Broker, max_request_bytes: usize) -> (Router, HttpState) {
    let (routes, api) = openapi::routes();
    let document = serde_json::to_string(&api).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document could not be serialised");
        "{}".into()
    });
    let state = HttpState {
        broker,
        consumers: Arc::default(),
        throughput: Arc::default(),
        max_request_bytes,
        openapi: Arc::new(document),
    };
    let router = routes
        .route("/metrics", axum::routing::get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(traced))
        .with_state(state.clone());
    (router, state)
}

/// Runs a request in an `http.request` span (exported when tracing is on), whose parent is the
/// W3C trace context the client sent (`traceparent`, `tracestate`), if any.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    if !crate::telemetry::tracing_enabled() {
        return next.run(request).await;
    }
    let span = tracing::debug_span!(
        "http.request",
        method = %request.method(),
        path = %request.uri().path()
    );
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    crate::telemetry::adopt_parent(&span, &headers);
    next.run(request).instrument(span).await
}

/// Drops idle consumer instances and samples throughput until `shutdown` turns true.
async fn housekeeping(state: HttpState, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.consumers.expire(consumers::INSTANCE_IDLE);
                state.throughput.sample(&state.broker).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Serves HTTP for `broker` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    max_request_bytes: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let (router, state) = router_with_state(broker, max_request_bytes);
    let chores = tokio::spawn(housekeeping(state, shutdown.clone()));
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
    chores.abort();
}
