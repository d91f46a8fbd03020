//! REST Proxy API v2 consumer instances: server-side consumers that HTTP clients drive.
//!
//! `POST /consumers/{group}` makes an instance; the client then subscribes it to topics (or
//! assigns it partitions), reads records with `GET …/records` (a long poll, bounded by
//! [`MAX_FETCH_WAIT`]), commits, seeks, and deletes it when done. An instance is state held
//! here, in the HTTP front end: the partitions it reads and the next offset of each.
//!
//! - **Subscriptions** are shared among the REST instances of a group that subscribe to a
//!   topic: partition `p` of a topic goes to the `p % n`-th of its `n` subscribers (by
//!   instance id). The share is worked out at every read, so instances joining or leaving
//!   move partitions at their next poll; a partition an instance newly gets starts at the
//!   group's committed offset. REST instances do not join the group coordinator's
//!   membership: a group is read either by REST instances or by Kafka consumers, not both
//!   at once (a commit while Kafka members hold the group is refused with 40903).
//! - **Committed offsets** go through the broker's group coordinator into the catalog, the
//!   same place Kafka consumers commit to, so kcat, librdkafka and `strata group describe`
//!   see them and a Kafka consumer of the group resumes where a REST instance committed.
//!   As in the proxy, an explicit commit names the last offset *consumed* and the group
//!   resumes after it; a commit with no body commits every position read so far.
//! - **Starting positions**: the group's committed offset, else `auto.offset.reset`
//!   (`earliest` or `latest`, the default), also when a position falls out of the log.
//! - **Auto-commit** (`auto.commit.enable`, on by default as in Kafka) commits what a read
//!   returned at the instance's next read and when it is deleted: at-least-once.
//! - **Bounded memory**: an instance idle for [`INSTANCE_IDLE`] is dropped (its next request
//!   gets 404 40403), and at most [`MAX_INSTANCES`] exist at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_storage::Offset;
use strata_storage::catalog::CommittedOffset;
use utoipa::ToSchema;

use super::body::{json, optional_json, query_u64};
use super::error::{ApiError, V2Errors};
use super::v2::{BINARY_V2, Format, JSON_V2};
use super::{HttpState, origin, v2_json};
use crate::broker::{BrokerError, MAX_FETCH_WAIT, OffsetSpec, Topic};

/// An instance with no request for this long is dropped.
pub const INSTANCE_IDLE: Duration = Duration::from_secs(300);

/// At most this many consumer instances exist at once.
pub const MAX_INSTANCES: usize = 10_000;

/// A records read waits this long for records when the client names no `timeout`
/// (the proxy's `consumer.request.timeout.ms`).
const DEFAULT_POLL: Duration = Duration::from_millis(1000);

/// The most bytes of keys and values one records read returns (the proxy's
/// `consumer.request.max.bytes`).
const MAX_READ_BYTES: u64 = 64 << 20;

/// How often a long poll on partitions another broker owns looks again.
const NON_OWNER_POLL: Duration = Duration::from_millis(100);

/// A partition, by topic name.
type Tp = (String, i32);

/// Where an instance starts a partition it has no position or committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    Earliest,
    Latest,
}

/// What the client set on the instance, guarded by a short lock.
#[derive(Debug, Default)]
struct Membership {
    /// Subscribed topic names.
    topics: Vec<String>,
    /// Subscribed topic pattern.
    pattern: Option<regex::Regex>,
    /// Manually assigned partitions (assign mode); empty when subscribed.
    assigned: Vec<Tp>,
}

/// The read state of an instance, held across a records read (so reads of one instance
/// are served one at a time).
#[derive(Debug, Default)]
struct Positions {
    /// The next offset to read, per partition.
    next: BTreeMap<Tp, i64>,
    /// Whether reads moved positions since the last commit (for auto-commit).
    dirty: bool,
}

