//! REST Proxy API v2: topics and partitions, and produce.
//!
//! Shapes follow the Confluent REST Proxy v2 byte for byte, so existing clients work: `GET
//! /topics` is a list of names, a topic has `name`, `configs` and `partitions` (each with its
//! `leader` and `replicas`; Strata keeps one copy in the object store, so the owner is the only
//! replica), and produce answers `{"key_schema_id": null, "value_schema_id": null, "offsets":
//! [...]}` with one entry per record, in request order.
//!
//! Produce takes `application/vnd.kafka.json.v2+json` (keys and values are any JSON, stored as
//! its text) and `application/vnd.kafka.binary.v2+json` (base64 keys and values). Topics are
//! created on first produce when the broker allows it (`--auto-create-topics`), as a Kafka
//! client's produce would.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::body::{content_type, parse_json, partition, read_limited};
use super::error::{ApiError, V2Errors};
use super::produce::{OutRecord, sequence};
use super::{HttpState, v2_json};
use crate::broker::Topic;

/// `Content-Type` of v2 produce with JSON keys and values.
pub const JSON_V2: &str = "application/vnd.kafka.json.v2+json";
/// `Content-Type` of v2 produce with base64 keys and values.
pub const BINARY_V2: &str = "application/vnd.kafka.binary.v2+json";

/// How keys and values are embedded in v2 requests and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Any JSON value; stored as its text.
    Json,
    /// A base64 string; stored as the bytes it encodes.
    Binary,
}

impl Format {
    /// The embedded format a produce content type names, if any.
    pub fn of_content_type(ct: &str) -> Option<Format> {
        match ct {
            JSON_V2 => Some(Format::Json),
            BINARY_V2 => Some(Format::Binary),
            _ => None,
        }
    }

    /// The bytes `v` stands for (`None` for JSON null). `code` is the proxy's error code
    /// for a bad one (42201 for keys, 42202 for values).
    pub fn decode(
        self,
        v: Option<&Value>,
        what: &str,
        code: i32,
    ) -> Result<Option<Bytes>, ApiError> {
        match (self, v) {
            (_, None | Some(Value::Null)) => Ok(None),
            (Format::Json, Some(v)) => Ok(Some(Bytes::from(v.to_string()))),
            (Format::Binary, Some(Value::String(s))) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(|b| Some(Bytes::from(b)))
                .map_err(|e| {
                    ApiError::unprocessable(code, format!("the {what} is not valid base64: {e}"))
                }),
            (Format::Binary, Some(_)) => Err(ApiError::unprocessable(
                code,
                format!("the {what} must be a base64 string in the binary format"),
            )),
        }
    }

    /// How stored bytes are shown: JSON as the value they hold (or, when they hold no JSON,
    /// as a string of their text), binary as base64.
    pub fn encode(self, b: Option<&Bytes>) -> Value {
        match (self, b) {
            (_, None) => Value::Null,
            (Format::Json, Some(b)) => serde_json::from_slice(b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
            (Format::Binary, Some(b)) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
        }
    }
}

/// A replica of a partition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    /// Node id of the broker.
    pub broker: i32,
    /// Whether it leads the partition.
    pub leader: bool,
    /// Whether it is in sync.
    pub in_sync: bool,
}

/// A partition: its leader (owner) and replicas.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: i32,
    /// Node id of the broker that owns it.
    pub leader: i32,
    /// Its replicas: the owner (the data itself lives in the object store).
    pub replicas: Vec<Replica>,
}

/// A topic with its configs and partitions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Effective configs, by name.
    pub configs: BTreeMap<String, String>,
    /// Its partitions.
    pub partitions: Vec<PartitionInfo>,
}

/// A partition's first and next offsets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionOffsets {
    /// The log start offset.
    pub beginning_offset: i64,
    /// The high watermark: the offset the next record will get.
    pub end_offset: i64,
}

/// One record of a v2 produce request (JSON format: key and value are any JSON).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProduceRecord {
    /// The key: decides the partition when none is given.
    #[serde(default)]
    pub key: Option<Value>,
    /// The value; null is a tombstone.
    #[serde(default)]
    pub value: Option<Value>,
    /// The partition to write to.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub partition: Option<i32>,
}

/// A v2 produce request with JSON keys and values.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProduceRequest {
    /// The records, written in this order.
    pub records: Vec<ProduceRecord>,
}

