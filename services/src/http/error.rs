//! Errors in the REST proxy's shape: `{"error_code": <int>, "message": "..."}` with the HTTP
//! status the Confluent REST Proxy gives the same mistake.
//!
//! `error_code` is the status itself for generic errors (400 malformed JSON, 415 unsupported
//! content type, 413 body too large, …) and the proxy's five-digit codes where it has one:
//! 40401 unknown topic, 40402 unknown partition, 40403 unknown consumer instance, 40601
//! format mismatch, 409xx conflicts, 422xx invalid records or consumer configs, 5000x broker
//! failures. Every error a handler returns is logged at the level it deserves (client mistakes
//! at debug, broker failures as warnings), so bad input never goes unexplained and never
//! takes the server down.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, ToSchema};

use crate::broker::BrokerError;

/// The content type of v2 answers, errors included.
pub const V2_JSON: &str = "application/vnd.kafka.v2+json";

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The HTTP status, or the REST proxy's five-digit refinement of it (40401, 40403, …).
    pub error_code: i32,
    /// What went wrong, for a person.
    pub message: String,
}

/// An error answer: a status and the proxy's error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with `status` and the proxy's `code`.
    pub fn new(status: StatusCode, code: i32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error_code: code,
                message: message.into(),
            },
        }
    }

    /// 400, code 400: malformed JSON or a request that makes no sense.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, 400, message)
    }

    /// 404 40401: no such topic.
    pub fn unknown_topic(topic: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Topic not found: '{topic}'."),
        )
    }

    /// 404 40402: no such partition.
    pub fn unknown_partition(topic: &str, partition: i64) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Partition not found: topic '{topic}' has no partition {partition}."),
        )
    }

    /// 404 40403: no such consumer instance (never created, deleted or expired).
    pub fn unknown_instance(group: &str, instance: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Consumer instance not found: '{instance}' in group '{group}'."),
        )
    }

    /// 415, code 415: a content type the route does not take.
    pub fn unsupported_media_type(got: &str, expected: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            format!("HTTP 415 Unsupported Media Type: got '{got}', expected {expected}"),
        )
    }

    /// 413, code 413: a body over `--max-request-bytes`.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            413,
            format!("Request body is larger than the limit of {limit} bytes (--max-request-bytes)"),
        )
    }

    /// 422 with the proxy's code: well-formed JSON that is not a valid request.
    pub fn unprocessable(code: i32, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 500 50002: the broker failed where the client did nothing wrong.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50002,
            format!("Kafka error: {}", message.into()),
        )
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        match &e {
            BrokerError::UnknownTopic(t) => ApiError::unknown_topic(t),
            BrokerError::UnknownPartition { topic, partition } => {
                ApiError::unknown_partition(topic, i64::from(*partition))
            }
            BrokerError::InvalidTopic { .. }
            | BrokerError::InvalidPartitions(_)
            | BrokerError::InvalidReplicationFactor(_)
            | BrokerError::InvalidConfig(_)
            | BrokerError::InvalidGroupId => ApiError::bad_request(e.to_string()),
            BrokerError::TopicExists(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, 40002, e.to_string())
            }
            BrokerError::MessageTooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, 413, e.to_string())
            }
            BrokerError::CorruptMessage(_) | BrokerError::InvalidRecord(_) => {
                ApiError::unprocessable(422, e.to_string())
            }
            BrokerError::UnknownMemberId(_)
            | BrokerError::IllegalGeneration { .. }
            | BrokerError::RebalanceInProgress
            | BrokerError::NonEmptyGroup(_) => {
                ApiError::new(StatusCode::CONFLICT, 40903, format!("Illegal state: {e}"))
            }
            BrokerError::NotLeader(_)
            | BrokerError::NotCoordinator { .. }
            | BrokerError::ShuttingDown
            | BrokerError::Timeout(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                50003,
                format!("Retriable Kafka error: {e}"),
            ),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.body.error_code, message = %self.body.message, "HTTP request failed");
        } else {
            tracing::debug!(status = %self.status, code = self.body.error_code, message = %self.body.message, "HTTP request refused");
        }
        let mut response = (self.status, axum::Json(self.body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(V2_JSON));
        response
    }
}

