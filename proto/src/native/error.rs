//! Error codes of the native protocol. They travel as strings (`"UNKNOWN_TOPIC"`), so a client
//! in any language can match on them and a new code never shifts the meaning of an old one.

use serde::{Deserialize, Serialize};

/// What went wrong, as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The frame could not be parsed: bad lengths, a header that is not the expected JSON.
    MalformedFrame,
    /// The frame is larger than the broker accepts.
    FrameTooLarge,
    /// A message kind the broker does not know.
    UnknownMessage,
    /// A message version outside the range the broker's Hello announced.
    UnsupportedVersion,
    /// The request is well formed but asks for something impossible (bad acks, bad offsets).
    InvalidRequest,
    /// No such topic.
    UnknownTopic,
    /// The topic has no such partition.
    UnknownPartition,
    /// A topic name Strata (and Kafka) would not accept.
    InvalidTopic,
    /// Creating a topic that exists.
    TopicExists,
    /// A partition count out of range.
    InvalidPartitions,
    /// An unknown topic config or a bad value.
    InvalidConfig,
    /// A record batch failed its checks (CRC, lengths, format).
    CorruptRecords,
    /// A record batch larger than the topic allows.
    RecordsTooLarge,
    /// This broker does not own the partition; refresh metadata and retry.
    NotLeader,
    /// The request's time ran out; a produce may still have been stored.
    Timeout,
    /// A read outside `[log start, high watermark]`.
    OffsetOutOfRange,
    /// Stored data could not be read or written.
    StorageError,
    /// The broker is shutting down; retry on another or after restart.
    ShuttingDown,
    /// An idempotent producer's batch is not the next in its sequence.
    OutOfOrderSequence,
    /// An idempotent producer's epoch is older than its current one.
    InvalidProducerEpoch,
    /// This broker does not coordinate the group: refresh metadata and go to the broker
    /// `metadata` names as its coordinator.
    NotCoordinator,
    /// A group request from a member the group does not have.
    UnknownMember,
    /// A group request for a generation other than the current one.
    IllegalGeneration,
    /// The group is rebalancing: rejoin.
    RebalanceInProgress,
    /// The member's protocols do not match the group's.
    InconsistentGroupProtocol,
    /// A session timeout outside the broker's bounds.
    InvalidSessionTimeout,
    /// A new member must rejoin with the member id it was given.
    MemberIdRequired,
    /// Deleting a group that still has members.
    GroupNotEmpty,
    /// No such group.
    UnknownGroup,
    /// A static member replaced by a newer instance with the same id.
    FencedInstance,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorCode {
    /// Whether retrying the same request (after refreshing metadata, or rejoining a group)
    /// can succeed.
    pub fn retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::NotCoordinator
                | ErrorCode::Timeout
                | ErrorCode::StorageError
                | ErrorCode::ShuttingDown
                | ErrorCode::RebalanceInProgress
        )
    }
}

/// The `error` member of a response header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    /// What went wrong.
    pub code: ErrorCode,
    /// For people: what and, where it helps, what to do.
    pub message: String,
}

impl WireError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_screaming_snake_strings() {
        let s = serde_json::to_string(&ErrorCode::UnknownTopic).unwrap();
        assert_eq!(s, "\"UNKNOWN_TOPIC\"");
        let back: ErrorCode = serde_json::from_str("\"OUT_OF_ORDER_SEQUENCE\"").unwrap();
        assert_eq!(back, ErrorCode::OutOfOrderSequence);
    }
}
