//! Fetch: committed batches, with long polling bounded by the client's `max_wait_ms`.
//!
//! A fetch reads every requested partition; if that yields fewer than `min_bytes`, it waits
//! until one of the partitions' high watermarks moves (a flush committed) or the deadline
//! passes, and reads again. Byte limits follow Kafka: `partition_max_bytes` per partition,
//! `max_bytes` for the response, and at least one whole batch so a consumer always advances.

use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use strata_storage::Offset;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::{ConnError, Req, errors};
use crate::broker::{Broker, BrokerError, Topic};

/// One pass over the requested partitions.
struct Pass {
    topics: Vec<FetchableTopicResponse>,
    /// Record bytes in the response.
    bytes: usize,
    /// Whether any partition answered with an error (which ends a long poll, as in Kafka).
    errors: bool,
    /// Watches on the partitions' high watermarks, subscribed before reading so no commit
    /// between the read and the wait is missed.
    watches: Vec<watch::Receiver<Offset>>,
    /// Some partitions are owned by other brokers: no watch tells when they move, so a long
    /// poll looks again every [`NON_OWNER_POLL`].
    unwatched: bool,
}

/// How often a long poll over partitions other brokers own reads them again.
const NON_OWNER_POLL: Duration = Duration::from_millis(100);

/// The broker a consumer in `rack` should fetch `partition` from instead of this one, when
/// this broker owns it but sits in another zone and a live broker sits in the consumer's
/// (KIP-392). Any broker serves reads from the object store, so following costs nothing.
fn preferred_replica(broker: &Broker, topic: &Topic, partition: i32, rack: &str) -> Option<i32> {
    let membership = broker.membership();
    if rack.is_empty() || membership.me().zone.as_deref() == Some(rack) {
        return None;
    }
    let tp = topic.partition(partition).ok()?;
    if !broker.engine().owns(tp) {
        return None;
    }
    let in_zone: Vec<String> = membership
        .members()
        .iter()
        .filter(|m| m.zone.as_deref() == Some(rack) && !m.leaving)
        .map(|m| m.node_id.to_string())
        .collect();
    // Spread a zone's partitions over its brokers, the same way on every fetch.
    let key = format!("{}/{partition}", topic.meta.id);
    crate::cluster::rendezvous::owner(&key, in_zone.iter().map(String::as_str))
        .and_then(|id| id.parse().ok())
}

/// What one partition's read yields for the response.
struct Read {
    records: Bytes,
    log_start: Offset,
    high_watermark: Offset,
    last_stable: Offset,
    /// Aborted transactions in the range read, for `read_committed` fetches.
    aborted: Option<Vec<AbortedTransaction>>,
}

impl Read {
    fn offsets_only(log_start: Offset, high_watermark: Offset) -> Read {
        Read {
            records: Bytes::new(),
            log_start,
            high_watermark,
            last_stable: high_watermark,
            aborted: None,
        }
    }
}

/// Reads one partition at the request's isolation level: `read_committed` (1) stops at the
/// last stable offset and lists the aborted transactions the consumer must skip.
async fn read_partition(
    broker: &Broker,
    request: &FetchRequest,
    topic: &Topic,
    partition: i32,
    offset: i64,
    limit: usize,
) -> Result<Read, BrokerError> {
    if request.isolation_level == 1 {
        let c = broker
            .fetch_committed(topic, partition, Offset(offset), limit)
            .await?;
        let aborted = c
            .aborted
            .iter()
            .map(|a| {
                AbortedTransaction::default()
                    .with_producer_id(ProducerId(a.producer_id))
                    .with_first_offset(a.first_offset.0)
            })
            .collect();
        return Ok(Read {
            records: c.read.records,
            log_start: c.read.log_start,
            high_watermark: c.read.high_watermark,
            last_stable: c.last_stable,
            aborted: Some(aborted),
        });
    }
    let r = broker
        .fetch(topic, partition, Offset(offset), limit)
        .await?;
    Ok(Read {
        records: r.records,
        log_start: r.log_start,
        high_watermark: r.high_watermark,
        last_stable: r.high_watermark,
        aborted: None,
    })
}