/// One consumer instance.
#[derive(Debug)]
pub struct Instance {
    group: String,
    id: String,
    format: Format,
    reset: Reset,
    auto_commit: bool,
    membership: Mutex<Membership>,
    positions: tokio::sync::Mutex<Positions>,
    last_used: Mutex<Instant>,
}

impl Instance {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribes_to(&self, topic: &str) -> bool {
        let m = self.membership();
        m.assigned.is_empty()
            && (m.topics.iter().any(|t| t == topic)
                || m.pattern.as_ref().is_some_and(|p| p.is_match(topic)))
    }
}

/// Every consumer instance of this broker, by group and id.
#[derive(Debug, Default)]
pub struct Consumers {
    instances: Mutex<HashMap<(String, String), Arc<Instance>>>,
}

impl Consumers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Instance>>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance `id` of `group`, marked as used.
    fn get(&self, group: &str, id: &str) -> Result<Arc<Instance>, ApiError> {
        let instance = self
            .lock()
            .get(&(group.to_string(), id.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::unknown_instance(group, id))?;
        instance.touch();
        Ok(instance)
    }

    /// Ids of the instances of `group` subscribed to `topic`, in order.
    fn subscribers(&self, group: &str, topic: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock()
            .values()
            .filter(|i| i.group == group && i.subscribes_to(topic))
            .map(|i| i.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Drops instances idle for longer than `idle`; returns how many went.
    pub fn expire(&self, idle: Duration) -> usize {
        let mut instances = self.lock();
        let before = instances.len();
        instances.retain(|(group, id), i| {
            let keep = i.idle_for() < idle;
            if !keep {
                tracing::info!(group, instance = id, "consumer instance expired");
            }
            keep
        });
        before - instances.len()
    }
}

/// A config value the proxy takes as a string (or, leniently, a number or boolean).
fn config_string(v: &Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    }
}

/// Body of `POST /consumers/{group}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateConsumer {
    /// The instance id; one is made up when absent.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,100}$")]
    pub name: Option<String>,
    /// `json` (the default) or `binary`: how keys and values are embedded in records.
    #[schema(value_type = Option<String>, pattern = "^(json|binary)$")]
    pub format: Option<Value>,
    /// `earliest` or `latest` (the default).
    #[serde(rename = "auto.offset.reset")]
    #[schema(value_type = Option<String>, pattern = "^(earliest|latest)$")]
    pub auto_offset_reset: Option<Value>,
    /// `true` (the default) or `false`.
    #[serde(rename = "auto.commit.enable")]
    #[schema(value_type = Option<String>, pattern = "^(true|false)$")]
    pub auto_commit_enable: Option<Value>,
    /// Accepted and ignored.
    #[allow(dead_code)]
    #[serde(rename = "fetch.min.bytes")]
    #[schema(value_type = Option<String>, pattern = "^[0-9]{1,9}$")]
    pub fetch_min_bytes: Option<Value>,
    /// Accepted and ignored (use the `timeout` of a records read).
    #[allow(dead_code)]
    #[serde(rename = "consumer.request.timeout.ms")]
    #[schema(value_type = Option<String>, pattern = "^[0-9]{1,9}$")]
    pub request_timeout_ms: Option<Value>,
}

/// Answer to `POST /consumers/{group}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedConsumer {
    /// The instance id.
    pub instance_id: String,
    /// The URL of the instance, for its later requests.
    pub base_uri: String,
}

/// A subscription: topic names or a pattern.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    /// Topic names.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression over topic names (instead of `topics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
}

/// A partition, named by topic.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionRef {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    #[schema(minimum = 0)]
    pub partition: i32,
}

/// A list of partitions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Partitions {
    /// The partitions.
    pub partitions: Vec<PartitionRef>,
}

/// A partition and an offset in it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionOffset {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    #[schema(minimum = 0)]
    pub partition: i32,
    /// The offset.
    #[schema(minimum = 0)]
    pub offset: i64,
    /// Metadata stored with a commit.
    #[serde(default)]
    pub metadata: Option<String>,
}

