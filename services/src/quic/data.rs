//! Produce, fetch, subscribe, offsets and producer ids.

use std::time::Duration;

use quinn::SendStream;
use strata_proto::native::messages::{
    FetchRequest, FetchResponse, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetQuery, ProduceRequest, ProduceResponse, SubscribeRequest,
};
use strata_proto::native::{ErrorCode, Frame, MessageKind, WireError};
use strata_storage::Offset;
use strata_storage::batch::stored_batches;

use super::{Ctx, Reply, answer_error, header, write_frame};
use crate::broker::{self, OffsetSpec};

/// Largest `max_bytes` a fetch or subscription may ask for.
const MAX_FETCH_BYTES: u32 = 64 << 20;

/// How long a subscription waits for records before checking that its subscriber is still
/// there.
const SUBSCRIBE_POLL: Duration = Duration::from_secs(5);

fn bad_offset(offset: i64) -> Result<Offset, WireError> {
    if offset < 0 {
        Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("offset {offset} is negative; use list_offsets to resolve earliest or latest"),
        ))
    } else {
        Ok(Offset(offset))
    }
}

/// `produce`: the payload's batches go to the core unchanged; the answer waits for the ack
/// level asked (for `acks=0`, only for offsets to be assigned). A `pipeline` request also gets
/// an early answer once its offsets are assigned.
pub async fn produce(ctx: &Ctx, frame: &Frame, send: &mut SendStream) {
    let (kind, version) = (frame.kind, frame.version);
    let reply = match sequence(ctx, frame, send).await {
        Ok(reply) => reply,
        Err(err) => return answer_error(send, kind, version, err).await,
    };
    if write_frame(send, kind, version, reply).await.is_ok() {
        let _ = send.finish();
    }
}

async fn sequence(ctx: &Ctx, frame: &Frame, send: &mut SendStream) -> Result<Reply, WireError> {
    let req: ProduceRequest = header(frame)?;
    let acks = broker::acks(req.acks)?;
    let timeout = broker::produce_timeout(req.timeout_ms.min(i64::MAX as u64) as i64);
    let refused = |e: &crate::broker::BrokerError| {
        e.log_refused_produce(&ctx.peer, &req.topic, req.partition);
    };
    let (offset, durable) = ctx
        .broker
        .produce_sequenced(
            &req.topic,
            req.partition,
            frame.payload.clone(),
            acks,
            timeout,
        )
        .await
        .inspect_err(refused)?;
    if req.pipeline {
        let early = Reply::new(&ProduceResponse {
            base_offset: offset.0,
            sequenced: true,
        });
        // A client gone already gets nothing more; the records stay appended, as with Kafka.
        let _ = write_frame(send, frame.kind, frame.version, early).await;
    }
    let offset = durable.await.inspect_err(refused)?;
    Ok(Reply::new(&ProduceResponse {
        base_offset: offset.0,
        sequenced: false,
    }))
}

/// `fetch`: one partition, with an optional long poll at the log end.
pub async fn fetch(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: FetchRequest = header(frame)?;
    let offset = bad_offset(req.offset)?;
    let topic = ctx.broker.topic(&req.topic, false).await?;
    let read = ctx
        .broker
        .fetch_wait(
            &topic,
            req.partition,
            offset,
            req.max_bytes.clamp(1, MAX_FETCH_BYTES) as usize,
            Duration::from_millis(req.max_wait_ms),
        )
        .await?;
    Ok(Reply::with_payload(
        &FetchResponse {
            log_start: read.log_start.0,
            high_watermark: read.high_watermark.0,
        },
        read.records,
    ))
}

/// The offset after the last whole batch in `records`.
fn next_offset(records: &[u8]) -> Option<i64> {
    stored_batches(records).last().map(|(start, _, count)| {
        let base = i64::from_be_bytes(
            records[start..start + 8]
                .try_into()
                .expect("a whole batch has a base offset"),
        );
        base + count
    })
}

/// `subscribe`: pushes frames of batches as they become readable, until the subscriber stops
/// the stream or an error ends it. QUIC flow control is the backpressure: a subscriber that
/// stops reading blocks the write, so the broker holds at most one frame for it.
pub async fn subscribe(ctx: &Ctx, frame: &Frame, send: &mut SendStream) {
    let kind = MessageKind::Subscribe as u16;
    let version = frame.version;
    if let Err(err) = push(ctx, frame, send).await {
        answer_error(send, kind, version, err).await;
    }
}

async fn push(ctx: &Ctx, frame: &Frame, send: &mut SendStream) -> Result<(), WireError> {
    let req: SubscribeRequest = header(frame)?;
    let mut offset = bad_offset(req.offset)?;
    let topic = ctx.broker.topic(&req.topic, false).await?;
    let max_bytes = req.max_bytes.clamp(1, MAX_FETCH_BYTES) as usize;
    tracing::debug!(peer = %ctx.peer, topic = req.topic, partition = req.partition, offset = offset.0, "subscription started");
    loop {
        let read = tokio::select! {
            read = ctx.broker.fetch_wait(&topic, req.partition, offset, max_bytes, SUBSCRIBE_POLL) => read?,
            _ = send.stopped() => return Ok(()),
        };
        let Some(next) = next_offset(&read.records) else {
            continue;
        };
        let reply = Reply::with_payload(
            &FetchResponse {
                log_start: read.log_start.0,
                high_watermark: read.high_watermark.0,
            },
            read.records,
        );
        if write_frame(send, frame.kind, frame.version, reply)
            .await
            .is_err()
        {
            tracing::debug!(peer = %ctx.peer, topic = req.topic, partition = req.partition, "subscriber went away");
            return Ok(());
        }
        offset = Offset(next.max(offset.0));
    }
}

/// `list_offsets`: earliest, latest, or the first record at or after a time.
pub async fn list_offsets(ctx: &Ctx, frame: &Frame) -> Result<Reply, WireError> {
    let req: ListOffsetsRequest = header(frame)?;
    let topic = ctx.broker.topic(&req.topic, false).await?;
    let spec = match req.query {
        OffsetQuery::Earliest => OffsetSpec::Earliest,
        OffsetQuery::Latest => OffsetSpec::Latest,
        OffsetQuery::Timestamp { timestamp_ms } => OffsetSpec::Timestamp(timestamp_ms),
    };
    let found = ctx.broker.list_offset(&topic, req.partition, spec).await?;
    let (offset, timestamp_ms) = match (found, spec) {
        (Some((o, ts)), OffsetSpec::Timestamp(_)) => (Some(o.0), Some(ts)),
        (Some((o, _)), _) => (Some(o.0), None),
        (None, _) => (None, None),
    };
    Ok(Reply::new(&ListOffsetsResponse {
        offset,
        timestamp_ms,
    }))
}

/// `init_producer_id`: a fresh idempotent producer id.
pub async fn init_producer_id(ctx: &Ctx) -> Result<Reply, WireError> {
    let (producer_id, producer_epoch) = ctx.broker.init_producer_id().await?;
    Ok(Reply::new(&InitProducerIdResponse {
        producer_id,
        producer_epoch,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_batches_no_next_offset() {
        assert_eq!(next_offset(&[]), None);
        assert_eq!(next_offset(&[0u8; 10]), None);
    }
}
