//! The producer: records batched per partition, sent in order with several requests waiting
//! for durability at once, retried without duplicates.
//!
//! Each partition has a task that owns its queue. Records accumulate until a batch is full or
//! `linger` passes, then go out as one `produce` request with `pipeline` set: the broker
//! answers early once offsets are assigned, and only then does the task send the partition's
//! next request, so order holds while up to `max_in_flight` requests wait for durability.
//!
//! **Retries never duplicate.** With `idempotent` (the default) every batch carries the
//! producer id and per-partition sequence numbers, as Kafka's idempotent producer does. A
//! request that fails retriably (connection lost, broker restarting, a timeout) is sent again
//! with the same bytes, on a new connection if need be; the broker answers a batch it already
//! holds with its original offset instead of storing it twice. In-flight requests are capped
//! at 5 per partition, the window the broker remembers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use strata_proto::native::MessageKind;
use strata_proto::native::messages::{ProduceRequest, ProduceResponse};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::batch::{self, ProducerFields, Record};
use super::partitioner::partition_for_key;
use super::{Client, ClientError};

/// The broker remembers this many batches per producer and partition for deduplication.
const IDEMPOTENT_WINDOW: usize = 5;

/// Keyless records stick to one partition for this many bytes, then move to the next (Kafka's
/// uniform sticky partitioner, KIP-794, with a batch of this size): batches stay large while
/// records still spread over every partition.
const STICKY_BYTES: usize = 64 << 10;

/// Producer settings. The defaults suit throughput with `acks=all`.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// `0`, `1` or `-1` (all): see `proto/README.md` for each level's promise.
    pub acks: i16,
    /// How long a partition's records may wait for more before a batch is sent.
    pub linger: Duration,
    /// Batch size, in record bytes before compression. Keep it under the topic's
    /// `max.message.bytes` (1 MiB by default).
    pub batch_bytes: usize,
    /// Requests per partition waiting for durability at once (at most 5 when idempotent).
    pub max_in_flight: usize,
    /// Compress batches with zstd.
    pub compression: bool,
    /// Use a producer id and sequence numbers so retries never store a record twice.
    pub idempotent: bool,
    /// How long the broker may take to make one request durable.
    pub request_timeout: Duration,
    /// How long a record may take, retries included, before its delivery fails.
    pub delivery_timeout: Duration,
    /// Bytes of records waiting to be acknowledged before `send` waits (backpressure).
    pub buffer_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: -1,
            linger: Duration::from_millis(5),
            batch_bytes: 1000 << 10,
            max_in_flight: IDEMPOTENT_WINDOW,
            compression: true,
            idempotent: true,
            request_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(120),
            buffer_bytes: 64 << 20,
        }
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset (for `acks=0`, the offset the broker assigned, without a durability promise).
    pub offset: i64,
}

/// Resolves when a record is delivered (or its delivery failed).
pub struct DeliveryFuture(oneshot::Receiver<Result<Delivered, ClientError>>);

impl Future for DeliveryFuture {
    type Output = Result<Delivered, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(ClientError::Closed("the producer stopped".into()))))
    }
}

struct Pending {
    record: Record,
    done: oneshot::Sender<Result<Delivered, ClientError>>,
    _permit: OwnedSemaphorePermit,
}

enum Msg {
    Record(Pending),
    Flush(oneshot::Sender<()>),
}

/// A native producer. Cheap to clone; [`Producer::close`] flushes.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Shared>,
}

