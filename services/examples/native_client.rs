//! A native client end to end: create a topic, produce keyed records, read them back.
//!
//! Start a broker (`cargo run --release -p strata -- serve`), then from the same directory:
//!
//! ```text
//! cargo run --release -p strata --example native_client
//! ```
//!
//! `STRATA_ADDR` and `STRATA_CA` point it elsewhere.

use std::time::Duration;

use bytes::Bytes;
use strata::client::{Client, ClientConfig, Consumer, Producer, ProducerConfig, StartFrom};
use strata_proto::native::ErrorCode;
use strata_proto::native::messages::CreateTopicRequest;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("STRATA_ADDR").unwrap_or_else(|_| "127.0.0.1:9093".into());
    let ca = std::env::var("STRATA_CA").unwrap_or_else(|_| "strata-data/tls/ca.pem".into());
    let client = Client::connect(ClientConfig::new(addr, ca)).await?;

    // Create the topic unless it exists.
    let create = CreateTopicRequest {
        name: "example".into(),
        partitions: 3,
        configs: Default::default(),
        validate_only: false,
    };
    match client.create_topic(&create).await {
        Ok(_) => println!("created topic 'example'"),
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
        Err(e) => return Err(e.into()),
    }

    // Produce: the key picks the partition exactly as a Kafka client would.
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
    let mut deliveries = Vec::new();
    for i in 0..10 {
        let key = Bytes::from(format!("user-{}", i % 3));
        let value = Bytes::from(format!("event {i}"));
        deliveries.push(producer.send("example", Some(key), value).await?);
    }
    for d in deliveries {
        let d = d.await?;
        println!("stored in partition {} at offset {}", d.partition, d.offset);
    }
    producer.close().await;

    // Consume every partition from the start, up to the end.
    let mut consumer = Consumer::new(client.clone());
    for p in 0..3 {
        let start = consumer.resolve("example", p, StartFrom::Earliest).await?;
        consumer.seek("example", p, start);
    }
    while !consumer.at_end() {
        for r in consumer.poll(Duration::from_millis(100)).await? {
            let value = r.record.value.unwrap_or_default();
            println!(
                "{}/{}@{}: {}",
                r.topic,
                r.partition,
                r.record.offset,
                String::from_utf8_lossy(&value)
            );
        }
    }
    client.close().await;
    Ok(())
}
