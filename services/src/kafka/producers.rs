//! Producer and transaction state for admin tools: DescribeProducers, ListTransactions and
//! DescribeTransactions (KIP-664).
//!
//! Idempotent producers are described from the engine's per-partition state. Transactions are
//! not offered yet (InitProducerId refuses a transactional id), so there is never an ongoing
//! one: ListTransactions answers an empty list and DescribeTransactions
//! TRANSACTIONAL_ID_NOT_FOUND, which is exactly what Kafka answers for a cluster without them.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::TransactionState as DescribedTxn;
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, DescribeTransactionsRequest,
    DescribeTransactionsResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
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

/// DescribeProducers: each partition's idempotent producers with their epoch and last
/// sequence. The last timestamp is not kept (-1); no producer is in a transaction.
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
                            .map(|(pid, epoch, last_seq)| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(pid))
                                    .with_producer_epoch(i32::from(epoch))
                                    .with_last_sequence(last_seq)
                                    .with_last_timestamp(-1)
                                    .with_coordinator_epoch(-1)
                                    .with_current_txn_start_offset(-1)
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

/// ListTransactions: none are ongoing; unknown state names in the filter are echoed back as
/// Kafka does.
pub fn list_transactions(req: Req, request: ListTransactionsRequest) -> Result<Bytes, ConnError> {
    let unknown: Vec<StrBytes> = request
        .state_filters
        .into_iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .collect();
    req.encode(
        &ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown)
            .with_transaction_states(Vec::new()),
    )
}

/// DescribeTransactions: no transactional id exists.
pub fn describe_transactions(
    req: Req,
    request: DescribeTransactionsRequest,
) -> Result<Bytes, ConnError> {
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| {
            DescribedTxn::default()
                .with_transactional_id(id)
                .with_error_code(ResponseError::TransactionalIdNotFound.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        })
        .collect();
    req.encode(&DescribeTransactionsResponse::default().with_transaction_states(states))
}
