//! Kafka RecordBatch v2 ("magic 2"), checked on the way in and served byte for byte.
//!
//! A batch is the unit every front end carries and every segment stores. Strata never
//! re-encodes records on the hot path: it checks a batch once when it arrives (lengths, magic,
//! CRC32C, record count, timestamps), optionally recompresses an uncompressed batch with zstd,
//! and from then on treats it as opaque bytes. The only field it rewrites when serving is
//! `baseOffset`, which lies outside the CRC: the catalog, not the bytes, decides offsets.
//!
//! Layout of the 61-byte header (all big-endian):
//!
//! | bytes  | field                  | covered by CRC |
//! |--------|------------------------|----------------|
//! | 0..8   | baseOffset (i64)       | no             |
//! | 8..12  | batchLength (i32)      | no             |
//! | 12..16 | partitionLeaderEpoch   | no             |
//! | 16     | magic (i8) = 2         | no             |
//! | 17..21 | crc (u32, CRC32C)      | no             |
//! | 21..23 | attributes (i16)       | yes            |
//! | 23..27 | lastOffsetDelta (i32)  | yes            |
//! | 27..35 | baseTimestamp (i64)    | yes            |
//! | 35..43 | maxTimestamp (i64)     | yes            |
//! | 43..51 | producerId (i64)       | yes            |
//! | 51..53 | producerEpoch (i16)    | yes            |
//! | 53..57 | baseSequence (i32)     | yes            |
//! | 57..61 | recordCount (i32)      | yes            |

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Length of the fixed RecordBatch v2 header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` counts: baseOffset and batchLength itself.
const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_CONTROL: i16 = 0x20;
const ATTR_TRANSACTIONAL: i16 = 0x10;

/// The compression codec a batch's records are stored with (attributes bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records stored as they are.
    None,
    /// gzip.
    Gzip,
    /// Snappy (xerial framing).
    Snappy,
    /// LZ4 frame.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn from_attributes(attributes: i16) -> Result<Compression, BatchError> {
        match attributes & ATTR_COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }
}

/// Why a batch was refused. Each maps to a Kafka error code in the front ends
/// (`CORRUPT_MESSAGE`, `INVALID_RECORD` or `MESSAGE_TOO_LARGE`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a header, or than the header's `batchLength` promises.
    #[error("record batch truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the header says the batch needs.
        needed: usize,
        /// Bytes actually present.
        have: usize,
    },
    /// `batchLength` is negative or smaller than a header.
    #[error("record batch length {0} is invalid")]
    BadLength(i32),
    /// Only magic 2 is accepted: older formats have no CRC32C and no producer fields.
    #[error("record batch magic {0} is refused: Strata stores only magic 2 batches")]
    BadMagic(i8),
    /// The CRC32C over attributes..end does not match.
    #[error("record batch CRC mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    BadCrc {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the bytes.
        actual: u32,
    },
    /// Compression codec bits hold a value no codec has.
    #[error("record batch compression codec {0} is unknown")]
    UnknownCompression(i16),
    /// The record count disagrees with `lastOffsetDelta` or with the records present.
    #[error("record batch record count {count} does not match its contents ({detail})")]
    BadRecordCount {
        /// The header's record count.
        count: i32,
        /// What disagreed.
        detail: String,
    },
    /// `maxTimestamp` precedes `baseTimestamp`.
    #[error("record batch timestamps are inconsistent: base {base}, max {max}")]
    BadTimestamps {
        /// `baseTimestamp`.
        base: i64,
        /// `maxTimestamp`.
        max: i64,
    },
    /// Clients may not write control batches (transaction markers).
    #[error("clients may not write control batches")]
    ControlBatch,
    /// The batch exceeds the topic's `max.message.bytes`.
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge {
        /// The batch's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No batch at all where one was required.
    #[error("no record batch in request")]
    Empty,
}

/// A checked RecordBatch v2. Construct with [`Batch::parse_all`]; the bytes are then known to
/// be one whole, CRC-valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Size of the batch that starts at the beginning of `bytes`, read from its header, without
/// checking anything else. `None` when the header is incomplete or its length is nonsense.
pub fn batch_size(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < LOG_OVERHEAD {
        return None;
    }
    let len = be_i32(bytes, 8);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return None;
    }
    Some(LOG_OVERHEAD + len as usize)
}

impl Batch {
    /// Splits a produce request's records into batches, checking each one fully, and checks
    /// that no batch is larger than `max_bytes`. Fails on the first bad batch so that nothing
    /// from a partly bad request is stored.
    pub fn parse_all(mut bytes: Bytes, max_bytes: usize) -> Result<Vec<Batch>, BatchError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if bytes.len() < HEADER_LEN {
                return Err(BatchError::Truncated {
                    needed: HEADER_LEN,
                    have: bytes.len(),
                });
            }
            let len = be_i32(&bytes, 8);
            if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
                return Err(BatchError::BadLength(len));
            }
            let size = LOG_OVERHEAD + len as usize;
            // A length beyond the bytes sent is a corrupt batch, whatever it claims; only a
            // batch that is all there can be too large.
            if size > bytes.len() {
                return Err(BatchError::Truncated {
                    needed: size,
                    have: bytes.len(),
                });
            }
            if size > max_bytes {
                return Err(BatchError::TooLarge {
                    size,
                    max: max_bytes,
                });
            }
            let batch = Batch {
                bytes: bytes.split_to(size),
            };
            batch.check()?;
            out.push(batch);
        }
        if out.is_empty() {
            return Err(BatchError::Empty);
        }
        Ok(out)
    }

    /// Wraps bytes already checked once (read back from the WAL or a segment, each of which
    /// carries its own checksum), verifying only the batch CRC.
    pub fn from_stored(bytes: Bytes) -> Result<Batch, BatchError> {
        let size = batch_size(&bytes).ok_or(BatchError::Truncated {
            needed: HEADER_LEN,
            have: bytes.len(),
        })?;
        if size != bytes.len() || size < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: size,
                have: bytes.len(),
            });
        }
        let batch = Batch { bytes };
        batch.check_crc()?;
        Ok(batch)
    }

    fn check_crc(&self) -> Result<(), BatchError> {
        verify_crc(&self.bytes)
    }

    fn check(&self) -> Result<(), BatchError> {
        self.check_crc()?;
        let attributes = self.attributes();
        if attributes & ATTR_CONTROL != 0 {
            return Err(BatchError::ControlBatch);
        }
        let compression = Compression::from_attributes(attributes)?;
        let count = self.record_count();
        let last_delta = be_i32(&self.bytes, 23);
        if count < 1 || last_delta != count - 1 {
            return Err(BatchError::BadRecordCount {
                count,
                detail: format!("lastOffsetDelta is {last_delta}"),
            });
        }
        if compression == Compression::None {
            let present = count_records(&self.bytes[HEADER_LEN..]).ok_or_else(|| {
                BatchError::BadRecordCount {
                    count,
                    detail: "record lengths do not fill the batch".into(),
                }
            })?;
            if present != count as usize {
                return Err(BatchError::BadRecordCount {
                    count,
                    detail: format!("{present} records present"),
                });
            }
        }
        let (base, max) = (self.base_timestamp(), self.max_timestamp());
        if base >= 0 && max >= 0 && max < base {
            return Err(BatchError::BadTimestamps { base, max });
        }
        Ok(())
    }

    /// The batch's bytes exactly as stored.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Total size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a checked batch holds at least a header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The attributes field (compression, timestamp type, transactional and control bits).
    pub fn attributes(&self) -> i16 {
        be_i16(&self.bytes, 21)
    }

    /// The codec the records are compressed with.
    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes()).unwrap_or(Compression::None)
    }

    /// How many offsets the batch occupies: `lastOffsetDelta + 1`.
    pub fn offset_count(&self) -> i64 {
        i64::from(be_i32(&self.bytes, 23)) + 1
    }

    /// The header's record count.
    pub fn record_count(&self) -> i32 {
        be_i32(&self.bytes, 57)
    }

    /// `baseTimestamp` (the first record's timestamp).
    pub fn base_timestamp(&self) -> i64 {
        be_i64(&self.bytes, 27)
    }

    /// `maxTimestamp`.
    pub fn max_timestamp(&self) -> i64 {
        be_i64(&self.bytes, 35)
    }

    /// The producer id (-1 when the producer is not idempotent).
    pub fn producer_id(&self) -> i64 {
        be_i64(&self.bytes, 43)
    }

    /// The producer epoch.
    pub fn producer_epoch(&self) -> i16 {
        be_i16(&self.bytes, 51)
    }

    /// The sequence number of the first record (-1 when the producer is not idempotent).
    pub fn base_sequence(&self) -> i32 {
        be_i32(&self.bytes, 53)
    }

    /// Whether the batch is part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }

    /// Whether the batch is a control batch (a transaction marker).
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }

    /// A transaction marker: the control batch that ends `producer_id`'s transaction on a
    /// partition, committing it (`commit`) or aborting it. One control record whose key is
    /// `(version 0, type)` (type 1 commit, 0 abort) and whose value is `(version 0,
    /// coordinator epoch)`, as Kafka writes it.
    pub fn marker(
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        timestamp: i64,
    ) -> Batch {
        let mut key = Vec::with_capacity(4);
        key.extend_from_slice(&0i16.to_be_bytes());
        key.extend_from_slice(&i16::from(commit).to_be_bytes());
        let mut value = Vec::with_capacity(6);
        value.extend_from_slice(&0i16.to_be_bytes());
        value.extend_from_slice(&coordinator_epoch.to_be_bytes());
        let mut section = Vec::with_capacity(24);
        write_record(&mut section, 0, 0, Some(&key), Some(&value), &[]);
        let header = BatchHeader {
            base_offset: 0,
            attributes: ATTR_TRANSACTIONAL | ATTR_CONTROL,
            last_offset_delta: 0,
            base_timestamp: timestamp,
            max_timestamp: timestamp,
            producer_id,
            producer_epoch,
            base_sequence: -1,
            record_count: 1,
        };
        Batch {
            bytes: header.assemble(&section),
        }
    }

    /// For a transaction marker, whether it commits (`Some(true)`) or aborts (`Some(false)`);
    /// `None` for any other batch. Markers are written uncompressed by the broker itself.
    pub fn marker_commits(&self) -> Option<bool> {
        if !self.is_control() || self.compression() != Compression::None {
            return None;
        }
        let mut at = HEADER_LEN;
        let skip_varint = |at: &mut usize| -> Option<i64> {
            let (v, used) = read_varint(self.bytes.get(*at..)?)?;
            *at += used;
            Some(v)
        };
        skip_varint(&mut at)?; // record length
        at += 1; // record attributes
        skip_varint(&mut at)?; // timestamp delta
        skip_varint(&mut at)?; // offset delta
        let key_len = skip_varint(&mut at)?;
        if key_len < 4 || self.bytes.len() < at + 4 {
            return None;
        }
        Some(be_i16(&self.bytes, at + 2) == 1)
    }

    /// Recompresses an uncompressed batch with zstd at `level`, keeping every header field
    /// but attributes, length and CRC. Returns the batch unchanged when it is already
    /// compressed or when compression would not make it smaller.
    pub fn compress_zstd(self, level: i32) -> Batch {
        if self.compression() != Compression::None {
            return self;
        }
        let records = &self.bytes[HEADER_LEN..];
        let Some(packed) = zstd_compress(records, level) else {
            return self;
        };
        if packed.len() >= records.len() {
            return self;
        }
        let mut out = BytesMut::with_capacity(HEADER_LEN + packed.len());
        out.extend_from_slice(&self.bytes[..HEADER_LEN]);
        out.extend_from_slice(&packed);
        let len = (out.len() - LOG_OVERHEAD) as i32;
        out[8..12].copy_from_slice(&len.to_be_bytes());
        let attributes = (self.attributes() & !ATTR_COMPRESSION_MASK) | 4;
        out[21..23].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Batch {
            bytes: out.freeze(),
        }
    }
}

