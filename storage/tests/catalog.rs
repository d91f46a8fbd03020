//! One catalog suite, run against SQLite and PostgreSQL.
//!
//! SQLite runs always, on a temporary file. PostgreSQL runs when `STRATA_TEST_POSTGRES_URL`
//! names a server (the test script starts one on a free loopback port and sets it); without
//! it the PostgreSQL half says so and passes, so a bare `cargo test` works on a laptop.

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_storage::catalog::{
    BrokerInfo, Catalog, CatalogError, CommittedOffset, Compaction, FlushCommit, ProducerState,
    SqlCatalog, tp,
};
use strata_storage::producers::ProducerEntry;
use strata_storage::segment::ExtentMeta;
use strata_storage::txn::{AbortedTxn, TransactionRecord, TxnState};
use strata_storage::{Epoch, Offset, TopicPartition};

fn extent(tp: TopicPartition, base: i64, last: i64) -> ExtentMeta {
    ExtentMeta {
        tp,
        base_offset: Offset(base),
        last_offset: Offset(last),
        byte_start: 0,
        byte_len: 100,
        min_timestamp: 1000 + base,
        max_timestamp: 1000 + last,
        record_count: last - base + 1,
    }
}

fn commit(key: &str, extents: &[(ExtentMeta, Epoch)]) -> FlushCommit {
    FlushCommit {
        object_key: key.to_string(),
        object_size: 100,
        extents: extents.to_vec(),
        producers: Vec::new(),
        aborted: Vec::new(),
    }
}

/// A topic name no other test (or earlier run against the same server) uses.
fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn topics_and_configs(c: &dyn Catalog) {
    let name = unique("orders");
    let mut configs = BTreeMap::new();
    configs.insert("retention.ms".to_string(), "1000".to_string());
    let t = c.create_topic(&name, 3, &configs).await.unwrap();
    assert_eq!(t.partitions, 3);
    assert!(matches!(
        c.create_topic(&name, 1, &BTreeMap::new()).await,
        Err(CatalogError::TopicExists(_))
    ));
    let got = c.topic(&name).await.unwrap().unwrap();
    assert_eq!(got, t);
    assert!(
        c.list_topics()
            .await
            .unwrap()
            .iter()
            .any(|x| x.name == name)
    );

    let grown = c.add_partitions(&name, 5).await.unwrap();
    assert_eq!(grown.partitions, 5);
    assert!(c.partition_state(tp(t.id, 4)).await.unwrap().is_some());
    assert!(matches!(
        c.add_partitions(&name, 2).await,
        Err(CatalogError::InvalidPartitions { .. })
    ));

    let mut changes = BTreeMap::new();
    changes.insert("retention.ms".to_string(), None);
    changes.insert("cleanup.policy".to_string(), Some("delete".to_string()));
    let altered = c.alter_topic_configs(&name, &changes).await.unwrap();
    assert_eq!(altered.configs.len(), 1);
    assert_eq!(altered.configs["cleanup.policy"], "delete");

    c.delete_topic(&name).await.unwrap();
    assert!(c.topic(&name).await.unwrap().is_none());
    assert!(c.partition_state(tp(t.id, 0)).await.unwrap().is_none());
    assert!(matches!(
        c.delete_topic(&name).await,
        Err(CatalogError::UnknownTopic(_))
    ));
}

async fn commits_advance_and_extents_are_found(c: &dyn Catalog) {
    let t = c
        .create_topic(&unique("events"), 2, &BTreeMap::new())
        .await
        .unwrap();
    let (p0, p1) = (tp(t.id, 0), tp(t.id, 1));
    let claimed = c.claim_partitions("b1", &[p0, p1]).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let epoch = claimed[0].epoch;
    assert_eq!(epoch, Epoch(1));
    c.commit_flush(&commit(
        &unique("obj"),
        &[(extent(p0, 0, 9), epoch), (extent(p1, 0, 4), epoch)],
    ))
    .await
    .unwrap();
    c.commit_flush(&commit(&unique("obj"), &[(extent(p0, 10, 19), epoch)]))
        .await
        .unwrap();
    let s = c.partition_state(p0).await.unwrap().unwrap();
    assert_eq!(s.high_watermark, Offset(20));
    let found = c.extents(p0, Offset(12), 10).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].meta.base_offset, Offset(10));
    assert_eq!(c.extents(p0, Offset(0), 10).await.unwrap().len(), 2);
    let by_ts = c.extent_for_timestamp(p0, 1015).await.unwrap().unwrap();
    assert_eq!(by_ts.meta.base_offset, Offset(10));
    assert!(c.extent_for_timestamp(p0, 5000).await.unwrap().is_none());

    // A commit that does not start at the high watermark is refused and changes nothing.
    assert!(matches!(
        c.commit_flush(&commit(&unique("obj"), &[(extent(p0, 30, 39), epoch)]))
            .await,
        Err(CatalogError::Fenced { .. })
    ));
    assert_eq!(
        c.partition_state(p0).await.unwrap().unwrap().high_watermark,
        Offset(20)
    );
}

