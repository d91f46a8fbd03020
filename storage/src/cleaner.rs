//! Key compaction ("cleaning") of `cleanup.policy=compact` topics: only the newest record
//! per key is kept.
//!
//! Kafka's log cleaner, in Strata's terms. The partition's owner reads its settled history
//! (published extents older than the minimum age, below the last stable offset, never the
//! newest extent, which is still the tail consumers read), finds the offset of the newest
//! record of every key, and rewrites the history keeping only:
//!
//! - each key's newest record;
//! - records without a key (Kafka refuses them on compacted topics; kept if present);
//! - tombstones (newest records with no value) until they are `delete.retention.ms` old, so
//!   consumers that read the key earlier have time to see its deletion;
//! - transactional and control batches, untouched.
//!
//! **Offsets do not change.** A batch keeps its base offset and its span (`lastOffsetDelta`)
//! even when records inside it go, as Kafka's cleaner does; consumers step over the gaps. A
//! batch left empty is dropped and its span added to the batch kept before it, so the cleaned
//! history is one contiguous run of offsets and the catalog's extents stay contiguous. The
//! result is one new object, swapped in with the same fenced, conditional catalog
//! transaction as [compaction](crate::compaction); the replaced objects are collected after
//! the grace period.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Record, RecordBatchDecoder};

use crate::batch::{self, Batch, BatchHeader};
use crate::catalog::{Compaction, Extent};
use crate::engine::{Engine, EngineError};
use crate::metrics::metrics;
use crate::segment::{self, SegmentBuilder};
use crate::types::{Offset, TopicPartition};

/// Extents looked at per pass and partition.
const SCAN: i64 = 4096;

/// Most bytes of history one pass reads and rewrites: bounds the memory of a pass. Keys
/// updated past this point are cleaned by a later pass.
const MAX_PASS_BYTES: u64 = 256 << 20;

/// zstd level for rewritten batches (as the produce path uses).
const ZSTD_LEVEL: i32 = 1;

/// What the cleaner keeps, from the topic's configs.
#[derive(Debug, Clone, Copy)]
pub struct CleanPolicy {
    /// `delete.retention.ms`: how long a tombstone is kept once it is the newest record of
    /// its key.
    pub delete_retention_ms: i64,
    /// Extents whose objects are younger than this are not cleaned yet.
    pub min_age: Duration,
}

/// What one cleaning pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    /// Stored bytes of the history cleaned, before.
    pub bytes_before: u64,
    /// Stored bytes of the same history, after.
    pub bytes_after: u64,
    /// Records removed.
    pub records_removed: u64,
}

/// A batch of the cleaned history, as it will be written.
struct OutBatch {
    header: BatchHeader,
    /// The records section (compressed as `header.attributes` says).
    section: Bytes,
}

impl OutBatch {
    fn raw(batch: &Batch) -> OutBatch {
        OutBatch {
            header: BatchHeader::of(batch),
            section: batch.bytes().slice(batch::HEADER_LEN..),
        }
    }
}

/// A stored batch with its offset, and its records when it is subject to cleaning.
struct Read {
    base: Offset,
    batch: Batch,
    records: Option<Vec<Record>>,
}

