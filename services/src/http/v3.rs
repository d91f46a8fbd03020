//! REST Proxy API v3: the cluster, topic admin, and produce (one record, or a stream).
//!
//! The cluster is `strata` (the cluster id Kafka metadata reports). Resources carry the
//! proxy's `kind` and `metadata.self` links, built from the `Host` the client used.
//!
//! `POST /v3/clusters/strata/topics/{topic}/records` takes one JSON record (`partition_id`,
//! `key` and `value` as `{"type": "JSON"|"BINARY"|"STRING", "data": …}`, `headers` with base64
//! values) and answers once it is durable (`acks=all`). Sent without a `Content-Length`
//! (`Transfer-Encoding: chunked`), the body is a **stream** of records, one JSON object per
//! line, answered by a stream of results, one JSON object per line, in the same order: the
//! records that arrive together are sequenced together as they arrive (so the log follows the
//! order of the stream), and each result is written as soon as its record is durable while
//! later records keep arriving. A body with a `Content-Length` and several records is answered
//! the same way, all at once. A bad record gets an error line (`error_code`, `message`) and
//! the stream goes on.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::body::{content_type, is_json, parse_json, read_limited};
use super::error::{ApiError, ErrorBody, V3Errors};
use super::produce::{OutRecord, sequence};
use super::{HttpState, origin};
use crate::broker::{BrokerError, Topic};

/// The cluster id, as Kafka metadata reports it.
pub const CLUSTER_ID: &str = "strata";

/// Records read from a stream are sequenced in groups of at most about this many bytes.
const GROUP_BYTES: usize = 1 << 20;

/// Groups of a stream sequenced and not yet answered; reading the request waits beyond it.
const PIPELINE_DEPTH: usize = 64;

/// An error answered as v3 answers errors: `application/json`, `error_code` the status
/// (40002 kept for a topic that exists).
#[derive(Debug)]
pub struct V3Error(ApiError);

impl From<ApiError> for V3Error {
    fn from(e: ApiError) -> V3Error {
        V3Error(e)
    }
}

impl From<BrokerError> for V3Error {
    fn from(e: BrokerError) -> V3Error {
        V3Error(e.into())
    }
}

fn v3_body(e: ApiError) -> ErrorBody {
    ErrorBody {
        error_code: if e.body.error_code == 40002 {
            40002
        } else {
            i32::from(e.status.as_u16())
        },
        message: e.body.message,
    }
}

impl IntoResponse for V3Error {
    fn into_response(self) -> Response {
        let status = self.0.status;
        let mut response = self.0.clone().into_response();
        *response.body_mut() = Body::from(serde_json::to_vec(&v3_body(self.0)).unwrap_or_default());
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn v3_json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}

/// A link to a related resource.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Related {
    /// Its URL.
    pub related: String,
}

/// A resource's own link and name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResourceMetadata {
    /// Its URL.
    #[serde(rename = "self")]
    pub self_: String,
    /// Its Confluent resource name.
    pub resource_name: Option<String>,
}

/// A list's own link.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListMetadata {
    /// Its URL.
    #[serde(rename = "self")]
    pub self_: String,
    /// The next page: always null (one page).
    pub next: Option<String>,
}

/// The cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    /// `KafkaCluster`.
    pub kind: String,
    /// Its link.
    pub metadata: ResourceMetadata,
    /// `strata`.
    pub cluster_id: String,
    /// Its topics.
    pub topics: Related,
}

/// The clusters this server fronts: one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterList {
    /// `KafkaClusterList`.
    pub kind: String,
    /// Its link.
    pub metadata: ListMetadata,
    /// The cluster.
    pub data: Vec<Cluster>,
}

/// A topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicData {
    /// `KafkaTopic`.
    pub kind: String,
    /// Its link.
    pub metadata: ResourceMetadata,
    /// `strata`.
    pub cluster_id: String,
    /// Its name.
    pub topic_name: String,
    /// Always false.
    pub is_internal: bool,
    /// 1: one copy, in the object store.
    pub replication_factor: i32,
    /// Its partition count.
    pub partitions_count: i32,
    /// Its partitions.
    pub partitions: Related,
    /// Its configs.
    pub configs: Related,
}

/// Topics.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    /// `KafkaTopicList`.
    pub kind: String,
    /// Its link.
    pub metadata: ListMetadata,
    /// The topics.
    pub data: Vec<TopicData>,
}

/// A config to set on a new topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigValue {
    /// Config name.
    pub name: String,
    /// Its value.
    pub value: Option<String>,
}

