//! The NATS JetStream destination: publishes every record of a batch without waiting, and awaits
//! the publish acknowledgements in `ack`.
//!
//! `write` encodes each record and hands it to the client, keeping the acknowledgement future (and
//! the message, for a retry) in write order; past `maxInFlight` unsettled publishes it settles the
//! oldest first, so memory stays bounded. `ack` settles everything written: a publish that timed
//! out, lost its connection or found no stream responding is retried `retryAttempts` times,
//! `retryWait` apart; a record the server refused (or that could not be encoded) is nacked with
//! the reason. Settled results wait, in order, for the next `ack` to report them.

use std::collections::VecDeque;

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use bytes::Bytes;
use sluice_sdk::connector::Result;
use sluice_sdk::HealthReporter;
use sluice_sdk::{Acks, ConnectorError, Destination, Nack, Position, Record, Settings};

use super::config::DestinationConfig;
use super::connect::{check_urls, connect};
use super::error::NatsError;
use super::record::to_message;

/// Publishes records to a JetStream subject (see the [module documentation](self)).
#[derive(Default)]
pub struct NatsDestination {
    config: Option<DestinationConfig>,
    state: State,
    /// Reports connection trouble to the host.
    health: HealthReporter,
}

#[derive(Default)]
enum State {
    #[default]
    Closed,
    Open(Box<Publisher>),
    /// Stopped: no more writes; acks still settle what was written.
    Stopped(Box<Publisher>),
}

/// One message, kept until its publish is acknowledged so it can be sent again.
struct Outgoing {
    payload: Bytes,
    headers: Option<HeaderMap>,
}

/// A written record on its way.
enum Slot {
    /// Published; its acknowledgement is awaited in `ack`.
    InFlight(Outgoing, PublishAckFuture),
    /// Could not be published yet (the client refused it); published again in `ack`.
    Unsent(Outgoing, String),
    /// Cannot be published at all.
    Failed(String),
}

struct Publisher {
    config: DestinationConfig,
    context: Context,
    /// Settled results, oldest first, not yet reported: `None` for written, `Some(reason)` for a
    /// nack.
    settled: Vec<Option<String>>,
    /// Unsettled records, oldest first.
    slots: VecDeque<Slot>,
}

impl NatsDestination {
    /// A new, unconfigured destination.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Destination for NatsDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        let config = DestinationConfig::from_settings(settings)?;
        check_urls(&config.connect.urls)?;
        self.config = Some(config);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self) -> Result<()> {
        let config = self.config.clone().ok_or(NatsError::NotConfigured)?;
        let client = connect(&config.connect, &self.health).await?;
        let context = jetstream::ContextBuilder::new()
            // `write` bounds what is in flight itself; the client must never refuse a publish
            // for that reason.
            .max_ack_inflight(config.max_in_flight.saturating_add(1024))
            .backpressure_on_inflight(true)
            .build(client);
        self.state = State::Open(Box::new(Publisher {
            config,
            context,
            settled: Vec::new(),
            slots: VecDeque::new(),
        }));
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        let State::Open(publisher) = &mut self.state else {
            return Err(ConnectorError::StreamNotOpen);
        };
        for record in records {
            publisher.publish(record).await;
            while publisher.slots.len() > publisher.config.max_in_flight {
                publisher.settle_oldest().await;
            }
        }
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        let publisher = match &mut self.state {
            State::Open(p) | State::Stopped(p) => p,
            State::Closed => return Err(ConnectorError::StreamNotOpen),
        };
        while !publisher.slots.is_empty() {
            publisher.settle_oldest().await;
        }
        let settled = std::mem::take(&mut publisher.settled);
        let nacks = settled
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                r.as_ref().map(|reason| Nack {
                    index,
                    reason: reason.clone(),
                })
            })
            .collect();
        Ok(Acks {
            count: settled.len(),
            nacks,
        })
    }

    async fn stop(&mut self, _last: Option<&Position>) -> Result<()> {
        self.state = match std::mem::take(&mut self.state) {
            State::Open(p) | State::Stopped(p) => State::Stopped(p),
            State::Closed => return Err(ConnectorError::StreamNotOpen),
        };
        Ok(())
    }

    async fn teardown(&mut self) -> Result<()> {
        if let State::Open(p) | State::Stopped(p) = std::mem::take(&mut self.state) {
            if let Err(e) = p.context.client().flush().await {
                tracing::debug!(error = %e, "nats: flush at teardown failed");
            }
        }
        Ok(())
    }
}

impl Publisher {
    /// Encodes and publishes one record, appending its slot.
    async fn publish(&mut self, record: &Record) {
        let slot = match to_message(self.config.format, record) {
            Err(reason) => Slot::Failed(reason),
            Ok((payload, headers)) => {
                let out = Outgoing { payload, headers };
                match self.send(&out).await {
                    Ok(future) => Slot::InFlight(out, future),
                    Err(e) if retryable(&e) => Slot::Unsent(out, e.to_string()),
                    Err(e) => Slot::Failed(self.refused(&e)),
                }
            }
        };
        self.slots.push_back(slot);
    }

    async fn send(&self, out: &Outgoing) -> Result<PublishAckFuture, PublishError> {
        let mut message = PublishMessage::build().payload(out.payload.clone());
        if let Some(headers) = &out.headers {
            message = message.headers(headers.clone());
        }
        self.context
            .send_publish(self.config.subject.clone(), message)
            .await
    }

    /// Settles the oldest slot: awaits its acknowledgement, retrying transient failures.
    async fn settle_oldest(&mut self) {
        let Some(slot) = self.slots.pop_front() else {
            return;
        };
        let outcome = match slot {
            Slot::Failed(reason) => Some(reason),
            Slot::InFlight(out, future) => match future.await {
                Ok(_) => None,
                Err(e) if retryable(&e) => self.retry(&out, e.to_string()).await,
                Err(e) => Some(self.refused(&e)),
            },
            Slot::Unsent(out, reason) => self.retry(&out, reason).await,
        };
        self.settled.push(outcome);
    }

    /// Publishes `out` again, up to `retryAttempts` times; `None` once acknowledged, else the
    /// last reason.
    async fn retry(&self, out: &Outgoing, mut reason: String) -> Option<String> {
        for attempt in 1..=self.config.retry_attempts {
            tracing::warn!(
                subject = %self.config.subject,
                attempt,
                error = %reason,
                "nats: publish failed; retrying"
            );
            tokio::time::sleep(self.config.retry_wait).await;
            let result = match self.send(out).await {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => return None,
                Err(e) if retryable(&e) => reason = e.to_string(),
                Err(e) => return Some(self.refused(&e)),
            }
        }
        Some(format!(
            "nats: publishing to {:?} failed after {} retries (settings \"retryAttempts\", \
             \"retryWait\"): {reason}",
            self.config.subject, self.config.retry_attempts
        ))
    }

    fn refused(&self, e: &PublishError) -> String {
        format!(
            "nats: the server refused a message for subject {:?} (setting \"subject\"): {e}",
            self.config.subject
        )
    }
}

/// True for failures a retry may cure: a timeout, a lost connection, no stream answering (a
/// server still starting), or a client-side buffer that was full.
fn retryable(e: &PublishError) -> bool {
    matches!(
        e.kind(),
        PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::MaxAckPending
    )
}