async fn read_once(broker: &Broker, request: &FetchRequest) -> Pass {
    let mut total = 0usize;
    let mut failed = false;
    let mut watches = Vec::new();
    let mut unwatched = false;
    let rack = request.rack_id.as_str();
    let budget = request.max_bytes.max(0) as usize;
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in &request.topics {
        let topic = broker.topic(t.topic.as_str(), false).await;
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let data = PartitionData::default().with_partition_index(p.partition);
            let topic = match &topic {
                Ok(topic) => topic,
                Err(e) => {
                    failed = true;
                    partitions.push(data.with_error_code(errors::code(e)));
                    continue;
                }
            };
            if let Some(replica) = preferred_replica(broker, topic, p.partition, rack)
                && let Ok((start, end)) = broker.offsets(topic, p.partition).await
            {
                partitions.push(
                    data.with_high_watermark(end.0)
                        .with_last_stable_offset(end.0)
                        .with_log_start_offset(start.0)
                        .with_preferred_read_replica(BrokerId(replica))
                        .with_records(Some(Bytes::new())),
                );
                // An answer to act on at once, like an error.
                failed = true;
                continue;
            }
            match broker.watch_high_watermark(topic, p.partition) {
                Some(w) => watches.push(w),
                None => unwatched = true,
            }
            let limit = (p.partition_max_bytes.max(0) as usize).min(budget.saturating_sub(total));
            let result = if limit == 0 && total > 0 {
                // Response budget spent: report offsets only.
                broker
                    .offsets(topic, p.partition)
                    .await
                    .map(|(start, end)| Read::offsets_only(start, end))
            } else {
                read_partition(
                    broker,
                    request,
                    topic,
                    p.partition,
                    p.fetch_offset,
                    limit.max(1),
                )
                .await
            };
            partitions.push(match result {
                Ok(read) => {
                    total += read.records.len();
                    data.with_high_watermark(read.high_watermark.0)
                        .with_last_stable_offset(read.last_stable.0)
                        .with_log_start_offset(read.log_start.0)
                        .with_aborted_transactions(read.aborted)
                        .with_records(Some(read.records))
                }
                Err(e) => {
                    failed = true;
                    if !matches!(e, BrokerError::OffsetOutOfRange { .. }) {
                        tracing::warn!(topic = t.topic.as_str(), partition = p.partition, error = %e, "fetch failed");
                    }
                    let data = data.with_error_code(errors::code(&e));
                    match e {
                        BrokerError::OffsetOutOfRange {
                            log_start,
                            high_watermark,
                            ..
                        } => data
                            .with_high_watermark(high_watermark.0)
                            .with_last_stable_offset(high_watermark.0)
                            .with_log_start_offset(log_start.0),
                        _ => data,
                    }
                }
            });
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions),
        );
    }
    Pass {
        topics,
        bytes: total,
        errors: failed,
        watches,
        unwatched,
    }
}

/// Serves a fetch, long-polling until `min_bytes` are available or `max_wait_ms` passes.
pub async fn fetch(broker: &Broker, req: Req, request: FetchRequest) -> Result<Bytes, ConnError> {
    let span =
        tracing::debug_span!("kafka.fetch", peer = %req.peer, isolation = request.isolation_level);
    serve_fetch(broker, req, request).instrument(span).await
}

async fn serve_fetch(broker: &Broker, req: Req, request: FetchRequest) -> Result<Bytes, ConnError> {
    if req.version >= 7 && request.session_id != 0 {
        // This broker never hands out fetch sessions (KIP-227), so no id can be valid.
        let body =
            FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code());
        return req.encode(&body);
    }
    let wait =
        Duration::from_millis(request.max_wait_ms.max(0) as u64).min(crate::broker::MAX_FETCH_WAIT);
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    loop {
        let mut pass = read_once(broker, &request).await;
        let done = pass.bytes >= min_bytes
            || pass.errors
            || (pass.watches.is_empty() && !pass.unwatched)
            || Instant::now() >= deadline;
        if !done {
            let wake = if pass.unwatched {
                (Instant::now() + NON_OWNER_POLL).min(deadline)
            } else {
                deadline
            };
            if pass.watches.is_empty() {
                tokio::time::sleep_until(wake).await;
                continue;
            }
            let changed = select_all(pass.watches.iter_mut().map(|w| Box::pin(w.changed())));
            if tokio::time::timeout_at(wake, changed).await.is_ok() || Instant::now() < deadline {
                continue;
            }
        }
        return req.encode(&FetchResponse::default().with_responses(pass.topics));
    }
}
