//! The Kafka side of the workloads, through librdkafka (the `rdkafka` crate): the client most
//! Kafka users run, so the figures mean what users would see.
//!
//! Producers are librdkafka's threaded producers, one per `--producers`, each sending from a
//! pool of pre-built payloads (so payload generation costs nothing on the hot path) to the
//! partitions in turn; a delivery callback records each record's send → acknowledgement time
//! in an HdrHistogram. Consumers read assigned partitions and, when payloads carry their send
//! time, record end-to-end latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::payload;

/// Distinct payloads per producer: each partition cycles through all of them in turn.
const POOL: usize = 8192;

/// Latencies are recorded in microseconds, up to an hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Creates a topic (an existing one of that name is an error: results would mix runs).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("cannot create a Kafka admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics([&new], &opts))?;
    for r in results {
        if let Err((name, code)) = r {
            bail!("cannot create topic {name}: {code}");
        }
    }
    Ok(())
}

/// What a produce phase does.
#[derive(Clone)]
pub struct ProduceSpec {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// Topic to write.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Bytes per record value.
    pub record_size: usize,
    /// `acks` setting (`0`, `1`, `all`).
    pub acks: String,
    /// Producer instances (each with its own connection and thread).
    pub producers: usize,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many bytes.
    pub total_bytes: Option<u64>,
    /// Fixed send rate in bytes per second, across all producers.
    pub rate: Option<f64>,
    /// Put the send time (µs since the epoch) in each payload's first 8 bytes.
    pub stamp_send_time: bool,
}

/// What a produce phase achieved.
pub struct ProduceResult {
    /// Records acknowledged.
    pub records: u64,
    /// Value bytes acknowledged.
    pub bytes: u64,
    /// Records that failed.
    pub errors: u64,
    /// Wall time from first send to last acknowledgement.
    pub seconds: f64,
    /// Send → acknowledgement latency, µs.
    pub latency: Histogram<u64>,
}

