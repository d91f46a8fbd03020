//! [`Catalog`] over SQL: one schema and one set of statements for SQLite and PostgreSQL.
//!
//! Statements use `$N` placeholders, which both engines accept through sqlx, and only types
//! both have (`TEXT`, `BIGINT`, `INTEGER`). Every write transaction begins with a write, so
//! SQLite takes its write lock up front and never has to upgrade a read snapshot (which fails
//! at once instead of waiting when another writer got there first).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Row, SqlSafeStr};

use super::{
    AbortedTxn, BrokerInfo, Catalog, CatalogError, CommittedOffset, Compaction, Extent,
    FlushCommit, PartitionOwner, PartitionState, ProducerState, Stored, TopicMeta,
    TransactionRecord, tp,
};
use crate::segment::ExtentMeta;
use crate::types::{Epoch, Offset, PartitionId, TopicId, TopicPartition};

/// The schema, as an ordered list of migrations. A migration is never edited once released;
/// changes come as new entries. Both engines run the same text.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "initial schema",
        r#"
CREATE TABLE IF NOT EXISTS topics (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS topic_configs (
    topic_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (topic_id, name)
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    high_watermark BIGINT NOT NULL,
    log_start_offset BIGINT NOT NULL,
    owner TEXT,
    owner_epoch BIGINT NOT NULL,
    PRIMARY KEY (topic_id, partition_id)
);
CREATE TABLE IF NOT EXISTS extents (
    topic_id TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    base_offset BIGINT NOT NULL,
    last_offset BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    byte_start BIGINT NOT NULL,
    byte_len BIGINT NOT NULL,
    min_ts BIGINT NOT NULL,
    max_ts BIGINT NOT NULL,
    record_count BIGINT NOT NULL,
    PRIMARY KEY (topic_id, partition_id, base_offset)
);
CREATE INDEX IF NOT EXISTS extents_by_last ON extents (topic_id, partition_id, last_offset);
CREATE TABLE IF NOT EXISTS objects (
    object_key TEXT PRIMARY KEY,
    size_bytes BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS brokers (
    id TEXT PRIMARY KEY,
    kafka_addr TEXT NOT NULL,
    zone TEXT,
    heartbeat_ms BIGINT NOT NULL
)
"#,
    ),
    (
        "consumer group offsets",
        r#"
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL,
    topic_id TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    committed_offset BIGINT NOT NULL,
    leader_epoch INTEGER NOT NULL,
    metadata TEXT,
    commit_ms BIGINT NOT NULL,
    PRIMARY KEY (group_id, topic_id, partition_id)
)
"#,
    ),
    (
        "idempotent producers",
        r#"
CREATE TABLE IF NOT EXISTS producer_state (
    topic_id TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    producer_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (topic_id, partition_id, producer_id)
);
CREATE TABLE IF NOT EXISTS id_counters (
    name TEXT PRIMARY KEY,
    next_value BIGINT NOT NULL
);
INSERT INTO id_counters (name, next_value) VALUES ('producer_id', 1000)
"#,
    ),
    (
        "object garbage collection",
        r#"
ALTER TABLE objects ADD COLUMN dead_ms BIGINT;
CREATE INDEX IF NOT EXISTS extents_by_object ON extents (object_key)
"#,
    ),
    (
        "cluster membership",
        r#"
ALTER TABLE brokers ADD COLUMN quic_addr TEXT NOT NULL DEFAULT '';
ALTER TABLE brokers ADD COLUMN http_addr TEXT NOT NULL DEFAULT '';
ALTER TABLE brokers ADD COLUMN leaving INTEGER NOT NULL DEFAULT 0
"#,
    ),
    (
        "transactions",
        r#"
CREATE TABLE IF NOT EXISTS aborted_txns (
    topic_id TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    producer_id BIGINT NOT NULL,
    first_offset BIGINT NOT NULL,
    last_offset BIGINT NOT NULL,
    PRIMARY KEY (topic_id, partition_id, last_offset)
);
CREATE TABLE IF NOT EXISTS transactions (
    transactional_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
)
"#,
    ),
];

