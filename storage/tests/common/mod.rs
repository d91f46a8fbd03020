//! Helpers shared by the engine test files.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_storage::batch::Batch;
use strata_storage::cache::ReadCache;
use strata_storage::catalog::{Catalog, SqlCatalog};
use strata_storage::objects::ObjectStorage;
use strata_storage::{Engine, EngineConfig, TopicPartition};

/// Opens the engine of broker `id` on the SQLite catalog and local objects under `dir`, with
/// its WAL in `dir/wal-<id>`, claiming `tps`. Several brokers may share one `dir`.
pub async fn open_engine(
    dir: &Path,
    id: &str,
    flush_interval: Duration,
    flush_bytes: usize,
    tps: &[TopicPartition],
) -> Engine {
    let catalog: Arc<dyn Catalog> = Arc::new(
        SqlCatalog::connect(&format!("sqlite://{}/catalog.db", dir.display()))
            .await
            .unwrap(),
    );
    let objects = ObjectStorage::from_url(&format!("file://{}/objects", dir.display())).unwrap();
    let cache = ReadCache::open(8 << 20, None).await.unwrap();
    Engine::open(
        EngineConfig {
            broker_id: id.into(),
            wal_dir: dir.join(format!("wal-{id}")),
            flush_interval,
            flush_bytes,
        },
        catalog,
        objects,
        cache,
        tps,
    )
    .await
    .unwrap()
}

/// A valid uncompressed batch of `n` records (built by hand, as a producer would).
pub fn batch(n: usize, tag: u8) -> Batch {
    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    let mut records = Vec::new();
    for i in 0..n {
        let mut r = vec![0u8];
        varint(&mut r, 0);
        varint(&mut r, i as i64);
        varint(&mut r, -1);
        varint(&mut r, 3);
        r.extend_from_slice(&[tag, i as u8, b'!']);
        varint(&mut r, 0);
        varint(&mut records, r.len() as i64);
        records.extend_from_slice(&r);
    }
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((49 + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(n as i32 - 1).to_be_bytes());
    b.extend_from_slice(&1000i64.to_be_bytes());
    b.extend_from_slice(&1000i64.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&(n as i32).to_be_bytes());
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Batch::parse_all(Bytes::from(b), 1 << 20).unwrap().remove(0)
}