/// A list of partition offsets (commit, seek, committed).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Offsets {
    /// The offsets.
    pub offsets: Vec<PartitionOffset>,
}

/// One record read by a consumer instance.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsumedRecord {
    /// Topic name.
    pub topic: String,
    /// The key: JSON in the json format, base64 in the binary format; null when absent.
    #[schema(value_type = Value)]
    pub key: Value,
    /// The value, embedded as the key is.
    #[schema(value_type = Value)]
    pub value: Value,
    /// Partition number.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

fn parse_reset(v: Option<String>) -> Result<Reset, ApiError> {
    match v.as_deref() {
        None | Some("latest") | Some("largest") => Ok(Reset::Latest),
        Some("earliest") | Some("smallest") => Ok(Reset::Earliest),
        Some(other) => Err(invalid_config(format!(
            "auto.offset.reset must be earliest or latest, not '{other}'"
        ))),
    }
}

fn invalid_config(message: String) -> ApiError {
    ApiError::unprocessable(42204, format!("Invalid consumer configuration: {message}"))
}

fn valid_id(id: &str) -> bool {
    (1..=100).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Creates a consumer instance in a group.
#[utoipa::path(post, path = "/consumers/{group}", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group")),
    request_body(content = CreateConsumer, content_type = "application/vnd.kafka.v2+json"),
    responses((status = 200, body = CreatedConsumer, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn create(
    State(state): State<HttpState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CreateConsumer = json(&headers, body, state.max_request_bytes).await?;
    let format = match config_string(&req.format).as_deref() {
        None | Some("json") => Format::Json,
        Some("binary") => Format::Binary,
        Some(other) => {
            return Err(invalid_config(format!(
                "format '{other}' is unknown: consumer instances deliver json or binary records (schema formats such as avro need a schema registry, which Strata does not run)"
            )));
        }
    };
    let reset = parse_reset(config_string(&req.auto_offset_reset))?;
    let auto_commit = match config_string(&req.auto_commit_enable).as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(invalid_config(format!(
                "auto.commit.enable must be true or false, not '{other}'"
            )));
        }
    };
    let id = req
        .name
        .unwrap_or_else(|| format!("rest-consumer-{}", uuid::Uuid::new_v4()));
    if !valid_id(&id) {
        return Err(invalid_config(format!(
            "instance name '{id}' must be 1-100 characters of letters, digits, '.', '_' or '-'"
        )));
    }
    {
        let mut instances = state.consumers.lock();
        let key = (group.clone(), id.clone());
        if instances.contains_key(&key) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                40902,
                format!("Consumer '{id}' already exists in group '{group}'."),
            ));
        }
        if instances.len() >= MAX_INSTANCES {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                40903,
                format!("Illegal state: {MAX_INSTANCES} consumer instances exist; delete some"),
            ));
        }
        instances.insert(
            key,
            Arc::new(Instance {
                group: group.clone(),
                id: id.clone(),
                format,
                reset,
                auto_commit,
                membership: Mutex::default(),
                positions: tokio::sync::Mutex::default(),
                last_used: Mutex::new(Instant::now()),
            }),
        );
    }
    tracing::info!(group, instance = id, "consumer instance created");
    let base_uri = format!(
        "{}/consumers/{group}/instances/{id}",
        origin(&state, &headers)
    );
    Ok(v2_json(
        StatusCode::OK,
        &CreatedConsumer {
            instance_id: id,
            base_uri,
        },
    ))
}

/// Deletes a consumer instance (committing what it read, with auto-commit).
#[utoipa::path(delete, path = "/consumers/{group}/instances/{instance}", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    responses((status = 204, description = "Deleted"), V2Errors))]
pub async fn delete(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let instance = state
        .consumers
        .lock()
        .remove(&(group.clone(), id.clone()))
        .ok_or_else(|| ApiError::unknown_instance(&group, &id))?;
    if instance.auto_commit {
        let mut positions = instance.positions.lock().await;
        if positions.dirty {
            commit_positions(&state, &instance, &mut positions).await?;
        }
    }
    tracing::info!(group, instance = id, "consumer instance deleted");
    Ok(no_content())
}

