//! The catalog: the authority on what exists and where it lives.
//!
//! Topics and their configs, partitions (high watermark, log start, owner and owner epoch),
//! extents (which offsets of a partition live in which byte range of which object), objects
//! and brokers. The bytes in the object store say nothing about offsets that the catalog has
//! not committed: a segment whose commit failed is garbage, not data.
//!
//! [`Catalog`] is the seam; [`SqlCatalog`] implements it for SQLite (embedded, the default)
//! and PostgreSQL (shared by a cluster) with one schema and one set of statements, through
//! sqlx's `Any` driver. Writing the SQL once means the two cannot drift; the few places where
//! the engines differ (SQLite's pragmas, PostgreSQL's migration lock) are confined to
//! [`sql`].
//!
//! **Fencing.** Every flush commit names the owner epoch under which its data was sequenced.
//! The commit updates each partition's high watermark only where the stored epoch still
//! matches *and* the high watermark equals the extent's base offset, all in one transaction.
//! A broker that lost ownership (a newer epoch was claimed) therefore fails its commit as a
//! whole; it can never interleave its data with the new owner's.

mod sql;

use std::collections::BTreeMap;

use async_trait::async_trait;
use thiserror::Error;

pub use sql::SqlCatalog;

use crate::producers::ProducerEntry;
use crate::segment::ExtentMeta;
use crate::txn::{AbortedTxn, TransactionRecord};
use crate::types::{Epoch, Offset, PartitionId, TopicId, TopicPartition};

/// What went wrong in the catalog.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// The database refused or failed a statement.
    #[error("catalog database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A topic with that name exists already.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// No topic has that name.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// A partition count that would shrink the topic or is out of range.
    #[error("invalid partition count {requested} for topic '{topic}' (it has {current})")]
    InvalidPartitions {
        /// The topic.
        topic: String,
        /// Its current count.
        current: i32,
        /// What was asked for.
        requested: i32,
    },
    /// A commit carried an owner epoch that is no longer current, or its extent does not start
    /// at the partition's high watermark: another broker owns the partition now.
    #[error("partition {tp} is fenced: commit under epoch {epoch} refused")]
    Fenced {
        /// The partition.
        tp: TopicPartition,
        /// The stale epoch.
        epoch: Epoch,
    },
    /// The URL names no catalog engine this build knows.
    #[error("unsupported catalog URL '{0}': use sqlite://PATH or postgres://...")]
    BadUrl(String),
    /// Stored data that cannot be interpreted (a malformed topic id, say).
    #[error("catalog holds malformed data: {0}")]
    Corrupt(String),
}

/// A topic as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    /// The topic's id.
    pub id: TopicId,
    /// The topic's name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Configs set explicitly on the topic (defaults are not stored).
    pub configs: BTreeMap<String, String>,
}

/// A partition's committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// The partition.
    pub tp: TopicPartition,
    /// One past the last committed offset: what consumers can read up to.
    pub high_watermark: Offset,
    /// The first offset still retained.
    pub log_start_offset: Offset,
    /// The current owner epoch.
    pub epoch: Epoch,
}

/// A committed extent: a run of offsets of one partition inside one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Where the run lives and what it holds.
    pub meta: ExtentMeta,
    /// The object's key in the object store.
    pub object_key: String,
}

/// One flush, as committed: the object written and the extents it holds, each with the epoch
/// it was sequenced under.
#[derive(Debug, Clone)]
pub struct FlushCommit {
    /// The segment object's key.
    pub object_key: String,
    /// The object's size in bytes.
    pub object_size: u64,
    /// Extents in the object, with the owner epoch of their partition.
    pub extents: Vec<(ExtentMeta, Epoch)>,
    /// Idempotent producers' state after the batches in this flush, committed with them.
    pub producers: Vec<ProducerState>,
    /// Transactions whose abort markers are in this flush: committed with the markers, so a
    /// `read_committed` reader that can see a marker can also learn what it aborted.
    pub aborted: Vec<(TopicPartition, AbortedTxn)>,
}

/// A compaction, as committed: consecutive extents of one partition replaced by the same
/// records in one new object.
#[derive(Debug, Clone)]
pub struct Compaction {
    /// The owner epoch the compaction ran under.
    pub epoch: Epoch,
    /// Base offsets of the first and last extents replaced.
    pub first_base: Offset,
    /// See `first_base`.
    pub last_base: Offset,
    /// How many extents lie in that range (a different count means they changed meanwhile).
    pub replaced: u64,
    /// The new object's key.
    pub object_key: String,
    /// The new object's size in bytes.
    pub object_size: u64,
    /// Its extents: the same offsets as those replaced.
    pub extents: Vec<ExtentMeta>,
}

/// An idempotent producer's state on one partition, as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    /// The partition.
    pub tp: TopicPartition,
    /// The producer id.
    pub producer_id: i64,
    /// Its epoch and recent batches.
    pub entry: ProducerEntry,
}