/// The fixed header fields of a RecordBatch v2, for building one; length and CRC are
/// computed by [`BatchHeader::assemble`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// `baseOffset` (the broker serves its own, so 0 does for a new batch).
    pub base_offset: i64,
    /// `attributes`: compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// `lastOffsetDelta`: the batch spans `base_offset..=base_offset + last_offset_delta`,
    /// whatever records remain in it (a compacted batch keeps its span).
    pub last_offset_delta: i32,
    /// `baseTimestamp`.
    pub base_timestamp: i64,
    /// `maxTimestamp`.
    pub max_timestamp: i64,
    /// `producerId` (-1 for none).
    pub producer_id: i64,
    /// `producerEpoch`.
    pub producer_epoch: i16,
    /// `baseSequence` (-1 for none).
    pub base_sequence: i32,
    /// `recordCount`.
    pub record_count: i32,
}

impl BatchHeader {
    /// The header of an existing batch.
    pub fn of(batch: &Batch) -> BatchHeader {
        let b = batch.bytes();
        BatchHeader {
            base_offset: be_i64(b, 0),
            attributes: batch.attributes(),
            last_offset_delta: be_i32(b, 23),
            base_timestamp: batch.base_timestamp(),
            max_timestamp: batch.max_timestamp(),
            producer_id: batch.producer_id(),
            producer_epoch: batch.producer_epoch(),
            base_sequence: batch.base_sequence(),
            record_count: batch.record_count(),
        }
    }