struct Shared {
    client: Client,
    config: ProducerConfig,
    producer: Option<(i64, i16)>,
    memory: Arc<Semaphore>,
    partitions: tokio::sync::Mutex<HashMap<String, i32>>,
    senders: Mutex<HashMap<(String, i32), mpsc::UnboundedSender<Msg>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    sticky: Mutex<HashMap<String, (i32, usize)>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Producer {
    /// A producer on `client`; with `idempotent`, asks the broker for a producer id first.
    pub async fn new(client: Client, mut config: ProducerConfig) -> Result<Producer, ClientError> {
        let producer = if config.idempotent {
            config.max_in_flight = config.max_in_flight.clamp(1, IDEMPOTENT_WINDOW);
            let r = client.init_producer_id().await?;
            Some((r.producer_id, r.producer_epoch))
        } else {
            config.max_in_flight = config.max_in_flight.max(1);
            None
        };
        Ok(Producer {
            inner: Arc::new(Shared {
                client,
                memory: Arc::new(Semaphore::new(config.buffer_bytes.max(1 << 20))),
                config,
                producer,
                partitions: tokio::sync::Mutex::new(HashMap::new()),
                senders: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
                sticky: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The topic's partition count, from metadata (cached).
    pub async fn partitions(&self, topic: &str) -> Result<i32, ClientError> {
        let mut cache = self.inner.partitions.lock().await;
        if let Some(n) = cache.get(topic) {
            return Ok(*n);
        }
        let meta = self.inner.client.metadata(Some(vec![topic.into()])).await?;
        let t = meta
            .topics
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("metadata without the topic".into()))?;
        if let Some(e) = t.error {
            return Err(ClientError::Broker(e));
        }
        let n = t.partitions.len() as i32;
        cache.insert(topic.into(), n);
        Ok(n)
    }

    /// Sends a record with the current time; the key (if any) picks the partition as Kafka's
    /// partitioner does, keyless records stick to one partition per batch.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<Bytes>,
        value: Bytes,
    ) -> Result<DeliveryFuture, ClientError> {
        let record = Record {
            key,
            value: Some(value),
            headers: Vec::new(),
            timestamp: now_ms(),
        };
        self.send_record(topic, None, record).await
    }

    /// Sends a record to `partition`, or to the partition its key (or the sticky choice) gives.
    /// Waits while `buffer_bytes` of records are unacknowledged.
    pub async fn send_record(
        &self,
        topic: &str,
        partition: Option<i32>,
        record: Record,
    ) -> Result<DeliveryFuture, ClientError> {
        let count = self.partitions(topic).await?;
        let size = record.size();
        let partition = match (partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, count),
            (None, None) => self.sticky(topic, count, size),
        };
        if !(0..count).contains(&partition) {
            return Err(ClientError::Config(format!(
                "topic '{topic}' has {count} partitions; there is no partition {partition}"
            )));
        }
        let permits = size.min(self.inner.config.buffer_bytes).max(1) as u32;
        let permit = self
            .inner
            .memory
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| ClientError::Closed("the producer is closed".into()))?;
        let (done, rx) = oneshot::channel();
        let msg = Msg::Record(Pending {
            record,
            done,
            _permit: permit,
        });
        self.sender(topic, partition)
            .send(msg)
            .map_err(|_| ClientError::Closed("the producer is closed".into()))?;
        Ok(DeliveryFuture(rx))
    }

    fn sticky(&self, topic: &str, count: i32, size: usize) -> i32 {
        let mut sticky = self.inner.sticky.lock().unwrap_or_else(|p| p.into_inner());
        let slot = sticky.entry(topic.to_string()).or_insert((0, 0));
        if slot.1 + size > STICKY_BYTES.min(self.inner.config.batch_bytes) {
            *slot = ((slot.0 + 1) % count, 0);
        }
        slot.1 += size;
        slot.0 % count
    }

    fn sender(&self, topic: &str, partition: i32) -> mpsc::UnboundedSender<Msg> {
        let mut senders = self.inner.senders.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_string(), partition);
        if let Some(tx) = senders.get(&key) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = PartitionTask {
            client: self.inner.client.clone(),
            config: self.inner.config.clone(),
            producer: self.inner.producer,
            topic: topic.to_string(),
            partition,
            sequence: 0,
        };
        let handle = tokio::spawn(task.run(rx));
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        senders.insert(key, tx.clone());
        tx
    }

    /// Sends everything queued now and waits until it is acknowledged (or failed).
    pub async fn flush(&self) {
        let senders: Vec<_> = self
            .inner
            .senders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut waits = Vec::with_capacity(senders.len());
        for tx in senders {
            let (done, rx) = oneshot::channel();
            if tx.send(Msg::Flush(done)).is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }

    /// Flushes and stops the partition tasks.
    pub async fn close(self) {
        self.flush().await;
        self.inner
            .senders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// A batch on its way, kept whole so a retry sends the same bytes.
struct Request {
    batch: Bytes,
    deliveries: Vec<oneshot::Sender<Result<Delivered, ClientError>>>,
    deadline: Instant,
}

type Durable = Pin<Box<dyn Future<Output = (Request, Result<i64, ClientError>)> + Send>>;

struct PartitionTask {
    client: Client,
    config: ProducerConfig,
    producer: Option<(i64, i16)>,
    topic: String,
    partition: i32,
    sequence: i32,
}

impl PartitionTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut queue: Vec<Pending> = Vec::new();
        let mut queued_bytes = 0usize;
        let mut oldest: Option<Instant> = None;
        let mut in_flight: FuturesOrdered<Durable> = FuturesOrdered::new();
        let mut received = 0u64;
        let mut completed = 0u64;
        let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
        let mut open = true;
        loop {
            let lingered = oldest.is_some_and(|t| t.elapsed() >= self.config.linger);
            let hurry = !open || !flushes.is_empty() || lingered;
            while !queue.is_empty()
                && in_flight.len() < self.config.max_in_flight
                && (hurry || queued_bytes >= self.config.batch_bytes)
            {
                let request = self.take_batch(&mut queue, &mut queued_bytes);
                in_flight.push_back(self.start(request).await);
            }
            if queue.is_empty() {
                oldest = None;
            }
            flushes.retain(|(target, _)| completed < *target);
            if !open && queue.is_empty() && in_flight.is_empty() {
                return;
            }
            let linger_at = oldest.map(|t| t + self.config.linger);
            let may_send = in_flight.len() < self.config.max_in_flight;
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(Msg::Record(p)) => {
                        received += 1;
                        queued_bytes += p.record.size();
                        oldest.get_or_insert_with(Instant::now);
                        queue.push(p);
                    }
                    Some(Msg::Flush(done)) => flushes.push((received, done)),
                    None => open = false,
                },
                Some((request, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    match result {
                        Err(e) if e.retriable() && Instant::now() < request.deadline => {
                            tracing::debug!(topic = self.topic, partition = self.partition, error = %e, "retrying produce");
                            completed += self.recover(request, &mut in_flight).await;
                        }
                        result => {
                            completed += request.deliveries.len() as u64;
                            self.complete(request, result);
                        }
                    }
                    flushes.retain(|(target, _)| completed < *target);
                },
                _ = sleep_until(linger_at), if linger_at.is_some() && may_send => {}
            }
        }
    }

    /// After `failed` (the oldest request in flight) failed retriably: waits for every later
    /// request in flight, then sends `failed` and the later ones that failed again, in
    /// sequence order, before anything new. A new batch sent while older ones still await
    /// their retry would reach the broker out of sequence. Returns the records completed.
    async fn recover(&self, failed: Request, in_flight: &mut FuturesOrdered<Durable>) -> u64 {
        let mut completed = 0;
        let mut retry = vec![failed];
        while let Some((request, result)) = in_flight.next().await {
            match result {
                Err(e) if e.retriable() && Instant::now() < request.deadline => retry.push(request),
                result => {
                    completed += request.deliveries.len() as u64;
                    self.complete(request, result);
                }
            }
        }
        // A pause, so a partition that keeps failing (a broker restarting) is not hammered.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for request in retry {
            in_flight.push_back(self.start(request).await);
        }
        completed
    }