/// A consumer group's committed offset for one partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommittedOffset {
    /// The partition.
    pub tp: TopicPartition,
    /// The next offset the group will read.
    pub offset: i64,
    /// The leader epoch the client saw (-1 when unknown).
    pub leader_epoch: i32,
    /// Client metadata stored with the commit.
    pub metadata: Option<String>,
}

/// What one partition keeps in the object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stored {
    /// Bytes of its extents (as stored: compressed).
    pub bytes: i64,
    /// Extents: runs of its batches, one per flush that held it.
    pub extents: i64,
    /// Distinct objects holding them.
    pub objects: i64,
}

/// A registered broker: how clients reach it, and how fresh its lease is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// The broker's id (its node id, in decimal).
    pub id: String,
    /// The Kafka address it advertises, `host:port`.
    pub kafka_addr: String,
    /// The QUIC (native protocol) address it advertises.
    pub quic_addr: String,
    /// The HTTP address it advertises.
    pub http_addr: String,
    /// Its zone, if set.
    pub zone: Option<String>,
    /// Last heartbeat, in ms since the epoch (set by the catalog on registration).
    pub heartbeat_ms: i64,
    /// The broker is shutting down: it still holds its lease, but takes no new partitions
    /// and is releasing the ones it has.
    pub leaving: bool,
}

/// Who owns a partition, as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    /// The partition.
    pub tp: TopicPartition,
    /// The owning broker's id; `None` when released or never claimed.
    pub owner: Option<String>,
    /// The current owner epoch; a claim moves it on by one.
    pub epoch: Epoch,
}

