//! The flusher: turns the pending buffer into one segment object per interval.
//!
//! Every `flush_interval`, or as soon as `flush_bytes` are pending, the flusher takes the
//! whole buffer and rolls the WAL at the same instant (under the ingest lock), so the sealed
//! WAL files hold exactly what this flush and earlier ones carry. It builds one segment object
//! holding every partition's batches (grouped by partition) and starts its PUT, retrying with
//! backoff until the store takes it. A committer then, **strictly in flush order**:
//!
//! 1. waits for the flush's PUT;
//! 2. commits the extents and new high watermarks to the catalog in one transaction fenced by
//!    each partition's epoch (and by the high watermark, which makes order a precondition) —
//!    together with every later flush whose PUT is already done, when it is behind;
//! 3. publishes the new high watermarks (waking long-polling readers), fills the read cache
//!    with the fresh bytes, answers `acks=all` appends, and deletes the sealed WAL files.
//!
//! Up to [`PIPELINE`] flushes are in flight at once, so a slow PUT (object stores take tens to
//! hundreds of milliseconds) does not hold back the next interval's data: latency is about one
//! interval plus one PUT, not their sum times the queue. When nothing is pending, a tick does
//! nothing: an idle broker makes no object-store calls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::catalog::{CatalogError, Extent, FlushCommit, ProducerState};
use crate::engine::{Engine, FlushFailure, FlushWaiter, Pending};
use crate::metrics::metrics;
use crate::producers::{ProducerEntry, producer_of};
use crate::segment::{self, ExtentMeta, SegmentBuilder};
use crate::txn::AbortedTxn;
use crate::types::{Epoch, TopicPartition};
use crate::wal::WalEntry;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Flushes that may be in flight (PUT started, commit not yet done) at once. When the
/// committer falls this far behind, the flusher waits, the buffer fills, and appends wait for
/// room: backpressure all the way to producers.
pub const PIPELINE: usize = 8;

/// Most flushes committed in one catalog transaction.
pub const GROUP: usize = 16;

/// Starts the flusher task for `engine`. It stops after a final flush once the engine's
/// shutdown flag is set, and returns when that flush is committed.
pub(crate) fn spawn_flusher(engine: Engine) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, rx) = mpsc::channel::<Prepared>(PIPELINE);
        let committer = tokio::spawn(commit_in_order(engine.clone(), rx));
        let mut shutdown = engine.inner.shutdown.subscribe();
        let interval = engine.inner.config.flush_interval;
        loop {
            let stopping = *shutdown.borrow_and_update();
            if !stopping {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = engine.inner.flush_now.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
            if let Some(prepared) = prepare(&engine)
                && tx.send(prepared).await.is_err()
            {
                tracing::error!("flush committer stopped; no more flushes");
                break;
            }
            if stopping && engine.lock().pending.is_empty() {
                break;
            }
        }
        drop(tx);
        if let Err(e) = committer.await {
            tracing::error!(error = %e, "flush committer failed");
        }
        tracing::info!("flusher stopped; everything accepted is in the object store");
    })
}

/// What one flush took from the buffer.
struct Taken {
    pending: Vec<Pending>,
    epochs: HashMap<TopicPartition, Epoch>,
    waiters: Vec<FlushWaiter>,
    roll: Option<oneshot::Receiver<u64>>,
}

/// A flush whose object is being PUT, waiting for its turn to commit.
struct Prepared {
    waiters: Vec<FlushWaiter>,
    /// The `acks=1` batches in this flush, kept in case their partition is fenced.
    acked_early: Vec<WalEntry>,
    roll: Option<oneshot::Receiver<u64>>,
    started: Instant,
    /// `None` when every partition in the flush was deleted meanwhile.
    segment: Option<Segment>,
    /// Set when the PUT task died (it retries store errors itself, so only a panic).
    put_error: Option<CatalogError>,
}

struct Segment {
    key: String,
    object: Bytes,
    commit: FlushCommit,
    metas: Vec<ExtentMeta>,
    /// The PUT in flight; `None` once awaited.
    put: Option<JoinHandle<()>>,
    /// The flush's span: the PUT runs in it, and the appends it makes durable follow from it.
    span: tracing::Span,
}

