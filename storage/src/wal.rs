//! The local write-ahead log: what makes `acks=1` durable before data reaches the object store.
//!
//! One WAL per broker, shared by all partitions, as a sequence of files `wal/<seq>.wal`. Each
//! entry is framed as `[payload length u32][CRC32C of payload u32][payload]`, and the payload
//! holds the partition, the offset the broker assigned and the batch bytes.
//!
//! **Group commit.** Appends are handed to one writer thread through a channel. The thread
//! takes every append that is waiting, writes them all, calls `fdatasync` once and then wakes
//! every waiter: while one sync runs, the next group gathers. Under load a single sync covers
//! hundreds of appends; when idle, an append waits for one sync only.
//!
//! **Truncation.** The flusher *rolls* the WAL (seals the current file, starts the next) at the
//! same moment it takes the batches it will flush, so every entry in a sealed file is in that
//! flush or an earlier one. Once the flush is committed to the catalog, the sealed files are
//! deleted.
//!
//! **Recovery.** On open, every file is read in order. An entry whose length runs past the end
//! of the file or whose CRC does not match is a torn tail from a crash mid-write: the file is cut
//! there and the rest ignored. The surviving entries are returned so the broker can flush those
//! the catalog does not yet have.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::metrics::metrics;
use crate::types::{Offset, PartitionId, TopicId, TopicPartition};

const FRAME_HEADER: usize = 8;
const PAYLOAD_HEADER: usize = 16 + 4 + 8;
/// Entries larger than this are refused; it bounds what recovery will allocate for a length
/// read from a possibly corrupt file.
pub const MAX_ENTRY_BYTES: usize = 256 << 20;

/// What can go wrong in the WAL.
#[derive(Debug, Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The writer thread has stopped (the broker is shutting down, or it hit an error).
    #[error("WAL writer has stopped")]
    Closed,
    /// An append failed to reach the disk; the message is the underlying error.
    #[error("WAL write failed: {0}")]
    WriteFailed(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One appended batch, as recovery returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// The partition the batch belongs to.
    pub tp: TopicPartition,
    /// The offset the broker assigned to the batch's first record.
    pub base_offset: Offset,
    /// The batch bytes.
    pub batch: Bytes,
}

impl WalEntry {
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(FRAME_HEADER + PAYLOAD_HEADER + self.batch.len());
        buf.put_u32((PAYLOAD_HEADER + self.batch.len()) as u32);
        buf.put_u32(0);
        buf.put_slice(self.tp.topic.0.as_bytes());
        buf.put_i32(self.tp.partition.0);
        buf.put_i64(self.base_offset.0);
        buf.put_slice(&self.batch);
        let crc = crc32c::crc32c(&buf[FRAME_HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_be_bytes());
        buf.freeze()
    }

    fn decode(mut payload: Bytes) -> Option<WalEntry> {
        if payload.len() < PAYLOAD_HEADER {
            return None;
        }
        let mut uuid = [0u8; 16];
        payload.copy_to_slice(&mut uuid);
        let partition = payload.get_i32();
        let base_offset = payload.get_i64();
        Some(WalEntry {
            tp: TopicPartition {
                topic: TopicId(uuid::Uuid::from_bytes(uuid)),
                partition: PartitionId(partition),
            },
            base_offset: Offset(base_offset),
            batch: payload,
        })
    }
}

enum Command {
    Append {
        frame: Bytes,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    Roll {
        done: oneshot::Sender<u64>,
    },
    Barrier {
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Handle to the WAL. Cheap to clone; every clone feeds the same writer thread.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Command>,
    dir: PathBuf,
}

/// A pending append's durability: resolves once the entry is on disk.
pub struct Durable(oneshot::Receiver<Result<(), String>>);

impl Durable {
    /// Waits for the group commit that covers this append.
    pub async fn wait(self) -> Result<(), WalError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WalError::WriteFailed(e)),
            Err(_) => Err(WalError::Closed),
        }
    }
}

