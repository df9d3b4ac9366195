//! The NATS JetStream source: a durable pull consumer with explicit acks.
//!
//! `open` connects (retrying for `connectTimeout`), finds or creates the stream and the durable
//! consumer, and reads the consumer's state to seed the `Tracker`. Messages are pulled with one
//! pull request at a time, for `bufferSize` messages, expiring on the server after
//! [`PULL_EXPIRES`]; a new request goes out when the previous one is complete or expired. Keeping
//! at most one short-lived request open matters at `stop`: messages handed back then are
//! redelivered at once, and an abandoned request still open on the server would swallow them
//! (and newly published ones) until the ack wait passed.
//!
//! `read` waits up to [`READ_WAIT`] for the first message, then takes whatever else has already
//! arrived, without waiting, up to `max`; nothing is held across an await once taken, so a
//! dropped read loses nothing. Each message is classified by the tracker: new ones become
//! records, redeliveries of records not yet acknowledged are dropped (their newest reply subject
//! kept), and messages processed before are acknowledged again and dropped. `ack` acknowledges
//! each record's message (`+ACK` to its reply subject).
//!
//! The client reconnects by itself after a lost connection or a server restart; a request lost
//! with the connection ends on the client's own timeout and the next one goes out, and messages
//! lost in flight come back after the consumer's ack wait. `stop` waits for the open request to
//! end and hands back (`-NAK`) the messages received but not returned, so they are redelivered at
//! once; acks keep working until `teardown`, which hands back whatever was returned and never
//! acknowledged (a hard stop) and closes the connection.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use sluice_sdk::connector::Result;
use sluice_sdk::HealthReporter;
use sluice_sdk::{ConnectorError, Position, ReadBatch, Record, Settings, Source};
use tokio::time::Instant;

use super::config::{DeliverPolicy, SourceConfig};
use super::connect::{check_urls, connect};
use super::error::NatsError;
use super::position::{NatsPosition, ServerView, Tracker, Verdict};
use super::record::{to_record, Delivered};
use super::{PARAM_DURABLE, PARAM_STREAM};

/// Longest wait for a first message in one `read`.
pub const READ_WAIT: Duration = Duration::from_millis(100);
/// How long a pull request stays open on the server.
pub const PULL_EXPIRES: Duration = Duration::from_millis(500);
/// Pause before sending a new pull request after one could not be sent.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait at `stop` for the open pull request to end.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// How often the consumer's server state is read while the tracker is dirty.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Records are pre-allocated for at most this many per read.
const MAX_PREALLOCATED: usize = 4096;

const ACK: &[u8] = b"+ACK";
const NAK: &[u8] = b"-NAK";

/// Reads a JetStream stream through a durable pull consumer (see the
/// [module documentation](self)).
#[derive(Default)]
pub struct NatsSource {
    config: Option<SourceConfig>,
    state: State,
    last_position: Option<Position>,
    /// Reports connection trouble to the host.
    health: HealthReporter,
}

#[derive(Default)]
enum State {
    /// Not opened, or torn down.
    #[default]
    Closed,
    /// Reading.
    Open(Box<Session>),
    /// Stopped: no more reads; acks still accepted.
    Stopped(Box<Session>),
}

/// Everything an open source holds.
struct Session {
    config: SourceConfig,
    client: Client,
    consumer: PullConsumer,
    /// The open pull request's messages, if one is open.
    batch: Option<Batch>,
    /// When a pull request last could not be sent.
    failed_at: Option<Instant>,
    tracker: Tracker,
    /// Reply subjects of redelivered, already processed messages, to acknowledge again.
    reacks: Vec<Subject>,
    /// When the consumer's server state was last read.
    checked_at: Instant,
}