    /// A whole batch: this header (with its length and CRC filled in) and `section`, the
    /// records as written by [`write_record`] (compressed as `attributes` says).
    pub fn assemble(&self, section: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + section.len());
        b.extend_from_slice(&self.base_offset.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + section.len()) as i32).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
        b.extend_from_slice(&[2]); // magic
        b.extend_from_slice(&[0; 4]); // CRC, below
        b.extend_from_slice(&self.attributes.to_be_bytes());
        b.extend_from_slice(&self.last_offset_delta.to_be_bytes());
        b.extend_from_slice(&self.base_timestamp.to_be_bytes());
        b.extend_from_slice(&self.max_timestamp.to_be_bytes());
        b.extend_from_slice(&self.producer_id.to_be_bytes());
        b.extend_from_slice(&self.producer_epoch.to_be_bytes());
        b.extend_from_slice(&self.base_sequence.to_be_bytes());
        b.extend_from_slice(&self.record_count.to_be_bytes());
        b.extend_from_slice(section);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }
}

/// Appends one record, length-prefixed, to a records section: attributes, timestamp and
/// offset deltas, key, value and headers, in Kafka's varint encoding.
pub fn write_record(
    section: &mut Vec<u8>,
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&[u8], Option<&[u8]>)],
) {
    fn field(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                write_varint(out, b.len() as i64);
                out.extend_from_slice(b);
            }
            None => write_varint(out, -1),
        }
    }
    let mut body =
        Vec::with_capacity(16 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
    body.push(0); // record attributes
    write_varint(&mut body, timestamp_delta);
    write_varint(&mut body, offset_delta);
    field(&mut body, key);
    field(&mut body, value);
    write_varint(&mut body, headers.len() as i64);
    for (k, v) in headers {
        field(&mut body, Some(k));
        field(&mut body, *v);
    }
    write_varint(section, body.len() as i64);
    section.extend_from_slice(&body);
}

