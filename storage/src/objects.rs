//! Object store access: one handle for every backend, with every call counted.
//!
//! The backend is chosen by URL — `file://DIR`, `s3://BUCKET/PREFIX`, `gs://…`, `az://…`,
//! `memory://` — and built by the `object_store` crate from the standard environment
//! variables of each cloud (`AWS_ENDPOINT_URL`, `AWS_REGION`, `GOOGLE_*`, `AZURE_*`, …), so
//! deployment needs nothing Strata-specific. The URL's path becomes a key prefix.
//!
//! [`ObjectStorage`] sits above the backend and counts each call by operation and bytes in
//! the process metrics (`strata_object_store_requests_total{op}`,
//! `strata_object_store_bytes_total{op}`): the cost of running Strata is mostly a count of
//! these calls, so it is measured where they are made.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use thiserror::Error;

use crate::metrics::metrics;
use crate::simulate::{Delay, LatencySim};

/// What went wrong talking to the object store.
#[derive(Debug, Error)]
pub enum ObjectsError {
    /// The URL could not be understood.
    #[error("object store URL '{url}' is not usable: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The object does not exist.
    #[error("object '{0}' not found")]
    NotFound(String),
    /// Any other failure of the backend.
    #[error("object store {op} of '{key}' failed: {source}")]
    Backend {
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// The backend's error.
        source: object_store::Error,
    },
}

/// Metadata of one stored object, as a listing returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// A counted handle to the object store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// Simulated latency for load tests; `None` in normal operation.
    sim: Option<LatencySim>,
}

fn bad_url(url: &str, reason: impl ToString) -> ObjectsError {
    ObjectsError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

impl ObjectStorage {
    /// Opens the store named by `url`. A `file://` directory is created if missing.
    pub fn from_url(url: &str) -> Result<ObjectStorage, ObjectsError> {
        let parsed = url::Url::parse(url).map_err(|e| bad_url(url, e))?;
        let prefix = Path::from(parsed.path().trim_matches('/'));
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad_url(url, "not a local path"))?;
                std::fs::create_dir_all(&dir).map_err(|e| bad_url(url, e))?;
                // fsync: an object acknowledged as durable (acks=all) must survive a power
                // loss, as it would on S3; without it, it could sit only in the page cache
                // after the WAL that also held it was truncated.
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad_url(url, e))?
                    .with_automatic_cleanup(true)
                    .with_fsync(true);
                return Ok(ObjectStorage {
                    store: Arc::new(fs),
                    prefix: Path::default(),
                    url: url.to_string(),
                    sim: None,
                });
            }
            "memory" => Arc::new(InMemory::new()),
            "s3" | "s3a" => Arc::new(
                AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad_url(url, e))?,
            ),
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad_url(url, e))?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad_url(url, e))?,
            ),
            other => {
                return Err(bad_url(
                    url,
                    format!("scheme '{other}' is not one of file, s3, gs, az, memory"),
                ));
            }
        };
        Ok(ObjectStorage {
            store,
            prefix,
            url: url.to_string(),
            sim: None,
        })
    }

    /// The same store with every PUT and GET delayed as `sim` says (load tests only).
    pub fn with_simulated_latency(mut self, sim: LatencySim) -> ObjectStorage {
        self.sim = Some(sim);
        self
    }

    async fn simulate(&self, delay: impl Fn(&LatencySim) -> Delay) {
        if let Some(sim) = &self.sim {
            tokio::time::sleep(delay(sim).sample()).await;
        }
    }

    /// The URL this store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix.as_ref()))
        }
    }

    fn record<T>(
        &self,
        op: &'static str,
        key: &str,
        bytes: u64,
        started: Instant,
        result: Result<T, object_store::Error>,
    ) -> Result<T, ObjectsError> {
        let m = metrics();
        m.object_store_requests.with_label_values(&[op]).inc();
        m.object_store_bytes.with_label_values(&[op]).inc_by(bytes);
        m.object_store_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|source| {
            m.object_store_errors.with_label_values(&[op]).inc();
            match source {
                object_store::Error::NotFound { .. } => ObjectsError::NotFound(key.to_string()),
                source => ObjectsError::Backend {
                    op,
                    key: key.to_string(),
                    source,
                },
            }
        })
    }

    /// Writes a whole object atomically.
    #[tracing::instrument(name = "object_store.put", level = "debug", skip(self, data), fields(bytes = data.len()))]
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectsError> {
        let started = Instant::now();
        self.simulate(|s| s.put).await;
        let len = data.len() as u64;
        let result = self
            .store
            .put(&self.path(key), PutPayload::from_bytes(data))
            .await;
        self.record("put", key, len, started, result).map(|_| ())
    }

    /// Reads a byte range of an object.
    #[tracing::instrument(name = "object_store.get", level = "debug", skip(self))]
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectsError> {
        let started = Instant::now();
        self.simulate(|s| s.get).await;
        let result = self.store.get_range(&self.path(key), range).await;
        let len = result.as_ref().map_or(0, |b| b.len() as u64);
        self.record("get", key, len, started, result)
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, ObjectsError> {
        let started = Instant::now();
        self.simulate(|s| s.get).await;
        let result = match self.store.get(&self.path(key)).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        let len = result.as_ref().map_or(0, |b| b.len() as u64);
        self.record("get", key, len, started, result)
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectsError> {
        let started = Instant::now();
        let result = self.store.delete(&self.path(key)).await;
        match self.record("delete", key, 0, started, result) {
            Err(ObjectsError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Lists the objects under `prefix` (relative to the store's own prefix).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectsError> {
        let started = Instant::now();
        let full = self.path(prefix);
        let result: Result<Vec<_>, _> = self.store.list(Some(&full)).try_collect().await;
        let strip = if self.prefix.as_ref().is_empty() {
            0
        } else {
            self.prefix.as_ref().len() + 1
        };
        self.record("list", prefix, 0, started, result)
            .map(|metas| {
                metas
                    .into_iter()
                    .map(|m| ObjectInfo {
                        key: m.location.as_ref()[strip..].to_string(),
                        size: m.size,
                    })
                    .collect()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_round_trips_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/objects", dir.path().display());
        let store = ObjectStorage::from_url(&url).unwrap();
        let puts = metrics()
            .object_store_requests
            .with_label_values(&["put"])
            .get();
        store
            .put("segments/a.seg", Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        // Other tests share the process metrics, so only a lower bound holds.
        assert!(
            metrics()
                .object_store_requests
                .with_label_values(&["put"])
                .get()
                > puts
        );
        assert_eq!(
            store.get_range("segments/a.seg", 6..11).await.unwrap(),
            Bytes::from_static(b"world")
        );
        let listed = store.list("segments").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "segments/a.seg");
        store.delete("segments/a.seg").await.unwrap();
        assert!(matches!(
            store.get("segments/a.seg").await,
            Err(ObjectsError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn prefixed_memory_store_strips_prefix() {
        let store = ObjectStorage::from_url("memory://bucket/some/prefix").unwrap();
        store.put("x/y", Bytes::from_static(b"1")).await.unwrap();
        let listed = store.list("x").await.unwrap();
        assert_eq!(listed[0].key, "x/y");
    }

    #[test]
    fn unknown_scheme_is_refused() {
        assert!(matches!(
            ObjectStorage::from_url("ftp://x/y"),
            Err(ObjectsError::BadUrl { .. })
        ));
    }
}
