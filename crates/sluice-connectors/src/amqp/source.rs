//! The AMQP source: a background task consumes the queue (manual acks, prefetch window) and hands
//! deliveries to `read` through a bounded channel; `ack` acknowledges them to the broker.
//!
//! **Positions** are numbers the source generates: 1, 2, … after `open(None)`, N+1, N+2, … after
//! `open(Some(N))`. A delivery tag cannot be a position: it is only valid on the channel that
//! delivered it. Each record read is remembered with its connection *generation* and delivery tag
//! until it is acked; `ack` then sends one `basic.ack` with `multiple` for the newest tag (acks
//! arrive in read order, so every older delivery is acknowledged too).
//!
//! **Resume** relies on the broker: every message not acknowledged when a connection closes is
//! redelivered to the next consumer, so `open(Some(N))` simply consumes the queue again. Records
//! read but not acked when a connection is lost are read again (at-least-once); their stale acks
//! are dropped, never sent on the new channel, and deliveries of a lost connection still queued
//! for `read` are discarded since the broker redelivers them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use sluice_sdk::connector::Result;
use sluice_sdk::record::{metadata, unix_nanos_now};
use sluice_sdk::HealthReporter;
use sluice_sdk::{opencdc, ConnectorError, Data, Position, ReadBatch, Record, Settings, Source};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::config::{Format, SourceConfig};
use super::connect::{connect_with, declare, Link};
use super::error::{is_connection_error, AmqpError};

/// Longest a `read` waits for the first delivery before returning an empty batch.
pub const READ_WAIT: Duration = Duration::from_millis(200);

/// The AMQP source. See the [module docs](self).
#[derive(Default)]
pub struct AmqpSource {
    config: Option<SourceConfig>,
    running: Option<Running>,
    /// The position the next record gets.
    next_position: u64,
    /// The position of the last record `read` returned.
    last_read: Option<Position>,
    /// Records read and not yet acked, in read order.
    unacked: VecDeque<Unacked>,
    /// `stop` was called: reads fail with `stream not open`, acks still work.
    stopped: bool,
    /// A fatal error the consumer task reported, returned by the next `read`.
    failed: Option<String>,
    /// Reports reconnects to the host.
    health: HealthReporter,
}

/// A record read and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Unacked {
    position: u64,
    generation: u64,
    tag: u64,
}

/// What the consumer task hands to `read`.
enum Incoming {
    Delivery {
        generation: u64,
        delivery: Box<Delivery>,
    },
    Failed(AmqpError),
}

/// The open stream: the consumer task and what it shares with the source.
struct Running {
    rx: mpsc::Receiver<Incoming>,
    shared: Arc<Shared>,
    teardown: CancellationToken,
    task: JoinHandle<()>,
}

/// The current connection, shared by the consumer task (which replaces it after a loss) and
/// `ack`/`stop`/`teardown`.
struct Shared {
    link: Mutex<Option<Current>>,
    stopping: AtomicBool,
}

struct Current {
    generation: u64,
    link: Arc<Link>,
    consumer_tag: String,
}

impl Shared {
    fn current(&self) -> Option<(u64, Channel, String)> {
        let guard = self.link.lock().ok()?;
        guard
            .as_ref()
            .map(|c| (c.generation, c.link.channel.clone(), c.consumer_tag.clone()))
    }

    fn replace(&self, next: Option<Current>) -> Option<Current> {
        match self.link.lock() {
            Ok(mut guard) => std::mem::replace(&mut *guard, next),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), next),
        }
    }
}

impl AmqpSource {
    /// A new, unconfigured source.
    pub fn new() -> Self {
        Self::default()
    }

    fn to_record(&self, delivery: Delivery, position: Position, read_at: &str) -> Result<Record> {
        let config = self.config.as_ref().ok_or(AmqpError::NotConfigured)?;
        let props = &delivery.properties;
        let mut record = match config.format {
            Format::Raw => Record::new(position, Data::Raw(Bytes::from(delivery.data))),
            Format::OpenCdc => {
                let mut r = opencdc::from_json(&delivery.data).map_err(|e| {
                    ConnectorError::system(format!(
                        "amqp: a message in queue {:?} is not an OpenCDC record (format is \
                         opencdc): {e}",
                        config.topology.queue
                    ))
                })?;
                r.position = position;
                r
            }
        };
        let md = &mut record.metadata;
        md.entry(metadata::COLLECTION.into())
            .or_insert_with(|| config.topology.queue.clone());
        md.insert(metadata::READ_AT.into(), read_at.to_string());
        if let Some(ts) = props.timestamp() {
            md.entry(metadata::CREATED_AT.into())
                .or_insert_with(|| (u128::from(*ts) * 1_000_000_000).to_string());
        }
        // Through the default exchange the routing key is the queue name: nothing to add.
        if !delivery.exchange.as_str().is_empty() {
            md.insert(
                "rabbitmq.exchange".into(),
                delivery.exchange.as_str().to_string(),
            );
            md.insert(
                "rabbitmq.routingKey".into(),
                delivery.routing_key.as_str().to_string(),
            );
        }
        if delivery.redelivered {
            md.insert("rabbitmq.redelivered".into(), "true".into());
        }
        if let Some(t) = props.content_type() {
            md.insert("rabbitmq.contentType".into(), t.as_str().to_string());
        }
        if let Some(c) = props.correlation_id() {
            md.insert("rabbitmq.correlationId".into(), c.as_str().to_string());
        }
        if let Some(id) = props.message_id() {
            md.insert("rabbitmq.messageId".into(), id.as_str().to_string());
            if config.format == Format::Raw {
                record.key = Some(Data::Raw(Bytes::copy_from_slice(id.as_str().as_bytes())));
            }
        }
        Ok(record)
    }

