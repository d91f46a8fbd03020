//! Length-prefixed frames: a big-endian `i32` length, then that many bytes.
//!
//! The length is checked against a caller-given range before a single byte is allocated for
//! the frame, so a peer claiming a 2 GiB frame costs nothing but an error.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The stream failed, or ended inside a frame.
    #[error("I/O error reading a frame: {0}")]
    Io(#[from] std::io::Error),
    /// A length outside `[min, max]`.
    #[error("frame length {len} is outside the accepted range [{min}, {max}]")]
    BadLength {
        /// The length the peer sent.
        len: i32,
        /// The smallest accepted.
        min: usize,
        /// The largest accepted.
        max: usize,
    },
}

/// Reads one frame whose length must lie in `[min, max]`. `Ok(None)` on a clean end of
/// stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    min: usize,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len);
    if len < 0 || (len as usize) < min || len as usize > max {
        return Err(FrameError::BadLength { len, min, max });
    }
    let mut buf = BytesMut::zeroed(len as usize);
    r.read_exact(&mut buf).await?;
    Ok(Some(buf.freeze()))
}

/// A buffer with room reserved for a frame's length: write the body after it, then call
/// [`finish_frame`].
pub fn start_frame() -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    buf
}

/// Fills in the length of a frame begun with [`start_frame`].
pub fn finish_frame(mut buf: BytesMut) -> Bytes {
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lengths_are_checked_before_allocation() {
        let mut huge: &[u8] = &i32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame(&mut huge, 8, 1 << 20).await,
            Err(FrameError::BadLength { .. })
        ));
        let mut negative: &[u8] = &(-5i32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut negative, 8, 1 << 20).await,
            Err(FrameError::BadLength { .. })
        ));
        let mut short: &[u8] = &4i32.to_be_bytes();
        assert!(matches!(
            read_frame(&mut short, 8, 1 << 20).await,
            Err(FrameError::BadLength { .. })
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 8, 1 << 20).await.unwrap().is_none());
        let mut truncated: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_frame(&mut truncated, 8, 100).await,
            Err(FrameError::Io(_))
        ));
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = start_frame();
        buf.extend_from_slice(b"12345678");
        let framed = finish_frame(buf);
        let mut r: &[u8] = &framed;
        assert_eq!(
            read_frame(&mut r, 8, 100).await.unwrap().unwrap(),
            Bytes::from_static(b"12345678")
        );
    }
}
