//! Kafka framing: a big-endian `i32` length, then that many bytes of header and body.
//!
//! The length is checked against the broker's limit before a single byte is allocated for
//! the frame, so a client claiming a 2 GiB request costs nothing but a closed connection.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::Encodable;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

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

/// Reads one frame. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<Bytes>, ConnError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len);
    if len < 8 || len as usize > limit {
        return Err(ConnError::BadLength { len, limit });
    }
    let mut buf = BytesMut::zeroed(len as usize);
    r.read_exact(&mut buf).await?;
    Ok(Some(buf.freeze()))
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
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .and_then(|()| body.encode(&mut buf, version))
        .map_err(|e| ConnError::Encode(format!("{api:?} v{version}: {e}")))?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lengths_are_checked_before_allocation() {
        let mut huge: &[u8] = &i32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame(&mut huge, 1 << 20).await,
            Err(ConnError::BadLength { .. })
        ));
        let mut negative: &[u8] = &(-5i32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut negative, 1 << 20).await,
            Err(ConnError::BadLength { .. })
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 1 << 20).await.unwrap().is_none());
        let mut frame = 8i32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[1; 8]);
        let mut r: &[u8] = &frame;
        assert_eq!(read_frame(&mut r, 100).await.unwrap().unwrap().len(), 8);
    }
}
