//! The broker core: topics, produce, fetch and offsets, independent of any wire protocol.
//!
//! Front ends decode their requests into calls on [`Broker`] and encode what it returns; the
//! core never sees protocol bytes other than record batches. One core, thin front ends: a
//! record produced over one protocol is the same record, at the same offset, on every other.

mod error;
pub mod groups;
pub mod topics;
pub mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use strata_storage::batch::Batch;
use strata_storage::catalog::{Catalog, TopicMeta, tp};
use strata_storage::fetch::ReadResult;
use strata_storage::{Acks, Engine, Offset, TopicPartition};
use tokio::sync::watch;
use tracing::Instrument;

pub use error::BrokerError;
pub use topics::{ConfigEntry, TopicConfig, TopicDefaults};

use topics::CompressionPolicy;

use crate::cluster::Membership;

/// zstd level for recompressing uncompressed batches. Level 1 compresses about twice as fast
/// as level 3 for a few percent less reduction on event-like records; on ingest, broker CPU
/// is the scarcer resource (measured with `strata-loadtest run W1`).
const ZSTD_LEVEL: i32 = 1;

/// Long polls never wait longer than this, whatever the client asks, so no request hangs.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);

/// How often a long poll on a partition another broker owns looks for new commits.
const NON_OWNER_POLL: Duration = Duration::from_millis(100);

/// Produce timeouts are capped here, so no request waits unboundedly.
const MAX_PRODUCE_TIMEOUT: Duration = Duration::from_secs(300);

/// Used when a client sends a non-positive produce timeout.
const DEFAULT_PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The ack level a client's `acks` number asks for: Kafka's `0`, `1` and `-1` (all), which the
/// native protocol uses too.
pub fn acks(value: i16) -> Result<Acks, BrokerError> {
    match value {
        0 => Ok(Acks::None),
        1 => Ok(Acks::Wal),
        -1 => Ok(Acks::All),
        _ => Err(BrokerError::InvalidRequiredAcks(value)),
    }
}

/// A client's produce timeout in milliseconds, made sane: non-positive means the default,
/// and nothing waits longer than five minutes.
pub fn produce_timeout(ms: i64) -> Duration {
    match ms {
        t if t <= 0 => DEFAULT_PRODUCE_TIMEOUT,
        t => Duration::from_millis(t as u64).min(MAX_PRODUCE_TIMEOUT),
    }
}

/// Broker-wide settings the core needs. How clients reach this broker (its advertised
/// addresses and zone) lives in its [`Membership`], which tells every broker's.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This broker's node id.
    pub node_id: i32,
    /// Create unknown topics on first use (Kafka's `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    pub default_partitions: i32,
    /// Defaults for topic configs.
    pub topic_defaults: TopicDefaults,
    /// Consumer group coordinator settings.
    pub groups: groups::GroupConfig,
}

/// A topic as the core serves it: catalog metadata plus parsed configs.
#[derive(Debug, Clone)]
pub struct Topic {
    /// What the catalog holds.
    pub meta: TopicMeta,
    /// The configs the produce path acts on.
    pub config: TopicConfig,
}

impl Topic {
    /// The partition `p` of this topic, if it exists.
    pub fn partition(&self, p: i32) -> Result<TopicPartition, BrokerError> {
        if (0..self.meta.partitions).contains(&p) {
            Ok(tp(self.meta.id, p))
        } else {
            Err(BrokerError::UnknownPartition {
                topic: self.meta.name.clone(),
                partition: p,
            })
        }
    }
}

/// Where ListOffsets should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
    /// The last stable offset: the end of what `read_committed` consumers can read.
    LastStable,
    /// The first record at or after this timestamp (ms).
    Timestamp(i64),
    /// The first record with the largest timestamp (KIP-734).
    MaxTimestamp,
}

/// The broker core. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    engine: Engine,
    catalog: Arc<dyn Catalog>,
    config: Arc<BrokerConfig>,
    topics: Arc<RwLock<HashMap<String, Arc<Topic>>>>,
    groups: groups::Coordinator,
    membership: Arc<Membership>,
    /// Serialises the requests of each transactional id (see [`txn`]).
    txn_locks: Arc<txn::TxnLocks>,
}

