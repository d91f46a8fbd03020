//! Broker errors as native error codes.

use strata_proto::native::{ErrorCode, WireError};

use crate::broker::BrokerError;

/// The native code for `e`.
pub fn code(e: &BrokerError) -> ErrorCode {
    match e {
        BrokerError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        BrokerError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        BrokerError::InvalidTopic { .. } => ErrorCode::InvalidTopic,
        BrokerError::TopicExists(_) => ErrorCode::TopicExists,
        BrokerError::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
        BrokerError::InvalidReplicationFactor(_) => ErrorCode::InvalidRequest,
        BrokerError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        BrokerError::CorruptMessage(_) | BrokerError::InvalidRecord(_) => ErrorCode::CorruptRecords,
        BrokerError::MessageTooLarge(_) => ErrorCode::RecordsTooLarge,
        BrokerError::InvalidRequiredAcks(_) => ErrorCode::InvalidRequest,
        BrokerError::NotLeader(_) => ErrorCode::NotLeader,
        BrokerError::Timeout(_) => ErrorCode::Timeout,
        BrokerError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        BrokerError::Storage(_) => ErrorCode::StorageError,
        BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
        BrokerError::UnknownMemberId(_) => ErrorCode::UnknownMember,
        BrokerError::NotCoordinator { .. } => ErrorCode::NotCoordinator,
        BrokerError::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
        BrokerError::RebalanceInProgress => ErrorCode::RebalanceInProgress,
        BrokerError::InconsistentGroupProtocol(_) => ErrorCode::InconsistentGroupProtocol,
        BrokerError::InvalidSessionTimeout { .. } => ErrorCode::InvalidSessionTimeout,
        BrokerError::MemberIdRequired(_) => ErrorCode::MemberIdRequired,
        BrokerError::NonEmptyGroup(_) => ErrorCode::GroupNotEmpty,
        BrokerError::GroupIdNotFound(_) => ErrorCode::UnknownGroup,
        BrokerError::InvalidGroupId => ErrorCode::InvalidRequest,
        BrokerError::FencedInstanceId(_) => ErrorCode::FencedInstance,
        BrokerError::OutOfOrderSequence(_) => ErrorCode::OutOfOrderSequence,
        BrokerError::InvalidProducerEpoch(_) | BrokerError::ProducerFenced(_) => {
            ErrorCode::InvalidProducerEpoch
        }
        // Transactions are a Kafka-protocol feature; the native protocol has no requests
        // that reach these.
        BrokerError::InvalidProducerIdMapping(_)
        | BrokerError::InvalidTxnState(_)
        | BrokerError::ConcurrentTransactions(_)
        | BrokerError::InvalidTransactionTimeout { .. }
        | BrokerError::TransactionalIdNotFound(_) => ErrorCode::InvalidRequest,
    }
}

impl From<BrokerError> for WireError {
    fn from(e: BrokerError) -> Self {
        WireError::new(code(&e), e.to_string())
    }
}
