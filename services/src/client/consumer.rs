//! The consumer: partitions read from positions, and consumer-group membership.
//!
//! A [`Consumer`] keeps one fetch in flight per assigned partition, each on its own stream,
//! so a quiet partition's long poll never delays a busy one. [`GroupMembership`] speaks
//! Kafka's classic group protocol with the `range` assignor and Kafka's consumer-protocol
//! encodings, so native consumers share groups (and committed offsets) with Kafka consumers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use strata_proto::native::ErrorCode;
use strata_proto::native::messages::{
    self as m, CommitOffsetsRequest, FetchRequest, GroupProtocol, HeartbeatRequest,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, MemberAssignment, OffsetQuery,
    PartitionOffset, SyncGroupRequest, SyncGroupResponse,
};
use strata_proto::native::{MessageKind, messages::member_id_from_error};
use tokio::task::JoinHandle;

use super::batch::{StoredRecord, decode};
use super::{Client, ClientError};
use crate::consumer_protocol::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription, range_assign,
};

/// Where reading starts when there is no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The log start.
    Earliest,
    /// The log end: only new records.
    Latest,
    /// This offset.
    Offset(i64),
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// A record with the partition it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The record.
    pub record: StoredRecord,
}

type TopicPartition = (String, i32);
type FetchResult = (
    TopicPartition,
    u64,
    Result<(m::FetchResponse, Bytes), ClientError>,
);

/// Reads assigned partitions from their positions.
pub struct Consumer {
    client: Client,
    positions: BTreeMap<TopicPartition, i64>,
    /// High watermarks seen in the latest answers.
    ends: BTreeMap<TopicPartition, i64>,
    /// Bumped by `seek`/`assign`, so answers to fetches made before are dropped.
    generation: HashMap<TopicPartition, u64>,
    in_flight: FuturesUnordered<BoxFuture<'static, FetchResult>>,
    fetching: HashMap<TopicPartition, u64>,
    /// Bytes asked per fetch.
    pub max_bytes: u32,
}

impl Consumer {
    /// A consumer with nothing assigned.
    pub fn new(client: Client) -> Consumer {
        Consumer {
            client,
            positions: BTreeMap::new(),
            ends: BTreeMap::new(),
            generation: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            fetching: HashMap::new(),
            max_bytes: 4 << 20,
        }
    }

    /// Resolves `from` to an offset of one partition.
    pub async fn resolve(
        &self,
        topic: &str,
        partition: i32,
        from: StartFrom,
    ) -> Result<i64, ClientError> {
        let query = match from {
            StartFrom::Offset(o) => return Ok(o),
            StartFrom::Earliest => OffsetQuery::Earliest,
            StartFrom::Latest => OffsetQuery::Latest,
            StartFrom::Timestamp(ts) => OffsetQuery::Timestamp { timestamp_ms: ts },
        };
        let r = self.client.list_offsets(topic, partition, query).await?;
        match r.offset {
            Some(o) => Ok(o),
            // No record at or after the time: start at the end.
            None => Ok(self
                .client
                .list_offsets(topic, partition, OffsetQuery::Latest)
                .await?
                .offset
                .unwrap_or(0)),
        }
    }