/// Body of a topic creation.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTopic {
    /// The name.
    #[schema(pattern = "^[a-zA-Z0-9._-]{1,200}$")]
    pub topic_name: String,
    /// Partitions (default: the broker's `--default-partitions`).
    #[schema(minimum = 1, maximum = 64)]
    pub partitions_count: Option<i32>,
    /// Accepted and ignored: the object store keeps the data.
    #[allow(dead_code)]
    pub replication_factor: Option<i32>,
    /// Topic configs.
    #[serde(default)]
    pub configs: Vec<ConfigValue>,
    /// Only check that the topic could be created.
    #[serde(default)]
    pub validate_only: bool,
}

/// A partition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionData {
    /// `KafkaPartition`.
    pub kind: String,
    /// Its link.
    pub metadata: ResourceMetadata,
    /// `strata`.
    pub cluster_id: String,
    /// Topic name.
    pub topic_name: String,
    /// Partition number.
    pub partition_id: i32,
    /// Node id of the broker that owns it.
    pub leader_id: i32,
}

/// A topic's partitions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionList {
    /// `KafkaPartitionList`.
    pub kind: String,
    /// Its link.
    pub metadata: ListMetadata,
    /// The partitions.
    pub data: Vec<PartitionData>,
}

/// A topic config.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicConfigData {
    /// `KafkaTopicConfig`.
    pub kind: String,
    /// Its link.
    pub metadata: ResourceMetadata,
    /// `strata`.
    pub cluster_id: String,
    /// Topic name.
    pub topic_name: String,
    /// Config name.
    pub name: String,
    /// Effective value.
    pub value: String,
    /// Whether it is the broker default.
    pub is_default: bool,
    /// Always false.
    pub is_read_only: bool,
    /// Always false.
    pub is_sensitive: bool,
    /// `DYNAMIC_TOPIC_CONFIG` when set on the topic, else `DEFAULT_CONFIG`.
    pub source: String,
}

/// A topic's configs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicConfigList {
    /// `KafkaTopicConfigList`.
    pub kind: String,
    /// Its link.
    pub metadata: ListMetadata,
    /// The configs.
    pub data: Vec<TopicConfigData>,
}

/// How a key or value is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    /// Any JSON, stored as its text.
    Json,
    /// A base64 string, stored as the bytes it encodes.
    Binary,
    /// A string, stored as its UTF-8 bytes.
    String,
}

/// A key or value of a v3 record.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RecordData {
    /// How `data` is given (default JSON).
    #[serde(rename = "type")]
    pub kind: Option<DataType>,
    /// The data.
    #[schema(value_type = Value)]
    pub data: Value,
}

/// A header of a v3 record.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RecordHeader {
    /// Header name.
    pub name: String,
    /// Header value, base64.
    #[schema(format = Byte, pattern = "^[A-Za-z0-9+/]*={0,2}$")]
    pub value: Option<String>,
}

/// One v3 record to produce.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProduceRecordV3 {
    /// The partition; else the key's partition, else any.
    #[schema(minimum = 0)]
    pub partition_id: Option<i32>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<RecordHeader>,
    /// The key.
    pub key: Option<RecordData>,
    /// The value; absent or null is a tombstone.
    pub value: Option<RecordData>,
}

/// The type and size of a produced key or value.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DataInfo {
    /// How it was given.
    #[serde(rename = "type")]
    pub kind: DataType,
    /// Its size in bytes.
    pub size: i64,
}

/// Where a v3 record went.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProduceResultV3 {
    /// 200.
    pub error_code: i32,
    /// `strata`.
    pub cluster_id: String,
    /// Topic name.
    pub topic_name: String,
    /// Partition.
    pub partition_id: i32,
    /// Offset.
    pub offset: i64,
    /// The record's timestamp (RFC 3339).
    pub timestamp: String,
    /// The key's type and size, if it had one.
    pub key: Option<DataInfo>,
    /// The value's type and size, if it had one.
    pub value: Option<DataInfo>,
}

fn check_cluster(id: &str) -> Result<(), ApiError> {
    if id == CLUSTER_ID {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            404,
            format!("Cluster '{id}' not found: this server fronts cluster '{CLUSTER_ID}'."),
        ))
    }
}

fn meta(url: String, crn: String) -> ResourceMetadata {
    ResourceMetadata {
        self_: url,
        resource_name: Some(crn),
    }
}

fn list_meta(url: String) -> ListMetadata {
    ListMetadata {
        self_: url,
        next: None,
    }
}

