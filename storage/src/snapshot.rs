//! Catalog snapshots in the bucket: what, besides the segment footers, rebuilding a lost
//! catalog needs.
//!
//! The segment objects describe themselves (their footers say which offsets of which
//! partition they hold), but not the names and configs of topics, where retention moved each
//! log start, the offsets consumer groups committed, producers' sequence and transaction
//! state. One broker (the cluster's controller) writes all of that as a JSON document,
//! `snapshots/<ulid>.json`, whenever it changed since the last one it wrote, and keeps the
//! newest [`KEEP`]. [`crate::recovery`] reads the newest back.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, CommittedOffset, tp};
use crate::objects::{ObjectStorage, ObjectsError};
use crate::producers::ProducerEntry;
use crate::txn::{AbortedTxn, TransactionRecord};
use crate::types::{Offset, TopicId, TopicPartition};

/// Key prefix of snapshots in the object store.
pub const PREFIX: &str = "snapshots/";

/// Snapshots kept; older ones are deleted after a new one is written.
pub const KEEP: usize = 3;

/// The format version written.
const VERSION: u32 = 1;

/// A topic as a snapshot records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTopic {
    /// Its id (segment footers name topics by id).
    pub id: TopicId,
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Configs set on it.
    pub configs: BTreeMap<String, String>,
}

/// An idempotent producer's state on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProducer {
    /// The partition.
    pub tp: TopicPartition,
    /// The producer id.
    pub producer_id: i64,
    /// Its epoch, recent batches and open transaction.
    pub entry: ProducerEntry,
}

/// What a catalog holds beyond the segment footers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// When it was taken (ms since the epoch).
    pub taken_ms: i64,
    /// Every topic.
    pub topics: Vec<SnapshotTopic>,
    /// Each partition's log start offset (where retention or DeleteRecords moved it).
    pub log_starts: Vec<(TopicPartition, Offset)>,
    /// Committed consumer group offsets, by group.
    pub offsets: Vec<(String, CommittedOffset)>,
    /// Idempotent producers' state.
    pub producers: Vec<SnapshotProducer>,
    /// Transactional ids.
    pub transactions: Vec<TransactionRecord>,
    /// Aborted transactions, for `read_committed` readers.
    pub aborted: Vec<(TopicPartition, AbortedTxn)>,
}

/// Why a snapshot could not be taken, written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The object store failed.
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    /// The document could not be encoded or decoded.
    #[error("snapshot '{key}' is not readable: {reason}")]
    Format {
        /// Its key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

impl Snapshot {
    /// Reads everything a snapshot holds from `catalog`.
    pub async fn take(catalog: &dyn Catalog, now_ms: i64) -> Result<Snapshot, CatalogError> {
        let metas = catalog.list_topics().await?;
        let tps: Vec<TopicPartition> = metas
            .iter()
            .flat_map(|m| (0..m.partitions).map(move |p| tp(m.id, p)))
            .collect();
        let mut log_starts = Vec::with_capacity(tps.len());
        let mut aborted = Vec::new();
        for &p in &tps {
            if let Some(s) = catalog.partition_state(p).await? {
                log_starts.push((p, s.log_start_offset));
                aborted.extend(
                    catalog
                        .aborted_txns(p, s.log_start_offset)
                        .await?
                        .into_iter()
                        .map(|a| (p, a)),
                );
            }
        }
        let mut offsets = Vec::new();
        for group in catalog.groups_with_offsets().await? {
            offsets.extend(
                catalog
                    .committed_offsets(&group)
                    .await?
                    .into_iter()
                    .map(|o| (group.clone(), o)),
            );
        }
        let producers = catalog
            .producer_states(&tps)
            .await?
            .into_iter()
            .map(|p| SnapshotProducer {
                tp: p.tp,
                producer_id: p.producer_id,
                entry: p.entry,
            })
            .collect();
        Ok(Snapshot {
            version: VERSION,
            taken_ms: now_ms,
            topics: metas
                .into_iter()
                .map(|m| SnapshotTopic {
                    id: m.id,
                    name: m.name,
                    partitions: m.partitions,
                    configs: m.configs,
                })
                .collect(),
            log_starts,
            offsets,
            producers,
            transactions: catalog.transactions().await?,
            aborted,
        })
    }

    /// Whether `other` holds the same state (whenever each was taken).
    pub fn same_state(&self, other: &Snapshot) -> bool {
        Snapshot {
            taken_ms: other.taken_ms,
            ..self.clone()
        } == *other
    }

    /// Writes this snapshot as a new object and deletes all but the newest [`KEEP`].
    /// Returns its key.
    pub async fn write(&self, objects: &ObjectStorage) -> Result<String, SnapshotError> {
        let key = format!("{PREFIX}{}.json", ulid::Ulid::new());
        let body = serde_json::to_vec(self).map_err(|e| SnapshotError::Format {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        objects.put(&key, Bytes::from(body)).await?;
        crate::metrics::metrics().snapshots.inc();
        let mut keys: Vec<String> = objects
            .list(PREFIX)
            .await?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.ends_with(".json"))
            .collect();
        keys.sort();
        let old = keys.len().saturating_sub(KEEP);
        for k in &keys[..old] {
            objects.delete(k).await?;
        }
        Ok(key)
    }

    /// The newest snapshot in the bucket, with its key; `None` if there is none.
    pub async fn latest(
        objects: &ObjectStorage,
    ) -> Result<Option<(String, Snapshot)>, SnapshotError> {
        let newest = objects
            .list(PREFIX)
            .await?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.ends_with(".json"))
            .max();
        let Some(key) = newest else {
            return Ok(None);
        };
        let body = objects.get(&key).await?;
        let snapshot = serde_json::from_slice(&body).map_err(|e| SnapshotError::Format {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some((key, snapshot)))
    }
}

/// Writes a snapshot when the catalog changed since the last one written: the periodic job
/// of the cluster's controller. An idle cluster writes nothing.
pub struct Snapshotter {
    catalog: Arc<dyn Catalog>,
    objects: ObjectStorage,
    last: Option<Snapshot>,
}

impl Snapshotter {
    /// A snapshotter for `catalog`, writing to `objects`.
    pub fn new(catalog: Arc<dyn Catalog>, objects: ObjectStorage) -> Snapshotter {
        Snapshotter {
            catalog,
            objects,
            last: None,
        }
    }

    /// Takes a snapshot and writes it if anything changed. Returns the key written, if any.
    /// A catalog without topics is never written: it has nothing to recover, and a broker
    /// started on an empty catalog over an old bucket must not push the snapshots that can
    /// rebuild it out of the newest [`KEEP`].
    pub async fn run_once(&mut self, now_ms: i64) -> Result<Option<String>, SnapshotError> {
        let snapshot = Snapshot::take(self.catalog.as_ref(), now_ms).await?;
        if snapshot.topics.is_empty() || self.last.as_ref().is_some_and(|l| l.same_state(&snapshot))
        {
            return Ok(None);
        }
        if self.last.is_none()
            && let Some((_, stored)) = Snapshot::latest(&self.objects).await?
            && stored.same_state(&snapshot)
        {
            self.last = Some(snapshot);
            return Ok(None);
        }
        let key = snapshot.write(&self.objects).await?;
        self.last = Some(snapshot);
        Ok(Some(key))
    }
}