/// Subscribes the instance to topics (replacing any subscription or assignment).
#[utoipa::path(post, path = "/consumers/{group}/instances/{instance}/subscription", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    request_body(content = Subscription, content_type = "application/vnd.kafka.v2+json"),
    responses((status = 204, description = "Subscribed"), V2Errors))]
pub async fn subscribe(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let req: Subscription = json(&headers, body, state.max_request_bytes).await?;
    let pattern = match &req.topic_pattern {
        Some(p) => Some(
            regex::RegexBuilder::new(&format!("^(?:{p})$"))
                .size_limit(1 << 20)
                .build()
                .map_err(|e| ApiError::unprocessable(422, format!("bad topic_pattern: {e}")))?,
        ),
        None => None,
    };
    if req.topics.is_empty() && pattern.is_none() {
        return Err(ApiError::unprocessable(
            422,
            "a subscription needs topics or a topic_pattern",
        ));
    }
    *instance.membership() = Membership {
        topics: req.topics,
        pattern,
        assigned: Vec::new(),
    };
    Ok(no_content())
}

/// The instance's subscribed topics.
#[utoipa::path(get, path = "/consumers/{group}/instances/{instance}/subscription", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    responses((status = 200, body = Subscription, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn subscription(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let m = instance.membership();
    Ok(v2_json(
        StatusCode::OK,
        &Subscription {
            topics: m.topics.clone(),
            topic_pattern: m.pattern.as_ref().map(|p| {
                let s = p.as_str();
                s.strip_prefix("^(?:")
                    .and_then(|s| s.strip_suffix(")$"))
                    .unwrap_or(s)
                    .to_string()
            }),
        },
    ))
}

/// Ends the instance's subscription.
#[utoipa::path(delete, path = "/consumers/{group}/instances/{instance}/subscription", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    responses((status = 204, description = "Unsubscribed"), V2Errors))]
pub async fn unsubscribe(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let mut m = instance.membership();
    m.topics.clear();
    m.pattern = None;
    Ok(no_content())
}

/// Assigns partitions to the instance by hand (replacing any subscription).
#[utoipa::path(post, path = "/consumers/{group}/instances/{instance}/assignments", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    request_body(content = Partitions, content_type = "application/vnd.kafka.v2+json"),
    responses((status = 204, description = "Assigned"), V2Errors))]
pub async fn assign(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let req: Partitions = json(&headers, body, state.max_request_bytes).await?;
    for p in &req.partitions {
        resolve(&state, &p.topic, p.partition).await?;
    }
    *instance.membership() = Membership {
        assigned: req
            .partitions
            .into_iter()
            .map(|p| (p.topic, p.partition))
            .collect(),
        ..Membership::default()
    };
    Ok(no_content())
}

/// The partitions the instance reads now (assigned, or its share of its subscription).
#[utoipa::path(get, path = "/consumers/{group}/instances/{instance}/assignments", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    responses((status = 200, body = Partitions, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn assignments(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let partitions = reading(&state, &instance)
        .await
        .into_iter()
        .map(|(t, p)| PartitionRef {
            topic: t.meta.name.clone(),
            partition: p,
        })
        .collect();
    Ok(v2_json(StatusCode::OK, &Partitions { partitions }))
}

/// The topic and partition a client named, or 404.
async fn resolve(state: &HttpState, topic: &str, partition: i32) -> Result<Arc<Topic>, ApiError> {
    let t = state.broker.topic(topic, false).await?;
    t.partition(partition)?;
    Ok(t)
}

