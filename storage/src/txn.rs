//! Transactions, as a partition sees them: what holds the last stable offset back, and which
//! ranges `read_committed` consumers must skip.
//!
//! A transactional producer's batches carry the transactional bit. The first one a producer
//! appends to a partition *opens* a transaction there; the control batch (marker) that the
//! transaction coordinator appends at commit or abort *ends* it. Between the two, the
//! partition's **last stable offset** (LSO) cannot pass the transaction's first offset:
//! `read_committed` consumers read only below the LSO, so they never see a record whose fate
//! is undecided.
//!
//! An aborted transaction is remembered as `(producer id, first offset, marker offset)`:
//! fetches at `read_committed` send the overlapping ones to the consumer, which drops that
//! producer's records from the first offset up to the marker (Kafka's protocol, KIP-98).
//! The abort entry is committed to the catalog in the same transaction as the flush that
//! holds the marker, and a transaction counts as open until that commit, so no consumer can
//! read past an aborted transaction before it can learn that it was aborted.
//!
//! The coordinator's side (who is in which transaction, timeouts, markers) lives in the
//! broker; its durable record is a [`TransactionRecord`] in the catalog.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::catalog::CommittedOffset;
use crate::types::{Offset, TopicPartition};

/// An aborted transaction on one partition: `producer_id`'s records from `first_offset` up to
/// its abort marker at `last_offset` are not to be read at `read_committed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    /// The producer whose records are aborted.
    pub producer_id: i64,
    /// The first offset of the transaction on this partition.
    pub first_offset: Offset,
    /// The offset of the abort marker.
    pub last_offset: Offset,
}

/// A transaction open on a partition.
#[derive(Debug, Clone, Copy)]
struct OpenTxn {
    /// Its first offset on the partition.
    first: Offset,
    /// The offset of its marker, once appended (it stays open until the marker is committed).
    marker: Option<Offset>,
}

/// The transactions of one owned partition: open ones, and the aborted ones a
/// `read_committed` reader must be told of.
#[derive(Debug, Default)]
pub(crate) struct TxnIndex {
    open: HashMap<i64, OpenTxn>,
    aborted: Vec<AbortedTxn>,
}

impl TxnIndex {
    /// Notes a transactional batch of `producer_id` at `offset`: it opens a transaction unless
    /// one is open already.
    pub fn begin(&mut self, producer_id: i64, offset: Offset) {
        self.open.entry(producer_id).or_insert(OpenTxn {
            first: offset,
            marker: None,
        });
    }

    /// Whether `producer_id` has a transaction here awaiting its marker.
    pub fn awaiting_marker(&self, producer_id: i64) -> Option<Offset> {
        self.open
            .get(&producer_id)
            .filter(|t| t.marker.is_none())
            .map(|t| t.first)
    }

    /// Notes the marker of `producer_id`'s open transaction at `marker`.
    pub fn end(&mut self, producer_id: i64, marker: Offset) {
        if let Some(t) = self.open.get_mut(&producer_id) {
            t.marker = Some(marker);
        }
    }

    /// The last stable offset under high watermark `hwm`: the first offset of the oldest
    /// transaction whose marker is not committed yet, or `hwm`.
    pub fn last_stable(&self, hwm: Offset) -> Offset {
        self.open
            .values()
            .filter(|t| t.marker.is_none_or(|m| m >= hwm))
            .map(|t| t.first)
            .fold(hwm, Offset::min)
    }

    /// After a commit moved the high watermark to `hwm`: forgets the transactions whose
    /// markers are now committed, and records the aborted ones that commit made known.
    pub fn settle(&mut self, hwm: Offset, aborted: impl IntoIterator<Item = AbortedTxn>) {
        self.open.retain(|_, t| t.marker.is_none_or(|m| m >= hwm));
        for a in aborted {
            if !self.aborted.contains(&a) {
                self.aborted.push(a);
            }
        }
    }

    /// Loads the committed aborted transactions (at claim time).
    pub fn load_aborted(&mut self, aborted: Vec<AbortedTxn>) {
        self.aborted = aborted;
    }

    /// Aborted transactions that overlap `[from, to)`.
    pub fn aborted_between(&self, from: Offset, to: Offset) -> Vec<AbortedTxn> {
        overlapping(&self.aborted, from, to)
    }

    /// The first offset of `producer_id`'s open transaction, if any (DescribeProducers).
    pub fn open_first(&self, producer_id: i64) -> Option<Offset> {
        self.open.get(&producer_id).map(|t| t.first)
    }
}

/// The entries of `aborted` that overlap `[from, to)`.
pub fn overlapping(aborted: &[AbortedTxn], from: Offset, to: Offset) -> Vec<AbortedTxn> {
    aborted
        .iter()
        .filter(|a| a.last_offset >= from && a.first_offset < to)
        .copied()
        .collect()
}

/// Where a transaction stands, in Kafka's names (ListTransactions, DescribeTransactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    /// A producer id is assigned; no transaction has begun.
    Empty,
    /// Partitions or offsets were added: a transaction is running.
    Ongoing,
    /// The producer asked to commit: markers are being written.
    PrepareCommit,
    /// The producer (or the timeout) asked to abort: markers are being written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
}

impl TxnState {
    /// Kafka's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }
}

/// A transactional id's durable state, as the catalog keeps it: enough for any broker to
/// take over as its coordinator after a restart or a move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionRecord {
    /// The producer's `transactional.id`.
    pub transactional_id: String,
    /// The producer id it is mapped to.
    pub producer_id: i64,
    /// The current producer epoch; a new producer instance bumps it and so fences the old.
    pub producer_epoch: i16,
    /// `transaction.timeout.ms`: a transaction running longer is aborted by the broker.
    pub timeout_ms: i64,
    /// Where it stands.
    pub state: TxnState,
    /// Partitions in the running transaction (they get its markers).
    pub partitions: Vec<TopicPartition>,
    /// Consumer groups whose offsets the transaction commits.
    pub groups: Vec<String>,
    /// Offsets committed in the transaction, by group: they take effect with the commit.
    pub offsets: Vec<(String, CommittedOffset)>,
    /// When the running transaction began (ms since the epoch), or -1.
    pub started_ms: i64,
    /// When the record last changed (ms since the epoch).
    pub updated_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_transactions_hold_the_stable_offset_until_their_marker_commits() {
        let mut t = TxnIndex::default();
        t.begin(7, Offset(10));
        t.begin(7, Offset(12)); // same transaction
        t.begin(8, Offset(15));
        assert_eq!(t.last_stable(Offset(20)), Offset(10));
        t.end(7, Offset(20));
        // The marker is appended but not committed: still open.
        assert_eq!(t.last_stable(Offset(20)), Offset(10));
        t.settle(
            Offset(21),
            [AbortedTxn {
                producer_id: 7,
                first_offset: Offset(10),
                last_offset: Offset(20),
            }],
        );
        assert_eq!(t.last_stable(Offset(21)), Offset(15));
        assert_eq!(t.aborted_between(Offset(0), Offset(11)).len(), 1);
        assert!(t.aborted_between(Offset(21), Offset(30)).is_empty());
        assert!(t.awaiting_marker(7).is_none());
        assert_eq!(t.awaiting_marker(8), Some(Offset(15)));
    }

    #[test]
    fn no_transaction_means_the_stable_offset_is_the_high_watermark() {
        assert_eq!(TxnIndex::default().last_stable(Offset(5)), Offset(5));
    }
}
