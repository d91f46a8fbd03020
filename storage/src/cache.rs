//! The hybrid read cache: recent and popular extents in memory, then on local disk.
//!
//! Built on `foyer`'s hybrid cache. Keys name an exact extent (`object@start+len`) — reads
//! always ask for whole extents, so one key is one ranged GET saved. The flusher inserts each
//! extent it commits, so tailing consumers never touch the object store; historical reads fill
//! the cache on their first miss. Memory is bounded by byte weight, the disk layer by its
//! capacity; a disk capacity of zero turns the disk layer off.
//!
//! **Streams.** A consumer replaying history reads a large extent (a compacted one is
//! 16–24 MiB) a megabyte per fetch. With many partitions replayed at once, their extents
//! together outgrow the memory layer, and an extent evicted before its reader reached its
//! end was fetched again: a replay cost twice the bytes stored. So the extent a partition's
//! reader last fetched from the object store is also *pinned* for that partition until the
//! reader moves on to the next one (or pins of other partitions need the room), within a
//! budget the size of the memory layer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::path::PathBuf;

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    PsyncIoEngineConfig,
};
use thiserror::Error;

use crate::catalog::Extent;
use crate::types::TopicPartition;

/// Extents smaller than this are not pinned: re-fetching them costs little.
const PIN_MIN: usize = 1 << 20;

/// Largest extent the disk layer stores; larger ones live only in memory. Also the disk
/// layer's block size. Compacted extents are at most 1.5 times the compaction target
/// (16 MiB by default), so they fit.
const DISK_BLOCK: usize = 32 << 20;

/// Why the cache could not be opened.
#[derive(Debug, Error)]
#[error("cannot open the read cache: {0}")]
pub struct CacheError(String);

/// The read cache. Cheap to clone.
#[derive(Clone)]
pub struct ReadCache {
    inner: HybridCache<String, Bytes>,
    pins: Arc<Mutex<Pins>>,
}

/// The extent each replaying partition is reading, oldest pin first.
#[derive(Default)]
struct Pins {
    by_partition: HashMap<TopicPartition, (String, Bytes)>,
    order: VecDeque<TopicPartition>,
    bytes: usize,
    budget: usize,
}

impl Pins {
    fn get(&self, tp: TopicPartition, key: &str) -> Option<Bytes> {
        self.by_partition
            .get(&tp)
            .filter(|(k, _)| k == key)
            .map(|(_, b)| b.clone())
    }

    fn pin(&mut self, tp: TopicPartition, key: String, bytes: Bytes) {
        if bytes.len() < PIN_MIN || bytes.len() > self.budget {
            return;
        }
        if let Some((_, old)) = self.by_partition.remove(&tp) {
            self.bytes -= old.len();
            self.order.retain(|t| *t != tp);
        }
        while self.bytes + bytes.len() > self.budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, old)) = self.by_partition.remove(&oldest) {
                self.bytes -= old.len();
            }
        }
        self.bytes += bytes.len();
        self.order.push_back(tp);
        self.by_partition.insert(tp, (key, bytes));
    }
}

fn key(extent: &Extent) -> String {
    format!(
        "{}@{}+{}",
        extent.object_key, extent.meta.byte_start, extent.meta.byte_len
    )
}

impl ReadCache {
    /// Opens a cache holding up to `memory_bytes` in memory and, when `disk` names a
    /// directory and a capacity of at least one block, that many bytes on disk.
    pub async fn open(
        memory_bytes: usize,
        disk: Option<(PathBuf, usize)>,
    ) -> Result<ReadCache, CacheError> {
        let builder = HybridCacheBuilder::new()
            .with_name("strata-read-cache")
            .memory(memory_bytes.max(1 << 20))
            .with_weighter(|k: &String, v: &Bytes| k.len() + v.len())
            .storage();
        let inner = match disk {
            Some((dir, capacity)) if capacity >= DISK_BLOCK => {
                std::fs::create_dir_all(&dir).map_err(|e| CacheError(e.to_string()))?;
                let capacity = capacity / DISK_BLOCK * DISK_BLOCK;
                let device = FsDeviceBuilder::new(&dir)
                    .with_capacity(capacity)
                    .build()
                    .map_err(|e| CacheError(e.to_string()))?;
                builder
                    .with_io_engine_config(PsyncIoEngineConfig::new())
                    .with_engine_config(BlockEngineConfig::new(device).with_block_size(DISK_BLOCK))
                    .build()
                    .await
            }
            _ => builder.build().await,
        }
        .map_err(|e| CacheError(e.to_string()))?;
        let pins = Pins {
            budget: memory_bytes,
            ..Pins::default()
        };
        Ok(ReadCache {
            inner,
            pins: Arc::new(Mutex::new(pins)),
        })
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached bytes of `extent`, if pinned for a reader, in memory or on disk.
    pub async fn get(&self, extent: &Extent) -> Option<Bytes> {
        let key = key(extent);
        if let Some(bytes) = self.pins().get(extent.meta.tp, &key) {
            return Some(bytes);
        }
        match self.inner.get(&key).await {
            Ok(entry) => entry.map(|e| e.value().clone()),
            Err(e) => {
                tracing::warn!(error = %e, "read cache lookup failed; treating it as a miss");
                None
            }
        }
    }

    /// Caches the bytes of `extent`.
    pub fn insert(&self, extent: &Extent, bytes: Bytes) {
        self.inner.insert(key(extent), bytes);
    }

    /// Caches the bytes of `extent`, just fetched for a reader, and pins them for its
    /// partition until the reader moves on (see the module docs).
    pub fn insert_read(&self, extent: &Extent, bytes: Bytes) {
        self.pins().pin(extent.meta.tp, key(extent), bytes.clone());
        self.insert(extent, bytes);
    }

    /// Flushes the disk layer and closes the cache.
    pub async fn close(&self) {
        if let Err(e) = self.inner.close().await {
            tracing::warn!(error = %e, "closing the read cache failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tp;
    use crate::types::TopicId;

    #[test]
    fn one_pin_per_partition_within_the_budget() {
        let (a, b, c) = (
            tp(TopicId::random(), 0),
            tp(TopicId::random(), 1),
            tp(TopicId::random(), 2),
        );
        let mb = |n: usize| Bytes::from(vec![0u8; n << 20]);
        let mut pins = Pins {
            budget: 5 << 20,
            ..Pins::default()
        };
        pins.pin(a, "a1".into(), mb(2));
        pins.pin(a, "a2".into(), mb(2)); // the reader moved on: a1 goes
        assert!(pins.get(a, "a1").is_none() && pins.get(a, "a2").is_some());
        pins.pin(b, "b1".into(), mb(2));
        pins.pin(c, "c1".into(), mb(2)); // over budget: the oldest pin (a2) goes
        assert!(pins.get(a, "a2").is_none());
        assert!(pins.get(b, "b1").is_some() && pins.get(c, "c1").is_some());
        assert_eq!(pins.bytes, 4 << 20);
        pins.pin(c, "small".into(), Bytes::from_static(b"x")); // too small to pin
        assert!(pins.get(c, "small").is_none() && pins.get(c, "c1").is_some());
    }
}
