//! The MQTT destination: publishes at QoS 1 and settles records as their PUBACKs arrive.
//!
//! `write` hands each publish to the client's bounded request queue (it waits only when
//! `inflight` publishes await their PUBACK: backpressure); a background task polls the event loop
//! and collects PUBACKs. MQTT brokers acknowledge QoS 1 publishes in the order they received them,
//! so the n-th PUBACK settles the n-th publish and `ack` needs no per-packet bookkeeping; a PUBACK
//! with an error reason code (MQTT 5) nacks its record.
//! After a lost connection the client resends unacknowledged publishes in the persistent session;
//! if the broker no longer has the session (`session present` false) while publishes await their
//! PUBACK, they may be lost, so the destination fails and the pipeline resends from its checkpoint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use sluice_sdk::connector::Result;
use sluice_sdk::HealthReporter;
use sluice_sdk::{opencdc, Acks, ConnectorError, Destination, Nack, Position, Record, Settings};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::config::{DestinationConfig, Format};
use super::error::{refusal, MqttError};
use super::session::{self, Role};
use crate::backoff::Backoff;

/// The MQTT destination. See the [module docs](self).
#[derive(Default)]
pub struct MqttDestination {
    config: Option<DestinationConfig>,
    running: Option<Running>,
    /// Records written and not yet settled, in write order.
    entries: VecDeque<Entry>,
    /// Records settled by an `ack` still in progress (so a dropped `ack` loses nothing).
    settled: usize,
    nacks: Vec<Nack>,
    stopped: bool,
    /// Reports reconnects to the host.
    health: HealthReporter,
}

/// One written record.
enum Entry {
    /// Handed to the client; settled by the next PUBACK.
    Published,
    /// Not publishable; nacked with this reason.
    Rejected(String),
}

struct Running {
    client: AsyncClient,
    shared: Arc<Shared>,
    teardown: CancellationToken,
    task: JoinHandle<()>,
}

/// What the event-loop task tells `write` and `ack`.
#[derive(Default)]
struct Shared {
    /// Publishes handed to the client.
    published: AtomicU64,
    /// `ack` wants a wake-up once this many PUBACKs arrived in total (so it is not woken for
    /// every single one).
    wake_at: AtomicU64,
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    /// PUBACKs received and not yet consumed by `ack`, in order: `None` for success, or the
    /// error reason the broker gave.
    pubacks: VecDeque<Option<String>>,
    /// PUBACKs received in total.
    acked_total: u64,
    /// Why the connection cannot go on.
    fatal: Option<String>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn fail(&self, e: MqttError) {
        self.lock().fatal = Some(e.to_string());
        self.notify.notify_one();
    }
}

impl MqttDestination {
    /// A new, unconfigured destination.
    pub fn new() -> Self {
        Self::default()
    }

    fn encode(&self, record: &Record) -> std::result::Result<Bytes, String> {
        match self.config.as_ref().map_or(Format::Raw, |c| c.format) {
            Format::OpenCdc => Ok(Bytes::from(opencdc::to_json(record))),
            Format::Raw => match &record.payload.after {
                Some(data) => Ok(data.to_bytes()),
                None => Err(format!(
                    "record at position {} has no payload.after to publish (format raw; use \
                     format opencdc to publish deletes)",
                    record.position
                )),
            },
        }
    }
}

fn fatal(shared: &Shared) -> Result<()> {
    match &shared.lock().fatal {
        Some(e) => Err(ConnectorError::system(e.clone())),
        None => Ok(()),
    }
}

