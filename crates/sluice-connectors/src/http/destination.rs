//! The HTTP destination: batches records into requests and retries failed ones.
//!
//! `write` encodes records into the pending batch and sends it once it holds `batch.size`
//! records; `ack` sends what is pending and reports the outcome of every request since the last
//! `ack`. A request answered 2xx settles its records; 429, 5xx and connection failures are retried
//! with exponential backoff (honouring `Retry-After`), up to `retry.maxAttempts`, after which the
//! call fails and nothing of that batch is acked; any other status nacks every record of the batch
//! with the status and an excerpt of the answer. A batch stays in memory until it is settled, so a
//! dropped call loses nothing.

use std::time::Duration;

use async_trait::async_trait;
use axum::http::{header, HeaderValue, StatusCode};
use sluice_sdk::connector::Result;
use sluice_sdk::{
    Acks, ConnectorError, Destination, HealthReporter, Nack, Position, Record, Settings,
};
use tokio::time::sleep;

use super::body::{write_record, BodyFormat};
use super::config::DestinationConfig;
use super::error::{excerpt, redact, HttpError};
use crate::backoff::retrying;

/// The HTTP destination. See the [module docs](self).
#[derive(Default)]
pub struct HttpDestination {
    config: Option<DestinationConfig>,
    client: Option<reqwest::Client>,
    /// Records written and not yet sent, in write order.
    pending: Batch,
    /// Records settled since the last `ack`.
    settled: usize,
    nacks: Vec<Nack>,
    opened: bool,
    stopped: bool,
    /// Reports retried requests to the host.
    health: HealthReporter,
}

/// One request's worth of records.
#[derive(Default)]
struct Batch {
    /// The body so far (`json`: without the closing bracket).
    body: Vec<u8>,
    /// Records in the body.
    sent: usize,
    /// Every record of the batch in write order: `None` if it is in the body, or why it could
    /// not be encoded.
    outcomes: Vec<Option<String>>,
    /// Positions of the first and last record in the body (sent as headers in `raw` format).
    first: Option<Position>,
    last: Option<Position>,
}

/// Header carrying the position of a raw batch's first record.
pub const FIRST_POSITION_HEADER: &str = "sluice-first-position";
/// Header carrying the position of a raw batch's last record.
pub const LAST_POSITION_HEADER: &str = "sluice-last-position";

impl Batch {
    fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }
}

/// How one request ended.
enum Sent {
    Ok,
    /// Not worth retrying: every record is nacked with this reason.
    Rejected(String),
}