fn cluster_url(base: &str) -> String {
    format!("{base}/v3/clusters/{CLUSTER_ID}")
}

fn cluster(base: &str) -> Cluster {
    Cluster {
        kind: "KafkaCluster".into(),
        metadata: meta(cluster_url(base), format!("crn:///kafka={CLUSTER_ID}")),
        cluster_id: CLUSTER_ID.into(),
        topics: Related {
            related: format!("{}/topics", cluster_url(base)),
        },
    }
}

fn topic_data(base: &str, topic: &Topic) -> TopicData {
    let url = format!("{}/topics/{}", cluster_url(base), topic.meta.name);
    TopicData {
        kind: "KafkaTopic".into(),
        metadata: meta(
            url.clone(),
            format!("crn:///kafka={CLUSTER_ID}/topic={}", topic.meta.name),
        ),
        cluster_id: CLUSTER_ID.into(),
        topic_name: topic.meta.name.clone(),
        is_internal: false,
        replication_factor: 1,
        partitions_count: topic.meta.partitions,
        partitions: Related {
            related: format!("{url}/partitions"),
        },
        configs: Related {
            related: format!("{url}/configs"),
        },
    }
}

/// The clusters: one, `strata`.
#[utoipa::path(get, path = "/v3/clusters", tag = "v3",
    responses((status = 200, body = ClusterList, content_type = "application/json"), V3Errors))]
pub async fn list_clusters(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let base = origin(&state, &headers);
    v3_json(
        StatusCode::OK,
        &ClusterList {
            kind: "KafkaClusterList".into(),
            metadata: list_meta(format!("{base}/v3/clusters")),
            data: vec![cluster(&base)],
        },
    )
}

/// The cluster.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}", tag = "v3",
    params(("cluster_id" = String, Path, description = "Cluster id (`strata`)")),
    responses((status = 200, body = Cluster, content_type = "application/json"), V3Errors))]
pub async fn get_cluster(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V3Error> {
    check_cluster(&id)?;
    Ok(v3_json(StatusCode::OK, &cluster(&origin(&state, &headers))))
}

/// The cluster's topics.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}/topics", tag = "v3",
    params(("cluster_id" = String, Path, description = "Cluster id (`strata`)")),
    responses((status = 200, body = TopicList, content_type = "application/json"), V3Errors))]
pub async fn list_topics(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V3Error> {
    check_cluster(&id)?;
    state.broker.sync_topics().await?;
    let base = origin(&state, &headers);
    let data = state
        .broker
        .topics()
        .iter()
        .map(|t| topic_data(&base, t))
        .collect();
    Ok(v3_json(
        StatusCode::OK,
        &TopicList {
            kind: "KafkaTopicList".into(),
            metadata: list_meta(format!("{}/topics", cluster_url(&base))),
            data,
        },
    ))
}

/// Creates a topic.
#[utoipa::path(post, path = "/v3/clusters/{cluster_id}/topics", tag = "v3",
    params(("cluster_id" = String, Path, description = "Cluster id (`strata`)")),
    request_body(content = CreateTopic, content_type = "application/json"),
    responses((status = 201, body = TopicData, content_type = "application/json"), V3Errors))]
pub async fn create_topic(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V3Error> {
    check_cluster(&id)?;
    let req: CreateTopic = super::body::json(&headers, body, state.max_request_bytes).await?;
    let configs = req
        .configs
        .into_iter()
        .filter_map(|c| c.value.map(|v| (c.name, v)))
        .collect();
    let partitions = req
        .partitions_count
        .unwrap_or(state.broker.config().default_partitions);
    let topic = state
        .broker
        .create_topic(&req.topic_name, partitions, &configs, req.validate_only)
        .await?;
    if !req.validate_only {
        tracing::info!(
            topic = req.topic_name,
            partitions,
            "topic created over HTTP"
        );
    }
    Ok(v3_json(
        StatusCode::CREATED,
        &topic_data(&origin(&state, &headers), &topic),
    ))
}

/// One topic.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}/topics/{topic}", tag = "v3",
    params(("cluster_id" = String, Path, description = "Cluster id (`strata`)"), ("topic" = String, Path, description = "Topic name")),
    responses((status = 200, body = TopicData, content_type = "application/json"), V3Errors))]
