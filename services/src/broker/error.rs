//! The broker core's errors: what went wrong, in terms every front end can translate (the
//! Kafka front end into error codes, the HTTP front end into statuses).

use strata_storage::batch::BatchError;
use strata_storage::catalog::CatalogError;
use strata_storage::producers::SequenceError;
use strata_storage::{EngineError, Offset};
use thiserror::Error;

/// Why a broker operation failed.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// No such topic (and auto-creation is off or not applicable).
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// The topic exists but has no such partition.
    #[error("topic '{topic}' has no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
    },
    /// A topic name Kafka would not accept.
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopic {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Creating a topic that exists.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// A partition count out of range.
    #[error("{0}")]
    InvalidPartitions(String),
    /// A replication factor out of range.
    #[error("{0}")]
    InvalidReplicationFactor(String),
    /// An unknown config name or a bad value.
    #[error("{0}")]
    InvalidConfig(String),
    /// A record batch failed its checks.
    #[error("corrupt record batch: {0}")]
    CorruptMessage(BatchError),
    /// A record batch larger than the topic allows.
    #[error("{0}")]
    MessageTooLarge(BatchError),
    /// An `acks` value other than 0, 1 or -1.
    #[error("acks must be 0, 1 or -1 (all), not {0}")]
    InvalidRequiredAcks(i16),
    /// This broker does not own the partition.
    #[error("this broker does not lead {0}")]
    NotLeader(String),
    /// The wait for durability ran past the request's timeout. The data may still become
    /// durable; the client cannot know, as with Kafka.
    #[error("timed out after {0} ms waiting for the write to become durable")]
    Timeout(u64),
    /// A read below the log start or above the high watermark.
    #[error("offset {offset} is out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: Offset,
        /// The log start offset.
        log_start: Offset,
        /// The high watermark.
        high_watermark: Offset,
    },
    /// Stored data could not be read or is damaged.
    #[error("storage error: {0}")]
    Storage(String),
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// A group request reached a broker that does not coordinate the group.
    #[error("broker {coordinator} coordinates group '{group}', not this one")]
    NotCoordinator {
        /// The group.
        group: String,
        /// The node id of the broker that coordinates it.
        coordinator: i32,
    },
    /// A group request named a member the group does not have.
    #[error("member '{0}' is not in the group")]
    UnknownMemberId(String),
    /// A group request carried a generation other than the group's current one.
    #[error("generation {got} is not the group's current generation {current}")]
    IllegalGeneration {
        /// The generation the client sent.
        got: i32,
        /// The group's generation.
        current: i32,
    },
    /// The group is rebalancing: the member must rejoin.
    #[error("the group is rebalancing; rejoin")]
    RebalanceInProgress,
    /// The member's protocol type or protocols do not match the group's.
    #[error("{0}")]
    InconsistentGroupProtocol(String),
    /// A session timeout outside the broker's bounds.
    #[error("session timeout {got} ms is outside [{min}, {max}] ms")]
    InvalidSessionTimeout {
        /// What the client asked for.
        got: i64,
        /// The smallest allowed.
        min: i64,
        /// The largest allowed.
        max: i64,
    },
    /// KIP-394: a new member must rejoin with the id it is given.
    #[error("rejoin with member id '{0}'")]
    MemberIdRequired(String),
    /// Deleting a group that still has members.
    #[error("group '{0}' still has members")]
    NonEmptyGroup(String),
    /// No such group.
    #[error("group '{0}' does not exist")]
    GroupIdNotFound(String),
    /// An empty group id.
    #[error("the group id is empty")]
    InvalidGroupId,
    /// An idempotent producer's batch is not the next in its sequence.
    #[error("{0}")]
    OutOfOrderSequence(String),
    /// An idempotent producer's epoch is older than its current one.
    #[error("{0}")]
    InvalidProducerEpoch(String),
    /// A batch that breaks a rule of the record format (for example, several batches from
    /// an idempotent producer for one partition).
    #[error("{0}")]
    InvalidRecord(String),
    /// A static member (`group.instance.id`) replaced by a newer instance with the same id.
    #[error("instance '{0}' was fenced by a newer member with the same group.instance.id")]
    FencedInstanceId(String),
    /// A transactional request named a producer id its transactional id is not mapped to
    /// (or a transactional id never initialised).
    #[error("{0}")]
    InvalidProducerIdMapping(String),
    /// A newer producer instance with the same transactional id took over (its
    /// InitProducerId bumped the epoch), or the broker aborted the transaction on timeout.
    #[error("{0}")]
    ProducerFenced(String),
    /// A transactional request that makes no sense in the transaction's state (ending a
    /// transaction that never began, committing one that was aborted).
    #[error("{0}")]
    InvalidTxnState(String),
    /// The transaction is completing (markers are being written): retry shortly.
    #[error("{0}")]
    ConcurrentTransactions(String),
    /// `transaction.timeout.ms` outside what the broker allows.
    #[error("transaction timeout {got} ms is outside [1, {max}] ms (transaction.max.timeout.ms)")]
    InvalidTransactionTimeout {
        /// What the producer asked for.
        got: i64,
        /// The largest allowed.
        max: i64,
    },
    /// No transactional id of that name.
    #[error("transactional id '{0}' does not exist")]
    TransactionalIdNotFound(String),
}

