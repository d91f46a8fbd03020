//! Rebuilding a lost catalog from the bucket alone: the segment footers plus the newest
//! [snapshot](crate::snapshot).
//!
//! Every segment object ends with a footer saying which offsets of which partition it holds,
//! so the extents and high watermarks come from the objects themselves; the snapshot adds
//! what objects cannot say (topic names and configs, log starts, committed group offsets,
//! producer and transaction state). Where objects overlap — compaction and cleaning write
//! new objects before garbage collection deletes the ones they replaced — the newest object
//! wins (object keys are ULIDs, which sort by creation time). Objects left with no extent in
//! the rebuilt catalog are orphans, which garbage collection deletes after its grace period.
//! A partition whose topic the snapshot does not name (created after it) comes back as topic
//! `recovered-<topic id>`, so no record is lost.

use std::collections::{BTreeMap, HashMap};

use crate::catalog::{Catalog, CatalogError, CommittedOffset, Extent};
use crate::objects::{ObjectStorage, ObjectsError};
use crate::segment::{self, ExtentMeta};
use crate::snapshot::{Snapshot, SnapshotError, SnapshotProducer, SnapshotTopic};
use crate::txn::{AbortedTxn, TransactionRecord};
use crate::types::{Offset, TopicId, TopicPartition};

/// Producer ids handed out after a recovery start this far above the largest one seen, so
/// ids allocated after the snapshot and before the loss are not handed out again.
const PRODUCER_ID_MARGIN: i64 = 1_000_000;

/// Everything a recovered catalog is filled with, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Restore {
    /// Topics, with their ids.
    pub topics: Vec<SnapshotTopic>,
    /// Each partition's `(log start, high watermark)`.
    pub partitions: Vec<(TopicPartition, Offset, Offset)>,
    /// Objects holding live extents: key and size.
    pub objects: Vec<(String, u64)>,
    /// The live extents.
    pub extents: Vec<Extent>,
    /// Committed group offsets.
    pub offsets: Vec<(String, CommittedOffset)>,
    /// Producer state.
    pub producers: Vec<SnapshotProducer>,
    /// Transactional ids.
    pub transactions: Vec<TransactionRecord>,
    /// Aborted transactions.
    pub aborted: Vec<(TopicPartition, AbortedTxn)>,
    /// The next producer id to hand out.
    pub next_producer_id: i64,
}

/// What a recovery found and rebuilt.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The snapshot used, if the bucket had one.
    pub snapshot: Option<String>,
    /// Segment objects read.
    pub objects_read: usize,
    /// Segment objects whose footer could not be read (skipped).
    pub objects_unreadable: Vec<String>,
    /// Objects kept (holding live extents).
    pub objects_kept: usize,
    /// Extents restored.
    pub extents: usize,
    /// Topics restored.
    pub topics: usize,
    /// Topics the snapshot did not name, restored as `recovered-<id>`.
    pub unnamed_topics: Vec<String>,
    /// Records restored (sum over extents).
    pub records: i64,
}

/// Why a recovery could not run.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The target catalog already holds topics: recovery only fills an empty one.
    #[error(
        "the catalog already holds {0} topics; recover into an empty catalog (a new database or file)"
    )]
    NotEmpty(usize),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The object store failed.
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    /// The snapshot could not be read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Reads one object's footer with two ranged GETs (trailer, then footer).
async fn footer(objects: &ObjectStorage, key: &str, size: u64) -> Result<Vec<ExtentMeta>, String> {
    const TRAILER: u64 = 18;
    if size < TRAILER {
        return Err("shorter than a segment trailer".into());
    }
    let trailer = objects
        .get_range(key, size - TRAILER..size)
        .await
        .map_err(|e| e.to_string())?;
    let footer_len = u64::from(u32::from_be_bytes([
        trailer[0], trailer[1], trailer[2], trailer[3],
    ]));
    let start = size
        .checked_sub(TRAILER + footer_len)
        .ok_or("footer longer than the object")?;
    let tail = objects
        .get_range(key, start..size)
        .await
        .map_err(|e| e.to_string())?;
    segment::read_footer(&tail).map_err(|e| e.to_string())
}