/// The error answers of v2 routes, for the OpenAPI document.
#[derive(IntoResponses)]
#[allow(dead_code)] // only its OpenAPI description is used
pub enum V2Errors {
    /// Malformed JSON or an invalid request.
    #[response(status = 400, content_type = "application/vnd.kafka.v2+json")]
    BadRequest(ErrorBody),
    /// Unknown topic (40401), partition (40402) or consumer instance (40403).
    #[response(status = 404, content_type = "application/vnd.kafka.v2+json")]
    NotFound(ErrorBody),
    /// The `Accept` header names a format the route cannot give (40601).
    #[response(status = 406, content_type = "application/vnd.kafka.v2+json")]
    NotAcceptable(ErrorBody),
    /// A consumer instance that exists already, or a state that forbids the request (409xx).
    #[response(status = 409, content_type = "application/vnd.kafka.v2+json")]
    Conflict(ErrorBody),
    /// The body is larger than `--max-request-bytes`.
    #[response(status = 413, content_type = "application/vnd.kafka.v2+json")]
    TooLarge(ErrorBody),
    /// The `Content-Type` is not one the route takes.
    #[response(status = 415, content_type = "application/vnd.kafka.v2+json")]
    UnsupportedMediaType(ErrorBody),
    /// Well-formed JSON that is not a valid request: bad base64 key (42201) or value (42202),
    /// a bad consumer config (42204).
    #[response(status = 422, content_type = "application/vnd.kafka.v2+json")]
    Unprocessable(ErrorBody),
    /// The broker failed (50002).
    #[response(status = 500, content_type = "application/vnd.kafka.v2+json")]
    Internal(ErrorBody),
    /// The broker cannot serve this now; retry (50003).
    #[response(status = 503, content_type = "application/vnd.kafka.v2+json")]
    Unavailable(ErrorBody),
}

/// The error answers of v3 routes (the same body; v3 answers are `application/json`).
#[derive(IntoResponses)]
#[allow(dead_code)] // only its OpenAPI description is used
pub enum V3Errors {
    /// Malformed JSON or an invalid request; 40002 for a topic that exists already.
    #[response(status = 400, content_type = "application/json")]
    BadRequest(ErrorBody),
    /// Unknown cluster, topic or partition.
    #[response(status = 404, content_type = "application/json")]
    NotFound(ErrorBody),
    /// The body is larger than `--max-request-bytes`.
    #[response(status = 413, content_type = "application/json")]
    TooLarge(ErrorBody),
    /// The `Content-Type` is not JSON.
    #[response(status = 415, content_type = "application/json")]
    UnsupportedMediaType(ErrorBody),
    /// Well-formed JSON that is not a valid record.
    #[response(status = 422, content_type = "application/json")]
    Unprocessable(ErrorBody),
    /// The broker failed.
    #[response(status = 500, content_type = "application/json")]
    Internal(ErrorBody),
    /// The broker cannot serve this now; retry.
    #[response(status = 503, content_type = "application/json")]
    Unavailable(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_get_the_proxys_codes() {
        let e: ApiError = BrokerError::UnknownTopic("t".into()).into();
        assert_eq!(
            (e.status, e.body.error_code),
            (StatusCode::NOT_FOUND, 40401)
        );
        let e: ApiError = BrokerError::UnknownPartition {
            topic: "t".into(),
            partition: 9,
        }
        .into();
        assert_eq!(
            (e.status, e.body.error_code),
            (StatusCode::NOT_FOUND, 40402)
        );
        let e: ApiError = BrokerError::TopicExists("t".into()).into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