/// A record header: key, and value (`None` for a null value).
pub type RecordHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// The headers of the first record of the uncompressed batch at the start of `bytes`; empty
/// for a compressed batch or one that does not parse. Enough to find a producer's trace
/// context without decoding the batch.
pub fn first_record_headers(bytes: &[u8]) -> Vec<RecordHeader<'_>> {
    fn varint(b: &[u8], at: &mut usize) -> Option<i64> {
        let (v, used) = read_varint(b.get(*at..)?)?;
        *at += used;
        Some(v)
    }
    fn field<'a>(b: &'a [u8], at: &mut usize) -> Option<Option<&'a [u8]>> {
        let len = varint(b, at)?;
        if len < 0 {
            return Some(None);
        }
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        let v = b.get(*at..end)?;
        *at = end;
        Some(Some(v))
    }
    let parse = || -> Option<Vec<RecordHeader<'_>>> {
        if bytes.len() <= HEADER_LEN || be_i16(bytes, 21) & ATTR_COMPRESSION_MASK != 0 {
            return None;
        }
        let mut at = HEADER_LEN;
        varint(bytes, &mut at)?; // record length
        at += 1; // attributes
        varint(bytes, &mut at)?; // timestamp delta
        varint(bytes, &mut at)?; // offset delta
        field(bytes, &mut at)?; // key
        field(bytes, &mut at)?; // value
        let count = varint(bytes, &mut at)?;
        let mut out = Vec::new();
        for _ in 0..count.clamp(0, 64) {
            let key = field(bytes, &mut at)??;
            let value = field(bytes, &mut at)?;
            out.push((key, value));
        }
        Some(out)
    };
    parse().unwrap_or_default()
}