/// DeleteRecords: the log start moves forward only, never past the high watermark, and only
/// for the current owner's epoch.
async fn log_start_advances(c: &dyn Catalog) {
    let t = c
        .create_topic(&unique("trim"), 1, &BTreeMap::new())
        .await
        .unwrap();
    let p0 = tp(t.id, 0);
    let epoch = c.claim_partitions("b1", &[p0]).await.unwrap()[0].epoch;
    c.commit_flush(&commit(&unique("obj"), &[(extent(p0, 0, 9), epoch)]))
        .await
        .unwrap();
    assert_eq!(
        c.advance_log_start(p0, epoch, Offset(4)).await.unwrap(),
        Offset(4)
    );
    assert_eq!(
        c.advance_log_start(p0, epoch, Offset(2)).await.unwrap(),
        Offset(4),
        "never backwards"
    );
    assert_eq!(
        c.advance_log_start(p0, epoch, Offset(11)).await.unwrap(),
        Offset(4),
        "never past the high watermark"
    );
    assert!(matches!(
        c.advance_log_start(p0, Epoch(epoch.0 + 7), Offset(6)).await,
        Err(CatalogError::Fenced { .. })
    ));
    let s = c.partition_state(p0).await.unwrap().unwrap();
    assert_eq!(
        (s.log_start_offset, s.high_watermark),
        (Offset(4), Offset(10))
    );
}

/// Garbage collection: an object becomes dead once the log start has passed every extent in
/// it, and only then; forgetting it removes it and its extents.
async fn dead_objects_are_found_and_forgotten(c: &dyn Catalog) {
    let t = c
        .create_topic(&unique("gc"), 1, &BTreeMap::new())
        .await
        .unwrap();
    let p0 = tp(t.id, 0);
    let epoch = c.claim_partitions("b1", &[p0]).await.unwrap()[0].epoch;
    let (old, new) = (unique("old"), unique("new"));
    c.commit_flush(&commit(&old, &[(extent(p0, 0, 9), epoch)]))
        .await
        .unwrap();
    c.commit_flush(&commit(&new, &[(extent(p0, 10, 19), epoch)]))
        .await
        .unwrap();
    let stored = c.stored(p0, Offset(0)).await.unwrap();
    assert_eq!((stored.bytes, stored.extents, stored.objects), (200, 2, 2));
    let stored = c.stored(p0, Offset(10)).await.unwrap();
    assert_eq!((stored.bytes, stored.extents, stored.objects), (100, 1, 1));
    let far_future = i64::MAX / 2;
    c.mark_dead_objects(1_000).await.unwrap();
    let dead = c.dead_objects(far_future, 100).await.unwrap();
    assert!(
        !dead.contains(&old) && !dead.contains(&new),
        "live objects are not dead"
    );

    c.advance_log_start(p0, epoch, Offset(10)).await.unwrap();
    c.mark_dead_objects(2_000).await.unwrap();
    let dead = c.dead_objects(far_future, 100).await.unwrap();
    assert!(dead.contains(&old) && !dead.contains(&new), "{dead:?}");
    assert!(
        !c.dead_objects(1_999, 100).await.unwrap().contains(&old),
        "dead since 2000, not before"
    );
    c.forget_object(&old).await.unwrap();
    assert!(
        !c.dead_objects(far_future, 100)
            .await
            .unwrap()
            .contains(&old)
    );
    assert_eq!(c.extents(p0, Offset(0), 10).await.unwrap().len(), 1);
}

