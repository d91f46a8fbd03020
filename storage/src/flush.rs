//! The flusher: turns the pending buffer into one segment object per interval.
//!
//! Every `flush_interval`, or as soon as `flush_bytes` are pending, the flusher takes the
//! whole buffer and rolls the WAL at the same instant (under the ingest lock), so the sealed
//! WAL files hold exactly what this flush and earlier ones carry. It then:
//!
//! 1. builds one segment object holding every partition's batches (grouped by partition);
//! 2. PUTs it, retrying with backoff until the store takes it;
//! 3. commits the extents and new high watermarks to the catalog in one transaction fenced by
//!    each partition's epoch;
//! 4. publishes the new high watermarks (waking long-polling readers), fills the read cache
//!    with the fresh bytes, answers `acks=all` appends, and deletes the sealed WAL files.
//!
//! When nothing is pending, a tick does nothing: an idle broker makes no object-store calls.
//! Flushes run one at a time, so high watermarks advance in order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::catalog::{CatalogError, Extent, FlushCommit, ProducerState};
use crate::engine::{Engine, Pending};
use crate::metrics::metrics;
use crate::producers::{ProducerEntry, producer_of};
use crate::segment::{self, SegmentBuilder};
use crate::types::{Epoch, TopicPartition};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the flusher task for `engine`. It stops after a final flush once the engine's
/// shutdown flag is set.
pub(crate) fn spawn_flusher(engine: Engine) -> JoinHandle<()> {
    tokio::spawn(async move {
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
            flush_once(&engine).await;
            if stopping && engine.lock().pending.is_empty() {
                break;
            }
        }
        tracing::info!("flusher stopped; everything accepted is in the object store");
    })
}

/// What one flush took from the buffer.
struct Taken {
    pending: Vec<Pending>,
    epochs: HashMap<TopicPartition, Epoch>,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
    roll: Option<tokio::sync::oneshot::Receiver<u64>>,
}

fn take(engine: &Engine) -> Option<Taken> {
    let mut state = engine.lock();
    if state.pending.is_empty() {
        return None;
    }
    let pending = std::mem::take(&mut state.pending);
    state.pending_bytes = 0;
    metrics().unflushed_bytes.set(0);
    engine.inner.room.notify_waiters();
    let waiters = std::mem::take(&mut state.waiters);
    let epochs = pending
        .iter()
        .filter_map(|p| state.partitions.get(&p.tp).map(|l| (p.tp, l.epoch)))
        .collect();
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

/// Flushes what is pending, if anything. Retries transient failures until they succeed.
async fn flush_once(engine: &Engine) {
    let Some(mut taken) = take(engine) else {
        return;
    };
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
    let producers = producer_updates(engine, &taken.pending, &taken.epochs);
    let outcome = if builder.is_empty() {
        Ok(Vec::new()) // every partition in it was deleted meanwhile
    } else {
        write_segment(engine, builder, &taken.epochs, &producers).await
    };
    match outcome {
        Ok(extents) => {
            let mut committed = engine
                .inner
                .committed_producers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for p in producers {
                committed.insert((p.tp, p.producer_id), p.entry);
            }
            drop(committed);
            publish(engine, &extents);
            for w in taken.waiters {
                let _ = w.send(Ok(()));
            }
            metrics().flushes.inc();
            metrics()
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Err(e) => {
            tracing::error!(error = %e, "flush refused by the catalog; its appends fail");
            for w in taken.waiters {
                let _ = w.send(Err(e.to_string()));
            }
        }
    }
    if let Some(roll) = taken.roll {
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

/// PUTs the segment and commits it. Object-store and database errors are retried; a fenced
/// commit is final.
async fn write_segment(
    engine: &Engine,
    builder: SegmentBuilder,
    epochs: &HashMap<TopicPartition, Epoch>,
    producers: &[ProducerState],
) -> Result<Vec<Extent>, CatalogError> {
    let (object, metas) = builder.finish();
    let key = segment::new_key();
    metrics().flush_bytes.observe(object.len() as f64);
    let mut attempt = 0;
    while let Err(e) = engine.inner.objects.put(&key, object.clone()).await {
        metrics().flush_errors.inc();
        tracing::warn!(error = %e, object = %key, "segment PUT failed; retrying");
        backoff(&mut attempt).await;
    }
    let commit = FlushCommit {
        object_key: key.clone(),
        object_size: object.len() as u64,
        extents: metas.iter().map(|m| (*m, epochs[&m.tp])).collect(),
        producers: producers.to_vec(),
    };
    let mut attempt = 0;
    loop {
        match engine.inner.catalog.commit_flush(&commit).await {
            Ok(()) => break,
            Err(CatalogError::Db(e)) => {
                metrics().flush_errors.inc();
                tracing::warn!(error = %e, object = %key, "catalog commit failed; retrying");
                backoff(&mut attempt).await;
            }
            Err(e) => return Err(e),
        }
    }
    let extents: Vec<Extent> = metas
        .into_iter()
        .map(|meta| Extent {
            meta,
            object_key: key.clone(),
        })
        .collect();
    for e in &extents {
        let start = e.meta.byte_start as usize;
        let bytes = Bytes::copy_from_slice(&object[start..start + e.meta.byte_len as usize]);
        engine.inner.cache.insert(e, bytes);
    }
    Ok(extents)
}

/// Idempotent producers' state after this flush's batches: the committed state advanced by
/// exactly the batches being flushed (never by later ones still in the buffer, which a crash
/// could lose while their sequence numbers stayed recorded).
fn producer_updates(
    engine: &Engine,
    pending: &[Pending],
    epochs: &HashMap<TopicPartition, Epoch>,
) -> Vec<ProducerState> {
    let committed = engine
        .inner
        .committed_producers
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut updated: HashMap<(TopicPartition, i64), ProducerEntry> = HashMap::new();
    for p in pending.iter().filter(|p| epochs.contains_key(&p.tp)) {
        if let Some((pid, epoch, first, last)) = producer_of(&p.batch) {
            let entry = updated
                .entry((p.tp, pid))
                .or_insert_with(|| committed.get(&(p.tp, pid)).cloned().unwrap_or_default());
            let last_offset = p.base_offset.plus(p.batch.offset_count() - 1);
            entry.record(epoch, first, last, p.base_offset, last_offset);
        }
    }
    updated
        .into_iter()
        .map(|((tp, producer_id), entry)| ProducerState {
            tp,
            producer_id,
            entry,
        })
        .collect()
}

/// Makes committed extents visible: tail index and high watermark of each partition.
fn publish(engine: &Engine, extents: &[Extent]) {
    let mut state = engine.lock();
    for e in extents {
        let Some(log) = state.partitions.get_mut(&e.meta.tp) else {
            continue;
        };
        log.tail.push_back(e.clone());
        if log.tail.len() > crate::engine::TAIL_EXTENTS {
            log.tail.pop_front();
        }
        log.hwm.send_replace(e.meta.last_offset.plus(1));
    }
}
