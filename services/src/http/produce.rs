//! Records arriving over HTTP, into the log: the partition each goes to, the batches they
//! travel in, and the wait for durability. Shared by v2 and v3 produce.
//!
//! A record with a partition goes there; one with a key goes to Kafka's murmur2 partition of
//! the key (so it lands where a Kafka client would put it); the unkeyed records of one request
//! go together to one partition, chosen round-robin between requests (as Kafka's sticky
//! partitioner does between batches) among the partitions this broker owns. In a cluster a
//! keyed record or an explicit partition owned by another broker is forwarded to its owner
//! (a Kafka `Produce` at acks=all, see [`crate::cluster::peer`]); if the owner cannot take it,
//! the answer is a retriable 503 (50003). Each partition's records become RecordBatch v2 batches
//! no larger than the topic's `max.message.bytes` and are handed to the broker core in request
//! order, so offsets follow the order of the request. Every write waits for `acks=all`: the
//! answer comes once the records are in the object store and the catalog.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_storage::{Acks, Offset};

use super::error::ApiError;
use crate::broker::{Broker, BrokerError, Topic};
use crate::client::batch::{Record, encode};
use crate::client::partitioner::partition_for_key;

/// How long a produce waits for durability before answering with a retriable error.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Room left in a batch for its header and per-record framing when sizing batches.
const BATCH_OVERHEAD: usize = 128;

/// Turns the round-robin partition choice of unkeyed records.
static NEXT_PARTITION: AtomicU32 = AtomicU32::new(0);

/// One record to produce, as decoded from a request.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    /// The partition asked for, if any.
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<Bytes>,
    /// The value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Where one record went: its partition, and its offset or why it was not written.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The partition chosen.
    pub partition: i32,
    /// The record's offset once durable, or the error of the batch that carried it.
    pub offset: Result<i64, ApiError>,
    /// The timestamp the record was given (ms since the epoch).
    pub timestamp: i64,
}

type Durable = Pin<Box<dyn Future<Output = Result<Offset, BrokerError>> + Send>>;

/// A batch handed to the core: its partition, the request indices of its records, and the
/// wait for its durability (or why it was refused).
struct Sent {
    partition: i32,
    indices: Vec<usize>,
    durable: Result<Durable, ApiError>,
}

/// The partition of each record (see the module docs); an explicit partition the topic does
/// not have refuses the whole request (404 40402) before anything is written.
fn choose_partitions(
    broker: &Broker,
    topic: &Topic,
    records: &[OutRecord],
) -> Result<Vec<i32>, ApiError> {
    let count = topic.meta.partitions.max(1);
    // Unkeyed records go to a partition this broker owns when it owns any: in a cluster,
    // only the owner takes writes, and an HTTP client cannot be sent elsewhere as a Kafka
    // client is.
    let owned: Vec<i32> = (0..count)
        .filter(|p| topic.partition(*p).is_ok_and(|tp| broker.engine().owns(tp)))
        .collect();
    let turn = NEXT_PARTITION.fetch_add(1, Ordering::Relaxed) as usize;
    let sticky = match owned.len() {
        0 => (turn % count as usize) as i32,
        n => owned[turn % n],
    };
    records
        .iter()
        .map(|r| match (r.partition, &r.key) {
            (Some(p), _) if (0..count).contains(&p) => Ok(p),
            (Some(p), _) => Err(ApiError::unknown_partition(&topic.meta.name, i64::from(p))),
            (None, Some(key)) => Ok(partition_for_key(key, count)),
            (None, None) => Ok(sticky),
        })
        .collect()
}

/// The Kafka address of the live broker that owns `partition`, when that is not this one.
fn elsewhere(broker: &Broker, topic: &Topic, partition: i32) -> Option<String> {
    let tp = topic.partition(partition).ok()?;
    if broker.engine().owns(tp) {
        return None;
    }
    let membership = broker.membership();
    let owner = membership.leader(tp);
    if owner == membership.me().node_id {
        return None;
    }
    let m = membership.member(owner)?;
    Some(format!("{}:{}", m.kafka.0, m.kafka.1))
}