/// Rebuilds `catalog` (which must be empty) from `objects`. `progress(done, total)` is
/// called as segment footers are read.
pub async fn recover(
    objects: &ObjectStorage,
    catalog: &dyn Catalog,
    progress: impl Fn(u64, u64),
) -> Result<Recovered, RecoveryError> {
    let existing = catalog.list_topics().await?.len();
    if existing > 0 {
        return Err(RecoveryError::NotEmpty(existing));
    }
    let mut report = Recovered::default();
    let snapshot = Snapshot::latest(objects).await?;
    report.snapshot = snapshot.as_ref().map(|(k, _)| k.clone());
    let snapshot = snapshot.map(|(_, s)| s);

    let listed: Vec<_> = objects
        .list("segments/")
        .await?
        .into_iter()
        .filter(|o| o.key.ends_with(".seg"))
        .collect();
    let mut found: Vec<(String, u64, Vec<ExtentMeta>)> = Vec::with_capacity(listed.len());
    for (i, o) in listed.iter().enumerate() {
        match footer(objects, &o.key, o.size).await {
            Ok(metas) => found.push((o.key.clone(), o.size, metas)),
            Err(e) => {
                tracing::warn!(object = %o.key, error = %e, "segment footer unreadable; skipping the object");
                report.objects_unreadable.push(o.key.clone());
            }
        }
        progress(i as u64 + 1, listed.len() as u64);
    }
    report.objects_read = found.len();
    let restore = plan(snapshot.as_ref(), found, &mut report);
    catalog.restore(&restore).await?;
    Ok(report)
}

/// Decides what the recovered catalog holds.
fn plan(
    snapshot: Option<&Snapshot>,
    mut found: Vec<(String, u64, Vec<ExtentMeta>)>,
    report: &mut Recovered,
) -> Restore {
    let log_starts: HashMap<TopicPartition, Offset> = snapshot
        .map(|s| s.log_starts.iter().copied().collect())
        .unwrap_or_default();
    // Newest objects first: they replaced the older ones they overlap.
    found.sort_by(|a, b| b.0.cmp(&a.0));
    let mut chosen: BTreeMap<TopicPartition, Vec<Extent>> = BTreeMap::new();
    let mut sizes: HashMap<String, u64> = HashMap::new();
    for (key, size, metas) in found {
        for meta in metas {
            let start = log_starts.get(&meta.tp).copied().unwrap_or(Offset(0));
            if meta.last_offset < start {
                continue; // removed by retention or DeleteRecords
            }
            let kept = chosen.entry(meta.tp).or_default();
            let overlaps = kept.iter().any(|e| {
                e.meta.base_offset <= meta.last_offset && meta.base_offset <= e.meta.last_offset
            });
            if !overlaps {
                kept.push(Extent {
                    meta,
                    object_key: key.clone(),
                });
                sizes.insert(key.clone(), size);
            }
        }
    }
    let mut topics: Vec<SnapshotTopic> = snapshot.map(|s| s.topics.clone()).unwrap_or_default();
    let mut extents = Vec::new();
    let mut partitions = Vec::new();
    for (tp, mut list) in chosen {
        list.sort_by_key(|e| e.meta.base_offset);
        let end = list
            .last()
            .map_or(Offset(0), |e| e.meta.last_offset.plus(1));
        let start = log_starts
            .get(&tp)
            .copied()
            .unwrap_or_else(|| list.first().map_or(Offset(0), |e| e.meta.base_offset));
        partitions.push((tp, start, end.max(start)));
        report.records += list.iter().map(|e| e.meta.record_count).sum::<i64>();
        extents.extend(list);
        grow_topic(&mut topics, tp, report);
    }
    // Partitions with no data left keep their log start as their end.
    for t in &topics {
        for p in 0..t.partitions {
            let tp = crate::catalog::tp(t.id, p);
            if !partitions.iter().any(|(x, _, _)| *x == tp) {
                let start = log_starts.get(&tp).copied().unwrap_or(Offset(0));
                partitions.push((tp, start, start));
            }
        }
    }
    let live: std::collections::HashSet<&str> =
        extents.iter().map(|e| e.object_key.as_str()).collect();
    let objects: Vec<(String, u64)> = sizes
        .into_iter()
        .filter(|(k, _)| live.contains(k.as_str()))
        .collect();
    report.objects_kept = objects.len();
    report.extents = extents.len();
    report.topics = topics.len();
    let (offsets, producers, transactions, aborted) = match snapshot {
        Some(s) => (
            s.offsets.clone(),
            s.producers.clone(),
            s.transactions.clone(),
            s.aborted.clone(),
        ),
        None => Default::default(),
    };
    let max_pid = producers
        .iter()
        .map(|p| p.producer_id)
        .chain(transactions.iter().map(|t| t.producer_id))
        .max()
        .unwrap_or(0);
    Restore {
        topics,
        partitions,
        objects,
        extents,
        offsets,
        producers,
        transactions,
        aborted,
        next_producer_id: max_pid.max(1000) + PRODUCER_ID_MARGIN,
    }
}

