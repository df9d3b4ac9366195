//! The MQTT source: a background task polls the connection's event loop and hands QoS 1 messages
//! to `read` through a bounded channel; `ack` sends their PUBACKs (manual acks).
//!
//! **Positions** are numbers the source generates: 1, 2, … after `open(None)`, N+1, N+2, … after
//! `open(Some(N))`. MQTT has no replayable offsets, so **resume** relies on the broker: the
//! persistent session of `clientId` (clean session off) keeps the subscription, queues messages
//! published while Sluice is away, and resends every message delivered but not acknowledged when
//! the client reconnects. Records read but not acked before a lost connection are read again
//! (at-least-once).
//!
//! Every record is remembered with its connection *generation* until it is acked. A PUBACK is sent
//! only on the connection that delivered the message: a packet id means nothing on another
//! connection (the broker may have reused it for a different message), so acks of a lost
//! connection are dropped — the broker resends those messages — and the generation check and the
//! sending of PUBACKs happen under one lock that the event-loop task also takes when a connection
//! ends, to purge PUBACKs still queued for the dead connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ClientError, Event, EventLoop};
use rumqttc::Outgoing;
use sluice_sdk::connector::Result;
use sluice_sdk::record::{metadata, unix_nanos_now};
use sluice_sdk::HealthReporter;
use sluice_sdk::{opencdc, ConnectorError, Data, Position, ReadBatch, Record, Settings, Source};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use super::config::{Format, SourceConfig};
use super::error::{refusal, MqttError};
use super::session::{self, Role};
use crate::backoff::Backoff;

/// Longest a `read` waits for the first message before returning an empty batch.
pub const READ_WAIT: Duration = Duration::from_millis(200);
/// Room in the channel between the event-loop task and `read` beyond the receive maximum (QoS 0
/// messages, a failure report).
const QUEUE_SLACK: usize = 64;
/// Longest teardown waits for queued PUBACKs and DISCONNECT to be written and the broker to close
/// the connection.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);
/// How long `open` waits for the broker to answer the subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The MQTT source. See the [module docs](self).
#[derive(Default)]
pub struct MqttSource {
    config: Option<SourceConfig>,
    running: Option<Running>,
    next_position: u64,
    last_read: Option<Position>,
    unacked: VecDeque<Unacked>,
    stopped: bool,
    /// Reports reconnects to the host.
    health: HealthReporter,
    failed: Option<String>,
}

/// A record read and not yet acknowledged.
struct Unacked {
    position: u64,
    generation: u64,
    /// The message (its packet id and QoS make the PUBACK).
    publish: Publish,
}

/// What the event-loop task hands to `read`.
enum Incoming {
    Message { generation: u64, publish: Publish },
    Failed(MqttError),
}

struct Running {
    rx: mpsc::Receiver<Incoming>,
    client: AsyncClient,
    /// The current connection's generation; 0 while disconnected.
    generation: Arc<Mutex<u64>>,
    teardown: CancellationToken,
    task: JoinHandle<()>,
}

fn current(generation: &Mutex<u64>) -> u64 {
    match generation.lock() {
        Ok(g) => *g,
        Err(poisoned) => *poisoned.into_inner(),
    }
}

impl MqttSource {
    /// A new, unconfigured source.
    pub fn new() -> Self {
        Self::default()
    }

    fn to_record(&self, publish: &Publish, position: Position) -> Result<Record> {
        let config = self.config.as_ref().ok_or(MqttError::NotConfigured)?;
        let mut record = match config.format {
            Format::Raw => Record::new(position, Data::Raw(publish.payload.clone())),
            Format::OpenCdc => {
                let mut r = opencdc::from_json(&publish.payload).map_err(|e| {
                    ConnectorError::system(format!(
                        "mqtt: a message on topic {:?} is not an OpenCDC record (format is \
                         opencdc): {e}",
                        String::from_utf8_lossy(&publish.topic)
                    ))
                })?;
                r.position = position;
                r
            }
        };
        record
            .metadata
            .entry(metadata::COLLECTION.into())
            .or_insert_with(|| String::from_utf8_lossy(&publish.topic).into_owned());
        record
            .metadata
            .insert(metadata::READ_AT.into(), unix_nanos_now().to_string());
        Ok(record)
    }
}