/// Appends `v` as a zig-zag varint, as record fields are encoded.
fn write_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Checks the magic and CRC32C of the one whole batch in `b` (at least a header long).
pub fn verify_crc(b: &[u8]) -> Result<(), BatchError> {
    if b.len() < HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: HEADER_LEN,
            have: b.len(),
        });
    }
    let magic = b[16] as i8;
    if magic != 2 {
        return Err(BatchError::BadMagic(magic));
    }
    let expected = be_u32(b, 17);
    let actual = crc32c::crc32c(&b[CRC_START..]);
    if expected != actual {
        return Err(BatchError::BadCrc { expected, actual });
    }
    Ok(())
}

thread_local! {
    /// One zstd context per thread, reused: creating a context costs more than compressing
    /// a small batch, and producers with a short linger send many small batches (W4 spent
    /// most of its CPU here before).
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `data` with this thread's zstd context at `level`.
pub fn zstd_compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, compressor) = slot.as_mut()?;
        compressor.compress(data).ok()
    })
}

/// Counts the records in an uncompressed records section: each is a zigzag varint length
/// followed by that many bytes. `None` when the lengths do not exactly fill the section.
fn count_records(mut section: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !section.is_empty() {
        let (len, used) = read_varint(section)?;
        let len = usize::try_from(len).ok()?;
        section = section.get(used + len..)?;
        n += 1;
    }
    Some(n)
}

/// Reads a zigzag-encoded varint (as Kafka records use), returning it and the bytes used.
fn read_varint(b: &[u8]) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let decoded = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Some((decoded, i + 1));
        }
    }
    None
}

