//! Idempotent producers: the sequence rules that make a retried batch land exactly once.
//!
//! An idempotent producer numbers its batches per partition (`baseSequence`, counting
//! records) under a producer id and epoch. For each `(partition, producer id)` the broker keeps
//! the epoch and the last [`CACHED_BATCHES`] batches it appended (their sequence range and
//! base offset), as Kafka does — a producer has at most five batches in flight, so a retry is
//! always one of them:
//!
//! - the next sequence (last + 1, wrapping at `i32::MAX`) is appended;
//! - a batch matching a cached one is a **duplicate**: answered with its original offset,
//!   not stored again;
//! - anything else is `OUT_OF_ORDER_SEQUENCE_NUMBER`; an older epoch is
//!   `INVALID_PRODUCER_EPOCH`; a newer epoch must start again at sequence 0.
//!
//! The state is committed to the catalog with the flush that holds the batches, and rebuilt
//! from the WAL for batches not yet flushed, so it survives `kill -9` exactly as the data does.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::batch::Batch;
use crate::types::Offset;

/// Batches remembered per producer and partition (Kafka's in-flight limit for idempotence).
pub const CACHED_BATCHES: usize = 5;

/// One appended batch, as the duplicate check needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqBatch {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: i64,
    /// Offset of its last record.
    pub last_offset: i64,
}

/// What the broker knows of one producer on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProducerEntry {
    /// The producer's current epoch.
    pub epoch: i16,
    /// The most recent batches, oldest first.
    pub batches: VecDeque<SeqBatch>,
    /// The first offset of the producer's transaction on this partition while one is open
    /// (from its first transactional batch until its marker): what rebuilds the last stable
    /// offset after a restart or a move. Absent in state written before transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_first: Option<i64>,
}

/// Why an idempotent batch was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SequenceError {
    /// The sequence is not the next one (a gap, or a batch older than the cache).
    #[error("out of order sequence: expected {expected}, got {got}")]
    OutOfOrder {
        /// The sequence the broker expected.
        expected: i32,
        /// The sequence in the batch.
        got: i32,
    },
    /// The epoch is older than the producer's current one: a zombie instance.
    #[error("producer epoch {got} is older than the current epoch {current}")]
    InvalidEpoch {
        /// The current epoch.
        current: i16,
        /// The batch's epoch.
        got: i16,
    },
}

/// The verdict on an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: append it.
    Append,
    /// Already appended at these offsets: answer with them, store nothing.
    Duplicate {
        /// Where it was appended.
        base_offset: Offset,
        /// Its last offset.
        last_offset: Offset,
    },
}

/// The producer fields of a batch: `(producer id, epoch, first sequence, last sequence)`, or
/// `None` for a batch from a producer that is not idempotent.
pub fn producer_of(batch: &Batch) -> Option<(i64, i16, i32, i32)> {
    let (pid, seq) = (batch.producer_id(), batch.base_sequence());
    if pid < 0 || seq < 0 {
        return None;
    }
    let last = next_seq(seq, batch.record_count() - 1);
    Some((pid, batch.producer_epoch(), seq, last))
}

/// `seq + n`, wrapping past `i32::MAX` to 0 as Kafka's sequences do.
fn next_seq(seq: i32, n: i32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerEntry {
    /// Checks a batch `(epoch, first, last)` against this state.
    pub fn check(&self, epoch: i16, first: i32, last: i32) -> Result<Verdict, SequenceError> {
        if epoch < self.epoch {
            return Err(SequenceError::InvalidEpoch {
                current: self.epoch,
                got: epoch,
            });
        }
        if epoch > self.epoch || self.batches.is_empty() {
            return if first == 0 || self.batches.is_empty() && epoch == self.epoch {
                Ok(Verdict::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    expected: 0,
                    got: first,
                })
            };
        }
        if let Some(b) = self
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return Ok(Verdict::Duplicate {
                base_offset: Offset(b.base_offset),
                last_offset: Offset(b.last_offset),
            });
        }
        let expected = self.batches.back().map_or(0, |b| next_seq(b.last_seq, 1));
        if first == expected {
            Ok(Verdict::Append)
        } else {
            Err(SequenceError::OutOfOrder {
                expected,
                got: first,
            })
        }
    }

    /// Records an appended batch.
    pub fn record(&mut self, epoch: i16, first: i32, last: i32, base: Offset, last_offset: Offset) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
        self.batches.push_back(SeqBatch {
            first_seq: first,
            last_seq: last,
            base_offset: base.0,
            last_offset: last_offset.0,
        });
        while self.batches.len() > CACHED_BATCHES {
            self.batches.pop_front();
        }
    }
}

impl ProducerEntry {
    /// Notes a transactional batch at `offset`: it opens a transaction unless one is open.
    pub fn begin_txn(&mut self, offset: Offset) {
        self.txn_first.get_or_insert(offset.0);
    }

    /// Notes the marker that ends the open transaction, written under `epoch` (the
    /// coordinator's current one: a bump fences the older instance's batches here too).
    /// Returns the first offset of the transaction it ended, if one was open.
    pub fn end_txn(&mut self, epoch: i16) -> Option<Offset> {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
        self.txn_first.take().map(Offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_with(batches: &[(i32, i32, i64)]) -> ProducerEntry {
        let mut e = ProducerEntry::default();
        for &(f, l, o) in batches {
            e.record(0, f, l, Offset(o), Offset(o + i64::from(l - f)));
        }
        e
    }

    #[test]
    fn next_sequence_is_appended_and_a_retry_is_a_duplicate() {
        let e = entry_with(&[(0, 9, 100), (10, 19, 110)]);
        assert_eq!(e.check(0, 20, 29), Ok(Verdict::Append));
        assert_eq!(
            e.check(0, 0, 9),
            Ok(Verdict::Duplicate {
                base_offset: Offset(100),
                last_offset: Offset(109)
            })
        );
        assert_eq!(
            e.check(0, 30, 39),
            Err(SequenceError::OutOfOrder {
                expected: 20,
                got: 30
            })
        );
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut e = entry_with(&[(0, 4, 0)]);
        e.record(2, 0, 0, Offset(5), Offset(5));
        assert!(matches!(
            e.check(1, 1, 1),
            Err(SequenceError::InvalidEpoch { .. })
        ));
        assert_eq!(e.check(3, 0, 3), Ok(Verdict::Append));
        assert!(matches!(
            e.check(3, 7, 9),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert_eq!(ProducerEntry::default().check(0, 0, 0), Ok(Verdict::Append));
    }

    #[test]
    fn only_five_batches_are_remembered_and_sequences_wrap() {
        let e = entry_with(&[
            (0, 0, 0),
            (1, 1, 1),
            (2, 2, 2),
            (3, 3, 3),
            (4, 4, 4),
            (5, 5, 5),
        ]);
        assert_eq!(e.batches.len(), CACHED_BATCHES);
        assert!(matches!(
            e.check(0, 0, 0),
            Err(SequenceError::OutOfOrder { .. })
        ));
        let top = entry_with(&[(i32::MAX - 1, i32::MAX, 0)]);
        assert_eq!(top.check(0, 0, 5), Ok(Verdict::Append));
        assert_eq!(next_seq(i32::MAX, 1), 0);
    }
}
