//! The storage engine: partition logs from append to object store and back.
//!
//! [`Engine`] ties the parts together for one broker. An append takes a partition's next
//! offsets, goes to the [`Wal`] (at `acks=1`, the only level that needs it) and into the
//! pending buffer, all under one lock so that WAL order, buffer order and offset order agree. The [flusher](crate::flush) turns the buffer
//! into one segment object per interval, commits it to the [`Catalog`] and only then lets
//! `acks=all` appends return and consumers see the data. [Reads](crate::fetch) serve
//! committed batches from the [`ReadCache`] or the object store.
//!
//! Ack levels, as promised to clients:
//! - [`Acks::None`]: the append is in memory; a crash may lose it.
//! - [`Acks::Wal`]: the append is in the local WAL (`fdatasync`ed); it survives a crash of the
//!   process and is flushed after restart from the same disk — appended again at the end of
//!   the log if another broker owned the partition meanwhile and wrote past it.
//! - [`Acks::All`]: the append is in the object store and the catalog; it survives the loss of
//!   the machine.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{Notify, oneshot, watch};

use crate::batch::Batch;
use crate::cache::ReadCache;
use crate::catalog::{Catalog, CatalogError, Extent, PartitionState};
use crate::metrics::metrics;
use crate::objects::ObjectStorage;
use crate::producers::{ProducerEntry, SequenceError, Verdict, producer_of};
use crate::txn::{AbortedTxn, TxnIndex};
use crate::types::{Epoch, Offset, TopicPartition};
use crate::wal::{Wal, WalEntry, WalError};

/// How durable an append must be before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Kafka `acks=0`: no wait at all.
    None,
    /// Kafka `acks=1`: durable in the local WAL.
    Wal,
    /// Kafka `acks=all` (-1): durable in the object store and the catalog.
    All,
}

/// Why an append or read failed.
#[derive(Debug, Error)]
pub enum EngineError {
    /// This broker does not own the partition (never claimed it, or was fenced).
    #[error("this broker does not own partition {0}")]
    NotOwner(TopicPartition),
    /// The WAL could not take or sync the append.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The flush that held the append failed for good (the partition was fenced).
    #[error("flush failed: {0}")]
    FlushFailed(String),
    /// The offset asked for is outside `[log start, high watermark]`.
    #[error("offset {offset} is out of range [{log_start}, {high_watermark}] for {tp}")]
    OffsetOutOfRange {
        /// The partition.
        tp: TopicPartition,
        /// The offset asked for.
        offset: Offset,
        /// The log start offset.
        log_start: Offset,
        /// The high watermark.
        high_watermark: Offset,
    },
    /// Stored data failed its checksum or could not be read. Names the object and the
    /// offsets it should hold, so an operator knows exactly what is damaged.
    #[error(
        "stored data for {tp} offsets {first}..={last} in object '{object}' is unreadable: {reason}"
    )]
    Corrupt {
        /// The partition.
        tp: TopicPartition,
        /// The object key.
        object: String,
        /// The first offset the damaged extent holds.
        first: Offset,
        /// The last offset the damaged extent holds.
        last: Offset,
        /// What was wrong.
        reason: String,
    },
    /// The object store failed.
    #[error(transparent)]
    Objects(#[from] crate::objects::ObjectsError),
    /// The engine is shutting down.
    #[error("the storage engine is shutting down")]
    ShuttingDown,
    /// An idempotent producer's batch broke the sequence rules.
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    /// An idempotent producer sent several batches for one partition in one request.
    #[error("an idempotent producer must send one batch per partition per request")]
    IdempotentBatchCount,
}

/// Why a flush could not make an `acks=all` append durable.
#[derive(Debug, Clone)]
pub(crate) enum FlushFailure {
    /// Another broker claimed the partition first: the append was not committed, and a retry
    /// must go to the new owner.
    Fenced(TopicPartition),
    /// The commit failed for good for another reason.
    Failed(String),
}

/// An `acks=all` append waiting for the flush that holds it, with its partition (a flush can
/// commit some partitions and be fenced on others).
///
/// Success carries the flush's `flush` span, which the waiter's span then *follows from*:
/// with tracing exported, a produce's trace links to the flush and PUT that made it durable.
pub(crate) type FlushWaiter = (
    TopicPartition,
    oneshot::Sender<Result<tracing::Span, FlushFailure>>,
);

