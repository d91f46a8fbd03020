//! The engine end to end, in process: appends at every ack level, pipelined flushes, reads,
//! and a clean restart. Real SQLite catalog and local-directory object store. (Crashes —
//! `kill -9` with data only in the WAL — are tested on the real process, in `tests/`.)

use std::time::Duration;

use strata_storage::batch::stored_batches;
use strata_storage::catalog::{Catalog, SqlCatalog, tp};
use strata_storage::{Acks, Engine, Offset, TopicPartition};

mod common;
use common::batch;

async fn open(dir: &std::path::Path, tps: &[TopicPartition]) -> Engine {
    common::open_engine(dir, "1", Duration::from_millis(20), 4096, tps).await
}

/// `(base offset, offset count)` of every batch of `tp`, read back from offset 0.
async fn read_offsets(engine: &Engine, tp: TopicPartition) -> Vec<(i64, i64)> {
    let r = engine.read(tp, Offset(0), 1 << 30).await.unwrap();
    stored_batches(&r.records)
        .map(|(start, _, count)| {
            let base = i64::from_be_bytes(r.records[start..start + 8].try_into().unwrap());
            (base, count)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_flush_in_order_and_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let setup = SqlCatalog::connect(&format!("sqlite://{}/catalog.db", dir.path().display()))
        .await
        .unwrap();
    let topic = setup
        .create_topic("t", 2, &Default::default())
        .await
        .unwrap();
    let (p0, p1) = (tp(topic.id, 0), tp(topic.id, 1));
    let engine = open(dir.path(), &[p0, p1]).await;

    // Many small appends at every ack level: several flushes, pipelined.
    let mut waits = Vec::new();
    for i in 0..60u8 {
        let acks = [Acks::All, Acks::Wal, Acks::None][usize::from(i % 3)];
        let tp = if i % 2 == 0 { p0 } else { p1 };
        waits.push(engine.append(tp, vec![batch(5, i)], acks).unwrap());
    }
    let mut offsets = Vec::new();
    for w in waits {
        offsets.push(w.durable().await.unwrap().0);
    }
    assert_eq!(&offsets[..4], &[0, 0, 5, 5]);
    // Wait for everything (acks=0 too) to be committed.
    let mut hwm = engine.watch_high_watermark(p0).unwrap();
    tokio::time::timeout(Duration::from_secs(20), hwm.wait_for(|h| *h >= Offset(150)))
        .await
        .unwrap()
        .unwrap();
    let before = read_offsets(&engine, p0).await;
    assert_eq!(before.len(), 30);
    assert!(
        before
            .iter()
            .enumerate()
            .all(|(i, (base, n))| *base == i as i64 * 5 && *n == 5)
    );

    // Acks=1 data appended just before a clean shutdown is flushed by it.
    let late = engine.append(p1, vec![batch(3, 99)], Acks::Wal).unwrap();
    assert_eq!(late.durable().await.unwrap(), Offset(150));
    engine.shutdown().await;

    let engine = open(dir.path(), &[p0, p1]).await;
    let mut hwm = engine.watch_high_watermark(p1).unwrap();
    tokio::time::timeout(Duration::from_secs(20), hwm.wait_for(|h| *h >= Offset(153)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_offsets(&engine, p0).await, before);
    let p1_batches = read_offsets(&engine, p1).await;
    assert_eq!(p1_batches.last(), Some(&(150, 3)));
    engine.shutdown().await;
}

/// Objects a flush stored but never committed (a crash between PUT and commit) are deleted
/// once older than the grace period; committed objects and young orphans stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_older_than_the_grace_period_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let setup = SqlCatalog::connect(&format!("sqlite://{}/catalog.db", dir.path().display()))
        .await
        .unwrap();
    let t = setup
        .create_topic("orphans", 1, &Default::default())
        .await
        .unwrap();
    let p = tp(t.id, 0);
    let engine = open(dir.path(), &[p]).await;
    engine
        .append(p, vec![batch(3, 1)], Acks::All)
        .unwrap()
        .durable()
        .await
        .unwrap();
    let now = chrono_now_ms();
    let old = format!(
        "segments/2020/01/01/{}.seg",
        ulid::Ulid::from_parts(1_577_836_800_000, 7)
    );
    let young = strata_storage::segment::new_key();
    for key in [&old, &young] {
        engine
            .objects()
            .put(key, bytes::Bytes::from_static(b"not committed"))
            .await
            .unwrap();
    }
    let everything = strata_storage::segment::day_prefixes(now, 0);
    let deleted = engine
        .collect_orphans(now, Duration::from_secs(600), &everything)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let left: Vec<String> = engine
        .objects()
        .list("segments/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(!left.contains(&old), "the old orphan is gone");
    assert!(
        left.contains(&young),
        "a young orphan may be a flush in flight: kept"
    );
    assert_eq!(left.len(), 2, "the committed object stays: {left:?}");
    assert_eq!(read_offsets(&engine, p).await, vec![(0, 3)]);
    engine.shutdown().await;
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Compaction rewrites a partition's many small extents (one per flush) as one object: the
/// same records at the same offsets, fewer extents, and the old objects become garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_record_in_fewer_extents() {
    use strata_storage::compaction::CompactionPolicy;
    let dir = tempfile::tempdir().unwrap();
    let setup = SqlCatalog::connect(&format!("sqlite://{}/catalog.db", dir.path().display()))
        .await
        .unwrap();
    let t = setup
        .create_topic("compacted", 2, &Default::default())
        .await
        .unwrap();
    let (p0, p1) = (tp(t.id, 0), tp(t.id, 1));
    let engine = open(dir.path(), &[p0, p1]).await;
    // One flush per append (acks=all waits for it): 20 small extents per partition.
    for i in 0..20u8 {
        for p in [p0, p1] {
            engine
                .append(p, vec![batch(3, i)], Acks::All)
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
    }
    let before = read_offsets(&engine, p0).await;
    let stored = |p| {
        let c = engine.catalog().clone();
        async move { c.stored(p, Offset(0)).await.unwrap() }
    };
    assert!(stored(p0).await.extents >= 10, "{:?}", stored(p0).await);
    let policy = CompactionPolicy {
        target_bytes: 1 << 20,
        min_age: Duration::ZERO,
    };
    // Below the target and fewer than 256 extents: nothing yet.
    assert_eq!(
        engine.compact(p0, policy, chrono_now_ms()).await.unwrap(),
        0
    );
    let small = CompactionPolicy {
        target_bytes: 600,
        min_age: Duration::ZERO,
    };
    let replaced = engine.compact(p0, small, chrono_now_ms()).await.unwrap();
    assert!(replaced >= 10, "replaced {replaced}");
    assert!(stored(p0).await.extents < 10, "{:?}", stored(p0).await);
    assert_eq!(read_offsets(&engine, p0).await, before);
    // The other partition is untouched; its objects are shared, so none of them is dead yet.
    assert!(stored(p1).await.extents >= 10);
    // A new owner's read (nothing in memory) sees the same.
    engine.shutdown().await;
    let again = open(dir.path(), &[p0, p1]).await;
    assert_eq!(read_offsets(&again, p0).await, before);
    again.shutdown().await;
}
