//! The AMQP destination: publishes on a channel in confirm mode.
//!
//! `write` publishes every record at once (nothing waits for the broker); `ack` awaits the
//! broker's confirms in write order. A `basic.nack`, or a message returned as unroutable (the
//! `mandatory` flag), nacks its record. Every message stays in memory until it is confirmed: if the
//! connection drops, a new one is opened (bounded by `reconnect.timeout`) and every unconfirmed
//! message is published again, so nothing written is lost (a message the broker had stored but not
//! yet confirmed is published twice: at-least-once).

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use sluice_sdk::connector::Result;
use sluice_sdk::HealthReporter;
use sluice_sdk::{opencdc, Acks, ConnectorError, Destination, Nack, Record, Settings};

use super::config::{DestinationConfig, Format};
use super::connect::{connect_with, declare, Link};
use super::error::{is_connection_error, AmqpError};

/// The AMQP destination. See the [module docs](self).
#[derive(Default)]
pub struct AmqpDestination {
    config: Option<DestinationConfig>,
    link: Option<Link>,
    /// Records written and not yet settled, in write order.
    pending: VecDeque<Pending>,
    /// Records settled by an `ack` still in progress (kept here so a dropped `ack` loses nothing).
    settled: usize,
    /// Nacks among `settled`.
    nacks: Vec<Nack>,
    opened: bool,
    stopped: bool,
    /// Reports reconnects to the host.
    health: HealthReporter,
}

/// One written record on its way to the broker.
struct Pending {
    /// The message body, or why the record cannot be published.
    body: std::result::Result<Bytes, String>,
    /// The broker's confirm, once published on the current channel.
    confirm: Option<PublisherConfirm>,
}

impl AmqpDestination {
    /// A new, unconfigured destination.
    pub fn new() -> Self {
        Self::default()
    }

    fn config(&self) -> std::result::Result<&DestinationConfig, AmqpError> {
        self.config.as_ref().ok_or(AmqpError::NotConfigured)
    }

    fn encode(&self, record: &Record) -> std::result::Result<Bytes, String> {
        let format = self.config.as_ref().map_or(Format::Raw, |c| c.format);
        match format {
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

    /// Opens a new connection (bounded by `limit`), declares the topology and enables confirms;
    /// every unconfirmed message must then be published again.
    async fn reconnect(&mut self, limit: Duration) -> std::result::Result<(), AmqpError> {
        if let Some(old) = self.link.take() {
            old.close().await;
        }
        let config = self.config()?.clone();
        let name = format!(
            "sluice amqp destination (exchange {:?}, routing key {})",
            config.topology.exchange, config.topology.routing_key
        );
        let (link, ()) = connect_with(&config.endpoint, limit, &name, &self.health, |channel| {
            prepare(channel, config.clone())
        })
        .await?;
        self.link = Some(link);
        for p in &mut self.pending {
            p.confirm = None;
        }
        Ok(())
    }

    /// Publishes every pending message that has no confirm on the current channel yet,
    /// reconnecting if the connection is lost.
    async fn publish_unsent(&mut self) -> Result<()> {
        loop {
            match self.try_publish_unsent().await {
                Ok(()) => return Ok(()),
                Err(e) if is_connection_error(&e) => {
                    tracing::warn!(error = %e, "amqp: destination lost its connection, reconnecting (degraded)");
                    self.health
                        .degraded(format!("amqp: connection lost: {e}, reconnecting"));
                    let limit = self.config()?.endpoint.reconnect_timeout;
                    self.reconnect(limit).await?;
                }
                Err(e) => return Err(AmqpError::broker("basic.publish", &e).into()),
            }
        }
    }

    async fn try_publish_unsent(&mut self) -> std::result::Result<(), lapin::Error> {
        let Some(config) = self.config.as_ref() else {
            return Ok(());
        };
        let Some(link) = self.link.as_ref() else {
            return Err(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into(),
            );
        };
        let exchange = config.topology.exchange.as_str();
        let routing_key = config.topology.routing_key.as_str();
        let options = BasicPublishOptions {
            mandatory: config.mandatory,
            ..BasicPublishOptions::default()
        };
        let mut properties =
            BasicProperties::default().with_content_type(config.content_type.as_str().into());
        if config.persistent {
            properties = properties.with_delivery_mode(2);
        }
        for p in self.pending.iter_mut().filter(|p| p.confirm.is_none()) {
            let Ok(body) = &p.body else { continue };
            let confirm = link
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties.clone(),
                )
                .await?;
            p.confirm = Some(confirm);
        }
        Ok(())
    }
}

/// Declares the topology and puts the channel in confirm mode.
async fn prepare(
    channel: Channel,
    config: DestinationConfig,
) -> std::result::Result<(), AmqpError> {
    declare(&channel, &config.topology).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| AmqpError::broker("confirm.select", &e))
}

#[async_trait]
impl Destination for AmqpDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.config = Some(DestinationConfig::from_settings(settings)?);
        Ok(())
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.health = reporter;
    }

    async fn open(&mut self) -> Result<()> {
        let limit = self.config()?.endpoint.connect_timeout;
        self.reconnect(limit).await?;
        self.opened = true;
        self.stopped = false;
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        if !self.opened || self.stopped {
            return Err(ConnectorError::StreamNotOpen);
        }
        for r in records {
            let body = self.encode(r);
            self.pending.push_back(Pending {
                body,
                confirm: None,
            });
        }
        self.publish_unsent().await
    }

    async fn ack(&mut self) -> Result<Acks> {
        if !self.opened {
            return Err(ConnectorError::StreamNotOpen);
        }
        'settle: loop {
            self.publish_unsent().await?;
            while let Some(front) = self.pending.front_mut() {
                let outcome = match (&front.body, front.confirm.as_mut()) {
                    (Err(reason), _) => Err(reason.clone()),
                    (Ok(_), None) => continue 'settle,
                    (Ok(_), Some(confirm)) => match confirm.await {
                        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
                        Ok(Confirmation::Ack(Some(returned))) => Err(format!(
                            "the broker returned the message as unroutable: {} {} (exchange \
                             {:?}, routing key {:?})",
                            returned.reply_code,
                            returned.reply_text.as_str(),
                            returned.delivery.exchange.as_str(),
                            returned.delivery.routing_key.as_str()
                        )),
                        Ok(Confirmation::Nack(_)) => {
                            Err("the broker nacked the message (basic.nack)".to_string())
                        }
                        Err(e) if is_connection_error(&e) => {
                            tracing::warn!(error = %e, "amqp: confirm lost with the connection, publishing again");
                            let limit = self.config()?.endpoint.reconnect_timeout;
                            self.reconnect(limit).await?;
                            continue 'settle;
                        }
                        Err(e) => return Err(AmqpError::broker("awaiting a confirm", &e).into()),
                    },
                };
                if let Err(reason) = outcome {
                    self.nacks.push(Nack {
                        index: self.settled,
                        reason,
                    });
                }
                self.pending.pop_front();
                self.settled += 1;
            }
            break;
        }
        Ok(Acks {
            count: std::mem::take(&mut self.settled),
            nacks: std::mem::take(&mut self.nacks),
        })
    }

    async fn stop(&mut self, _last: Option<&sluice_sdk::Position>) -> Result<()> {
        self.stopped = true;
        Ok(())
    }

    async fn teardown(&mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            link.close().await;
        }
        self.pending.clear();
        self.opened = false;
        Ok(())
    }
}