/// Rewrites the `baseOffset` and `partitionLeaderEpoch` of the batch at the start of `buf`.
/// Neither is covered by the CRC, so this is how a stored batch is served at the offset the
/// catalog gave it.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64, leader_epoch: i32) {
    buf[0..8].copy_from_slice(&base_offset.to_be_bytes());
    buf[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Whether the first batch of `records` is `batch` itself, as stored: same length and same
/// bytes from the magic byte on (the CRC among them). `baseOffset` and
/// `partitionLeaderEpoch`, which serving rewrites, are not compared.
pub fn same_batch(records: &[u8], batch: &[u8]) -> bool {
    match stored_batches(records).next() {
        Some((start, size, _)) => {
            size == batch.len() && size > 16 && records[start + 16..start + size] == batch[16..]
        }
        None => false,
    }
}

/// Iterates over the whole batches stored back to back in `bytes`, yielding `(start, size,
/// offset_count)` for each. Stops at the first incomplete batch.
pub fn stored_batches(bytes: &[u8]) -> impl Iterator<Item = (usize, usize, i64)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = bytes.get(pos..)?;
        let size = batch_size(rest)?;
        if size > rest.len() || size < HEADER_LEN {
            return None;
        }
        let count = i64::from(be_i32(rest, 23)) + 1;
        let start = pos;
        pos += size;
        Some((start, size, count))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a valid uncompressed batch of `values`, as a producer would.
    pub(crate) fn make_batch(values: &[&[u8]], timestamp: i64) -> Bytes {
        let mut records = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let mut r = Vec::new();
            r.push(0); // attributes
            write_varint(&mut r, 0); // timestamp delta
            write_varint(&mut r, i as i64); // offset delta
            write_varint(&mut r, -1); // null key
            write_varint(&mut r, v.len() as i64);
            r.extend_from_slice(v);
            write_varint(&mut r, 0); // headers
            write_varint(&mut records, r.len() as i64);
            records.extend_from_slice(&r);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(values.len() as i32 - 1).to_be_bytes());
        b.extend_from_slice(&timestamp.to_be_bytes());
        b.extend_from_slice(&timestamp.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&(values.len() as i32).to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    #[test]
    fn accepts_a_valid_batch() {
        let bytes = make_batch(&[b"a", b"bc"], 1000);
        let batches = Batch::parse_all(bytes.clone(), 1 << 20).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].bytes(), &bytes);
        assert_eq!(batches[0].offset_count(), 2);
    }

    #[test]
    fn rejects_a_flipped_bit() {
        let mut b = make_batch(&[b"hello"], 1).to_vec();
        let last = b.len() - 2;
        b[last] ^= 1;
        assert!(matches!(
            Batch::parse_all(Bytes::from(b), 1 << 20),
            Err(BatchError::BadCrc { .. })
        ));
    }

    #[test]
    fn rejects_oversized_and_truncated() {
        let b = make_batch(&[&[7u8; 100]], 1);
        assert!(matches!(
            Batch::parse_all(b.clone(), 50),
            Err(BatchError::TooLarge { .. })
        ));
        assert!(matches!(
            Batch::parse_all(b.slice(..b.len() - 1), 1 << 20),
            Err(BatchError::Truncated { .. })
        ));
        assert_eq!(Batch::parse_all(Bytes::new(), 10), Err(BatchError::Empty));
    }

    #[test]
    fn zstd_keeps_a_valid_batch_and_shrinks_text() {
        let text = br#"{"user":"alice","action":"login","ok":true}"#.repeat(20);
        let b = Batch::parse_all(make_batch(&[&text, &text], 5), 1 << 20)
            .unwrap()
            .remove(0);
        let before = b.len();
        let z = b.compress_zstd(3);
        assert_eq!(z.compression(), Compression::Zstd);
        assert!(z.len() < before / 2);
        Batch::from_stored(z.bytes().clone()).unwrap();
        assert_eq!(z.offset_count(), 2);
    }

    #[test]
    fn markers_are_valid_control_batches() {
        for commit in [true, false] {
            let m = Batch::marker(42, 3, commit, 0, 1000);
            let stored = Batch::from_stored(m.bytes().clone()).unwrap();
            assert!(stored.is_control() && stored.is_transactional());
            assert_eq!(stored.marker_commits(), Some(commit));
            assert_eq!((stored.producer_id(), stored.producer_epoch()), (42, 3));
            assert_eq!(stored.offset_count(), 1);
            // Clients may not write them.
            assert_eq!(
                Batch::parse_all(m.bytes().clone(), 1 << 20),
                Err(BatchError::ControlBatch)
            );
        }
        let data = Batch::parse_all(make_batch(&[b"x"], 1), 1 << 20).unwrap();
        assert_eq!(data[0].marker_commits(), None);
        let mut section = Vec::new();
        write_record(
            &mut section,
            0,
            0,
            None,
            Some(b"v"),
            &[(b"traceparent", Some(b"00-x"))],
        );
        let header = BatchHeader {
            base_offset: 0,
            attributes: 0,
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count: 1,
        };
        let traced = header.assemble(&section);
        assert_eq!(
            first_record_headers(&traced),
            vec![(&b"traceparent"[..], Some(&b"00-x"[..]))]
        );
        assert!(first_record_headers(&traced[..HEADER_LEN + 3]).is_empty());
        let mut v = Vec::new();
        write_varint(&mut v, -300);
        assert_eq!(read_varint(&v), Some((-300, 2)));
    }

    #[test]
    fn iterates_stored_batches_and_sets_offsets() {
        let a = make_batch(&[b"x", b"y", b"z"], 1);
        let b = make_batch(&[b"w"], 2);
        let mut joined = [a.as_ref(), b.as_ref()].concat();
        let spans: Vec<_> = stored_batches(&joined).collect();
        assert_eq!(spans, vec![(0, a.len(), 3), (a.len(), b.len(), 1)]);
        set_base_offset(&mut joined[a.len()..], 42, 7);
        assert_eq!(be_i64(&joined, a.len()), 42);
        Batch::from_stored(Bytes::copy_from_slice(&joined[a.len()..])).unwrap();
    }
}
