//! The native frame: `length | kind | version | header length | JSON header | payload`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::AsyncRead;

use crate::frame::{FrameError, read_frame};

/// The protocol's major version, also named by the ALPN string.
pub const PROTOCOL_VERSION: u16 = 1;

/// Set in the kind of every frame the broker sends in answer to a request.
pub const RESPONSE_BIT: u16 = 0x8000;

/// The largest JSON header accepted; headers describe records, they never carry them.
pub const HEADER_LIMIT: usize = 1 << 20;

/// Bytes after the length field that every frame has: kind, version and header length.
const FIXED: usize = 2 + 2 + 4;

/// What a frame asks for or answers. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageKind {
    /// Version negotiation and identity; see [`crate::native::messages::HelloResponse`].
    Hello = 1,
    /// Brokers, topics and partitions.
    Metadata = 2,
    /// Create a topic.
    CreateTopic = 3,
    /// Delete a topic.
    DeleteTopic = 4,
    /// A topic's partitions (log start and end offsets) and configs.
    DescribeTopic = 5,
    /// Change a topic's configs or grow its partitions.
    AlterTopic = 6,
    /// Append record batches to one partition.
    Produce = 7,
    /// Read record batches from one partition, with an optional long poll.
    Fetch = 8,
    /// Server push: the broker streams new batches of one partition as they become readable.
    Subscribe = 9,
    /// Resolve earliest, latest or a timestamp to an offset.
    ListOffsets = 10,
    /// A producer id and epoch for idempotent produce.
    InitProducerId = 11,
    /// Join a group (Kafka's classic group protocol).
    JoinGroup = 12,
    /// Receive (and, as leader, hand out) assignments.
    SyncGroup = 13,
    /// Stay in a group.
    Heartbeat = 14,
    /// Leave a group.
    LeaveGroup = 15,
    /// Commit offsets for a group.
    CommitOffsets = 16,
    /// Read a group's committed offsets.
    FetchOffsets = 17,
    /// Every group.
    ListGroups = 18,
    /// A group's state and members.
    DescribeGroup = 19,
    /// Delete an empty group and its offsets.
    DeleteGroup = 20,
}

impl MessageKind {
    /// Every kind, in number order.
    pub const ALL: [MessageKind; 20] = [
        MessageKind::Hello,
        MessageKind::Metadata,
        MessageKind::CreateTopic,
        MessageKind::DeleteTopic,
        MessageKind::DescribeTopic,
        MessageKind::AlterTopic,
        MessageKind::Produce,
        MessageKind::Fetch,
        MessageKind::Subscribe,
        MessageKind::ListOffsets,
        MessageKind::InitProducerId,
        MessageKind::JoinGroup,
        MessageKind::SyncGroup,
        MessageKind::Heartbeat,
        MessageKind::LeaveGroup,
        MessageKind::CommitOffsets,
        MessageKind::FetchOffsets,
        MessageKind::ListGroups,
        MessageKind::DescribeGroup,
        MessageKind::DeleteGroup,
    ];

    /// The kind numbered `n`, if there is one.
    pub fn from_u16(n: u16) -> Option<MessageKind> {
        MessageKind::ALL.iter().copied().find(|k| *k as u16 == n)
    }

    /// The name used in [`crate::native::messages::HelloResponse`] and in logs.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Hello => "hello",
            MessageKind::Metadata => "metadata",
            MessageKind::CreateTopic => "create_topic",
            MessageKind::DeleteTopic => "delete_topic",
            MessageKind::DescribeTopic => "describe_topic",
            MessageKind::AlterTopic => "alter_topic",
            MessageKind::Produce => "produce",
            MessageKind::Fetch => "fetch",
            MessageKind::Subscribe => "subscribe",
            MessageKind::ListOffsets => "list_offsets",
            MessageKind::InitProducerId => "init_producer_id",
            MessageKind::JoinGroup => "join_group",
            MessageKind::SyncGroup => "sync_group",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::LeaveGroup => "leave_group",
            MessageKind::CommitOffsets => "commit_offsets",
            MessageKind::FetchOffsets => "fetch_offsets",
            MessageKind::ListGroups => "list_groups",
            MessageKind::DescribeGroup => "describe_group",
            MessageKind::DeleteGroup => "delete_group",
        }
    }
}

