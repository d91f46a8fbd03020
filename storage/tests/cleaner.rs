//! Key compaction of a `cleanup.policy=compact` partition, in process: the newest record per
//! key stays at its offset, older ones go, an expired tombstone goes with its key, a recent
//! one stays, and the newest extent is left alone. Real SQLite catalog and local objects.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use strata_storage::batch::{Batch, BatchHeader, stored_batches, write_record};
use strata_storage::catalog::{Catalog, SqlCatalog, tp};
use strata_storage::cleaner::CleanPolicy;
use strata_storage::{Acks, Engine, Offset, TopicPartition};

mod common;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A batch of `(key, value)` records, all stamped `ts`.
fn keyed(records: &[(&str, Option<&str>)], ts: i64) -> Batch {
    let mut section = Vec::new();
    for (i, (k, v)) in records.iter().enumerate() {
        write_record(
            &mut section,
            0,
            i as i64,
            Some(k.as_bytes()),
            v.map(str::as_bytes),
            &[],
        );
    }
    let header = BatchHeader {
        base_offset: 0,
        attributes: 0,
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp: ts,
        max_timestamp: ts,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count: records.len() as i32,
    };
    Batch::parse_all(header.assemble(&section), 1 << 20)
        .unwrap()
        .remove(0)
}

/// Every record of `tp` from offset 0: `(offset, key, value)`, and the batches' spans.
async fn read_all(
    engine: &Engine,
    tp: TopicPartition,
) -> (Vec<(i64, String, Option<String>)>, Vec<(i64, i64)>) {
    let r = engine.read(tp, Offset(0), 1 << 30).await.unwrap();
    let mut spans = Vec::new();
    for (start, size, count) in stored_batches(&r.records) {
        let base = i64::from_be_bytes(r.records[start..start + 8].try_into().unwrap());
        spans.push((base, count));
        let _ = size;
    }
    let mut buf = Bytes::from(BytesMut::from(r.records.as_ref()));
    let mut out = Vec::new();
    while !buf.is_empty() {
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        for rec in set.records {
            let text = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
            out.push((rec.offset, text(rec.key).unwrap(), text(rec.value)));
        }
    }
    (out, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_record_per_key_stays_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = SqlCatalog::connect(&format!("sqlite://{}/catalog.db", dir.path().display()))
        .await
        .unwrap();
    let topic = catalog
        .create_topic("c", 1, &Default::default())
        .await
        .unwrap();
    let p0 = tp(topic.id, 0);
    let engine = common::open_engine(dir.path(), "1", Duration::from_millis(20), 4096, &[p0]).await;
    let now = now_ms();
    let append = |b: Batch| {
        let engine = engine.clone();
        async move {
            engine
                .append(p0, vec![b], Acks::All)
                .unwrap()
                .durable()
                .await
                .unwrap()
        }
    };
    // Five rounds of updates to k0..k3: offsets 0..=19, one flush (extent) each.
    for round in 0..5 {
        let values: Vec<String> = (0..4).map(|k| format!("v{round}-k{k}")).collect();
        let records: Vec<(String, Option<&str>)> = (0..4)
            .map(|k| (format!("k{k}"), Some(values[k].as_str())))
            .collect();
        let refs: Vec<(&str, Option<&str>)> =
            records.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        append(keyed(&refs, now)).await;
    }
    // k1 deleted long ago (its tombstone has expired), k2 just now.
    append(keyed(&[("k1", None)], now - 10_000)).await; // 20
    append(keyed(&[("k2", None)], now)).await; // 21
    append(keyed(&[("tail", Some("t"))], now)).await; // 22: the newest extent, never cleaned

    let before = catalog.stored(p0, Offset(0)).await.unwrap();
    let policy = CleanPolicy {
        delete_retention_ms: 5_000,
        min_age: Duration::ZERO,
    };
    let cleaned = engine
        .clean(p0, policy, now_ms())
        .await
        .unwrap()
        .expect("records to remove");
    // 18 superseded updates and the expired tombstone of k1.
    assert_eq!(cleaned.records_removed, 19, "{cleaned:?}");
    let after = catalog.stored(p0, Offset(0)).await.unwrap();
    assert!(after.bytes < before.bytes, "{before:?} -> {after:?}");

    let (records, spans) = read_all(&engine, p0).await;
    let expected = vec![
        (16, "k0".to_string(), Some("v4-k0".to_string())),
        (19, "k3".to_string(), Some("v4-k3".to_string())),
        (21, "k2".to_string(), None),
        (22, "tail".to_string(), Some("t".to_string())),
    ];
    assert_eq!(records, expected);
    // Batches keep their offsets and cover the log without gaps from the first kept one on.
    let mut next = spans[0].0;
    for (base, count) in &spans {
        assert_eq!(*base, next, "{spans:?}");
        next = base + count;
    }
    assert_eq!(next, 23);

    // Nothing new: the next pass has nothing to do.
    assert_eq!(engine.clean(p0, policy, now_ms()).await.unwrap(), None);
    // The cleaned history survives a restart.
    engine.shutdown().await;
    drop(engine);
    let engine = common::open_engine(dir.path(), "1", Duration::from_millis(20), 4096, &[p0]).await;
    assert_eq!(read_all(&engine, p0).await.0, expected);
    engine.shutdown().await;
}
