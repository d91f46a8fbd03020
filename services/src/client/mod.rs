//! The Rust client of Strata's native protocol.
//!
//! - [`Client`]: one QUIC connection to a broker (re-established when lost), with a typed call
//!   for every message of `proto/README.md`;
//! - [`Producer`]: batching, linger, zstd, acks levels, Kafka's murmur2 key partitioner, and
//!   idempotent retries that never store a record twice;
//! - [`Consumer`]: reads partitions from offsets, alone or as a member of a consumer group
//!   shared with Kafka consumers.
//!
//! ```no_run
//! # async fn example() -> Result<(), strata::client::ClientError> {
//! use strata::client::{Client, ClientConfig, Producer, ProducerConfig};
//! let client = Client::connect(ClientConfig::new("127.0.0.1:9093", "strata-data/tls/ca.pem")).await?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
//! let delivery = producer.send("events", Some("user-1".into()), "hello".into()).await?;
//! println!("stored at offset {}", delivery.await?.offset);
//! # Ok(()) }
//! ```
//!
//! `services/examples/native_client.rs` is a runnable example.

pub mod batch;
mod consumer;
mod error;
pub mod partitioner;
mod producer;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_proto::native::messages::{self as m, ErrorEnvelope};
use strata_proto::native::{Frame, MessageKind, RESPONSE_BIT, read_native_frame};
use tokio::sync::Mutex;

pub use consumer::{ConsumedRecord, Consumer, GroupMembership, StartFrom};
pub use error::ClientError;
pub use producer::{Delivered, Producer, ProducerConfig};

/// Largest response frame the client accepts.
const MAX_RESPONSE: usize = 256 << 20;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of the broker's QUIC listener.
    pub addr: String,
    /// PEM file of the CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// Client certificate and key, for brokers that require mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to check the broker's certificate against; the host of `addr` by default.
    pub server_name: Option<String>,
    /// How long a connection attempt may take before the broker is declared unreachable.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// A configuration for `addr`, trusting `ca`.
    pub fn new(addr: impl Into<String>, ca: impl Into<PathBuf>) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            ca: ca.into(),
            identity: None,
            server_name: None,
            connect_timeout: Duration::from_secs(10),
        }
    }

    fn host(&self) -> String {
        let host = match self.addr.rsplit_once(':') {
            Some((h, _)) => h,
            None => &self.addr,
        };
        host.trim_matches(['[', ']']).to_string()
    }
}

/// A connection to one broker, shared by producers and consumers. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    endpoint: Endpoint,
    remote: SocketAddr,
    server_name: String,
    quic: quinn::ClientConfig,
    conn: Mutex<Connection>,
}

