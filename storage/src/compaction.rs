//! Compaction: many small extents of a partition rewritten as one large one.
//!
//! A flush writes one object holding every partition's new batches, so a partition's history
//! is spread over many small extents — one per flush it had data in. Reading months back
//! would then cost a GET per flush. The partition's owner therefore rewrites runs of small,
//! settled extents into one object of its own (`target_bytes`, 16 MiB by default: at most 64
//! GETs per GiB replayed, and each GET large enough to stream at full speed). The records,
//! their offsets and their bytes do not change; only where they live does.
//!
//! The rewrite is committed in one catalog transaction fenced by the owner's epoch and
//! conditional on the replaced extents being exactly those read, so it cannot race a new
//! owner, retention or another compaction. The objects it leaves without live extents are
//! deleted by garbage collection after the grace period, so reads that began before the
//! swap finish.

use std::time::Duration;

use crate::batch::{self, Batch};
use crate::catalog::{Compaction, Extent};
use crate::engine::{Engine, EngineError};
use crate::metrics::metrics;
use crate::segment::{self, SegmentBuilder};
use crate::types::TopicPartition;

/// Extents looked at per pass and partition.
const SCAN: i64 = 4096;

/// Runs compacted per pass and partition, so one pass never holds a partition for long.
const RUNS_PER_PASS: usize = 8;

/// A run this long is compacted even if smaller than the target: a quiet partition's history
/// would otherwise stay in tiny pieces forever.
const MAX_RUN_EXTENTS: usize = 256;

/// What compaction aims for.
#[derive(Debug, Clone, Copy)]
pub struct CompactionPolicy {
    /// Size of the objects it writes; extents of half this size or more are left alone.
    pub target_bytes: u64,
    /// Extents whose objects are younger than this are left alone (still being read hot,
    /// and still growing the run).
    pub min_age: Duration,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            target_bytes: 16 << 20,
            min_age: Duration::from_secs(60),
        }
    }
}

impl Engine {
    /// Compacts runs of small extents of `tp`, if this broker owns it. Returns how many
    /// extents were replaced.
    pub async fn compact(
        &self,
        tp: TopicPartition,
        policy: CompactionPolicy,
        now_ms: i64,
    ) -> Result<usize, EngineError> {
        let mut replaced = 0;
        for _ in 0..RUNS_PER_PASS {
            let Some((epoch, log_start, published)) = self.owner_view(tp) else {
                break;
            };
            // Only extents already published to the in-memory tail: the swap below must find
            // them there, or the tail would keep pointing at objects about to be deleted.
            let extents: Vec<Extent> = self
                .catalog()
                .extents(tp, log_start, SCAN)
                .await?
                .into_iter()
                .filter(|e| e.meta.last_offset < published)
                .collect();
            let run = pick_run(&extents, policy, now_ms);
            if run.len() < 2 {
                break;
            }
            let n = run.len();
            if self.rewrite(tp, epoch, run).await? {
                replaced += n;
            } else {
                break;
            }
        }
        Ok(replaced)
    }

    /// The epoch, log start and published high watermark of `tp` if this broker owns it.
    fn owner_view(
        &self,
        tp: TopicPartition,
    ) -> Option<(crate::Epoch, crate::Offset, crate::Offset)> {
        let state = self.lock();
        state
            .partitions
            .get(&tp)
            .map(|l| (l.epoch, l.log_start, *l.hwm.borrow()))
    }

    /// Writes `run`'s batches as one object and swaps it in. Returns false when the catalog
    /// refused the swap (the extents changed meanwhile); the object is then deleted.
    async fn rewrite(
        &self,
        tp: TopicPartition,
        epoch: crate::Epoch,
        run: Vec<Extent>,
    ) -> Result<bool, EngineError> {
        let total: u64 = run.iter().map(|e| e.meta.byte_len).sum();
        let mut builder = SegmentBuilder::with_capacity(total as usize);
        for extent in &run {
            let data = self.extent_bytes(extent).await?;
            let mut offset = extent.meta.base_offset;
            for (start, size, count) in batch::stored_batches(&data) {
                let b = Batch::from_stored(data.slice(start..start + size))
                    .map_err(|e| crate::fetch::unreadable(extent, e.to_string()))?;
                builder.add(tp, offset, &b);
                offset = offset.plus(count);
            }
        }
        let (object, metas) = builder.finish();
        let key = segment::new_key();
        self.objects().put(&key, object.clone()).await?;
        let compaction = Compaction {
            epoch,
            first_base: run[0].meta.base_offset,
            last_base: run[run.len() - 1].meta.base_offset,
            replaced: run.len() as u64,
            object_key: key.clone(),
            object_size: object.len() as u64,
            extents: metas.clone(),
        };
        if !self.catalog().replace_extents(&compaction).await? {
            tracing::info!(%tp, "extents changed during compaction; trying again next pass");
            self.objects().delete(&key).await?;
            return Ok(false);
        }
        let new: Vec<Extent> = metas
            .into_iter()
            .map(|meta| Extent {
                meta,
                object_key: key.clone(),
            })
            .collect();
        self.swap_tail(tp, &run, &new);
        metrics().compactions.inc();
        metrics().compacted_bytes.inc_by(total);
        tracing::info!(
            %tp,
            extents = run.len(),
            bytes = total,
            object = %key,
            "compacted extents into one object"
        );
        Ok(true)
    }

