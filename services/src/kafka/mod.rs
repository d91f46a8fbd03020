//! The Kafka wire protocol front end: existing Kafka clients, unchanged.
//!
//! A thin translation onto the [broker core](crate::broker), decoded and encoded with the
//! `kafka-protocol` crate. Each connection has a reader and a writer:
//!
//! - the **reader** takes frames in order, decodes each and *begins* it: admin requests run to
//!   completion, a produce gets its offsets assigned, and anything that waits (durability,
//!   long polls) becomes a task. Beginning in arrival order is what keeps pipelined produce
//!   requests for one partition in order;
//! - the **writer** sends the responses strictly in request order, as Kafka requires, while
//!   later requests' waits overlap earlier ones.
//!
//! A bad frame, an unknown API or an unsupported version ends that connection only, with a
//! log line naming the peer; every other client is unaffected.

mod admin;
mod codec;
mod configs;
mod errors;
mod fetch;
mod groups;
mod log;
mod metadata;
mod offsets;
mod produce;
mod producers;
mod txn;

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::front_metrics::FrontEndMetrics;
use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::Broker;
pub use codec::ConnError;

/// The APIs and versions this broker speaks: `(api, min, max)`. Only these are advertised in
/// ApiVersions, and a request outside them closes the connection (ApiVersions itself gets
/// an UNSUPPORTED_VERSION answer instead, as Kafka does, so clients can negotiate).
///
/// Caps below the crate's maxima, and why: Produce ≤ 12 and Fetch ≤ 12 because v13 names
/// topics only by id; ListOffsets ≤ 7 because v8+ asks for tiered-storage offsets (KIP-405); OffsetCommit
/// and OffsetFetch ≤ 8 because v9 belongs to the KIP-848 group protocol; AddPartitionsToTxn,
/// AddOffsetsToTxn, EndTxn and TxnOffsetCommit ≤ 3 because v4+ belong to KIP-890.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::WriteTxnMarkers, 1, 1),
];

/// Requests in flight per connection before the reader stops taking more (backpressure).
/// An in-flight produce holds only its offsets (its batches are already in the engine's
/// bounded buffer), so this can be generous: it must cover a client's request rate times the
/// `acks=all` latency (librdkafka with `linger.ms=5` sends hundreds of requests a second per
/// connection, each waiting one flush plus one PUT). At 64, W4 queued seconds in the client.
const MAX_IN_FLIGHT: usize = 1024;

static METRICS: LazyLock<FrontEndMetrics> = LazyLock::new(|| {
    FrontEndMetrics::register(
        "kafka",
        ("Kafka requests by API.", &["api"]),
        (
            "Kafka request latency, from arrival to response ready, by API.",
            &["api"],
        ),
        "Kafka connections by how they ended.",
    )
});

/// The answer to one request, as the writer receives it.
enum Reply {
    /// Ready now (or nothing to send: `acks=0`).
    Ready(Option<Bytes>),
    /// Being produced by a task.
    Task(JoinHandle<Result<Option<Bytes>, ConnError>>),
}

struct InFlight {
    api: ApiKey,
    started: Instant,
    reply: Reply,
}

/// What a handler needs to know about the request it serves.
#[derive(Clone, Copy)]
pub(crate) struct Req {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub peer: SocketAddr,
}

impl Req {
    /// Encodes a response to this request.
    pub fn encode<R: Encodable>(&self, body: &R) -> Result<Bytes, ConnError> {
        codec::encode_response(self.api, self.version, self.correlation_id, body)
    }
}

/// Accepts Kafka connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    max_request_bytes: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let broker = broker.clone();
                    tokio::spawn(connection(stream, peer, broker, max_request_bytes));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accepting a Kafka connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, broker: Broker, limit: usize) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<InFlight>(MAX_IN_FLIGHT);
    let writer = async move {
        while let Some(inflight) = rx.recv().await {
            let bytes = match inflight.reply {
                Reply::Ready(b) => b,
                Reply::Task(handle) => match handle.await {
                    Ok(result) => result?,
                    Err(e) => return Err(ConnError::Encode(format!("request task failed: {e}"))),
                },
            };
            let api = format!("{:?}", inflight.api);
            METRICS.requests.with_label_values(&[&api]).inc();
            METRICS
                .seconds
                .with_label_values(&[&api])
                .observe(inflight.started.elapsed().as_secs_f64());
            if let Some(bytes) = bytes {
                wr.write_all(&bytes).await?;
            }
        }
        Ok::<(), ConnError>(())
    };
    let reader = async move {
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        while let Some(frame) = codec::read_frame(&mut rd, limit).await? {
            let started = Instant::now();
            let (api, reply) = dispatch(&broker, peer, frame).await?;
            if tx
                .send(InFlight {
                    api,
                    started,
                    reply,
                })
                .await
                .is_err()
            {
                break; // the writer stopped; its error is reported below
            }
        }
        Ok::<(), ConnError>(())
    };
    // Whichever side fails first ends the connection; a clean end of input lets the writer
    // finish the responses still owed.
    let outcome = tokio::select! {
        r = reader => match r {
            Ok(()) => Ok(()),
            Err(e) => Err(e),
        },
        w = writer => w,
    };
    match outcome {
        Ok(()) => METRICS.connections.with_label_values(&["closed"]).inc(),
        Err(ConnError::Io(e)) => {
            METRICS.connections.with_label_values(&["io_error"]).inc();
            tracing::debug!(%peer, error = %e, "Kafka connection ended");
        }
        Err(e) => {
            METRICS.connections.with_label_values(&["refused"]).inc();
            tracing::warn!(%peer, error = %e, "closing Kafka connection");
        }
    }
}