impl Client {
    /// Connects, failing with a message that says what to do when the broker is not there or
    /// its certificate is not trusted.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let identity = match &config.identity {
            Some((cert, key)) => Some(
                crate::tls::load_certs(cert)
                    .and_then(|chain| {
                        Ok(crate::tls::Identity {
                            chain,
                            key: crate::tls::load_key(key)?,
                        })
                    })
                    .map_err(|e| ClientError::Config(format!("{e:#}")))?,
            ),
            None => None,
        };
        let tls = crate::tls::client_config(&config.ca, identity).map_err(|e| {
            ClientError::Config(format!(
                "{e:#}; pass --ca with the broker's CA certificate (by default <data-dir>/tls/ca.pem of the broker)"
            ))
        })?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
        quic.transport_config(Arc::new(crate::quic::transport_config()));
        let remote = config
            .addr
            .to_socket_addrs()
            .map_err(|e| ClientError::Config(format!("cannot resolve '{}': {e}", config.addr)))?
            .next()
            .ok_or_else(|| ClientError::Config(format!("'{}' resolves to nothing", config.addr)))?;
        let bind: SocketAddr = if remote.is_ipv6() {
            "[::]:0".parse().expect("valid address")
        } else {
            "0.0.0.0:0".parse().expect("valid address")
        };
        let endpoint = Endpoint::client(bind).map_err(ClientError::Io)?;
        let server_name = config.server_name.clone().unwrap_or_else(|| config.host());
        let conn = dial(&endpoint, &quic, remote, &server_name, &config).await?;
        let client = Client {
            inner: Arc::new(Inner {
                config,
                endpoint,
                remote,
                server_name,
                quic,
                conn: Mutex::new(conn),
            }),
        };
        // A broker that requires client certificates may refuse ours only after the handshake
        // looked complete: one round trip now turns that into a clear error here.
        match client.hello().await {
            Err(ClientError::Connection(e)) => {
                Err(ClientError::from_connect(e, &client.inner.config))
            }
            Err(e) => Err(e),
            Ok(_) => Ok(client),
        }
    }

    /// The live connection, re-established if it was lost.
    async fn connection(&self) -> Result<Connection, ClientError> {
        let mut conn = self.inner.conn.lock().await;
        if conn.close_reason().is_some() {
            let i = &self.inner;
            *conn = dial(&i.endpoint, &i.quic, i.remote, &i.server_name, &i.config).await?;
            tracing::info!(addr = %i.config.addr, "reconnected to the broker");
        }
        Ok(conn.clone())
    }

    /// Moves the connection to a new local UDP socket, as when a device changes networks.
    /// The connection survives (QUIC connection migration).
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<(), ClientError> {
        self.inner.endpoint.rebind(socket).map_err(ClientError::Io)
    }

    /// An id of the current connection: unchanged across a migration, new after a reconnect.
    pub async fn connection_id(&self) -> usize {
        self.inner.conn.lock().await.stable_id()
    }

    /// The local address the client sends from.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        self.inner.endpoint.local_addr().map_err(ClientError::Io)
    }

    /// Sends one request on a new stream and returns the stream positioned at the answer.
    pub(crate) async fn open<H: Serialize>(
        &self,
        kind: MessageKind,
        header: &H,
        payload: Bytes,
    ) -> Result<RecvStream, ClientError> {
        let conn = self.connection().await?;
        let (mut send, recv) = conn.open_bi().await?;
        let frame = Frame::new(kind as u16, 1, header, payload);
        send.write_chunk(frame.prefix()).await?;
        if !frame.payload.is_empty() {
            send.write_chunk(frame.payload).await?;
        }
        // Only fails if the stream was already finished or reset.
        let _ = send.finish();
        Ok(recv)
    }

    /// Reads the next answer frame of a request stream; `None` at its end. Not cancel-safe:
    /// a stream read in a `select!` or under a timeout goes through [`Subscription`].
    pub(crate) async fn next<R: DeserializeOwned>(
        kind: MessageKind,
        recv: &mut RecvStream,
    ) -> Result<Option<(R, Bytes)>, ClientError> {
        let Some(frame) = read_native_frame(recv, MAX_RESPONSE)
            .await
            .map_err(|e| match e {
                strata_proto::native::FrameDecodeError::Frame(
                    strata_proto::frame::FrameError::Io(io),
                ) => ClientError::from_read(io),
                e => ClientError::Protocol(e.to_string()),
            })?
        else {
            return Ok(None);
        };
        answer(kind, frame).map(Some)
    }

    /// One request, one answer.
    pub async fn call<H: Serialize, R: DeserializeOwned>(
        &self,
        kind: MessageKind,
        header: &H,
        payload: Bytes,
    ) -> Result<(R, Bytes), ClientError> {
        let mut recv = self.open(kind, header, payload).await?;
        Client::next(kind, &mut recv).await?.ok_or_else(|| {
            ClientError::Protocol(format!(
                "the broker ended a {} stream without an answer",
                kind.name()
            ))
        })
    }

    pub(crate) async fn call_header<H: Serialize, R: DeserializeOwned>(
        &self,
        kind: MessageKind,
        header: &H,
    ) -> Result<R, ClientError> {
        Ok(self.call(kind, header, Bytes::new()).await?.0)
    }

    /// What the broker speaks, and who it thinks we are.
    pub async fn hello(&self) -> Result<m::HelloResponse, ClientError> {
        let req = m::HelloRequest {
            client: format!("strata-rust/{}", env!("CARGO_PKG_VERSION")),
        };
        self.call_header(MessageKind::Hello, &req).await
    }

    /// Brokers and topics (all topics when `topics` is `None`).
    pub async fn metadata(
        &self,
        topics: Option<Vec<String>>,
    ) -> Result<m::MetadataResponse, ClientError> {
        self.call_header(MessageKind::Metadata, &m::MetadataRequest { topics })
            .await
    }

    /// Creates a topic.
    pub async fn create_topic(
        &self,
        req: &m::CreateTopicRequest,
    ) -> Result<m::TopicDescription, ClientError> {
        self.call_header(MessageKind::CreateTopic, req).await
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let req = m::TopicName { name: name.into() };
        let _: m::Empty = self.call_header(MessageKind::DeleteTopic, &req).await?;
        Ok(())
    }

    /// A topic's partitions with their offsets, and its configs.
    pub async fn describe_topic(&self, name: &str) -> Result<m::TopicDescription, ClientError> {
        let req = m::TopicName { name: name.into() };
        self.call_header(MessageKind::DescribeTopic, &req).await
    }

    /// Changes a topic's configs or partition count.
    pub async fn alter_topic(
        &self,
        req: &m::AlterTopicRequest,
    ) -> Result<m::TopicDescription, ClientError> {
        self.call_header(MessageKind::AlterTopic, req).await
    }

    /// Resolves earliest, latest or a time to an offset.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: i32,
        query: m::OffsetQuery,
    ) -> Result<m::ListOffsetsResponse, ClientError> {
        let req = m::ListOffsetsRequest {
            topic: topic.into(),
            partition,
            query,
        };
        self.call_header(MessageKind::ListOffsets, &req).await
    }

    /// Reads a partition from `offset`; with `max_wait`, waits at the log end for records.
    pub async fn fetch(
        &self,
        req: &m::FetchRequest,
    ) -> Result<(m::FetchResponse, Bytes), ClientError> {
        self.call(MessageKind::Fetch, req, Bytes::new()).await
    }

    /// Starts a server-push subscription to a partition.
    pub async fn subscribe(&self, req: &m::SubscribeRequest) -> Result<Subscription, ClientError> {
        Ok(Subscription {
            recv: self.open(MessageKind::Subscribe, req, Bytes::new()).await?,
            buf: bytes::BytesMut::new(),
        })
    }

    /// A fresh idempotent producer id.
    pub async fn init_producer_id(&self) -> Result<m::InitProducerIdResponse, ClientError> {
        self.call_header(MessageKind::InitProducerId, &m::Empty {})
            .await
    }

    /// Every group.
    pub async fn list_groups(&self) -> Result<m::ListGroupsResponse, ClientError> {
        self.call_header(MessageKind::ListGroups, &m::Empty {})
            .await
    }

    /// A group's state, members and offsets with lag.
    pub async fn describe_group(&self, group: &str) -> Result<m::GroupDetail, ClientError> {
        let req = m::GroupName {
            group: group.into(),
        };
        self.call_header(MessageKind::DescribeGroup, &req).await
    }

    /// Deletes an empty group.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let req = m::GroupName {
            group: group.into(),
        };
        let _: m::Empty = self.call_header(MessageKind::DeleteGroup, &req).await?;
        Ok(())
    }

    /// A group's committed offsets.
    pub async fn fetch_offsets(&self, group: &str) -> Result<Vec<m::PartitionOffset>, ClientError> {
        let req = m::GroupName {
            group: group.into(),
        };
        let r: m::FetchOffsetsResponse = self.call_header(MessageKind::FetchOffsets, &req).await?;
        Ok(r.offsets)
    }

    /// Commits offsets (generation -1 and no member id for a group without members).
    pub async fn commit_offsets(&self, req: &m::CommitOffsetsRequest) -> Result<(), ClientError> {
        let _: m::Empty = self.call_header(MessageKind::CommitOffsets, req).await?;
        Ok(())
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        let conn = self.inner.conn.lock().await;
        conn.close(0u32.into(), b"bye");
        drop(conn);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

/// An answer frame's header and payload, or the broker's error.
fn answer<R: DeserializeOwned>(kind: MessageKind, frame: Frame) -> Result<(R, Bytes), ClientError> {
    if frame.kind != kind as u16 | RESPONSE_BIT {
        return Err(ClientError::Protocol(format!(
            "answer of kind {:#x} to a {} request",
            frame.kind,
            kind.name()
        )));
    }
    let envelope: ErrorEnvelope = frame
        .header()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    if let Some(err) = envelope.error {
        return Err(ClientError::Broker(err));
    }
    let header = frame
        .header()
        .map_err(|e| ClientError::Protocol(format!("{} answer: {e}", kind.name())))?;
    Ok((header, frame.payload))
}

async fn dial(
    endpoint: &Endpoint,
    quic: &quinn::ClientConfig,
    remote: SocketAddr,
    server_name: &str,
    config: &ClientConfig,
) -> Result<Connection, ClientError> {
    let connecting = endpoint
        .connect_with(quic.clone(), remote, server_name)
        .map_err(|e| ClientError::Config(format!("cannot connect to {}: {e}", config.addr)))?;
    match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ClientError::from_connect(e, config)),
        Err(_) => Err(ClientError::Unreachable {
            addr: config.addr.clone(),
            waited: config.connect_timeout,
        }),
    }
}