/// The partitions `instance` reads: its assignment, else its share of each subscribed topic.
async fn reading(state: &HttpState, instance: &Instance) -> Vec<(Arc<Topic>, i32)> {
    let (assigned, topics, pattern) = {
        let m = instance.membership();
        (m.assigned.clone(), m.topics.clone(), m.pattern.clone())
    };
    let mut out = Vec::new();
    if !assigned.is_empty() {
        for (t, p) in assigned {
            if let Ok(topic) = resolve(state, &t, p).await {
                out.push((topic, p));
            }
        }
        return out;
    }
    let mut names = topics;
    if let Some(pattern) = pattern {
        names.extend(
            state
                .broker
                .topics()
                .iter()
                .map(|t| t.meta.name.clone())
                .filter(|n| pattern.is_match(n)),
        );
    }
    names.sort();
    names.dedup();
    for name in names {
        let Ok(topic) = state.broker.topic(&name, false).await else {
            continue;
        };
        let members = state.consumers.subscribers(&instance.group, &name);
        let Some(me) = members.iter().position(|m| *m == instance.id) else {
            continue;
        };
        for p in (0..topic.meta.partitions).filter(|p| *p as usize % members.len() == me) {
            out.push((topic.clone(), p));
        }
    }
    out
}

/// Commits offsets for the instance's group through the group coordinator.
async fn commit(
    state: &HttpState,
    group: &str,
    offsets: Vec<CommittedOffset>,
) -> Result<(), ApiError> {
    if offsets.is_empty() {
        return Ok(());
    }
    state.broker.groups().check_commit(group, -1, "")?;
    state.broker.groups().commit(group, &offsets).await?;
    Ok(())
}

/// Commits every position of `instance`.
async fn commit_positions(
    state: &HttpState,
    instance: &Instance,
    positions: &mut Positions,
) -> Result<(), ApiError> {
    let mut offsets = Vec::new();
    for ((t, p), next) in &positions.next {
        if let Ok(topic) = state.broker.topic(t, false).await
            && let Ok(tp) = topic.partition(*p)
        {
            offsets.push(CommittedOffset {
                tp,
                offset: *next,
                leader_epoch: -1,
                metadata: None,
            });
        }
    }
    commit(state, &instance.group, offsets).await?;
    positions.dirty = false;
    Ok(())
}

/// Commits offsets: those named (each the last offset consumed), or every position read.
#[utoipa::path(post, path = "/consumers/{group}/instances/{instance}/offsets", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    request_body(content = Option<Offsets>, content_type = "application/vnd.kafka.v2+json"),
    responses((status = 200, description = "Committed"), V2Errors))]
pub async fn commit_offsets(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let req: Option<Offsets> = optional_json(&headers, body, state.max_request_bytes).await?;
    match req {
        Some(req) => {
            let mut offsets = Vec::with_capacity(req.offsets.len());
            for o in req.offsets {
                let topic = resolve(&state, &o.topic, o.partition).await?;
                offsets.push(CommittedOffset {
                    tp: topic.partition(o.partition)?,
                    offset: o.offset.saturating_add(1),
                    leader_epoch: -1,
                    metadata: o.metadata,
                });
            }
            commit(&state, &group, offsets).await?;
        }
        None => {
            let mut positions = instance.positions.lock().await;
            commit_positions(&state, &instance, &mut positions).await?;
        }
    }
    Ok(StatusCode::OK.into_response())
}

/// The group's committed offsets for the partitions named (or the instance's partitions).
#[utoipa::path(get, path = "/consumers/{group}/instances/{instance}/offsets", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    request_body(content = Option<Partitions>, content_type = "application/vnd.kafka.v2+json"),
    responses((status = 200, body = Offsets, content_type = "application/vnd.kafka.v2+json"), V2Errors))]
