//! Segment objects: what a flush writes to the object store.
//!
//! One flush makes one object holding the batches of every partition that had data, grouped by
//! partition, followed by a footer that indexes them. The footer makes each object
//! self-describing: from the bucket alone one can list which offsets of which partition live in
//! which byte range, which is what rebuilding a lost catalog needs.
//!
//! ```text
//! [partition A batches][partition B batches]...[footer entries][trailer]
//! footer entry (72 bytes): topic id (16) | partition i32 | base offset i64 | last offset i64
//!                          | byte start u64 | byte length u64 | min timestamp i64
//!                          | max timestamp i64 | record count i32
//! trailer (18 bytes): footer length u32 | footer CRC32C u32 | version u16 | magic "STRATASG"
//! ```
//!
//! Objects are named `segments/<yyyy>/<mm>/<dd>/<ulid>.seg`: the date makes a bucket browsable
//! by age, the ULID sorts by creation time and never collides.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::batch::Batch;
use crate::types::{Offset, PartitionId, TopicId, TopicPartition};

const MAGIC: &[u8; 8] = b"STRATASG";
const VERSION: u16 = 1;
const TRAILER_LEN: usize = 18;
const ENTRY_LEN: usize = 72;

/// Why a segment object could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SegmentError {
    /// The object is shorter than a trailer or its footer length.
    #[error("segment object is truncated")]
    Truncated,
    /// The trailer's magic is wrong: not a Strata segment.
    #[error("not a Strata segment (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("segment format version {0} is not readable by this build")]
    UnknownVersion(u16),
    /// The footer's CRC does not match.
    #[error("segment footer CRC mismatch")]
    BadCrc,
}

/// Where one partition's run of batches lives inside a segment object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentMeta {
    /// The partition.
    pub tp: TopicPartition,
    /// Offset of the first record in the run.
    pub base_offset: Offset,
    /// Offset of the last record in the run (inclusive).
    pub last_offset: Offset,
    /// Byte position of the run in the object.
    pub byte_start: u64,
    /// Byte length of the run.
    pub byte_len: u64,
    /// Smallest batch base timestamp in the run.
    pub min_timestamp: i64,
    /// Largest batch max timestamp in the run.
    pub max_timestamp: i64,
    /// Records in the run.
    pub record_count: i64,
}

/// Assembles one segment object. Add each partition's batches in offset order; a partition's
/// batches must be contiguous in offsets and added one after another.
#[derive(Default)]
pub struct SegmentBuilder {
    data: BytesMut,
    extents: Vec<ExtentMeta>,
}

impl SegmentBuilder {
    /// An empty builder.
    pub fn new() -> SegmentBuilder {
        SegmentBuilder::default()
    }

    /// An empty builder with room for `bytes` of batches, so building a large segment never
    /// reallocates and copies it.
    pub fn with_capacity(bytes: usize) -> SegmentBuilder {
        SegmentBuilder {
            data: BytesMut::with_capacity(bytes + 4096),
            extents: Vec::new(),
        }
    }