    /// Turns one delivery into a record, unless it belongs to a lost connection.
    fn accept(
        &mut self,
        incoming: Incoming,
        current: u64,
        read_at: &str,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        match incoming {
            Incoming::Failed(e) => {
                self.failed = Some(e.to_string());
                Ok(())
            }
            Incoming::Delivery {
                generation,
                delivery,
            } => {
                if generation != current {
                    // The broker redelivers it on the new connection.
                    return Ok(());
                }
                let n = self.next_position;
                let tag = delivery.delivery_tag;
                let position = Position::from_u64(n);
                let record = self.to_record(*delivery, position.clone(), read_at)?;
                self.next_position += 1;
                self.unacked.push_back(Unacked {
                    position: n,
                    generation,
                    tag,
                });
                self.last_read = Some(position);
                out.push(record);
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.config = Some(SourceConfig::from_settings(settings)?);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let config = self.config.clone().ok_or(AmqpError::NotConfigured)?;
        let start = match position {
            None => 0,
            Some(p) => p.to_u64().ok_or_else(|| ConnectorError::InvalidPosition {
                position: p.clone(),
                reason: "an amqp position is a decimal record number".into(),
            })?,
        };
        let (link, (consumer, tag)) = connect_with(
            &config.endpoint,
            config.endpoint.connect_timeout,
            &connection_name(&config),
            &self.health,
            |channel| start_consumer(channel, config.clone()),
        )
        .await?;
        let shared = Arc::new(Shared {
            link: Mutex::new(Some(Current {
                generation: 1,
                link: Arc::new(link),
                consumer_tag: tag,
            })),
            stopping: AtomicBool::new(false),
        });
        // The broker never has more than `prefetch` unacked deliveries out, so this never fills
        // beyond that; the +1 leaves room for a failure report.
        let (tx, rx) = mpsc::channel(usize::from(config.prefetch) + 1);
        let teardown = CancellationToken::new();
        let task = tokio::spawn(consume_loop(
            config,
            consumer,
            tx,
            shared.clone(),
            teardown.clone(),
            self.health.clone(),
        ));
        self.next_position = start + 1;
        self.last_read = None;
        self.unacked.clear();
        self.stopped = false;
        self.failed = None;
        self.running = Some(Running {
            rx,
            shared,
            teardown,
            task,
        });
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        if self.stopped {
            return Err(ConnectorError::StreamNotOpen);
        }
        if let Some(e) = self.failed.take() {
            self.failed = Some(e.clone());
            return Err(ConnectorError::System {
                message: e,
                transient: true,
            });
        }
        let Some(running) = self.running.as_mut() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let first = match timeout(READ_WAIT, running.rx.recv()).await {
            Err(_) => return Ok(ReadBatch::default()),
            Ok(None) => {
                return Err(ConnectorError::system(
                    "amqp: the consumer task ended unexpectedly",
                ))
            }
            Ok(Some(first)) => first,
        };
        // Everything below is synchronous: a dropped read loses nothing.
        let current = running.shared.current().map_or(0, |(g, _, _)| g);
        let mut more = Vec::with_capacity(max.min(1024));
        let mut queued = vec![first];
        while queued.len() < max {
            match running.rx.try_recv() {
                Ok(item) => queued.push(item),
                Err(_) => break,
            }
        }
        let read_at = unix_nanos_now().to_string();
        for item in queued {
            self.accept(item, current, &read_at, &mut more)?;
        }
        Ok(ReadBatch {
            records: more,
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        let Some(running) = self.running.as_ref() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let mut newest: Option<Unacked> = None;
        for p in positions {
            let n = p.to_u64();
            match self.unacked.front() {
                Some(u) if Some(u.position) == n => {
                    newest = Some(*u);
                    self.unacked.pop_front();
                }
                Some(u) => {
                    return Err(ConnectorError::InvalidPosition {
                        position: p.clone(),
                        reason: format!(
                            "acks must come in read order: the oldest unacked record is at {}",
                            u.position
                        ),
                    })
                }
                None => {
                    return Err(ConnectorError::InvalidPosition {
                        position: p.clone(),
                        reason: "no record at this position is waiting for an ack".into(),
                    })
                }
            }
        }
        let Some(newest) = newest else {
            return Ok(());
        };
        let Some((generation, channel, _)) = running.shared.current() else {
            // Disconnected: the broker redelivers everything unacked.
            return Ok(());
        };
        if generation != newest.generation {
            // Read on a lost connection: already redelivered, a tag of that channel means
            // nothing on this one.
            return Ok(());
        }
        let options = BasicAckOptions { multiple: true };
        match channel.basic_ack(newest.tag, options).await {
            Ok(()) => Ok(()),
            Err(e) if is_connection_error(&e) => {
                tracing::warn!(error = %e, "amqp: ack lost with the connection; the broker will redeliver");
                Ok(())
            }
            Err(e) => Err(AmqpError::broker("basic.ack", &e).into()),
        }
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        self.stopped = true;
        if let Some(running) = self.running.as_ref() {
            running.shared.stopping.store(true, Ordering::SeqCst);
            if let Some((_, channel, tag)) = running.shared.current() {
                // Stop deliveries; what was delivered and not read stays unacked and goes back to
                // the queue when the channel closes. Acks keep flowing on the channel.
                let cancel =
                    channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                if let Ok(Err(e)) = timeout(Duration::from_secs(5), cancel).await {
                    tracing::debug!(error = %e, "amqp: basic.cancel failed");
                }
            }
        }
        Ok(self.last_read.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            running.teardown.cancel();
            let _ = timeout(Duration::from_secs(5), running.task).await;
            if let Some(current) = running.shared.replace(None) {
                current.link.close().await;
            }
        }
        self.stopped = true;
        Ok(())
    }
}

/// The name the connection shows in the broker's management tools.
fn connection_name(config: &SourceConfig) -> String {
    format!("sluice amqp source (queue {})", config.topology.queue)
}

/// Declares the topology, sets the prefetch window and starts consuming; returns the consumer and
/// its tag.
async fn start_consumer(
    channel: Channel,
    config: SourceConfig,
) -> Result<(Consumer, String), AmqpError> {
    declare(&channel, &config.topology).await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions { global: false })
        .await
        .map_err(|e| AmqpError::broker("basic.qos", &e))?;
    let options = BasicConsumeOptions {
        no_ack: false,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            config.topology.queue.as_str().into(),
            "".into(),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            if is_connection_error(&e) {
                AmqpError::broker("basic.consume", &e)
            } else {
                AmqpError::Topology {
                    what: format!("cannot consume queue {:?}", config.topology.queue),
                    setting: super::param::QUEUE_NAME,
                    detail: e.to_string(),
                }
            }
        })?;
    let tag = consumer.tag().as_str().to_string();
    Ok((consumer, tag))
}

/// Forwards deliveries to `read`; after a lost connection reconnects (bounded by
/// `reconnect.timeout`) and starts a new generation. Ends on teardown, after `stop` once the
/// consumer ends, or with a failure report when reconnecting gave up.
async fn consume_loop(
    config: SourceConfig,
    first: Consumer,
    tx: mpsc::Sender<Incoming>,
    shared: Arc<Shared>,
    teardown: CancellationToken,
    health: HealthReporter,
) {
    let mut generation = 1;
    let mut consumer = first;
    loop {
        let lost = loop {
            let item = tokio::select! {
                biased;
                _ = teardown.cancelled() => return,
                item = consumer.next() => item,
            };
            match item {
                Some(Ok(delivery)) => {
                    let sent = tokio::select! {
                        biased;
                        _ = teardown.cancelled() => return,
                        sent = tx.send(Incoming::Delivery { generation, delivery: Box::new(delivery) }) => sent,
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => break e.to_string(),
                None => break "the broker cancelled the consumer".to_string(),
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            // Stopped: keep the connection for acks until teardown.
            teardown.cancelled().await;
            return;
        }
        tracing::warn!(queue = %config.topology.queue, reason = %lost, "amqp: source lost its connection, reconnecting (degraded)");
        health.degraded(format!("amqp: connection lost: {lost}, reconnecting"));
        if let Some(old) = shared.replace(None) {
            old.link.close().await;
        }
        let name = connection_name(&config);
        let reconnect = connect_with(
            &config.endpoint,
            config.endpoint.reconnect_timeout,
            &name,
            &health,
            |channel| start_consumer(channel, config.clone()),
        );
        let outcome = tokio::select! {
            biased;
            _ = teardown.cancelled() => return,
            outcome = reconnect => outcome,
        };
        match outcome {
            Ok((link, (next, tag))) => {
                generation += 1;
                shared.replace(Some(Current {
                    generation,
                    link: Arc::new(link),
                    consumer_tag: tag,
                }));
                consumer = next;
                tracing::info!(queue = %config.topology.queue, "amqp: source reconnected");
            }
            Err(e) => {
                let _ = tx.send(Incoming::Failed(e)).await;
                return;
            }
        }
    }
}
