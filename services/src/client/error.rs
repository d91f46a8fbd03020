//! What can go wrong for a client, worded so the person at the terminal knows what to do.

use std::time::Duration;

use strata_proto::native::WireError;
use thiserror::Error;

use super::ClientConfig;

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing answered at the address.
    #[error(
        "nothing answered at {addr} over QUIC (UDP) within {waited:?}; is `strata serve` running there? (set the address with --addr or STRATA_ADDR)"
    )]
    Unreachable {
        /// The address tried.
        addr: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The TLS handshake failed: usually a certificate neither side trusts.
    #[error("TLS handshake with {addr} failed: {reason}; {hint}")]
    Tls {
        /// The address.
        addr: String,
        /// What TLS said.
        reason: String,
        /// What to do about it.
        hint: String,
    },
    /// Bad local settings: an unreadable certificate, an address that does not resolve.
    #[error("{0}")]
    Config(String),
    /// The broker answered with an error.
    #[error("{}: {}", serde_json::to_string(&.0.code).unwrap_or_default().trim_matches('"'), .0.message)]
    Broker(WireError),
    /// The broker's answer did not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection was lost or refused.
    #[error("connection to the broker lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A stream was reset or stopped by the broker.
    #[error("request stream failed: {0}")]
    Stream(String),
    /// Local I/O (the UDP socket).
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// The producer or consumer was closed.
    #[error("{0}")]
    Closed(String),
}

impl ClientError {
    /// Whether trying again (on the same or a new connection) may succeed.
    pub fn retriable(&self) -> bool {
        match self {
            // Out of sequence is what a batch gets when an earlier one of the same partition
            // failed and awaits its retry: the producer resends them all in order (Kafka's
            // producer does the same for any batch but the first in flight).
            ClientError::Broker(e) => {
                e.code.retriable() || e.code == strata_proto::native::ErrorCode::OutOfOrderSequence
            }
            ClientError::Connection(_)
            | ClientError::Stream(_)
            | ClientError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// The broker's error code, if the broker answered with one.
    pub fn code(&self) -> Option<strata_proto::native::ErrorCode> {
        match self {
            ClientError::Broker(e) => Some(e.code),
            _ => None,
        }
    }

    pub(crate) fn from_connect(e: quinn::ConnectionError, config: &ClientConfig) -> ClientError {
        let text = e.to_string();
        // QUIC carries TLS alerts as CRYPTO_ERROR codes 0x100-0x1ff.
        let crypto = |code: quinn::TransportErrorCode| (0x100..=0x1ff).contains(&u64::from(code));
        let tls = match &e {
            quinn::ConnectionError::TransportError(t) => {
                crypto(t.code) || text.contains("certificate")
            }
            quinn::ConnectionError::ConnectionClosed(c) => {
                crypto(c.error_code) || text.contains("certificate")
            }
            _ => false,
        };
        if !tls {
            return match e {
                quinn::ConnectionError::TimedOut => ClientError::Unreachable {
                    addr: config.addr.clone(),
                    waited: config.connect_timeout,
                },
                e => ClientError::Connection(e),
            };
        }
        let hint = if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
            format!(
                "the broker's certificate is not signed by the CA in {} — point --ca (or STRATA_CA) at the broker's CA, by default <data-dir>/tls/ca.pem",
                config.ca.display()
            )
        } else if text.contains("NotValidForName") {
            "the broker's certificate does not name this host; connect by a name it covers or set the server name".to_string()
        } else if config.identity.is_none() {
            "the broker requires a client certificate (mutual TLS): pass --cert and --key (or STRATA_CERT and STRATA_KEY)".to_string()
        } else {
            "the broker does not accept this client certificate: it must be signed by the CA given to the broker's --client-ca".to_string()
        };
        ClientError::Tls {
            addr: config.addr.clone(),
            reason: text,
            hint,
        }
    }

    pub(crate) fn from_read(e: std::io::Error) -> ClientError {
        match e.downcast::<quinn::ReadError>() {
            Ok(quinn::ReadError::ConnectionLost(c)) => ClientError::Connection(c),
            Ok(r) => ClientError::Stream(r.to_string()),
            Err(e) => ClientError::Stream(e.to_string()),
        }
    }
}

impl From<quinn::WriteError> for ClientError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => ClientError::Connection(c),
            e => ClientError::Stream(e.to_string()),
        }
    }
}
