//! The native QUIC front end: Strata's own protocol (`proto/README.md`) over quinn.
//!
//! A thin translation onto the [broker core](crate::broker), like the Kafka front end:
//!
//! - [`serve`] accepts connections; each handshake is TLS 1.3 with ALPN `strata/1`, and with
//!   `--client-ca` the client's certificate names who it is;
//! - each connection accepts bidirectional streams, one request per stream, each served by its
//!   own task, so a slow partition or a long poll never delays another request;
//! - a bad frame gets an error frame on its own stream only: the connection, and every other
//!   client, carry on.
//!
//! Handlers live in [`admin`] (hello, metadata, topics), [`data`] (produce, fetch, subscribe,
//! offsets) and [`groups`].

mod admin;
mod data;
mod errors;
mod groups;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::front_metrics::FrontEndMetrics;
use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use serde::Serialize;
use strata_proto::frame::FrameError;
use strata_proto::native::{
    ErrorCode, Frame, FrameDecodeError, MessageKind, PROTOCOL_VERSION, RESPONSE_BIT, WireError,
    messages::ErrorEnvelope, read_native_frame,
};
use tokio::sync::watch;

use crate::broker::Broker;

/// Every message is at version 1 in protocol version 1.
const MESSAGE_VERSIONS: [u16; 2] = [1, 1];

/// A request frame must arrive within this long of its stream opening.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Concurrent requests (streams) per connection. Each holds at most one request frame.
const MAX_STREAMS: u32 = 1024;

/// Largest UDP payload path MTU discovery tries: a 9000-byte jumbo frame less IP and UDP
/// headers.
const JUMBO_MTU: u16 = 8952;

/// Keep-alives and idle timeout, set for mobile links: a keep-alive every 10 s holds NAT
/// bindings open; a link silent for 60 s is considered gone.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

static METRICS: LazyLock<FrontEndMetrics> = LazyLock::new(|| {
    FrontEndMetrics::register(
        "quic",
        (
            "Native requests by message and outcome.",
            &["message", "outcome"],
        ),
        (
            "Native request latency, from a whole request frame to the answer written.",
            &["message"],
        ),
        "QUIC connections by how they started or ended.",
    )
});

/// Transport settings shared by the broker and the Rust client: room for many concurrent
/// requests, windows large enough for tens of MiB in flight, and the mobile-link timers.
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    // Path MTU discovery may grow datagrams up to jumbo-frame size where the path allows
    // (datacenter networks, loopback); it backs off by itself where it does not. Fewer,
    // larger datagrams cost far less CPU per byte.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(JUMBO_MTU);
    t.mtu_discovery_config(Some(mtu));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(16 << 20))
        .receive_window(VarInt::from_u32(64 << 20))
        .send_window(64 << 20)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .expect("60 s fits QUIC's idle timeout"),
        ));
    t
}

/// Builds the QUIC endpoint from a rustls configuration. `reset_secret` keys stateless
/// resets; kept across restarts, it lets a restarted broker end its predecessor's
/// connections at once, so clients reconnect instead of waiting out the idle timeout.
pub fn endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    reset_secret: &[u8],
) -> anyhow::Result<Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    // Clients whose address changes (Wi-Fi to cellular) keep their connection.
    config.migration(true);
    let reset_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, reset_secret);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection ids carry a hash that the endpoint checks before anything else; a restarted
    // broker must recognise its predecessor's ids to answer them with a reset.
    let cid_key = u64::from_be_bytes(
        reset_secret
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_default(),
    );
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let in_use = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot listen for QUIC on {addr} (UDP): {e}; is another broker running? choose another address with --quic-addr"
        )
    };
    let socket = std::net::UdpSocket::bind(addr).map_err(in_use)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("QUIC needs the tokio runtime"))?;
    Endpoint::new(endpoint_config, Some(config), socket, runtime).map_err(in_use)
}

/// Per-connection context handed to every handler.
pub(crate) struct Ctx {
    pub broker: Broker,
    pub peer: SocketAddr,
    /// The client's certificate common name, under mutual TLS.
    pub identity: Option<String>,
    pub max_frame: usize,
}

/// A success answer: a JSON header and a payload.
pub(crate) struct Reply {
    header: Bytes,
    payload: Bytes,
}

impl Reply {
    /// An answer with a header only.
    pub fn new<H: Serialize>(header: &H) -> Reply {
        Reply::with_payload(header, Bytes::new())
    }