pub async fn committed(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let req: Option<Partitions> = optional_json(&headers, body, state.max_request_bytes).await?;
    let wanted: Vec<(Arc<Topic>, i32)> = match req {
        Some(req) => {
            let mut out = Vec::new();
            for p in req.partitions {
                out.push((resolve(&state, &p.topic, p.partition).await?, p.partition));
            }
            out
        }
        None => reading(&state, &instance).await,
    };
    let committed = state.broker.groups().committed(&group).await?;
    let offsets = wanted
        .into_iter()
        .filter_map(|(topic, p)| {
            let tp = topic.partition(p).ok()?;
            let c = committed.iter().find(|c| c.tp == tp)?;
            Some(PartitionOffset {
                topic: topic.meta.name.clone(),
                partition: p,
                offset: c.offset,
                metadata: c.metadata.clone(),
            })
        })
        .collect();
    Ok(v2_json(StatusCode::OK, &Offsets { offsets }))
}

/// Moves the instance's positions to the offsets given.
#[utoipa::path(post, path = "/consumers/{group}/instances/{instance}/positions", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    request_body(content = Offsets, content_type = "application/vnd.kafka.v2+json"),
    responses((status = 204, description = "Moved"), V2Errors))]
pub async fn seek(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let req: Offsets = json(&headers, body, state.max_request_bytes).await?;
    let mut moves = Vec::new();
    for o in req.offsets {
        resolve(&state, &o.topic, o.partition).await?;
        moves.push(((o.topic, o.partition), o.offset.max(0)));
    }
    instance.positions.lock().await.next.extend(moves);
    Ok(no_content())
}

/// Moves the instance's positions to the start of the partitions given.
#[utoipa::path(post, path = "/consumers/{group}/instances/{instance}/positions/beginning", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    request_body(content = Partitions, content_type = "application/vnd.kafka.v2+json"),
    responses((status = 204, description = "Moved"), V2Errors))]
pub async fn seek_beginning(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    seek_to(state, group, id, headers, body, OffsetSpec::Earliest).await
}

/// Moves the instance's positions to the end of the partitions given.
#[utoipa::path(post, path = "/consumers/{group}/instances/{instance}/positions/end", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id")),
    request_body(content = Partitions, content_type = "application/vnd.kafka.v2+json"),
    responses((status = 204, description = "Moved"), V2Errors))]
pub async fn seek_end(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    seek_to(state, group, id, headers, body, OffsetSpec::Latest).await
}

async fn seek_to(
    state: HttpState,
    group: String,
    id: String,
    headers: HeaderMap,
    body: Body,
    spec: OffsetSpec,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    let req: Partitions = json(&headers, body, state.max_request_bytes).await?;
    let mut moves = Vec::new();
    for p in req.partitions {
        let topic = resolve(&state, &p.topic, p.partition).await?;
        moves.push((
            (p.topic, p.partition),
            offset_at(&state, &topic, p.partition, spec).await?,
        ));
    }
    instance.positions.lock().await.next.extend(moves);
    Ok(no_content())
}

async fn offset_at(
    state: &HttpState,
    topic: &Topic,
    p: i32,
    spec: OffsetSpec,
) -> Result<i64, ApiError> {
    Ok(state
        .broker
        .list_offset(topic, p, spec)
        .await?
        .map_or(0, |(o, _)| o.0))
}

/// The offset after the last whole batch in `records`, if any.
fn batches_end(records: &[u8]) -> Option<i64> {
    let (start, _, count) = strata_storage::batch::stored_batches(records).last()?;
    let base = records.get(start..start + 8)?;
    Some(i64::from_be_bytes(base.try_into().ok()?) + count)
}

/// Reads records for the instance: at most `max_bytes` of keys and values, waiting up to
/// `timeout` ms when there are none yet.
#[utoipa::path(get, path = "/consumers/{group}/instances/{instance}/records", tag = "v2 consumers",
    params(("group" = String, Path, description = "Consumer group"), ("instance" = String, Path, description = "Instance id"),
        ("timeout" = Option<u64>, Query, description = "Milliseconds to wait for records (at most 30000)", maximum = 30000),
        ("max_bytes" = Option<u64>, Query, description = "Most bytes of keys and values to return")),
    responses(
        (status = 200, description = "Records, keys and values embedded in the instance's format", content(
            (Vec<ConsumedRecord> = "application/vnd.kafka.json.v2+json"),
            (Vec<ConsumedRecord> = "application/vnd.kafka.binary.v2+json"))),
        V2Errors))]
