//! Topic names and configs: what Kafka accepts, and the values Strata acts on.
//!
//! Configs a client sets are validated here and stored in the catalog as given; defaults are
//! not stored, so a changed broker default applies to every topic that did not override it.
//! [`TopicConfig`] is the parsed view the produce path uses.

use std::collections::BTreeMap;

use super::BrokerError;

/// Kafka's limit on topic name length.
const MAX_NAME_LEN: usize = 249;

/// Checks a topic name the way Kafka does: 1–249 characters of `[a-zA-Z0-9._-]`, and not
/// `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), BrokerError> {
    let invalid = |reason: &str| BrokerError::InvalidTopic {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name == "." || name == ".." {
        return Err(invalid("'.' and '..' are not allowed"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 249 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// How a topic stores batches that arrive uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionPolicy {
    /// Keep batches as the producer sent them (`producer`, `uncompressed`).
    AsSent,
    /// Compress uncompressed batches with zstd (`zstd`, Strata's default). Batches the
    /// producer already compressed are kept as they are.
    Zstd,
}

/// Kafka's default `retention.ms`: seven days.
const DEFAULT_RETENTION_MS: i64 = 604_800_000;

/// Kafka's default `delete.retention.ms`: one day.
const DEFAULT_DELETE_RETENTION_MS: i64 = 86_400_000;

/// The configs a topic acts on, parsed, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Largest record batch accepted.
    pub max_message_bytes: usize,
    /// Compression of stored batches.
    pub compression: CompressionPolicy,
    /// `retention.ms` and `retention.bytes` (`-1`: unbounded). Unbounded when
    /// `cleanup.policy` is `compact` alone, as in Kafka.
    pub retention: strata_storage::retention::Retention,
    /// `cleanup.policy` includes `compact`: the cleaner keeps the newest record per key.
    pub compact: bool,
    /// `delete.retention.ms`: how long the cleaner keeps a key's tombstone.
    pub delete_retention_ms: i64,
}

/// Broker-wide defaults for topic configs.
#[derive(Debug, Clone)]
pub struct TopicDefaults {
    /// Default `max.message.bytes`.
    pub max_message_bytes: usize,
}

/// One config as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Config name.
    pub name: String,
    /// Its effective value.
    pub value: String,
    /// True when set on the topic, false when it is the default.
    pub is_set: bool,
}

/// A Kafka topic config Strata knows: its name and how its default is found.
struct Known {
    name: &'static str,
    default: fn(&TopicDefaults) -> String,
    check: fn(&str) -> Result<(), String>,
}

fn positive_int(v: &str) -> Result<(), String> {
    match v.parse::<i64>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err("must be a positive integer".into()),
    }
}

fn int_or_minus_one(v: &str) -> Result<(), String> {
    match v.parse::<i64>() {
        Ok(n) if n >= -1 => Ok(()),
        _ => Err("must be an integer >= -1".into()),
    }
}

fn compression(v: &str) -> Result<(), String> {
    match v {
        "producer" | "uncompressed" | "zstd" => Ok(()),
        "gzip" | "snappy" | "lz4" => Err(
            "Strata recompresses stored batches only with zstd; use zstd, producer or uncompressed"
                .into(),
        ),
        _ => Err("must be one of producer, uncompressed, zstd".into()),
    }
}

fn cleanup_policy(v: &str) -> Result<(), String> {
    let ok = v
        .split(',')
        .map(str::trim)
        .all(|p| p == "delete" || p == "compact");
    if ok && !v.is_empty() {
        Ok(())
    } else {
        Err("must be delete, compact or compact,delete".into())
    }
}

fn timestamp_type(v: &str) -> Result<(), String> {
    match v {
        "CreateTime" => Ok(()),
        "LogAppendTime" => Err("Strata keeps producer timestamps: only CreateTime".into()),
        _ => Err("must be CreateTime".into()),
    }
}

