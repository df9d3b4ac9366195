//! Opening an MQTT connection: client options for a persistent QoS 1 session, and polling the
//! event loop until the broker accepted it, with bounded retries.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::NetworkOptions;
use sluice_sdk::HealthReporter;

use super::config::Session;
use super::error::{refusal, MqttError};
use crate::backoff::Backoff;

/// Capacity of the client's request queue (publishes, acks, subscriptions).
pub(crate) const REQUEST_CAPACITY: usize = 1024;

/// What kind of client to make.
pub(crate) enum Role {
    /// Receives with manual acks; the broker may send this many unacknowledged messages at once
    /// (MQTT 5 receive maximum).
    Subscriber { receive_maximum: u16 },
    /// Publishes with at most this many publishes awaiting their PUBACK.
    Publisher { inflight: u16 },
}

/// A client and its event loop for `session`: MQTT 5, clean start off and a session that never
/// expires (a persistent session, as MQTT 3.1.1's clean session off).
pub(crate) fn client(session: &Session, role: Role) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(
        session.client_id.clone(),
        session.host.clone(),
        session.port,
    );
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(u32::MAX))
        .set_keep_alive(session.keep_alive)
        .set_max_packet_size(Some(256 << 20))
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_connection_timeout(10);
    // Without TCP_NODELAY the last publish (or PUBACK) of a burst waits for the peer's delayed
    // ACK (40 ms on Linux), which caps a write-then-ack loop at ~25 acks a second.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    match role {
        Role::Subscriber { receive_maximum } => {
            options
                .set_manual_acks(true)
                .set_receive_maximum(Some(receive_maximum));
        }
        Role::Publisher { inflight } => {
            options.set_outgoing_inflight_upper_limit(inflight);
        }
    }
    if let Some((user, password)) = &session.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    AsyncClient::new(options, REQUEST_CAPACITY)
}

/// Polls `eventloop` until the broker accepts the connection, retrying network failures with
/// backoff for `limit` (reporting `health` degraded meanwhile, healthy once connected); a refusal a
/// setting explains fails at once.
pub(crate) async fn connect(
    eventloop: &mut EventLoop,
    session: &Session,
    limit: Duration,
    health: &HealthReporter,
) -> Result<ConnAck, MqttError> {
    let mut backoff = Backoff::new(limit);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                health.healthy();
                return Ok(ack);
            }
            Ok(_) => continue,
            Err(e) => {
                if let Some((reason, setting)) = refusal(&e) {
                    return Err(MqttError::Refused {
                        endpoint: session.display(),
                        reason,
                        setting,
                    });
                }
                tracing::warn!(endpoint = %session.display(), error = %e, "mqtt: broker unreachable, retrying");
                if !backoff
                    .wait_degraded(health, format!("mqtt: {}: {e}", session.display()))
                    .await
                {
                    return Err(MqttError::Unreachable {
                        endpoint: session.display(),
                        waited: limit,
                        last: e.to_string(),
                    });
                }
            }
        }
    }
}
