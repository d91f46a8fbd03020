//! Broker-to-broker requests, in the Kafka protocol: what one broker asks of another that
//! owns a partition it needs written.
//!
//! Brokers coordinate through the catalog, but only a partition's owner sequences its log.
//! So a transaction's coordinator sends the owner Kafka's own `WriteTxnMarkers` request, as a
//! Kafka transaction coordinator does, and a broker that took records over HTTP for a
//! partition another broker owns forwards them as a Kafka `Produce` (acks=all) — both over a
//! short-lived connection to the owner's Kafka listener, since neither is on a hot path a
//! Kafka client would take (Kafka clients go to the owner themselves).

use std::time::Duration;

use bytes::Buf;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, ProducerId, RequestHeader, ResponseHeader, TopicName,
    WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use strata_proto::frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The `WriteTxnMarkers` version spoken (the only one the protocol crate has).
const VERSION: i16 = 1;

/// How long one forwarded request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response accepted.
const MAX_RESPONSE: usize = 16 << 20;

/// Asks the broker at `addr` (`host:port` of its Kafka listener) to write the markers of
/// `producer_id`'s transaction to `partitions` (`(topic, partition)`), and waits until they
/// are durable. Returns each partition's Kafka error code (0 for success).
pub async fn write_txn_markers(
    addr: &str,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    partitions: &[(&str, i32)],
) -> Result<Vec<(String, i32, i16)>, String> {
    let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
    for &(name, partition) in partitions {
        match topics.iter_mut().find(|t| t.name.as_str() == name) {
            Some(t) => t.partition_indexes.push(partition),
            None => topics.push(
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name.to_string())))
                    .with_partition_indexes(vec![partition]),
            ),
        }
    }
    let request = WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_transaction_result(commit)
            .with_topics(topics)
            .with_coordinator_epoch(0),
    ]);
    let response = tokio::time::timeout(TIMEOUT, send(addr, &request))
        .await
        .map_err(|_| format!("no answer from {addr} within {TIMEOUT:?}"))??;
    Ok(response
        .markers
        .into_iter()
        .flat_map(|m| m.topics)
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions
                .into_iter()
                .map(move |p| (name.clone(), p.partition_index, p.error_code))
        })
        .collect())
}

/// The Produce version forwarded (one every Strata broker speaks).
const PRODUCE_VERSION: i16 = 8;

/// Forwards `records` (RecordBatch v2 bytes) for `topic`/`partition` to its owner at `addr`
/// with acks=all, waiting up to `timeout` for them to be durable. Returns the base offset, or
/// the Kafka error code the owner answered (`Err(Ok(code))`) or why it could not be asked
/// (`Err(Err(reason))`).
pub async fn produce(
    addr: &str,
    topic: &str,
    partition: i32,
    records: bytes::Bytes,
    timeout: Duration,
) -> Result<i64, Result<i16, String>> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ]);
    let response: ProduceResponse = tokio::time::timeout(
        timeout + TIMEOUT,
        call(addr, ApiKey::Produce, PRODUCE_VERSION, &request),
    )
    .await
    .map_err(|_| {
        Err(format!(
            "no answer from {addr} within {:?}",
            timeout + TIMEOUT
        ))
    })?
    .map_err(Err)?;
    let answer = response
        .responses
        .into_iter()
        .flat_map(|t| t.partition_responses)
        .find(|p| p.index == partition)
        .ok_or_else(|| Err(format!("{addr} did not answer for {topic}/{partition}")))?;
    if answer.error_code != 0 {
        return Err(Ok(answer.error_code));
    }
    Ok(answer.base_offset)
}

async fn send(
    addr: &str,
    request: &WriteTxnMarkersRequest,
) -> Result<WriteTxnMarkersResponse, String> {
    call(addr, ApiKey::WriteTxnMarkers, VERSION, request).await
}

/// One request to the Kafka listener at `addr` on a fresh connection, and its response.
async fn call<Q: Encodable, R: Decodable>(
    addr: &str,
    api: ApiKey,
    version: i16,
    request: &Q,
) -> Result<R, String> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("strata-broker")));
    let mut buf = frame::start_frame();
    header
        .encode(&mut buf, api.request_header_version(version))
        .and_then(|()| request.encode(&mut buf, version))
        .map_err(|e| format!("cannot encode {api:?}: {e}"))?;
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .write_all(&frame::finish_frame(buf))
        .await
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut body = frame::read_frame(&mut stream, 4, MAX_RESPONSE)
        .await
        .map_err(|e| format!("reading from {addr}: {e}"))?
        .ok_or_else(|| format!("{addr} closed the connection without answering"))?;
    ResponseHeader::decode(&mut body, api.response_header_version(version))
        .map_err(|e| format!("bad response header from {addr}: {e}"))?;
    let response = R::decode(&mut body, version)
        .map_err(|e| format!("bad {api:?} response from {addr}: {e}"))?;
    if body.has_remaining() {
        tracing::debug!(
            addr,
            extra = body.remaining(),
            ?api,
            "trailing bytes after a response"
        );
    }
    Ok(response)
}
