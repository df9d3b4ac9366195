//! The Redis Streams destination: one pipeline of `XADD`s per written batch.
//!
//! `write` encodes the batch and queues it for a single writer task (a bounded queue of
//! [`QUEUED_BATCHES`], so memory stays bounded and `write` waits when Redis is slower than the
//! pipeline). The writer sends one batch at a time, so entries land in write order even when a
//! batch is retried. Each batch's outcome — one result per record — comes back through a oneshot
//! channel that `ack` awaits in order: an entry the server refused is nacked with the server's
//! message; a batch whose connection failed is sent again `retryAttempts` times, `retryWait`
//! apart, and nacked after that.

use std::collections::VecDeque;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::Value;
use sluice_sdk::connector::Result;
use sluice_sdk::HealthReporter;
use sluice_sdk::{Acks, ConnectorError, Destination, Nack, Position, Record, Settings};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::config::DestinationConfig;
use super::connect::{client, connect};
use super::entry::to_fields;
use super::error::{is_transient, RedisError};
use crate::backoff::retrying;

/// Batches queued for the writer before `write` waits.
pub const QUEUED_BATCHES: usize = 16;

/// Appends records to a Redis stream (see the [module documentation](self)).
#[derive(Default)]
pub struct RedisDestination {
    config: Option<DestinationConfig>,
    state: State,
    /// Reports connection trouble to the host.
    health: HealthReporter,
}

#[derive(Default)]
enum State {
    #[default]
    Closed,
    Open(Box<Writer>),
    /// No more writes; acks still settle what was written.
    Stopped(Box<Writer>),
}

/// One batch for the writer task: the entries to add (or why a record cannot be one), and
/// where to send the outcome.
struct Job {
    entries: Vec<std::result::Result<Vec<(Bytes, Bytes)>, String>>,
    done: oneshot::Sender<Vec<Option<String>>>,
}

struct Writer {
    jobs: mpsc::Sender<Job>,
    task: JoinHandle<()>,
    /// Outcomes not yet reported, oldest first, with each batch's size.
    pending: VecDeque<(usize, oneshot::Receiver<Vec<Option<String>>>)>,
}

impl RedisDestination {
    /// A new, unconfigured destination.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Destination for RedisDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        let config = DestinationConfig::from_settings(settings)?;
        client(&config.connect)?;
        self.config = Some(config);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self) -> Result<()> {
        let config = self.config.clone().ok_or(RedisError::NotConfigured)?;
        let client = client(&config.connect)?;
        let conn = connect(&client, &config.connect, &self.health).await?;
        let (jobs, rx) = mpsc::channel(QUEUED_BATCHES);
        let task = tokio::spawn(run_writer(conn, config, rx, self.health.clone()));
        self.state = State::Open(Box::new(Writer {
            jobs,
            task,
            pending: VecDeque::new(),
        }));
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        let State::Open(writer) = &mut self.state else {
            return Err(ConnectorError::StreamNotOpen);
        };
        if records.is_empty() {
            return Ok(());
        }
        let config = self.config.as_ref().ok_or(RedisError::NotConfigured)?;
        let entries = records
            .iter()
            .map(|r| to_fields(config.format, &config.field, r))
            .collect();
        let (done, outcome) = oneshot::channel();
        // Sending is cancel-safe: a dropped write queues nothing and reports nothing.
        writer
            .jobs
            .send(Job { entries, done })
            .await
            .map_err(|_| ConnectorError::system("redis: the writer task ended unexpectedly"))?;
        writer.pending.push_back((records.len(), outcome));
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        let writer = match &mut self.state {
            State::Open(w) | State::Stopped(w) => w,
            State::Closed => return Err(ConnectorError::StreamNotOpen),
        };
        let mut acks = Acks::default();
        while let Some((len, outcome)) = writer.pending.front_mut() {
            let results = match outcome.await {
                Ok(results) => results,
                Err(_) => vec![Some("redis: the writer task ended before writing".into()); *len],
            };
            writer.pending.pop_front();
            for reason in results {
                if let Some(reason) = reason {
                    acks.nacks.push(Nack {
                        index: acks.count,
                        reason,
                    });
                }
                acks.count += 1;
            }
        }
        Ok(acks)
    }

    async fn stop(&mut self, _last: Option<&Position>) -> Result<()> {
        self.state = match std::mem::take(&mut self.state) {
            State::Open(w) | State::Stopped(w) => State::Stopped(w),
            State::Closed => return Err(ConnectorError::StreamNotOpen),
        };
        Ok(())
    }

    async fn teardown(&mut self) -> Result<()> {
        if let State::Open(w) | State::Stopped(w) = std::mem::take(&mut self.state) {
            w.task.abort();
        }
        Ok(())
    }
}

/// Writes queued batches one at a time, in order.
async fn run_writer(
    mut conn: ConnectionManager,
    config: DestinationConfig,
    mut jobs: mpsc::Receiver<Job>,
    health: HealthReporter,
) {
    while let Some(job) = jobs.recv().await {
        let results = write_batch(&mut conn, &config, &job.entries, &health).await;
        // The receiver is gone only if the destination was torn down; nothing to report to.
        let _ = job.done.send(results);
    }
}

/// Sends one pipeline of `XADD`s (again after a connection failure, up to `retryAttempts`
/// times); one result per entry: `None` if stored, else why not.
async fn write_batch(
    conn: &mut ConnectionManager,
    config: &DestinationConfig,
    entries: &[std::result::Result<Vec<(Bytes, Bytes)>, String>],
    health: &HealthReporter,
) -> Vec<Option<String>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for fields in entries.iter().flatten() {
        let cmd = pipe.cmd("XADD").arg(&config.connect.key);
        if config.max_len > 0 {
            cmd.arg("MAXLEN").arg("~").arg(config.max_len);
        }
        cmd.arg("*");
        for (f, v) in fields {
            cmd.arg(f.as_ref()).arg(v.as_ref());
        }
    }
    let mut attempt = 0;
    let outcome = loop {
        match pipe
            .query_async::<Vec<redis::RedisResult<Value>>>(conn)
            .await
        {
            Ok(results) => {
                health.healthy();
                break Ok(results);
            }
            Err(e) if is_transient(&e) && attempt < config.retry_attempts => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, key = %config.connect.key, "redis: XADD batch failed; retrying");
                let reason = format!("redis: XADD to {:?} failed: {e}", config.connect.key);
                retrying(health, reason, config.retry_wait);
                tokio::time::sleep(config.retry_wait).await;
            }
            Err(e) => break Err(e),
        }
    };
    let mut results = match outcome {
        Ok(results) => results.into_iter(),
        Err(e) => {
            let reason = format!(
                "redis: cannot add entries to {:?} after {attempt} retries (settings \
                 \"retryAttempts\", \"retryWait\"): {e}",
                config.connect.key
            );
            return entries.iter().map(|_| Some(reason.clone())).collect();
        }
    };
    entries
        .iter()
        .map(|entry| match entry {
            Err(reason) => Some(format!("redis: {reason}")),
            Ok(_) => match results.next() {
                Some(Ok(_)) => None,
                Some(Err(e)) => Some(format!(
                    "redis: the server refused an entry for {:?} (setting \"redis.key\"): {e}",
                    config.connect.key
                )),
                None => Some("redis: the server sent fewer replies than commands".into()),
            },
        })
        .collect()
}