pub async fn get_topic(
    State(state): State<HttpState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, V3Error> {
    check_cluster(&id)?;
    let topic = state.broker.topic(&name, false).await?;
    Ok(v3_json(
        StatusCode::OK,
        &topic_data(&origin(&state, &headers), &topic),
    ))
}

/// Deletes a topic.
#[utoipa::path(delete, path = "/v3/clusters/{cluster_id}/topics/{topic}", tag = "v3",
    params(("cluster_id" = String, Path, description = "Cluster id (`strata`)"), ("topic" = String, Path, description = "Topic name")),
    responses((status = 204, description = "Deleted"), V3Errors))]
pub async fn delete_topic(
    State(state): State<HttpState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, V3Error> {
    check_cluster(&id)?;
    state.broker.topic(&name, false).await?;
    state.broker.delete_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A topic's partitions.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}/topics/{topic}/partitions", tag = "v3",
    params(("cluster_id" = String, Path, description = "Cluster id (`strata`)"), ("topic" = String, Path, description = "Topic name")),
    responses((status = 200, body = PartitionList, content_type = "application/json"), V3Errors))]
pub async fn list_partitions(
    State(state): State<HttpState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, V3Error> {
    check_cluster(&id)?;
    let topic = state.broker.topic(&name, false).await?;
    let base = origin(&state, &headers);
    let url = format!("{}/topics/{name}/partitions", cluster_url(&base));
    let mut data = Vec::new();
    for p in 0..topic.meta.partitions {
        let tp = topic.partition(p)?;
        data.push(PartitionData {
            kind: "KafkaPartition".into(),
            metadata: meta(
                format!("{url}/{p}"),
                format!("crn:///kafka={CLUSTER_ID}/topic={name}/partition={p}"),
            ),
            cluster_id: CLUSTER_ID.into(),
            topic_name: name.clone(),
            partition_id: p,
            leader_id: state.broker.membership().leader(tp),
        });
    }
    Ok(v3_json(
        StatusCode::OK,
        &PartitionList {
            kind: "KafkaPartitionList".into(),
            metadata: list_meta(url),
            data,
        },
    ))
}

/// A topic's configs, with their effective values.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}/topics/{topic}/configs", tag = "v3",
    params(("cluster_id" = String, Path, description = "Cluster id (`strata`)"), ("topic" = String, Path, description = "Topic name")),
    responses((status = 200, body = TopicConfigList, content_type = "application/json"), V3Errors))]
pub async fn list_configs(
    State(state): State<HttpState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, V3Error> {
    check_cluster(&id)?;
    let entries = state.broker.describe_configs(&name).await?;
    let base = origin(&state, &headers);
    let url = format!("{}/topics/{name}/configs", cluster_url(&base));
    let data = entries
        .into_iter()
        .map(|c| TopicConfigData {
            kind: "KafkaTopicConfig".into(),
            metadata: meta(
                format!("{url}/{}", c.name),
                format!("crn:///kafka={CLUSTER_ID}/topic={name}/config={}", c.name),
            ),
            cluster_id: CLUSTER_ID.into(),
            topic_name: name.clone(),
            is_default: !c.is_set,
            source: if c.is_set {
                "DYNAMIC_TOPIC_CONFIG"
            } else {
                "DEFAULT_CONFIG"
            }
            .into(),
            name: c.name,
            value: c.value,
            is_read_only: false,
            is_sensitive: false,
        })
        .collect();
    Ok(v3_json(
        StatusCode::OK,
        &TopicConfigList {
            kind: "KafkaTopicConfigList".into(),
            metadata: list_meta(url),
            data,
        },
    ))
}

/// The bytes of a v3 key or value, and what to report of it.
fn record_data(
    d: Option<RecordData>,
    what: &str,
) -> Result<(Option<Bytes>, Option<DataType>), ApiError> {
    let Some(d) = d else {
        return Ok((None, None));
    };
    let kind = d.kind.unwrap_or(DataType::Json);
    let bytes = match (kind, d.data) {
        (_, Value::Null) => return Ok((None, None)),
        (DataType::Json, v) => Bytes::from(v.to_string()),
        (DataType::String, Value::String(s)) => Bytes::from(s),
        (DataType::Binary, Value::String(s)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| {
                    ApiError::unprocessable(422, format!("the {what} is not valid base64: {e}"))
                })?,
        ),
        (_, _) => {
            return Err(ApiError::unprocessable(
                422,
                format!("the {what} data must be a string for types STRING and BINARY"),
            ));
        }
    };
    Ok((Some(bytes), Some(kind)))
}

/// A record ready to send, with what its result reports of its key and value.
struct Prepared {
    record: OutRecord,
    key: Option<DataInfo>,
    value: Option<DataInfo>,
}

