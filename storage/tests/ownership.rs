//! Ownership between brokers, in process: two engines (two brokers) on one SQLite catalog and
//! one object directory. Claims race and exactly one wins; only the current owner's data is
//! ever committed; a release hands the data over; a lapsed lease stops appends; and
//! `acks=1` data a broker lost its partition over comes back when it owns it again.

use std::time::{Duration, Instant};

use strata_storage::batch::stored_batches;
use strata_storage::catalog::tp;
use strata_storage::{Acks, Engine, EngineError, Epoch, Offset, TopicPartition};

mod common;
use common::batch;

/// Opens the engine of broker `id` on the shared catalog and objects under `dir`, with its own
/// WAL. `flush_interval` long keeps appends unflushed until a test wants them flushed.
async fn broker(dir: &std::path::Path, id: &str, flush_interval: Duration) -> Engine {
    common::open_engine(dir, id, flush_interval, 1 << 20, &[]).await
}

async fn partition(engine: &Engine) -> TopicPartition {
    let t = engine
        .catalog()
        .create_topic("t", 1, &Default::default())
        .await
        .unwrap();
    tp(t.id, 0)
}

async fn epoch(engine: &Engine, tp: TopicPartition) -> Epoch {
    engine
        .catalog()
        .partition_state(tp)
        .await
        .unwrap()
        .unwrap()
        .epoch
}

/// The tag byte of every committed batch of `tp`, in offset order (see `common::batch`).
async fn tags(engine: &Engine, tp: TopicPartition) -> Vec<u8> {
    let r = engine.read(tp, Offset(0), 1 << 30).await.unwrap();
    stored_batches(&r.records)
        .map(|(start, _, _)| r.records[start + 67])
        .collect()
}

