//! Connecting to the broker with bounded retries, and declaring the queue and exchange.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::timeout;

use super::config::{Endpoint, Topology};
use super::error::{is_connection_error, is_refusal, AmqpError};
use super::param;
use crate::backoff::Backoff;
use sluice_sdk::HealthReporter;

/// Longest a single connection attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection and a channel on it.
pub(crate) struct Link {
    /// The connection (kept so it can be closed).
    pub connection: Connection,
    /// The channel every call goes through.
    pub channel: Channel,
}

impl Link {
    /// Closes the channel and the connection, ignoring errors (the broker requeues whatever the
    /// channel had not acknowledged).
    pub(crate) async fn close(&self) {
        let _ = timeout(Duration::from_secs(2), async {
            let _ = self.channel.close(200, "bye".into()).await;
            let _ = self.connection.close(200, "bye".into()).await;
        })
        .await;
    }
}

/// Connects and opens a channel, retrying connection failures with backoff for `limit`;
/// a refused login or an error `setup` reports as not transient fails at once. `setup` prepares
/// the channel (topology, qos, confirm mode) and is retried with the connection. `health` is
/// degraded while retrying and healthy once connected.
pub(crate) async fn connect_with<T, F, Fut>(
    endpoint: &Endpoint,
    limit: Duration,
    name: &str,
    health: &HealthReporter,
    mut setup: F,
) -> Result<(Link, T), AmqpError>
where
    F: FnMut(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, AmqpError>>,
{
    let mut backoff = Backoff::new(limit);
    loop {
        let last = match attempt(endpoint, name).await {
            Ok(link) => match setup(link.channel.clone()).await {
                Ok(prepared) => {
                    health.healthy();
                    return Ok((link, prepared));
                }
                Err(AmqpError::Broker {
                    detail,
                    transient: true,
                    ..
                }) => {
                    link.close().await;
                    detail
                }
                Err(e) => {
                    link.close().await;
                    return Err(e);
                }
            },
            Err(Attempt::Refused(detail)) => {
                return Err(AmqpError::Refused {
                    endpoint: endpoint.display.clone(),
                    detail,
                })
            }
            Err(Attempt::Failed(detail)) => detail,
        };
        tracing::warn!(endpoint = %endpoint.display, error = %last, "amqp: broker unreachable, retrying");
        let reason = format!("amqp: {}: {last}", endpoint.display);
        if !backoff.wait_degraded(health, reason).await {
            return Err(AmqpError::Unreachable {
                endpoint: endpoint.display.clone(),
                waited: limit,
                last,
            });
        }
    }
}

enum Attempt {
    Refused(String),
    Failed(String),
}

async fn attempt(endpoint: &Endpoint, name: &str) -> Result<Link, Attempt> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connection = match timeout(
        ATTEMPT_TIMEOUT,
        Connection::connect(&endpoint.url, properties),
    )
    .await
    {
        Err(_) => {
            return Err(Attempt::Failed(format!(
                "no answer within {ATTEMPT_TIMEOUT:?}"
            )))
        }
        Ok(Err(e)) if is_refusal(&e) => return Err(Attempt::Refused(e.to_string())),
        Ok(Err(e)) => return Err(Attempt::Failed(e.to_string())),
        Ok(Ok(c)) => c,
    };
    match connection.create_channel().await {
        Ok(channel) => Ok(Link {
            connection,
            channel,
        }),
        Err(e) => {
            let _ = connection.close(200, "bye".into()).await;
            Err(Attempt::Failed(e.to_string()))
        }
    }
}

/// Declares (or, with `declare` false, checks) the queue, and the exchange and binding when an
/// exchange is named.
pub(crate) async fn declare(channel: &Channel, t: &Topology) -> Result<(), AmqpError> {
    let topology_error = |what: String, setting: &'static str, e: lapin::Error| {
        if is_connection_error(&e) {
            AmqpError::broker(what, &e)
        } else {
            AmqpError::Topology {
                what,
                setting,
                detail: e.to_string(),
            }
        }
    };
    let options = QueueDeclareOptions {
        passive: !t.declare,
        durable: t.queue_durable,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(t.queue.as_str().into(), options, FieldTable::default())
        .await
        .map_err(|e| {
            let what = if t.declare {
                format!("cannot declare queue {:?}", t.queue)
            } else {
                format!(
                    "queue {:?} does not exist (and `queue.declare` is false)",
                    t.queue
                )
            };
            topology_error(what, param::QUEUE_NAME, e)
        })?;
    if t.exchange.is_empty() {
        return Ok(());
    }
    let kind = match t.exchange_type.as_str() {
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Direct,
    };
    let options = ExchangeDeclareOptions {
        passive: !t.declare,
        durable: t.exchange_durable,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            t.exchange.as_str().into(),
            kind,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            topology_error(
                format!("cannot declare exchange {:?}", t.exchange),
                param::EXCHANGE_NAME,
                e,
            )
        })?;
    if t.declare {
        channel
            .queue_bind(
                t.queue.as_str().into(),
                t.exchange.as_str().into(),
                t.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                topology_error(
                    format!(
                        "cannot bind queue {:?} to exchange {:?} with key {:?}",
                        t.queue, t.exchange, t.routing_key
                    ),
                    param::ROUTING_KEY,
                    e,
                )
            })?;
    }
    Ok(())
}