impl Broker {
    /// Builds the core over an open engine, loading every topic from the catalog. Partitions
    /// are claimed by the cluster's heartbeat ([`crate::cluster::reconcile`]).
    pub async fn open(
        engine: Engine,
        config: BrokerConfig,
        membership: Arc<Membership>,
    ) -> Result<Broker, BrokerError> {
        let catalog = engine.catalog().clone();
        let groups =
            groups::Coordinator::new(catalog.clone(), config.groups.clone(), membership.clone());
        let broker = Broker {
            engine,
            catalog,
            config: Arc::new(config),
            topics: Arc::new(RwLock::new(HashMap::new())),
            groups,
            membership,
            txn_locks: Arc::default(),
        };
        for meta in broker.catalog.list_topics().await? {
            broker.remember(meta);
        }
        Ok(broker)
    }

    /// Every partition of every topic in `metas`, for claiming at start-up.
    pub fn all_partitions(metas: &[TopicMeta]) -> Vec<TopicPartition> {
        metas
            .iter()
            .flat_map(|m| (0..m.partitions).map(move |p| tp(m.id, p)))
            .collect()
    }

    /// The broker's settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The storage engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// What this broker knows of the cluster: members, owners, placement.
    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// Whether `tp` belongs to a topic this broker knows.
    pub fn knows_partition(&self, tp: TopicPartition) -> bool {
        self.topic_by_id(tp.topic)
            .is_some_and(|t| tp.partition.0 < t.meta.partitions)
    }

