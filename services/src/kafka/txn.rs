//! Transactions over the Kafka protocol: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
//! TxnOffsetCommit and the inter-broker WriteTxnMarkers. Thin translations onto the
//! [coordinator](crate::broker::txn) in the broker core.
//!
//! Versions stop before KIP-890's (AddPartitionsToTxn v4+ batches transactions for brokers,
//! EndTxn v5+ bumps the epoch on every transaction): clients negotiate down to these.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, ApiKey, EndTxnRequest, EndTxnResponse, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use strata_storage::TopicPartition;
use strata_storage::catalog::CommittedOffset;

use super::{ConnError, Req, errors};
use crate::broker::{Broker, BrokerError, Topic};

/// The Kafka code for `e` in a transactional answer. Clients older than KIP-588 do not know
/// PRODUCER_FENCED and get INVALID_PRODUCER_EPOCH instead, as Kafka answers them.
pub fn code(req: Req, e: &BrokerError) -> i16 {
    let knows_fenced = match req.api {
        ApiKey::InitProducerId => req.version >= 4,
        ApiKey::AddPartitionsToTxn | ApiKey::AddOffsetsToTxn | ApiKey::EndTxn => req.version >= 2,
        _ => false,
    };
    match e {
        BrokerError::ProducerFenced(_) if !knows_fenced => {
            ResponseError::InvalidProducerEpoch.code()
        }
        e => errors::code(e),
    }
}

fn log_refused(req: Req, id: &str, e: &BrokerError) {
    if e.is_routing() || matches!(e, BrokerError::ConcurrentTransactions(_)) {
        tracing::debug!(peer = %req.peer, transactional_id = id, api = ?req.api, error = %e, "transactional request refused");
    } else {
        tracing::warn!(peer = %req.peer, transactional_id = id, api = ?req.api, error = %e, "transactional request refused");
    }
}

/// The error code answering `result` (0 for success), logged when refused.
fn outcome(req: Req, id: &str, result: Result<(), BrokerError>) -> i16 {
    result.map_or_else(
        |e| {
            log_refused(req, id, &e);
            code(req, &e)
        },
        |()| 0,
    )
}

/// AddPartitionsToTxn (v0–3): every partition must exist, or none is added (the others
/// answer OPERATION_NOT_ATTEMPTED, as in Kafka).
pub async fn add_partitions_to_txn(
    broker: &Broker,
    req: Req,
    request: AddPartitionsToTxnRequest,
) -> Result<Bytes, ConnError> {
    let id = request.v3_and_below_transactional_id.as_str();
    let mut resolved: Vec<(String, i32, Result<TopicPartition, BrokerError>)> = Vec::new();
    for t in &request.v3_and_below_topics {
        let topic = broker.topic(t.name.as_str(), false).await;
        for &p in &t.partitions {
            let tp = match &topic {
                Ok(topic) => topic.partition(p),
                Err(_) => Err(BrokerError::UnknownTopic(t.name.to_string())),
            };
            resolved.push((t.name.to_string(), p, tp));
        }
    }
    let outcome: Result<(), i16> = if resolved.iter().any(|(_, _, r)| r.is_err()) {
        Err(ResponseError::OperationNotAttempted.code())
    } else {
        let tps: Vec<TopicPartition> = resolved
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().ok().copied())
            .collect();
        broker
            .add_partitions_to_txn(
                id,
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch,
                &tps,
            )
            .await
            .map_err(|e| outcome(req, id, Err(e)))
    };
    let mut topics: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for t in &request.v3_and_below_topics {
        let results = resolved
            .iter()
            .filter(|(name, _, _)| name == t.name.as_str())
            .map(|(_, p, r)| {
                let c = match (r, &outcome) {
                    (Err(e), _) => errors::code(e),
                    (Ok(_), Err(c)) => *c,
                    (Ok(_), Ok(())) => 0,
                };
                AddPartitionsToTxnPartitionResult::default()
                    .with_partition_index(*p)
                    .with_partition_error_code(c)
            })
            .collect();
        topics.push(
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(results),
        );
    }
    req.encode(&AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics))
}

/// AddOffsetsToTxn: the transaction will commit offsets for a group.
pub async fn add_offsets_to_txn(
    broker: &Broker,
    req: Req,
    request: AddOffsetsToTxnRequest,
) -> Result<Bytes, ConnError> {
    let id = request.transactional_id.as_str();
    let result = broker
        .add_offsets_to_txn(
            id,
            request.producer_id.0,
            request.producer_epoch,
            request.group_id.as_str(),
        )
        .await;
    req.encode(&AddOffsetsToTxnResponse::default().with_error_code(outcome(req, id, result)))
}

