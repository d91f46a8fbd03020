//! The transaction coordinator (Kafka's KIP-98), in the broker core.
//!
//! A transactional producer maps its `transactional.id` to a producer id and epoch
//! ([`Broker::init_transactions`]), then for each transaction adds partitions and consumer
//! groups, produces (transactional batches go through the ordinary produce path, which opens
//! the transaction on each partition, see [`strata_storage::txn`]), commits offsets into the
//! transaction, and ends it. Ending it is two steps, as in Kafka:
//!
//! 1. the decision (`PrepareCommit` or `PrepareAbort`) is stored in the catalog: from then on
//!    the outcome is fixed, whatever crashes;
//! 2. a marker is written to every partition of the transaction, by the partition's owner
//!    (this broker's engine, or another broker through Kafka's `WriteTxnMarkers`), and once all
//!    are durable the transaction is `Complete*` and its offsets are committed, in the same
//!    catalog transaction.
//!
//! All state lives in the catalog ([`TransactionRecord`]), so a restarted broker, or the broker
//! that takes over as coordinator, carries on. Requests for one transactional id are
//! serialised by a per-id lock. A background pass ([`Broker::expire_transactions`]) aborts
//! transactions older than their `transaction.timeout.ms` (bumping the epoch, so the producer
//! that abandoned them is fenced) and finishes any that a crash left half-written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use strata_storage::catalog::CommittedOffset;
use strata_storage::txn::{AbortedTxn, TransactionRecord, TxnState};
use strata_storage::{Offset, TopicPartition};
use tokio::sync::OwnedMutexGuard;
use tracing::Instrument;

use super::{Broker, BrokerError, Topic, chrono_now_ms};
use strata_storage::fetch::ReadResult;

/// Kafka's `transaction.max.timeout.ms` default: the longest transaction a producer may ask
/// for.
pub const MAX_TRANSACTION_TIMEOUT_MS: i64 = 900_000;

/// How long ending a transaction waits for its markers before answering anyway (the decision
/// is durable; the background pass finishes the markers).
const MARKER_WAIT: Duration = Duration::from_secs(30);

/// Per-transactional-id locks: one request at a time changes a transaction.
#[derive(Default)]
pub struct TxnLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl TxnLocks {
    async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Drop locks nobody holds, so the map stays as small as the ids in use.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Where a produce's partition stands for a `read_committed` fetch.
pub struct CommittedRead {
    /// The batches below the last stable offset.
    pub read: ReadResult,
    /// The last stable offset.
    pub last_stable: Offset,
    /// Aborted transactions overlapping what was read.
    pub aborted: Vec<AbortedTxn>,
}

fn fenced(id: &str, epoch: i16, current: i16) -> BrokerError {
    BrokerError::ProducerFenced(format!(
        "transactional id '{id}': epoch {epoch} is not the current epoch {current}; a newer producer instance took over (or the transaction timed out)"
    ))
}

/// A failure to finish the last transaction, as the retriable answer a producer gets.
fn still_completing(e: BrokerError) -> BrokerError {
    BrokerError::ConcurrentTransactions(format!(
        "the previous transaction is still being completed ({e}); retry"
    ))
}

impl Broker {
    /// Refuses a request for a transactional id another broker coordinates (placed like
    /// groups, so FindCoordinator answers both the same way).
    fn check_txn_coordinator(&self, id: &str) -> Result<(), BrokerError> {
        let coordinator = self.membership.coordinator(id);
        if coordinator == self.membership.me().node_id {
            Ok(())
        } else {
            Err(BrokerError::NotCoordinator {
                group: id.to_string(),
                coordinator,
            })
        }
    }

