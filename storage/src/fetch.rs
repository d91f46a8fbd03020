//! The read path: committed batches, served at their catalog offsets.
//!
//! A read finds the extents that hold the requested offset — in the partition's in-memory
//! tail for recent data, in the catalog for older data — and loads each extent's bytes from
//! the [read cache](crate::cache) or, on a miss, with one ranged GET of the object store.
//! Bytes that come from the object store are checked (every batch's CRC, and the extent's
//! offset count) before they are cached or served: a damaged object gives an error for that
//! read and a log line, never wrong data.
//!
//! Batches are returned whole, the first one even when it is larger than the byte limit (as
//! Kafka does since KIP-74, so a consumer can always make progress), with `baseOffset`
//! rewritten to the offset the catalog assigned.

use bytes::{Bytes, BytesMut};

use crate::batch::{self, Batch};
use crate::catalog::Extent;
use crate::engine::{Engine, EngineError};
use crate::metrics::metrics;
use crate::types::{Offset, TopicPartition};

/// What a read returns.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Whole batches, back to back, starting with the one holding the requested offset.
    pub records: Bytes,
    /// The partition's high watermark when the read was made.
    pub high_watermark: Offset,
    /// The partition's log start offset.
    pub log_start: Offset,
}

/// Extents fetched from the catalog per lookup when the tail does not cover a read.
const CATALOG_BATCH: i64 = 16;

impl Engine {
    /// Reads committed batches of `tp` from `offset`, up to about `max_bytes`.
    pub async fn read(
        &self,
        tp: TopicPartition,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult, EngineError> {
        self.read_below(tp, offset, max_bytes, None).await
    }

    /// [`Engine::read`], stopping before `end` when given: a `read_committed` reader passes
    /// the last stable offset (see [`Engine::stable_view`]), which always falls on a batch
    /// boundary.
    pub async fn read_below(
        &self,
        tp: TopicPartition,
        offset: Offset,
        max_bytes: usize,
        end: Option<Offset>,
    ) -> Result<ReadResult, EngineError> {
        let (log_start, high_watermark) = self.offsets(tp).await?;
        if offset < log_start || offset > high_watermark {
            return Err(EngineError::OffsetOutOfRange {
                tp,
                offset,
                log_start,
                high_watermark,
            });
        }
        let stop = end.map_or(high_watermark, |e| e.min(high_watermark));
        let mut out = BytesMut::new();
        let mut next = offset;
        'extents: while next < stop && out.len() < max_bytes {
            let extents = self.extents_from(tp, next).await?;
            if extents.is_empty() {
                break;
            }
            for extent in extents {
                if extent.meta.base_offset >= stop {
                    break 'extents;
                }
                let data = self.extent_bytes(&extent).await?;
                let mut batch_offset = extent.meta.base_offset;
                for (start, size, count) in batch::stored_batches(&data) {
                    let last = batch_offset.plus(count - 1);
                    if batch_offset >= stop {
                        break 'extents;
                    }
                    if last >= next {
                        if !out.is_empty() && out.len() + size > max_bytes {
                            break 'extents;
                        }
                        let at = out.len();
                        out.extend_from_slice(&data[start..start + size]);
                        batch::set_base_offset(&mut out[at..], batch_offset.0, 0);
                        next = last.plus(1);
                    }
                    batch_offset = batch_offset.plus(count);
                }
                if out.len() >= max_bytes {
                    break 'extents;
                }
            }
        }
        Ok(ReadResult {
            records: out.freeze(),
            high_watermark,
            log_start,
        })
    }

    /// Extents of `tp` holding `offset` and after: from the in-memory tail when it covers
    /// `offset`, else from the catalog.
    async fn extents_from(
        &self,
        tp: TopicPartition,
        offset: Offset,
    ) -> Result<Vec<Extent>, EngineError> {
        {
            let state = self.lock();
            if let Some(log) = state.partitions.get(&tp)
                && let Some(first) = log.tail.front()
                && first.meta.base_offset <= offset
            {
                return Ok(log
                    .tail
                    .iter()
                    .filter(|e| e.meta.last_offset >= offset)
                    .cloned()
                    .collect());
            }
        }
        Ok(self
            .inner
            .catalog
            .extents(tp, offset, CATALOG_BATCH)
            .await?)
    }

