//! Log positions beyond ListOffsets: DeleteRecords (move a partition's log start forward) and
//! OffsetForLeaderEpoch (a client's check that its position was not truncated away).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};

use super::{ConnError, Req, errors};
use crate::broker::Broker;

/// The leader epoch Metadata reports for every partition. A Strata partition's log is written
/// only through the catalog, fenced by the owner's epoch, so it never diverges and is never
/// truncated: one epoch is all a client needs to see.
pub const LEADER_EPOCH: i32 = 0;

/// DeleteRecords: each partition's log start moves to the offset asked (-1: the high
/// watermark); the answer's low watermark is the new log start.
pub async fn delete_records(
    broker: &Broker,
    req: Req,
    request: DeleteRecordsRequest,
) -> Result<Bytes, ConnError> {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let topic = broker.topic(t.name.as_str(), false).await;
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let result = match &topic {
                Ok(topic) => {
                    broker
                        .delete_records(topic, p.partition_index, p.offset)
                        .await
                }
                Err(_) => Err(crate::broker::BrokerError::UnknownTopic(t.name.to_string())),
            };
            let answer =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            partitions.push(match result {
                Ok(start) => answer.with_low_watermark(start.0),
                Err(e) => {
                    tracing::warn!(peer = %req.peer, topic = t.name.as_str(), partition = p.partition_index, error = %e, "DeleteRecords refused");
                    answer.with_low_watermark(-1).with_error_code(errors::code(&e))
                }
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    req.encode(&DeleteRecordsResponse::default().with_topics(topics))
}

/// OffsetForLeaderEpoch: for the one epoch there is, the end offset is the high watermark;
/// an epoch the client cannot have seen is refused as Kafka refuses it.
pub async fn offset_for_leader_epoch(
    broker: &Broker,
    req: Req,
    request: OffsetForLeaderEpochRequest,
) -> Result<Bytes, ConnError> {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let topic = broker.topic(t.topic.as_str(), false).await;
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let answer = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let topic = match &topic {
                Ok(topic) => topic,
                Err(e) => {
                    partitions.push(answer.with_error_code(errors::code(e)));
                    continue;
                }
            };
            let answer = if p.current_leader_epoch > LEADER_EPOCH {
                answer.with_error_code(ResponseError::UnknownLeaderEpoch.code())
            } else if p.leader_epoch > LEADER_EPOCH {
                // An epoch after the current one: Kafka answers "undefined" (-1, -1).
                answer
            } else {
                match broker.offsets(topic, p.partition).await {
                    Ok((_, end)) => answer
                        .with_leader_epoch(LEADER_EPOCH)
                        .with_end_offset(end.0),
                    Err(e) => answer.with_error_code(errors::code(&e)),
                }
            };
            partitions.push(answer);
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    req.encode(&OffsetForLeaderEpochResponse::default().with_topics(topics))
}
