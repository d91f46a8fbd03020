//! Producer and transaction state for admin tools: DescribeProducers, ListTransactions and
//! DescribeTransactions (KIP-664).
//!
//! Producers are described from the engine's per-partition state (with the first offset of
//! a transaction they hold open); transactions from their records in the catalog, which every
//! broker reads alike.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedTxn,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTxn;
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, DescribeTransactionsRequest,
    DescribeTransactionsResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{ConnError, Req, errors};
use crate::broker::Broker;

/// Kafka's transaction state names, for checking ListTransactions filters.
const STATES: [&str; 8] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

/// DescribeProducers: each partition's idempotent producers with their epoch, last
/// sequence and the first offset of the transaction they hold open (-1 when none). The last
/// timestamp is not kept (-1).
pub async fn describe_producers(
    broker: &Broker,
    req: Req,
    request: DescribeProducersRequest,
) -> Result<Bytes, ConnError> {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let topic = broker.topic(t.name.as_str(), false).await;
        let partitions = t
            .partition_indexes
            .iter()
            .map(|&p| {
                let answer = PartitionResponse::default().with_partition_index(p);
                let producers = topic
                    .as_ref()
                    .map_err(|e| (errors::code(e), e.to_string()))
                    .and_then(|topic| {
                        broker
                            .active_producers(topic, p)
                            .map_err(|e| (errors::code(&e), e.to_string()))
                    });
                match producers {
                    Ok(list) => answer.with_active_producers(
                        list.into_iter()
                            .map(|(pid, epoch, last_seq, txn_start)| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(pid))
                                    .with_producer_epoch(i32::from(epoch))
                                    .with_last_sequence(last_seq)
                                    .with_last_timestamp(-1)
                                    .with_coordinator_epoch(if txn_start >= 0 { 0 } else { -1 })
                                    .with_current_txn_start_offset(txn_start)
                            })
                            .collect(),
                    ),
                    Err((code, message)) => answer
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message))),
                }
            })
            .collect();
        topics.push(
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    req.encode(&DescribeProducersResponse::default().with_topics(topics))
}

/// ListTransactions: every transactional id, filtered by state, producer id and (v1) how
/// long the transaction has been running; unknown state names in the filter are echoed back
/// as Kafka does.
pub async fn list_transactions(
    broker: &Broker,
    req: Req,
    request: ListTransactionsRequest,
) -> Result<Bytes, ConnError> {
    let unknown: Vec<StrBytes> = request
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let records = match broker.transactions().await {
        Ok(r) => r,
        Err(e) => {
            return req
                .encode(&ListTransactionsResponse::default().with_error_code(errors::code(&e)));
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let states = records
        .into_iter()
        .filter(|r| {
            request.state_filters.is_empty()
                || request
                    .state_filters
                    .iter()
                    .any(|s| s.as_str() == r.state.name())
        })
        .filter(|r| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .iter()
                    .any(|p| p.0 == r.producer_id)
        })
        .filter(|r| {
            request.duration_filter < 0
                || (r.started_ms >= 0 && now - r.started_ms >= request.duration_filter)
        })
        .map(|r| {
            ListedTxn::default()
                .with_transactional_id(StrBytes::from_string(r.transactional_id).into())
                .with_producer_id(ProducerId(r.producer_id))
                .with_transaction_state(StrBytes::from_static_str(r.state.name()))
        })
        .collect();
    req.encode(
        &ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown)
            .with_transaction_states(states),
    )
}

/// DescribeTransactions: each named transactional id's state, producer, timeout, start and
/// partitions; TRANSACTIONAL_ID_NOT_FOUND for an id never initialised.
pub async fn describe_transactions(
    broker: &Broker,
    req: Req,
    request: DescribeTransactionsRequest,
) -> Result<Bytes, ConnError> {
    let records = broker.transactions().await;
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| {
            let answer = DescribedTxn::default()
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            let found = records.as_ref().map(|all| {
                all.iter()
                    .find(|r| r.transactional_id == id.as_str())
                    .cloned()
            });
            match found {
                Err(e) => answer
                    .with_transactional_id(id)
                    .with_error_code(errors::code(e)),
                Ok(None) => answer
                    .with_transactional_id(id)
                    .with_error_code(ResponseError::TransactionalIdNotFound.code()),
                Ok(Some(r)) => {
                    let mut topics: Vec<TopicData> = Vec::new();
                    for tp in &r.partitions {
                        let Some(topic) = broker.topic_by_id(tp.topic) else {
                            continue;
                        };
                        let name = topic.meta.name.as_str();
                        match topics.iter_mut().find(|t| t.topic.as_str() == name) {
                            Some(t) => t.partitions.push(tp.partition.0),
                            None => topics.push(
                                TopicData::default()
                                    .with_topic(TopicName(StrBytes::from_string(name.to_string())))
                                    .with_partitions(vec![tp.partition.0]),
                            ),
                        }
                    }
                    answer
                        .with_transactional_id(id)
                        .with_transaction_state(StrBytes::from_static_str(r.state.name()))
                        .with_transaction_timeout_ms(r.timeout_ms as i32)
                        .with_transaction_start_time_ms(r.started_ms)
                        .with_producer_id(ProducerId(r.producer_id))
                        .with_producer_epoch(r.producer_epoch)
                        .with_topics(topics)
                }
            }
        })
        .collect();
    req.encode(&DescribeTransactionsResponse::default().with_transaction_states(states))
}