#[async_trait]
impl Source for MqttSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.config = Some(SourceConfig::from_settings(settings)?);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let config = self.config.clone().ok_or(MqttError::NotConfigured)?;
        let start = match position {
            None => 0,
            Some(p) => p.to_u64().ok_or_else(|| ConnectorError::InvalidPosition {
                position: p.clone(),
                reason: "an mqtt position is a decimal record number".into(),
            })?,
        };
        let role = Role::Subscriber {
            receive_maximum: config.receive_maximum,
        };
        let (client, mut eventloop) = session::client(&config.session, role);
        session::connect(
            &mut eventloop,
            &config.session,
            config.session.connect_timeout,
            &self.health,
        )
        .await?;
        // Subscribing again is harmless for an existing session and makes sure the filter is the
        // configured one.
        client
            .subscribe(config.topic.clone(), QoS::AtLeastOnce)
            .await
            .map_err(|_| MqttError::Closed)?;
        let early = match timeout(SUBSCRIBE_TIMEOUT, await_suback(&mut eventloop, &config)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ConnectorError::System {
                    message: format!(
                        "mqtt: the broker at {} did not answer the subscription to {:?} within \
                         {SUBSCRIBE_TIMEOUT:?}",
                        config.session.display(),
                        config.topic
                    ),
                    transient: true,
                })
            }
        };
        let generation = Arc::new(Mutex::new(1));
        // The broker never has more than `receive_maximum` unacknowledged messages out, so the
        // channel never fills and the event loop is never blocked (keep-alives keep flowing).
        let (tx, rx) = mpsc::channel(usize::from(config.receive_maximum) + QUEUE_SLACK);
        let teardown = CancellationToken::new();
        let task = tokio::spawn(event_loop(
            config,
            eventloop,
            client.clone(),
            early,
            Outlet {
                tx,
                health: self.health.clone(),
            },
            generation.clone(),
            teardown.clone(),
        ));
        self.next_position = start + 1;
        self.last_read = None;
        self.unacked.clear();
        self.stopped = false;
        self.failed = None;
        self.running = Some(Running {
            rx,
            client,
            generation,
            teardown,
            task,
        });
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        if self.stopped {
            return Err(ConnectorError::StreamNotOpen);
        }
        if let Some(e) = &self.failed {
            return Err(ConnectorError::system(e.clone()));
        }
        let Some(running) = self.running.as_mut() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let first = match timeout(READ_WAIT, running.rx.recv()).await {
            Err(_) => return Ok(ReadBatch::default()),
            Ok(None) => return Err(MqttError::Closed.into()),
            Ok(Some(first)) => first,
        };
        // Everything below is synchronous: a dropped read loses nothing.
        let now = current(&running.generation);
        let mut queued = vec![first];
        while queued.len() < max {
            match running.rx.try_recv() {
                Ok(item) => queued.push(item),
                Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(queued.len());
        for item in queued {
            match item {
                Incoming::Failed(e) => self.failed = Some(e.to_string()),
                Incoming::Message {
                    generation,
                    publish,
                } => {
                    if generation != now && publish.qos != QoS::AtMostOnce {
                        // Delivered on a lost connection: the broker sends it again.
                        continue;
                    }
                    let n = self.next_position;
                    let position = Position::from_u64(n);
                    records.push(self.to_record(&publish, position.clone())?);
                    self.next_position += 1;
                    self.last_read = Some(position);
                    self.unacked.push_back(Unacked {
                        position: n,
                        generation,
                        publish,
                    });
                }
            }
        }
        Ok(ReadBatch {
            records,
            end_of_stream: false,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        let Some(running) = self.running.as_ref() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        // Check the whole list first, so a bad ack changes nothing.
        for (i, p) in positions.iter().enumerate() {
            let expected = self.unacked.get(i).map(|u| u.position);
            if p.to_u64().is_none() || p.to_u64() != expected {
                return Err(ConnectorError::InvalidPosition {
                    position: p.clone(),
                    reason: match expected {
                        Some(e) => format!(
                            "acks must come in read order: the next unacked record is at {e}"
                        ),
                        None => "no record at this position is waiting for an ack".into(),
                    },
                });
            }
        }
        let mut left = positions.len();
        while left > 0 {
            {
                let guard = match running.generation.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                while left > 0 {
                    let Some(u) = self.unacked.front() else { break };
                    // A record of a lost connection is not acked: the broker resends it.
                    if u.generation == *guard && u.publish.qos != QoS::AtMostOnce {
                        match running.client.try_ack(&u.publish) {
                            Ok(()) => {}
                            Err(ClientError::TryRequest(_)) => break,
                            Err(_) => return Err(MqttError::Closed.into()),
                        }
                    }
                    self.unacked.pop_front();
                    left -= 1;
                }
            }
            if left > 0 {
                // The request queue is full: give the event loop a moment.
                sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        // The subscription stays: the persistent session keeps queueing for the next run, and
        // acks keep flowing until teardown.
        self.stopped = true;
        Ok(self.last_read.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            running.teardown.cancel();
            let _ = timeout(Duration::from_secs(3), running.task).await;
        }
        self.stopped = true;
        Ok(())
    }
}

/// Polls until the subscription is answered; returns the messages that arrived meanwhile.
async fn await_suback(
    eventloop: &mut EventLoop,
    config: &SourceConfig,
) -> std::result::Result<Vec<Publish>, MqttError> {
    let mut early = Vec::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    return Err(MqttError::SubscriptionRefused {
                        topic: config.topic.clone(),
                    });
                }
                return Ok(early);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => early.push(p),
            Ok(_) => {}
            Err(e) => {
                return Err(MqttError::Unreachable {
                    endpoint: config.session.display(),
                    waited: Duration::ZERO,
                    last: format!("the connection failed while subscribing: {e}"),
                })
            }
        }
    }
}

/// Where the event-loop task reports: messages and failures to `read`, connection trouble to the
/// host.
struct Outlet {
    tx: mpsc::Sender<Incoming>,
    health: HealthReporter,
}

/// Polls the event loop: forwards messages, reconnects (bounded by `reconnect.timeout`, a new
/// generation per connection) and, on teardown, disconnects cleanly.
async fn event_loop(
    config: SourceConfig,
    mut eventloop: EventLoop,
    client: AsyncClient,
    early: Vec<Publish>,
    out: Outlet,
    generation: Arc<Mutex<u64>>,
    teardown: CancellationToken,
) {
    let Outlet { tx, health } = out;
    let mut connection = 1;
    for publish in early {
        let message = Incoming::Message {
            generation: connection,
            publish,
        };
        tokio::select! {
            biased;
            _ = teardown.cancelled() => return disconnect(&client, &mut eventloop).await,
            sent = tx.send(message) => if sent.is_err() { return },
        }
    }
    let mut backoff: Option<Backoff> = None;
    loop {
        let event = tokio::select! {
            biased;
            _ = teardown.cancelled() => return disconnect(&client, &mut eventloop).await,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let message = Incoming::Message {
                    generation: connection,
                    publish,
                };
                tokio::select! {
                    biased;
                    _ = teardown.cancelled() => return disconnect(&client, &mut eventloop).await,
                    sent = tx.send(message) => if sent.is_err() { return },
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connection += 1;
                if let Ok(mut g) = generation.lock() {
                    *g = connection;
                }
                backoff = None;
                health.healthy();
                if !ack.session_present {
                    tracing::warn!(client_id = %config.session.client_id, "mqtt: the broker lost the persistent session; subscribing again (messages queued meanwhile are gone)");
                    if client
                        .try_subscribe(config.topic.clone(), QoS::AtLeastOnce)
                        .is_err()
                    {
                        let _ = tx.send(Incoming::Failed(MqttError::Closed)).await;
                        return;
                    }
                }
                tracing::info!(topic = %config.topic, "mqtt: source reconnected");
            }
            Ok(Event::Incoming(Packet::SubAck(ack)))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_))) =>
            {
                let refused = MqttError::SubscriptionRefused {
                    topic: config.topic.clone(),
                };
                let _ = tx.send(Incoming::Failed(refused)).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                // The connection is gone: no PUBACK may reach the next one.
                if let Ok(mut g) = generation.lock() {
                    *g = 0;
                    eventloop.clean();
                }
                if let Some((reason, setting)) = refusal(&e) {
                    let refused = MqttError::Refused {
                        endpoint: config.session.display(),
                        reason,
                        setting,
                    };
                    let _ = tx.send(Incoming::Failed(refused)).await;
                    return;
                }
                if backoff.is_none() {
                    tracing::warn!(topic = %config.topic, error = %e, "mqtt: source lost its connection, reconnecting (degraded)");
                }
                let pause =
                    backoff.get_or_insert_with(|| Backoff::new(config.session.reconnect_timeout));
                let waited = tokio::select! {
                    biased;
                    _ = teardown.cancelled() => return,
                    waited = pause.wait_degraded(&health, format!("mqtt: {}: {e}", config.session.display())) => waited,
                };
                if !waited {
                    let gone = MqttError::Unreachable {
                        endpoint: config.session.display(),
                        waited: config.session.reconnect_timeout,
                        last: e.to_string(),
                    };
                    let _ = tx.send(Incoming::Failed(gone)).await;
                    return;
                }
            }
        }
    }
}

/// Ends the connection cleanly, keeping the session: queues DISCONNECT behind every request
/// already queued (the PUBACKs of acked records), then polls until the broker closes the
/// connection, or [`DISCONNECT_WAIT`] has passed. Polling to the end flushes the PUBACKs and
/// reads whatever the broker still sends: closing a socket with unread data resets it, and the
/// broker may then never process PUBACKs it had not read yet.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let mut sent = false;
    let flushed = timeout(DISCONNECT_WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => sent = true,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    if flushed.is_err() {
        tracing::warn!(
            disconnect_sent = sent,
            "mqtt: the broker did not close the connection within {DISCONNECT_WAIT:?} of \
             DISCONNECT; acks not yet delivered are redelivered next run"
        );
    }
}