    /// Appends a batch of `tp` whose first record has offset `base_offset`.
    pub fn add(&mut self, tp: TopicPartition, base_offset: Offset, batch: &Batch) {
        let start = self.data.len() as u64;
        self.data.extend_from_slice(batch.bytes());
        let last = base_offset.plus(batch.offset_count() - 1);
        let (min_ts, max_ts) = (batch.base_timestamp(), batch.max_timestamp());
        let records = i64::from(batch.record_count());
        match self.extents.last_mut() {
            Some(e) if e.tp == tp && e.last_offset.plus(1) == base_offset => {
                e.last_offset = last;
                e.byte_len += batch.len() as u64;
                e.min_timestamp = e.min_timestamp.min(min_ts);
                e.max_timestamp = e.max_timestamp.max(max_ts);
                e.record_count += records;
            }
            _ => self.extents.push(ExtentMeta {
                tp,
                base_offset,
                last_offset: last,
                byte_start: start,
                byte_len: batch.len() as u64,
                min_timestamp: min_ts,
                max_timestamp: max_ts,
                record_count: records,
            }),
        }
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Bytes of batch data added so far.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Finishes the object: data, footer and trailer, and the extents it holds.
    pub fn finish(mut self) -> (Bytes, Vec<ExtentMeta>) {
        let footer_start = self.data.len();
        for e in &self.extents {
            self.data.put_slice(e.tp.topic.0.as_bytes());
            self.data.put_i32(e.tp.partition.0);
            self.data.put_i64(e.base_offset.0);
            self.data.put_i64(e.last_offset.0);
            self.data.put_u64(e.byte_start);
            self.data.put_u64(e.byte_len);
            self.data.put_i64(e.min_timestamp);
            self.data.put_i64(e.max_timestamp);
            self.data.put_i32(e.record_count as i32);
        }
        let footer_len = self.data.len() - footer_start;
        let crc = crc32c::crc32c(&self.data[footer_start..]);
        self.data.put_u32(footer_len as u32);
        self.data.put_u32(crc);
        self.data.put_u16(VERSION);
        self.data.put_slice(MAGIC);
        (self.data.freeze(), self.extents)
    }
}

/// Reads the footer of a whole segment object: the index of what it holds.
pub fn read_footer(object: &[u8]) -> Result<Vec<ExtentMeta>, SegmentError> {
    if object.len() < TRAILER_LEN {
        return Err(SegmentError::Truncated);
    }
    let mut trailer = &object[object.len() - TRAILER_LEN..];
    let footer_len = trailer.get_u32() as usize;
    let crc = trailer.get_u32();
    let version = trailer.get_u16();
    if trailer != MAGIC {
        return Err(SegmentError::BadMagic);
    }
    if version != VERSION {
        return Err(SegmentError::UnknownVersion(version));
    }
    let footer_end = object.len() - TRAILER_LEN;
    let footer_start = footer_end
        .checked_sub(footer_len)
        .ok_or(SegmentError::Truncated)?;
    let mut footer = &object[footer_start..footer_end];
    if crc32c::crc32c(footer) != crc || !footer_len.is_multiple_of(ENTRY_LEN) {
        return Err(SegmentError::BadCrc);
    }
    let mut out = Vec::with_capacity(footer_len / ENTRY_LEN);
    while footer.has_remaining() {
        let mut uuid = [0u8; 16];
        footer.copy_to_slice(&mut uuid);
        out.push(ExtentMeta {
            tp: TopicPartition {
                topic: TopicId(uuid::Uuid::from_bytes(uuid)),
                partition: PartitionId(footer.get_i32()),
            },
            base_offset: Offset(footer.get_i64()),
            last_offset: Offset(footer.get_i64()),
            byte_start: footer.get_u64(),
            byte_len: footer.get_u64(),
            min_timestamp: footer.get_i64(),
            max_timestamp: footer.get_i64(),
            record_count: i64::from(footer.get_i32()),
        });
    }
    Ok(out)
}

/// When a segment key was made (ms since the Unix epoch), from the ULID in its name; `None`
/// for a key [`new_key`] did not make.
pub fn key_time_ms(key: &str) -> Option<i64> {
    let name = key.strip_prefix("segments/")?.rsplit('/').next()?;
    let ulid = ulid::Ulid::from_string(name.strip_suffix(".seg")?).ok()?;
    i64::try_from(ulid.timestamp_ms()).ok()
}

/// The key prefixes of the segments made on the `days` UTC days up to `now_ms`, newest
/// first; `days == 0` means every segment.
pub fn day_prefixes(now_ms: i64, days: u32) -> Vec<String> {
    if days == 0 {
        return vec!["segments/".to_string()];
    }
    (0..i64::from(days))
        .filter_map(|d| chrono::DateTime::from_timestamp_millis(now_ms - d * 86_400_000))
        .map(|t| format!("segments/{}/", t.format("%Y/%m/%d")))
        .collect()
}

/// A new segment object key for now: `segments/<yyyy>/<mm>/<dd>/<ulid>.seg`.
pub fn new_key() -> String {
    let now = chrono::Utc::now();
    format!(
        "segments/{}/{}.seg",
        now.format("%Y/%m/%d"),
        ulid::Ulid::new()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_their_time_and_day() {
        let key = new_key();
        let now = chrono::Utc::now().timestamp_millis();
        let made = key_time_ms(&key).unwrap();
        assert!((now - made).abs() < 5_000, "{key}");
        assert!(key.starts_with(&day_prefixes(now, 1)[0]), "{key}");
        assert_eq!(key_time_ms("segments/2020/01/01/not-a-ulid.seg"), None);
        assert_eq!(
            key_time_ms("elsewhere/01ARZ3NDEKTSV4RRFFQ69G5FAV.seg"),
            None
        );
        // 2026-11-26T00:30Z: today and yesterday, newest first.
        let t = 1_795_653_000_000;
        assert_eq!(
            day_prefixes(t, 2),
            vec!["segments/2026/11/26/", "segments/2026/11/25/"]
        );
        assert_eq!(day_prefixes(t, 0), vec!["segments/"]);
    }
    use crate::batch::tests::make_batch;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: TopicId(uuid::Uuid::from_u128(1)),
            partition: PartitionId(p),
        }
    }

    #[test]
    fn footer_round_trips_and_extents_merge() {
        let a = Batch::parse_all(make_batch(&[b"a", b"b"], 10), 1 << 20)
            .unwrap()
            .remove(0);
        let b = Batch::parse_all(make_batch(&[b"c"], 20), 1 << 20)
            .unwrap()
            .remove(0);
        let mut s = SegmentBuilder::new();
        s.add(tp(0), Offset(0), &a);
        s.add(tp(0), Offset(2), &b);
        s.add(tp(1), Offset(5), &b);
        let (object, extents) = s.finish();
        assert_eq!(extents.len(), 2);
        assert_eq!(extents[0].last_offset, Offset(2));
        assert_eq!(extents[0].byte_len as usize, a.len() + b.len());
        assert_eq!(extents[0].record_count, 3);
        assert_eq!(extents[1].byte_start as usize, a.len() + b.len());
        assert_eq!(
            (extents[0].min_timestamp, extents[0].max_timestamp),
            (10, 20)
        );
        assert_eq!(read_footer(&object).unwrap(), extents);
    }

    #[test]
    fn damaged_footer_is_detected() {
        let a = Batch::parse_all(make_batch(&[b"a"], 1), 1 << 20)
            .unwrap()
            .remove(0);
        let mut s = SegmentBuilder::new();
        s.add(tp(0), Offset(0), &a);
        let (object, _) = s.finish();
        let mut bad = object.to_vec();
        let at = bad.len() - TRAILER_LEN - 3;
        bad[at] ^= 1;
        assert_eq!(read_footer(&bad), Err(SegmentError::BadCrc));
        let n = bad.len();
        bad[n - 1] = b'x';
        assert_eq!(read_footer(&bad), Err(SegmentError::BadMagic));
        assert_eq!(read_footer(b"short"), Err(SegmentError::Truncated));
    }
}