/// Decodes one frame and begins its request.
async fn dispatch(
    broker: &Broker,
    peer: SocketAddr,
    mut frame: Bytes,
) -> Result<(ApiKey, Reply), ConnError> {
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(raw_key)
        .map_err(|()| ConnError::Malformed(format!("unknown API key {raw_key}")))?;
    let req = Req {
        api,
        version,
        correlation_id,
        peer,
    };
    let supported = SUPPORTED
        .iter()
        .any(|&(a, min, max)| a == api && (min..=max).contains(&version));
    if api == ApiKey::ApiVersions && !supported {
        // Kafka's rule: answer in v0 with UNSUPPORTED_VERSION and the list, so the client
        // can retry with a version both sides speak.
        return Ok((
            api,
            Reply::Ready(Some(metadata::api_versions_unsupported(req)?)),
        ));
    }
    if !supported {
        return Err(ConnError::UnsupportedVersion { api, version });
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| ConnError::Malformed(format!("{api:?} header: {e}")))?;
    let reply = match api {
        ApiKey::ApiVersions => Reply::Ready(Some(metadata::api_versions(req)?)),
        ApiKey::Metadata => Reply::Ready(Some(
            metadata::metadata(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::Produce => produce::produce(broker, req, decode(req, frame)?).await?,
        ApiKey::Fetch => {
            let request = decode(req, frame)?;
            let broker = broker.clone();
            Reply::Task(tokio::spawn(async move {
                fetch::fetch(&broker, req, request).await.map(Some)
            }))
        }
        ApiKey::ListOffsets => {
            let request = decode(req, frame)?;
            let broker = broker.clone();
            Reply::Task(tokio::spawn(async move {
                offsets::list_offsets(&broker, req, request).await.map(Some)
            }))
        }
        ApiKey::CreateTopics => Reply::Ready(Some(
            admin::create_topics(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::DeleteTopics => Reply::Ready(Some(
            admin::delete_topics(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::CreatePartitions => Reply::Ready(Some(
            admin::create_partitions(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::DescribeConfigs => Reply::Ready(Some(
            admin::describe_configs(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::AlterConfigs => Reply::Ready(Some(
            configs::alter_configs(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::IncrementalAlterConfigs => Reply::Ready(Some(
            configs::incremental_alter_configs(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::DescribeCluster => Reply::Ready(Some(metadata::describe_cluster(
            broker,
            req,
            decode(req, frame)?,
        )?)),
        ApiKey::DeleteRecords => Reply::Ready(Some(
            log::delete_records(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::OffsetForLeaderEpoch => Reply::Ready(Some(
            log::offset_for_leader_epoch(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::DescribeProducers => Reply::Ready(Some(
            producers::describe_producers(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::ListTransactions => Reply::Ready(Some(
            producers::list_transactions(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::DescribeTransactions => Reply::Ready(Some(
            producers::describe_transactions(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::InitProducerId => Reply::Ready(Some(
            produce::init_producer_id(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::AddPartitionsToTxn => Reply::Ready(Some(
            txn::add_partitions_to_txn(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::AddOffsetsToTxn => Reply::Ready(Some(
            txn::add_offsets_to_txn(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::TxnOffsetCommit => Reply::Ready(Some(
            txn::txn_offset_commit(broker, req, decode(req, frame)?).await?,
        )),
        // Ending a transaction waits for its markers to be durable. It runs before the
        // connection's next request is read, so a producer's next transaction can never
        // overtake the end of this one.
        ApiKey::EndTxn => Reply::Ready(Some(txn::end_txn(broker, req, decode(req, frame)?).await?)),
        ApiKey::WriteTxnMarkers => {
            let request = decode(req, frame)?;
            let broker = broker.clone();
            Reply::Task(tokio::spawn(async move {
                txn::write_txn_markers(&broker, req, request)
                    .await
                    .map(Some)
            }))
        }
        ApiKey::FindCoordinator => Reply::Ready(Some(groups::find_coordinator(
            broker,
            req,
            decode(req, frame)?,
        )?)),
        ApiKey::JoinGroup => {
            let request = decode(req, frame)?;
            let broker = broker.clone();
            let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
            Reply::Task(tokio::spawn(async move {
                groups::join_group(&broker, req, client_id, request)
                    .await
                    .map(Some)
            }))
        }
        ApiKey::SyncGroup => {
            let request = decode(req, frame)?;
            let broker = broker.clone();
            Reply::Task(tokio::spawn(async move {
                groups::sync_group(&broker, req, request).await.map(Some)
            }))
        }
        ApiKey::Heartbeat => {
            Reply::Ready(Some(groups::heartbeat(broker, req, decode(req, frame)?)?))
        }
        ApiKey::LeaveGroup => {
            Reply::Ready(Some(groups::leave_group(broker, req, decode(req, frame)?)?))
        }
        ApiKey::OffsetCommit => Reply::Ready(Some(
            groups::offset_commit(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::OffsetFetch => Reply::Ready(Some(
            groups::offset_fetch(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::ListGroups => Reply::Ready(Some(
            groups::list_groups(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::DescribeGroups => Reply::Ready(Some(
            groups::describe_groups(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::DeleteGroups => Reply::Ready(Some(
            groups::delete_groups(broker, req, decode(req, frame)?).await?,
        )),
        ApiKey::OffsetDelete => Reply::Ready(Some(
            groups::offset_delete(broker, req, decode(req, frame)?).await?,
        )),
        other => {
            return Err(ConnError::UnsupportedVersion {
                api: other,
                version,
            });
        }
    };
    Ok((api, reply))
}

fn decode<T: Decodable>(req: Req, mut body: Bytes) -> Result<T, ConnError> {
    T::decode(&mut body, req.version)
        .map_err(|e| ConnError::Malformed(format!("{:?} v{} body: {e}", req.api, req.version)))
}
