//! The native side of the workloads: Strata's own protocol over QUIC, through the Rust client
//! library (`strata::client`), as a native application would use it.
//!
//! Each producer instance has its own QUIC connection and `Producer`, sends pre-built payloads
//! to the partitions in turn, and records send → acknowledgement latency. Reading phases read
//! every partition back with fetches (`Consumer`) or server-push subscriptions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use strata::client::batch::{Record, decode};
use strata::client::{Client, ClientConfig, Consumer, Producer, ProducerConfig};
use strata_proto::native::messages::{CreateTopicRequest, SubscribeRequest};

use crate::kafka::{ProduceResult, histogram};
use crate::payload;

/// Distinct payloads per producer, as on the Kafka side.
const POOL: usize = 8192;
/// Deliveries a producer leaves outstanding before it waits for some.
const OUTSTANDING: usize = 100_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where the native front end of a broker is.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port` (UDP).
    pub addr: String,
    /// The broker's CA certificate.
    pub ca: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn connect(e: &Endpoint) -> Result<Client> {
    Ok(Client::connect(ClientConfig::new(e.addr.clone(), e.ca.clone())).await?)
}

/// Creates a topic over the native protocol.
pub fn create_topic(e: &Endpoint, topic: &str, partitions: i32) -> Result<()> {
    runtime()?.block_on(async {
        let client = connect(e).await?;
        client
            .create_topic(&CreateTopicRequest {
                name: topic.into(),
                partitions,
                configs: Default::default(),
                validate_only: false,
            })
            .await?;
        client.close().await;
        Ok(())
    })
}

/// Produces for `duration` (or until `stop`), like the Kafka side's `produce`.
#[allow(clippy::too_many_arguments)]
pub fn produce(
    e: &Endpoint,
    topic: &str,
    partitions: i32,
    record_size: usize,
    acks: i16,
    producers: usize,
    duration: Duration,
    stop: &AtomicBool,
    bar: &ProgressBar,
) -> Result<ProduceResult> {
    let rt = runtime()?;
    let started = Instant::now();
    // Producers run as futures of this one task (their partition senders are tasks of their
    // own), so they can borrow the stop flag and the bar.
    let results = rt.block_on(futures::future::join_all((0..producers.max(1)).map(
        |index| {
            produce_one(
                e,
                topic,
                partitions,
                record_size,
                acks,
                index,
                duration,
                stop,
                started,
                bar,
            )
        },
    )));
    let seconds = started.elapsed().as_secs_f64();
    let mut total = ProduceResult {
        records: 0,
        bytes: 0,
        errors: 0,
        seconds,
        latency: histogram(),
    };
    for r in results {
        let r = r?;
        total.records += r.records;
        total.bytes += r.bytes;
        total.errors += r.errors;
        total
            .latency
            .add(&r.latency)
            .context("latency histograms differ")?;
    }
    Ok(total)
}

#[allow(clippy::too_many_arguments)]
async fn produce_one(
    e: &Endpoint,
    topic: &str,
    partitions: i32,
    record_size: usize,
    acks: i16,
    index: usize,
    duration: Duration,
    stop: &AtomicBool,
    started: Instant,
    bar: &ProgressBar,
) -> Result<ProduceResult> {
    let client = connect(e).await?;
    let config = ProducerConfig {
        acks,
        // Payloads are sent as they come, as the Kafka side's are (compression off there too).
        compression: false,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await?;
    let pool: Vec<Bytes> = payload::pool(index as u64 + 1, record_size, POOL)
        .into_iter()
        .map(Bytes::from)
        .collect();
    let mut latency: Histogram<u64> = histogram();
    let (mut records, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut pending = FuturesUnordered::new();
    let parts = partitions.max(1) as usize;
    let mut note = |r: (
        Instant,
        Result<strata::client::Delivered, strata::client::ClientError>,
    )| {
        match r.1 {
            Ok(_) => {
                records += 1;
                bytes += record_size as u64;
                let _ = latency.record((r.0.elapsed().as_micros() as u64).max(1));
            }
            Err(_) => errors += 1,
        }
    };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
        let record = Record {
            key: None,
            value: Some(pool[(i / parts) % pool.len()].clone()),
            headers: Vec::new(),
            // A real time: records older than retention.ms are deleted.
            timestamp: now_ms(),
        };
        let partition = ((i + index) % parts) as i32;
        let sent = Instant::now();
        let delivery = producer.send_record(topic, Some(partition), record).await?;
        pending.push(async move { (sent, delivery.await) });
        bar.inc(record_size as u64);
        i += 1;
        while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
            note(r);
        }
        while pending.len() >= OUTSTANDING {
            if let Some(r) = pending.next().await {
                note(r);
            }
        }
    }
    producer.flush().await;
    while let Some(r) = pending.next().await {
        note(r);
    }
    producer.close().await;
    client.close().await;
    Ok(ProduceResult {
        records,
        bytes,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        latency,
    })
}

/// What a reading phase achieved.
pub struct ReadResult {
    /// Records read.
    pub records: u64,
    /// Value bytes read.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Reads every partition from 0 to `records` records in all, with fetches (`subscribe` false)
/// or server-push subscriptions.
pub fn read(
    e: &Endpoint,
    topic: &str,
    partitions: i32,
    records: u64,
    subscribe: bool,
    stop: &AtomicBool,
    bar: &ProgressBar,
) -> Result<ReadResult> {
    let rt = runtime()?;
    let started = Instant::now();
    let count = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    rt.block_on(async {
        let client = connect(e).await?;
        if subscribe {
            let mut tasks = FuturesUnordered::new();
            for p in 0..partitions {
                let client = client.clone();
                let (count, bytes) = (&count, &bytes);
                tasks.push(async move {
                    let mut sub = client
                        .subscribe(&SubscribeRequest {
                            topic: topic.into(),
                            partition: p,
                            offset: 0,
                            max_bytes: 4 << 20,
                        })
                        .await?;
                    loop {
                        if stop.load(Ordering::Relaxed) || count.load(Ordering::Relaxed) >= records
                        {
                            return Ok::<_, anyhow::Error>(());
                        }
                        let next =
                            tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
                        let Ok(next) = next else { continue };
                        let Some((_, payload)) = next? else {
                            return Ok(());
                        };
                        let got = decode(payload).map_err(anyhow::Error::msg)?;
                        let b: u64 = got
                            .iter()
                            .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
                            .sum();
                        count.fetch_add(got.len() as u64, Ordering::Relaxed);
                        bytes.fetch_add(b, Ordering::Relaxed);
                        bar.inc(b);
                    }
                });
            }
            while let Some(r) = tasks.next().await {
                r?;
            }
        } else {
            let mut consumer = Consumer::new(client.clone());
            for p in 0..partitions {
                consumer.seek(topic, p, 0);
            }
            while !stop.load(Ordering::Relaxed) && count.load(Ordering::Relaxed) < records {
                let got = consumer.poll(Duration::from_millis(200)).await?;
                let b: u64 = got
                    .iter()
                    .map(|r| r.record.value.as_ref().map_or(0, |v| v.len() as u64))
                    .sum();
                count.fetch_add(got.len() as u64, Ordering::Relaxed);
                bytes.fetch_add(b, Ordering::Relaxed);
                bar.inc(b);
            }
        }
        client.close().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ReadResult {
        records: count.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}