    /// The bytes of one extent: from the cache, or fetched, checked and cached.
    pub(crate) async fn extent_bytes(&self, extent: &Extent) -> Result<Bytes, EngineError> {
        if let Some(bytes) = self.inner.cache.get(extent).await {
            metrics().cache_hits.inc();
            return Ok(bytes);
        }
        metrics().cache_misses.inc();
        let start = extent.meta.byte_start;
        let range = start..start + extent.meta.byte_len;
        let data = match self
            .inner
            .objects
            .get_range(&extent.object_key, range.clone())
            .await
        {
            Ok(data) => data,
            Err(e) => {
                let e = unreadable(extent, format!("cannot read bytes {range:?}: {e}"));
                tracing::error!(error = %e, "cannot read a stored extent");
                return Err(e);
            }
        };
        if let Err(reason) = check_extent(extent, &data) {
            let e = unreadable(extent, reason);
            tracing::error!(error = %e, "stored extent failed its check; refusing to serve it");
            return Err(e);
        }
        self.inner.cache.insert_read(extent, data.clone());
        Ok(data)
    }

    /// The first offset of `tp` whose record timestamp is at or after `timestamp`, with that
    /// record's timestamp; `None` when every record is older.
    /// The offset and timestamp of the first record carrying the partition's largest
    /// timestamp (Kafka's `MAX_TIMESTAMP`, KIP-734), among records not deleted.
    pub async fn offset_for_max_timestamp(
        &self,
        tp: TopicPartition,
    ) -> Result<Option<(Offset, i64)>, EngineError> {
        let (log_start, _) = self.offsets(tp).await?;
        match self.inner.catalog.max_timestamp(tp, log_start).await? {
            Some(ts) => self.offset_for_timestamp(tp, ts).await,
            None => Ok(None),
        }
    }

    pub async fn offset_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<(Offset, i64)>, EngineError> {
        let Some(extent) = self
            .inner
            .catalog
            .extent_for_timestamp(tp, timestamp)
            .await?
        else {
            return Ok(None);
        };
        let data = self.extent_bytes(&extent).await?;
        let mut batch_offset = extent.meta.base_offset;
        for (start, size, count) in batch::stored_batches(&data) {
            let bytes = data.slice(start..start + size);
            let b = Batch::from_stored(bytes.clone())
                .map_err(|e| unreadable(&extent, e.to_string()))?;
            if b.max_timestamp() >= timestamp {
                let found = crate::records::first_at_or_after(&bytes, batch_offset, timestamp)
                    .unwrap_or((batch_offset, b.max_timestamp()));
                return Ok(Some(found));
            }
            batch_offset = batch_offset.plus(count);
        }
        Ok(None)
    }
}

/// The error for an extent whose bytes cannot be served: names its partition, offsets and
/// object.
pub(crate) fn unreadable(extent: &Extent, reason: String) -> EngineError {
    EngineError::Corrupt {
        tp: extent.meta.tp,
        object: extent.object_key.clone(),
        first: extent.meta.base_offset,
        last: extent.meta.last_offset,
        reason,
    }
}

/// Checks that `data` is whole, CRC-valid batches covering exactly the extent's offsets.
fn check_extent(extent: &Extent, data: &[u8]) -> Result<(), String> {
    if data.len() as u64 != extent.meta.byte_len {
        return Err(format!(
            "expected {} bytes, got {}",
            extent.meta.byte_len,
            data.len()
        ));
    }
    let mut covered = 0usize;
    let mut offsets = 0i64;
    for (start, size, count) in batch::stored_batches(data) {
        batch::verify_crc(&data[start..start + size])
            .map_err(|e| format!("batch at byte {start}: {e}"))?;
        covered += size;
        offsets += count;
    }
    if covered != data.len() {
        return Err(format!("batches cover {covered} of {} bytes", data.len()));
    }
    let expected = extent.meta.last_offset.0 - extent.meta.base_offset.0 + 1;
    if offsets != expected {
        return Err(format!(
            "batches hold {offsets} offsets, extent says {expected}"
        ));
    }
    Ok(())
}
