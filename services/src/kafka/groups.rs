//! Consumer groups over the Kafka protocol: thin translations onto the
//! [coordinator](crate::broker::groups).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use strata_storage::catalog::{CommittedOffset, tp};

use super::{ConnError, Req, errors};
use crate::broker::groups::{JoinRequest, SyncRequest};
use crate::broker::{Broker, BrokerError};

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn code(r: &Result<(), BrokerError>) -> i16 {
    r.as_ref().err().map_or(0, errors::code)
}

/// FindCoordinator: groups (and transactional ids) are placed on live brokers by rendezvous
/// hashing, as partitions are.
pub fn find_coordinator(
    broker: &Broker,
    req: Req,
    request: FindCoordinatorRequest,
) -> Result<Bytes, ConnError> {
    let membership = broker.membership();
    let locate = |key: &str| {
        let id = membership.coordinator(key);
        let m = membership
            .member(id)
            .unwrap_or_else(|| membership.me().clone());
        (m.node_id, m.kafka.0, i32::from(m.kafka.1))
    };
    let body = if req.version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (id, host, port) = locate(key.as_str());
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(id))
                    .with_host(text(host))
                    .with_port(port)
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let (id, host, port) = locate(request.key.as_str());
        FindCoordinatorResponse::default()
            .with_node_id(BrokerId(id))
            .with_host(text(host))
            .with_port(port)
            .with_error_message(None)
    };
    req.encode(&body)
}

/// JoinGroup: waits for the join phase to end.
pub async fn join_group(
    broker: &Broker,
    req: Req,
    client_id: String,
    request: JoinGroupRequest,
) -> Result<Bytes, ConnError> {
    let session = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    // v0 has no rebalance timeout: Kafka uses the session timeout.
    let rebalance = if req.version >= 1 {
        Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
    } else {
        session
    };
    let join = JoinRequest {
        group: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|s| s.to_string()),
        client_id,
        client_host: req.peer.ip().to_string(),
        session_timeout: session,
        rebalance_timeout: rebalance,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: req.version >= 4,
        supports_skip_assignment: req.version >= 9,
    };
    let body = match broker.groups().join(join).await {
        Ok(r) => JoinGroupResponse::default()
            .with_generation_id(r.generation)
            .with_protocol_type(Some(text(r.protocol_type)))
            .with_protocol_name(Some(text(r.protocol)))
            .with_leader(text(r.leader))
            .with_member_id(text(r.member_id))
            .with_skip_assignment(r.skip_assignment)
            .with_members(
                r.members
                    .into_iter()
                    .map(|(id, instance, metadata)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(text(id))
                            .with_group_instance_id(instance.map(text))
                            .with_metadata(metadata)
                    })
                    .collect(),
            ),
        Err(e) => {
            let member_id = match &e {
                BrokerError::MemberIdRequired(id) => text(id.clone()),
                _ => StrBytes::default(),
            };
            JoinGroupResponse::default()
                .with_error_code(errors::code(&e))
                .with_generation_id(-1)
                .with_member_id(member_id)
        }
    };
    req.encode(&body)
}

/// SyncGroup: the leader's assignment in, each member's share out.
pub async fn sync_group(
    broker: &Broker,
    req: Req,
    request: SyncGroupRequest,
) -> Result<Bytes, ConnError> {
    let sync = SyncRequest {
        group: request.group_id.to_string(),
        generation: request.generation_id,
        member_id: request.member_id.to_string(),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let body = match broker.groups().sync(sync).await {
        Ok(assignment) => SyncGroupResponse::default()
            .with_protocol_type(request.protocol_type)
            .with_protocol_name(request.protocol_name)
            .with_assignment(assignment),
        Err(e) => SyncGroupResponse::default().with_error_code(errors::code(&e)),
    };
    req.encode(&body)
}

/// Heartbeat.
pub fn heartbeat(broker: &Broker, req: Req, request: HeartbeatRequest) -> Result<Bytes, ConnError> {
    let result = broker.groups().heartbeat(
        request.group_id.as_str(),
        request.generation_id,
        request.member_id.as_str(),
    );
    req.encode(&HeartbeatResponse::default().with_error_code(code(&result)))
}

/// LeaveGroup: one member (v0–2) or a batch (v3+).
pub fn leave_group(
    broker: &Broker,
    req: Req,
    request: LeaveGroupRequest,
) -> Result<Bytes, ConnError> {
    let group = request.group_id.as_str();
    if req.version < 3 {
        let results = broker
            .groups()
            .leave(group, &[(request.member_id.to_string(), None)]);
        let c = results.first().map_or(0, code);
        return req.encode(&LeaveGroupResponse::default().with_error_code(c));
    }
    let members: Vec<(String, Option<String>)> = request
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                m.group_instance_id.as_ref().map(|s| s.to_string()),
            )
        })
        .collect();
    let results = broker.groups().leave(group, &members);
    let responses = request
        .members
        .into_iter()
        .zip(&results)
        .map(|(m, r)| {
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(code(r))
        })
        .collect();
    req.encode(&LeaveGroupResponse::default().with_members(responses))
}