impl HttpDestination {
    /// A new, unconfigured destination.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, config: &DestinationConfig, record: &Record) {
        let batch = &mut self.pending;
        if config.format != BodyFormat::OpenCdc && record.payload.after.is_none() {
            batch.outcomes.push(Some(format!(
                "record at position {} has no payload.after to send (format {}; use format \
                 opencdc to send deletes)",
                record.position,
                if config.format == BodyFormat::Raw {
                    "raw"
                } else {
                    "json"
                }
            )));
            return;
        }
        if batch.first.is_none() {
            batch.first = Some(record.position.clone());
        }
        batch.last = Some(record.position.clone());
        if batch.sent == 0 && config.format == BodyFormat::Json {
            batch.body.push(b'[');
        }
        write_record(config.format, record, batch.sent == 0, &mut batch.body);
        batch.sent += 1;
        batch.outcomes.push(None);
    }

    /// Sends the pending batch (if any) and records its outcome.
    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let config = self.config.clone().ok_or(HttpError::NotConfigured)?;
        if self.pending.sent > 0 {
            let mut body = self.pending.body.clone();
            if config.format == BodyFormat::Json {
                body.push(b']');
            }
            let positions = (self.pending.first.clone(), self.pending.last.clone());
            let outcome = self.send(&config, body, positions).await?;
            if let Sent::Rejected(reason) = outcome {
                for o in self.pending.outcomes.iter_mut().filter(|o| o.is_none()) {
                    *o = Some(reason.clone());
                }
            }
        }
        let batch = std::mem::take(&mut self.pending);
        for outcome in batch.outcomes {
            if let Some(reason) = outcome {
                self.nacks.push(Nack {
                    index: self.settled,
                    reason,
                });
            }
            self.settled += 1;
        }
        Ok(())
    }

    /// Sends one body, retrying what may succeed later.
    async fn send(
        &self,
        config: &DestinationConfig,
        body: Vec<u8>,
        positions: (Option<Position>, Option<Position>),
    ) -> Result<Sent> {
        let client = self.client.as_ref().ok_or(ConnectorError::StreamNotOpen)?;
        let body = bytes::Bytes::from(body);
        let mut headers = config.headers.clone();
        if config.format == BodyFormat::Raw {
            for (name, position) in [
                (FIRST_POSITION_HEADER, positions.0),
                (LAST_POSITION_HEADER, positions.1),
            ] {
                let value = position.and_then(|p| HeaderValue::from_str(&p.to_string()).ok());
                if let Some(value) = value {
                    headers.insert(header::HeaderName::from_static(name), value);
                }
            }
        }
        let mut pause = config.initial_backoff;
        let mut last = String::new();
        for attempt in 1..=config.max_attempts {
            let request = client
                .request(config.method.clone(), config.url.clone())
                .headers(headers.clone())
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(config.format.content_type()),
                )
                .body(body.clone());
            let mut wait = pause;
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let answer = response.bytes().await.unwrap_or_default();
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        // The service answered: reachable, whatever the answer.
                        self.health.healthy();
                    }
                    if status.is_success() {
                        return Ok(Sent::Ok);
                    }
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        return Ok(Sent::Rejected(format!(
                            "{} {} answered {status}: {}",
                            config.method,
                            redact(&config.url),
                            excerpt(&answer, 300)
                        )));
                    }
                    last = format!("answered {status}: {}", excerpt(&answer, 200));
                    if let Some(after) = retry_after {
                        wait = after;
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < config.max_attempts {
                tracing::warn!(url = %redact(&config.url), attempt, error = %last, "http: request failed, retrying (degraded)");
                let wait = wait.min(config.max_backoff);
                let reason = format!("http: {} {}: {last}", config.method, redact(&config.url));
                retrying(&self.health, reason, wait);
                sleep(wait).await;
                pause = (pause * 2).min(config.max_backoff);
            }
        }
        Err(HttpError::Unreachable {
            method: config.method.to_string(),
            url: redact(&config.url),
            attempts: format!("{} times", config.max_attempts),
            last,
        }
        .into())
    }
}

#[async_trait]
impl Destination for HttpDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.config = Some(DestinationConfig::from_settings(settings)?);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self) -> Result<()> {
        let config = self.config.as_ref().ok_or(HttpError::NotConfigured)?;
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ConnectorError::system(format!("http: cannot make a client: {e}")))?;
        self.client = Some(client);
        self.opened = true;
        self.stopped = false;
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        if !self.opened || self.stopped {
            return Err(ConnectorError::StreamNotOpen);
        }
        let config = self.config.clone().ok_or(HttpError::NotConfigured)?;
        for record in records {
            if self.pending.outcomes.len() >= config.batch_size {
                self.flush().await?;
            }
            self.add(&config, record);
        }
        if self.pending.outcomes.len() >= config.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        if !self.opened {
            return Err(ConnectorError::StreamNotOpen);
        }
        self.flush().await?;
        Ok(Acks {
            count: std::mem::take(&mut self.settled),
            nacks: std::mem::take(&mut self.nacks),
        })
    }

    async fn stop(&mut self, _last: Option<&Position>) -> Result<()> {
        self.stopped = true;
        Ok(())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.client = None;
        self.pending = Batch::default();
        self.opened = false;
        Ok(())
    }
}
