//! Transactions on a partition, in process: an open transaction holds the last stable offset
//! back, its marker releases it, an abort is remembered for `read_committed` readers, and all
//! of it survives a restart (rebuilt from the catalog). Real SQLite catalog and local
//! objects.

use std::time::Duration;

use strata_storage::catalog::{Catalog, SqlCatalog, tp};
use strata_storage::txn::AbortedTxn;
use strata_storage::{Acks, Engine, Offset, TopicPartition};

mod common;
use bytes::Bytes;
use common::batch;
use strata_storage::batch::Batch;

/// [`batch`] from producer `pid` at `epoch`, first sequence `seq`, marked transactional when
/// `transactional` (the header fields a Kafka producer sets).
pub fn producer_batch(
    n: usize,
    tag: u8,
    pid: i64,
    epoch: i16,
    seq: i32,
    transactional: bool,
) -> Batch {
    let mut b = batch(n, tag).bytes().to_vec();
    let attributes: i16 = if transactional { 0x10 } else { 0 };
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    b[43..51].copy_from_slice(&pid.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Batch::parse_all(Bytes::from(b), 1 << 20).unwrap().remove(0)
}

async fn open(dir: &std::path::Path, tps: &[TopicPartition]) -> Engine {
    common::open_engine(dir, "1", Duration::from_millis(20), 4096, tps).await
}

async fn append(engine: &Engine, tp: TopicPartition, b: strata_storage::batch::Batch) -> Offset {
    engine
        .append(tp, vec![b], Acks::All)
        .unwrap()
        .durable()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_move_the_stable_offset_and_aborts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = SqlCatalog::connect(&format!("sqlite://{}/catalog.db", dir.path().display()))
        .await
        .unwrap();
    let topic = catalog
        .create_topic("t", 1, &Default::default())
        .await
        .unwrap();
    let p0 = tp(topic.id, 0);
    let engine = open(dir.path(), &[p0]).await;

    // Producer 7 opens a transaction at 0; a plain batch follows it.
    append(&engine, p0, producer_batch(2, b'a', 7, 0, 0, true)).await;
    append(&engine, p0, batch(2, b'b')).await;
    let (lso, aborted) = engine.stable_view(p0, Offset(0)).await.unwrap();
    assert_eq!(lso, Offset(0));
    assert!(aborted.is_empty());
    let below = engine
        .read_below(p0, Offset(0), 1 << 20, Some(lso))
        .await
        .unwrap();
    assert!(below.records.is_empty(), "nothing is stable yet");

    // The abort marker lands at 4 and releases everything up to it.
    let marker = engine
        .append_marker(p0, 7, 0, false, 1000)
        .unwrap()
        .expect("a transaction was open");
    assert_eq!(marker.durable().await.unwrap(), Offset(4));
    let expected = AbortedTxn {
        producer_id: 7,
        first_offset: Offset(0),
        last_offset: Offset(4),
    };
    assert_eq!(
        engine.stable_view(p0, Offset(0)).await.unwrap(),
        (Offset(5), vec![expected])
    );
    // A second marker for the same transaction (a coordinator retrying) changes nothing.
    assert!(
        engine
            .append_marker(p0, 7, 0, false, 1000)
            .unwrap()
            .is_none()
    );

    // Producer 8 opens a transaction at 5 and the broker restarts before its marker.
    append(&engine, p0, producer_batch(1, b'c', 8, 0, 0, true)).await;
    engine.shutdown().await;
    drop(engine);
    let engine = open(dir.path(), &[p0]).await;
    let (lso, aborted) = engine.stable_view(p0, Offset(0)).await.unwrap();
    assert_eq!(
        lso,
        Offset(5),
        "the open transaction still holds the stable offset"
    );
    assert_eq!(aborted, vec![expected], "the abort is remembered");
    // A marker from an older epoch than the producer's is refused.
    assert!(engine.append_marker(p0, 8, -1, true, 1000).is_err());
    let commit = engine.append_marker(p0, 8, 1, true, 1000).unwrap().unwrap();
    assert_eq!(commit.durable().await.unwrap(), Offset(6));
    let (lso, _) = engine.stable_view(p0, Offset(0)).await.unwrap();
    assert_eq!(lso, Offset(7));
    // The marker bumped the producer's epoch here: the older instance is fenced.
    assert!(
        engine
            .append(p0, vec![producer_batch(1, b'z', 8, 0, 1, true)], Acks::All)
            .is_err()
    );
    // Past the stable offset every record reads back, markers included.
    let all = engine.read(p0, Offset(0), 1 << 20).await.unwrap();
    assert_eq!(
        strata_storage::batch::stored_batches(&all.records).count(),
        5
    );
    engine.shutdown().await;
}
