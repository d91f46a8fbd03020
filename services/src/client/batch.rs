//! Building and reading Kafka RecordBatch v2 bytes, the records format of the native protocol.
//!
//! The builder writes the records section once, compresses it with zstd (one context per
//! thread, shared with the storage engine), and fills in the header and CRC; the broker then
//! stores those bytes as they are. Reading decodes with the `kafka-protocol` codec, which
//! understands every compression Kafka clients use, so records produced by any client read
//! back the same.

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use strata_storage::batch::{BatchHeader, HEADER_LEN, write_record};

/// zstd level for client-side compression: fast, and the broker keeps the result.
const ZSTD_LEVEL: i32 = 1;
/// Attribute bits for zstd.
const ZSTD: i16 = 4;

/// One record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Key, if any: decides the partition.
    pub key: Option<Bytes>,
    /// Value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

impl Record {
    /// About how many bytes the record takes in a batch.
    pub fn size(&self) -> usize {
        16 + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 4)
                .sum::<usize>()
    }
}

/// Idempotent-producer fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    /// Producer id.
    pub id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the batch's first record.
    pub base_sequence: i32,
}

/// Encodes `records` as one batch, zstd-compressed when `compress` and it helps.
pub fn encode(records: &[Record], compress: bool, producer: Option<ProducerFields>) -> Bytes {
    let base_ts = records.first().map_or(0, |r| r.timestamp);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(base_ts);
    let mut section = Vec::with_capacity(records.iter().map(Record::size).sum());
    for (i, r) in records.iter().enumerate() {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        write_record(
            &mut section,
            r.timestamp - base_ts,
            i as i64,
            r.key.as_deref(),
            r.value.as_deref(),
            &headers,
        );
    }
    let mut attributes = 0i16;
    if compress
        && let Some(packed) = strata_storage::batch::zstd_compress(&section, ZSTD_LEVEL)
        && packed.len() < section.len()
    {
        section = packed;
        attributes |= ZSTD;
    }
    let p = producer.unwrap_or(ProducerFields {
        id: -1,
        epoch: -1,
        base_sequence: -1,
    });
    BatchHeader {
        base_offset: 0, // the broker assigns it
        attributes,
        last_offset_delta: records.len().saturating_sub(1) as i32,
        base_timestamp: base_ts,
        max_timestamp: max_ts,
        producer_id: p.id,
        producer_epoch: p.epoch,
        base_sequence: p.base_sequence,
        record_count: records.len() as i32,
    }
    .assemble(&section)
}

/// A record read back, with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms since the epoch.
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Decodes every record of the whole batches in `payload`, skipping control records.
pub fn decode(payload: Bytes) -> Result<Vec<StoredRecord>, String> {
    let mut buf = payload;
    let mut out = Vec::new();
    while buf.len() >= HEADER_LEN {
        let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| e.to_string())?;
        for r in set.records {
            if r.control {
                continue;
            }
            out.push(StoredRecord {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Record {
        Record {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("value number {i} ").repeat(8))),
            headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
            timestamp: 1_700_000_000_000 + i as i64,
        }
    }

    #[test]
    fn batches_pass_the_brokers_checks_and_read_back() {
        let records: Vec<Record> = (0..50).map(rec).collect();
        for compress in [false, true] {
            let bytes = encode(&records, compress, None);
            let parsed = strata_storage::batch::Batch::parse_all(bytes.clone(), 1 << 20).unwrap();
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].record_count(), 50);
            let back = decode(bytes).unwrap();
            assert_eq!(back.len(), 50);
            assert_eq!(back[7].key, records[7].key);
            assert_eq!(back[7].value, records[7].value);
            assert_eq!(back[7].headers, records[7].headers);
            assert_eq!(back[7].offset, 7);
            assert_eq!(back[7].timestamp, records[7].timestamp);
        }
    }

    #[test]
    fn producer_fields_are_written() {
        let p = ProducerFields {
            id: 42,
            epoch: 3,
            base_sequence: 100,
        };
        let bytes = encode(&[rec(0)], true, Some(p));
        let b = &strata_storage::batch::Batch::parse_all(bytes, 1 << 20).unwrap()[0];
        assert_eq!(
            (b.producer_id(), b.producer_epoch(), b.base_sequence()),
            (42, 3, 100)
        );
    }
}