/// The batch of a recovered WAL entry, or `None` (logged) when it does not parse.
fn readable(entry: WalEntry) -> Option<Batch> {
    match Batch::from_stored(entry.batch) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(tp = %entry.tp, error = %e, "skipping unreadable WAL entry");
            None
        }
    }
}

/// Tuning of the engine, from the broker's flags.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This broker's id, recorded as the owner of the partitions it claims.
    pub broker_id: String,
    /// The WAL directory.
    pub wal_dir: PathBuf,
    /// Flush at least this often when there is data.
    pub flush_interval: Duration,
    /// Flush as soon as this many bytes are pending.
    pub flush_bytes: usize,
}

/// Extents kept in memory per partition, newest first out: the tail that consumers read most.
/// Older extents are looked up in the catalog.
pub(crate) const TAIL_EXTENTS: usize = 4096;

/// What the engine knows about a partition it owns.
pub(crate) struct PartitionLog {
    /// The epoch under which this broker owns the partition.
    pub epoch: Epoch,
    /// The next offset to assign.
    pub next_offset: Offset,
    /// The first offset still retained.
    pub log_start: Offset,
    /// The high watermark, published so that waiting readers wake when it moves.
    pub hwm: watch::Sender<Offset>,
    /// Recently committed extents, in offset order.
    pub tail: VecDeque<Extent>,
    /// The partition is being handed over: appends are refused while what was accepted
    /// flushes.
    pub closing: bool,
    /// Open and aborted transactions: what the last stable offset and `read_committed`
    /// reads need.
    pub txns: TxnIndex,
    /// The [cleaner](crate::cleaner) has cleaned this partition through this offset...
    pub cleaned_through: Offset,
    /// ...and need not look again before this time (ms since the epoch) unless new data
    /// settles: when the oldest tombstone it kept expires.
    pub clean_again_ms: i64,
}

impl PartitionLog {
    fn new(s: &PartitionState) -> PartitionLog {
        PartitionLog {
            epoch: s.epoch,
            next_offset: s.high_watermark,
            log_start: s.log_start_offset,
            hwm: watch::channel(s.high_watermark).0,
            tail: VecDeque::new(),
            closing: false,
            txns: TxnIndex::default(),
            cleaned_through: Offset(-1),
            clean_again_ms: 0,
        }
    }
}

/// One buffered append waiting for the next flush.
pub(crate) struct Pending {
    pub tp: TopicPartition,
    pub base_offset: Offset,
    pub batch: Batch,
    /// Acknowledged before the flush (`acks=1`, from the WAL): must not be lost if the
    /// partition is, so it is kept aside for when this broker owns the partition again.
    pub acked_early: bool,
}

/// Everything an append touches, behind one lock.
#[derive(Default)]
pub(crate) struct IngestState {
    pub partitions: HashMap<TopicPartition, PartitionLog>,
    pub pending: Vec<Pending>,
    pub pending_bytes: usize,
    /// `acks=all` appends waiting for the flush that will hold the current `pending`.
    pub waiters: Vec<FlushWaiter>,
    /// Idempotent producers' state including every accepted batch.
    pub producers: ProducerMap,
    /// Appends are refused after this instant unless the lease is renewed (see
    /// [`Engine::renew_lease`]); `None` when no lease applies.
    pub lease_until: Option<Instant>,
    /// WAL entries recovered at start-up for partitions not yet claimed, by partition: they
    /// are replayed (or re-appended) when this broker claims the partition.
    pub recovered: HashMap<TopicPartition, Vec<WalEntry>>,
}

/// Idempotent producer state by partition and producer id.
pub(crate) type ProducerMap = HashMap<(TopicPartition, i64), ProducerEntry>;