    /// An answer with a payload of batches.
    pub fn with_payload<H: Serialize>(header: &H, payload: Bytes) -> Reply {
        let header = serde_json::to_vec(header).unwrap_or_else(|_| b"{}".to_vec());
        Reply {
            header: Bytes::from(header),
            payload,
        }
    }
}

/// Serves QUIC connections until `stopped` turns true, then closes them all.
pub async fn serve(
    endpoint: Endpoint,
    broker: Broker,
    max_frame: usize,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let broker = broker.clone();
                tokio::spawn(async move {
                    let peer = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => connection(conn, broker, max_frame).await,
                        Err(e) => {
                            METRICS.connections.with_label_values(&["handshake_failed"]).inc();
                            tracing::warn!(%peer, error = %e, "QUIC handshake failed");
                        }
                    }
                });
            }
            _ = stopped.changed() => break,
        }
    }
    endpoint.close(VarInt::from_u32(0), b"broker shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
}

fn identity(conn: &Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    crate::tls::common_name(certs.first()?)
}

async fn connection(conn: Connection, broker: Broker, max_frame: usize) {
    let ctx = Arc::new(Ctx {
        broker,
        peer: conn.remote_address(),
        identity: identity(&conn),
        max_frame,
    });
    METRICS.connections.with_label_values(&["accepted"]).inc();
    match &ctx.identity {
        // Under mutual TLS, who connected is worth a line in the log.
        Some(identity) => tracing::info!(peer = %ctx.peer, identity, "QUIC connection"),
        None => tracing::debug!(peer = %ctx.peer, "QUIC connection"),
    }
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { stream(ctx, send, recv).await });
            }
            Err(e) => {
                let outcome = match e {
                    quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::LocallyClosed => "closed",
                    quinn::ConnectionError::TimedOut => "timed_out",
                    _ => "failed",
                };
                METRICS.connections.with_label_values(&[outcome]).inc();
                tracing::debug!(peer = %ctx.peer, error = %e, "QUIC connection ended");
                return;
            }
        }
    }
}

/// The error answer for a frame that could not be read, or `None` when the stream itself
/// failed (reset, connection lost) and there is nobody to answer.
fn read_error(e: &FrameDecodeError, max: usize) -> Option<WireError> {
    match e {
        FrameDecodeError::Frame(FrameError::Io(io))
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Some(WireError::new(
                ErrorCode::MalformedFrame,
                "the stream ended inside a frame",
            ))
        }
        FrameDecodeError::Frame(FrameError::Io(_)) => None,
        // The length is a u32 on the wire; the shared reader sees it as an i32.
        FrameDecodeError::Frame(FrameError::BadLength { len, .. })
            if *len as u32 as u64 > max as u64 =>
        {
            Some(WireError::new(
                ErrorCode::FrameTooLarge,
                format!(
                    "frame of {} bytes is over this broker's limit of {max} bytes",
                    *len as u32
                ),
            ))
        }
        e => Some(WireError::new(ErrorCode::MalformedFrame, e.to_string())),
    }
}

async fn stream(ctx: Arc<Ctx>, mut send: SendStream, mut recv: RecvStream) {
    let read = tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        read_native_frame(&mut recv, ctx.max_frame),
    )
    .await;
    let frame = match read {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let Some(err) = read_error(&e, ctx.max_frame) else {
                tracing::debug!(peer = %ctx.peer, error = %e, "request stream failed");
                return;
            };
            tracing::warn!(peer = %ctx.peer, error = %e, "bad native frame");
            METRICS
                .requests
                .with_label_values(&["unknown", "malformed"])
                .inc();
            // Nothing more of this stream will be read.
            let _ = recv.stop(VarInt::from_u32(0));
            answer_error(&mut send, 0, PROTOCOL_VERSION, err).await;
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %ctx.peer, "request frame not received in time; stream dropped");
            let _ = recv.stop(VarInt::from_u32(0));
            let _ = send.reset(VarInt::from_u32(0));
            return;
        }
    };
    let started = Instant::now();
    let (kind, version) = (frame.kind, frame.version);
    let Some(message) = MessageKind::from_u16(kind) else {
        tracing::warn!(peer = %ctx.peer, kind, "unknown native message kind");
        METRICS
            .requests
            .with_label_values(&["unknown", "unknown_message"])
            .inc();
        let err = WireError::new(
            ErrorCode::UnknownMessage,
            format!("unknown message kind {kind}; see hello for what this broker speaks"),
        );
        answer_error(&mut send, kind, version, err).await;
        return;
    };
    if !(MESSAGE_VERSIONS[0]..=MESSAGE_VERSIONS[1]).contains(&version) {
        let err = WireError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "{} version {version} is outside the versions this broker accepts, {}..={}",
                message.name(),
                MESSAGE_VERSIONS[0],
                MESSAGE_VERSIONS[1]
            ),
        );
        METRICS
            .requests
            .with_label_values(&[message.name(), "unsupported_version"])
            .inc();
        answer_error(&mut send, kind, version, err).await;
        return;
    }
    // These two answer with more than one frame, so they own the stream.
    match message {
        MessageKind::Subscribe => {
            METRICS
                .requests
                .with_label_values(&[message.name(), "ok"])
                .inc();
            data::subscribe(&ctx, &frame, &mut send).await;
            return;
        }
        MessageKind::Produce => {
            METRICS
                .requests
                .with_label_values(&[message.name(), "ok"])
                .inc();
            data::produce(&ctx, &frame, &mut send).await;
            METRICS
                .seconds
                .with_label_values(&[message.name()])
                .observe(started.elapsed().as_secs_f64());
            return;
        }
        _ => {}
    }
    let result = dispatch(&ctx, message, &frame).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    METRICS
        .requests
        .with_label_values(&[message.name(), outcome])
        .inc();
    match result {
        Ok(reply) => write_reply(&mut send, kind, version, reply).await,
        Err(err) => answer_error(&mut send, kind, version, err).await,
    }
    METRICS
        .seconds
        .with_label_values(&[message.name()])
        .observe(started.elapsed().as_secs_f64());
}

