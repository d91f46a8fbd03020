//! Strata's native protocol, spoken over QUIC (ALPN `strata/1`).
//!
//! Every request travels on its own bidirectional QUIC stream: the client writes one request
//! [`Frame`] and finishes its side; the broker answers with one response frame (a subscription
//! answers with a sequence of them) and finishes its side. Streams are independent, so a slow
//! partition never holds up a request on another one, and a broken request costs one stream.
//!
//! A frame is a small JSON header (the message's fields, easy to produce from any language)
//! followed by an opaque payload that carries record batches in Kafka's RecordBatch v2 format,
//! exactly as the storage engine keeps them: the hot path never re-encodes records.
//! `proto/README.md` is the full specification.

mod error;
mod frame;
pub mod messages;

pub use error::{ErrorCode, WireError};
pub use frame::{
    Frame, FrameDecodeError, HEADER_LIMIT, MessageKind, PROTOCOL_VERSION, RESPONSE_BIT,
    read_native_frame,
};

/// The ALPN identifier of this protocol's first major version.
pub const ALPN: &[u8] = b"strata/1";