/// Checks and converts one v3 record.
fn prepare(topic: &Topic, v: Value) -> Result<Prepared, ApiError> {
    let r: ProduceRecordV3 =
        serde_json::from_value(v).map_err(|e| ApiError::unprocessable(422, e.to_string()))?;
    if let Some(p) = r.partition_id {
        topic.partition(p)?;
    }
    let (key, key_kind) = record_data(r.key, "key")?;
    let (value, value_kind) = record_data(r.value, "value")?;
    let headers = r
        .headers
        .into_iter()
        .map(|h| {
            let v = h
                .value
                .map(|v| base64::engine::general_purpose::STANDARD.decode(v))
                .transpose()
                .map_err(|e| {
                    ApiError::unprocessable(
                        422,
                        format!("header '{}' is not valid base64: {e}", h.name),
                    )
                })?;
            Ok((h.name, v.map(Bytes::from)))
        })
        .collect::<Result<_, ApiError>>()?;
    let info = |b: &Option<Bytes>, k: Option<DataType>| {
        k.map(|kind| DataInfo {
            kind,
            size: b.as_ref().map_or(0, |b| b.len() as i64),
        })
    };
    Ok(Prepared {
        key: info(&key, key_kind),
        value: info(&value, value_kind),
        record: OutRecord {
            partition: r.partition_id,
            key,
            value,
            headers,
        },
    })
}

type Results = Pin<Box<dyn Future<Output = Vec<Result<ProduceResultV3, ApiError>>> + Send>>;

/// Sequences one group of records now; the returned future yields their results in order.
async fn sequence_group(
    state: &HttpState,
    topic: &Arc<Topic>,
    items: Vec<Result<Prepared, ApiError>>,
) -> Results {
    let mut infos = Vec::with_capacity(items.len());
    let mut records = Vec::new();
    for item in items {
        match item {
            Ok(p) => {
                infos.push(Ok((p.key, p.value)));
                records.push(p.record);
            }
            Err(e) => infos.push(Err(e)),
        }
    }
    let name = topic.meta.name.clone();
    let sent = if records.is_empty() {
        Ok(None)
    } else {
        sequence(&state.broker, topic, records).await.map(Some)
    };
    Box::pin(async move {
        let placed = match sent {
            Ok(Some(wait)) => Ok(wait.await),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        let mut placed = placed.map(|p| p.into_iter());
        infos
            .into_iter()
            .map(|info| {
                let (key, value) = info?;
                let p = match &mut placed {
                    Ok(it) => it
                        .next()
                        .ok_or_else(|| ApiError::internal("record was not sent"))?,
                    Err(e) => return Err(e.clone()),
                };
                let offset = p.offset?;
                Ok(ProduceResultV3 {
                    error_code: 200,
                    cluster_id: CLUSTER_ID.into(),
                    topic_name: name.clone(),
                    partition_id: p.partition,
                    offset,
                    timestamp: chrono::DateTime::from_timestamp_millis(p.timestamp)
                        .unwrap_or_default()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    key,
                    value,
                })
            })
            .collect()
    })
}

/// One result line of a stream.
fn line(result: Result<ProduceResultV3, ApiError>) -> Vec<u8> {
    let mut out = match result {
        Ok(r) => serde_json::to_vec(&r),
        Err(e) => serde_json::to_vec(&v3_body(e)),
    }
    .unwrap_or_default();
    out.push(b'\n');
    out
}

/// Produces a record (or, streamed, many; see the module docs).
#[utoipa::path(post, path = "/v3/clusters/{cluster_id}/topics/{topic}/records", tag = "v3",
    params(("cluster_id" = String, Path, description = "Cluster id (`strata`)"),
        ("topic" = String, Path, description = "Topic name", pattern = "^[a-zA-Z0-9._-]{1,200}$")),
    request_body(content = ProduceRecordV3, content_type = "application/json"),
    responses((status = 200, body = ProduceResultV3, content_type = "application/json"), V3Errors))]