    /// The record of `id`, checked against the producer id and epoch a request carries.
    async fn txn_for(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<TransactionRecord, BrokerError> {
        let record = self.catalog.transaction(id).await?.ok_or_else(|| {
            BrokerError::InvalidProducerIdMapping(format!(
                "transactional id '{id}' has no producer id: call InitProducerId first"
            ))
        })?;
        if record.producer_id != producer_id {
            return Err(BrokerError::InvalidProducerIdMapping(format!(
                "transactional id '{id}' is mapped to producer id {}, not {producer_id}",
                record.producer_id
            )));
        }
        if record.producer_epoch != epoch {
            return Err(fenced(id, epoch, record.producer_epoch));
        }
        Ok(record)
    }

    /// InitProducerId with a transactional id: maps it to a producer id (allocated on first
    /// use) and bumps the epoch, which fences every older instance. A transaction the previous
    /// instance left open is aborted first; one left completing is completed. `expected` is
    /// the id and epoch a re-initialising producer names (KIP-360), which must be current.
    pub async fn init_transactions(
        &self,
        id: &str,
        timeout_ms: i64,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), BrokerError> {
        self.check_txn_coordinator(id)?;
        if !(1..=MAX_TRANSACTION_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(BrokerError::InvalidTransactionTimeout {
                got: timeout_ms,
                max: MAX_TRANSACTION_TIMEOUT_MS,
            });
        }
        let _guard = self.txn_locks.lock(id).await;
        let now = chrono_now_ms();
        let mut record = match self.catalog.transaction(id).await? {
            None => TransactionRecord {
                transactional_id: id.to_string(),
                producer_id: self.catalog.allocate_producer_id().await?,
                producer_epoch: -1,
                timeout_ms,
                state: TxnState::Empty,
                partitions: Vec::new(),
                groups: Vec::new(),
                offsets: Vec::new(),
                started_ms: -1,
                updated_ms: now,
            },
            Some(mut r) => {
                if let Some((pid, epoch)) = expected
                    && (pid != r.producer_id || epoch != r.producer_epoch)
                {
                    return Err(fenced(id, epoch, r.producer_epoch));
                }
                match r.state {
                    TxnState::Ongoing => {
                        // Fence the old instance with the epoch the abort is written under.
                        r.producer_epoch = r.producer_epoch.saturating_add(1);
                        r.state = TxnState::PrepareAbort;
                        self.catalog.put_transaction(&r, &[]).await?;
                        tracing::info!(
                            transactional_id = id,
                            "aborting the transaction a previous producer instance left open"
                        );
                        self.complete_txn(&mut r).await.map_err(still_completing)?;
                    }
                    TxnState::PrepareCommit | TxnState::PrepareAbort => {
                        self.complete_txn(&mut r).await.map_err(still_completing)?;
                    }
                    _ => {}
                }
                if r.state != TxnState::CompleteCommit
                    && r.state != TxnState::CompleteAbort
                    && r.state != TxnState::Empty
                {
                    return Err(BrokerError::ConcurrentTransactions(format!(
                        "transactional id '{id}' is still completing its last transaction; retry"
                    )));
                }
                r
            }
        };
        if record.producer_epoch >= i16::MAX - 1 {
            // Epochs are exhausted: a fresh producer id starts again at 0.
            record.producer_id = self.catalog.allocate_producer_id().await?;
            record.producer_epoch = 0;
        } else {
            record.producer_epoch += 1;
        }
        record.timeout_ms = timeout_ms;
        record.state = TxnState::Empty;
        record.started_ms = -1;
        record.updated_ms = now;
        self.catalog.put_transaction(&record, &[]).await?;
        tracing::info!(
            transactional_id = id,
            producer_id = record.producer_id,
            epoch = record.producer_epoch,
            "transactional producer initialised"
        );
        Ok((record.producer_id, record.producer_epoch))
    }

    /// Moves `record` into a running transaction (from Empty or Complete*), refusing while
    /// the previous one is still completing.
    fn begin_if_idle(record: &mut TransactionRecord) -> Result<(), BrokerError> {
        match record.state {
            TxnState::Ongoing => Ok(()),
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(BrokerError::ConcurrentTransactions(format!(
                    "transactional id '{}' is completing its last transaction; retry",
                    record.transactional_id
                )))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                record.state = TxnState::Ongoing;
                record.partitions.clear();
                record.groups.clear();
                record.offsets.clear();
                record.started_ms = chrono_now_ms();
                Ok(())
            }
        }
    }

    /// AddPartitionsToTxn: the partitions will get this transaction's markers.
    pub async fn add_partitions_to_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        tps: &[TopicPartition],
    ) -> Result<(), BrokerError> {
        self.check_txn_coordinator(id)?;
        let _guard = self.txn_locks.lock(id).await;
        let mut record = self.txn_for(id, producer_id, epoch).await?;
        Broker::begin_if_idle(&mut record)?;
        for tp in tps {
            if !record.partitions.contains(tp) {
                record.partitions.push(*tp);
            }
        }
        record.updated_ms = chrono_now_ms();
        Ok(self.catalog.put_transaction(&record, &[]).await?)
    }