pub(crate) struct Inner {
    pub config: EngineConfig,
    pub catalog: Arc<dyn Catalog>,
    pub objects: ObjectStorage,
    pub cache: ReadCache,
    pub wal: Wal,
    pub state: Mutex<IngestState>,
    /// Wakes the flusher early when `flush_bytes` is reached.
    pub flush_now: Notify,
    /// Wakes appends waiting for buffer room when a flush takes the buffer.
    pub room: Notify,
    /// Tells the flusher to do a last flush and stop.
    pub shutdown: watch::Sender<bool>,
    /// The flusher task, awaited at shutdown.
    pub flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Idempotent producers' state as of the last flush prepared (the flusher's own view,
    /// which it advances with each flush and commits to the catalog with it).
    pub committed_producers: Mutex<ProducerMap>,
}

/// The storage engine of one broker. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

/// The result of an append: where it landed and, for acks above none, what to wait for.
pub struct Appended {
    /// Offset given to the first record.
    pub base_offset: Offset,
    wait: AppendWait,
}

enum AppendWait {
    None,
    Wal(crate::wal::Durable),
    Flush(oneshot::Receiver<Result<tracing::Span, FlushFailure>>),
    /// A duplicate at `acks=all`: wait until the original's last offset is committed.
    Committed(watch::Receiver<Offset>, Offset),
}

impl Appended {
    /// Waits until the append is as durable as its ack level promises.
    pub async fn durable(self) -> Result<Offset, EngineError> {
        match self.wait {
            AppendWait::None => {}
            AppendWait::Wal(d) => d.wait().await?,
            AppendWait::Flush(rx) => match rx.await {
                Ok(Ok(flush)) => {
                    tracing::Span::current().follows_from(&flush);
                }
                Ok(Err(FlushFailure::Fenced(tp))) => return Err(EngineError::NotOwner(tp)),
                Ok(Err(FlushFailure::Failed(e))) => return Err(EngineError::FlushFailed(e)),
                Err(_) => return Err(EngineError::ShuttingDown),
            },
            AppendWait::Committed(mut hwm, last) => {
                hwm.wait_for(|h| *h > last)
                    .await
                    .map_err(|_| EngineError::ShuttingDown)?;
            }
        }
        Ok(self.base_offset)
    }
}