/// OffsetCommit: checked against the group's generation, stored in the catalog.
pub async fn offset_commit(
    broker: &Broker,
    req: Req,
    request: OffsetCommitRequest,
) -> Result<Bytes, ConnError> {
    let group = request.group_id.as_str();
    let allowed = broker.groups().check_commit(
        group,
        request.generation_id_or_member_epoch,
        request.member_id.as_str(),
    );
    let mut offsets = Vec::new();
    let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    for t in &request.topics {
        let topic = broker.topic(t.name.as_str(), false).await;
        let mut parts = Vec::new();
        for p in &t.partitions {
            let outcome = match (&allowed, &topic) {
                (Err(e), _) => errors::code(e),
                (Ok(()), Err(e)) => errors::code(e),
                (Ok(()), Ok(topic)) => match topic.partition(p.partition_index) {
                    Ok(tp) => {
                        offsets.push(CommittedOffset {
                            tp,
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        });
                        0
                    }
                    Err(e) => errors::code(&e),
                },
            };
            parts.push((p.partition_index, outcome));
        }
        results.push((t.name.clone(), parts));
    }
    if !offsets.is_empty()
        && let Err(e) = broker.groups().commit(group, &offsets).await
    {
        tracing::warn!(group, error = %e, "offset commit failed");
        let c = errors::code(&e);
        for (_, parts) in &mut results {
            for (_, outcome) in parts.iter_mut().filter(|(_, o)| *o == 0) {
                *outcome = c;
            }
        }
    }
    let topics = results
        .into_iter()
        .map(|(name, parts)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(p, c)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect();
    req.encode(&OffsetCommitResponse::default().with_topics(topics))
}

/// One committed offset as the answer shows it: -1 when nothing was committed.
struct Fetched {
    offset: i64,
    leader_epoch: i32,
    metadata: Option<String>,
}

/// The committed offsets of `group`, per topic name and partition, for the topics asked
/// (all the group has when `topics` is `None`).
async fn fetched(
    broker: &Broker,
    group: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<Vec<(TopicName, Vec<(i32, Fetched)>)>, BrokerError> {
    let committed = broker.groups().committed(group).await?;
    let lookup: BTreeMap<_, _> = committed.iter().map(|c| (c.tp, c)).collect();
    let wanted = match topics {
        Some(t) => t,
        None => {
            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for c in &committed {
                if let Some(t) = broker.topic_by_id(c.tp.topic) {
                    by_topic
                        .entry(t.meta.name.clone())
                        .or_default()
                        .push(c.tp.partition.0);
                }
            }
            by_topic
                .into_iter()
                .map(|(name, parts)| (TopicName(text(name)), parts))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(wanted.len());
    for (name, parts) in wanted {
        let topic = broker.topic(name.as_str(), false).await.ok();
        let answers = parts
            .into_iter()
            .map(|p| {
                let found = topic.as_ref().and_then(|t| lookup.get(&tp(t.meta.id, p)));
                let f = match found {
                    Some(c) => Fetched {
                        offset: c.offset,
                        leader_epoch: c.leader_epoch,
                        metadata: c.metadata.clone(),
                    },
                    None => Fetched {
                        offset: -1,
                        leader_epoch: -1,
                        metadata: Some(String::new()),
                    },
                };
                (p, f)
            })
            .collect();
        out.push((name, answers));
    }
    Ok(out)
}

/// OffsetFetch: one group (v1–7) or several (v8+).
pub async fn offset_fetch(
    broker: &Broker,
    req: Req,
    request: OffsetFetchRequest,
) -> Result<Bytes, ConnError> {
    if req.version < 8 {
        let topics = request.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect()
        });
        let body = match fetched(broker, request.group_id.as_str(), topics).await {
            Ok(found) => OffsetFetchResponse::default().with_topics(
                found
                    .into_iter()
                    .map(|(name, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(name)
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, f)| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(f.offset)
                                            .with_committed_leader_epoch(f.leader_epoch)
                                            .with_metadata(f.metadata.map(text))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
            Err(e) => OffsetFetchResponse::default().with_error_code(errors::code(&e)),
        };
        return req.encode(&body);
    }
    let mut groups = Vec::with_capacity(request.groups.len());
    for g in request.groups {
        let topics = g.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect()
        });
        let answer = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
        groups.push(match fetched(broker, g.group_id.as_str(), topics).await {
            Ok(found) => answer.with_topics(
                found
                    .into_iter()
                    .map(|(name, parts)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(name)
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, f)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(f.offset)
                                            .with_committed_leader_epoch(f.leader_epoch)
                                            .with_metadata(f.metadata.map(text))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
            Err(e) => answer.with_error_code(errors::code(&e)),
        });
    }
    req.encode(&OffsetFetchResponse::default().with_groups(groups))
}

/// ListGroups, with the v4+ state filter.
pub async fn list_groups(
    broker: &Broker,
    req: Req,
    request: ListGroupsRequest,
) -> Result<Bytes, ConnError> {
    let body = match broker.groups().list().await {
        Ok(all) => ListGroupsResponse::default().with_groups(
            all.into_iter()
                .filter(|g| {
                    request.states_filter.is_empty()
                        || request.states_filter.iter().any(|s| s.as_str() == g.state)
                })
                .map(|g| {
                    ListedGroup::default()
                        .with_group_id(GroupId(text(g.group)))
                        .with_protocol_type(text(if g.protocol_type.is_empty() {
                            "consumer".to_string()
                        } else {
                            g.protocol_type
                        }))
                        .with_group_state(text(g.state))
                })
                .collect(),
        ),
        Err(e) => ListGroupsResponse::default().with_error_code(errors::code(&e)),
    };
    req.encode(&body)
}

/// DescribeGroups.
pub async fn describe_groups(
    broker: &Broker,
    req: Req,
    request: DescribeGroupsRequest,
) -> Result<Bytes, ConnError> {
    let mut out = Vec::with_capacity(request.groups.len());
    for name in request.groups {
        let described = DescribedGroup::default().with_group_id(name.clone());
        out.push(match broker.groups().describe(name.as_str()).await {
            Ok(g) => described
                .with_group_state(text(g.state))
                .with_protocol_type(text(g.protocol_type))
                .with_protocol_data(text(g.protocol))
                .with_members(
                    g.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(text(m.member_id))
                                .with_group_instance_id(m.instance_id.map(text))
                                .with_client_id(text(m.client_id))
                                .with_client_host(text(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                ),
            Err(e) => described.with_error_code(errors::code(&e)),
        });
    }
    req.encode(&DescribeGroupsResponse::default().with_groups(out))
}

/// DeleteGroups: only empty groups; their committed offsets go too.
pub async fn delete_groups(
    broker: &Broker,
    req: Req,
    request: DeleteGroupsRequest,
) -> Result<Bytes, ConnError> {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for name in request.groups_names {
        let r = broker.groups().delete(name.as_str()).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(name)
                .with_error_code(code(&r)),
        );
    }
    req.encode(&DeleteGroupsResponse::default().with_results(results))
}

/// OffsetDelete: drops committed offsets of an empty group for some partitions.
pub async fn offset_delete(
    broker: &Broker,
    req: Req,
    request: OffsetDeleteRequest,
) -> Result<Bytes, ConnError> {
    let group = request.group_id.as_str();
    let mut tps = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in &request.topics {
        let topic = broker.topic(t.name.as_str(), false).await;
        let parts = t
            .partitions
            .iter()
            .map(|p| {
                let c = match &topic {
                    Ok(topic) => match topic.partition(p.partition_index) {
                        Ok(tp) => {
                            tps.push(tp);
                            0
                        }
                        Err(e) => errors::code(&e),
                    },
                    Err(e) => errors::code(e),
                };
                (p.partition_index, c)
            })
            .collect::<Vec<_>>();
        topics.push((t.name.clone(), parts));
    }
    // A group with members is treated as subscribed to every topic it asks about: deleting
    // offsets under a live consumer would make it restart from its reset policy.
    let (top, per_partition) = match broker.groups().delete_offsets(group, &tps).await {
        Ok(()) => (0, 0),
        Err(BrokerError::NonEmptyGroup(_)) => (0, ResponseError::GroupSubscribedToTopic.code()),
        Err(e) => (errors::code(&e), 0),
    };
    for (_, parts) in &mut topics {
        for (_, c) in parts.iter_mut().filter(|(_, c)| *c == 0) {
            *c = per_partition;
        }
    }
    let body = OffsetDeleteResponse::default()
        .with_error_code(top)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, parts)| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, c)| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(c)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    req.encode(&body)
}