pub async fn produce_records(
    State(state): State<HttpState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V3Error> {
    check_cluster(&id)?;
    let ct = content_type(&headers);
    if !is_json(&ct) {
        return Err(ApiError::unsupported_media_type(&ct, "application/json").into());
    }
    if !headers.contains_key(header::CONTENT_LENGTH) {
        let topic = state.broker.topic(&name, true).await?;
        return Ok(stream(state, topic, body));
    }
    let bytes = read_limited(&headers, body, state.max_request_bytes).await?;
    let values = serde_json::Deserializer::from_slice(&bytes)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON: {e}")))?;
    if values.is_empty() {
        // An empty body: parse it for the proxy's message.
        return Err(parse_json::<Value>(&bytes)
            .err()
            .unwrap_or_else(|| ApiError::bad_request("no record"))
            .into());
    }
    let topic = state.broker.topic(&name, true).await?;
    let single = values.len() == 1;
    let items = values
        .into_iter()
        .map(|v| prepare(&topic, v))
        .collect::<Vec<_>>();
    if single && let Some(Err(e)) = items.first() {
        return Err(e.clone().into());
    }
    let results = sequence_group(&state, &topic, items).await.await;
    if single {
        return match results.into_iter().next() {
            Some(Ok(r)) => Ok(v3_json(StatusCode::OK, &r)),
            Some(Err(e)) => Err(e.into()),
            None => Err(ApiError::internal("record was not sent").into()),
        };
    }
    let body: Vec<u8> = results.into_iter().flat_map(line).collect();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Answers a streamed produce: a task reads and sequences records as they arrive, and the
/// response body writes each group's results, in order, once they are durable.
fn stream(state: HttpState, topic: Arc<Topic>, body: Body) -> Response {
    let (tx, rx) = mpsc::channel::<Results>(PIPELINE_DEPTH);
    tokio::spawn(read_stream(state, topic, body, tx));
    let out = futures::stream::unfold(rx, |mut rx| async move {
        let results = rx.recv().await?;
        let bytes: Vec<u8> = results.await.into_iter().flat_map(line).collect();
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(out),
    )
        .into_response()
}

/// Reads newline-delimited records from `body` and sequences them group by group.
async fn read_stream(state: HttpState, topic: Arc<Topic>, body: Body, tx: mpsc::Sender<Results>) {
    let limit = state.max_request_bytes;
    let mut data = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut records = 0u64;
    loop {
        // Wait for data, then take whatever else has already arrived, up to a group's worth.
        let mut eof = false;
        match data.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => {
                tracing::debug!(topic = topic.meta.name, error = %e, "streamed produce: request body ended early");
                eof = true;
            }
            None => eof = true,
        }
        while !eof && buf.len() < GROUP_BYTES {
            match data.next().now_or_never() {
                Some(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
                Some(Some(Err(_)) | None) => eof = true,
                None => break,
            }
        }
        let mut lines = Vec::new();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            lines.push(buf.split_to(pos + 1).freeze());
        }
        if eof && !buf.is_empty() {
            lines.push(buf.split().freeze());
        }
        let mut items: Vec<Result<Prepared, ApiError>> = lines
            .iter()
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| parse_json::<Value>(l).and_then(|v| prepare(&topic, v)))
            .collect();
        let too_long = buf.len() > limit;
        if too_long {
            items.push(Err(ApiError::too_large(limit)));
        }
        records += items.len() as u64;
        if !items.is_empty() {
            let results = sequence_group(&state, &topic, items).await;
            if tx.send(results).await.is_err() {
                tracing::debug!(
                    topic = topic.meta.name,
                    "streamed produce: client went away"
                );
                return;
            }
        }
        if eof || too_long {
            tracing::debug!(topic = topic.meta.name, records, "streamed produce ended");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_data_types() {
        let d = |kind, data| {
            Some(RecordData {
                kind: Some(kind),
                data,
            })
        };
        let (b, k) = record_data(d(DataType::Binary, Value::String("aGk=".into())), "key").unwrap();
        assert_eq!(
            (b.as_deref(), k),
            (Some(&b"hi"[..]), Some(DataType::Binary))
        );
        let (b, _) = record_data(d(DataType::String, Value::String("hi".into())), "key").unwrap();
        assert_eq!(b.as_deref(), Some(&b"hi"[..]));
        let (b, _) = record_data(d(DataType::Json, serde_json::json!({"a": 1})), "value").unwrap();
        assert_eq!(b.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert!(record_data(d(DataType::Binary, Value::Bool(true)), "key").is_err());
        assert_eq!(record_data(None, "key").unwrap(), (None, None));
    }

    #[test]
    fn v3_errors_use_the_status_as_code() {
        assert_eq!(v3_body(ApiError::unknown_topic("t")).error_code, 404);
        assert_eq!(
            v3_body(ApiError::new(StatusCode::BAD_REQUEST, 40002, "exists")).error_code,
            40002
        );
    }
}