/// Two brokers race to commit the same partition: the one holding the newer epoch wins, the
/// other's commit fails as a whole (none of its partitions move), whatever the order.
async fn stale_epoch_is_fenced(a: Arc<dyn Catalog>, b: Arc<dyn Catalog>) {
    let t = a
        .create_topic(&unique("fenced"), 2, &BTreeMap::new())
        .await
        .unwrap();
    let (p0, p1) = (tp(t.id, 0), tp(t.id, 1));
    let old = a.claim_partitions("a", &[p0, p1]).await.unwrap()[0].epoch;
    let new = b.claim_partitions("b", &[p0]).await.unwrap()[0].epoch;
    assert!(new > old);
    let p1_epoch = a.partition_state(p1).await.unwrap().unwrap().epoch;

    let stale = commit(
        &unique("a-obj"),
        &[(extent(p1, 0, 4), p1_epoch), (extent(p0, 0, 9), old)],
    );
    let fresh = commit(&unique("b-obj"), &[(extent(p0, 0, 2), new)]);
    let (ra, rb) = tokio::join!(
        {
            let a = a.clone();
            async move { a.commit_flush(&stale).await }
        },
        {
            let b = b.clone();
            async move { b.commit_flush(&fresh).await }
        }
    );
    assert!(matches!(ra, Err(CatalogError::Fenced { tp, .. }) if tp == p0));
    rb.unwrap();
    assert_eq!(
        b.partition_state(p0).await.unwrap().unwrap().high_watermark,
        Offset(3)
    );
    // The stale commit's other partition did not move either: the transaction was whole.
    assert_eq!(
        a.partition_state(p1).await.unwrap().unwrap().high_watermark,
        Offset(0)
    );
    let extents = b.extents(p0, Offset(0), 10).await.unwrap();
    assert_eq!(extents.len(), 1);
    assert!(extents[0].object_key.starts_with("b-obj"));
}

/// Brokers register, heartbeat, leave; partitions are claimed only at the epoch the claimant
/// saw (one winner of two), and released only by their owner at its epoch.
async fn membership_and_conditional_claims(a: Arc<dyn Catalog>, b: Arc<dyn Catalog>) {
    let info = |id: &str, leaving: bool| BrokerInfo {
        id: id.into(),
        kafka_addr: format!("{id}.example:9092"),
        quic_addr: format!("{id}.example:9093"),
        http_addr: format!("{id}.example:9094"),
        zone: Some("z1".into()),
        heartbeat_ms: 0,
        leaving,
    };
    let (x, y) = (unique("broker-x"), unique("broker-y"));
    a.register_broker(&info(&x, false)).await.unwrap();
    b.register_broker(&info(&y, true)).await.unwrap();
    let brokers = a.brokers().await.unwrap();
    let bx = brokers.iter().find(|r| r.id == x).unwrap();
    assert_eq!(bx.quic_addr, format!("{x}.example:9093"));
    assert!(bx.heartbeat_ms > 0 && !bx.leaving);
    assert!(brokers.iter().find(|r| r.id == y).unwrap().leaving);
    b.deregister_broker(&y).await.unwrap();
    assert!(!a.brokers().await.unwrap().iter().any(|r| r.id == y));

    let t = a
        .create_topic(&unique("claims"), 1, &BTreeMap::new())
        .await
        .unwrap();
    let p0 = tp(t.id, 0);
    let owner = |c: Arc<dyn Catalog>| async move {
        c.partition_owners()
            .await
            .unwrap()
            .into_iter()
            .find(|o| o.tp == p0)
            .unwrap()
    };
    let o = owner(a.clone()).await;
    assert_eq!((o.owner, o.epoch), (None, Epoch(0)));
    let claim = [(p0, Epoch(0))];
    let (wa, wb) = tokio::join!(
        a.claim_partitions_at(&x, &claim),
        b.claim_partitions_at(&y, &claim)
    );
    let (wa, wb) = (wa.unwrap(), wb.unwrap());
    assert_eq!(wa.len() + wb.len(), 1, "exactly one racing claim wins");
    let winner = if wa.is_empty() { &y } else { &x };
    let o = owner(a.clone()).await;
    assert_eq!((o.owner.as_ref(), o.epoch), (Some(winner), Epoch(1)));
    // Only the owner, at its epoch, releases; the epoch stays for the next claim to move on.
    let loser = if winner == &x { &y } else { &x };
    a.release_partitions(loser, &[(p0, Epoch(1))])
        .await
        .unwrap();
    a.release_partitions(winner, &[(p0, Epoch(0))])
        .await
        .unwrap();
    assert_eq!(owner(a.clone()).await.owner.as_ref(), Some(winner));
    a.release_partitions(winner, &[(p0, Epoch(1))])
        .await
        .unwrap();
    let o = owner(a.clone()).await;
    assert_eq!((o.owner, o.epoch), (None, Epoch(1)));
    assert!(
        b.claim_partitions_at(loser, &[(p0, Epoch(0))])
            .await
            .unwrap()
            .is_empty()
    );
    let won = b
        .claim_partitions_at(loser, &[(p0, Epoch(1))])
        .await
        .unwrap();
    assert_eq!(won[0].epoch, Epoch(2));
}

