//! The JSON headers of every native message, request and response.
//!
//! Field names are the protocol: `proto/README.md` lists them with their meaning. Fields that
//! have a sensible default may be left out by clients. A failed request is answered with a
//! header holding only `error` ([`ErrorEnvelope`]); every success header below is what comes
//! back otherwise. Binary group metadata and assignments travel as base64 strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::WireError;

/// Any response header, seen only for its `error`: clients read this first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// Present when the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

/// An empty header, for requests and answers with nothing to say.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

/// `hello`: the first request a client sends, to learn what the broker speaks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HelloRequest {
    /// The client's name and version, for the broker's logs.
    #[serde(default)]
    pub client: String,
}

/// The broker's answer to `hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloResponse {
    /// The protocol's major version (the `1` of ALPN `strata/1`).
    pub protocol: u16,
    /// The broker's id.
    pub broker_id: i32,
    /// For each message name, the lowest and highest version the broker accepts.
    pub versions: BTreeMap<String, [u16; 2]>,
    /// The largest frame the broker accepts.
    pub max_frame_bytes: u64,
    /// The client's identity from its certificate under mutual TLS, if any.
    pub identity: Option<String>,
}

/// `metadata`: brokers and topics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetadataRequest {
    /// The topics to describe; absent for all.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
}

/// A broker, as `metadata` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// Broker id.
    pub id: i32,
    /// `host:port` of its QUIC front end.
    pub quic: String,
    /// `host:port` of its Kafka front end.
    pub kafka: String,
    /// `host:port` of its HTTP front end.
    pub http: String,
    /// Its zone, if set.
    pub zone: Option<String>,
    /// Its last heartbeat in the catalog, ms since the Unix epoch (0 when unknown).
    #[serde(default)]
    pub heartbeat_ms: i64,
    /// It is shutting down and handing its partitions over.
    #[serde(default)]
    pub leaving: bool,
}

/// A partition and the broker that leads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: i32,
    /// Id of the broker that owns it.
    pub leader: i32,
    /// The owner epoch: moves on by one each time a broker claims the partition.
    #[serde(default)]
    pub epoch: i64,
}

/// A topic as `metadata` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Id (a UUID), stable across renames of nothing: topics are never renamed.
    pub id: String,
    /// Partitions and their leaders.
    pub partitions: Vec<PartitionInfo>,
    /// Set when a topic named in the request does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

/// The answer to `metadata`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetadataResponse {
    /// The id of the broker that answered.
    pub broker_id: i32,
    /// Live brokers.
    pub brokers: Vec<BrokerInfo>,
    /// Topics, by name.
    pub topics: Vec<TopicInfo>,
}

/// `create_topic`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic configs (Kafka names: `retention.ms`, `max.message.bytes`, …).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// Only check that the topic could be created.
    #[serde(default)]
    pub validate_only: bool,
}

/// `delete_topic`, `describe_topic`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicName {
    /// The topic.
    pub name: String,
}

/// A partition's offsets, as `describe_topic` shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionState {
    /// Partition number.
    pub partition: i32,
    /// Id of the broker that owns it.
    pub leader: i32,
    /// First readable offset.
    pub log_start: i64,
    /// Offset the next record will get.
    pub high_watermark: i64,
    /// Bytes kept in the object store from the log start on (compressed, as stored).
    #[serde(default)]
    pub stored_bytes: i64,
    /// Extents (runs of the partition's batches, one per flush) holding them.
    #[serde(default)]
    pub extents: i64,
    /// Distinct objects holding those extents.
    #[serde(default)]
    pub objects: i64,
}

/// A topic config with its effective value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigInfo {
    /// Kafka's name for it.
    pub name: String,
    /// Effective value.
    pub value: Option<String>,
    /// `topic` when set on the topic, `default` otherwise.
    pub source: String,
}

/// The answer to `describe_topic` (and to `create_topic`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Id.
    pub id: String,
    /// Partitions with their offsets.
    pub partitions: Vec<PartitionState>,
    /// Every known config.
    pub configs: Vec<ConfigInfo>,
}

/// `alter_topic`: change configs and/or grow the partition count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlterTopicRequest {
    /// The topic.
    pub name: String,
    /// Configs to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Configs to return to their defaults.
    #[serde(default)]
    pub delete: Vec<String>,
    /// A new, larger partition count.
    #[serde(default)]
    pub partitions: Option<i32>,
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_max_bytes() -> u32 {
    1 << 20
}