    /// Replaces `old` by `new` in the partition's in-memory tail of extents, where present.
    pub(crate) fn swap_tail(&self, tp: TopicPartition, old: &[Extent], new: &[Extent]) {
        let (Some(first), Some(last)) = (old.first(), old.last()) else {
            return;
        };
        let (from, to) = (first.meta.base_offset, last.meta.base_offset);
        let mut state = self.lock();
        let Some(log) = state.partitions.get_mut(&tp) else {
            return;
        };
        let at = log.tail.iter().position(|e| e.meta.base_offset >= from);
        let before = log.tail.len();
        log.tail
            .retain(|e| e.meta.base_offset < from || e.meta.base_offset > to);
        if let Some(at) = at
            && log.tail.len() < before
        {
            for (i, e) in new.iter().enumerate() {
                log.tail.insert(at + i, e.clone());
            }
        }
    }
}

/// The first run of consecutive extents worth compacting: small ones (under half the
/// target) in objects older than the minimum age, up to the target size. A run that stops
/// short of the target is taken only when it is long.
fn pick_run(extents: &[Extent], policy: CompactionPolicy, now_ms: i64) -> Vec<Extent> {
    let settled = |e: &Extent| {
        segment::key_time_ms(&e.object_key)
            .is_some_and(|t| now_ms - t >= policy.min_age.as_millis() as i64)
    };
    let mut run: Vec<Extent> = Vec::new();
    let mut bytes = 0u64;
    for e in extents {
        let small = e.meta.byte_len < policy.target_bytes / 2;
        // Only a small extent's age matters: a large one (a compaction's own output, made
        // after this pass began) ends a run but says nothing of the extents after it.
        let young = small && !settled(e);
        if !small || young {
            if run.len() >= MAX_RUN_EXTENTS || bytes >= policy.target_bytes {
                return run;
            }
            run.clear();
            bytes = 0;
            if young {
                break; // the flush extents after it are younger still
            }
            continue;
        }
        run.push(e.clone());
        bytes += e.meta.byte_len;
        if bytes >= policy.target_bytes || run.len() >= MAX_RUN_EXTENTS {
            return run;
        }
    }
    if run.len() >= MAX_RUN_EXTENTS || bytes >= policy.target_bytes {
        run
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tp;
    use crate::segment::ExtentMeta;
    use crate::types::{Offset, TopicId};

    fn extent(base: i64, len: u64, made_ms: i64) -> Extent {
        Extent {
            meta: ExtentMeta {
                tp: tp(TopicId(uuid::Uuid::nil()), 0),
                base_offset: Offset(base),
                last_offset: Offset(base),
                byte_start: 0,
                byte_len: len,
                min_timestamp: 0,
                max_timestamp: 0,
                record_count: 1,
            },
            object_key: format!(
                "segments/2026/01/01/{}.seg",
                ulid::Ulid::from_parts(made_ms as u64, 1)
            ),
        }
    }

    fn policy() -> CompactionPolicy {
        CompactionPolicy {
            target_bytes: 100,
            min_age: Duration::from_millis(1000),
        }
    }

    fn bases(run: &[Extent]) -> Vec<i64> {
        run.iter().map(|e| e.meta.base_offset.0).collect()
    }

    #[test]
    fn takes_small_settled_extents_up_to_the_target() {
        let now: i64 = 1_000_000;
        let old = now - 5_000;
        let extents: Vec<Extent> = (0..10).map(|i| extent(i, 30, old)).collect();
        assert_eq!(bases(&pick_run(&extents, policy(), now)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn leaves_big_and_young_extents_and_short_runs() {
        let now: i64 = 1_000_000;
        let old = now - 5_000;
        // small, BIG, small, small, small, small, young...
        let mut extents = vec![extent(0, 30, old), extent(1, 80, old)];
        extents.extend((2..6).map(|i| extent(i, 30, old)));
        extents.push(extent(6, 30, now));
        assert_eq!(bases(&pick_run(&extents, policy(), now)), vec![2, 3, 4, 5]);
        // Short of the target and short: left for later.
        let few: Vec<Extent> = (0..3).map(|i| extent(i, 10, old)).collect();
        assert!(pick_run(&few, policy(), now).is_empty());
        // A large extent newer than the pass (its own output) does not stop it.
        let mut after_a_rewrite = vec![extent(0, 80, now + 5)];
        after_a_rewrite.extend((1..5).map(|i| extent(i, 30, old)));
        assert_eq!(
            bases(&pick_run(&after_a_rewrite, policy(), now)),
            vec![1, 2, 3, 4]
        );
        // Many tiny ones are worth merging even below the target.
        let many: Vec<Extent> = (0..300).map(|i| extent(i, 0, old)).collect();
        assert_eq!(pick_run(&many, policy(), now).len(), MAX_RUN_EXTENTS);
    }
}