/// Compaction swaps consecutive extents for one, fenced by epoch and only if the extents are
/// still the ones it read.
async fn compaction_replaces_extents(c: &dyn Catalog) {
    let t = c
        .create_topic(&unique("compact"), 1, &BTreeMap::new())
        .await
        .unwrap();
    let p0 = tp(t.id, 0);
    let epoch = c.claim_partitions("a", &[p0]).await.unwrap()[0].epoch;
    for (i, (base, last)) in [(0, 4), (5, 9), (10, 14)].into_iter().enumerate() {
        c.commit_flush(&commit(
            &unique(&format!("small-{i}")),
            &[(extent(p0, base, last), epoch)],
        ))
        .await
        .unwrap();
    }
    let merged = ExtentMeta {
        byte_len: 200,
        ..extent(p0, 0, 9)
    };
    let compaction = |replaced: u64, epoch: Epoch| Compaction {
        epoch,
        first_base: Offset(0),
        last_base: Offset(5),
        replaced,
        object_key: unique("compacted"),
        object_size: 200,
        extents: vec![merged],
    };
    // The range holds two extents, not three: refused, nothing changes.
    assert!(!c.replace_extents(&compaction(3, epoch)).await.unwrap());
    assert_eq!(c.extents(p0, Offset(0), 10).await.unwrap().len(), 3);
    // A stale epoch is fenced.
    assert!(matches!(
        c.replace_extents(&compaction(2, Epoch(epoch.0 - 1))).await,
        Err(CatalogError::Fenced { .. })
    ));
    let ok = compaction(2, epoch);
    assert!(c.replace_extents(&ok).await.unwrap());
    let extents = c.extents(p0, Offset(0), 10).await.unwrap();
    assert_eq!(extents.len(), 2);
    assert_eq!(extents[0].object_key, ok.object_key);
    assert_eq!(
        (extents[0].meta.base_offset, extents[0].meta.last_offset),
        (Offset(0), Offset(9))
    );
    assert_eq!(extents[1].meta.base_offset, Offset(10));
    assert!(c.object_known(&ok.object_key).await.unwrap());
    assert_eq!(
        c.partition_state(p0).await.unwrap().unwrap().high_watermark,
        Offset(15)
    );
}

async fn group_offsets(c: &dyn Catalog) {
    let t = c
        .create_topic(&unique("offsets"), 2, &BTreeMap::new())
        .await
        .unwrap();
    let group = unique("group");
    let commit = |p: i32, offset: i64| CommittedOffset {
        tp: tp(t.id, p),
        offset,
        leader_epoch: -1,
        metadata: Some(format!("m{offset}")),
    };
    c.commit_offsets(&group, &[commit(0, 5), commit(1, 7)])
        .await
        .unwrap();
    c.commit_offsets(&group, &[commit(0, 9)]).await.unwrap();
    let mut got = c.committed_offsets(&group).await.unwrap();
    got.sort_by_key(|o| o.tp);
    assert_eq!(got, vec![commit(0, 9), commit(1, 7)]);
    assert!(c.groups_with_offsets().await.unwrap().contains(&group));
    assert_eq!(
        c.delete_offsets(&group, Some(&[tp(t.id, 1)]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        c.committed_offsets(&group).await.unwrap(),
        vec![commit(0, 9)]
    );
    // Deleting the topic takes its offsets with it.
    c.delete_topic(&t.name).await.unwrap();
    assert!(c.committed_offsets(&group).await.unwrap().is_empty());
    assert_eq!(c.delete_offsets(&group, None).await.unwrap(), 0);
}

async fn producer_state_commits_with_the_data(c: &dyn Catalog) {
    let t = c
        .create_topic(&unique("idem"), 1, &BTreeMap::new())
        .await
        .unwrap();
    let p0 = tp(t.id, 0);
    let epoch = c.claim_partitions("b", &[p0]).await.unwrap()[0].epoch;
    let mut entry = ProducerEntry::default();
    entry.record(0, 0, 9, Offset(0), Offset(9));
    let mut flush = commit(&unique("obj"), &[(extent(p0, 0, 9), epoch)]);
    flush.producers = vec![ProducerState {
        tp: p0,
        producer_id: 42,
        entry: entry.clone(),
    }];
    c.commit_flush(&flush).await.unwrap();
    let states = c.producer_states(&[p0]).await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].entry, entry);
    let (a, b) = (
        c.allocate_producer_id().await.unwrap(),
        c.allocate_producer_id().await.unwrap(),
    );
    assert_ne!(a, b);
}

