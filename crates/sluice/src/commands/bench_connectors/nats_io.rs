//! JetStream from a client of its own: streams made and removed for a run, a pipelined publish
//! loop (the NATS side's ceiling), and reading a stream back to see what arrived and when.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;

use super::BenchError;

/// Publishes awaiting their acknowledgement in the direct loop (the destination's default
/// `maxInFlight`).
pub const PUBLISH_WINDOW: usize = 16_384;

/// Connects and returns a JetStream context whose client never refuses a publish for having
/// too many in flight (the loops bound that themselves).
pub async fn connect(url: &str) -> Result<Context, BenchError> {
    let client = async_nats::connect(url)
        .await
        .map_err(BenchError::ctx("connecting to NATS"))?;
    Ok(jetstream::ContextBuilder::new()
        .max_ack_inflight(PUBLISH_WINDOW + 1024)
        .backpressure_on_inflight(true)
        .build(client))
}

/// Creates the file-backed stream `name` capturing `subject`, deleting an old one first.
pub async fn create_stream(js: &Context, name: &str, subject: &str) -> Result<(), BenchError> {
    let _ = js.delete_stream(name).await;
    js.create_stream(StreamConfig {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        storage: StorageType::File,
        ..StreamConfig::default()
    })
    .await
    .map_err(BenchError::ctx("creating the stream"))?;
    Ok(())
}

/// Deletes the streams, attempting all; returns the first failure.
pub async fn delete_streams(js: &Context, names: &[&str]) -> Result<(), BenchError> {
    let mut first = None;
    for name in names {
        if let Err(e) = js.delete_stream(name).await {
            first.get_or_insert(BenchError::new(format!("deleting stream {name}: {e}")));
        }
    }
    first.map_or(Ok(()), Err)
}

/// Messages stored in stream `name`.
pub async fn stored(js: &Context, name: &str) -> Result<u64, BenchError> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(BenchError::ctx("looking up the stream"))?;
    let info = stream
        .info()
        .await
        .map_err(BenchError::ctx("reading the stream's state"))?;
    Ok(info.state.messages)
}

/// Publishes `count` messages, `body(i)` each, to `subject`, keeping up to [`PUBLISH_WINDOW`]
/// acknowledgements outstanding; returns the wall time until the last was acknowledged.
pub async fn publish_all(
    js: &Context,
    subject: &str,
    count: u64,
    body: impl Fn(u64) -> Bytes,
) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(PUBLISH_WINDOW);
    let subject = async_nats::Subject::from(subject);
    for i in 0..count {
        let ack = js
            .publish(subject.clone(), body(i))
            .await
            .map_err(BenchError::ctx("publishing"))?;
        pending.push_back(ack);
        if pending.len() >= PUBLISH_WINDOW {
            if let Some(oldest) = pending.pop_front() {
                oldest
                    .await
                    .map_err(BenchError::ctx("publish acknowledgement"))?;
            }
        }
    }
    for ack in pending {
        ack.await
            .map_err(BenchError::ctx("publish acknowledgement"))?;
    }
    Ok(started.elapsed())
}

/// What a stream of captured rows held.
#[derive(Debug)]
pub struct Arrivals {
    /// Messages read.
    pub messages: u64,
    /// Distinct row ids among them.
    pub distinct: u64,
    /// Body bytes read.
    pub bytes: u64,
    /// The latest time JetStream stored one of them (Unix microseconds).
    pub last_stored_micros: i64,
    /// Per record: stored time minus the row's insert time, in microseconds.
    pub lag: Histogram<u64>,
}

/// A captured row as the `nats` destination publishes it (OpenCDC JSON).
#[derive(Deserialize)]
struct Envelope {
    payload: EnvelopePayload,
}

#[derive(Deserialize)]
struct EnvelopePayload {
    after: CapturedRow,
}

#[derive(Deserialize)]
struct CapturedRow {
    id: u64,
    ts_us: i64,
}

/// Reads every message of stream `name` (which must hold `expected` rows with ids below
/// `expected`) through an ephemeral consumer, recording each one's lag.
pub async fn read_arrivals(
    js: &Context,
    name: &str,
    expected: u64,
) -> Result<Arrivals, BenchError> {
    let stream = js
        .get_stream(name)
        .await
        .map_err(BenchError::ctx("looking up the stream"))?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            ..pull::Config::default()
        })
        .await
        .map_err(BenchError::ctx("creating a reading consumer"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(10_000)
        .messages()
        .await
        .map_err(BenchError::ctx("reading the stream"))?;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(BenchError::ctx("histogram"))?;
    let mut seen = vec![false; usize::try_from(expected).unwrap_or(0)];
    let (mut count, mut distinct, mut bytes, mut last) = (0u64, 0u64, 0u64, i64::MIN);
    while count < expected {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let message = match next {
            Err(_) | Ok(None) => break,
            Ok(Some(m)) => m.map_err(BenchError::ctx("reading a message"))?,
        };
        count += 1;
        bytes += message.payload.len() as u64;
        let info = message
            .info()
            .map_err(BenchError::ctx("reading a message's metadata"))?;
        let stored = i64::try_from(info.published.unix_timestamp_nanos() / 1_000).unwrap_or(0);
        last = last.max(stored);
        let row: Envelope = serde_json::from_slice(&message.payload)
            .map_err(BenchError::ctx("decoding a captured row"))?;
        let id = usize::try_from(row.payload.after.id).unwrap_or(usize::MAX);
        if let Some(slot) = seen.get_mut(id) {
            if !*slot {
                *slot = true;
                distinct += 1;
            }
        }
        let micros = u64::try_from(stored - row.payload.after.ts_us).unwrap_or(0);
        lag.saturating_record(micros.max(1));
    }
    Ok(Arrivals {
        messages: count,
        distinct,
        bytes,
        last_stored_micros: last,
        lag,
    })
}