/// One record of a v2 binary produce request.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // describes the binary body for the OpenAPI document
pub struct BinaryProduceRecord {
    /// The key, base64.
    #[schema(format = Byte, pattern = "^[A-Za-z0-9+/]*={0,2}$")]
    pub key: Option<String>,
    /// The value, base64; null is a tombstone.
    #[schema(format = Byte, pattern = "^[A-Za-z0-9+/]*={0,2}$")]
    pub value: Option<String>,
    /// The partition to write to.
    #[schema(minimum = 0)]
    pub partition: Option<i32>,
}

/// A v2 produce request with base64 keys and values.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // describes the binary body for the OpenAPI document
pub struct BinaryProduceRequest {
    /// The records, written in this order.
    pub records: Vec<BinaryProduceRecord>,
}

/// Where one produced record went.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordOffset {
    /// Its partition.
    pub partition: Option<i32>,
    /// Its offset, once durable; null when it failed.
    pub offset: Option<i64>,
    /// The proxy's error code when it failed.
    pub error_code: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The answer to a v2 produce.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProduceResponse {
    /// Always null (no schema registry).
    pub key_schema_id: Option<i32>,
    /// Always null (no schema registry).
    pub value_schema_id: Option<i32>,
    /// One entry per record, in request order.
    pub offsets: Vec<RecordOffset>,
}

/// The topic `name`, never created by a read.
async fn known_topic(state: &HttpState, name: &str) -> Result<std::sync::Arc<Topic>, ApiError> {
    Ok(state.broker.topic(name, false).await?)
}

fn partition_info(state: &HttpState, topic: &Topic, p: i32) -> Result<PartitionInfo, ApiError> {
    let tp = topic.partition(p)?;
    let leader = state.broker.membership().leader(tp);
    Ok(PartitionInfo {
        partition: p,
        leader,
        replicas: vec![Replica {
            broker: leader,
            leader: true,
            in_sync: true,
        }],
    })
}