impl Engine {
    /// Opens the engine: recovers the WAL, claims `owned` partitions in the catalog, puts the
    /// recovered entries the catalog does not have back into the buffer, and starts the
    /// flusher. Recovered data is flushed at once. Entries of partitions not claimed here wait
    /// until this broker claims them (a cluster member claims its share after start-up).
    pub async fn open(
        config: EngineConfig,
        catalog: Arc<dyn Catalog>,
        objects: ObjectStorage,
        cache: ReadCache,
        owned: &[TopicPartition],
    ) -> Result<Engine, EngineError> {
        let (wal, recovered) = Wal::open(&config.wal_dir)?;
        let (shutdown, _) = watch::channel(false);
        let mut state = IngestState::default();
        for entry in recovered {
            state.recovered.entry(entry.tp).or_default().push(entry);
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                catalog,
                objects,
                cache,
                wal,
                state: Mutex::new(state),
                flush_now: Notify::new(),
                room: Notify::new(),
                shutdown,
                flusher: Mutex::new(None),
                committed_producers: Mutex::new(HashMap::new()),
            }),
        };
        engine.claim(owned).await?;
        let flusher = crate::flush::spawn_flusher(engine.clone());
        *engine
            .inner
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(flusher);
        Ok(engine)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, IngestState> {
        // A panic while holding the lock would leave no half-made change behind (every
        // mutation is a push or an assignment), so a poisoned lock is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes ownership of partitions whatever their epoch (a new epoch for each) and loads
    /// their committed state. For a broker that is alone on its catalog; cluster members use
    /// [`Engine::claim_at`].
    pub async fn claim(&self, tps: &[TopicPartition]) -> Result<(), EngineError> {
        if tps.is_empty() {
            return Ok(());
        }
        let states = self
            .inner
            .catalog
            .claim_partitions(&self.inner.config.broker_id, tps)
            .await?;
        self.install(states).await
    }

    /// Takes ownership of each partition only if it is still at the given epoch (so two
    /// brokers racing for it cannot both win), and loads the state of those won. Returns the
    /// partitions won.
    pub async fn claim_at(
        &self,
        claims: &[(TopicPartition, Epoch)],
    ) -> Result<Vec<TopicPartition>, EngineError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let states = self
            .inner
            .catalog
            .claim_partitions_at(&self.inner.config.broker_id, claims)
            .await?;
        let won = states.iter().map(|s| s.tp).collect();
        self.install(states).await?;
        Ok(won)
    }

    /// Installs freshly claimed partitions: a new log at the committed high watermark, the
    /// committed producer state, and any WAL entries recovered for them.
    async fn install(&self, states: Vec<PartitionState>) -> Result<(), EngineError> {
        let tps: Vec<TopicPartition> = states.iter().map(|s| s.tp).collect();
        let producers = self.inner.catalog.producer_states(&tps).await?;
        let mut aborted = HashMap::new();
        for s in &states {
            let list = self
                .inner
                .catalog
                .aborted_txns(s.tp, s.log_start_offset)
                .await?;
            aborted.insert(s.tp, list);
        }
        {
            let mut committed = self
                .inner
                .committed_producers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            committed.retain(|(tp, _), _| !tps.contains(tp));
            for p in &producers {
                committed.insert((p.tp, p.producer_id), p.entry.clone());
            }
        }
        let mut unsure = Vec::new();
        {
            let mut state = self.lock();
            state.producers.retain(|(tp, _), _| !tps.contains(tp));
            for s in &states {
                let mut log = PartitionLog::new(s);
                log.txns
                    .load_aborted(aborted.remove(&s.tp).unwrap_or_default());
                state.partitions.insert(s.tp, log);
            }
            for p in producers {
                if let Some(first) = p.entry.txn_first
                    && let Some(log) = state.partitions.get_mut(&p.tp)
                {
                    log.txns.begin(p.producer_id, Offset(first));
                }
                state.producers.insert((p.tp, p.producer_id), p.entry);
            }
            for s in &states {
                if let Some(mut entries) = state.recovered.remove(&s.tp) {
                    entries.sort_by_key(|e| e.base_offset);
                    unsure.extend(self.replay(&mut state, s.tp, entries));
                }
            }
        }
        if !unsure.is_empty() {
            let engine = self.clone();
            tokio::spawn(async move { engine.recover_orphans(unsure).await });
        }
        Ok(())
    }

    /// Puts a claimed partition's recovered WAL entries that continue its log back into the
    /// buffer. Returns the others: entries below the high watermark (committed, or replaced
    /// by another owner's records) and entries past a gap, for [`Engine::recover_orphans`].
    fn replay(
        &self,
        state: &mut IngestState,
        tp: TopicPartition,
        entries: Vec<WalEntry>,
    ) -> Vec<WalEntry> {
        let mut unsure = Vec::new();
        let mut replayed = 0usize;
        for entry in entries {
            let Some(log) = state.partitions.get_mut(&tp) else {
                break;
            };
            // After the first entry that does not continue the log, none does: keep order.
            if !unsure.is_empty() || entry.base_offset != log.next_offset {
                unsure.push(entry);
                continue;
            }
            let base_offset = entry.base_offset;
            let Some(batch) = readable(entry) else {
                continue;
            };
            let next = base_offset.plus(batch.offset_count());
            log.next_offset = next;
            if let Some((pid, epoch, first, last)) = producer_of(&batch) {
                if batch.is_transactional() {
                    log.txns.begin(pid, base_offset);
                }
                let entry = state.producers.entry((tp, pid)).or_default();
                entry.record(epoch, first, last, base_offset, next.plus(-1));
                if batch.is_transactional() {
                    entry.begin_txn(base_offset);
                }
            }
            state.pending_bytes += batch.len();
            state.pending.push(Pending {
                tp,
                base_offset,
                batch,
                acked_early: true,
            });
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(%tp, entries = replayed, "replaying WAL entries not yet in the catalog");
            metrics().unflushed_bytes.set(state.pending_bytes as i64);
            self.inner.flush_now.notify_one();
        }
        unsure
    }

    /// Resolves recovered WAL entries that do not continue their partition's log. An entry
    /// whose offset holds the very same batch (same CRC) in the object store was committed;
    /// any other was acknowledged at `acks=1` by this broker before it lost the partition
    /// (crash, or fenced while frozen) and another owner wrote past it: it is appended again,
    /// at the end of the log, so no acknowledged record is lost (its offset changes).
    pub(crate) async fn recover_orphans(&self, entries: Vec<WalEntry>) {
        let mut reappended = 0usize;
        for entry in entries {
            let tp = entry.tp;
            if self.was_committed(&entry).await {
                continue;
            }
            let Some(batch) = readable(entry) else {
                continue;
            };
            // An idempotent producer's batch goes through the sequence checks: if the
            // producer retried it at the new owner, it is a duplicate and is not stored twice.
            match self.append(tp, vec![batch], Acks::Wal) {
                Ok(a) => {
                    reappended += 1;
                    if let Err(e) = a.durable().await {
                        tracing::error!(%tp, error = %e, "re-appending a recovered WAL entry failed");
                    }
                }
                Err(EngineError::Sequence(e)) => {
                    tracing::debug!(%tp, error = %e, "recovered batch already stored by its producer's retry");
                }
                Err(e) => {
                    tracing::error!(%tp, error = %e, "cannot re-append a recovered WAL entry; it is lost")
                }
            }
        }
        if reappended > 0 {
            tracing::warn!(
                entries = reappended,
                "re-appended acks=1 WAL entries that another owner had written past"
            );
        }
    }

    /// Whether the batch at `entry`'s offset in the committed log is the entry's own batch.
    async fn was_committed(&self, entry: &WalEntry) -> bool {
        let (_, hwm) = match self.offsets(entry.tp).await {
            Ok(o) => o,
            Err(_) => return false,
        };
        if entry.base_offset >= hwm {
            return false;
        }
        match self.read(entry.tp, entry.base_offset, 1).await {
            Ok(read) => crate::batch::same_batch(&read.records, &entry.batch),
            // Deleted by retention or DeleteRecords: it was committed.
            Err(EngineError::OffsetOutOfRange { .. }) => true,
            Err(e) => {
                tracing::warn!(tp = %entry.tp, error = %e, "cannot check a recovered WAL entry; appending it again");
                false
            }
        }
    }

    /// Forgets partitions (their topic was deleted, or another broker took them). Pending
    /// data for them is dropped at the next flush, and their `acks=all` appends fail.
    pub fn forget(&self, tps: &[TopicPartition]) {
        let mut state = self.lock();
        for tp in tps {
            state.partitions.remove(tp);
            state.recovered.remove(tp);
        }
        state.producers.retain(|(tp, _), _| !tps.contains(tp));
    }

    /// Lets this engine take appends until `until`. A cluster member renews it after each
    /// heartbeat the catalog accepted, to a point before other brokers could think it dead:
    /// a broker that was frozen or cut off stops acknowledging writes before anyone else
    /// takes its partitions.
    pub fn renew_lease(&self, until: Instant) {
        self.lock().lease_until = Some(until);
    }

    /// The partitions this engine owns, with their epochs.
    pub fn held(&self) -> Vec<(TopicPartition, Epoch)> {
        self.lock()
            .partitions
            .iter()
            .map(|(tp, l)| (*tp, l.epoch))
            .collect()
    }

    /// Whether this engine owns `tp`.
    pub fn owns(&self, tp: TopicPartition) -> bool {
        self.lock().partitions.contains_key(&tp)
    }

    /// The epoch under which this engine owns `tp`, if it does.
    pub fn epoch(&self, tp: TopicPartition) -> Option<Epoch> {
        self.lock().partitions.get(&tp).map(|l| l.epoch)
    }

    /// Hands partitions over: refuses new appends to them, waits (until `deadline`) for what
    /// was accepted to commit, releases them in the catalog and forgets them. Partitions whose
    /// data did not commit in time are kept (and reopened) for a later attempt. Returns the
    /// partitions released.
    pub async fn release(
        &self,
        tps: &[TopicPartition],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<TopicPartition>, EngineError> {
        let mut closing = Vec::new();
        {
            let mut state = self.lock();
            for tp in tps {
                if let Some(log) = state.partitions.get_mut(tp) {
                    log.closing = true;
                    closing.push((*tp, log.epoch, log.next_offset, log.hwm.subscribe()));
                }
            }
        }
        self.inner.flush_now.notify_one();
        let mut done = Vec::new();
        let mut reopen = Vec::new();
        for (tp, epoch, next, mut hwm) in closing {
            match tokio::time::timeout_at(deadline, hwm.wait_for(|h| *h >= next)).await {
                Ok(_) => done.push((tp, epoch)),
                Err(_) => reopen.push(tp),
            }
        }
        if !reopen.is_empty() {
            tracing::warn!(
                partitions = reopen.len(),
                "hand-over timed out waiting for a flush; keeping them"
            );
            let mut state = self.lock();
            for tp in &reopen {
                if let Some(log) = state.partitions.get_mut(tp) {
                    log.closing = false;
                }
            }
        }
        self.inner
            .catalog
            .release_partitions(&self.inner.config.broker_id, &done)
            .await?;
        let released: Vec<TopicPartition> = done.into_iter().map(|(tp, _)| tp).collect();
        self.forget(&released);
        Ok(released)
    }

    /// Appends checked batches to a partition this broker owns. Offsets are assigned and the
    /// WAL write queued before this returns; wait on [`Appended::durable`] for the ack level.
    pub fn append(
        &self,
        tp: TopicPartition,
        batches: Vec<Batch>,
        acks: Acks,
    ) -> Result<Appended, EngineError> {
        let mut state = self.lock();
        // Past the lease, another broker may own the partition already.
        if state.lease_until.is_some_and(|t| Instant::now() > t) {
            return Err(EngineError::NotOwner(tp));
        }
        let idempotent = batches.iter().filter_map(producer_of).next();
        if let Some((pid, epoch, first, last)) = idempotent {
            if batches.len() != 1 {
                return Err(EngineError::IdempotentBatchCount);
            }
            let verdict = state
                .producers
                .get(&(tp, pid))
                .map_or(Ok(Verdict::Append), |e| e.check(epoch, first, last))?;
            if let Verdict::Duplicate {
                base_offset,
                last_offset,
            } = verdict
            {
                return self.duplicate(&state, tp, base_offset, last_offset, acks);
            }
        }
        let log = state
            .partitions
            .get_mut(&tp)
            .filter(|l| !l.closing)
            .ok_or(EngineError::NotOwner(tp))?;
        let base_offset = log.next_offset;
        let mut next = base_offset;
        let mut entries = Vec::with_capacity(batches.len());
        for batch in &batches {
            entries.push(WalEntry {
                tp,
                base_offset: next,
                batch: batch.bytes().clone(),
            });
            next = next.plus(batch.offset_count());
        }
        // Only `acks=1` needs the WAL: `acks=all` is answered from the object store commit
        // (a crash before it loses nothing acknowledged), and `acks=0` promises nothing. So
        // the WAL holds exactly the records acknowledged before their flush.
        let mut durable = None;
        if acks == Acks::Wal {
            let last = entries.len().saturating_sub(1);
            for (i, entry) in entries.iter().enumerate() {
                // The group commit is FIFO, so waiting for the last entry covers all of them.
                if let Some(d) = self.inner.wal.append(entry, i == last)? {
                    durable = Some(d);
                }
            }
        }
        log.next_offset = next;
        let transactional = batches.iter().any(Batch::is_transactional);
        if let Some((pid, epoch, first, last)) = idempotent {
            if transactional {
                log.txns.begin(pid, base_offset);
            }
            let entry = state.producers.entry((tp, pid)).or_default();
            entry.record(epoch, first, last, base_offset, next.plus(-1));
            if transactional {
                entry.begin_txn(base_offset);
            }
        }
        let mut added = 0;
        for (entry, batch) in entries.into_iter().zip(batches) {
            added += batch.len();
            state.pending.push(Pending {
                tp,
                base_offset: entry.base_offset,
                batch,
                acked_early: acks == Acks::Wal,
            });
        }
        state.pending_bytes += added;
        metrics().unflushed_bytes.set(state.pending_bytes as i64);
        let wait = match (acks, durable) {
            (Acks::None, _) => AppendWait::None,
            (Acks::Wal, Some(d)) => AppendWait::Wal(d),
            (Acks::Wal, None) => AppendWait::None,
            (Acks::All, _) => {
                let (tx, rx) = oneshot::channel();
                state.waiters.push((tp, tx));
                AppendWait::Flush(rx)
            }
        };
        if state.pending_bytes >= self.inner.config.flush_bytes {
            self.inner.flush_now.notify_one();
        }
        Ok(Appended { base_offset, wait })
    }

    /// Appends the marker that ends `producer_id`'s transaction on `tp` (commit or abort),
    /// written under the coordinator's current `epoch`. Returns `None` when the producer has
    /// no transaction awaiting a marker here (it was written already: the coordinator may
    /// retry), else the append, durable once the marker is in the object store.
    pub fn append_marker(
        &self,
        tp: TopicPartition,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        timestamp: i64,
    ) -> Result<Option<Appended>, EngineError> {
        let mut state = self.lock();
        if state.lease_until.is_some_and(|t| Instant::now() > t) {
            return Err(EngineError::NotOwner(tp));
        }
        if let Some(current) = state.producers.get(&(tp, producer_id)).map(|e| e.epoch)
            && current > epoch
        {
            return Err(SequenceError::InvalidEpoch {
                current,
                got: epoch,
            }
            .into());
        }
        let log = state
            .partitions
            .get_mut(&tp)
            .filter(|l| !l.closing)
            .ok_or(EngineError::NotOwner(tp))?;
        if log.txns.awaiting_marker(producer_id).is_none() {
            return Ok(None);
        }
        let batch = Batch::marker(producer_id, epoch, commit, 0, timestamp);
        let base_offset = log.next_offset;
        log.next_offset = base_offset.plus(1);
        log.txns.end(producer_id, base_offset);
        state
            .producers
            .entry((tp, producer_id))
            .or_default()
            .end_txn(epoch);
        state.pending_bytes += batch.len();
        state.pending.push(Pending {
            tp,
            base_offset,
            batch,
            acked_early: false,
        });
        let (tx, rx) = oneshot::channel();
        state.waiters.push((tp, tx));
        self.inner.flush_now.notify_one();
        Ok(Some(Appended {
            base_offset,
            wait: AppendWait::Flush(rx),
        }))
    }

    /// The last stable offset of `tp` (how far `read_committed` consumers may read) and the
    /// aborted transactions that overlap `[from, lso)`. From memory when this broker owns the
    /// partition; else from the catalog's committed producer state.
    pub async fn stable_view(
        &self,
        tp: TopicPartition,
        from: Offset,
    ) -> Result<(Offset, Vec<AbortedTxn>), EngineError> {
        if let Some(log) = self.lock().partitions.get(&tp) {
            let lso = log.txns.last_stable(*log.hwm.borrow());
            return Ok((lso, log.txns.aborted_between(from, lso)));
        }
        let (_, hwm) = self.offsets(tp).await?;
        let lso = self
            .inner
            .catalog
            .producer_states(&[tp])
            .await?
            .iter()
            .filter_map(|p| p.entry.txn_first.map(Offset))
            .fold(hwm, Offset::min);
        let aborted = self.inner.catalog.aborted_txns(tp, from).await?;
        Ok((lso, crate::txn::overlapping(&aborted, from, lso)))
    }

    /// The first offset of each producer's open transaction on `tp` (DescribeProducers).
    pub fn open_transaction(&self, tp: TopicPartition, producer_id: i64) -> Option<Offset> {
        self.lock()
            .partitions
            .get(&tp)
            .and_then(|l| l.txns.open_first(producer_id))
    }

    /// The answer to a retried idempotent batch: its original offsets, once the original is
    /// as durable as this retry asks.
    fn duplicate(
        &self,
        state: &IngestState,
        tp: TopicPartition,
        base_offset: Offset,
        last_offset: Offset,
        acks: Acks,
    ) -> Result<Appended, EngineError> {
        let log = state.partitions.get(&tp).ok_or(EngineError::NotOwner(tp))?;
        let wait = match acks {
            Acks::None => AppendWait::None,
            // The original is ahead of this barrier in the WAL's FIFO.
            Acks::Wal => AppendWait::Wal(self.inner.wal.barrier()?),
            Acks::All => AppendWait::Committed(log.hwm.subscribe(), last_offset),
        };
        tracing::debug!(%tp, %base_offset, "duplicate idempotent batch; answering with its offset");
        Ok(Appended { base_offset, wait })
    }

    /// Most bytes the pending buffer may hold before appends wait: several flushes' worth, so
    /// a slow object store slows producers down instead of growing memory without bound.
    fn max_pending(&self) -> usize {
        (self.inner.config.flush_bytes * 4).max(64 << 20)
    }

    /// Waits until the pending buffer has room, or `deadline` passes (then returns false).
    /// Appends call this first; with a healthy object store it returns at once.
    pub async fn wait_for_room(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.inner.room.notified();
            if self.lock().pending_bytes < self.max_pending() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// The high watermark of a partition this broker owns, as a watch that changes when a
    /// flush commits. Long-polling fetches wait on it.
    pub fn watch_high_watermark(&self, tp: TopicPartition) -> Option<watch::Receiver<Offset>> {
        self.lock().partitions.get(&tp).map(|l| l.hwm.subscribe())
    }

    /// Deletes the records of `tp` below `offset` (the high watermark when `None`): the log
    /// start moves there, in the catalog first, and reads below it are out of range from then
    /// on. Returns the new log start (Kafka's low watermark).
    pub async fn delete_records(
        &self,
        tp: TopicPartition,
        offset: Option<Offset>,
    ) -> Result<Offset, EngineError> {
        let (epoch, log_start, hwm) = {
            let state = self.lock();
            let log = state.partitions.get(&tp).ok_or(EngineError::NotOwner(tp))?;
            (log.epoch, log.log_start, *log.hwm.borrow())
        };
        let target = offset.unwrap_or(hwm);
        if target > hwm || target.0 < 0 {
            return Err(EngineError::OffsetOutOfRange {
                tp,
                offset: target,
                log_start,
                high_watermark: hwm,
            });
        }
        let start = self
            .inner
            .catalog
            .advance_log_start(tp, epoch, target)
            .await?;
        if let Some(log) = self.lock().partitions.get_mut(&tp) {
            log.log_start = log.log_start.max(start);
        }
        tracing::info!(%tp, log_start = start.0, "deleted records below the new log start");
        Ok(start)
    }

    /// The idempotent producers this broker knows on `tp`, with their state, by producer id
    /// (DescribeProducers).
    pub fn active_producers(&self, tp: TopicPartition) -> Vec<(i64, ProducerEntry)> {
        let state = self.lock();
        let mut out: Vec<(i64, ProducerEntry)> = state
            .producers
            .iter()
            .filter(|((t, _), _)| *t == tp)
            .map(|((_, pid), e)| (*pid, e.clone()))
            .collect();
        out.sort_by_key(|(pid, _)| *pid);
        out
    }

    /// `(log start, high watermark)` of a partition, from memory if owned, else the catalog.
    pub async fn offsets(&self, tp: TopicPartition) -> Result<(Offset, Offset), EngineError> {
        if let Some(l) = self.lock().partitions.get(&tp) {
            return Ok((l.log_start, *l.hwm.borrow()));
        }
        match self.inner.catalog.partition_state(tp).await? {
            Some(s) => Ok((s.log_start_offset, s.high_watermark)),
            None => Err(EngineError::NotOwner(tp)),
        }
    }

    /// Flushes everything pending, waits for it to commit, and stops the flusher. Used by
    /// SIGTERM handling: after this, every accepted append is in the object store.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner.flush_now.notify_one();
        let flusher = self
            .inner
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(flusher) = flusher {
            match tokio::time::timeout(Duration::from_secs(30), flusher).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "flusher task failed"),
                Err(_) => tracing::warn!("flusher did not finish within 30 s of shutdown"),
            }
        }
    }

    /// The catalog the engine commits to.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.inner.catalog
    }

    /// The object store the engine writes to.
    pub fn objects(&self) -> &ObjectStorage {
        &self.inner.objects
    }
}