#[async_trait]
impl Destination for MqttDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.config = Some(DestinationConfig::from_settings(settings)?);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self) -> Result<()> {
        let config = self.config.clone().ok_or(MqttError::NotConfigured)?;
        let role = Role::Publisher {
            inflight: config.inflight,
        };
        let (client, mut eventloop) = session::client(&config.session, role);
        session::connect(
            &mut eventloop,
            &config.session,
            config.session.connect_timeout,
            &self.health,
        )
        .await?;
        let shared = Arc::new(Shared::default());
        let teardown = CancellationToken::new();
        let task = tokio::spawn(event_loop(
            config,
            eventloop,
            client.clone(),
            shared.clone(),
            teardown.clone(),
            self.health.clone(),
        ));
        self.running = Some(Running {
            client,
            shared,
            teardown,
            task,
        });
        self.stopped = false;
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        if self.stopped {
            return Err(ConnectorError::StreamNotOpen);
        }
        let Some(running) = self.running.as_ref() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        fatal(&running.shared)?;
        let (topic, retain) = match &self.config {
            Some(c) => (c.topic.clone(), c.retain),
            None => return Err(MqttError::NotConfigured.into()),
        };
        for record in records {
            match self.encode(record) {
                Err(reason) => self.entries.push_back(Entry::Rejected(reason)),
                Ok(payload) => {
                    running
                        .client
                        .publish_bytes(topic.clone(), QoS::AtLeastOnce, retain, payload)
                        .await
                        .map_err(|_| MqttError::Closed)?;
                    running.shared.published.fetch_add(1, Ordering::SeqCst);
                    self.entries.push_back(Entry::Published);
                }
            }
        }
        Ok(())
    }

    async fn ack(&mut self) -> Result<Acks> {
        let Some(running) = self.running.as_ref() else {
            return Err(ConnectorError::StreamNotOpen);
        };
        running.shared.wake_at.store(
            running.shared.published.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        loop {
            let notified = running.shared.notify.notified();
            {
                let mut state = running.shared.lock();
                if let Some(e) = &state.fatal {
                    return Err(ConnectorError::system(e.clone()));
                }
                while let Some(front) = self.entries.front() {
                    match front {
                        Entry::Rejected(reason) => self.nacks.push(Nack {
                            index: self.settled,
                            reason: reason.clone(),
                        }),
                        Entry::Published => match state.pubacks.pop_front() {
                            None => break,
                            Some(None) => {}
                            Some(Some(reason)) => self.nacks.push(Nack {
                                index: self.settled,
                                reason,
                            }),
                        },
                    }
                    self.entries.pop_front();
                    self.settled += 1;
                }
            }
            if self.entries.is_empty() {
                break;
            }
            // `notify_one` leaves a permit when nobody waits, so no wake-up is missed; the timeout
            // only bounds the wait between re-checks.
            let _ = timeout(Duration::from_millis(100), notified).await;
        }
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
        if let Some(running) = self.running.take() {
            running.teardown.cancel();
            let _ = timeout(Duration::from_secs(3), running.task).await;
            drop(running.client);
        }
        self.entries.clear();
        self.stopped = true;
        Ok(())
    }
}

/// Polls the event loop: counts PUBACKs, reconnects (bounded by `reconnect.timeout`), detects a
/// lost session, and on teardown disconnects cleanly.
async fn event_loop(
    config: DestinationConfig,
    mut eventloop: EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    teardown: CancellationToken,
    health: HealthReporter,
) {
    let mut backoff: Option<Backoff> = None;
    loop {
        let event = tokio::select! {
            biased;
            _ = teardown.cancelled() => return disconnect(&client, &mut eventloop).await,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let outcome = match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                    other => Some(format!(
                        "the broker refused the publish to {:?}: {other:?}",
                        config.topic
                    )),
                };
                let acked_total = {
                    let mut state = shared.lock();
                    state.pubacks.push_back(outcome);
                    state.acked_total += 1;
                    state.acked_total
                };
                if acked_total >= shared.wake_at.load(Ordering::SeqCst) {
                    shared.notify.notify_one();
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = None;
                health.healthy();
                let unacked = shared
                    .published
                    .load(Ordering::SeqCst)
                    .saturating_sub(shared.lock().acked_total);
                if !ack.session_present && unacked > 0 {
                    shared.fail(MqttError::SessionLost {
                        endpoint: config.session.display(),
                        client_id: config.session.client_id.clone(),
                        unacked: usize::try_from(unacked).unwrap_or(usize::MAX),
                    });
                    return;
                }
                tracing::info!(topic = %config.topic, "mqtt: destination reconnected");
            }
            Ok(_) => {}
            Err(e) => {
                if let Some((reason, setting)) = refusal(&e) {
                    shared.fail(MqttError::Refused {
                        endpoint: config.session.display(),
                        reason,
                        setting,
                    });
                    return;
                }
                if backoff.is_none() {
                    tracing::warn!(topic = %config.topic, error = %e, "mqtt: destination lost its connection, reconnecting (degraded)");
                }
                let pause =
                    backoff.get_or_insert_with(|| Backoff::new(config.session.reconnect_timeout));
                let waited = tokio::select! {
                    biased;
                    _ = teardown.cancelled() => return,
                    waited = pause.wait_degraded(&health, format!("mqtt: {}: {e}", config.session.display())) => waited,
                };
                if !waited {
                    shared.fail(MqttError::Unreachable {
                        endpoint: config.session.display(),
                        waited: config.session.reconnect_timeout,
                        last: e.to_string(),
                    });
                    return;
                }
            }
        }
    }
}

/// Sends DISCONNECT and polls until it is written (or a second has passed).
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = timeout(Duration::from_secs(1), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}