async fn dispatch(ctx: &Ctx, message: MessageKind, frame: &Frame) -> Result<Reply, WireError> {
    match message {
        MessageKind::Hello => admin::hello(ctx, frame),
        MessageKind::Metadata => admin::metadata(ctx, frame).await,
        MessageKind::CreateTopic => admin::create_topic(ctx, frame).await,
        MessageKind::DeleteTopic => admin::delete_topic(ctx, frame).await,
        MessageKind::DescribeTopic => admin::describe_topic(ctx, frame).await,
        MessageKind::AlterTopic => admin::alter_topic(ctx, frame).await,
        MessageKind::Fetch => data::fetch(ctx, frame).await,
        MessageKind::ListOffsets => data::list_offsets(ctx, frame).await,
        MessageKind::InitProducerId => data::init_producer_id(ctx).await,
        MessageKind::JoinGroup => groups::join(ctx, frame).await,
        MessageKind::SyncGroup => groups::sync(ctx, frame).await,
        MessageKind::Heartbeat => groups::heartbeat(ctx, frame),
        MessageKind::LeaveGroup => groups::leave(ctx, frame),
        MessageKind::CommitOffsets => groups::commit(ctx, frame).await,
        MessageKind::FetchOffsets => groups::fetch_offsets(ctx, frame).await,
        MessageKind::ListGroups => groups::list(ctx).await,
        MessageKind::DescribeGroup => groups::describe(ctx, frame).await,
        MessageKind::DeleteGroup => groups::delete(ctx, frame).await,
        // Served before dispatch: they answer with several frames.
        MessageKind::Subscribe | MessageKind::Produce => {
            Err(WireError::new(ErrorCode::Internal, "not dispatched"))
        }
    }
}

/// Parses a request header, turning a bad one into MALFORMED_FRAME.
pub(crate) fn header<H: serde::de::DeserializeOwned>(frame: &Frame) -> Result<H, WireError> {
    frame.header().map_err(|e| {
        WireError::new(
            ErrorCode::MalformedFrame,
            format!("the request header is not what the message needs: {e}"),
        )
    })
}

/// Writes one response frame (without finishing the stream). Errors mean the client went
/// away, which is its business.
pub(crate) async fn write_frame(
    send: &mut SendStream,
    kind: u16,
    version: u16,
    reply: Reply,
) -> Result<(), quinn::WriteError> {
    let frame = Frame {
        kind: kind | RESPONSE_BIT,
        version,
        header: reply.header,
        payload: reply.payload,
    };
    send.write_chunk(frame.prefix()).await?;
    if !frame.payload.is_empty() {
        send.write_chunk(frame.payload).await?;
    }
    Ok(())
}

async fn write_reply(send: &mut SendStream, kind: u16, version: u16, reply: Reply) {
    if write_frame(send, kind, version, reply).await.is_ok() {
        let _ = send.finish();
    }
}

pub(crate) async fn answer_error(send: &mut SendStream, kind: u16, version: u16, err: WireError) {
    let envelope = ErrorEnvelope { error: Some(err) };
    write_reply(send, kind, version, Reply::new(&envelope)).await;
}
