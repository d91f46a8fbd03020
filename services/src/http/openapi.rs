//! The route table, and the OpenAPI document generated from it.
//!
//! Every route is registered here through `utoipa-axum`'s [`routes!`], which takes the
//! handler's `#[utoipa::path]` description and its axum method router together: a route
//! cannot be served without being described, nor described without being served. The
//! document (OpenAPI 3.1) is served at `GET /openapi.json`; `tests/test_openapi.py` runs
//! `schemathesis` against it to check that every answer matches it.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{HttpState, consumers, status, v2, v3};

/// The document's header and the schemas no route names directly.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strata REST API",
        description = "The Confluent REST Proxy API (v2 and v3) served by a Strata broker, and its operator views.",
        license(name = "Apache-2.0")
    ),
    paths(super::metrics),
    components(schemas(super::error::ErrorBody))
)]
struct ApiDoc;

/// The OpenAPI document of every route.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", content_type = "application/json")))]
async fn document(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_str().to_owned(),
    )
        .into_response()
}

/// Every route but `/metrics` (added by the caller, which describes it in [`ApiDoc`]), and
/// the OpenAPI document describing them all.
pub fn routes() -> (axum::Router<HttpState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status::page))
        .routes(routes!(status::healthz))
        .routes(routes!(status::readyz))
        .routes(routes!(document))
        .routes(routes!(v2::list_topics))
        .routes(routes!(v2::get_topic, v2::produce_to_topic))
        .routes(routes!(v2::list_partitions))
        .routes(routes!(v2::get_partition, v2::produce_to_partition))
        .routes(routes!(v2::partition_offsets))
        .routes(routes!(consumers::create))
        .routes(routes!(consumers::delete))
        .routes(routes!(
            consumers::subscribe,
            consumers::subscription,
            consumers::unsubscribe
        ))
        .routes(routes!(consumers::assign, consumers::assignments))
        .routes(routes!(consumers::commit_offsets, consumers::committed))
        .routes(routes!(consumers::seek))
        .routes(routes!(consumers::seek_beginning))
        .routes(routes!(consumers::seek_end))
        .routes(routes!(consumers::records))
        .routes(routes!(v3::list_clusters))
        .routes(routes!(v3::get_cluster))
        .routes(routes!(v3::list_topics, v3::create_topic))
        .routes(routes!(v3::get_topic, v3::delete_topic))
        .routes(routes!(v3::list_partitions))
        .routes(routes!(v3::list_configs))
        .routes(routes!(v3::produce_records))
        .split_for_parts()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let (_, api) = routes();
        let paths: Vec<&String> = api.paths.paths.keys().collect();
        for p in [
            "/",
            "/readyz",
            "/topics/{topic}",
            "/consumers/{group}/instances/{instance}/records",
            "/v3/clusters/{cluster_id}/topics/{topic}/records",
        ] {
            assert!(paths.iter().any(|q| *q == p), "{p} missing from {paths:?}");
        }
        let json = serde_json::to_value(&api).unwrap();
        assert!(json["components"]["schemas"]["ProduceResponse"].is_object());
    }
}