/// The catalog's operations. Implementations must make [`Catalog::commit_flush`] atomic and
/// fenced as the module docs describe.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Creates a topic and its partitions (high watermark 0, epoch 0, no owner).
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<TopicMeta, CatalogError>;

    /// Deletes a topic, its partitions and extents. Its objects are left for garbage
    /// collection, since other partitions' extents may share them.
    async fn delete_topic(&self, name: &str) -> Result<TopicMeta, CatalogError>;

    /// Every topic.
    async fn list_topics(&self) -> Result<Vec<TopicMeta>, CatalogError>;

    /// One topic by name.
    async fn topic(&self, name: &str) -> Result<Option<TopicMeta>, CatalogError>;

    /// Grows a topic to `total` partitions.
    async fn add_partitions(&self, name: &str, total: i32) -> Result<TopicMeta, CatalogError>;

    /// Sets (`Some`) or removes (`None`) topic configs.
    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<TopicMeta, CatalogError>;

    /// Takes ownership of the given partitions for `broker`, bumping each one's epoch, and
    /// returns their state under the new epochs.
    async fn claim_partitions(
        &self,
        broker: &str,
        tps: &[TopicPartition],
    ) -> Result<Vec<PartitionState>, CatalogError>;

    /// The committed state of one partition.
    async fn partition_state(
        &self,
        tp: TopicPartition,
    ) -> Result<Option<PartitionState>, CatalogError>;

    /// The largest record timestamp among the extents of `tp` that end at or after `from`
    /// (ListOffsets' max-timestamp query, KIP-734); `None` for an empty partition.
    async fn max_timestamp(
        &self,
        tp: TopicPartition,
        from: Offset,
    ) -> Result<Option<i64>, CatalogError>;

    /// What `tp` keeps from `from` on: what retention by size measures and `topic describe`
    /// shows.
    async fn stored(&self, tp: TopicPartition, from: Offset) -> Result<Stored, CatalogError>;

    /// Marks, at `now_ms`, every object none of whose extents holds a record at or after its
    /// partition's log start (retention or DeleteRecords moved past all of it, or its topic
    /// was deleted). Returns how many became dead. A dead object never comes back to life.
    async fn mark_dead_objects(&self, now_ms: i64) -> Result<u64, CatalogError>;

    /// Objects dead since `dead_before_ms` or earlier, oldest first.
    async fn dead_objects(
        &self,
        dead_before_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, CatalogError>;

    /// Forgets a deleted object and its extents.
    async fn forget_object(&self, key: &str) -> Result<(), CatalogError>;

    /// Whether the catalog records object `key` (committed, dead or alive). An object in the
    /// store that the catalog does not know was written by a flush whose commit never
    /// happened: an orphan.
    async fn object_known(&self, key: &str) -> Result<bool, CatalogError>;

    /// Moves a partition's log start forward to `offset` (DeleteRecords; later retention),
    /// fenced by the owner's epoch. Never moves it back and never past the high watermark;
    /// returns the log start after the call.
    async fn advance_log_start(
        &self,
        tp: TopicPartition,
        epoch: Epoch,
        offset: Offset,
    ) -> Result<Offset, CatalogError>;

    /// Records a flushed segment: its object and extents, advancing each partition's high
    /// watermark, in one transaction fenced by each extent's epoch. Extents of partitions that
    /// no longer exist (their topic was deleted) are skipped.
    async fn commit_flush(&self, commit: &FlushCommit) -> Result<(), CatalogError> {
        self.commit_flushes(std::slice::from_ref(commit)).await
    }

    /// Records several flushes, in order, in one transaction: all or none. The flusher's
    /// group commit: when commits fall behind, one transaction catches up on every flush
    /// whose object is already stored.
    async fn commit_flushes(&self, commits: &[FlushCommit]) -> Result<(), CatalogError>;

    /// Replaces consecutive extents of one partition by a compacted object's, in one
    /// transaction fenced by the owner's epoch. Returns `false`, changing nothing, when the
    /// extents in the range are no longer the ones compacted.
    async fn replace_extents(&self, compaction: &Compaction) -> Result<bool, CatalogError>;

    /// Committed extents of `tp` that hold offsets at or after `from`, in offset order, at most
    /// `limit` of them.
    async fn extents(
        &self,
        tp: TopicPartition,
        from: Offset,
        limit: i64,
    ) -> Result<Vec<Extent>, CatalogError>;

    /// The first extent of `tp` holding a record with a timestamp at or after `timestamp`.
    async fn extent_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<Extent>, CatalogError>;

    /// Stores a group's committed offsets (replacing earlier ones for the same partitions),
    /// all or none.
    async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[CommittedOffset],
    ) -> Result<(), CatalogError>;

    /// Every committed offset of a group.
    async fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>, CatalogError>;

    /// Deletes a group's committed offsets: all of them, or only those of `tps`. Returns how
    /// many were deleted.
    async fn delete_offsets(
        &self,
        group: &str,
        tps: Option<&[TopicPartition]>,
    ) -> Result<u64, CatalogError>;

    /// The groups that have committed offsets.
    async fn groups_with_offsets(&self) -> Result<Vec<String>, CatalogError>;

    /// The committed idempotent-producer state of the given partitions.
    async fn producer_states(
        &self,
        tps: &[TopicPartition],
    ) -> Result<Vec<ProducerState>, CatalogError>;

    /// A producer id never handed out before, cluster-wide.
    async fn allocate_producer_id(&self) -> Result<i64, CatalogError>;

    /// The aborted transactions of `tp` whose markers are at or after `from`, in offset order.
    async fn aborted_txns(
        &self,
        tp: TopicPartition,
        from: Offset,
    ) -> Result<Vec<AbortedTxn>, CatalogError>;

    /// The state of one transactional id.
    async fn transaction(&self, id: &str) -> Result<Option<TransactionRecord>, CatalogError>;

    /// Every transactional id's state.
    async fn transactions(&self) -> Result<Vec<TransactionRecord>, CatalogError>;

    /// Fills an empty catalog with what a recovery from the bucket found (see
    /// [`crate::recovery`]), in one transaction: all or nothing.
    async fn restore(&self, restore: &crate::recovery::Restore) -> Result<(), CatalogError>;

    /// Stores a transactional id's state and, in the same database transaction, commits
    /// `offsets` for their groups (a committed transaction's offsets take effect with it).
    async fn put_transaction(
        &self,
        record: &TransactionRecord,
        offsets: &[(String, CommittedOffset)],
    ) -> Result<(), CatalogError>;

    /// Registers `broker` (or refreshes its row: addresses, zone, `leaving`) with a
    /// heartbeat of now. Brokers call this every heartbeat interval; it is their lease.
    async fn register_broker(&self, broker: &BrokerInfo) -> Result<(), CatalogError>;

    /// Removes a broker's row (it left the cluster after releasing its partitions).
    async fn deregister_broker(&self, id: &str) -> Result<(), CatalogError>;

    /// Every registered broker, live or not.
    async fn brokers(&self) -> Result<Vec<BrokerInfo>, CatalogError>;

    /// The owner and epoch of every partition.
    async fn partition_owners(&self) -> Result<Vec<PartitionOwner>, CatalogError>;

    /// Takes ownership of each `(tp, epoch)` for `broker` **only if** the partition is still
    /// at that epoch, bumping it by one. Of two brokers racing for a partition seen at the
    /// same epoch, exactly one wins. Returns the state of the partitions won.
    async fn claim_partitions_at(
        &self,
        broker: &str,
        claims: &[(TopicPartition, Epoch)],
    ) -> Result<Vec<PartitionState>, CatalogError>;

    /// Gives up ownership of each `(tp, epoch)` that `broker` still holds at that epoch (after
    /// flushing everything it accepted), so the next owner can claim it without waiting for
    /// a lease to expire.
    async fn release_partitions(
        &self,
        broker: &str,
        releases: &[(TopicPartition, Epoch)],
    ) -> Result<(), CatalogError>;
}

/// Builds a [`TopicPartition`] from a topic id and partition number.
pub fn tp(topic: TopicId, partition: i32) -> TopicPartition {
    TopicPartition {
        topic,
        partition: PartitionId(partition),
    }
}