impl From<BatchError> for BrokerError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::TooLarge { .. } => BrokerError::MessageTooLarge(e),
            e => BrokerError::CorruptMessage(e),
        }
    }
}

impl From<CatalogError> for BrokerError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::TopicExists(t) => BrokerError::TopicExists(t),
            CatalogError::UnknownTopic(t) => BrokerError::UnknownTopic(t),
            CatalogError::InvalidPartitions { .. } => BrokerError::InvalidPartitions(e.to_string()),
            CatalogError::Fenced { tp, .. } => BrokerError::NotLeader(tp.to_string()),
            e => BrokerError::Storage(e.to_string()),
        }
    }
}

impl From<EngineError> for BrokerError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotOwner(tp) => BrokerError::NotLeader(tp.to_string()),
            EngineError::OffsetOutOfRange {
                offset,
                log_start,
                high_watermark,
                ..
            } => BrokerError::OffsetOutOfRange {
                offset,
                log_start,
                high_watermark,
            },
            EngineError::ShuttingDown => BrokerError::ShuttingDown,
            EngineError::Catalog(c) => c.into(),
            EngineError::Sequence(e @ SequenceError::OutOfOrder { .. }) => {
                BrokerError::OutOfOrderSequence(e.to_string())
            }
            EngineError::Sequence(e @ SequenceError::InvalidEpoch { .. }) => {
                BrokerError::InvalidProducerEpoch(e.to_string())
            }
            e @ EngineError::IdempotentBatchCount => BrokerError::InvalidRecord(e.to_string()),
            e => BrokerError::Storage(e.to_string()),
        }
    }
}

impl BrokerError {
    /// Whether the client only has to go elsewhere (another owner or coordinator, or this
    /// broker is stopping): routine while ownership moves, so not worth a warning.
    pub fn is_routing(&self) -> bool {
        matches!(
            self,
            BrokerError::NotLeader(_)
                | BrokerError::NotCoordinator { .. }
                | BrokerError::ShuttingDown
        )
    }

    /// Logs a refused produce: at debug level when the client is merely sent elsewhere, as a
    /// warning otherwise.
    pub fn log_refused_produce(&self, peer: &std::net::SocketAddr, topic: &str, partition: i32) {
        if self.is_routing() {
            tracing::debug!(%peer, topic, partition, error = %self, "produce refused");
        } else {
            tracing::warn!(%peer, topic, partition, error = %self, "produce refused");
        }
    }
}