fn file_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// The sequence numbers of the WAL files in `dir`, in order.
fn list_files(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Reads one WAL file, returning its good entries and cutting the file at a torn tail.
fn recover_file(path: &Path) -> Result<Vec<WalEntry>, WalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    let data = Bytes::from(data);
    let mut entries = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(end) = frame_end(&data, pos) else {
            break;
        };
        match WalEntry::decode(data.slice(pos + FRAME_HEADER..end)) {
            Some(entry) => entries.push(entry),
            None => break,
        }
        pos = end;
    }
    if pos < data.len() {
        tracing::warn!(
            file = %path.display(),
            kept_bytes = pos,
            cut_bytes = data.len() - pos,
            "WAL has a torn or corrupt tail; cutting it"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(pos as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(entries)
}

/// Where the frame starting at `pos` ends, if it is whole and its CRC matches.
fn frame_end(data: &[u8], pos: usize) -> Option<usize> {
    let header = data.get(pos..pos + FRAME_HEADER)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if !(PAYLOAD_HEADER..=MAX_ENTRY_BYTES).contains(&len) {
        return None;
    }
    let end = pos + FRAME_HEADER + len;
    let payload = data.get(pos + FRAME_HEADER..end)?;
    (crc32c::crc32c(payload) == crc).then_some(end)
}

impl Wal {
    /// Opens the WAL in `dir` (creating it), recovers every entry it holds and starts the
    /// writer thread on a fresh file. The returned entries are in append order.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<WalEntry>), WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let seqs = list_files(dir)?;
        let mut entries = Vec::new();
        for &seq in &seqs {
            entries.extend(recover_file(&file_path(dir, seq))?);
        }
        let next = seqs.last().map_or(0, |s| s + 1);
        let writer = Writer::create(dir, next)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("strata-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        Ok((
            Wal {
                tx,
                dir: dir.to_path_buf(),
            },
            entries,
        ))
    }

    /// Queues an entry for the next group commit. Entries are written in the order of the
    /// calls to `append`, so a caller that holds a lock while appending gets that order on
    /// disk. With `wait_durable`, the returned handle resolves once the entry is synced.
    pub fn append(
        &self,
        entry: &WalEntry,
        wait_durable: bool,
    ) -> Result<Option<Durable>, WalError> {
        let (done, rx) = if wait_durable {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(Durable(rx)))
        } else {
            (None, None)
        };
        self.tx
            .send(Command::Append {
                frame: entry.encode(),
                done,
            })
            .map_err(|_| WalError::Closed)?;
        Ok(rx)
    }

    /// A handle that resolves once everything queued so far is synced, without writing
    /// anything itself.
    pub fn barrier(&self) -> Result<Durable, WalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Barrier { done })
            .map_err(|_| WalError::Closed)?;
        Ok(Durable(rx))
    }

    /// Seals the current file after every entry queued so far and starts a new one. The
    /// receiver yields the sequence number of the sealed file: once everything appended before
    /// the roll is committed elsewhere, [`Wal::truncate_through`] with it deletes those files.
    /// Queuing is synchronous, so a caller holding a lock knows exactly which appends precede
    /// the roll.
    pub fn start_roll(&self) -> Result<oneshot::Receiver<u64>, WalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Roll { done })
            .map_err(|_| WalError::Closed)?;
        Ok(rx)
    }

    /// [`Wal::start_roll`], waiting for the sealed file's sequence number.
    pub async fn roll(&self) -> Result<u64, WalError> {
        self.start_roll()?.await.map_err(|_| WalError::Closed)
    }

    /// Deletes every sealed file with a sequence number up to and including `seq`.
    pub fn truncate_through(&self, seq: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        for s in list_files(&self.dir)?.into_iter().take_while(|s| *s <= seq) {
            let path = file_path(&self.dir, s);
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// The writer thread's state: the open file and its sequence number.
struct Writer {
    dir: PathBuf,
    seq: u64,
    file: BufWriter<File>,
}

impl Writer {
    fn create(dir: &Path, seq: u64) -> Result<Writer, WalError> {
        let path = file_path(dir, seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // Make the new file's directory entry durable, or a crash could lose the whole file.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            seq,
            file: BufWriter::with_capacity(1 << 20, file),
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        metrics().wal_syncs.inc();
        Ok(())
    }

    /// The group-commit loop: block for one command, take all that are waiting, write them,
    /// sync once, answer everyone.
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut waiters = Vec::new();
        let mut rolls = Vec::new();
        while let Ok(first) = rx.recv() {
            let started = Instant::now();
            let mut result: io::Result<()> = Ok(());
            let mut written = false;
            for cmd in std::iter::once(first).chain(rx.try_iter()) {
                match cmd {
                    Command::Append { frame, done } => {
                        if result.is_ok() {
                            result = self.file.write_all(&frame);
                            metrics().wal_appends.inc();
                            metrics().wal_bytes.inc_by(frame.len() as u64);
                        }
                        written = true;
                        waiters.extend(done);
                    }
                    Command::Barrier { done } => {
                        // Sync even if nothing new was written: earlier groups are synced
                        // already, so this costs one cheap fdatasync at most.
                        written = true;
                        waiters.push(done);
                    }
                    Command::Roll { done } => {
                        if written && result.is_ok() {
                            result = self.sync();
                        }
                        written = false;
                        match Writer::create(&self.dir, self.seq + 1) {
                            Ok(next) => {
                                rolls.push((done, self.seq));
                                self = next;
                            }
                            Err(e) => tracing::error!(error = %e, "cannot start a new WAL file"),
                        }
                    }
                }
            }
            if written && result.is_ok() {
                result = self.sync();
            }
            metrics()
                .wal_sync_seconds
                .observe(started.elapsed().as_secs_f64());
            let outcome = result.map_err(|e| {
                tracing::error!(error = %e, seq = self.seq, "WAL write failed");
                e.to_string()
            });
            for w in waiters.drain(..) {
                let _ = w.send(outcome.clone());
            }
            for (done, sealed) in rolls.drain(..) {
                let _ = done.send(sealed);
            }
        }
        // Every sender is gone: the broker is shutting down. Sync what is buffered.
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "final WAL sync failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: i64) -> WalEntry {
        WalEntry {
            tp: TopicPartition {
                topic: TopicId(uuid::Uuid::from_u128(7)),
                partition: PartitionId((i % 3) as i32),
            },
            base_offset: Offset(i),
            batch: Bytes::from(vec![i as u8; 100 + i as usize]),
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_roll_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, recovered) = Wal::open(dir.path()).unwrap();
        assert!(recovered.is_empty());
        let mut waits = Vec::new();
        for i in 0..10 {
            waits.push(wal.append(&entry(i), true).unwrap().unwrap());
        }
        for w in waits {
            w.wait().await.unwrap();
        }
        let sealed = wal.roll().await.unwrap();
        wal.append(&entry(10), true)
            .unwrap()
            .unwrap()
            .wait()
            .await
            .unwrap();
        drop(wal);
        let (_wal2, recovered) = Wal::open(dir.path()).unwrap();
        assert_eq!(recovered, (0..11).map(entry).collect::<Vec<_>>());
        _wal2.truncate_through(sealed).unwrap();
        drop(_wal2);
        let (_wal3, recovered) = Wal::open(dir.path()).unwrap();
        assert_eq!(recovered, vec![entry(10)]);
    }

    #[tokio::test]
    async fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        for i in 0..5 {
            wal.append(&entry(i), true)
                .unwrap()
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
        drop(wal);
        let seq = *list_files(dir.path()).unwrap().first().unwrap();
        let path = file_path(dir.path(), seq);
        let good_len = fs::metadata(&path).unwrap().len();
        // A half-written entry: a length that promises more than is there.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&entry(5).encode()[..50]).unwrap();
        drop(f);
        let (_wal, recovered) = Wal::open(dir.path()).unwrap();
        assert_eq!(recovered, (0..5).map(entry).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
    }

    #[tokio::test]
    async fn corrupt_entry_ends_recovery_of_that_file() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        for i in 0..3 {
            wal.append(&entry(i), true)
                .unwrap()
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
        drop(wal);
        let seq = *list_files(dir.path()).unwrap().first().unwrap();
        let path = file_path(dir.path(), seq);
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 10;
        data[last] ^= 0xff;
        fs::write(&path, data).unwrap();
        let (_wal, recovered) = Wal::open(dir.path()).unwrap();
        assert_eq!(recovered, (0..2).map(entry).collect::<Vec<_>>());
    }
}