impl Engine {
    /// Cleans `tp`'s settled history if this broker owns it and anything was added since
    /// the last pass (or a kept tombstone has expired). Returns what it did, `None` when there
    /// was nothing to do.
    pub async fn clean(
        &self,
        tp: TopicPartition,
        policy: CleanPolicy,
        now_ms: i64,
    ) -> Result<Option<Cleaned>, EngineError> {
        let Some((epoch, log_start, published, stable, done_through, retry_ms)) =
            self.clean_view(tp)
        else {
            return Ok(None);
        };
        let extents: Vec<Extent> = self
            .catalog()
            .extents(tp, log_start, SCAN)
            .await?
            .into_iter()
            .filter(|e| e.meta.last_offset < published)
            .collect();
        let range = cleanable(&extents, stable, policy.min_age, now_ms);
        let Some(end) = range.last().map(|e| e.meta.last_offset) else {
            return Ok(None);
        };
        if end <= done_through && now_ms < retry_ms {
            return Ok(None);
        }
        let mut reads = Vec::new();
        for extent in &range {
            reads.extend(self.read_extent(extent).await?);
        }
        let horizon = now_ms.saturating_sub(policy.delete_retention_ms);
        let (out, removed, next_expiry) = clean_batches(&reads, horizon);
        self.note_cleaned(tp, end, next_expiry.map_or(i64::MAX, |t| t + 1));
        if removed == 0 {
            return Ok(None);
        }
        let bytes_before: u64 = range.iter().map(|e| e.meta.byte_len).sum();
        let mut builder = SegmentBuilder::with_capacity(bytes_before as usize);
        for (base, b) in &out {
            let bytes = b.header.assemble(&b.section);
            let batch = Batch::from_stored(bytes).map_err(|e| EngineError::Corrupt {
                tp,
                object: "(cleaned batch)".into(),
                first: *base,
                last: *base,
                reason: e.to_string(),
            })?;
            builder.add(tp, *base, &batch);
        }
        let (object, metas) = builder.finish();
        let key = segment::new_key();
        let bytes_after: u64 = metas.iter().map(|m| m.byte_len).sum();
        self.objects().put(&key, object.clone()).await?;
        let swap = Compaction {
            epoch,
            first_base: range[0].meta.base_offset,
            last_base: range[range.len() - 1].meta.base_offset,
            replaced: range.len() as u64,
            object_key: key.clone(),
            object_size: object.len() as u64,
            extents: metas.clone(),
        };
        if !self.catalog().replace_extents(&swap).await? {
            tracing::info!(%tp, "extents changed during cleaning; trying again next pass");
            self.note_cleaned(tp, Offset(-1), 0);
            self.objects().delete(&key).await?;
            return Ok(None);
        }
        let new: Vec<Extent> = metas
            .into_iter()
            .map(|meta| Extent {
                meta,
                object_key: key.clone(),
            })
            .collect();
        self.swap_tail(tp, &range, &new);
        metrics().cleaned_records.inc_by(removed);
        tracing::info!(
            %tp,
            records_removed = removed,
            bytes_before,
            bytes_after,
            object = %key,
            "cleaned a compacted topic's history: newest record per key kept"
        );
        Ok(Some(Cleaned {
            bytes_before,
            bytes_after,
            records_removed: removed,
        }))
    }

    /// `(epoch, log start, published high watermark, last stable offset, cleaned through,
    /// clean again at)` of `tp` if this broker owns it.
    #[allow(clippy::type_complexity)]
    fn clean_view(
        &self,
        tp: TopicPartition,
    ) -> Option<(crate::Epoch, Offset, Offset, Offset, Offset, i64)> {
        let state = self.lock();
        state.partitions.get(&tp).map(|l| {
            let hwm = *l.hwm.borrow();
            (
                l.epoch,
                l.log_start,
                hwm,
                l.txns.last_stable(hwm),
                l.cleaned_through,
                l.clean_again_ms,
            )
        })
    }

    /// Remembers that `tp` is clean through `end` until `again_ms` (when a kept tombstone
    /// expires).
    fn note_cleaned(&self, tp: TopicPartition, end: Offset, again_ms: i64) {
        if let Some(l) = self.lock().partitions.get_mut(&tp) {
            l.cleaned_through = end;
            l.clean_again_ms = again_ms;
        }
    }

    /// The batches of one extent, decoded where cleaning may drop records from them.
    async fn read_extent(&self, extent: &Extent) -> Result<Vec<Read>, EngineError> {
        let data = self.extent_bytes(extent).await?;
        let mut out = Vec::new();
        let mut base = extent.meta.base_offset;
        for (start, size, count) in batch::stored_batches(&data) {
            let batch = Batch::from_stored(data.slice(start..start + size))
                .map_err(|e| crate::fetch::unreadable(extent, e.to_string()))?;
            let records = (!batch.is_control() && !batch.is_transactional())
                .then(|| decode(&batch, base))
                .flatten();
            out.push(Read {
                base,
                batch,
                records,
            });
            base = base.plus(count);
        }
        Ok(out)
    }
}