/// `produce`: the payload is one or more RecordBatch v2 batches for one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProduceRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// `0`: answered once offsets are assigned, no durability promise; `1`: once in the
    /// broker's write-ahead log (survives a crash of the broker process); `-1` (all): once in
    /// the object store and the catalog (survives the loss of the machine).
    pub acks: i16,
    /// How long to wait for durability before answering `TIMEOUT`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Ask for an early answer as soon as offsets are assigned (marked `sequenced`), before
    /// the final one. A client that sends a partition's next request only after this early
    /// answer keeps the partition's order while many requests wait for durability at once.
    #[serde(default)]
    pub pipeline: bool,
}

/// The answer to `produce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProduceResponse {
    /// Offset of the first record of the first batch (for a retried idempotent batch, the
    /// offset it got the first time).
    pub base_offset: i64,
    /// True on the early answer of a `pipeline` request: offsets are assigned, durability
    /// is still to come in the final answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sequenced: bool,
}

/// `fetch`: read one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset wanted.
    pub offset: i64,
    /// About how many bytes to return (at least one whole batch is returned).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u32,
    /// At the log end, how long to wait for records before answering empty.
    #[serde(default)]
    pub max_wait_ms: u64,
}

/// The answer to `fetch` and each frame a subscription pushes; the payload holds batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchResponse {
    /// First readable offset.
    pub log_start: i64,
    /// Offset the next record will get.
    pub high_watermark: i64,
}

/// `subscribe`: stream a partition from an offset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset wanted.
    pub offset: i64,
    /// About how many bytes each pushed frame holds.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u32,
}

/// Where `list_offsets` should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "spec", rename_all = "lowercase")]
pub enum OffsetQuery {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
    /// The first record at or after a time.
    Timestamp {
        /// Milliseconds since the epoch.
        timestamp_ms: i64,
    },
}

/// `list_offsets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListOffsetsRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// What to resolve.
    #[serde(flatten)]
    pub query: OffsetQuery,
}

/// The answer to `list_offsets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListOffsetsResponse {
    /// The offset; `null` when no record is at or after the timestamp.
    pub offset: Option<i64>,
    /// The record's timestamp, for timestamp queries.
    pub timestamp_ms: Option<i64>,
}

/// The answer to `init_producer_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitProducerIdResponse {
    /// The producer id to put in every batch.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i16,
}

/// A group protocol (assignor) with the member's metadata for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupProtocol {
    /// Assignor name, e.g. `range`.
    pub name: String,
    /// Kafka's ConsumerProtocolSubscription bytes for consumers, base64.
    #[serde(with = "b64")]
    pub metadata: Vec<u8>,
}

fn default_session_timeout() -> u32 {
    45_000
}

fn default_rebalance_timeout() -> u32 {
    300_000
}

fn default_protocol_type() -> String {
    "consumer".into()
}

/// `join_group`: Kafka's JoinGroup, so native and Kafka consumers can share a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGroupRequest {
    /// Group id.
    pub group: String,
    /// Empty for a new member; the broker answers MEMBER_ID_REQUIRED with the id to use.
    #[serde(default)]
    pub member_id: String,
    /// `group.instance.id` for a static member.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Session timeout.
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u32,
    /// How long members may take to rejoin.
    #[serde(default = "default_rebalance_timeout")]
    pub rebalance_timeout_ms: u32,
    /// `consumer` for consumers.
    #[serde(default = "default_protocol_type")]
    pub protocol_type: String,
    /// Supported protocols in preference order.
    pub protocols: Vec<GroupProtocol>,
}

/// A member as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Its instance id, if static.
    pub instance_id: Option<String>,
    /// Its metadata for the chosen protocol, base64.
    #[serde(with = "b64")]
    pub metadata: Vec<u8>,
}

/// The answer to `join_group`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGroupResponse {
    /// The generation joined.
    pub generation: i32,
    /// The chosen protocol.
    pub protocol: String,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// Every member, for the leader only.
    pub members: Vec<JoinedMember>,
}

/// The answer to a `join_group` refused with MEMBER_ID_REQUIRED carries the id in the
/// error message; clients use [`member_id_from_error`] to read it.
pub fn member_id_from_error(e: &WireError) -> Option<&str> {
    e.message
        .strip_prefix("rejoin with member id '")?
        .strip_suffix('\'')
}

