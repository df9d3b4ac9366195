//! The HTTP source: a webhook receiver or a poller behind one [`Source`].
//!
//! Webhook positions are numbers the source generates (N+1, N+2, … after `open(Some(N))`): a
//! webhook cannot be replayed, so they only order the records. Poll positions come from the
//! poller (see [`super::poll`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_sdk::connector::Result;
use sluice_sdk::record::{metadata, unix_nanos_now};
use sluice_sdk::{ConnectorError, HealthReporter, Position, ReadBatch, Record, Settings, Source};
use tokio::time::{sleep_until, timeout, Instant};

use super::config::{Mode, SourceConfig};
use super::error::HttpError;
use super::poll::Poller;
use super::webhook::{Receipt, Server};

/// Longest a `read` waits for records before returning an empty batch.
pub const READ_WAIT: Duration = Duration::from_millis(200);

/// The HTTP source. See the [module docs](self).
#[derive(Default)]
pub struct HttpSource {
    config: Option<SourceConfig>,
    running: Option<Running>,
    last_read: Option<Position>,
    stopped: bool,
    /// Reports failing polls to the host.
    health: HealthReporter,
}

enum Running {
    Webhook {
        server: Server,
        next_position: u64,
        /// Records read and not acked, with the receipt of their request (acked mode).
        unacked: VecDeque<(u64, Option<Arc<Receipt>>)>,
        path: String,
    },
    Poll(Box<Poller>),
}

impl HttpSource {
    /// A new, unconfigured source.
    pub fn new() -> Self {
        Self::default()
    }

    /// The address the webhook server listens on, once open (tells the port when the
    /// configured one was 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.running {
            Some(Running::Webhook { server, .. }) => Some(server.local_addr),
            _ => None,
        }
    }
}

#[async_trait]
impl Source for HttpSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.config = Some(SourceConfig::from_settings(settings)?);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let config = self.config.clone().ok_or(HttpError::NotConfigured)?;
        let running = match config.mode {
            Mode::Webhook(webhook) => {
                let start = match position {
                    None => 0,
                    Some(p) => p.to_u64().ok_or_else(|| ConnectorError::InvalidPosition {
                        position: p.clone(),
                        reason: "a webhook position is a decimal record number".into(),
                    })?,
                };
                let server = Server::start(&webhook, config.format).await?;
                Running::Webhook {
                    server,
                    next_position: start + 1,
                    unacked: VecDeque::new(),
                    path: webhook.path.clone(),
                }
            }
            Mode::Poll(poll) => {
                let mut poller = Poller::new(*poll, config.format, position).map_err(|reason| {
                    ConnectorError::InvalidPosition {
                        position: position.cloned().unwrap_or_default(),
                        reason,
                    }
                })?;
                poller.health = self.health.clone();
                poller.first_poll().await?;
                Running::Poll(Box::new(poller))
            }
        };
        self.running = Some(running);
        self.stopped = false;
        self.last_read = None;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        if self.stopped {
            return Err(ConnectorError::StreamNotOpen);
        }
        let Some(running) = self.running.as_mut() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let records = match running {
            Running::Webhook {
                server,
                next_position,
                unacked,
                path,
            } => {
                let inbox = &server.inbox;
                let arrived = inbox.arrived.notified();
                let mut taken = inbox.take(max);
                if taken.is_empty() {
                    let _ = timeout(READ_WAIT, arrived).await;
                    taken = inbox.take(max);
                }
                // Synchronous from here: a dropped read loses nothing.
                let read_at = unix_nanos_now().to_string();
                let mut out: Vec<Record> = Vec::with_capacity(taken.len());
                for q in taken {
                    let mut record = q.record;
                    record.position = Position::from_u64(*next_position);
                    record
                        .metadata
                        .entry(metadata::COLLECTION.into())
                        .or_insert_with(|| path.clone());
                    record
                        .metadata
                        .insert(metadata::READ_AT.into(), read_at.clone());
                    unacked.push_back((*next_position, q.receipt));
                    *next_position += 1;
                    out.push(record);
                }
                out
            }
            Running::Poll(poller) => {
                if poller.buffer.is_empty() {
                    let now = Instant::now();
                    if now < poller.next_poll {
                        sleep_until(poller.next_poll.min(now + READ_WAIT)).await;
                    }
                    if Instant::now() >= poller.next_poll {
                        poller.poll_due().await?;
                    }
                }
                let n = max.min(poller.buffer.len());
                poller.buffer.drain(..n).collect()
            }
        };
        if let Some(last) = records.last() {
            self.last_read = Some(last.position.clone());
        }
        Ok(ReadBatch {
            records,
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        match self.running.as_mut() {
            None => Err(ConnectorError::StreamNotOpen),
            // Poll positions need no acknowledgement: the server keeps its data.
            Some(Running::Poll(_)) => Ok(()),
            Some(Running::Webhook { unacked, .. }) => {
                for p in positions {
                    match unacked.front() {
                        Some((n, _)) if Some(*n) == p.to_u64() => {
                            if let Some((_, Some(receipt))) = unacked.pop_front() {
                                receipt.acked_one();
                            }
                        }
                        _ => {
                            return Err(ConnectorError::InvalidPosition {
                                position: p.clone(),
                                reason: "acks must come in read order, for records read".into(),
                            })
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        self.stopped = true;
        if let Some(Running::Webhook { server, .. }) = &self.running {
            // New requests get 503; requests waiting for acks still get them.
            server.inbox.close();
        }
        Ok(self.last_read.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        if let Some(Running::Webhook { server, .. }) = self.running.take() {
            server.shut_down();
        }
        self.stopped = true;
        Ok(())
    }
}