    /// Takes up to a batch of records off the queue and encodes them.
    fn take_batch(&mut self, queue: &mut Vec<Pending>, queued_bytes: &mut usize) -> Request {
        let mut size = 0;
        let mut n = 0;
        for p in queue.iter() {
            let s = p.record.size();
            if n > 0 && size + s > self.config.batch_bytes {
                break;
            }
            size += s;
            n += 1;
        }
        let taken: Vec<Pending> = queue.drain(..n).collect();
        *queued_bytes -= size;
        let producer = self.producer.map(|(id, epoch)| ProducerFields {
            id,
            epoch,
            base_sequence: self.sequence,
        });
        if producer.is_some() {
            // Kafka wraps sequences to 0 after i32::MAX.
            self.sequence =
                ((i64::from(self.sequence) + n as i64) % (i64::from(i32::MAX) + 1)) as i32;
        }
        let records: Vec<Record> = taken.iter().map(|p| p.record.clone()).collect();
        Request {
            batch: batch::encode(&records, self.config.compression, producer),
            deliveries: taken.into_iter().map(|p| p.done).collect(),
            deadline: Instant::now() + self.config.delivery_timeout,
        }
    }

    /// Sends a request and waits for its offsets (the early answer), retrying retriable
    /// failures until the deadline; the result waits for durability.
    async fn start(&self, request: Request) -> Durable {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.sequence_once(&request).await {
                Ok(Sequenced::Durable(recv)) => {
                    return Box::pin(async move {
                        let mut recv = recv;
                        let result =
                            Client::next::<ProduceResponse>(MessageKind::Produce, &mut recv)
                                .await
                                .and_then(|r| {
                                    r.map(|(r, _)| r.base_offset).ok_or_else(|| {
                                        ClientError::Stream("produce stream ended early".into())
                                    })
                                });
                        (request, result)
                    });
                }
                Ok(Sequenced::Done(offset)) => {
                    return Box::pin(async move { (request, Ok(offset)) });
                }
                // Out of sequence goes back to the caller at once: only after the earlier
                // requests are resent (see `recover`) can this one succeed.
                Err(e)
                    if e.retriable()
                        && e.code()
                            != Some(strata_proto::native::ErrorCode::OutOfOrderSequence)
                        && Instant::now() + backoff < request.deadline =>
                {
                    tracing::debug!(topic = self.topic, partition = self.partition, error = %e, "produce not sequenced; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Box::pin(async move { (request, Err(e)) }),
            }
        }
    }

    async fn sequence_once(&self, request: &Request) -> Result<Sequenced, ClientError> {
        let header = ProduceRequest {
            topic: self.topic.clone(),
            partition: self.partition,
            acks: self.config.acks,
            timeout_ms: self.config.request_timeout.as_millis() as u64,
            pipeline: true,
        };
        let mut recv = self
            .client
            .open(MessageKind::Produce, &header, request.batch.clone())
            .await?;
        match Client::next::<ProduceResponse>(MessageKind::Produce, &mut recv).await? {
            Some((r, _)) if r.sequenced => Ok(Sequenced::Durable(recv)),
            Some((r, _)) => Ok(Sequenced::Done(r.base_offset)),
            None => Err(ClientError::Stream("produce stream ended early".into())),
        }
    }

    fn complete(&self, request: Request, result: Result<i64, ClientError>) {
        match result {
            Ok(base) => {
                for (i, done) in request.deliveries.into_iter().enumerate() {
                    let _ = done.send(Ok(Delivered {
                        partition: self.partition,
                        offset: base + i as i64,
                    }));
                }
            }
            Err(e) => {
                tracing::warn!(topic = self.topic, partition = self.partition, error = %e, "produce failed");
                let text = e.to_string();
                let code = e.code();
                for done in request.deliveries {
                    let err = match code {
                        Some(code) => ClientError::Broker(strata_proto::native::WireError::new(
                            code,
                            text.clone(),
                        )),
                        None => ClientError::Closed(text.clone()),
                    };
                    let _ = done.send(Err(err));
                }
            }
        }
    }
}

enum Sequenced {
    /// Offsets assigned; the stream will carry the final answer.
    Durable(quinn::RecvStream),
    /// Already final.
    Done(i64),
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}