pub async fn records(
    State(state): State<HttpState>,
    Path((group, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let instance = state.consumers.get(&group, &id)?;
    check_accept(&headers, instance.format)?;
    let wait = query_u64(&query, "timeout")?
        .map_or(DEFAULT_POLL, Duration::from_millis)
        .min(MAX_FETCH_WAIT);
    let max_bytes = query_u64(&query, "max_bytes")?
        .unwrap_or(MAX_READ_BYTES)
        .clamp(1, MAX_READ_BYTES) as usize;
    let records = read(&state, &instance, wait, max_bytes).await?;
    instance.touch();
    let mut response = axum::Json(records).into_response();
    let ct = match instance.format {
        Format::Json => JSON_V2,
        Format::Binary => BINARY_V2,
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(response)
}

/// Refuses an `Accept` header the instance's format cannot satisfy: the other embedded
/// format is 406 40601, as in the proxy; no header or a wildcard is fine.
fn check_accept(headers: &HeaderMap, format: Format) -> Result<(), ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else {
        return Ok(());
    };
    let mine = match format {
        Format::Json => JSON_V2,
        Format::Binary => BINARY_V2,
    };
    let types: Vec<String> = accept
        .split(',')
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    let fine = types.iter().any(|t| {
        t == mine
            || matches!(
                t.as_str(),
                "" | "*/*" | "application/*" | "application/json" | "application/vnd.kafka.v2+json"
            )
    });
    if fine {
        Ok(())
    } else if types.iter().any(|t| t == JSON_V2 || t == BINARY_V2) {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            40601,
            "The requested embedded data format does not match the deserializer for this consumer instance",
        ))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            406,
            format!("HTTP 406 Not Acceptable: this consumer instance answers {mine}"),
        ))
    }
}

/// The long poll behind a records read.
async fn read(
    state: &HttpState,
    instance: &Instance,
    wait: Duration,
    max_bytes: usize,
) -> Result<Vec<ConsumedRecord>, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut positions = instance.positions.lock().await;
    if instance.auto_commit && positions.dirty {
        // At-least-once: what the last read returned is committed now.
        if let Err(e) = commit_positions(state, instance, &mut positions).await {
            tracing::warn!(group = instance.group, instance = instance.id, error = %e.body.message, "auto-commit failed");
        }
    }
    let parts = reading(state, instance).await;
    let subscribed = {
        let m = instance.membership();
        !m.topics.is_empty() || m.pattern.is_some() || !m.assigned.is_empty()
    };
    if parts.is_empty() && !subscribed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            40903,
            "Illegal state: the consumer instance is not subscribed to any topic nor assigned any partition",
        ));
    }
    // Partitions no longer read (moved to another instance, unsubscribed) lose their position.
    positions.next.retain(|(t, p), _| {
        parts
            .iter()
            .any(|(topic, q)| topic.meta.name == *t && q == p)
    });
    start_positions(state, instance, &parts, &mut positions).await?;
    let mut watches: Vec<_> = parts
        .iter()
        .filter_map(|(t, p)| state.broker.watch_high_watermark(t, *p))
        .collect();
    let unwatched = watches.len() < parts.len();
    loop {
        let out = read_once(state, instance, &parts, &mut positions, max_bytes).await?;
        let now = tokio::time::Instant::now();
        if !out.is_empty() || now >= deadline {
            if !out.is_empty() {
                positions.dirty = true;
            }
            return Ok(out);
        }
        let wake = if unwatched {
            (now + NON_OWNER_POLL).min(deadline)
        } else {
            deadline
        };
        if watches.is_empty() {
            tokio::time::sleep_until(wake).await;
        } else {
            let changed =
                futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            if let Ok((Err(_), _, _)) = tokio::time::timeout_at(wake, changed).await {
                // A partition was released here: look again shortly, through the catalog.
                tokio::time::sleep_until((now + NON_OWNER_POLL).min(deadline)).await;
            }
        }
    }
}

