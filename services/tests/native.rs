//! The Rust client against a real broker process: produce and consume, subscriptions,
//! connection migration, and idempotent retries across a `kill -9` of the broker.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata::client::{Client, ClientConfig, Consumer, Producer, ProducerConfig, batch};
use strata_proto::native::messages::{CreateTopicRequest, SubscribeRequest};

struct Broker {
    dir: PathBuf,
    quic: u16,
    kafka: u16,
    http: u16,
    child: Option<Child>,
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `/healthz` answers: the broker serves every front end by then.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1")
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let mut b = Broker {
            dir: dir.to_path_buf(),
            quic: free_udp(),
            kafka: free_tcp(),
            http: free_tcp(),
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--kafka-addr", &format!("127.0.0.1:{}", self.kafka)])
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http)])
            .args(["--quic-addr", &format!("127.0.0.1:{}", self.quic)])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !healthy(self.http) {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(
            format!("127.0.0.1:{}", self.quic),
            self.dir.join("data/tls/ca.pem"),
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn topic(client: &Client, name: &str, partitions: i32) {
    client
        .create_topic(&CreateTopicRequest {
            name: name.into(),
            partitions,
            configs: Default::default(),
            validate_only: false,
        })
        .await
        .unwrap();
}

/// Reads every partition from 0 until `expected` records are there and the end is reached.
/// Records become readable once flushed (acks=1 answers before that), hence the wait.
async fn read_all(
    client: &Client,
    name: &str,
    partitions: i32,
    expected: usize,
) -> Vec<(i32, i64, Bytes)> {
    let mut consumer = Consumer::new(client.clone());
    for p in 0..partitions {
        consumer.seek(name, p, 0);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < expected || !consumer.at_end() {
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} records readable after 60 s",
            out.len()
        );
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            out.push((r.partition, r.record.offset, r.record.value.unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_and_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = Client::connect(broker.config()).await.unwrap();
    assert_eq!(client.hello().await.unwrap().protocol, 1);
    topic(&client, "events", 4).await;

    let mut sub = client
        .subscribe(&SubscribeRequest {
            topic: "events".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
        })
        .await
        .unwrap();

    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut waits = Vec::new();
    for i in 0..2000 {
        let key = Bytes::from(format!("key-{}", i % 37));
        let value = Bytes::from(format!("value-{i}"));
        waits.push(producer.send("events", Some(key), value).await.unwrap());
    }
    let mut delivered = Vec::new();
    for w in waits {
        delivered.push(w.await.unwrap());
    }
    producer.close().await;

    let records = read_all(&client, "events", 4, 2000).await;
    assert_eq!(records.len(), 2000);
    for (i, d) in delivered.iter().enumerate() {
        let want =
            strata::client::partitioner::partition_for_key(format!("key-{}", i % 37).as_bytes(), 4);
        assert_eq!(
            d.partition, want,
            "a key goes where Kafka's partitioner puts it"
        );
        let found = records
            .iter()
            .find(|(p, o, _)| *p == d.partition && *o == d.offset)
            .expect("every delivered record is readable at its offset");
        assert_eq!(found.2, Bytes::from(format!("value-{i}")));
    }

    // The subscription pushed partition 0's records as they became readable.
    let on_zero = records.iter().filter(|(p, _, _)| *p == 0).count();
    let mut pushed = 0;
    while pushed < on_zero {
        let (_, payload) = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("pushed in time")
            .unwrap()
            .expect("subscription open");
        pushed += batch::decode(payload).unwrap().len();
    }
    assert_eq!(pushed, on_zero);
    sub.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_survives_a_change_of_address() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = Client::connect(broker.config()).await.unwrap();
    topic(&client, "moves", 1).await;
    let before = (client.connection_id().await, client.local_addr().unwrap());
    client
        .rebind(UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let d = producer
        .send("moves", None, Bytes::from_static(b"after the move"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(d.offset, 0);
    let after = (client.connection_id().await, client.local_addr().unwrap());
    assert_ne!(before.1, after.1, "the client moved to a new address");
    assert_eq!(before.0, after.0, "on the same QUIC connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_across_a_broker_crash_store_each_record_once_acks_all() {
    crash_mid_produce(-1).await;
}

/// At `acks=1` a record is acknowledged once it is in the WAL, which the restarted broker
/// replays: the same promise must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_across_a_broker_crash_store_each_record_once_acks_1() {
    crash_mid_produce(1).await;
}

async fn crash_mid_produce(acks: i16) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let client = Client::connect(broker.config()).await.unwrap();
    topic(&client, "crash", 2).await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks,
            linger: Duration::from_millis(1),
            batch_bytes: 2048,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut waits = Vec::new();
    for i in 0..3000 {
        if i == 1500 {
            // Mid-stream: the broker dies with requests in flight and comes back.
            broker.kill9();
            broker.spawn();
        }
        let value = Bytes::from(format!("record-{i}"));
        waits.push(
            producer
                .send("crash", Some(Bytes::from(format!("k{}", i % 10))), value)
                .await
                .unwrap(),
        );
    }
    // Kafka's promise, and ours: every acknowledged record is stored exactly once. A record
    // whose delivery failed is reported to the caller (counted here); none is silently lost
    // or written twice.
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for (i, w) in waits.into_iter().enumerate() {
        match w.await {
            Ok(_) => acknowledged.push(Bytes::from(format!("record-{i}"))),
            Err(e) => {
                failed += 1;
                eprintln!("record-{i} not delivered: {e}");
            }
        }
    }
    assert!(
        acknowledged.len() >= 1500,
        "the records produced before the crash are delivered: {failed} failed"
    );
    producer.close().await;
    let records = read_all(&client, "crash", 2, acknowledged.len()).await;
    let mut values: Vec<_> = records.iter().map(|(_, _, v)| v.clone()).collect();
    values.sort();
    let before = values.len();
    values.dedup();
    assert_eq!(before, values.len(), "no record is stored twice");
    let stored: std::collections::HashSet<_> = values.into_iter().collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|v| !stored.contains(*v))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
}
