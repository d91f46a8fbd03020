//! The `strata serve` flags. Each is also read from `STRATA_<FLAG>` (upper case, `-` → `_`),
//! so a container or a systemd unit can configure the broker without a command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use strata_storage::simulate::LatencySim;

/// Parses a byte size: a plain number, or one with a unit (`KiB`, `MiB`, `GiB`, `KB`, `MB`,
/// `GB`, or just `K`, `M`, `G`, all powers of 1024 except the `B`-suffixed decimal ones).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size: expected e.g. 1048576, 512MiB or 2GiB"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit '{other}' in '{s}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not true or false")),
    }
}

/// Flags of `strata serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory for the WAL, the default object store and catalog, the cache and the broker id.
    #[arg(long, env = "STRATA_DATA_DIR", default_value = "./strata-data")]
    pub data_dir: PathBuf,

    /// Address the Kafka protocol listener binds.
    #[arg(long, env = "STRATA_KAFKA_ADDR", default_value = "127.0.0.1:9092")]
    pub kafka_addr: SocketAddr,

    /// Address given to Kafka clients in metadata (HOST:PORT); the listen address by default.
    #[arg(long, env = "STRATA_ADVERTISED_KAFKA_ADDR")]
    pub advertised_kafka_addr: Option<String>,

    /// UDP address of the native QUIC listener.
    #[arg(long, env = "STRATA_QUIC_ADDR", default_value = "127.0.0.1:9093")]
    pub quic_addr: SocketAddr,

    /// Address given to native clients in metadata (HOST:PORT); the listen address by default.
    #[arg(long, env = "STRATA_ADVERTISED_QUIC_ADDR")]
    pub advertised_quic_addr: Option<String>,

    /// PEM certificate chain for the QUIC listener. Without it (and `--tls-key`), a CA and a
    /// server certificate are made on first start under `<data-dir>/tls/`.
    #[arg(long, env = "STRATA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "STRATA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): when given, QUIC clients must present a certificate signed by
    /// one of them (mutual TLS); its subject common name is the client's identity.
    #[arg(long, env = "STRATA_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// Address of the HTTP listener (`/healthz`, `/metrics`).
    #[arg(long, env = "STRATA_HTTP_ADDR", default_value = "127.0.0.1:9094")]
    pub http_addr: SocketAddr,

    /// Catalog URL: `sqlite://PATH` or `postgres://…`. Default: `sqlite://<data-dir>/catalog.db`.
    #[arg(long, env = "STRATA_CATALOG")]
    pub catalog: Option<String>,

    /// Object store URL: `file://DIR`, `s3://BUCKET/PREFIX`, `gs://…`, `az://…` or `memory://`.
    /// Default: `file://<data-dir>/objects`.
    #[arg(long, env = "STRATA_OBJECTS")]
    pub objects: Option<String>,

    /// This broker's id (a Kafka node id). Default: generated once, kept in `<data-dir>/broker-id`.
    #[arg(long, env = "STRATA_BROKER_ID")]
    pub broker_id: Option<i32>,

    /// Flush pending data to the object store at least this often, in milliseconds.
    #[arg(long, env = "STRATA_FLUSH_INTERVAL_MS", default_value_t = 100)]
    pub flush_interval_ms: u64,

    /// Flush as soon as this many bytes are pending.
    #[arg(long, env = "STRATA_FLUSH_BYTES", default_value = "8MiB", value_parser = parse_size)]
    pub flush_bytes: usize,

    /// Memory for the read cache.
    #[arg(long, env = "STRATA_CACHE_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    pub cache_memory: usize,

    /// Local disk for the read cache, under `<data-dir>/cache`; 0 turns the disk layer off.
    #[arg(long, env = "STRATA_CACHE_DISK", default_value = "1GiB", value_parser = parse_size)]
    pub cache_disk: usize,

    /// The broker's zone (rack), reported to clients. Kafka consumers that set `client.rack`
    /// fetch from a broker in their own zone (KIP-392).
    #[arg(long, env = "STRATA_ZONE")]
    pub zone: Option<String>,

    /// How long a heartbeat keeps this broker alive in the cluster: brokers whose last
    /// heartbeat is older than this are dead and their partitions are taken over. Heartbeats
    /// go every quarter lease (at most every second).
    #[arg(long, env = "STRATA_LEASE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(200..))]
    pub lease_ms: u64,

    /// Create topics on first use (Kafka's `auto.create.topics.enable`).
    #[arg(long, env = "STRATA_AUTO_CREATE_TOPICS", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub auto_create_topics: bool,

    /// Partitions of an auto-created topic (Kafka's `num.partitions`).
    #[arg(long, env = "STRATA_DEFAULT_PARTITIONS", default_value_t = 1)]
    pub default_partitions: i32,

    /// Largest record batch a topic accepts unless its `max.message.bytes` says otherwise
    /// (Kafka's `message.max.bytes`).
    #[arg(long, env = "STRATA_MAX_MESSAGE_BYTES", default_value = "1048588", value_parser = parse_size)]
    pub max_message_bytes: usize,

    /// How often topics' `retention.ms` and `retention.bytes` are applied (Kafka's
    /// `log.retention.check.interval.ms`).
    #[arg(long, env = "STRATA_RETENTION_INTERVAL_MS", default_value_t = 60_000)]
    pub retention_interval_ms: u64,

    /// How often the cluster's controller writes a catalog snapshot to the object store when
    /// the catalog changed (what `strata recover` rebuilds a lost catalog from, with the
    /// segment footers); 0 turns snapshots off.
    #[arg(long, env = "STRATA_SNAPSHOT_INTERVAL_MS", default_value_t = 300_000)]
    pub snapshot_interval_ms: u64,

    /// How long an object with no live record left waits before it is deleted, so reads that
    /// began before retention moved past it can finish.
    #[arg(long, env = "STRATA_GC_GRACE_MS", default_value_t = 600_000)]
    pub gc_grace_ms: u64,

    /// How often the partitions this broker owns are compacted: runs of small extents
    /// (one per flush) rewritten as one object per partition; 0 turns compaction off.
    #[arg(long, env = "STRATA_COMPACTION_INTERVAL_MS", default_value_t = 60_000)]
    pub compaction_interval_ms: u64,

    /// Size of the objects compaction writes (16 MiB: at most 64 GETs per GiB replayed).
    #[arg(long, env = "STRATA_COMPACTION_TARGET_BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub compaction_target_bytes: usize,

    /// Extents younger than this are not compacted yet (tailing consumers read them hot).
    #[arg(long, env = "STRATA_COMPACTION_MIN_AGE_MS", default_value_t = 60_000)]
    pub compaction_min_age_ms: u64,

    /// How long the first rebalance of an empty consumer group waits for more members
    /// (Kafka's `group.initial.rebalance.delay.ms`, whose 3 s default Strata shortens so a
    /// lone consumer starts quickly).
    #[arg(
        long,
        env = "STRATA_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 300
    )]
    pub group_initial_rebalance_delay_ms: u64,

    /// SIMULATION, for load tests only: delay every object-store PUT and GET by a
    /// log-normal latency, given as `put=P50:P99,get=P50:P99` in ms (e.g.
    /// `put=100:200,get=20:60`). Off by default.
    #[arg(long, env = "STRATA_SIMULATE_OBJECT_STORE_LATENCY")]
    pub simulate_object_store_latency: Option<LatencySim>,

    /// Largest Kafka request frame accepted; larger ones close the connection
    /// (Kafka's `socket.request.max.bytes`).
    #[arg(long, env = "STRATA_MAX_REQUEST_BYTES", default_value = "100MiB", value_parser = parse_size)]
    pub max_request_bytes: usize,
}

impl ServeArgs {
    /// The catalog URL, with the embedded default filled in.
    pub fn catalog_url(&self) -> String {
        self.catalog
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("catalog.db").display()))
    }

    /// The object store URL, with the embedded default filled in.
    pub fn objects_url(&self) -> Result<String, String> {
        if let Some(url) = &self.objects {
            return Ok(url.clone());
        }
        let dir = std::path::absolute(self.data_dir.join("objects"))
            .map_err(|e| format!("cannot resolve the data dir: {e}"))?;
        Ok(format!("file://{}", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
