//! `strata cluster info`.

use anyhow::Result;

use super::output::{print, table};
use crate::client::Client;

/// Prints the brokers and what the answering broker speaks.
pub async fn info(client: &Client) -> Result<()> {
    let hello = client.hello().await?;
    let meta = client.metadata(None).await?;
    let mut t = table(["BROKER", "QUIC", "KAFKA", "HTTP", "ZONE"]);
    for b in &meta.brokers {
        let id = if b.id == hello.broker_id {
            format!("{} (answering)", b.id)
        } else {
            b.id.to_string()
        };
        t.add_row([
            id,
            b.quic.clone(),
            b.kafka.clone(),
            b.http.clone(),
            b.zone.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print(&t);
    println!();
    println!(
        "{} topics, {} partitions; native protocol {}, frames up to {} bytes{}",
        meta.topics.len(),
        meta.topics
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>(),
        hello.protocol,
        hello.max_frame_bytes,
        hello
            .identity
            .map(|i| format!("; you are '{i}'"))
            .unwrap_or_default()
    );
    Ok(())
}