impl NatsSource {
    /// A new, unconfigured source.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Source for NatsSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        let config = SourceConfig::from_settings(settings)?;
        check_urls(&config.connect.urls)?;
        self.config = Some(config);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let config = self.config.clone().ok_or(NatsError::NotConfigured)?;
        let resume = position
            .filter(|p| !p.is_empty())
            .map(NatsPosition::decode)
            .transpose()?;
        let client = connect(&config.connect, &self.health).await?;
        let context = jetstream::new(client.clone());
        let consumer = find_consumer(&context, &config).await?;
        let info = consumer
            .get_info()
            .await
            .map_err(|e| api("cannot read the consumer's state", PARAM_DURABLE, &e))?;
        let tracker = Tracker::new(
            resume,
            ServerView {
                ack_pending: info.num_ack_pending,
                delivered: info.delivered.consumer_sequence,
                ack_floor: info.ack_floor.stream_sequence,
            },
        );
        self.last_position = None;
        self.state = State::Open(Box::new(Session {
            config,
            client,
            consumer,
            batch: None,
            failed_at: None,
            tracker,
            reacks: Vec::new(),
            checked_at: Instant::now(),
        }));
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        let State::Open(session) = &mut self.state else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let records = session.read(max).await?;
        if let Some(last) = records.last() {
            self.last_position = Some(last.position.clone());
        }
        Ok(ReadBatch {
            records,
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        let session = match &mut self.state {
            State::Open(s) | State::Stopped(s) => s,
            State::Closed => return Err(ConnectorError::StreamNotOpen),
        };
        for position in positions {
            let p = NatsPosition::decode(position)?;
            match session.tracker.acked(p.sequence) {
                Some(reply) => session.publish(reply, ACK).await?,
                None => tracing::debug!(
                    %position,
                    "nats: ack for a position that is not awaiting one; ignored"
                ),
            }
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        match std::mem::take(&mut self.state) {
            State::Closed => Err(ConnectorError::StreamNotOpen),
            State::Open(mut session) => {
                session.hand_back_received().await;
                self.state = State::Stopped(session);
                Ok(self.last_position.clone())
            }
            stopped @ State::Stopped(_) => {
                self.state = stopped;
                Ok(self.last_position.clone())
            }
        }
    }

    async fn teardown(&mut self) -> Result<()> {
        let session = match std::mem::take(&mut self.state) {
            State::Closed => return Ok(()),
            State::Open(s) | State::Stopped(s) => s,
        };
        session.close().await;
        Ok(())
    }
}

impl Session {
    /// Reads up to `max` records (see [`Source::read`]).
    async fn read(&mut self, max: usize) -> Result<Vec<Record>> {
        self.send_reacks().await?;
        if !self.tracker.is_clean() && self.checked_at.elapsed() >= RECHECK_EVERY {
            self.recheck().await;
        }
        let mut records = Vec::with_capacity(max.min(MAX_PREALLOCATED));
        if max == 0 {
            return Ok(records);
        }
        let deadline = Instant::now() + READ_WAIT;
        while records.len() < max {
            if self.batch.is_none() && (!records.is_empty() || !self.pull(deadline).await) {
                break;
            }
            let Some(batch) = self.batch.as_mut() else {
                break;
            };
            let next = if records.is_empty() {
                match tokio::time::timeout_at(deadline, batch.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                match batch.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            match next {
                Some(Ok(message)) => accept(
                    &self.config,
                    &mut self.tracker,
                    &mut self.reacks,
                    message,
                    &mut records,
                )?,
                // The request is complete or expired; the next turn sends another.
                None => self.batch = None,
                Some(Err(e)) => {
                    self.batch = None;
                    self.pull_failed(&e.to_string())?;
                }
            }
        }
        Ok(records)
    }

    /// Sends a pull request for `bufferSize` messages, unless one could not be sent shortly
    /// before; true if one is open now. Waits no later than `deadline`.
    async fn pull(&mut self, deadline: Instant) -> bool {
        if let Some(at) = self.failed_at {
            let ready = at + RETRY_BACKOFF;
            if Instant::now() < ready {
                tokio::time::sleep_until(ready.min(deadline)).await;
                return false;
            }
        }
        let request = self
            .consumer
            .batch()
            .max_messages(self.config.buffer_size)
            .expires(PULL_EXPIRES)
            .messages();
        match tokio::time::timeout_at(deadline, request).await {
            Ok(Ok(batch)) => {
                self.batch = Some(batch);
                self.failed_at = None;
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "nats: cannot send a pull request; retrying");
                self.failed_at = Some(Instant::now());
                false
            }
            Err(_) => false,
        }
    }

    /// Notes a pull request that ended in an error status; errors that retrying cannot cure
    /// (the consumer was deleted, is push based, or refuses requests this size) end the source.
    fn pull_failed(&mut self, text: &str) -> Result<()> {
        let text = text.to_string();
        self.failed_at = Some(Instant::now());
        let lower = text.to_ascii_lowercase();
        let fatal = ["consumer deleted", "push based", "exceeded maxrequest"];
        if fatal.iter().any(|f| lower.contains(f)) {
            return Err(NatsError::Api {
                what: format!(
                    "cannot pull from consumer {:?} of stream {:?}",
                    self.config.durable, self.config.stream
                ),
                setting: PARAM_DURABLE,
                reason: text,
                transient: false,
            }
            .into());
        }
        tracing::warn!(error = %text, "nats: a pull request failed; sending another");
        Ok(())
    }

    /// Acknowledges again the redelivered messages that were processed before. Gives up for
    /// now (keeping the rest) if the client cannot take them within [`READ_WAIT`], so a read
    /// stays bounded while the connection is down.
    async fn send_reacks(&mut self) -> Result<()> {
        let deadline = Instant::now() + READ_WAIT;
        while let Some(reply) = self.reacks.last().cloned() {
            match tokio::time::timeout_at(deadline, self.publish(reply, ACK)).await {
                Ok(sent) => sent?,
                Err(_) => break,
            }
            self.reacks.pop();
        }
        Ok(())
    }

    /// Reads the consumer's state from the server to let a dirty tracker become clean.
    async fn recheck(&mut self) {
        self.checked_at = Instant::now();
        match tokio::time::timeout(RECHECK_EVERY, self.consumer.get_info()).await {
            Ok(Ok(info)) => self.tracker.server_view(ServerView {
                ack_pending: info.num_ack_pending,
                delivered: info.delivered.consumer_sequence,
                ack_floor: info.ack_floor.stream_sequence,
            }),
            Ok(Err(e)) => tracing::debug!(error = %e, "nats: cannot read the consumer's state"),
            Err(_) => tracing::debug!("nats: reading the consumer's state timed out"),
        }
    }

    /// Publishes an ack or nak to a message's reply subject.
    async fn publish(&self, reply: Subject, body: &'static [u8]) -> Result<()> {
        self.client
            .publish(reply, Bytes::from_static(body))
            .await
            .map_err(|e| ConnectorError::System {
                message: format!("nats: cannot acknowledge a message: {e}"),
                transient: true,
            })
    }

    /// Stops pulling and hands back (`-NAK`) messages already received but not returned.
    ///
    /// The open pull request is first read to its end (it expires on the server within
    /// [`PULL_EXPIRES`]; [`STOP_WAIT`] at most): the server would otherwise redeliver what is
    /// handed back straight into it, to an inbox nobody reads any more.
    async fn hand_back_received(&mut self) {
        let Some(mut batch) = self.batch.take() else {
            let _ = self.send_reacks().await;
            return;
        };
        let mut replies = Vec::new();
        let until = Instant::now() + STOP_WAIT;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, batch.next()).await {
            let (Some(reply), Ok(info)) = (message.reply.clone(), message.info()) else {
                continue;
            };
            let sequence = info.stream_sequence;
            match self.tracker.classify(sequence, info.consumer_sequence) {
                Verdict::Duplicate => self.tracker.refresh(sequence, reply),
                Verdict::Processed => self.reacks.push(reply),
                Verdict::New => replies.push(reply),
            }
        }
        drop(batch);
        let handed_back = replies.len();
        for reply in replies {
            let _ = self.publish(reply, NAK).await;
        }
        let _ = self.send_reacks().await;
        if let Err(e) = self.client.flush().await {
            tracing::debug!(error = %e, "nats: flush at stop failed");
        }
        tracing::debug!(handed_back, "nats: stopped pulling");
    }

    /// Hands back everything still held, flushes, and closes the connection.
    async fn close(mut self) {
        self.hand_back_received().await;
        for reply in self.tracker.drain_unacked() {
            let _ = self.publish(reply, NAK).await;
        }
        if let Err(e) = self.client.flush().await {
            tracing::debug!(error = %e, "nats: flush at teardown failed");
        }
        // Dropping the last client handle closes the connection.
    }
}

/// Classifies one delivered message and, if it is new, appends its record.
fn accept(
    config: &SourceConfig,
    tracker: &mut Tracker,
    reacks: &mut Vec<Subject>,
    message: jetstream::Message,
    records: &mut Vec<Record>,
) -> Result<()> {
    let (sequence, delivery, published_nanos) = match message.info() {
        Ok(info) => (
            info.stream_sequence,
            info.consumer_sequence,
            info.published.unix_timestamp_nanos(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, subject = %message.subject, "nats: a delivered message has no JetStream metadata; skipped");
            return Ok(());
        }
    };
    let Some(reply) = message.reply.clone() else {
        return Ok(());
    };
    match tracker.classify(sequence, delivery) {
        Verdict::Duplicate => tracker.refresh(sequence, reply),
        Verdict::Processed => reacks.push(reply),
        Verdict::New => {
            let delivered = Delivered {
                subject: message.subject.as_str(),
                payload: &message.payload,
                headers: message.headers.as_ref(),
                published_nanos,
            };
            let position = tracker.returned(sequence, reply);
            let record = to_record(config.format, &delivered, position).map_err(|problem| {
                ConnectorError::system(format!(
                    "nats: message {sequence} of stream {:?} (subject {}) is not an \
                         OpenCDC record (setting \"format\"): {problem}",
                    config.stream, message.subject
                ))
            })?;
            records.push(record);
        }
    }
    Ok(())
}

/// Finds the configured stream and durable consumer, creating them if the settings ask for it.
async fn find_consumer(
    context: &jetstream::Context,
    config: &SourceConfig,
) -> Result<PullConsumer, NatsError> {
    let stream = if config.create_stream {
        let subjects = config.subject.iter().cloned().collect();
        context
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                api(
                    &format!("cannot find or create stream {:?}", config.stream),
                    PARAM_STREAM,
                    &e,
                )
            })?
    } else {
        context.get_stream(&config.stream).await.map_err(|e| {
            api(
                &format!("cannot find stream {:?}", config.stream),
                PARAM_STREAM,
                &e,
            )
        })?
    };
    let what = format!(
        "consumer {:?} of stream {:?}",
        config.durable, config.stream
    );
    if config.create_consumer {
        let consumer_config = pull::Config {
            durable_name: Some(config.durable.clone()),
            filter_subject: config.subject.clone().unwrap_or_default(),
            deliver_policy: match config.deliver_policy {
                DeliverPolicy::All => jetstream::consumer::DeliverPolicy::All,
                DeliverPolicy::New => jetstream::consumer::DeliverPolicy::New,
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_ack_pending: config.max_ack_pending,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(&config.durable, consumer_config)
            .await
            .map_err(|e| api(&format!("cannot find or create {what}"), PARAM_DURABLE, &e))
    } else {
        stream
            .get_consumer(&config.durable)
            .await
            .map_err(|e| api(&format!("cannot find {what}"), PARAM_DURABLE, &e))
    }
}

/// An API error naming what was done and the setting it concerns.
fn api(what: &str, setting: &'static str, error: &dyn std::fmt::Display) -> NatsError {
    let reason = error.to_string();
    let lower = reason.to_ascii_lowercase();
    let transient = [
        "timed out",
        "timeout",
        "request",
        "disconnected",
        "broken pipe",
    ]
    .iter()
    .any(|t| lower.contains(t));
    NatsError::Api {
        what: what.to_string(),
        setting,
        reason,
        transient,
    }
}