/// One native frame, header still as JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message kind, with [`RESPONSE_BIT`] set on answers.
    pub kind: u16,
    /// The message version the sender used.
    pub version: u16,
    /// The JSON header.
    pub header: Bytes,
    /// Record batches (or nothing).
    pub payload: Bytes,
}

/// Why a frame's contents could not be understood.
#[derive(Debug, Error)]
pub enum FrameDecodeError {
    /// The stream failed, ended inside a frame, or announced a bad length.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The header length does not fit the frame.
    #[error("header length {header} does not fit a frame of {frame} bytes (limit {HEADER_LIMIT})")]
    HeaderLength {
        /// The header length the frame announced.
        header: usize,
        /// The frame length.
        frame: usize,
    },
    /// The header is not the JSON object the message kind needs.
    #[error("malformed header: {0}")]
    Json(#[from] serde_json::Error),
}

impl Frame {
    /// A frame with `header` serialised as JSON.
    pub fn new<H: Serialize>(kind: u16, version: u16, header: &H, payload: Bytes) -> Frame {
        // Serialising plain structs into a Vec cannot fail.
        let header = serde_json::to_vec(header).unwrap_or_else(|_| b"{}".to_vec());
        Frame {
            kind,
            version,
            header: Bytes::from(header),
            payload,
        }
    }

    /// The frame as bytes on the wire. The payload is copied once; callers sending large
    /// payloads use [`Frame::prefix`] and write the payload after it.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::from(&self.prefix()[..]);
        buf.extend_from_slice(&self.payload);
        buf.freeze()
    }

    /// Everything up to the payload: write this, then the payload, without copying it.
    pub fn prefix(&self) -> Bytes {
        let len = FIXED + self.header.len() + self.payload.len();
        let mut buf = BytesMut::with_capacity(4 + FIXED + self.header.len());
        buf.put_u32(len as u32);
        buf.put_u16(self.kind);
        buf.put_u16(self.version);
        buf.put_u32(self.header.len() as u32);
        buf.extend_from_slice(&self.header);
        buf.freeze()
    }

    /// Splits a frame body (everything after the length) into its parts.
    pub fn decode(mut body: Bytes) -> Result<Frame, FrameDecodeError> {
        let frame = body.len();
        if frame < FIXED {
            return Err(FrameDecodeError::HeaderLength { header: 0, frame });
        }
        let kind = u16::from_be_bytes([body[0], body[1]]);
        let version = u16::from_be_bytes([body[2], body[3]]);
        let header = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
        if header > HEADER_LIMIT || header > frame - FIXED {
            return Err(FrameDecodeError::HeaderLength { header, frame });
        }
        let _ = body.split_to(FIXED);
        let header_bytes = body.split_to(header);
        Ok(Frame {
            kind,
            version,
            header: header_bytes,
            payload: body,
        })
    }

    /// The header parsed as `H`.
    pub fn header<H: DeserializeOwned>(&self) -> Result<H, FrameDecodeError> {
        Ok(serde_json::from_slice(&self.header)?)
    }
}

/// Reads one native frame of at most `max` bytes. `Ok(None)` on a clean end of stream.
pub async fn read_native_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Frame>, FrameDecodeError> {
    match read_frame(r, FIXED, max).await? {
        Some(body) => Ok(Some(Frame::decode(body)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let f = Frame::new(
            MessageKind::Produce as u16,
            1,
            &serde_json::json!({"topic": "t"}),
            Bytes::from_static(b"batches"),
        );
        let wire = f.encode();
        let mut r: &[u8] = &wire;
        let back = read_native_frame(&mut r, 1 << 20).await.unwrap().unwrap();
        assert_eq!(back, f);
        let h: serde_json::Value = back.header().unwrap();
        assert_eq!(h["topic"], "t");
    }

    #[test]
    fn bad_header_lengths_are_refused() {
        let mut body = BytesMut::new();
        body.put_u16(7);
        body.put_u16(1);
        body.put_u32(100);
        body.extend_from_slice(b"{}");
        assert!(matches!(
            Frame::decode(body.freeze()),
            Err(FrameDecodeError::HeaderLength { header: 100, .. })
        ));
        assert!(Frame::decode(Bytes::from_static(b"abc")).is_err());
    }

    #[test]
    fn kinds_are_numbered_in_order() {
        for (i, k) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(*k as u16, i as u16 + 1);
            assert_eq!(MessageKind::from_u16(*k as u16), Some(*k));
        }
        assert_eq!(MessageKind::from_u16(999), None);
    }
}
