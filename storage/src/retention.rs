//! Retention by time and size: how far a partition's log start may move.
//!
//! Kafka deletes whole segments from the oldest while they are expired; Strata does the same
//! with extents (one partition's run of batches in one flushed object). By time, an extent
//! goes once its newest record is older than `retention.ms`, oldest first, stopping at the
//! first extent that is not expired (timestamps need not grow with offsets). By size, the
//! oldest extents go while the partition holds more than `retention.bytes`, always keeping
//! the newest one, as Kafka keeps its active segment. Moving the log start is all this does;
//! the objects whose extents are all below their partitions' log starts are collected by
//! [`Engine::collect_garbage`] once they have been dead for a grace period, long enough for
//! reads that began before the log start moved.

use std::time::Duration;

use crate::catalog::Extent;
use crate::engine::{Engine, EngineError};
use crate::types::{Offset, TopicPartition};

/// Extents read from the catalog per page while looking for the cut.
const PAGE: i64 = 1000;

/// Dead objects deleted per garbage-collection pass.
const GC_BATCH: i64 = 1000;

/// A topic's retention settings; `None` keeps forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// `retention.ms`.
    pub ms: Option<i64>,
    /// `retention.bytes`.
    pub bytes: Option<i64>,
}

impl Engine {
    /// Applies `retention` to `tp` at time `now_ms`: returns the new log start when it moved.
    pub async fn apply_retention(
        &self,
        tp: TopicPartition,
        retention: Retention,
        now_ms: i64,
    ) -> Result<Option<Offset>, EngineError> {
        // Only the owner moves the log start (the catalog fences it by the owner's epoch).
        if retention == Retention::default() || !self.owns(tp) {
            return Ok(None);
        }
        let (log_start, _) = self.offsets(tp).await?;
        let catalog = self.catalog();
        let (mut excess, mut left) = match retention.bytes {
            Some(limit) => {
                let stored = catalog.stored(tp, log_start).await?;
                (stored.bytes - limit, stored.extents)
            }
            None => (0, 0),
        };
        let cutoff = retention.ms.map(|ms| now_ms.saturating_sub(ms));
        let mut cut: Option<Offset> = None;
        let mut from = log_start;
        'pages: loop {
            let page: Vec<Extent> = catalog.extents(tp, from, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                // A batch without timestamps (-1) has no age to judge; it is kept.
                let expired =
                    cutoff.is_some_and(|c| e.meta.max_timestamp >= 0 && e.meta.max_timestamp < c);
                let too_big = excess > 0 && left > 1;
                if !(expired || too_big) {
                    break 'pages;
                }
                excess -= e.meta.byte_len as i64;
                left -= 1;
                cut = Some(e.meta.last_offset.plus(1));
                from = e.meta.last_offset.plus(1);
            }
        }
        match cut {
            Some(offset) if offset > log_start => {
                let start = self.delete_records(tp, Some(offset)).await?;
                crate::metrics::metrics().retention_moves.inc();
                Ok(Some(start))
            }
            _ => Ok(None),
        }
    }

    /// Deletes objects that hold no live record and have been dead for `grace`, then forgets
    /// them in the catalog (in that order: a crash in between leaves a catalog row whose
    /// object is already gone, which the next pass forgets). Returns how many were deleted.
    pub async fn collect_garbage(
        &self,
        now_ms: i64,
        grace: Duration,
    ) -> Result<usize, EngineError> {
        let catalog = self.catalog();
        catalog.mark_dead_objects(now_ms).await?;
        let keys = catalog
            .dead_objects(now_ms - grace.as_millis() as i64, GC_BATCH)
            .await?;
        for key in &keys {
            self.objects().delete(key).await?;
            catalog.forget_object(key).await?;
            crate::metrics::metrics().gc_objects_deleted.inc();
            tracing::info!(object = key, "deleted an object with no live records");
        }
        Ok(keys.len())
    }

    /// Deletes orphans under each of `prefixes`: segment objects the catalog has never
    /// recorded, older than `grace` (by the time in their ULID key). A flush PUTs its object
    /// before it commits, so a crash between the two leaves one; the grace period keeps every
    /// flush still in flight. Listing is the expensive part, so callers pass the day
    /// prefixes worth looking at ([`segment::day_prefixes`](crate::segment::day_prefixes)).
    pub async fn collect_orphans(
        &self,
        now_ms: i64,
        grace: Duration,
        prefixes: &[String],
    ) -> Result<usize, EngineError> {
        let cutoff = now_ms - grace.as_millis() as i64;
        let mut deleted = 0;
        for prefix in prefixes {
            for object in self.objects().list(prefix).await? {
                let Some(written) = crate::segment::key_time_ms(&object.key) else {
                    continue; // not a segment this broker wrote
                };
                if written > cutoff || self.catalog().object_known(&object.key).await? {
                    continue;
                }
                self.objects().delete(&object.key).await?;
                crate::metrics::metrics().gc_orphans_deleted.inc();
                tracing::info!(
                    object = object.key,
                    "deleted an orphan object no commit recorded"
                );
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
