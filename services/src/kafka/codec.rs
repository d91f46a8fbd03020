//! Kafka framing: a big-endian `i32` length, then that many bytes of header and body.
//!
//! The framing itself is [`strata_proto::frame`]; this module adds Kafka's error handling
//! and response headers.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::Encodable;
use strata_proto::frame::{self, FrameError};
use thiserror::Error;
use tokio::io::AsyncRead;

/// Why a connection is being closed.
#[derive(Debug, Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame length outside `[8, limit]`.
    #[error("frame length {len} is outside the accepted range [8, {limit}]")]
    BadLength {
        /// The length the client sent.
        len: i32,
        /// The broker's limit.
        limit: usize,
    },
    /// A request that cannot be understood (unknown API key, undecodable body).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A request version this broker does not speak (other than ApiVersions, which gets an
    /// answer).
    #[error("{api:?} v{version} is not among the versions this broker advertises")]
    UnsupportedVersion {
        /// The API.
        api: ApiKey,
        /// The version the client used.
        version: i16,
    },
    /// A response could not be encoded.
    #[error("cannot encode response: {0}")]
    Encode(String),
}

/// Smallest Kafka request: api key, version and correlation id.
const MIN_REQUEST: usize = 8;

/// Reads one request frame. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<Bytes>, ConnError> {
    frame::read_frame(r, MIN_REQUEST, limit)
        .await
        .map_err(|e| match e {
            FrameError::Io(e) => ConnError::Io(e),
            FrameError::BadLength { len, .. } => ConnError::BadLength { len, limit },
        })
}

/// Encodes a response frame: length, response header, body.
pub fn encode_response<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, ConnError> {
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut buf = frame::start_frame();
    header
        .encode(&mut buf, header_version)
        .and_then(|()| body.encode(&mut buf, version))
        .map_err(|e| ConnError::Encode(format!("{api:?} v{version}: {e}")))?;
    Ok(frame::finish_frame(buf))
}
