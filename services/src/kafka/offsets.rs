//! ListOffsets: the earliest and latest offsets of a partition, or the first at a timestamp.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{ConnError, Req, errors};
use crate::broker::{Broker, OffsetSpec};

/// Kafka's special timestamps in ListOffsets.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// Answers a ListOffsets request.
pub async fn list_offsets(
    broker: &Broker,
    req: Req,
    request: ListOffsetsRequest,
) -> Result<Bytes, ConnError> {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let topic = broker.topic(t.name.as_str(), false).await;
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let answer =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let spec = match p.timestamp {
                // At read_committed (v2+), "latest" is the last stable offset.
                LATEST if request.isolation_level == 1 => OffsetSpec::LastStable,
                LATEST => OffsetSpec::Latest,
                EARLIEST => OffsetSpec::Earliest,
                MAX_TIMESTAMP if req.version >= 7 => OffsetSpec::MaxTimestamp,
                ts if ts >= 0 => OffsetSpec::Timestamp(ts),
                _ => {
                    partitions
                        .push(answer.with_error_code(ResponseError::UnsupportedVersion.code()));
                    continue;
                }
            };
            let topic = match &topic {
                Ok(topic) => topic,
                Err(e) => {
                    partitions.push(answer.with_error_code(errors::code(e)));
                    continue;
                }
            };
            partitions.push(
                match broker.list_offset(topic, p.partition_index, spec).await {
                    Ok(Some((offset, timestamp))) => {
                        answer.with_offset(offset.0).with_timestamp(timestamp)
                    }
                    Ok(None) => answer.with_offset(-1).with_timestamp(-1),
                    Err(e) => answer.with_error_code(errors::code(&e)),
                },
            );
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    req.encode(&ListOffsetsResponse::default().with_topics(topics))
}