/// EndTxn: commit or abort.
pub async fn end_txn(
    broker: &Broker,
    req: Req,
    request: EndTxnRequest,
) -> Result<Bytes, ConnError> {
    let id = request.transactional_id.as_str();
    let result = broker
        .end_txn(
            id,
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
        .await;
    req.encode(&EndTxnResponse::default().with_error_code(outcome(req, id, result)))
}

/// TxnOffsetCommit (to the group's coordinator): offsets held in the transaction until it
/// ends.
pub async fn txn_offset_commit(
    broker: &Broker,
    req: Req,
    request: TxnOffsetCommitRequest,
) -> Result<Bytes, ConnError> {
    let id = request.transactional_id.as_str();
    let group = request.group_id.as_str();
    let mut offsets = Vec::new();
    let mut results: Vec<(kafka_protocol::messages::TopicName, Vec<(i32, i16)>)> = Vec::new();
    for t in &request.topics {
        let topic = broker.topic(t.name.as_str(), false).await;
        let mut parts = Vec::new();
        for p in &t.partitions {
            let tp = match &topic {
                Ok(topic) => topic.partition(p.partition_index),
                Err(_) => Err(BrokerError::UnknownTopic(t.name.to_string())),
            };
            match tp {
                Ok(tp) => {
                    offsets.push(CommittedOffset {
                        tp,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    });
                    parts.push((p.partition_index, 0));
                }
                Err(e) => parts.push((p.partition_index, errors::code(&e))),
            }
        }
        results.push((t.name.clone(), parts));
    }
    // KIP-447: from v3 a producer names its consumer's generation and member id.
    let member = (req.version >= 3 && !request.member_id.is_empty())
        .then(|| (request.generation_id, request.member_id.as_str()));
    if !offsets.is_empty()
        && let Err(e) = broker
            .txn_offset_commit(
                id,
                group,
                request.producer_id.0,
                request.producer_epoch,
                member,
                offsets,
            )
            .await
    {
        log_refused(req, id, &e);
        let c = code(req, &e);
        for (_, parts) in &mut results {
            for (_, outcome) in parts.iter_mut().filter(|(_, o)| *o == 0) {
                *outcome = c;
            }
        }
    }
    let topics = results
        .into_iter()
        .map(|(name, parts)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(p, c)| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect();
    req.encode(&TxnOffsetCommitResponse::default().with_topics(topics))
}

/// Partition `p` of `topic` when this broker owns it, else the code to answer for it.
fn owned_partition(
    broker: &Broker,
    topic: &Result<std::sync::Arc<Topic>, BrokerError>,
    p: i32,
) -> Result<TopicPartition, i16> {
    let topic = topic.as_ref().map_err(errors::code)?;
    let tp = topic.partition(p).map_err(|e| errors::code(&e))?;
    if broker.engine().owns(tp) {
        Ok(tp)
    } else {
        Err(ResponseError::NotLeaderOrFollower.code())
    }
}

/// WriteTxnMarkers: another broker, coordinating a transaction, asks this one to end it on
/// partitions this one owns.
pub async fn write_txn_markers(
    broker: &Broker,
    req: Req,
    request: WriteTxnMarkersRequest,
) -> Result<Bytes, ConnError> {
    let mut markers = Vec::with_capacity(request.markers.len());
    for m in request.markers {
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            let topic = broker.topic(t.name.as_str(), false).await;
            let mut owned = Vec::new();
            let mut answers: Vec<(i32, i16)> = Vec::new();
            for &p in &t.partition_indexes {
                match owned_partition(broker, &topic, p) {
                    Ok(tp) => owned.push(tp),
                    Err(c) => answers.push((p, c)),
                }
            }
            for (tp, result) in broker
                .write_local_markers(
                    m.producer_id.0,
                    m.producer_epoch,
                    m.transaction_result,
                    &owned,
                )
                .await
            {
                if let Err(e) = &result {
                    tracing::warn!(%tp, error = %e, "transaction marker not written");
                }
                answers.push((
                    tp.partition.0,
                    result.map_or_else(|e| errors::code(&e), |()| 0),
                ));
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(
                        answers
                            .into_iter()
                            .map(|(p, c)| {
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_error_code(c)
                            })
                            .collect(),
                    ),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    req.encode(&WriteTxnMarkersResponse::default().with_markers(markers))
}