/// One member's assignment, from the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberAssignment {
    /// Member id.
    pub member_id: String,
    /// Kafka's ConsumerProtocolAssignment bytes for consumers, base64.
    #[serde(with = "b64")]
    pub assignment: Vec<u8>,
}

/// `sync_group`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncGroupRequest {
    /// Group id.
    pub group: String,
    /// Generation joined.
    pub generation: i32,
    /// Member id.
    pub member_id: String,
    /// From the leader: every member's assignment; empty from others.
    #[serde(default)]
    pub assignments: Vec<MemberAssignment>,
}

/// The answer to `sync_group`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncGroupResponse {
    /// This member's assignment, base64.
    #[serde(with = "b64")]
    pub assignment: Vec<u8>,
}

/// `heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Group id.
    pub group: String,
    /// Generation joined.
    pub generation: i32,
    /// Member id.
    pub member_id: String,
}

/// `leave_group`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveGroupRequest {
    /// Group id.
    pub group: String,
    /// Member id.
    #[serde(default)]
    pub member_id: String,
    /// Instance id of a static member.
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the group will read.
    pub offset: i64,
    /// Client metadata kept with the commit.
    #[serde(default)]
    pub metadata: Option<String>,
}

/// `commit_offsets`. A member commits with its generation and id; a client managing its own
/// partitions (or an admin resetting offsets) uses generation -1 and no member id, which the
/// broker accepts only while the group has no members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitOffsetsRequest {
    /// Group id.
    pub group: String,
    /// Generation, or -1.
    #[serde(default = "minus_one")]
    pub generation: i32,
    /// Member id, or empty.
    #[serde(default)]
    pub member_id: String,
    /// The offsets.
    pub offsets: Vec<PartitionOffset>,
}

fn minus_one() -> i32 {
    -1
}

/// `fetch_offsets`, `describe_group`, `delete_group`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupName {
    /// Group id.
    pub group: String,
}

/// The answer to `fetch_offsets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchOffsetsResponse {
    /// Every committed offset of the group.
    pub offsets: Vec<PartitionOffset>,
}

/// A group as `list_groups` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Group id.
    pub group: String,
    /// Kafka's state name (`Empty`, `Stable`, `PreparingRebalance`, …).
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// Member count.
    pub members: usize,
}

/// The answer to `list_groups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListGroupsResponse {
    /// Every group.
    pub groups: Vec<GroupSummary>,
}

/// A member as `describe_group` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupMember {
    /// Member id.
    pub member_id: String,
    /// Instance id, if static.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Assigned partitions, decoded from the consumer protocol where it is one.
    pub assignment: Vec<PartitionRef>,
}

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionRef {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// A committed offset with the partition's end, for lag.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OffsetLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset.
    pub offset: i64,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// `high_watermark - offset`.
    pub lag: i64,
}

/// The answer to `describe_group`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupDetail {
    /// Group id.
    pub group: String,
    /// Kafka's state name; `Dead` for a group never seen.
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen protocol.
    pub protocol: String,
    /// Members.
    pub members: Vec<GroupMember>,
    /// Committed offsets with lag.
    pub offsets: Vec<OffsetLag>,
}

/// Base64 for binary fields.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_queries_are_tagged() {
        let r: ListOffsetsRequest = serde_json::from_str(
            r#"{"topic":"t","partition":0,"spec":"timestamp","timestamp_ms":5}"#,
        )
        .unwrap();
        assert_eq!(r.query, OffsetQuery::Timestamp { timestamp_ms: 5 });
        let r: ListOffsetsRequest =
            serde_json::from_str(r#"{"topic":"t","partition":0,"spec":"earliest"}"#).unwrap();
        assert_eq!(r.query, OffsetQuery::Earliest);
    }

    #[test]
    fn binary_fields_are_base64() {
        let p = GroupProtocol {
            name: "range".into(),
            metadata: vec![0, 1, 255],
        };
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(s, r#"{"name":"range","metadata":"AAH/"}"#);
        let back: GroupProtocol = serde_json::from_str(&s).unwrap();
        assert_eq!(back.metadata, vec![0, 1, 255]);
    }

    #[test]
    fn member_id_is_read_from_the_error() {
        let e = WireError::new(
            crate::native::ErrorCode::MemberIdRequired,
            "rejoin with member id 'abc-1'",
        );
        assert_eq!(member_id_from_error(&e), Some("abc-1"));
    }
}