    /// Reads `partition` of `topic` from `offset`.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) {
        let tp = (topic.to_string(), partition);
        *self.generation.entry(tp.clone()).or_default() += 1;
        self.fetching.remove(&tp);
        self.ends.remove(&tp);
        self.positions.insert(tp, offset);
    }

    /// Stops reading everything.
    pub fn unassign_all(&mut self) {
        for tp in self.positions.keys() {
            *self.generation.entry(tp.clone()).or_default() += 1;
        }
        self.positions.clear();
        self.ends.clear();
        self.fetching.clear();
    }

    /// Every partition's next offset.
    pub fn positions(&self) -> &BTreeMap<TopicPartition, i64> {
        &self.positions
    }

    /// Whether every assigned partition has been read up to the high watermark its latest
    /// fetch saw.
    pub fn at_end(&self) -> bool {
        self.positions
            .iter()
            .all(|(tp, pos)| self.ends.get(tp).is_some_and(|end| pos >= end))
    }

    /// Records that became readable, waiting up to `wait` at the log end.
    pub async fn poll(&mut self, wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        let wait_ms = wait.as_millis() as u64;
        for (tp, &offset) in &self.positions {
            let generation = self.generation.get(tp).copied().unwrap_or(0);
            if self.fetching.get(tp) == Some(&generation) {
                continue;
            }
            self.fetching.insert(tp.clone(), generation);
            let client = self.client.clone();
            let req = FetchRequest {
                topic: tp.0.clone(),
                partition: tp.1,
                offset,
                max_bytes: self.max_bytes,
                max_wait_ms: wait_ms,
            };
            let tp = tp.clone();
            self.in_flight.push(Box::pin(async move {
                let result = client.fetch(&req).await;
                (tp, generation, result)
            }));
        }
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(5);
        // Wait for one answer, then take whatever else is ready.
        let mut next = tokio::time::timeout_at(deadline, self.in_flight.next()).await;
        loop {
            match next {
                Ok(Some((tp, generation, result))) => {
                    self.absorb(tp, generation, result, &mut out)?;
                }
                Ok(None) | Err(_) => break,
            }
            match futures::FutureExt::now_or_never(self.in_flight.next()) {
                Some(item) => next = Ok(item),
                None => break,
            }
        }
        Ok(out)
    }

    fn absorb(
        &mut self,
        tp: TopicPartition,
        generation: u64,
        result: Result<(m::FetchResponse, Bytes), ClientError>,
        out: &mut Vec<ConsumedRecord>,
    ) -> Result<(), ClientError> {
        if self.generation.get(&tp).copied().unwrap_or(0) != generation
            || !self.positions.contains_key(&tp)
        {
            return Ok(());
        }
        self.fetching.remove(&tp);
        let (resp, payload) = match result {
            Ok(r) => r,
            Err(e) if e.retriable() => {
                tracing::debug!(topic = tp.0, partition = tp.1, error = %e, "fetch failed; retrying");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let position = self.positions[&tp];
        let records = decode(payload).map_err(ClientError::Protocol)?;
        let mut next = position;
        for r in records {
            if r.offset < position {
                continue;
            }
            next = r.offset + 1;
            out.push(ConsumedRecord {
                topic: tp.0.clone(),
                partition: tp.1,
                record: r,
            });
        }
        self.ends.insert(tp.clone(), resp.high_watermark);
        self.positions.insert(tp, next);
        Ok(())
    }
}

/// Membership of a consumer group: join, assignment, heartbeats, commits, leave.
pub struct GroupMembership {
    client: Client,
    group: String,
    topics: Vec<String>,
    instance_id: Option<String>,
    session_timeout: Duration,
    member_id: String,
    generation: i32,
    assignment: Vec<TopicPartition>,
    rejoin: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
}

impl GroupMembership {
    /// Joins `group` subscribed to `topics` and waits for an assignment.
    pub async fn join(
        client: Client,
        group: &str,
        topics: Vec<String>,
        instance_id: Option<String>,
    ) -> Result<GroupMembership, ClientError> {
        let mut g = GroupMembership {
            client,
            group: group.to_string(),
            topics,
            instance_id,
            session_timeout: Duration::from_secs(10),
            member_id: String::new(),
            generation: -1,
            assignment: Vec::new(),
            rejoin: Arc::new(AtomicBool::new(false)),
            heartbeat: None,
        };
        g.rejoin().await?;
        Ok(g)
    }

    /// The partitions this member owns in the current generation.
    pub fn assignment(&self) -> &[TopicPartition] {
        &self.assignment
    }

    /// Whether the group is rebalancing and this member must call [`GroupMembership::rejoin`]
    /// (after committing what it consumed).
    pub fn needs_rejoin(&self) -> bool {
        self.rejoin.load(Ordering::Relaxed)
    }

    /// (Re)joins the group and syncs, until this member has an assignment.
    pub async fn rejoin(&mut self) -> Result<(), ClientError> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        self.rejoin.store(false, Ordering::Relaxed);
        for _ in 0..50 {
            let joined = match self.join_once().await {
                Ok(j) => j,
                Err(e) => match e.code() {
                    Some(ErrorCode::MemberIdRequired) => {
                        if let ClientError::Broker(w) = &e {
                            self.member_id = member_id_from_error(w).unwrap_or("").to_string();
                        }
                        continue;
                    }
                    Some(ErrorCode::UnknownMember) => {
                        self.member_id.clear();
                        continue;
                    }
                    Some(ErrorCode::RebalanceInProgress) => continue,
                    _ => return Err(e),
                },
            };
            self.member_id = joined.member_id.clone();
            self.generation = joined.generation;
            let assignments = if joined.leader == joined.member_id {
                self.assign(&joined).await?
            } else {
                Vec::new()
            };
            let sync = SyncGroupRequest {
                group: self.group.clone(),
                generation: self.generation,
                member_id: self.member_id.clone(),
                assignments,
            };
            let synced: Result<SyncGroupResponse, _> =
                self.client.call_header(MessageKind::SyncGroup, &sync).await;
            match synced {
                Ok(s) => {
                    self.assignment = decode_assignment(&s.assignment).unwrap_or_default();
                    self.start_heartbeats();
                    tracing::info!(
                        group = self.group,
                        generation = self.generation,
                        partitions = self.assignment.len(),
                        "joined group"
                    );
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::RebalanceInProgress) => continue,
                Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
                    self.member_id.clear();
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Closed(format!(
            "could not join group '{}': it kept rebalancing",
            self.group
        )))
    }

    async fn join_once(&self) -> Result<JoinGroupResponse, ClientError> {
        let req = JoinGroupRequest {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
            instance_id: self.instance_id.clone(),
            session_timeout_ms: self.session_timeout.as_millis() as u32,
            rebalance_timeout_ms: 60_000,
            protocol_type: "consumer".into(),
            protocols: vec![GroupProtocol {
                name: "range".into(),
                metadata: encode_subscription(&self.topics),
            }],
        };
        self.client.call_header(MessageKind::JoinGroup, &req).await
    }

    /// The leader's job: the range assignment over every member's subscription.
    async fn assign(
        &self,
        joined: &JoinGroupResponse,
    ) -> Result<Vec<MemberAssignment>, ClientError> {
        let members: BTreeMap<String, Vec<String>> = joined
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.clone(),
                    decode_subscription(&m.metadata).unwrap_or_default(),
                )
            })
            .collect();
        let mut topics: Vec<String> = members.values().flatten().cloned().collect();
        topics.sort();
        topics.dedup();
        let meta = self.client.metadata(Some(topics)).await?;
        let partitions: BTreeMap<String, i32> = meta
            .topics
            .into_iter()
            .filter(|t| t.error.is_none())
            .map(|t| (t.name, t.partitions.len() as i32))
            .collect();
        Ok(range_assign(&members, &partitions)
            .into_iter()
            .map(|(member_id, parts)| MemberAssignment {
                member_id,
                assignment: encode_assignment(&parts),
            })
            .collect())
    }

    fn start_heartbeats(&mut self) {
        let client = self.client.clone();
        let req = HeartbeatRequest {
            group: self.group.clone(),
            generation: self.generation,
            member_id: self.member_id.clone(),
        };
        let rejoin = self.rejoin.clone();
        let every = (self.session_timeout / 3).min(Duration::from_secs(3));
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r: Result<m::Empty, _> = client.call_header(MessageKind::Heartbeat, &req).await;
                match r {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.code(),
                            Some(
                                ErrorCode::RebalanceInProgress
                                    | ErrorCode::UnknownMember
                                    | ErrorCode::IllegalGeneration
                            )
                        ) =>
                    {
                        rejoin.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
        }));
    }

    /// The group's committed offsets, by partition.
    pub async fn committed(&self) -> Result<HashMap<TopicPartition, i64>, ClientError> {
        Ok(self
            .client
            .fetch_offsets(&self.group)
            .await?
            .into_iter()
            .map(|o| ((o.topic, o.partition), o.offset))
            .collect())
    }

    /// Commits the next offsets to read, as this generation's member.
    pub async fn commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<(), ClientError> {
        let req = CommitOffsetsRequest {
            group: self.group.clone(),
            generation: self.generation,
            member_id: self.member_id.clone(),
            offsets: offsets
                .iter()
                .map(|((topic, partition), offset)| PartitionOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    metadata: None,
                })
                .collect(),
        };
        self.client.commit_offsets(&req).await
    }

    /// Leaves the group, so the others rebalance at once instead of after a session timeout.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let req = LeaveGroupRequest {
            group: self.group.clone(),
            member_id: std::mem::take(&mut self.member_id),
            instance_id: None,
        };
        let _: m::Empty = self
            .client
            .call_header(MessageKind::LeaveGroup, &req)
            .await?;
        Ok(())
    }
}

impl Drop for GroupMembership {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}