async fn append(
    engine: &Engine,
    tp: TopicPartition,
    tag: u8,
    acks: Acks,
) -> Result<Offset, EngineError> {
    engine
        .append(tp, vec![batch(2, tag)], acks)?
        .durable()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_have_one_winner_and_only_the_owner_commits() {
    let dir = tempfile::tempdir().unwrap();
    let a = broker(dir.path(), "a", Duration::from_millis(20)).await;
    let b = broker(dir.path(), "b", Duration::from_millis(20)).await;
    let tp = partition(&a).await;
    let mut expected = Vec::new();
    for round in 0..20u8 {
        // Both saw the same epoch (as two brokers that both think the owner is dead).
        let seen = epoch(&a, tp).await;
        let claim = [(tp, seen)];
        let (wa, wb) = tokio::join!(a.claim_at(&claim), b.claim_at(&claim));
        let (wa, wb) = (wa.unwrap(), wb.unwrap());
        assert_eq!(
            wa.len() + wb.len(),
            1,
            "round {round}: exactly one claim wins"
        );
        let (winner, loser) = if wa.is_empty() { (&b, &a) } else { (&a, &b) };
        // The loser may still hold the partition from an earlier round, at an older epoch:
        // its append is accepted locally but its commit is fenced.
        let (rw, rl) = tokio::join!(
            append(winner, tp, round, Acks::All),
            append(loser, tp, 100 + round, Acks::All)
        );
        rw.unwrap();
        assert!(
            matches!(rl, Err(EngineError::NotOwner(t)) if t == tp),
            "round {round}: the loser's append must fail as not-owner, got {rl:?}"
        );
        assert!(!loser.owns(tp), "a fenced broker forgets the partition");
        expected.push(round);
    }
    assert_eq!(tags(&a, tp).await, expected);
    assert_eq!(tags(&b, tp).await, expected);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_everything_accepted_to_the_next_owner() {
    let dir = tempfile::tempdir().unwrap();
    // A flush interval far longer than the test: only the release makes A flush.
    let a = broker(dir.path(), "a", Duration::from_secs(600)).await;
    let b = broker(dir.path(), "b", Duration::from_millis(20)).await;
    let tp = partition(&a).await;
    assert_eq!(a.claim_at(&[(tp, Epoch(0))]).await.unwrap(), vec![tp]);
    for tag in 0..5 {
        append(&a, tp, tag, Acks::Wal).await.unwrap();
    }
    // B cannot take it while A holds it at epoch 1 and B saw 0.
    assert!(b.claim_at(&[(tp, Epoch(0))]).await.unwrap().is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    assert_eq!(a.release(&[tp], deadline).await.unwrap(), vec![tp]);
    assert!(!a.owns(tp));
    assert!(matches!(
        append(&a, tp, 9, Acks::Wal).await,
        Err(EngineError::NotOwner(_))
    ));
    let released = epoch(&b, tp).await;
    assert_eq!(b.claim_at(&[(tp, released)]).await.unwrap(), vec![tp]);
    assert_eq!(append(&b, tp, 5, Acks::All).await.unwrap(), Offset(10));
    assert_eq!(tags(&b, tp).await, vec![0, 1, 2, 3, 4, 5]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_stop_when_the_lease_lapses() {
    let dir = tempfile::tempdir().unwrap();
    let a = broker(dir.path(), "a", Duration::from_millis(20)).await;
    let tp = partition(&a).await;
    a.claim_at(&[(tp, Epoch(0))]).await.unwrap();
    a.renew_lease(Instant::now() + Duration::from_secs(60));
    append(&a, tp, 1, Acks::All).await.unwrap();
    a.renew_lease(Instant::now() - Duration::from_millis(1));
    assert!(matches!(
        append(&a, tp, 2, Acks::All).await,
        Err(EngineError::NotOwner(_))
    ));
    a.renew_lease(Instant::now() + Duration::from_secs(60));
    append(&a, tp, 3, Acks::All).await.unwrap();
    assert_eq!(tags(&a, tp).await, vec![1, 3]);
    a.shutdown().await;
}

async fn wait_for_tags(engine: &Engine, tp: TopicPartition, n: usize) -> Vec<u8> {
    let start = Instant::now();
    while tags(engine, tp).await.len() < n && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tags(engine, tp).await
}

/// A broker frozen past its lease wakes with stale state: another broker claimed the
/// partition and wrote. The records it acknowledged at `acks=1` after waking cannot commit
/// (fenced); they come back, after the new owner's, once it owns the partition again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_1_records_of_a_fenced_broker_come_back_when_it_owns_the_partition_again() {
    let dir = tempfile::tempdir().unwrap();
    let a = broker(dir.path(), "a", Duration::from_millis(200)).await;
    let b = broker(dir.path(), "b", Duration::from_millis(20)).await;
    let tp = partition(&a).await;
    a.claim_at(&[(tp, Epoch(0))]).await.unwrap();
    // "A's lease expired": B takes over at A's epoch and writes; A does not know yet.
    b.claim_at(&[(tp, Epoch(1))]).await.unwrap();
    append(&b, tp, 10, Acks::All).await.unwrap();
    append(&a, tp, 1, Acks::Wal).await.unwrap();
    append(&a, tp, 2, Acks::Wal).await.unwrap();
    let start = Instant::now();
    while a.owns(tp) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!a.owns(tp), "A's flush is fenced and A drops the partition");
    assert_eq!(tags(&b, tp).await, vec![10]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    b.release(&[tp], deadline).await.unwrap();
    a.claim_at(&[(tp, epoch(&a, tp).await)]).await.unwrap();
    assert_eq!(wait_for_tags(&a, tp, 3).await, vec![10, 1, 2]);
    a.shutdown().await;
    b.shutdown().await;
}

/// A broker killed with `acks=1` records only in its WAL; another takes the partition over
/// and writes; the first restarts from its disk and, owning the partition again, appends the
/// lost records after the new ones.
#[test]
fn acks_1_records_in_a_dead_brokers_wal_come_back_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    // Broker A, in a runtime of its own, dropped like a killed process: no final flush.
    let killed = rt();
    let tp = killed.block_on(async {
        let a = broker(dir.path(), "a", Duration::from_secs(600)).await;
        let tp = partition(&a).await;
        a.claim_at(&[(tp, Epoch(0))]).await.unwrap();
        append(&a, tp, 1, Acks::Wal).await.unwrap();
        append(&a, tp, 2, Acks::Wal).await.unwrap();
        tp
    });
    drop(killed);
    rt().block_on(async {
        let b = broker(dir.path(), "b", Duration::from_millis(20)).await;
        b.claim_at(&[(tp, Epoch(1))]).await.unwrap();
        append(&b, tp, 10, Acks::All).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        b.release(&[tp], deadline).await.unwrap();
        b.shutdown().await;
        let a = broker(dir.path(), "a", Duration::from_millis(20)).await;
        a.claim_at(&[(tp, epoch(&a, tp).await)]).await.unwrap();
        assert_eq!(wait_for_tags(&a, tp, 3).await, vec![10, 1, 2]);
        a.shutdown().await;
    });
}