fn take(engine: &Engine) -> Option<Taken> {
    let mut state = engine.lock();
    if state.pending.is_empty() {
        return None;
    }
    let mut pending = std::mem::take(&mut state.pending);
    state.pending_bytes = 0;
    metrics().unflushed_bytes.set(0);
    engine.inner.room.notify_waiters();
    let epochs: HashMap<TopicPartition, Epoch> = pending
        .iter()
        .filter_map(|p| state.partitions.get(&p.tp).map(|l| (p.tp, l.epoch)))
        .collect();
    // Appends to partitions forgotten meanwhile (another broker took them) are not flushed
    // here; they are kept aside in case this broker gets the partition back.
    let (kept, lost): (Vec<Pending>, Vec<Pending>) = pending
        .into_iter()
        .partition(|p| epochs.contains_key(&p.tp));
    pending = kept;
    keep_aside(&mut state, lost);
    let (waiters, orphaned): (Vec<_>, Vec<_>) = std::mem::take(&mut state.waiters)
        .into_iter()
        .partition(|(tp, _)| epochs.contains_key(tp));
    for (tp, w) in orphaned {
        let _ = w.send(Err(FlushFailure::Fenced(tp)));
    }
    // Rolled under the lock: no append can slip between the buffer swap and the roll.
    let roll = match engine.inner.wal.start_roll() {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::error!(error = %e, "cannot roll the WAL; it will not be truncated");
            None
        }
    };
    Some(Taken {
        pending,
        epochs,
        waiters,
        roll,
    })
}

async fn backoff(attempt: &mut u32) {
    let delay = Duration::from_millis(100 << (*attempt).min(6)).min(MAX_BACKOFF);
    *attempt += 1;
    tokio::time::sleep(delay).await;
}

/// Takes what is pending, builds its segment and starts the PUT.
fn prepare(engine: &Engine) -> Option<Prepared> {
    let mut taken = take(engine)?;
    let started = Instant::now();
    // Group by partition; a stable sort keeps each partition's batches in offset order.
    taken.pending.sort_by_key(|p| p.tp);
    let total: usize = taken.pending.iter().map(|p| p.batch.len()).sum();
    let mut builder = SegmentBuilder::with_capacity(total + 72 * taken.epochs.len());
    for p in taken
        .pending
        .iter()
        .filter(|p| taken.epochs.contains_key(&p.tp))
    {
        builder.add(p.tp, p.base_offset, &p.batch);
    }
    let (producers, aborted) = producer_updates(engine, &taken.pending, &taken.epochs);
    let acked_early = taken
        .pending
        .iter()
        .filter(|p| p.acked_early)
        .map(|p| WalEntry {
            tp: p.tp,
            base_offset: p.base_offset,
            batch: p.batch.bytes().clone(),
        })
        .collect();
    let segment = (!builder.is_empty()).then(|| {
        let (object, metas) = builder.finish();
        let key = segment::new_key();
        metrics().flush_bytes.observe(object.len() as f64);
        let commit = FlushCommit {
            object_key: key.clone(),
            object_size: object.len() as u64,
            extents: metas.iter().map(|m| (*m, taken.epochs[&m.tp])).collect(),
            producers,
            aborted,
        };
        let span = tracing::debug_span!("flush", object = %key, bytes = object.len());
        let put = tokio::spawn(
            put_until_stored(engine.clone(), key.clone(), object.clone()).instrument(span.clone()),
        );
        Segment {
            key,
            object,
            commit,
            metas,
            put: Some(put),
            span,
        }
    });
    Some(Prepared {
        waiters: taken.waiters,
        acked_early,
        roll: taken.roll,
        started,
        segment,
        put_error: None,
    })
}

/// PUTs an object, retrying with backoff until the store takes it.
async fn put_until_stored(engine: Engine, key: String, object: Bytes) {
    let mut attempt = 0;
    while let Err(e) = engine.inner.objects.put(&key, object.clone()).await {
        metrics().flush_errors.inc();
        tracing::warn!(error = %e, object = %key, "segment PUT failed; retrying");
        backoff(&mut attempt).await;
    }
}

/// Commits prepared flushes in the order they were taken. When commits fall behind, every
/// queued flush whose PUT has finished joins the oldest one's transaction (up to [`GROUP`]):
/// one catalog round trip then catches up on many flushes — group commit, as the WAL does.
async fn commit_in_order(engine: Engine, mut rx: mpsc::Receiver<Prepared>) {
    let mut queue: VecDeque<Prepared> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(p) => queue.push_back(p),
                None => break,
            }
        }
        // The oldest flush commits first: wait for its PUT, whatever else is ready.
        let waited = Instant::now();
        if let Some(head) = queue.front_mut() {
            head.await_put().await;
        }
        metrics()
            .flush_put_wait_seconds
            .observe(waited.elapsed().as_secs_f64());
        while queue.len() < PIPELINE {
            match rx.try_recv() {
                Ok(p) => queue.push_back(p),
                Err(_) => break,
            }
        }
        let mut group = Vec::new();
        while let Some(next) = queue.front() {
            if !group.is_empty() && (group.len() >= GROUP || !next.put_finished()) {
                break;
            }
            if let Some(p) = queue.pop_front() {
                group.push(p);
            }
        }
        commit_group(&engine, group).await;
    }
}