struct Acked {
    latency: Mutex<Histogram<u64>>,
    records: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

struct LatencyContext(Arc<Acked>);

impl ClientContext for LatencyContext {}

impl ProducerContext for LatencyContext {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        match result {
            Ok(msg) => {
                let micros = sent.elapsed().as_micros() as u64;
                if let Ok(mut h) = self.0.latency.lock() {
                    let _ = h.record(micros.max(1));
                }
                self.0.records.fetch_add(1, Ordering::Relaxed);
                self.0
                    .bytes
                    .fetch_add(msg.payload_len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.0.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn producer(spec: &ProduceSpec, acked: Arc<Acked>) -> Result<ThreadedProducer<LatencyContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", &spec.bootstrap)
        .set("acks", &spec.acks)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", "none")
        .set("queue.buffering.max.kbytes", "65536")
        .set("message.timeout.ms", "120000")
        .create_with_context(LatencyContext(acked))
        .context("cannot create a Kafka producer")
}

/// Produces per `spec` until its duration or byte count is reached or `stop` is set.
pub fn produce(spec: &ProduceSpec, stop: &AtomicBool, bar: &ProgressBar) -> Result<ProduceResult> {
    let acked = Arc::new(Acked {
        latency: Mutex::new(histogram()),
        records: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let sent_bytes = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for index in 0..spec.producers.max(1) {
            let acked = acked.clone();
            let sent_bytes = sent_bytes.clone();
            handles.push(
                scope.spawn(move || {
                    produce_one(spec, index, acked, &sent_bytes, stop, started, bar)
                }),
            );
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let latency = acked
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?
        .clone();
    Ok(ProduceResult {
        records: acked.records.load(Ordering::Relaxed),
        bytes: acked.bytes.load(Ordering::Relaxed),
        errors: acked.errors.load(Ordering::Relaxed),
        seconds,
        latency,
    })
}

fn produce_one(
    spec: &ProduceSpec,
    index: usize,
    acked: Arc<Acked>,
    sent_bytes: &AtomicU64,
    stop: &AtomicBool,
    started: Instant,
    bar: &ProgressBar,
) -> Result<()> {
    let producer = producer(spec, acked)?;
    // Enough distinct payloads that no partition sees a repeat within a batch (a repeat
    // would flatter compression).
    let pool = payload::pool(index as u64 + 1, spec.record_size, POOL);
    let per_producer_rate = spec.rate.map(|r| r / spec.producers.max(1) as f64);
    let mut my_bytes = 0u64;
    let mut value = vec![0u8; spec.record_size];
    let mut i = 0usize;
    let partitions = spec.partitions.max(1) as usize;
    loop {
        if stop.load(Ordering::Relaxed)
            || spec.duration.is_some_and(|d| started.elapsed() >= d)
            || spec
                .total_bytes
                .is_some_and(|t| sent_bytes.load(Ordering::Relaxed) >= t)
        {
            break;
        }
        if let Some(rate) = per_producer_rate {
            let due = Duration::from_secs_f64(my_bytes as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_millis(50)));
                continue;
            }
        }
        let partition = ((i + index) % partitions) as i32;
        value.copy_from_slice(&pool[(i / partitions) % pool.len()]);
        if spec.stamp_send_time && value.len() >= 8 {
            value[..8].copy_from_slice(&now_micros().to_le_bytes());
        }
        let mut record = BaseRecord::<(), [u8], Box<Instant>>::with_opaque_to(
            &spec.topic,
            Box::new(Instant::now()),
        )
        .payload(&value[..])
        .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("produce failed: {e}"),
            }
        }
        i += 1;
        my_bytes += value.len() as u64;
        sent_bytes.fetch_add(value.len() as u64, Ordering::Relaxed);
        bar.inc(value.len() as u64);
    }
    producer
        .flush(Duration::from_secs(120))
        .context("producer could not deliver everything within 120 s")?;
    Ok(())
}

/// What a consume phase does.
pub struct ConsumeSpec {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// Topic to read.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Consumer instances; partitions are dealt out among them.
    pub consumers: usize,
    /// Start from the beginning (replay) or the end (tail).
    pub from_beginning: bool,
    /// Stop after this many records in all.
    pub records: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Payloads carry their send time: record end-to-end latency.
    pub stamped: bool,
}

/// What a consume phase achieved.
pub struct ConsumeResult {
    /// Records read.
    pub records: u64,
    /// Value bytes read.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Produce → receive latency (µs) when payloads are stamped.
    pub e2e: Option<Histogram<u64>>,
}

/// Consumes per `spec` until its record count or duration is reached or `stop` is set.
pub fn consume(spec: &ConsumeSpec, stop: &AtomicBool, bar: &ProgressBar) -> Result<ConsumeResult> {
    let records = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let e2e = Mutex::new(histogram());
    let started = Instant::now();
    let n = spec.consumers.max(1).min(spec.partitions.max(1) as usize);
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for index in 0..n {
            let (records, bytes, e2e) = (&records, &bytes, &e2e);
            handles.push(scope.spawn(move || -> Result<()> {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &spec.bootstrap)
                    .set(
                        "group.id",
                        format!("strata-loadtest-{}", std::process::id()),
                    )
                    .set("enable.auto.commit", "false")
                    .set("fetch.max.bytes", "52428800")
                    .set("max.partition.fetch.bytes", "8388608")
                    .set("fetch.wait.max.ms", "100")
                    .create()
                    .context("cannot create a Kafka consumer")?;
                let mut list = TopicPartitionList::new();
                let start = if spec.from_beginning {
                    Offset::Beginning
                } else {
                    Offset::End
                };
                for p in (0..spec.partitions).filter(|p| *p as usize % n == index) {
                    list.add_partition_offset(&spec.topic, p, start)?;
                }
                consumer.assign(&list)?;
                loop {
                    if stop.load(Ordering::Relaxed)
                        || spec
                            .records
                            .is_some_and(|r| records.load(Ordering::Relaxed) >= r)
                        || spec.duration.is_some_and(|d| started.elapsed() >= d)
                    {
                        return Ok(());
                    }
                    let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let msg = msg.context("consume failed")?;
                    let len = msg.payload_len() as u64;
                    if spec.stamped
                        && let Some(p) = msg.payload()
                        && p.len() >= 8
                    {
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&p[..8]);
                        let micros = now_micros().saturating_sub(u64::from_le_bytes(sent));
                        if let Ok(mut h) = e2e.lock() {
                            let _ = h.record(micros.max(1));
                        }
                    }
                    records.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(len, Ordering::Relaxed);
                    bar.inc(len);
                }
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(ConsumeResult {
        records: records.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        e2e: if spec.stamped {
            e2e.into_inner().ok()
        } else {
            None
        },
    })
}