/// The topic configs accepted, with their defaults. Retention and cleanup settings are
/// stored and reported; the background work that enforces them reads them from the catalog.
const KNOWN: &[Known] = &[
    Known {
        name: "cleanup.policy",
        default: |_| "delete".into(),
        check: cleanup_policy,
    },
    Known {
        name: "compression.type",
        default: |_| "zstd".into(),
        check: compression,
    },
    Known {
        name: "delete.retention.ms",
        default: |_| "86400000".into(),
        check: int_or_minus_one,
    },
    Known {
        name: "max.message.bytes",
        default: |d| d.max_message_bytes.to_string(),
        check: positive_int,
    },
    Known {
        name: "message.timestamp.type",
        default: |_| "CreateTime".into(),
        check: timestamp_type,
    },
    Known {
        name: "retention.bytes",
        default: |_| "-1".into(),
        check: int_or_minus_one,
    },
    Known {
        name: "retention.ms",
        default: |_| DEFAULT_RETENTION_MS.to_string(),
        check: int_or_minus_one,
    },
    Known {
        name: "segment.bytes",
        default: |_| "134217728".into(),
        check: positive_int,
    },
];

/// Checks configs a client wants to set on a topic.
pub fn validate_configs(configs: &BTreeMap<String, String>) -> Result<(), BrokerError> {
    for (name, value) in configs {
        let known = KNOWN
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| BrokerError::InvalidConfig(format!("unknown topic config '{name}'")))?;
        (known.check)(value).map_err(|why| {
            BrokerError::InvalidConfig(format!("invalid value '{value}' for {name}: {why}"))
        })?;
    }
    Ok(())
}

/// Checks that `name` is a config Strata knows (for removals, which carry no value).
pub fn validate_name_of_config(name: &str) -> Result<(), BrokerError> {
    if KNOWN.iter().any(|k| k.name == name) {
        Ok(())
    } else {
        Err(BrokerError::InvalidConfig(format!(
            "unknown topic config '{name}'"
        )))
    }
}

/// Every known config of a topic with its effective value, in name order.
pub fn describe(configs: &BTreeMap<String, String>, defaults: &TopicDefaults) -> Vec<ConfigEntry> {
    KNOWN
        .iter()
        .map(|k| match configs.get(k.name) {
            Some(v) => ConfigEntry {
                name: k.name.to_string(),
                value: v.clone(),
                is_set: true,
            },
            None => ConfigEntry {
                name: k.name.to_string(),
                value: (k.default)(defaults),
                is_set: false,
            },
        })
        .collect()
}

impl TopicConfig {
    /// The parsed configs of a topic whose stored configs are `configs` (already validated).
    pub fn resolve(configs: &BTreeMap<String, String>, defaults: &TopicDefaults) -> TopicConfig {
        let max_message_bytes = configs
            .get("max.message.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.max_message_bytes);
        let compression = match configs.get("compression.type").map(String::as_str) {
            Some("producer") | Some("uncompressed") => CompressionPolicy::AsSent,
            _ => CompressionPolicy::Zstd,
        };
        let limit = |name: &str, default: Option<i64>| match configs.get(name) {
            Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0),
            None => default,
        };
        let policy = configs
            .get("cleanup.policy")
            .map_or("delete", String::as_str);
        let has = |p: &str| policy.split(',').any(|x| x.trim() == p);
        let retention = if has("delete") {
            strata_storage::retention::Retention {
                ms: limit("retention.ms", Some(DEFAULT_RETENTION_MS)),
                bytes: limit("retention.bytes", None),
            }
        } else {
            strata_storage::retention::Retention {
                ms: None,
                bytes: None,
            }
        };
        TopicConfig {
            max_message_bytes,
            compression,
            retention,
            compact: has("compact"),
            delete_retention_ms: limit("delete.retention.ms", Some(DEFAULT_DELETE_RETENTION_MS))
                .unwrap_or(i64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        assert!(validate_name("orders.v1_x-2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn configs_are_checked_and_resolved() {
        let defaults = TopicDefaults {
            max_message_bytes: 1000,
        };
        let mut c = BTreeMap::new();
        c.insert("max.message.bytes".to_string(), "50".to_string());
        assert!(validate_configs(&c).is_ok());
        let t = TopicConfig::resolve(&c, &defaults);
        assert_eq!(t.max_message_bytes, 50);
        assert_eq!(t.compression, CompressionPolicy::Zstd);
        c.insert("compression.type".to_string(), "gzip".to_string());
        assert!(validate_configs(&c).is_err());
        let mut bad = BTreeMap::new();
        bad.insert("no.such.config".to_string(), "1".to_string());
        assert!(validate_configs(&bad).is_err());
        let described = describe(&BTreeMap::new(), &defaults);
        let m = described
            .iter()
            .find(|e| e.name == "max.message.bytes")
            .unwrap();
        assert_eq!((m.value.as_str(), m.is_set), ("1000", false));
    }
}
