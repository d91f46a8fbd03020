//! `strata cluster info`: the brokers, their zones and heartbeats, and who owns what.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::output::{print, table};
use crate::client::Client;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Prints the live brokers (with how long ago each heartbeat was and how many partitions
/// each owns), then every partition's owner and epoch.
pub async fn info(client: &Client) -> Result<()> {
    let hello = client.hello().await?;
    let meta = client.metadata(None).await?;
    let mut owned: BTreeMap<i32, usize> = BTreeMap::new();
    for p in meta.topics.iter().flat_map(|t| &t.partitions) {
        *owned.entry(p.leader).or_default() += 1;
    }
    let now = now_ms();
    let mut t = table([
        "BROKER",
        "ZONE",
        "HEARTBEAT",
        "PARTITIONS",
        "QUIC",
        "KAFKA",
        "HTTP",
    ]);
    for b in &meta.brokers {
        let mut id = b.id.to_string();
        if b.id == hello.broker_id {
            id.push_str(" (answering)");
        }
        if b.leaving {
            id.push_str(" (leaving)");
        }
        let heartbeat = if b.heartbeat_ms > 0 {
            format!("{:.1} s ago", (now - b.heartbeat_ms).max(0) as f64 / 1000.0)
        } else {
            "-".into()
        };
        t.add_row([
            id,
            b.zone.clone().unwrap_or_else(|| "-".into()),
            heartbeat,
            owned.get(&b.id).copied().unwrap_or(0).to_string(),
            b.quic.clone(),
            b.kafka.clone(),
            b.http.clone(),
        ]);
    }
    print(&t);
    println!();
    let mut p = table(["TOPIC", "PARTITION", "OWNER", "EPOCH"]);
    for topic in &meta.topics {
        for part in &topic.partitions {
            p.add_row([
                topic.name.clone(),
                part.partition.to_string(),
                part.leader.to_string(),
                part.epoch.to_string(),
            ]);
        }
    }
    print(&p);
    println!();
    println!(
        "{} brokers, {} topics, {} partitions; native protocol {}, frames up to {} bytes{}",
        meta.brokers.len(),
        meta.topics.len(),
        owned.values().sum::<usize>(),
        hello.protocol,
        hello.max_frame_bytes,
        hello
            .identity
            .map(|i| format!("; you are '{i}'"))
            .unwrap_or_default()
    );
    Ok(())
}