/// Gives every partition without a position the group's committed offset, else the
/// `auto.offset.reset` end.
async fn start_positions(
    state: &HttpState,
    instance: &Instance,
    parts: &[(Arc<Topic>, i32)],
    positions: &mut Positions,
) -> Result<(), ApiError> {
    let missing: Vec<_> = parts
        .iter()
        .filter(|(t, p)| !positions.next.contains_key(&(t.meta.name.clone(), *p)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let committed = state.broker.groups().committed(&instance.group).await?;
    for (topic, p) in missing {
        let tp = topic.partition(*p)?;
        let next = match committed.iter().find(|c| c.tp == tp) {
            Some(c) if c.offset >= 0 => c.offset,
            _ => reset_offset(state, instance, topic, *p).await?,
        };
        positions.next.insert((topic.meta.name.clone(), *p), next);
    }
    Ok(())
}

async fn reset_offset(
    state: &HttpState,
    instance: &Instance,
    topic: &Topic,
    p: i32,
) -> Result<i64, ApiError> {
    let spec = match instance.reset {
        Reset::Earliest => OffsetSpec::Earliest,
        Reset::Latest => OffsetSpec::Latest,
    };
    offset_at(state, topic, p, spec).await
}

/// One pass over the partitions, reading what is there now.
async fn read_once(
    state: &HttpState,
    instance: &Instance,
    parts: &[(Arc<Topic>, i32)],
    positions: &mut Positions,
    max_bytes: usize,
) -> Result<Vec<ConsumedRecord>, ApiError> {
    let mut out = Vec::new();
    let mut budget = max_bytes;
    for (topic, p) in parts {
        if budget == 0 {
            break;
        }
        let key = (topic.meta.name.clone(), *p);
        let Some(&next) = positions.next.get(&key) else {
            continue;
        };
        let read = match state
            .broker
            .fetch(topic, *p, Offset(next), budget.max(64 << 10))
            .await
        {
            Ok(read) => read,
            Err(BrokerError::OffsetOutOfRange { .. }) => {
                let reset = reset_offset(state, instance, topic, *p).await?;
                tracing::info!(
                    group = instance.group,
                    instance = instance.id,
                    topic = topic.meta.name,
                    partition = p,
                    from = next,
                    to = reset,
                    "position out of range; reset"
                );
                positions.next.insert(key, reset);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let end = batches_end(&read.records);
        let decoded = crate::client::batch::decode(read.records)
            .map_err(|e| ApiError::internal(format!("stored batch could not be decoded: {e}")))?;
        let mut new_next = end.unwrap_or(next).max(next);
        for r in decoded.into_iter().filter(|r| r.offset >= next) {
            let size =
                r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
            if size > budget && !out.is_empty() {
                new_next = r.offset;
                budget = 0;
                break;
            }
            budget = budget.saturating_sub(size.max(1));
            out.push(ConsumedRecord {
                topic: topic.meta.name.clone(),
                key: instance.format.encode(r.key.as_ref()),
                value: instance.format.encode(r.value.as_ref()),
                partition: *p,
                offset: r.offset,
            });
            if budget == 0 {
                new_next = r.offset + 1;
                break;
            }
        }
        positions.next.insert(key, new_next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        let mut h = HeaderMap::new();
        assert!(check_accept(&h, Format::Json).is_ok());
        h.insert(header::ACCEPT, HeaderValue::from_static(JSON_V2));
        assert!(check_accept(&h, Format::Json).is_ok());
        assert_eq!(
            check_accept(&h, Format::Binary)
                .unwrap_err()
                .body
                .error_code,
            40601
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert_eq!(
            check_accept(&h, Format::Binary).unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(check_accept(&h, Format::Binary).is_ok());
    }

    #[test]
    fn instance_ids_are_url_safe() {
        assert!(valid_id("my_consumer-1.a"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(101)));
    }
}
