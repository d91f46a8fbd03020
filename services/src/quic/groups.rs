//! Group membership and offsets, on the coordinator the Kafka front end uses too.

use std::time::Duration;

use bytes::Bytes;
use strata_proto::native::messages::{
    CommitOffsetsRequest, Empty, FetchOffsetsResponse, GroupDetail, GroupMember, GroupName,
    GroupSummary, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, JoinedMember,
    LeaveGroupRequest, ListGroupsResponse, OffsetLag, PartitionOffset, PartitionRef,
    SyncGroupRequest, SyncGroupResponse,
};
use strata_proto::native::{ErrorCode, Frame, WireError};
use strata_storage::catalog::CommittedOffset;

use super::{Ctx, Reply, header};
use crate::broker::groups::{JoinRequest, SyncRequest};
use crate::consumer_protocol::decode_assignment;

/// `join_group`.
pub async fn join(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: JoinGroupRequest = header(frame)?;
    let joined = ctx
        .broker
        .groups()
        .join(JoinRequest {
            group: req.group,
            member_id: req.member_id,
            instance_id: req.instance_id,
            client_id: ctx
                .identity
                .clone()
                .unwrap_or_else(|| "strata-native".into()),
            client_host: ctx.peer.ip().to_string(),
            session_timeout: Duration::from_millis(req.session_timeout_ms.into()),
            rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.into()),
            protocol_type: req.protocol_type,
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name, Bytes::from(p.metadata)))
                .collect(),
            require_known_member_id: true,
            // The native join answer has no skip_assignment: a returning static leader
            // rebalances, as a Kafka client before JoinGroup v9 does.
            supports_skip_assignment: false,
        })
        .await?;
    Ok(Reply::new(&JoinGroupResponse {
        generation: joined.generation,
        protocol: joined.protocol,
        leader: joined.leader,
        member_id: joined.member_id,
        members: joined
            .members
            .into_iter()
            .map(|(member_id, instance_id, metadata)| JoinedMember {
                member_id,
                instance_id,
                metadata: metadata.to_vec(),
            })
            .collect(),
    }))
}

/// `sync_group`.
pub async fn sync(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: SyncGroupRequest = header(frame)?;
    let assignment = ctx
        .broker
        .groups()
        .sync(SyncRequest {
            group: req.group,
            generation: req.generation,
            member_id: req.member_id,
            assignments: req
                .assignments
                .into_iter()
                .map(|a| (a.member_id, Bytes::from(a.assignment)))
                .collect(),
        })
        .await?;
    Ok(Reply::new(&SyncGroupResponse {
        assignment: assignment.to_vec(),
    }))
}

/// `heartbeat`.
pub fn heartbeat(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: HeartbeatRequest = header(frame)?;
    ctx.broker
        .groups()
        .heartbeat(&req.group, req.generation, &req.member_id)?;
    Ok(Reply::new(&Empty {}))
}

/// `leave_group`.
pub fn leave(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: LeaveGroupRequest = header(frame)?;
    let result = ctx
        .broker
        .groups()
        .leave(&req.group, &[(req.member_id, req.instance_id)]);
    for r in result {
        r?;
    }
    Ok(Reply::new(&Empty {}))
}

/// `commit_offsets`: by a member of the current generation, or (generation -1, no member) for
/// a group without members.
pub async fn commit(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: CommitOffsetsRequest = header(frame)?;
    let groups = ctx.broker.groups();
    groups.check_commit(&req.group, req.generation, &req.member_id)?;
    let mut offsets = Vec::with_capacity(req.offsets.len());
    for o in &req.offsets {
        if o.offset < 0 {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "offset {} for {}/{} is negative",
                    o.offset, o.topic, o.partition
                ),
            ));
        }
        let topic = ctx.broker.topic(&o.topic, false).await?;
        offsets.push(CommittedOffset {
            tp: topic.partition(o.partition)?,
            offset: o.offset,
            leader_epoch: -1,
            metadata: o.metadata.clone(),
        });
    }
    groups.commit(&req.group, &offsets).await?;
    Ok(Reply::new(&Empty {}))
}

async fn committed(ctx: &Ctx, group: &str) -> Result<Vec<PartitionOffset>, WireError> {
    let mut out: Vec<PartitionOffset> = ctx
        .broker
        .groups()
        .committed(group)
        .await?
        .into_iter()
        .filter_map(|c| {
            let topic = ctx.broker.topic_by_id(c.tp.topic)?;
            Some(PartitionOffset {
                topic: topic.meta.name.clone(),
                partition: c.tp.partition.0,
                offset: c.offset,
                metadata: c.metadata,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(out)
}

/// `fetch_offsets`: every committed offset of the group.
pub async fn fetch_offsets(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: GroupName = header(frame)?;
    Ok(Reply::new(&FetchOffsetsResponse {
        offsets: committed(ctx, &req.group).await?,
    }))
}

/// `list_groups`.
pub async fn list(ctx: &Ctx) -> Result<Reply, WireError> {
    let groups = ctx
        .broker
        .groups()
        .list()
        .await?
        .into_iter()
        .map(|g| GroupSummary {
            group: g.group,
            state: g.state.to_string(),
            protocol_type: g.protocol_type,
            members: g.members.len(),
        })
        .collect();
    Ok(Reply::new(&ListGroupsResponse { groups }))
}

/// `describe_group`: state, members with their partitions, and offsets with lag.
pub async fn describe(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: GroupName = header(frame)?;
    let g = ctx.broker.groups().describe(&req.group).await?;
    let members = g
        .members
        .into_iter()
        .map(|m| GroupMember {
            member_id: m.member_id,
            instance_id: m.instance_id,
            client_id: m.client_id,
            client_host: m.client_host,
            assignment: decode_assignment(&m.assignment)
                .unwrap_or_default()
                .into_iter()
                .map(|(topic, partition)| PartitionRef { topic, partition })
                .collect(),
        })
        .collect();
    let mut offsets = Vec::new();
    for c in committed(ctx, &req.group).await? {
        let Ok(topic) = ctx.broker.topic(&c.topic, false).await else {
            continue;
        };
        let (_, end) = ctx.broker.offsets(&topic, c.partition).await?;
        offsets.push(OffsetLag {
            topic: c.topic,
            partition: c.partition,
            offset: c.offset,
            high_watermark: end.0,
            lag: (end.0 - c.offset).max(0),
        });
    }
    Ok(Reply::new(&GroupDetail {
        group: g.group,
        state: g.state.to_string(),
        protocol_type: g.protocol_type,
        protocol: g.protocol,
        members,
        offsets,
    }))
}

/// `delete_group`: an empty group and its offsets.
pub async fn delete(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: GroupName = header(frame)?;
    ctx.broker.groups().delete(&req.group).await?;
    Ok(Reply::new(&Empty {}))
}
