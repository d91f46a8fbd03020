//! Produce: batches checked, sequenced in arrival order, answered at the ack level asked.

use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;
use tracing::Instrument;

use super::{ConnError, Reply, Req, errors};
use crate::broker::{Broker, BrokerError};

fn partition_error(index: i32, e: &BrokerError) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(errors::code(e))
        .with_base_offset(-1)
        .with_error_message(Some(StrBytes::from_string(e.to_string())))
}

/// Begins a produce request: every partition's batches are checked and given offsets now, in
/// request order; the wait for durability runs as a task. With `acks=0` nothing is sent back,
/// as Kafka does.
pub async fn produce(
    broker: &Broker,
    req: Req,
    request: ProduceRequest,
) -> Result<Reply, ConnError> {
    let span = tracing::debug_span!("kafka.produce", peer = %req.peer, acks = request.acks);
    if crate::telemetry::tracing_enabled() {
        adopt_trace_context(&span, &request);
    }
    begin(broker, req, request).instrument(span).await
}

/// Makes the trace context a producer put on its first record (W3C `traceparent` header),
/// if any, the parent of the request's span.
fn adopt_trace_context(span: &tracing::Span, request: &ProduceRequest) {
    let first = request
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .find_map(|p| p.records.as_ref());
    if let Some(records) = first {
        let headers: Vec<(&str, &str)> = strata_storage::batch::first_record_headers(records)
            .into_iter()
            .filter_map(|(k, v)| {
                Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v?).ok()?))
            })
            .collect();
        crate::telemetry::adopt_parent(span, &headers);
    }
}

async fn begin(broker: &Broker, req: Req, request: ProduceRequest) -> Result<Reply, ConnError> {
    let timeout = crate::broker::produce_timeout(i64::from(request.timeout_ms));
    let acks = crate::broker::acks(request.acks);
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for t in request.topic_data {
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let begun = match (&acks, p.records) {
                (Err(_), _) => Err(BrokerError::InvalidRequiredAcks(request.acks)),
                (Ok(acks), Some(records)) => {
                    broker
                        .produce(t.name.as_str(), p.index, records, *acks, timeout)
                        .await
                }
                (Ok(_), None) => Err(BrokerError::CorruptMessage(
                    strata_storage::batch::BatchError::Empty,
                )),
            };
            if let Err(e) = &begun {
                e.log_refused_produce(&req.peer, t.name.as_str(), p.index);
            }
            parts.push((p.index, begun));
        }
        topics.push((t.name, t.topic_id, parts));
    }
    if request.acks == 0 {
        return Ok(Reply::Ready(None));
    }
    let span = tracing::Span::current();
    Ok(Reply::Task(tokio::spawn(
        async move {
            let mut responses = Vec::with_capacity(topics.len());
            for (name, topic_id, parts) in topics {
                let waits = parts.into_iter().map(|(index, begun)| async move {
                    let result = match begun {
                        Ok(wait) => wait.await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(offset) => PartitionProduceResponse::default()
                            .with_index(index)
                            .with_base_offset(offset.0)
                            .with_log_start_offset(-1),
                        Err(e) => partition_error(index, &e),
                    }
                });
                responses.push(
                    TopicProduceResponse::default()
                        .with_name(name)
                        .with_topic_id(topic_id)
                        .with_partition_responses(join_all(waits).await),
                );
            }
            let body = ProduceResponse::default().with_responses(responses);
            req.encode(&body).map(Some)
        }
        .instrument(span),
    )))
}

/// InitProducerId: a fresh producer id for an idempotent producer; for a transactional one
/// (a `transactional.id`), its id with a bumped epoch from the transaction coordinator.
pub async fn init_producer_id(
    broker: &Broker,
    req: Req,
    request: InitProducerIdRequest,
) -> Result<Bytes, ConnError> {
    let result = match request.transactional_id.as_ref().filter(|t| !t.is_empty()) {
        Some(id) => {
            // KIP-360 (v3+): a producer re-initialising names its current id and epoch.
            let expected = (req.version >= 3 && request.producer_id.0 >= 0)
                .then_some((request.producer_id.0, request.producer_epoch));
            broker
                .init_transactions(
                    id.as_str(),
                    i64::from(request.transaction_timeout_ms),
                    expected,
                )
                .await
        }
        None => broker.init_producer_id().await,
    };
    let body = match result {
        Ok((id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(e) => {
            tracing::warn!(peer = %req.peer, error = %e, "InitProducerId refused");
            InitProducerIdResponse::default()
                .with_error_code(super::txn::code(req, &e))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    };
    req.encode(&body)
}
