//! The hybrid read cache: recent and popular extents in memory, then on local disk.
//!
//! Built on `foyer`'s hybrid cache. Keys name an exact extent (`object@start+len`) — reads
//! always ask for whole extents, so one key is one ranged GET saved. The flusher inserts each
//! extent it commits, so tailing consumers never touch the object store; historical reads fill
//! the cache on their first miss. Memory is bounded by byte weight, the disk layer by its
//! capacity; a disk capacity of zero turns the disk layer off.

use std::path::PathBuf;

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    PsyncIoEngineConfig,
};
use thiserror::Error;

use crate::catalog::Extent;

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
        Ok(ReadCache { inner })
    }

    /// The cached bytes of `extent`, if present in memory or on disk.
    pub async fn get(&self, extent: &Extent) -> Option<Bytes> {
        match self.inner.get(&key(extent)).await {
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

    /// Flushes the disk layer and closes the cache.
    pub async fn close(&self) {
        if let Err(e) = self.inner.close().await {
            tracing::warn!(error = %e, "closing the read cache failed");
        }
    }
}
