//! Strata's storage engine: everything between a checked record batch and the object store.
//!
//! No networking lives here; the broker's front ends hand the [`engine::Engine`] record
//! batches and offsets, and it hands bytes back. The parts, in the order a record meets them:
//!
//! - [`batch`]: Kafka RecordBatch v2, checked on the way in and served byte for byte;
//! - [`wal`]: the local write-ahead log with group commit (what `acks=1` waits for);
//! - [`engine`]: offsets, the pending buffer, ownership of partitions;
//! - [`flush`]: one [`segment`] object per interval, PUT to the [`objects`] store and
//!   committed to the [`catalog`] (what `acks=all` waits for);
//! - [`fetch`]: the read path, through the hybrid [`cache`];
//! - [`compaction`]: a partition's small extents rewritten as large per-partition objects;
//! - [`cleaner`]: key compaction of `cleanup.policy=compact` topics (newest record per key);
//! - [`retention`]: how far `retention.ms`/`retention.bytes` move a partition's log start,
//!   and garbage collection of dead and orphaned objects;
//! - [`txn`]: transactions as a partition sees them (last stable offset, aborted ranges);
//! - [`snapshot`] and [`recovery`]: the catalog's state written to the bucket, and a lost
//!   catalog rebuilt from the bucket alone;
//! - [`metrics`]: counters for all of the above.

pub mod batch;
pub mod cache;
pub mod catalog;
pub mod cleaner;
pub mod compaction;
pub mod engine;
pub mod fetch;
mod flush;
pub mod metrics;
pub mod objects;
pub mod producers;
pub mod records;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod simulate;
pub mod snapshot;
pub mod txn;
pub mod types;
pub mod wal;

pub use engine::{Acks, Engine, EngineConfig, EngineError};
pub use types::{Epoch, Offset, PartitionId, TopicId, TopicPartition};
