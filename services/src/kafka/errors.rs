//! Broker errors as Kafka error codes.

use kafka_protocol::ResponseError;

use crate::broker::BrokerError;

/// The Kafka error code a client expects for `e`.
pub fn code(e: &BrokerError) -> i16 {
    let r = match e {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        BrokerError::InvalidTopic { .. } => ResponseError::InvalidTopicException,
        BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        BrokerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
        BrokerError::CorruptMessage(_) => ResponseError::CorruptMessage,
        BrokerError::MessageTooLarge(_) => ResponseError::MessageTooLarge,
        BrokerError::InvalidRequiredAcks(_) => ResponseError::InvalidRequiredAcks,
        BrokerError::NotLeader(_) => ResponseError::NotLeaderOrFollower,
        BrokerError::Timeout(_) => ResponseError::RequestTimedOut,
        BrokerError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        BrokerError::Storage(_) => ResponseError::KafkaStorageError,
        BrokerError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        BrokerError::UnknownMemberId(_) => ResponseError::UnknownMemberId,
        BrokerError::NotCoordinator { .. } => ResponseError::NotCoordinator,
        BrokerError::IllegalGeneration { .. } => ResponseError::IllegalGeneration,
        BrokerError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        BrokerError::InconsistentGroupProtocol(_) => ResponseError::InconsistentGroupProtocol,
        BrokerError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
        BrokerError::MemberIdRequired(_) => ResponseError::MemberIdRequired,
        BrokerError::NonEmptyGroup(_) => ResponseError::NonEmptyGroup,
        BrokerError::GroupIdNotFound(_) => ResponseError::GroupIdNotFound,
        BrokerError::InvalidGroupId => ResponseError::InvalidGroupId,
        BrokerError::FencedInstanceId(_) => ResponseError::FencedInstanceId,
        BrokerError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        BrokerError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        BrokerError::InvalidRecord(_) => ResponseError::InvalidRecord,
        BrokerError::InvalidProducerIdMapping(_) => ResponseError::InvalidProducerIdMapping,
        BrokerError::ProducerFenced(_) => ResponseError::ProducerFenced,
        BrokerError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        BrokerError::ConcurrentTransactions(_) => ResponseError::ConcurrentTransactions,
        BrokerError::InvalidTransactionTimeout { .. } => ResponseError::InvalidTransactionTimeout,
        BrokerError::TransactionalIdNotFound(_) => ResponseError::TransactionalIdNotFound,
    };
    r.code()
}
