//! Record-level access to stored batches, for the rare paths that need it.
//!
//! The hot paths treat batches as opaque bytes. Looking up an offset by timestamp is the
//! exception: Kafka answers with the first *record* at or after the timestamp, which may sit
//! in the middle of a compressed batch. This module decodes one batch with the
//! `kafka-protocol` codec (which handles every compression codec Kafka clients use).

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;

use crate::batch;
use crate::types::Offset;

/// The offset and timestamp of the first record in `batch` (stored bytes, whose first record
/// has offset `base_offset`) with a timestamp at or after `timestamp`.
pub fn first_at_or_after(
    batch: &Bytes,
    base_offset: Offset,
    timestamp: i64,
) -> Option<(Offset, i64)> {
    let mut copy = BytesMut::from(batch.as_ref());
    batch::set_base_offset(&mut copy, base_offset.0, 0);
    let mut buf = copy.freeze();
    let set = RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| r.timestamp >= timestamp)
        .map(|r| (Offset(r.offset), r.timestamp))
}