/// Sends one partition's records to its owner at `addr` (batches in order, each after the
/// previous one is durable, so offsets follow the request), as one [`Sent`] per batch.
fn forward(
    addr: &str,
    topic: &Topic,
    partition: i32,
    indices: &[usize],
    batch: &[Record],
    limit: usize,
) -> Vec<Sent> {
    let ranges = chunks(batch, limit);
    let encoded: Vec<Bytes> = ranges
        .iter()
        .map(|r| encode(&batch[r.clone()], false, None))
        .collect();
    let (addr, name) = (addr.to_string(), topic.meta.name.clone());
    // One task sends them in order; each batch's wait takes its result from a channel.
    let (senders, waits): (Vec<_>, Vec<_>) = encoded
        .iter()
        .map(|_| tokio::sync::oneshot::channel::<Result<Offset, BrokerError>>())
        .unzip();
    tokio::spawn(async move {
        for (bytes, tx) in encoded.into_iter().zip(senders) {
            let result = crate::cluster::peer::produce(
                &addr,
                &name,
                partition,
                bytes,
                PRODUCE_TIMEOUT,
            )
            .await
            .map(Offset)
            .map_err(|e| {
                BrokerError::NotLeader(match e {
                    Ok(code) => format!(
                        "{name}/{partition}: its owner at {addr} answered Kafka error {code}"
                    ),
                    Err(reason) => format!(
                        "{name}/{partition}: its owner at {addr} could not be reached: {reason}"
                    ),
                })
            });
            let failed = result.is_err();
            let _ = tx.send(result);
            if failed {
                break; // later batches would land out of order; their waits see the drop
            }
        }
    });
    ranges
        .into_iter()
        .zip(waits)
        .map(|(range, rx)| Sent {
            partition,
            indices: indices[range].to_vec(),
            durable: Ok(Box::pin(async move {
                rx.await.unwrap_or_else(|_| {
                    Err(BrokerError::NotLeader(
                        "an earlier batch to the partition's owner failed".into(),
                    ))
                })
            }) as Durable),
        })
        .collect()
}

/// Splits one partition's records into runs whose batches stay under `max_bytes`.
fn chunks(records: &[Record], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, BATCH_OVERHEAD);
    for (i, r) in records.iter().enumerate() {
        if i > start && size + r.size() > max_bytes {
            out.push(start..i);
            (start, size) = (i, BATCH_OVERHEAD);
        }
        size += r.size();
    }
    if start < records.len() {
        out.push(start..records.len());
    }
    out
}

/// Sequences `records` into `topic` now (offsets are assigned in request order before this
/// returns) and gives back the wait for their durability, which yields one [`Placed`] per
/// record in request order.
pub async fn sequence(
    broker: &Broker,
    topic: &Topic,
    records: Vec<OutRecord>,
) -> Result<impl Future<Output = Vec<Placed>> + Send + 'static, ApiError> {
    let partitions = choose_partitions(broker, topic, &records)?;
    let timestamp = chrono::Utc::now().timestamp_millis();
    let total = records.len();
    let mut by_partition: BTreeMap<i32, (Vec<usize>, Vec<Record>)> = BTreeMap::new();
    for (i, (r, p)) in records.into_iter().zip(partitions).enumerate() {
        let entry = by_partition.entry(p).or_default();
        entry.0.push(i);
        entry.1.push(Record {
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp,
        });
    }
    let limit = topic.config.max_message_bytes;
    let mut sent = Vec::new();
    for (partition, (indices, batch)) in by_partition {
        if let Some(owner) = elsewhere(broker, topic, partition) {
            sent.extend(forward(&owner, topic, partition, &indices, &batch, limit));
            continue;
        }
        for range in chunks(&batch, limit) {
            let bytes = encode(&batch[range.clone()], false, None);
            let durable = broker
                .produce(&topic.meta.name, partition, bytes, Acks::All, PRODUCE_TIMEOUT)
                .await
                .map(|f| Box::pin(f) as Durable)
                .map_err(|e| {
                    tracing::debug!(topic = topic.meta.name, partition, error = %e, "HTTP produce refused");
                    ApiError::from(e)
                });
            sent.push(Sent {
                partition,
                indices: indices[range].to_vec(),
                durable,
            });
        }
    }
    Ok(async move {
        let waits = sent.into_iter().map(|s| async move {
            let result = match s.durable {
                Ok(wait) => wait.await.map_err(ApiError::from),
                Err(e) => Err(e),
            };
            (s.partition, s.indices, result)
        });
        let mut placed: Vec<Option<Placed>> = vec![None; total];
        for (partition, indices, result) in futures::future::join_all(waits).await {
            for (k, i) in indices.into_iter().enumerate() {
                placed[i] = Some(Placed {
                    partition,
                    offset: result.clone().map(|base| base.0 + k as i64),
                    timestamp,
                });
            }
        }
        placed
            .into_iter()
            .map(|p| {
                p.unwrap_or_else(|| Placed {
                    partition: -1,
                    offset: Err(ApiError::internal("record was not sent")),
                    timestamp,
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: usize) -> Record {
        Record {
            value: Some(Bytes::from(vec![b'x'; n])),
            ..Record::default()
        }
    }

    #[test]
    fn batches_stay_under_the_limit() {
        let records: Vec<Record> = (0..10).map(|_| rec(100)).collect();
        let runs = chunks(&records, 400);
        assert!(runs.len() > 1);
        assert_eq!(runs.first().map(|r| r.start), Some(0));
        assert_eq!(runs.last().map(|r| r.end), Some(10));
        for w in runs.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        // A record larger than the limit still travels, alone (and the broker refuses it).
        assert_eq!(chunks(&[rec(1000)], 400), vec![0..1]);
        assert!(chunks(&[], 400).is_empty());
    }
}
