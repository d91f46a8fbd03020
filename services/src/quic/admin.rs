//! Hello, metadata and topic administration.

use std::collections::BTreeMap;

use strata_proto::native::messages::{
    AlterTopicRequest, BrokerInfo, ConfigInfo, CreateTopicRequest, Empty, HelloResponse,
    MetadataRequest, MetadataResponse, PartitionInfo, PartitionState, TopicDescription, TopicInfo,
    TopicName,
};
use strata_proto::native::{ErrorCode, Frame, MessageKind, PROTOCOL_VERSION, WireError};

use super::{Ctx, MESSAGE_VERSIONS, Reply, header};
use crate::broker::{Broker, BrokerError, Topic};
use strata_storage::catalog::tp;

/// `hello`: what this broker speaks, and who the client is.
pub fn hello(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: strata_proto::native::messages::HelloRequest = header(frame)?;
    tracing::debug!(peer = %ctx.peer, client = req.client, "hello");
    let versions = MessageKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), MESSAGE_VERSIONS))
        .collect();
    Ok(Reply::new(&HelloResponse {
        protocol: PROTOCOL_VERSION,
        broker_id: ctx.broker.config().node_id,
        versions,
        max_frame_bytes: ctx.max_frame as u64,
        identity: ctx.identity.clone(),
    }))
}

fn topic_info(broker: &Broker, t: &Topic) -> TopicInfo {
    let owners = broker.membership().ownership();
    TopicInfo {
        name: t.meta.name.clone(),
        id: t.meta.id.to_string(),
        partitions: (0..t.meta.partitions)
            .map(|partition| {
                let tp = tp(t.meta.id, partition);
                PartitionInfo {
                    partition,
                    leader: broker.membership().leader(tp),
                    // Our own partitions' epochs are current; others' are as of the last
                    // heartbeat.
                    epoch: broker
                        .engine()
                        .epoch(tp)
                        .or_else(|| owners.get(&tp).map(|o| o.epoch))
                        .map_or(0, |e| e.0),
                }
            })
            .collect(),
        error: None,
    }
}

/// `metadata`: this broker and the topics asked for (all by default).
pub async fn metadata(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: MetadataRequest = header(frame)?;
    let me = ctx.broker.config().node_id;
    let topics = match req.topics {
        None => ctx
            .broker
            .topics()
            .iter()
            .map(|t| topic_info(&ctx.broker, t))
            .collect(),
        Some(names) => {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                out.push(match ctx.broker.topic(&name, false).await {
                    Ok(t) => topic_info(&ctx.broker, &t),
                    Err(e) => TopicInfo {
                        name,
                        id: String::new(),
                        partitions: Vec::new(),
                        error: Some(e.into()),
                    },
                });
            }
            out
        }
    };
    let brokers = ctx
        .broker
        .membership()
        .members()
        .into_iter()
        .map(|m| BrokerInfo {
            id: m.node_id,
            quic: m.quic,
            kafka: format!("{}:{}", m.kafka.0, m.kafka.1),
            http: m.http,
            zone: m.zone,
            heartbeat_ms: m.heartbeat_ms,
            leaving: m.leaving,
        })
        .collect();
    Ok(Reply::new(&MetadataResponse {
        broker_id: me,
        brokers,
        topics,
    }))
}

async fn describe(ctx: &Ctx, name: &str) -> Result<TopicDescription, BrokerError> {
    let topic = ctx.broker.topic(name, false).await?;
    let mut partitions = Vec::with_capacity(topic.meta.partitions as usize);
    for p in 0..topic.meta.partitions {
        let (start, end) = ctx.broker.offsets(&topic, p).await?;
        let stored = ctx.broker.stored(&topic, p).await?;
        partitions.push(PartitionState {
            partition: p,
            leader: ctx.broker.membership().leader(tp(topic.meta.id, p)),
            log_start: start.0,
            high_watermark: end.0,
            stored_bytes: stored.bytes,
            extents: stored.extents,
            objects: stored.objects,
        });
    }
    let configs = ctx
        .broker
        .describe_configs(name)
        .await?
        .into_iter()
        .map(|c| ConfigInfo {
            name: c.name,
            value: Some(c.value),
            source: if c.is_set { "topic" } else { "default" }.into(),
        })
        .collect();
    Ok(TopicDescription {
        name: topic.meta.name.clone(),
        id: topic.meta.id.to_string(),
        partitions,
        configs,
    })
}

/// `create_topic`: answers with the new topic's description.
pub async fn create_topic(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: CreateTopicRequest = header(frame)?;
    let topic = ctx
        .broker
        .create_topic(&req.name, req.partitions, &req.configs, req.validate_only)
        .await?;
    if req.validate_only {
        return Ok(Reply::new(&TopicDescription {
            name: topic.meta.name.clone(),
            id: topic.meta.id.to_string(),
            partitions: Vec::new(),
            configs: Vec::new(),
        }));
    }
    tracing::info!(peer = %ctx.peer, topic = req.name, partitions = req.partitions, "created topic");
    Ok(Reply::new(&describe(ctx, &req.name).await?))
}

/// `delete_topic`.
pub async fn delete_topic(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: TopicName = header(frame)?;
    ctx.broker.delete_topic(&req.name).await?;
    Ok(Reply::new(&Empty {}))
}

/// `describe_topic`: partitions with their offsets, and configs.
pub async fn describe_topic(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: TopicName = header(frame)?;
    Ok(Reply::new(&describe(ctx, &req.name).await?))
}

/// `alter_topic`: configs first (all checked before any is stored), then the partition count.
pub async fn alter_topic(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: AlterTopicRequest = header(frame)?;
    if let Some(k) = req.delete.iter().find(|k| req.set.contains_key(*k)) {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("config '{k}' is both set and deleted"),
        ));
    }
    let mut changes: BTreeMap<String, Option<String>> = req
        .set
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    changes.extend(req.delete.iter().map(|k| (k.clone(), None)));
    if let Some(total) = req.partitions {
        // Checked before configs change, so a bad count changes nothing.
        ctx.broker.create_partitions(&req.name, total, true).await?;
    }
    if !changes.is_empty() {
        ctx.broker.alter_configs(&req.name, &changes).await?;
    }
    if let Some(total) = req.partitions {
        ctx.broker
            .create_partitions(&req.name, total, false)
            .await?;
    }
    Ok(Reply::new(&describe(ctx, &req.name).await?))
}