/// The extents a pass may clean: from the start, those settled (older than `min_age`) and
/// wholly below the last stable offset, never the newest one, at most [`MAX_PASS_BYTES`].
fn cleanable(extents: &[Extent], stable: Offset, min_age: Duration, now_ms: i64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for e in extents.iter().take(extents.len().saturating_sub(1)) {
        let settled = segment::key_time_ms(&e.object_key)
            .is_some_and(|t| now_ms - t >= min_age.as_millis() as i64);
        if !settled || e.meta.last_offset >= stable || bytes + e.meta.byte_len > MAX_PASS_BYTES {
            break;
        }
        bytes += e.meta.byte_len;
        out.push(e.clone());
    }
    out
}

/// The records of `batch`, whose first offset is `base`; `None` if they cannot be decoded
/// (the batch is then kept as it is).
fn decode(batch: &Batch, base: Offset) -> Option<Vec<Record>> {
    let mut copy = BytesMut::from(batch.bytes().as_ref());
    batch::set_base_offset(&mut copy, base.0, 0);
    let mut buf = copy.freeze();
    RecordBatchDecoder::decode(&mut buf)
        .ok()
        .map(|set| set.records)
}

/// Cleans decoded batches: keeps each key's newest record (tombstones only while newer than
/// `horizon`). Returns the batches to write with their base offsets, how many records went,
/// and when the oldest kept tombstone expires.
fn clean_batches(reads: &[Read], horizon: i64) -> (Vec<(Offset, OutBatch)>, u64, Option<i64>) {
    let mut newest: HashMap<&[u8], i64> = HashMap::new();
    for r in reads {
        for rec in r.records.iter().flatten() {
            if let Some(key) = &rec.key {
                newest.insert(key.as_ref(), rec.offset);
            }
        }
    }
    let mut out: Vec<(Offset, OutBatch)> = Vec::new();
    let mut removed = 0u64;
    let mut next_expiry: Option<i64> = None;
    for r in reads {
        let span_end = r.base.plus(r.batch.offset_count() - 1);
        let Some(records) = &r.records else {
            out.push((r.base, OutBatch::raw(&r.batch)));
            continue;
        };
        let kept: Vec<&Record> = records
            .iter()
            .filter(|rec| {
                let Some(key) = &rec.key else { return true };
                if newest.get(key.as_ref()) != Some(&rec.offset) {
                    return false;
                }
                if rec.value.is_some() {
                    return true;
                }
                let keep = rec.timestamp >= horizon;
                if keep {
                    next_expiry = Some(next_expiry.map_or(rec.timestamp, |t| t.min(rec.timestamp)));
                }
                keep
            })
            .collect();
        removed += (records.len() - kept.len()) as u64;
        if kept.len() == records.len() {
            out.push((r.base, OutBatch::raw(&r.batch)));
        } else if kept.is_empty() {
            // Its span joins the batch before it, so offsets stay contiguous.
            if let Some((prev_base, prev)) = out.last_mut() {
                prev.header.last_offset_delta = (span_end.0 - prev_base.0) as i32;
            }
        } else {
            out.push((r.base, rebuild(&r.batch, r.base, &kept)));
        }
    }
    (out, removed, next_expiry)
}

/// `batch` (first offset `base`) with only `kept` of its records, its span and producer
/// fields unchanged, zstd-compressed when that helps.
fn rebuild(batch: &Batch, base: Offset, kept: &[&Record]) -> OutBatch {
    let mut header = BatchHeader::of(batch);
    let mut section = Vec::with_capacity(batch.len());
    for rec in kept {
        let headers: Vec<(&[u8], Option<&[u8]>)> = rec
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        batch::write_record(
            &mut section,
            rec.timestamp - header.base_timestamp,
            rec.offset - base.0,
            rec.key.as_deref(),
            rec.value.as_deref(),
            &headers,
        );
    }
    header.record_count = kept.len() as i32;
    header.attributes &= !0x07;
    if let Some(packed) = batch::zstd_compress(&section, ZSTD_LEVEL)
        && packed.len() < section.len()
    {
        section = packed;
        header.attributes |= 4;
    }
    OutBatch {
        header,
        section: Bytes::from(section),
    }
}