/// Commits a group of flushes in one transaction (retrying database errors; a fenced commit
/// is final), then, flush by flush, caches and publishes the extents, answers the waiting
/// appends and truncates the WAL.
async fn commit_group(engine: &Engine, mut group: Vec<Prepared>) {
    let mut failed = None;
    for p in &mut group {
        p.await_put().await;
        if let Some(e) = p.put_error.take() {
            failed = Some(e);
        }
    }
    let mut commits: Vec<FlushCommit> = group
        .iter()
        .filter_map(|p| p.segment.as_ref().map(|s| s.commit.clone()))
        .collect();
    let committing = Instant::now();
    let mut fenced = HashSet::new();
    let outcome = match failed {
        Some(e) => Err(e),
        None if commits.is_empty() => Ok(()),
        None => commit_with_retries(engine, &mut commits, &mut fenced).await,
    };
    if !fenced.is_empty() {
        keep_fenced(engine, &group, &fenced);
    }
    metrics()
        .flush_commit_seconds
        .observe(committing.elapsed().as_secs_f64());
    for p in group {
        match &outcome {
            Ok(()) => {
                if let Some(segment) = &p.segment {
                    publish_segment(engine, segment, &fenced);
                }
                let span = p
                    .segment
                    .as_ref()
                    .map_or_else(tracing::Span::none, |s| s.span.clone());
                for (tp, w) in p.waiters {
                    let _ = w.send(if fenced.contains(&tp) {
                        Err(FlushFailure::Fenced(tp))
                    } else {
                        Ok(span.clone())
                    });
                }
                metrics().flushes.inc();
                metrics()
                    .flush_seconds
                    .observe(p.started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::error!(error = %e, "flush refused by the catalog; its appends fail");
                for (_, w) in p.waiters {
                    let _ = w.send(Err(FlushFailure::Failed(e.to_string())));
                }
            }
        }
        if let Some(roll) = p.roll {
            match roll.await {
                Ok(sealed) => {
                    if let Err(e) = engine.inner.wal.truncate_through(sealed) {
                        tracing::error!(error = %e, "cannot truncate the WAL");
                    }
                }
                Err(_) => tracing::error!("WAL writer stopped before sealing its file"),
            }
        }
    }
}

/// Commits `commits`, retrying database errors with backoff. A partition fenced by a newer
/// owner is taken out of every commit (its data is not this broker's to commit any more),
/// forgotten by the engine and added to `fenced`; the rest commits without it.
async fn commit_with_retries(
    engine: &Engine,
    commits: &mut [FlushCommit],
    fenced: &mut HashSet<TopicPartition>,
) -> Result<(), CatalogError> {
    let mut attempt = 0;
    loop {
        let span = tracing::debug_span!("catalog.commit", flushes = commits.len());
        match engine
            .inner
            .catalog
            .commit_flushes(commits)
            .instrument(span)
            .await
        {
            Ok(()) => return Ok(()),
            Err(CatalogError::Db(e)) => {
                metrics().flush_errors.inc();
                tracing::warn!(error = %e, flushes = commits.len(), "catalog commit failed; retrying");
                backoff(&mut attempt).await;
            }
            Err(CatalogError::Fenced { tp, epoch }) if fenced.insert(tp) => {
                tracing::warn!(%tp, %epoch, "partition fenced: another broker owns it now; dropping its unflushed data here");
                metrics().flush_fenced.inc();
                engine.forget(&[tp]);
                for c in commits.iter_mut() {
                    c.extents.retain(|(e, _)| e.tp != tp);
                    c.producers.retain(|p| p.tp != tp);
                    c.aborted.retain(|(t, _)| *t != tp);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keeps appends that could not be committed because their partition was lost (another
/// broker claimed it while this one was frozen or cut off) as if recovered from the WAL: if
/// this broker claims the partition again, those it acknowledged at `acks=1` and the new owner
/// does not hold are appended again ([`Engine::recover_orphans`](crate::engine::Engine)).
fn keep_aside(state: &mut crate::engine::IngestState, lost: Vec<Pending>) {
    for p in lost.into_iter().filter(|p| p.acked_early) {
        state.recovered.entry(p.tp).or_default().push(WalEntry {
            tp: p.tp,
            base_offset: p.base_offset,
            batch: p.batch.bytes().clone(),
        });
    }
}

/// [`keep_aside`] for the `acks=1` batches of fenced partitions in flushes whose commit
/// dropped them. (`acks=all` appends were answered with an error: the producer retries them
/// at the new owner, so they are not kept.)
fn keep_fenced(engine: &Engine, group: &[Prepared], fenced: &HashSet<TopicPartition>) {
    let mut state = engine.lock();
    for e in group
        .iter()
        .flat_map(|p| &p.acked_early)
        .filter(|e| fenced.contains(&e.tp))
    {
        state.recovered.entry(e.tp).or_default().push(e.clone());
    }
}

/// Makes a committed segment readable: its extents go into the read cache (so tailing
/// consumers never touch the object store) and the high watermarks move.
fn publish_segment(engine: &Engine, segment: &Segment, fenced: &HashSet<TopicPartition>) {
    let extents: Vec<Extent> = segment
        .metas
        .iter()
        .filter(|meta| !fenced.contains(&meta.tp))
        .map(|meta| Extent {
            meta: *meta,
            object_key: segment.key.clone(),
        })
        .collect();
    for e in &extents {
        let start = e.meta.byte_start as usize;
        let bytes =
            Bytes::copy_from_slice(&segment.object[start..start + e.meta.byte_len as usize]);
        engine.inner.cache.insert(e, bytes);
    }
    publish(engine, &extents, &segment.commit.aborted);
}

impl Prepared {
    /// Whether this flush's object is stored (or it has none).
    fn put_finished(&self) -> bool {
        self.segment
            .as_ref()
            .and_then(|s| s.put.as_ref())
            .is_none_or(|h| h.is_finished())
    }

    /// Waits for this flush's PUT (at most once; later calls return at once). A PUT task that
    /// died is kept in `put_error`, so the flush's commit fails instead of referencing an
    /// object that may not exist.
    async fn await_put(&mut self) {
        let Some(segment) = self.segment.as_mut() else {
            return;
        };
        let Some(put) = segment.put.take() else {
            return;
        };
        if let Err(e) = put.await {
            tracing::error!(error = %e, object = %segment.key, "segment PUT task failed");
            self.put_error = Some(CatalogError::Corrupt(format!(
                "PUT of {} failed: {e}",
                segment.key
            )));
        }
    }
}

/// Idempotent producers' state after this flush's batches: the flushed state advanced by
/// exactly the batches being flushed (never by later ones still in the buffer, which a crash
/// could lose while their sequence numbers stayed recorded). Flushes commit in the order they
/// are prepared, so advancing the view here, before the commit, keeps it in step.
///
/// Transactions advance the same way: a transactional batch opens its producer's transaction
/// on the partition, a marker ends it, and an abort marker yields the [`AbortedTxn`] entry
/// committed with it.
fn producer_updates(
    engine: &Engine,
    pending: &[Pending],
    epochs: &HashMap<TopicPartition, Epoch>,
) -> (Vec<ProducerState>, Vec<(TopicPartition, AbortedTxn)>) {
    let mut flushed = engine
        .inner
        .committed_producers
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut updated: HashMap<(TopicPartition, i64), ProducerEntry> = HashMap::new();
    let mut aborted = Vec::new();
    for p in pending.iter().filter(|p| epochs.contains_key(&p.tp)) {
        let pid = p.batch.producer_id();
        if pid < 0 {
            continue;
        }
        let entry = updated
            .entry((p.tp, pid))
            .or_insert_with(|| flushed.get(&(p.tp, pid)).cloned().unwrap_or_default());
        if let Some(commit) = p.batch.marker_commits() {
            if let Some(first) = entry.end_txn(p.batch.producer_epoch())
                && !commit
            {
                aborted.push((
                    p.tp,
                    AbortedTxn {
                        producer_id: pid,
                        first_offset: first,
                        last_offset: p.base_offset,
                    },
                ));
            }
        } else if let Some((_, epoch, first, last)) = producer_of(&p.batch) {
            let last_offset = p.base_offset.plus(p.batch.offset_count() - 1);
            entry.record(epoch, first, last, p.base_offset, last_offset);
            if p.batch.is_transactional() {
                entry.begin_txn(p.base_offset);
            }
        }
    }
    for (key, entry) in &updated {
        flushed.insert(*key, entry.clone());
    }
    let states = updated
        .into_iter()
        .map(|((tp, producer_id), entry)| ProducerState {
            tp,
            producer_id,
            entry,
        })
        .collect();
    (states, aborted)
}

/// Makes committed extents visible: tail index, transactions settled by the commit, and the
/// high watermark of each partition.
fn publish(engine: &Engine, extents: &[Extent], aborted: &[(TopicPartition, AbortedTxn)]) {
    let mut state = engine.lock();
    for e in extents {
        let tp = e.meta.tp;
        let Some(log) = state.partitions.get_mut(&tp) else {
            continue;
        };
        log.tail.push_back(e.clone());
        if log.tail.len() > crate::engine::TAIL_EXTENTS {
            log.tail.pop_front();
        }
        let hwm = e.meta.last_offset.plus(1);
        let settled = aborted
            .iter()
            .filter(|(t, a)| *t == tp && a.last_offset < hwm)
            .map(|(_, a)| *a);
        log.txns.settle(hwm, settled);
        log.hwm.send_replace(hwm);
    }
}