/// Lists topic names.
#[utoipa::path(get, path = "/topics", tag = "v2",
    responses((status = 200, description = "Topic names", body = Vec<String>, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn list_topics(State(state): State<HttpState>) -> Result<Response, ApiError> {
    state.broker.sync_topics().await?;
    let names: Vec<String> = state
        .broker
        .topics()
        .iter()
        .map(|t| t.meta.name.clone())
        .collect();
    Ok(v2_json(StatusCode::OK, &names))
}

/// A topic's configs and partitions.
#[utoipa::path(get, path = "/topics/{topic}", tag = "v2",
    params(("topic" = String, Path, description = "Topic name")),
    responses((status = 200, body = TopicInfo, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn get_topic(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let topic = known_topic(&state, &name).await?;
    let configs = state
        .broker
        .describe_configs(&name)
        .await?
        .into_iter()
        .map(|c| (c.name, c.value))
        .collect();
    let partitions = (0..topic.meta.partitions)
        .map(|p| partition_info(&state, &topic, p))
        .collect::<Result<_, _>>()?;
    Ok(v2_json(
        StatusCode::OK,
        &TopicInfo {
            name: topic.meta.name.clone(),
            configs,
            partitions,
        },
    ))
}

/// A topic's partitions.
#[utoipa::path(get, path = "/topics/{topic}/partitions", tag = "v2",
    params(("topic" = String, Path, description = "Topic name")),
    responses((status = 200, body = Vec<PartitionInfo>, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn list_partitions(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let topic = known_topic(&state, &name).await?;
    let partitions: Vec<PartitionInfo> = (0..topic.meta.partitions)
        .map(|p| partition_info(&state, &topic, p))
        .collect::<Result<_, _>>()?;
    Ok(v2_json(StatusCode::OK, &partitions))
}

/// One partition.
#[utoipa::path(get, path = "/topics/{topic}/partitions/{partition}", tag = "v2",
    params(("topic" = String, Path, description = "Topic name"), ("partition" = i32, Path, description = "Partition number", minimum = 0)),
    responses((status = 200, body = PartitionInfo, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn get_partition(
    State(state): State<HttpState>,
    Path((name, p)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let topic = known_topic(&state, &name).await?;
    let p = partition(&name, &p)?;
    Ok(v2_json(StatusCode::OK, &partition_info(&state, &topic, p)?))
}

/// A partition's beginning and end offsets.
#[utoipa::path(get, path = "/topics/{topic}/partitions/{partition}/offsets", tag = "v2",
    params(("topic" = String, Path, description = "Topic name"), ("partition" = i32, Path, description = "Partition number", minimum = 0)),
    responses((status = 200, body = PartitionOffsets, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn partition_offsets(
    State(state): State<HttpState>,
    Path((name, p)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let topic = known_topic(&state, &name).await?;
    let p = partition(&name, &p)?;
    let (start, end) = state.broker.offsets(&topic, p).await?;
    Ok(v2_json(
        StatusCode::OK,
        &PartitionOffsets {
            beginning_offset: start.0,
            end_offset: end.0,
        },
    ))
}

/// Produces records to a topic: each to its `partition`, else its key's partition, else one
/// partition for all unkeyed records of the request.
#[utoipa::path(post, path = "/topics/{topic}", tag = "v2",
    params(("topic" = String, Path, description = "Topic name", pattern = "^[a-zA-Z0-9._-]{1,200}$")),
    request_body(content(
        (ProduceRequest = "application/vnd.kafka.json.v2+json"),
        (BinaryProduceRequest = "application/vnd.kafka.binary.v2+json"))),
    responses((status = 200, body = ProduceResponse, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn produce_to_topic(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    produce(state, name, None, headers, body).await
}

/// Produces records to one partition.
#[utoipa::path(post, path = "/topics/{topic}/partitions/{partition}", tag = "v2",
    params(("topic" = String, Path, description = "Topic name", pattern = "^[a-zA-Z0-9._-]{1,200}$"), ("partition" = i32, Path, description = "Partition number", minimum = 0)),
    request_body(content(
        (ProduceRequest = "application/vnd.kafka.json.v2+json"),
        (BinaryProduceRequest = "application/vnd.kafka.binary.v2+json"))),
    responses((status = 200, body = ProduceResponse, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn produce_to_partition(
    State(state): State<HttpState>,
    Path((name, p)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = partition(&name, &p)?;
    produce(state, name, Some(p), headers, body).await
}

async fn produce(
    state: HttpState,
    name: String,
    partition: Option<i32>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ct = content_type(&headers);
    let format = Format::of_content_type(&ct).ok_or_else(|| {
        ApiError::unsupported_media_type(&ct, &format!("{JSON_V2} or {BINARY_V2}"))
    })?;
    let bytes = read_limited(&headers, body, state.max_request_bytes).await?;
    let request: ProduceRequest = parse_json(&bytes)?;
    let topic = state.broker.topic(&name, true).await?;
    if let Some(p) = partition {
        topic.partition(p)?;
    }
    let records = request
        .records
        .iter()
        .map(|r| {
            Ok(OutRecord {
                partition: partition.or(r.partition),
                key: format.decode(r.key.as_ref(), "key", 42201)?,
                value: format.decode(r.value.as_ref(), "value", 42202)?,
                headers: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let placed = sequence(&state.broker, &topic, records).await?.await;
    let offsets = placed
        .into_iter()
        .map(|p| match p.offset {
            Ok(offset) => RecordOffset {
                partition: Some(p.partition),
                offset: Some(offset),
                error_code: None,
                error: None,
            },
            Err(e) => RecordOffset {
                partition: Some(p.partition),
                offset: None,
                error_code: Some(e.body.error_code),
                error: Some(e.body.message),
            },
        })
        .collect();
    Ok(v2_json(
        StatusCode::OK,
        &ProduceResponse {
            key_schema_id: None,
            value_schema_id: None,
            offsets,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        let v = serde_json::json!({"a": [1, 2]});
        let b = Format::Json
            .decode(Some(&v), "value", 42202)
            .unwrap()
            .unwrap();
        assert_eq!(Format::Json.encode(Some(&b)), v);
        let b64 = Value::String("aGVsbG8=".into());
        let b = Format::Binary
            .decode(Some(&b64), "key", 42201)
            .unwrap()
            .unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(Format::Binary.encode(Some(&b)), b64);
        let bad = Value::String("%%%".into());
        assert_eq!(
            Format::Binary
                .decode(Some(&bad), "key", 42201)
                .unwrap_err()
                .body
                .error_code,
            42201
        );
        assert_eq!(
            Format::Json
                .decode(Some(&Value::Null), "value", 42202)
                .unwrap(),
            None
        );
        // Text that is not JSON reads back as a string.
        assert_eq!(
            Format::Json.encode(Some(&Bytes::from_static(b"plain"))),
            Value::String("plain".into())
        );
    }
}