    /// AddOffsetsToTxn: the transaction will commit offsets for `group`.
    pub async fn add_offsets_to_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), BrokerError> {
        self.check_txn_coordinator(id)?;
        if group.is_empty() {
            return Err(BrokerError::InvalidGroupId);
        }
        let _guard = self.txn_locks.lock(id).await;
        let mut record = self.txn_for(id, producer_id, epoch).await?;
        Broker::begin_if_idle(&mut record)?;
        if !record.groups.iter().any(|g| g == group) {
            record.groups.push(group.to_string());
        }
        record.updated_ms = chrono_now_ms();
        Ok(self.catalog.put_transaction(&record, &[]).await?)
    }

    /// TxnOffsetCommit (to the group's coordinator): offsets that take effect when the
    /// transaction commits, and vanish if it aborts. `member` is `(generation, member id)`
    /// when the producer names its consumer's membership (KIP-447), checked like a commit.
    pub async fn txn_offset_commit(
        &self,
        id: &str,
        group: &str,
        producer_id: i64,
        epoch: i16,
        member: Option<(i32, &str)>,
        offsets: Vec<CommittedOffset>,
    ) -> Result<(), BrokerError> {
        if let Some((generation, member_id)) = member {
            self.groups.check_commit(group, generation, member_id)?;
        } else if !self.membership.coordinates(group) {
            return Err(BrokerError::NotCoordinator {
                group: group.to_string(),
                coordinator: self.membership.coordinator(group),
            });
        }
        let _guard = self.txn_locks.lock(id).await;
        let mut record = self.txn_for(id, producer_id, epoch).await?;
        if record.state != TxnState::Ongoing || !record.groups.iter().any(|g| g == group) {
            return Err(BrokerError::InvalidTxnState(format!(
                "transactional id '{id}' has not added group '{group}' to a running transaction (AddOffsetsToTxn)"
            )));
        }
        for o in offsets {
            record
                .offsets
                .retain(|(g, old)| !(g == group && old.tp == o.tp));
            record.offsets.push((group.to_string(), o));
        }
        record.updated_ms = chrono_now_ms();
        Ok(self.catalog.put_transaction(&record, &[]).await?)
    }

    /// EndTxn: commits or aborts the running transaction. Answers once the decision is
    /// durable and the markers are written (or, if a partition's owner cannot be reached
    /// within [`MARKER_WAIT`], once the decision is durable: the background pass finishes).
    pub async fn end_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), BrokerError> {
        self.check_txn_coordinator(id)?;
        let _guard = self.txn_locks.lock(id).await;
        let mut record = self.txn_for(id, producer_id, epoch).await?;
        let verb = if commit { "commit" } else { "abort" };
        match (record.state, commit) {
            (TxnState::Ongoing, _) => {}
            // A retry of an EndTxn that went through.
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => return Ok(()),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                return self.complete_or_defer(&mut record).await;
            }
            (TxnState::PrepareCommit | TxnState::PrepareAbort, _) => {
                return Err(BrokerError::ConcurrentTransactions(format!(
                    "transactional id '{id}' is completing its transaction the other way"
                )));
            }
            (state, _) => {
                return Err(BrokerError::InvalidTxnState(format!(
                    "transactional id '{id}' cannot {verb}: its state is {}",
                    state.name()
                )));
            }
        }
        record.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        record.updated_ms = chrono_now_ms();
        self.catalog.put_transaction(&record, &[]).await?;
        self.complete_or_defer(&mut record).await
    }

    /// [`Broker::complete_txn`], but a failure to write markers is left to the background
    /// pass: the decision is already durable, which is what the producer waits for.
    async fn complete_or_defer(&self, record: &mut TransactionRecord) -> Result<(), BrokerError> {
        match self.complete_txn(record).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(transactional_id = record.transactional_id, error = %e, "transaction markers not all written yet; retrying in the background");
                Ok(())
            }
        }
    }

    /// Writes a prepared transaction's markers and, once all are durable, completes it: its
    /// offsets are committed (on commit) with the record in one catalog transaction.
    async fn complete_txn(&self, record: &mut TransactionRecord) -> Result<(), BrokerError> {
        let commit = match record.state {
            TxnState::PrepareCommit => true,
            TxnState::PrepareAbort => false,
            _ => return Ok(()),
        };
        let results = self
            .write_markers(
                record.producer_id,
                record.producer_epoch,
                commit,
                &record.partitions,
            )
            .await;
        if let Some((tp, e)) = results
            .into_iter()
            .find_map(|(tp, r)| r.err().map(|e| (tp, e)))
        {
            return Err(BrokerError::Storage(format!(
                "transaction marker for {tp} not written: {e}"
            )));
        }
        let offsets = if commit {
            std::mem::take(&mut record.offsets)
        } else {
            Vec::new()
        };
        record.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        record.partitions.clear();
        record.groups.clear();
        record.offsets.clear();
        record.started_ms = -1;
        record.updated_ms = chrono_now_ms();
        self.catalog.put_transaction(record, &offsets).await?;
        tracing::debug!(
            transactional_id = record.transactional_id,
            state = record.state.name(),
            "transaction completed"
        );
        Ok(())
    }

    /// Writes the markers of `producer_id`'s transaction to `tps`: those this broker owns
    /// through its engine, the others through their owners. Each partition's result.
    pub async fn write_markers(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        tps: &[TopicPartition],
    ) -> Vec<(TopicPartition, Result<(), BrokerError>)> {
        let (local, remote): (Vec<TopicPartition>, Vec<TopicPartition>) =
            tps.iter().partition(|tp| self.engine.owns(**tp));
        let mut results = self
            .write_local_markers(producer_id, epoch, commit, &local)
            .await;
        let mut by_owner: HashMap<i32, Vec<TopicPartition>> = HashMap::new();
        for tp in remote {
            by_owner
                .entry(self.membership.leader(tp))
                .or_default()
                .push(tp);
        }
        for (owner, tps) in by_owner {
            results.extend(
                self.forward_markers(owner, producer_id, epoch, commit, &tps)
                    .await,
            );
        }
        results
    }

    /// Writes markers to partitions this broker owns and waits until they are durable (the
    /// `WriteTxnMarkers` request, and the coordinator's own partitions).
    pub async fn write_local_markers(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        tps: &[TopicPartition],
    ) -> Vec<(TopicPartition, Result<(), BrokerError>)> {
        let now = chrono_now_ms();
        let waits = tps.iter().map(|&tp| async move {
            let appended = self
                .engine
                .append_marker(tp, producer_id, epoch, commit, now);
            let result = match appended {
                Ok(None) => Ok(()),
                Ok(Some(a)) => match tokio::time::timeout(MARKER_WAIT, a.durable()).await {
                    Ok(r) => r.map(|_| ()).map_err(BrokerError::from),
                    Err(_) => Err(BrokerError::Timeout(MARKER_WAIT.as_millis() as u64)),
                },
                Err(e) => Err(e.into()),
            };
            (tp, result)
        });
        join_all(waits).await
    }

    /// Asks broker `owner` to write markers to its partitions `tps` (Kafka's
    /// `WriteTxnMarkers`, as a Kafka controller would send it).
    async fn forward_markers(
        &self,
        owner: i32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        tps: &[TopicPartition],
    ) -> Vec<(TopicPartition, Result<(), BrokerError>)> {
        let Some(member) = self.membership.member(owner) else {
            return tps
                .iter()
                .map(|tp| (*tp, Err(BrokerError::NotLeader(tp.to_string()))))
                .collect();
        };
        let named: Vec<(TopicPartition, String)> = tps
            .iter()
            .filter_map(|tp| {
                self.topic_by_id(tp.topic)
                    .map(|t| (*tp, t.meta.name.clone()))
            })
            .collect();
        let addr = format!("{}:{}", member.kafka.0, member.kafka.1);
        let answered = crate::cluster::peer::write_txn_markers(
            &addr,
            producer_id,
            epoch,
            commit,
            &named
                .iter()
                .map(|(tp, name)| (name.as_str(), tp.partition.0))
                .collect::<Vec<_>>(),
        )
        .await;
        tps.iter()
            .map(|tp| {
                let name = named.iter().find(|(t, _)| t == tp).map(|(_, n)| n.as_str());
                let result = match (&answered, name) {
                    (_, None) => Ok(()), // the topic was deleted: nothing to mark
                    (Err(e), _) => Err(BrokerError::Storage(format!(
                        "broker {owner} at {addr} did not take markers: {e}"
                    ))),
                    (Ok(codes), Some(name)) => match codes
                        .iter()
                        .find(|(n, p, _)| n == name && *p == tp.partition.0)
                    {
                        Some((_, _, 0)) => Ok(()),
                        Some((_, _, code)) => Err(BrokerError::Storage(format!(
                            "broker {owner} refused the marker with error code {code}"
                        ))),
                        None => Err(BrokerError::Storage(format!(
                            "broker {owner} did not answer for {tp}"
                        ))),
                    },
                };
                (*tp, result)
            })
            .collect()
    }

    /// One pass of the transaction timer over the transactional ids this broker
    /// coordinates: aborts transactions that ran past their timeout (bumping the epoch, so
    /// the producer that abandoned them is fenced), and finishes those a crash left with
    /// their decision made but markers unwritten. Returns how many it ended.
    pub async fn expire_transactions(&self) -> usize {
        let records = match self.catalog.transactions().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list transactions for the timeout pass");
                return 0;
            }
        };
        let now = chrono_now_ms();
        let mut ended = 0;
        for r in records {
            let id = r.transactional_id.as_str();
            let expired = r.state == TxnState::Ongoing && now - r.started_ms > r.timeout_ms;
            let unfinished = matches!(r.state, TxnState::PrepareCommit | TxnState::PrepareAbort);
            if !(expired || unfinished) || !self.membership.coordinates(id) {
                continue;
            }
            let _guard = self.txn_locks.lock(id).await;
            // Re-read under the lock: the producer may have ended it meanwhile.
            let Ok(Some(mut r)) = self.catalog.transaction(id).await else {
                continue;
            };
            if r.state == TxnState::Ongoing && now - r.started_ms > r.timeout_ms {
                r.producer_epoch = r.producer_epoch.saturating_add(1);
                r.state = TxnState::PrepareAbort;
                r.updated_ms = now;
                if let Err(e) = self.catalog.put_transaction(&r, &[]).await {
                    tracing::warn!(transactional_id = id, error = %e, "cannot abort a timed-out transaction");
                    continue;
                }
                tracing::info!(
                    transactional_id = id,
                    timeout_ms = r.timeout_ms,
                    "aborting a transaction that ran past its timeout"
                );
            }
            match self.complete_txn(&mut r).await {
                Ok(()) if r.state != TxnState::Ongoing => ended += 1,
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(transactional_id = id, error = %e, "transaction not completed yet; retrying")
                }
            }
        }
        ended
    }

    /// Every transactional id's state (ListTransactions, DescribeTransactions).
    pub async fn transactions(&self) -> Result<Vec<TransactionRecord>, BrokerError> {
        Ok(self.catalog.transactions().await?)
    }

    /// Reads a partition as a `read_committed` consumer sees it: only below the last stable
    /// offset, with the aborted transactions it must skip.
    pub async fn fetch_committed(
        &self,
        topic: &Topic,
        partition: i32,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<CommittedRead, BrokerError> {
        let tp = topic.partition(partition)?;
        let (last_stable, aborted) = self.engine.stable_view(tp, offset).await?;
        let span =
            tracing::debug_span!("storage.read", %tp, offset = offset.0, read_committed = true);
        let read = self
            .engine
            .read_below(tp, offset, max_bytes, Some(last_stable))
            .instrument(span)
            .await?;
        Ok(CommittedRead {
            read,
            last_stable,
            aborted,
        })
    }

    /// The last stable offset of a partition (ListOffsets at `read_committed`).
    pub async fn last_stable_offset(
        &self,
        topic: &Topic,
        partition: i32,
    ) -> Result<Offset, BrokerError> {
        let tp = topic.partition(partition)?;
        let (start, _) = self.engine.offsets(tp).await?;
        Ok(self.engine.stable_view(tp, start).await?.0)
    }
}