/// How long PostgreSQL lets a session sit idle inside a transaction before ending it: well
/// under the shortest lease a cluster runs with, so a frozen broker's locks are gone before
/// anyone claims its partitions.
const IDLE_IN_TRANSACTION: Duration = Duration::from_millis(1500);

/// Which engine a [`SqlCatalog`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The SQL catalog. Cheap to clone (a connection pool inside).
#[derive(Clone)]
pub struct SqlCatalog {
    pool: AnyPool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn parse_topic_id(s: &str) -> Result<TopicId, CatalogError> {
    uuid::Uuid::from_str(s)
        .map(TopicId)
        .map_err(|_| CatalogError::Corrupt(format!("topic id '{s}' is not a UUID")))
}

fn extent_from_row(row: &AnyRow) -> Result<Extent, CatalogError> {
    let topic: String = row.try_get("topic_id")?;
    Ok(Extent {
        meta: ExtentMeta {
            tp: tp(
                parse_topic_id(&topic)?,
                row.try_get::<i32, _>("partition_id")?,
            ),
            base_offset: Offset(row.try_get("base_offset")?),
            last_offset: Offset(row.try_get("last_offset")?),
            byte_start: row.try_get::<i64, _>("byte_start")? as u64,
            byte_len: row.try_get::<i64, _>("byte_len")? as u64,
            min_timestamp: row.try_get("min_ts")?,
            max_timestamp: row.try_get("max_ts")?,
            record_count: row.try_get("record_count")?,
        },
        object_key: row.try_get("object_key")?,
    })
}

/// The extent columns, as a macro so statements using them stay `&'static str` (sqlx asks
/// for an explicit audit of any SQL built at run time).
macro_rules! extent_columns {
    () => {
        "topic_id, partition_id, base_offset, last_offset, object_key, \
         byte_start, byte_len, min_ts, max_ts, record_count"
    };
}

impl SqlCatalog {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), creating a SQLite file if
    /// needed, and applies any migrations not yet applied.
    pub async fn connect(url: &str) -> Result<SqlCatalog, CatalogError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            let sep = if rest.contains('?') { '&' } else { '?' };
            (Dialect::Sqlite, format!("sqlite://{rest}{sep}mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_string())
        } else {
            return Err(CatalogError::BadUrl(url.to_string()));
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match dialect {
            // One connection: SQLite has one writer anyway, and a single connection means no
            // lock waits between our own statements.
            Dialect::Sqlite => {
                options
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode=WAL",
                                "PRAGMA synchronous=FULL",
                                "PRAGMA busy_timeout=10000",
                                "PRAGMA foreign_keys=ON",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            // A broker frozen (SIGSTOP, a paused VM), stalled or cut off inside a transaction
            // must not keep its row locks: a flush commit holds its partitions' rows from its
            // first UPDATE to COMMIT, and the brokers taking those partitions over would wait
            // in their claim, inside their heartbeat, so they would stop renewing their own
            // lease and refuse every append. Every transaction here is a few back-to-back
            // statements, so only a stalled broker is ever idle in one this long; the server
            // then ends its session (rolling back), and when the broker wakes its commit fails,
            // is retried, and is fenced.
            Dialect::Postgres => {
                options
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::query(AssertSqlSafe(format!(
                                "SET idle_in_transaction_session_timeout = {}",
                                IDLE_IN_TRANSACTION.as_millis()
                            )))
                            .execute(&mut *conn)
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
        };
        let catalog = SqlCatalog { pool };
        catalog.migrate().await?;
        Ok(catalog)
    }

    /// Applies the schema with sqlx's migrator, which records what it applied (with a
    /// checksum, so an edited migration is caught) and holds PostgreSQL's advisory lock while
    /// it runs, so brokers starting together do not race through it.
    async fn migrate(&self) -> Result<(), CatalogError> {
        let migrations = MIGRATIONS
            .iter()
            .enumerate()
            .map(|(i, (description, sql))| {
                Migration::new(
                    i as i64 + 1,
                    (*description).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.set_locking(true);
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| CatalogError::Db(e.into()))
    }

    /// Claims each partition for `broker`, bumping its epoch: unconditionally, or only if it
    /// is still at the given epoch. Returns the state of those claimed.
    async fn claim(
        &self,
        broker: &str,
        claims: impl Iterator<Item = (TopicPartition, Option<Epoch>)>,
    ) -> Result<Vec<PartitionState>, CatalogError> {
        const SET: &str = "UPDATE partitions SET owner = $1, owner_epoch = owner_epoch + 1 \
             WHERE topic_id = $2 AND partition_id = $3";
        const RETURNING: &str = " RETURNING high_watermark, log_start_offset, owner_epoch";
        let mut tx = self.pool.begin().await?;
        let mut won = Vec::new();
        for (tp, epoch) in claims {
            let query = match epoch {
                None => sqlx::query(AssertSqlSafe(format!("{SET}{RETURNING}"))),
                Some(_) => sqlx::query(AssertSqlSafe(format!(
                    "{SET} AND owner_epoch = $4{RETURNING}"
                ))),
            };
            let mut query = query
                .bind(broker)
                .bind(tp.topic.to_string())
                .bind(tp.partition.0);
            if let Some(e) = epoch {
                query = query.bind(e.0);
            }
            if let Some(row) = query.fetch_optional(&mut *tx).await? {
                won.push(state_from_row(tp, &row)?);
            }
        }
        tx.commit().await?;
        Ok(won)
    }

    async fn load_configs(&self, id: TopicId) -> Result<BTreeMap<String, String>, CatalogError> {
        let rows = sqlx::query("SELECT name, value FROM topic_configs WHERE topic_id = $1")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    async fn topic_from_row(&self, row: &AnyRow) -> Result<TopicMeta, CatalogError> {
        let id = parse_topic_id(&row.try_get::<String, _>("id")?)?;
        Ok(TopicMeta {
            id,
            name: row.try_get("name")?,
            partitions: row.try_get("partitions")?,
            configs: self.load_configs(id).await?,
        })
    }
}

#[async_trait]
impl Catalog for SqlCatalog {
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<TopicMeta, CatalogError> {
        let id = TopicId::random();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO topics (id, name, partitions, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(name)
        .bind(partitions)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(CatalogError::TopicExists(name.to_string()));
        }
        for (k, v) in configs {
            sqlx::query("INSERT INTO topic_configs (topic_id, name, value) VALUES ($1, $2, $3)")
                .bind(id.to_string())
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
        }
        insert_partitions(&mut tx, id, 0, partitions).await?;
        tx.commit().await?;
        Ok(TopicMeta {
            id,
            name: name.to_string(),
            partitions,
            configs: configs.clone(),
        })
    }

    async fn delete_topic(&self, name: &str) -> Result<TopicMeta, CatalogError> {
        let Some(topic) = self.topic(name).await? else {
            return Err(CatalogError::UnknownTopic(name.to_string()));
        };
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM topics WHERE id = $1")
            .bind(topic.id.to_string())
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(CatalogError::UnknownTopic(name.to_string()));
        }
        for table in [
            "topic_configs",
            "partitions",
            "extents",
            "group_offsets",
            "producer_state",
            "aborted_txns",
        ] {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE topic_id = $1"
            )))
            .bind(topic.id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(topic)
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>, CatalogError> {
        let rows = sqlx::query("SELECT id, name, partitions FROM topics ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.topic_from_row(row).await?);
        }
        Ok(out)
    }

    async fn topic(&self, name: &str) -> Result<Option<TopicMeta>, CatalogError> {
        let row = sqlx::query("SELECT id, name, partitions FROM topics WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.topic_from_row(&row).await?)),
            None => Ok(None),
        }
    }

    async fn add_partitions(&self, name: &str, total: i32) -> Result<TopicMeta, CatalogError> {
        let Some(topic) = self.topic(name).await? else {
            return Err(CatalogError::UnknownTopic(name.to_string()));
        };
        if total <= topic.partitions {
            return Err(CatalogError::InvalidPartitions {
                topic: name.to_string(),
                current: topic.partitions,
                requested: total,
            });
        }
        let mut tx = self.pool.begin().await?;
        let updated =
            sqlx::query("UPDATE topics SET partitions = $1 WHERE id = $2 AND partitions = $3")
                .bind(total)
                .bind(topic.id.to_string())
                .bind(topic.partitions)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            return Err(CatalogError::InvalidPartitions {
                topic: name.to_string(),
                current: topic.partitions,
                requested: total,
            });
        }
        insert_partitions(&mut tx, topic.id, topic.partitions, total).await?;
        tx.commit().await?;
        Ok(TopicMeta {
            partitions: total,
            ..topic
        })
    }

    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<TopicMeta, CatalogError> {
        let Some(topic) = self.topic(name).await? else {
            return Err(CatalogError::UnknownTopic(name.to_string()));
        };
        let mut tx = self.pool.begin().await?;
        for (k, v) in changes {
            sqlx::query("DELETE FROM topic_configs WHERE topic_id = $1 AND name = $2")
                .bind(topic.id.to_string())
                .bind(k)
                .execute(&mut *tx)
                .await?;
            if let Some(v) = v {
                sqlx::query(
                    "INSERT INTO topic_configs (topic_id, name, value) VALUES ($1, $2, $3)",
                )
                .bind(topic.id.to_string())
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(TopicMeta {
            configs: self.load_configs(topic.id).await?,
            ..topic
        })
    }

    async fn claim_partitions(
        &self,
        broker: &str,
        tps: &[TopicPartition],
    ) -> Result<Vec<PartitionState>, CatalogError> {
        self.claim(broker, tps.iter().map(|&tp| (tp, None))).await
    }

    async fn partition_state(
        &self,
        tp: TopicPartition,
    ) -> Result<Option<PartitionState>, CatalogError> {
        let row = sqlx::query(
            "SELECT high_watermark, log_start_offset, owner_epoch FROM partitions \
             WHERE topic_id = $1 AND partition_id = $2",
        )
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| state_from_row(tp, &row)).transpose()
    }

    async fn max_timestamp(
        &self,
        tp: TopicPartition,
        from: Offset,
    ) -> Result<Option<i64>, CatalogError> {
        let row = sqlx::query(
            "SELECT MAX(max_ts) AS ts FROM extents \
             WHERE topic_id = $1 AND partition_id = $2 AND last_offset >= $3",
        )
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .bind(from.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("ts")?)
    }

    async fn stored(&self, tp: TopicPartition, from: Offset) -> Result<Stored, CatalogError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(byte_len), 0) AS BIGINT) AS bytes, COUNT(*) AS extents, \
                    COUNT(DISTINCT object_key) AS objects FROM extents \
             WHERE topic_id = $1 AND partition_id = $2 AND last_offset >= $3",
        )
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .bind(from.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(Stored {
            bytes: row.try_get("bytes")?,
            extents: row.try_get("extents")?,
            objects: row.try_get("objects")?,
        })
    }

    async fn mark_dead_objects(&self, now_ms: i64) -> Result<u64, CatalogError> {
        let r = sqlx::query(
            "UPDATE objects SET dead_ms = $1 WHERE dead_ms IS NULL AND NOT EXISTS ( \
               SELECT 1 FROM extents e JOIN partitions p \
                 ON p.topic_id = e.topic_id AND p.partition_id = e.partition_id \
               WHERE e.object_key = objects.object_key AND e.last_offset >= p.log_start_offset)",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn dead_objects(
        &self,
        dead_before_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, CatalogError> {
        let rows = sqlx::query(
            "SELECT object_key FROM objects WHERE dead_ms IS NOT NULL AND dead_ms <= $1 \
             ORDER BY dead_ms LIMIT $2",
        )
        .bind(dead_before_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("object_key")?))
            .collect()
    }

    async fn forget_object(&self, key: &str) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM extents WHERE object_key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM objects WHERE object_key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replace_extents(&self, c: &Compaction) -> Result<bool, CatalogError> {
        let Some(tp) = c.extents.first().map(|e| e.tp) else {
            return Ok(false);
        };
        let mut tx = self.pool.begin().await?;
        // A no-op update that takes the partition row's lock (as flush commits do) and checks
        // the epoch.
        let owned = sqlx::query(
            "UPDATE partitions SET owner_epoch = owner_epoch \
             WHERE topic_id = $1 AND partition_id = $2 AND owner_epoch = $3",
        )
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .bind(c.epoch.0)
        .execute(&mut *tx)
        .await?;
        if owned.rows_affected() == 0 {
            return Err(CatalogError::Fenced { tp, epoch: c.epoch });
        }
        let deleted = sqlx::query(
            "DELETE FROM extents WHERE topic_id = $1 AND partition_id = $2 \
             AND base_offset >= $3 AND base_offset <= $4",
        )
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .bind(c.first_base.0)
        .bind(c.last_base.0)
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() != c.replaced {
            tx.rollback().await?;
            return Ok(false);
        }
        let commit = FlushCommit {
            object_key: c.object_key.clone(),
            object_size: c.object_size,
            extents: Vec::new(),
            producers: Vec::new(),
            aborted: Vec::new(),
        };
        apply_flush(&mut tx, &commit).await?;
        for e in &c.extents {
            insert_extent(&mut tx, &c.object_key, e).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn object_known(&self, key: &str) -> Result<bool, CatalogError> {
        let row = sqlx::query("SELECT 1 AS known FROM objects WHERE object_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn advance_log_start(
        &self,
        tp: TopicPartition,
        epoch: Epoch,
        offset: Offset,
    ) -> Result<Offset, CatalogError> {
        sqlx::query(
            "UPDATE partitions SET log_start_offset = $1 \
             WHERE topic_id = $2 AND partition_id = $3 AND owner_epoch = $4 \
             AND log_start_offset < $1 AND high_watermark >= $1",
        )
        .bind(offset.0)
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .bind(epoch.0)
        .execute(&self.pool)
        .await?;
        match self.partition_state(tp).await? {
            Some(s) if s.epoch != epoch => Err(CatalogError::Fenced { tp, epoch }),
            Some(s) => Ok(s.log_start_offset),
            None => Err(CatalogError::UnknownTopic(tp.topic.to_string())),
        }
    }

    async fn commit_flushes(&self, commits: &[FlushCommit]) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        for commit in commits {
            apply_flush(&mut tx, commit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn extents(
        &self,
        tp: TopicPartition,
        from: Offset,
        limit: i64,
    ) -> Result<Vec<Extent>, CatalogError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            extent_columns!(),
            " FROM extents WHERE topic_id = $1 AND partition_id = $2 AND last_offset >= $3 \
             ORDER BY base_offset LIMIT $4"
        ))
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .bind(from.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(extent_from_row).collect()
    }

    async fn extent_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<Extent>, CatalogError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            extent_columns!(),
            " FROM extents WHERE topic_id = $1 AND partition_id = $2 AND max_ts >= $3 \
             ORDER BY base_offset LIMIT 1"
        ))
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .bind(timestamp)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(extent_from_row).transpose()
    }

    async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[CommittedOffset],
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        for o in offsets {
            upsert_offset(&mut tx, group, o).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn aborted_txns(
        &self,
        tp: TopicPartition,
        from: Offset,
    ) -> Result<Vec<AbortedTxn>, CatalogError> {
        let rows = sqlx::query(
            "SELECT producer_id, first_offset, last_offset FROM aborted_txns \
             WHERE topic_id = $1 AND partition_id = $2 AND last_offset >= $3 \
             ORDER BY last_offset",
        )
        .bind(tp.topic.to_string())
        .bind(tp.partition.0)
        .bind(from.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AbortedTxn {
                    producer_id: r.try_get("producer_id")?,
                    first_offset: Offset(r.try_get("first_offset")?),
                    last_offset: Offset(r.try_get("last_offset")?),
                })
            })
            .collect()
    }

    async fn transaction(&self, id: &str) -> Result<Option<TransactionRecord>, CatalogError> {
        let row = sqlx::query("SELECT state FROM transactions WHERE transactional_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(transaction_from_row).transpose()
    }

    async fn transactions(&self) -> Result<Vec<TransactionRecord>, CatalogError> {
        let rows = sqlx::query("SELECT state FROM transactions ORDER BY transactional_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(transaction_from_row).collect()
    }

    async fn restore(&self, r: &crate::recovery::Restore) -> Result<(), CatalogError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE id_counters SET next_value = $1 WHERE name = 'producer_id'")
            .bind(r.next_producer_id)
            .execute(&mut *tx)
            .await?;
        for t in &r.topics {
            sqlx::query(
                "INSERT INTO topics (id, name, partitions, created_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(t.id.to_string())
            .bind(&t.name)
            .bind(t.partitions)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for (name, value) in &t.configs {
                sqlx::query(
                    "INSERT INTO topic_configs (topic_id, name, value) VALUES ($1, $2, $3)",
                )
                .bind(t.id.to_string())
                .bind(name)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
        }
        for (tp, start, end) in &r.partitions {
            sqlx::query(
                "INSERT INTO partitions \
                 (topic_id, partition_id, high_watermark, log_start_offset, owner, owner_epoch) \
                 VALUES ($1, $2, $3, $4, NULL, 0)",
            )
            .bind(tp.topic.to_string())
            .bind(tp.partition.0)
            .bind(end.0)
            .bind(start.0)
            .execute(&mut *tx)
            .await?;
        }
        for (key, size) in &r.objects {
            sqlx::query(
                "INSERT INTO objects (object_key, size_bytes, created_ms) VALUES ($1, $2, $3)",
            )
            .bind(key)
            .bind(*size as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for e in &r.extents {
            insert_extent(&mut tx, &e.object_key, &e.meta).await?;
        }
        for (group, o) in &r.offsets {
            upsert_offset(&mut tx, group, o).await?;
        }
        for p in &r.producers {
            let state = serde_json::to_string(&p.entry)
                .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO producer_state (topic_id, partition_id, producer_id, state) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(p.tp.topic.to_string())
            .bind(p.tp.partition.0)
            .bind(p.producer_id)
            .bind(state)
            .execute(&mut *tx)
            .await?;
        }
        for t in &r.transactions {
            let state =
                serde_json::to_string(t).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
            sqlx::query("INSERT INTO transactions (transactional_id, state) VALUES ($1, $2)")
                .bind(&t.transactional_id)
                .bind(state)
                .execute(&mut *tx)
                .await?;
        }
        for (tp, a) in &r.aborted {
            insert_aborted(&mut tx, *tp, a).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn put_transaction(
        &self,
        record: &TransactionRecord,
        offsets: &[(String, CommittedOffset)],
    ) -> Result<(), CatalogError> {
        let state =
            serde_json::to_string(record).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO transactions (transactional_id, state) VALUES ($1, $2) \
             ON CONFLICT (transactional_id) DO UPDATE SET state = $2",
        )
        .bind(&record.transactional_id)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        for (group, o) in offsets {
            upsert_offset(&mut tx, group, o).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>, CatalogError> {
        let rows = sqlx::query(
            "SELECT topic_id, partition_id, committed_offset, leader_epoch, metadata \
             FROM group_offsets WHERE group_id = $1",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CommittedOffset {
                    tp: tp(
                        parse_topic_id(&r.try_get::<String, _>("topic_id")?)?,
                        r.try_get("partition_id")?,
                    ),
                    offset: r.try_get("committed_offset")?,
                    leader_epoch: r.try_get("leader_epoch")?,
                    metadata: r.try_get("metadata")?,
                })
            })
            .collect()
    }

    async fn delete_offsets(
        &self,
        group: &str,
        tps: Option<&[TopicPartition]>,
    ) -> Result<u64, CatalogError> {
        let Some(tps) = tps else {
            let done = sqlx::query("DELETE FROM group_offsets WHERE group_id = $1")
                .bind(group)
                .execute(&self.pool)
                .await?;
            return Ok(done.rows_affected());
        };
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for tp in tps {
            deleted += sqlx::query(
                "DELETE FROM group_offsets WHERE group_id = $1 AND topic_id = $2 AND partition_id = $3",
            )
            .bind(group)
            .bind(tp.topic.to_string())
            .bind(tp.partition.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn groups_with_offsets(&self) -> Result<Vec<String>, CatalogError> {
        let rows = sqlx::query("SELECT DISTINCT group_id FROM group_offsets ORDER BY group_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("group_id")?)).collect()
    }

    async fn producer_states(
        &self,
        tps: &[TopicPartition],
    ) -> Result<Vec<ProducerState>, CatalogError> {
        let mut out = Vec::new();
        for &tp in tps {
            let rows = sqlx::query(
                "SELECT producer_id, state FROM producer_state \
                 WHERE topic_id = $1 AND partition_id = $2",
            )
            .bind(tp.topic.to_string())
            .bind(tp.partition.0)
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                let state: String = r.try_get("state")?;
                out.push(ProducerState {
                    tp,
                    producer_id: r.try_get("producer_id")?,
                    entry: serde_json::from_str(&state)
                        .map_err(|e| CatalogError::Corrupt(format!("producer state: {e}")))?,
                });
            }
        }
        Ok(out)
    }

    async fn allocate_producer_id(&self) -> Result<i64, CatalogError> {
        let row = sqlx::query(
            "UPDATE id_counters SET next_value = next_value + 1 WHERE name = 'producer_id' \
             RETURNING next_value - 1 AS id",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    async fn register_broker(&self, broker: &BrokerInfo) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO brokers (id, kafka_addr, quic_addr, http_addr, zone, heartbeat_ms, leaving) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET kafka_addr = $2, quic_addr = $3, http_addr = $4, \
             zone = $5, heartbeat_ms = $6, leaving = $7",
        )
        .bind(&broker.id)
        .bind(&broker.kafka_addr)
        .bind(&broker.quic_addr)
        .bind(&broker.http_addr)
        .bind(broker.zone.clone())
        .bind(now_ms())
        .bind(i32::from(broker.leaving))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deregister_broker(&self, id: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM brokers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn brokers(&self) -> Result<Vec<BrokerInfo>, CatalogError> {
        let rows = sqlx::query(
            "SELECT id, kafka_addr, quic_addr, http_addr, zone, heartbeat_ms, leaving \
             FROM brokers ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BrokerInfo {
                    id: r.try_get("id")?,
                    kafka_addr: r.try_get("kafka_addr")?,
                    quic_addr: r.try_get("quic_addr")?,
                    http_addr: r.try_get("http_addr")?,
                    zone: r.try_get("zone")?,
                    heartbeat_ms: r.try_get("heartbeat_ms")?,
                    leaving: r.try_get::<i32, _>("leaving")? != 0,
                })
            })
            .collect()
    }

    async fn partition_owners(&self) -> Result<Vec<PartitionOwner>, CatalogError> {
        let rows = sqlx::query("SELECT topic_id, partition_id, owner, owner_epoch FROM partitions")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PartitionOwner {
                    tp: TopicPartition {
                        topic: parse_topic_id(&r.try_get::<String, _>("topic_id")?)?,
                        partition: PartitionId(r.try_get("partition_id")?),
                    },
                    owner: r.try_get("owner")?,
                    epoch: Epoch(r.try_get("owner_epoch")?),
                })
            })
            .collect()
    }

    async fn claim_partitions_at(
        &self,
        broker: &str,
        claims: &[(TopicPartition, Epoch)],
    ) -> Result<Vec<PartitionState>, CatalogError> {
        self.claim(broker, claims.iter().map(|&(tp, e)| (tp, Some(e))))
            .await
    }

    async fn release_partitions(
        &self,
        broker: &str,
        releases: &[(TopicPartition, Epoch)],
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        for &(tp, epoch) in releases {
            sqlx::query(
                "UPDATE partitions SET owner = NULL \
                 WHERE topic_id = $1 AND partition_id = $2 AND owner = $3 AND owner_epoch = $4",
            )
            .bind(tp.topic.to_string())
            .bind(tp.partition.0)
            .bind(broker)
            .bind(epoch.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Applies one flush inside a transaction: the object, each extent (fenced by epoch and
/// high watermark) and the producers' state.
async fn apply_flush(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    commit: &FlushCommit,
) -> Result<(), CatalogError> {
    sqlx::query("INSERT INTO objects (object_key, size_bytes, created_ms) VALUES ($1, $2, $3)")
        .bind(&commit.object_key)
        .bind(commit.object_size as i64)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    for (e, epoch) in &commit.extents {
        let updated = sqlx::query(
            "UPDATE partitions SET high_watermark = $1 \
                 WHERE topic_id = $2 AND partition_id = $3 AND owner_epoch = $4 \
                 AND high_watermark = $5",
        )
        .bind(e.last_offset.0 + 1)
        .bind(e.tp.topic.to_string())
        .bind(e.tp.partition.0)
        .bind(epoch.0)
        .bind(e.base_offset.0)
        .execute(&mut **tx)
        .await?;
        if updated.rows_affected() == 0 {
            let exists = sqlx::query(
                "SELECT owner_epoch FROM partitions WHERE topic_id = $1 AND partition_id = $2",
            )
            .bind(e.tp.topic.to_string())
            .bind(e.tp.partition.0)
            .fetch_optional(&mut **tx)
            .await?;
            if exists.is_none() {
                continue; // the topic was deleted while its data was in flight
            }
            return Err(CatalogError::Fenced {
                tp: e.tp,
                epoch: *epoch,
            });
        }
        insert_extent(tx, &commit.object_key, e).await?;
    }
    for p in &commit.producers {
        let state =
            serde_json::to_string(&p.entry).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO producer_state (topic_id, partition_id, producer_id, state) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (topic_id, partition_id, producer_id) DO UPDATE SET state = $4",
        )
        .bind(p.tp.topic.to_string())
        .bind(p.tp.partition.0)
        .bind(p.producer_id)
        .bind(state)
        .execute(&mut **tx)
        .await?;
    }
    for (tp, a) in &commit.aborted {
        insert_aborted(tx, *tp, a).await?;
    }
    Ok(())
}

/// Records an aborted transaction of `tp`.
async fn insert_aborted(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tp: TopicPartition,
    a: &AbortedTxn,
) -> Result<(), CatalogError> {
    sqlx::query(
        "INSERT INTO aborted_txns \
         (topic_id, partition_id, producer_id, first_offset, last_offset) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tp.topic.to_string())
    .bind(tp.partition.0)
    .bind(a.producer_id)
    .bind(a.first_offset.0)
    .bind(a.last_offset.0)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores one committed offset of `group`, replacing an earlier one for its partition.
async fn upsert_offset(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    group: &str,
    o: &CommittedOffset,
) -> Result<(), CatalogError> {
    sqlx::query(
        "INSERT INTO group_offsets \
         (group_id, topic_id, partition_id, committed_offset, leader_epoch, metadata, commit_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (group_id, topic_id, partition_id) DO UPDATE SET \
         committed_offset = $4, leader_epoch = $5, metadata = $6, commit_ms = $7",
    )
    .bind(group)
    .bind(o.tp.topic.to_string())
    .bind(o.tp.partition.0)
    .bind(o.offset)
    .bind(o.leader_epoch)
    .bind(o.metadata.clone())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A transactional id's record from a row with its JSON `state`.
fn transaction_from_row(row: &AnyRow) -> Result<TransactionRecord, CatalogError> {
    let state: String = row.try_get("state")?;
    serde_json::from_str(&state).map_err(|e| CatalogError::Corrupt(format!("transaction: {e}")))
}

/// A partition's state from a row with `high_watermark`, `log_start_offset` and
/// `owner_epoch`.
fn state_from_row(tp: TopicPartition, row: &AnyRow) -> Result<PartitionState, CatalogError> {
    Ok(PartitionState {
        tp,
        high_watermark: Offset(row.try_get("high_watermark")?),
        log_start_offset: Offset(row.try_get("log_start_offset")?),
        epoch: Epoch(row.try_get("owner_epoch")?),
    })
}

/// Inserts one extent of object `object_key`.
async fn insert_extent(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    object_key: &str,
    e: &ExtentMeta,
) -> Result<(), CatalogError> {
    sqlx::query(concat!(
        "INSERT INTO extents (",
        extent_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(e.tp.topic.to_string())
    .bind(e.tp.partition.0)
    .bind(e.base_offset.0)
    .bind(e.last_offset.0)
    .bind(object_key)
    .bind(e.byte_start as i64)
    .bind(e.byte_len as i64)
    .bind(e.min_timestamp)
    .bind(e.max_timestamp)
    .bind(e.record_count)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_partitions(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: TopicId,
    from: i32,
    to: i32,
) -> Result<(), CatalogError> {
    for p in from..to {
        sqlx::query(
            "INSERT INTO partitions (topic_id, partition_id, high_watermark, log_start_offset, owner, owner_epoch) \
             VALUES ($1, $2, 0, 0, NULL, 0)",
        )
        .bind(id.to_string())
        .bind(PartitionId(p).0)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