/// Makes sure `topics` has a topic for `tp`, with enough partitions: one the snapshot does
/// not name is restored as `recovered-<id>`.
fn grow_topic(topics: &mut Vec<SnapshotTopic>, tp: TopicPartition, report: &mut Recovered) {
    let needed = tp.partition.0 + 1;
    match topics.iter_mut().find(|t| t.id == tp.topic) {
        Some(t) => t.partitions = t.partitions.max(needed),
        None => {
            let name = unnamed(tp.topic);
            report.unnamed_topics.push(name.clone());
            topics.push(SnapshotTopic {
                id: tp.topic,
                name,
                partitions: needed,
                configs: BTreeMap::new(),
            });
        }
    }
}

/// The name given to a topic the snapshot does not name.
fn unnamed(id: TopicId) -> String {
    format!("recovered-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tp;
    use crate::types::PartitionId;

    fn meta(t: TopicId, p: i32, base: i64, last: i64) -> ExtentMeta {
        ExtentMeta {
            tp: TopicPartition {
                topic: t,
                partition: PartitionId(p),
            },
            base_offset: Offset(base),
            last_offset: Offset(last),
            byte_start: 0,
            byte_len: 10,
            min_timestamp: 0,
            max_timestamp: 0,
            record_count: last - base + 1,
        }
    }

    #[test]
    fn newest_objects_win_overlaps_and_retention_is_respected() {
        let t = TopicId::random();
        let snapshot = Snapshot {
            version: 1,
            taken_ms: 0,
            topics: vec![SnapshotTopic {
                id: t,
                name: "orders".into(),
                partitions: 2,
                configs: BTreeMap::new(),
            }],
            log_starts: vec![(tp(t, 0), Offset(10))],
            offsets: Vec::new(),
            producers: Vec::new(),
            transactions: Vec::new(),
            aborted: Vec::new(),
        };
        let found = vec![
            // Two small flush objects, then the compacted object that replaced them.
            ("segments/a".to_string(), 100, vec![meta(t, 0, 0, 9)]),
            ("segments/b".to_string(), 100, vec![meta(t, 0, 10, 19)]),
            ("segments/c".to_string(), 100, vec![meta(t, 0, 20, 29)]),
            ("segments/d".to_string(), 100, vec![meta(t, 0, 10, 29)]),
            // A topic created after the snapshot.
            (
                "segments/e".to_string(),
                100,
                vec![meta(TopicId::random(), 3, 0, 4)],
            ),
        ];
        let mut report = Recovered::default();
        let r = plan(Some(&snapshot), found, &mut report);
        let p0: Vec<(i64, i64, &str)> = r
            .extents
            .iter()
            .filter(|e| e.meta.tp == tp(t, 0))
            .map(|e| {
                (
                    e.meta.base_offset.0,
                    e.meta.last_offset.0,
                    e.object_key.as_str(),
                )
            })
            .collect();
        assert_eq!(p0, vec![(10, 29, "segments/d")]);
        assert!(r.partitions.contains(&(tp(t, 0), Offset(10), Offset(30))));
        assert!(r.partitions.contains(&(tp(t, 1), Offset(0), Offset(0))));
        assert_eq!(report.unnamed_topics.len(), 1);
        assert_eq!(r.topics.len(), 2);
        assert_eq!(r.topics[1].partitions, 4);
        let mut kept: Vec<&str> = r.objects.iter().map(|(k, _)| k.as_str()).collect();
        kept.sort();
        assert_eq!(kept, vec!["segments/d", "segments/e"]);
    }
}