    /// Brings the topic cache in line with the catalog: topics created, grown, reconfigured or
    /// deleted through other brokers. Partitions of deleted topics are forgotten.
    pub async fn sync_topics(&self) -> Result<(), BrokerError> {
        let metas = self.catalog.list_topics().await?;
        for gone in self
            .topics()
            .into_iter()
            .filter(|t| !metas.iter().any(|m| m.id == t.meta.id))
        {
            // Created here after the list was read? Then it is not gone.
            if self
                .catalog
                .topic(&gone.meta.name)
                .await?
                .is_some_and(|m| m.id == gone.meta.id)
            {
                continue;
            }
            self.topics
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&gone.meta.name);
            self.engine
                .forget(&Broker::all_partitions(std::slice::from_ref(&gone.meta)));
        }
        for meta in metas {
            if self.cached(&meta.name).is_none_or(|t| t.meta != meta) {
                self.remember(meta);
            }
        }
        Ok(())
    }

    /// Claims, at their first epoch, the new partitions this broker should own; the owners
    /// of the others claim theirs at their next heartbeat.
    async fn claim_new(
        &self,
        tps: impl Iterator<Item = TopicPartition>,
    ) -> Result<(), BrokerError> {
        let me = Some(self.membership.me().node_id);
        let mine: Vec<_> = tps
            .filter(|tp| self.membership.desired_owner(*tp) == me)
            .map(|tp| (tp, strata_storage::Epoch(0)))
            .collect();
        self.engine.claim_at(&mine).await?;
        Ok(())
    }

    /// The consumer group coordinator.
    pub fn groups(&self) -> &groups::Coordinator {
        &self.groups
    }

    /// The topic holding partition `tp`, by id (for committed offsets, which the catalog keys
    /// by topic id).
    pub fn topic_by_id(&self, id: strata_storage::TopicId) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|t| t.meta.id == id)
            .cloned()
    }

    fn remember(&self, meta: TopicMeta) -> Arc<Topic> {
        let config = TopicConfig::resolve(&meta.configs, &self.config.topic_defaults);
        let topic = Arc::new(Topic { meta, config });
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.meta.name.clone(), topic.clone());
        topic
    }

    fn cached(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        all
    }

    /// A topic by name; with `auto_create` (and the broker allowing it), a missing topic is
    /// created with the default partition count.
    pub async fn topic(&self, name: &str, auto_create: bool) -> Result<Arc<Topic>, BrokerError> {
        if let Some(t) = self.cached(name) {
            return Ok(t);
        }
        // Created through another broker since the last heartbeat?
        if let Some(meta) = self.catalog.topic(name).await? {
            return Ok(self.remember(meta));
        }
        if !(auto_create && self.config.auto_create_topics) {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        }
        topics::validate_name(name)?;
        match self
            .create_topic(
                name,
                self.config.default_partitions,
                &BTreeMap::new(),
                false,
            )
            .await
        {
            Ok(t) => {
                tracing::info!(topic = name, "auto-created topic");
                Ok(t)
            }
            // Another request created it meanwhile.
            Err(BrokerError::TopicExists(_)) => self
                .cached(name)
                .ok_or_else(|| BrokerError::UnknownTopic(name.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Creates a topic (or, with `validate_only`, checks that it could be created).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        topics::validate_name(name)?;
        if !(1..=100_000).contains(&partitions) {
            return Err(BrokerError::InvalidPartitions(format!(
                "number of partitions must be between 1 and 100000, not {partitions}"
            )));
        }
        topics::validate_configs(configs)?;
        if self.cached(name).is_some() {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        if validate_only {
            let meta = TopicMeta {
                id: strata_storage::TopicId::random(),
                name: name.to_string(),
                partitions,
                configs: configs.clone(),
            };
            let config = TopicConfig::resolve(configs, &self.config.topic_defaults);
            return Ok(Arc::new(Topic { meta, config }));
        }
        let meta = self.catalog.create_topic(name, partitions, configs).await?;
        let topic = self.remember(meta);
        self.claim_new(Broker::all_partitions(std::slice::from_ref(&topic.meta)).into_iter())
            .await?;
        Ok(topic)
    }

    /// Deletes a topic and forgets its partitions.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let meta = self.catalog.delete_topic(name).await?;
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.engine
            .forget(&Broker::all_partitions(std::slice::from_ref(&meta)));
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Grows a topic to `total` partitions.
    pub async fn create_partitions(
        &self,
        name: &str,
        total: i32,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let topic = self.topic(name, false).await?;
        if total <= topic.meta.partitions || total > 100_000 {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic '{name}' has {} partitions; the new count must be larger (and at most 100000), not {total}",
                topic.meta.partitions
            )));
        }
        if validate_only {
            return Ok(());
        }
        let meta = self.catalog.add_partitions(name, total).await?;
        let id = meta.id;
        self.remember(meta);
        self.claim_new((topic.meta.partitions..total).map(|p| tp(id, p)))
            .await?;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) topic configs, checking every new value first so a
    /// bad one changes nothing.
    pub async fn alter_configs(
        &self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<Arc<Topic>, BrokerError> {
        self.topic(name, false).await?;
        let set: BTreeMap<String, String> = changes
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
            .collect();
        topics::validate_configs(&set)?;
        for name in changes.keys() {
            topics::validate_name_of_config(name)?;
        }
        let meta = self.catalog.alter_topic_configs(name, changes).await?;
        tracing::info!(topic = name, ?changes, "altered topic configs");
        Ok(self.remember(meta))
    }

    /// Every known config of a topic, with its effective value.
    pub async fn describe_configs(&self, name: &str) -> Result<Vec<ConfigEntry>, BrokerError> {
        let topic = self.topic(name, false).await?;
        Ok(topics::describe(
            &topic.meta.configs,
            &self.config.topic_defaults,
        ))
    }

    /// Checks a produce request's records for one partition and appends them. Returns once
    /// offsets are assigned (so that a connection's requests are sequenced in arrival order);
    /// the returned future resolves when the write is as durable as `acks` asks.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: Acks,
        timeout: Duration,
    ) -> Result<
        impl std::future::Future<Output = Result<Offset, BrokerError>> + Send + 'static,
        BrokerError,
    > {
        let (_, durable) = self
            .produce_sequenced(topic, partition, records, acks, timeout)
            .await?;
        Ok(durable)
    }

    /// [`Broker::produce`], also telling the offset the records got as soon as they have it
    /// (for a retried idempotent batch, the offset it got the first time), so a front end can
    /// answer early and let the client send the partition's next request in order.
    pub async fn produce_sequenced(
        &self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: Acks,
        timeout: Duration,
    ) -> Result<
        (
            Offset,
            impl std::future::Future<Output = Result<Offset, BrokerError>> + Send + 'static,
        ),
        BrokerError,
    > {
        let topic = self.topic(topic, false).await?;
        let tp = topic.partition(partition)?;
        let mut batches = Batch::parse_all(records, topic.config.max_message_bytes)?;
        if topic.config.compression == CompressionPolicy::Zstd {
            batches = batches
                .into_iter()
                .map(|b| b.compress_zstd(ZSTD_LEVEL))
                .collect();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if !self.engine.wait_for_room(deadline).await {
            return Err(BrokerError::Timeout(timeout.as_millis() as u64));
        }
        let appended = tracing::debug_span!("storage.append", %tp)
            .in_scope(|| self.engine.append(tp, batches, acks))?;
        let base_offset = appended.base_offset;
        let durable = tracing::debug_span!("storage.durable", %tp, acks = ?acks);
        Ok((
            base_offset,
            async move {
                match tokio::time::timeout_at(deadline, appended.durable()).await {
                    Ok(result) => result.map_err(BrokerError::from),
                    Err(_) => Err(BrokerError::Timeout(timeout.as_millis() as u64)),
                }
            }
            .instrument(durable),
        ))
    }

    /// A producer id for an idempotent producer: always a fresh one at epoch 0, as Kafka's
    /// coordinator answers every InitProducerId without a transactional id (also the KIP-360
    /// re-initialisation that names the current id and epoch).
    pub async fn init_producer_id(&self) -> Result<(i64, i16), BrokerError> {
        Ok((self.catalog.allocate_producer_id().await?, 0))
    }

    /// Reads committed batches of one partition from `offset`, up to about `max_bytes`.
    pub async fn fetch(
        &self,
        topic: &Topic,
        partition: i32,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult, BrokerError> {
        let tp = topic.partition(partition)?;
        let span = tracing::debug_span!("storage.read", %tp, offset = offset.0);
        Ok(self
            .engine
            .read(tp, offset, max_bytes)
            .instrument(span)
            .await?)
    }

    /// Like [`Broker::fetch`], but at the log end waits up to `wait` (capped at
    /// [`MAX_FETCH_WAIT`]) for records to become readable: the long poll of a fetch and the
    /// heart of a subscription.
    pub async fn fetch_wait(
        &self,
        topic: &Topic,
        partition: i32,
        offset: Offset,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<ReadResult, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_FETCH_WAIT);
        // Subscribed before reading, so a commit between the read and the wait is not missed.
        let mut watch = self.watch_high_watermark(topic, partition);
        loop {
            let read = self.fetch(topic, partition, offset, max_bytes).await?;
            if !read.records.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(read);
            }
            match watch.as_mut() {
                Some(w) => match tokio::time::timeout_at(deadline, w.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Ok(read),
                },
                // Another broker owns it: its commits show in the catalog; look again soon.
                None => {
                    let next = (tokio::time::Instant::now() + NON_OWNER_POLL).min(deadline);
                    tokio::time::sleep_until(next).await;
                }
            }
        }
    }

    /// A watch on a partition's high watermark, for long polls.
    pub fn watch_high_watermark(
        &self,
        topic: &Topic,
        partition: i32,
    ) -> Option<watch::Receiver<Offset>> {
        let tp = topic.partition(partition).ok()?;
        self.engine.watch_high_watermark(tp)
    }

    /// What a partition keeps in the object store, from its log start on.
    pub async fn stored(
        &self,
        topic: &Topic,
        partition: i32,
    ) -> Result<strata_storage::catalog::Stored, BrokerError> {
        let tp = topic.partition(partition)?;
        let (start, _) = self.engine.offsets(tp).await?;
        Ok(self.catalog.stored(tp, start).await?)
    }

    /// `(log start, high watermark)` of a partition.
    pub async fn offsets(
        &self,
        topic: &Topic,
        partition: i32,
    ) -> Result<(Offset, Offset), BrokerError> {
        let tp = topic.partition(partition)?;
        Ok(self.engine.offsets(tp).await?)
    }

    /// The idempotent producers writing to a partition: `(producer id, epoch, last sequence,
    /// first offset of the transaction it holds open or -1)`.
    pub fn active_producers(
        &self,
        topic: &Topic,
        partition: i32,
    ) -> Result<Vec<(i64, i16, i32, i64)>, BrokerError> {
        let tp = topic.partition(partition)?;
        Ok(self
            .engine
            .active_producers(tp)
            .into_iter()
            .map(|(pid, e)| {
                let txn_start = self.engine.open_transaction(tp, pid).map_or(-1, |o| o.0);
                (
                    pid,
                    e.epoch,
                    e.batches.back().map_or(-1, |b| b.last_seq),
                    txn_start,
                )
            })
            .collect())
    }

    /// Applies every topic's `retention.ms` and `retention.bytes` once: partitions whose oldest
    /// data is expired or over the size limit get a new log start. Returns how many moved.
    pub async fn enforce_retention(&self) -> usize {
        let now = chrono_now_ms();
        let mut moved = 0;
        for topic in self.topics() {
            for p in 0..topic.meta.partitions {
                let Ok(tp) = topic.partition(p) else { continue };
                match self
                    .engine
                    .apply_retention(tp, topic.config.retention, now)
                    .await
                {
                    Ok(Some(start)) => {
                        moved += 1;
                        tracing::info!(
                            topic = topic.meta.name,
                            partition = p,
                            log_start = start.0,
                            "retention moved the log start"
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = topic.meta.name, partition = p, error = %e, "retention pass failed")
                    }
                }
            }
        }
        moved
    }

    /// Compacts every partition this broker owns (see [`strata_storage::compaction`]),
    /// after cleaning those of `cleanup.policy=compact` topics (see
    /// [`strata_storage::cleaner`]). Returns how many extents were rewritten.
    pub async fn compact(&self, policy: strata_storage::compaction::CompactionPolicy) -> usize {
        let now = chrono_now_ms();
        let mut replaced = 0;
        for (tp, _) in self.engine.held() {
            if let Some(topic) = self.topic_by_id(tp.topic).filter(|t| t.config.compact) {
                let clean = strata_storage::cleaner::CleanPolicy {
                    delete_retention_ms: topic.config.delete_retention_ms,
                    min_age: policy.min_age,
                };
                if let Err(e) = self.engine.clean(tp, clean, now).await {
                    tracing::warn!(%tp, error = %e, "cleaning failed; retrying next pass");
                }
            }
            match self.engine.compact(tp, policy, now).await {
                Ok(n) => replaced += n,
                Err(e) => tracing::warn!(%tp, error = %e, "compaction failed; retrying next pass"),
            }
        }
        replaced
    }

    /// Deletes the objects that have held no live record for `grace`, then orphans (objects
    /// no commit recorded) older than `grace` among the segments of the last `orphan_days`
    /// days (0: all of them). Returns how many objects went.
    pub async fn collect_garbage(&self, grace: Duration, orphan_days: u32) -> usize {
        let now = chrono_now_ms();
        let dead = self.engine.collect_garbage(now, grace).await;
        let prefixes = strata_storage::segment::day_prefixes(now, orphan_days);
        let orphans = self.engine.collect_orphans(now, grace, &prefixes).await;
        let mut deleted = 0;
        for (what, result) in [("dead objects", dead), ("orphans", orphans)] {
            match result {
                Ok(n) => deleted += n,
                Err(e) => tracing::warn!(error = %e, what, "garbage collection pass failed"),
            }
        }
        deleted
    }

    /// Deletes a partition's records below `offset` (-1: the high watermark) by moving its log
    /// start there (Kafka's DeleteRecords). Returns the new log start.
    pub async fn delete_records(
        &self,
        topic: &Topic,
        partition: i32,
        offset: i64,
    ) -> Result<Offset, BrokerError> {
        let tp = topic.partition(partition)?;
        let target = (offset != -1).then_some(Offset(offset));
        Ok(self.engine.delete_records(tp, target).await?)
    }

    /// Resolves a ListOffsets query to `(offset, timestamp)`; `None` when no record is at or
    /// after the timestamp (Kafka answers -1, -1).
    pub async fn list_offset(
        &self,
        topic: &Topic,
        partition: i32,
        spec: OffsetSpec,
    ) -> Result<Option<(Offset, i64)>, BrokerError> {
        let tp = topic.partition(partition)?;
        let (start, end) = self.engine.offsets(tp).await?;
        Ok(match spec {
            OffsetSpec::Earliest => Some((start, -1)),
            OffsetSpec::Latest => Some((end, -1)),
            OffsetSpec::LastStable => Some((self.engine.stable_view(tp, start).await?.0, -1)),
            OffsetSpec::Timestamp(ts) => self.engine.offset_for_timestamp(tp, ts).await?,
            OffsetSpec::MaxTimestamp => self.engine.offset_for_max_timestamp(tp).await?,
        })
    }
}