/// A server-push subscription: frames of batches as the partition grows.
///
/// [`Subscription::next`] is cancel-safe (it keeps partial frames in its own buffer), so it
/// can be awaited under a timeout or in a `select!`.
pub struct Subscription {
    recv: RecvStream,
    buf: bytes::BytesMut,
}

impl Subscription {
    /// The next pushed frame: the partition's offsets and whole batches. `None` when the
    /// broker ended the subscription.
    pub async fn next(&mut self) -> Result<Option<(m::FetchResponse, Bytes)>, ClientError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return answer(MessageKind::Subscribe, frame).map(Some);
            }
            match self.recv.read_chunk(1 << 20, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(ClientError::Protocol(
                        "the subscription ended inside a frame".into(),
                    ));
                }
                Err(quinn::ReadError::ConnectionLost(e)) => return Err(ClientError::Connection(e)),
                Err(e) => return Err(ClientError::Stream(e.to_string())),
            }
        }
    }

    /// A whole frame from the buffer, if one is there.
    fn take_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if !(8..=MAX_RESPONSE).contains(&len) {
            return Err(ClientError::Protocol(format!(
                "pushed frame of {len} bytes is outside [8, {MAX_RESPONSE}]"
            )));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        let _ = self.buf.split_to(4);
        let body = self.buf.split_to(len).freeze();
        Frame::decode(body)
            .map(Some)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Ends the subscription.
    pub fn stop(mut self) {
        let _ = self.recv.stop(0u32.into());
    }
}