async fn transactions_and_aborted_ranges(c: &dyn Catalog) {
    let t = c
        .create_topic(&unique("txn"), 1, &BTreeMap::new())
        .await
        .unwrap();
    let p0 = tp(t.id, 0);
    let epoch = c.claim_partitions("b", &[p0]).await.unwrap()[0].epoch;
    // An abort entry commits with the flush that holds its marker.
    let mut flush = commit(&unique("obj"), &[(extent(p0, 0, 4), epoch)]);
    let aborted = AbortedTxn {
        producer_id: 9,
        first_offset: Offset(0),
        last_offset: Offset(4),
    };
    flush.aborted = vec![(p0, aborted)];
    c.commit_flush(&flush).await.unwrap();
    assert_eq!(c.aborted_txns(p0, Offset(0)).await.unwrap(), vec![aborted]);
    assert_eq!(c.aborted_txns(p0, Offset(4)).await.unwrap(), vec![aborted]);
    assert!(c.aborted_txns(p0, Offset(5)).await.unwrap().is_empty());

    // A committed transaction's offsets take effect with its record, in one transaction.
    let id = unique("txn-id");
    let group = unique("txn-group");
    let mut record = TransactionRecord {
        transactional_id: id.clone(),
        producer_id: 9,
        producer_epoch: 2,
        timeout_ms: 60_000,
        state: TxnState::Ongoing,
        partitions: vec![p0],
        groups: vec![group.clone()],
        offsets: Vec::new(),
        started_ms: 1,
        updated_ms: 1,
    };
    c.put_transaction(&record, &[]).await.unwrap();
    assert_eq!(c.transaction(&id).await.unwrap(), Some(record.clone()));
    assert!(c.committed_offsets(&group).await.unwrap().is_empty());
    record.state = TxnState::CompleteCommit;
    record.partitions.clear();
    let offset = CommittedOffset {
        tp: p0,
        offset: 5,
        leader_epoch: -1,
        metadata: None,
    };
    c.put_transaction(&record, &[(group.clone(), offset.clone())])
        .await
        .unwrap();
    assert_eq!(
        c.transaction(&id).await.unwrap().unwrap().state,
        TxnState::CompleteCommit
    );
    assert_eq!(c.committed_offsets(&group).await.unwrap(), vec![offset]);
    assert!(
        c.transactions()
            .await
            .unwrap()
            .iter()
            .any(|r| r.transactional_id == id)
    );
    assert_eq!(c.transaction(&unique("none")).await.unwrap(), None);
}

async fn suite(url: &str) {
    let a: Arc<dyn Catalog> = Arc::new(SqlCatalog::connect(url).await.unwrap());
    let b: Arc<dyn Catalog> = Arc::new(SqlCatalog::connect(url).await.unwrap());
    topics_and_configs(a.as_ref()).await;
    commits_advance_and_extents_are_found(a.as_ref()).await;
    log_start_advances(a.as_ref()).await;
    dead_objects_are_found_and_forgotten(a.as_ref()).await;
    group_offsets(a.as_ref()).await;
    compaction_replaces_extents(a.as_ref()).await;
    producer_state_commits_with_the_data(a.as_ref()).await;
    transactions_and_aborted_ranges(a.as_ref()).await;
    membership_and_conditional_claims(a.clone(), b.clone()).await;
    stale_epoch_is_fenced(a, b).await;
}

#[tokio::test]
async fn sqlite_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    suite(&url).await;
    // Reopening applies no migration twice and keeps the data.
    let again = SqlCatalog::connect(&url).await.unwrap();
    assert!(!again.list_topics().await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_catalog() {
    match std::env::var("STRATA_TEST_POSTGRES_URL") {
        Ok(url) => suite(&url).await,
        Err(_) => eprintln!(
            "STRATA_TEST_POSTGRES_URL is not set: PostgreSQL half of the catalog suite not run \
             (scripts/test.sh starts a server and sets it)"
        ),
    }
}
