//! The `amqp` connector (alias `rabbitmq`): consumes a RabbitMQ queue with manual acks and publishes
//! to a queue or exchange with publisher confirms.
//!
//! Accepts the settings of Conduit's RabbitMQ connector (`url`, `queueName`, `exchange.*`,
//! `routingKey`, `contentType`, `queue.durable`, ...), so a Conduit pipeline using it runs unchanged.
//!
//! - [`AmqpSource`]: `basic.consume` without auto-ack and a `basic.qos` prefetch window; a message
//!   is acked to the broker (`basic.ack`, `multiple`) only when Sluice acks its position. Positions
//!   are generated locally (delivery tags die with their channel), so resuming relies on the broker
//!   redelivering every message that was never acked (see [`source`]).
//! - [`AmqpDestination`]: `confirm.select`, publishes in `write`, awaits the confirms in `ack`; a
//!   nacked or returned (unroutable) message is a nacked record (see [`destination`]).
//!
//! Both reconnect with exponential backoff, for a bounded time, when the broker is down at start or
//! goes away mid-stream.

mod config;
mod connect;
pub mod destination;
mod error;
pub mod source;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_sdk::{
    Destination, Parameter, ParameterType, Plugin, Registry, Source, Specification, Validation,
};

pub use config::{DestinationConfig, Format, SourceConfig};
pub use destination::AmqpDestination;
pub use error::AmqpError;
pub use source::AmqpSource;

/// Parameter names (Conduit's where it has one).
pub mod param {
    /// The AMQP URI.
    pub const URL: &str = "url";
    /// The queue to consume from, or to publish to through the default exchange.
    pub const QUEUE_NAME: &str = "queueName";
    /// Declare the queue if it is missing.
    pub const QUEUE_DECLARE: &str = "queue.declare";
    /// Declare the queue durable.
    pub const QUEUE_DURABLE: &str = "queue.durable";
    /// The exchange to publish to (destination) or to bind the queue to (source).
    pub const EXCHANGE_NAME: &str = "exchange.name";
    /// The exchange's type when it is declared.
    pub const EXCHANGE_TYPE: &str = "exchange.type";
    /// Declare the exchange durable.
    pub const EXCHANGE_DURABLE: &str = "exchange.durable";
    /// The routing key (publishing) or binding key (source binding).
    pub const ROUTING_KEY: &str = "routingKey";
    /// How many unacked messages the broker may hand the source at once.
    pub const PREFETCH_COUNT: &str = "prefetchCount";
    /// `raw` bodies or OpenCDC JSON bodies.
    pub const FORMAT: &str = "format";
    /// The content type of published messages.
    pub const CONTENT_TYPE: &str = "contentType";
    /// Publish with delivery mode 2 (persistent).
    pub const PERSISTENT: &str = "persistent";
    /// Publish with the mandatory flag (unroutable messages come back and are nacked).
    pub const MANDATORY: &str = "mandatory";
    /// How long `open` keeps trying to reach the broker.
    pub const CONNECT_TIMEOUT: &str = "connect.timeout";
    /// How long a connection lost mid-stream is retried before the connector fails.
    pub const RECONNECT_TIMEOUT: &str = "reconnect.timeout";
}

/// Default prefetch window: enough to keep the broker streaming while Sluice checkpoints.
pub const DEFAULT_PREFETCH: u16 = 1000;
/// Default time `open` keeps retrying an unreachable broker.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "30s";
/// Default time a lost connection is retried before the connector fails.
pub const DEFAULT_RECONNECT_TIMEOUT: &str = "5m";

/// The built-in `amqp` connector plugin (source and destination), registered also as `rabbitmq`.
#[derive(Debug, Clone)]
pub struct AmqpPlugin {
    name: &'static str,
}

impl AmqpPlugin {
    /// The plugin under its main name, `amqp`.
    pub fn new() -> Self {
        AmqpPlugin { name: "amqp" }
    }

    /// The same plugin under the alias `rabbitmq`, which Conduit pipeline files use.
    pub fn rabbitmq_alias() -> Self {
        AmqpPlugin { name: "rabbitmq" }
    }
}

impl Default for AmqpPlugin {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers the connector as `amqp` and as `rabbitmq`.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(AmqpPlugin::new()));
    registry.register(Arc::new(AmqpPlugin::rabbitmq_alias()));
}

impl Plugin for AmqpPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: self.name.into(),
            summary:
                "Consumes a RabbitMQ queue with manual acks; publishes with publisher confirms."
                    .into(),
            description: DESCRIPTION.into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: source_params(),
            destination_params: destination_params(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(AmqpSource::new()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(AmqpDestination::new()))
    }
}

const DESCRIPTION: &str = "\
RabbitMQ (AMQP 0-9-1). Accepts the settings of Conduit's RabbitMQ connector.

Source: consumes `queueName` (declared durable if missing, unless `queue.declare` is false; bound \
to `exchange.name` with `routingKey` when an exchange is given) with manual acknowledgements and a \
prefetch window of `prefetchCount` messages. A message is acknowledged to the broker only after \
Sluice has saved its position, so nothing acknowledged is ever lost. Positions are numbers that \
Sluice generates (delivery tags do not survive a connection): AMQP queues cannot be replayed, so \
resuming after a restart or a lost connection relies on the broker redelivering every message that \
was not acknowledged. Records read but not yet acknowledged when the connection dropped are \
therefore read again (at-least-once). Each record's payload is the message body (`format: raw`) or \
the OpenCDC record the body holds (`format: opencdc`); metadata carries the queue as \
`opencdc.collection` and the message's `rabbitmq.*` properties; the key is the message id, if any.

Destination: publishes each record's `payload.after` (`format: raw`) or the whole record as \
OpenCDC JSON (`format: opencdc`) to `exchange.name` (default: the default exchange) with \
`routingKey` (default: `queueName`), persistent (delivery mode 2) and mandatory by default, on a \
channel in confirm mode. `write` publishes; `ack` waits for the broker's confirms: a nacked message, \
or one returned as unroutable, is a nacked record. The queue (and the exchange, when named) is \
declared and bound unless `queue.declare` is false. If the connection drops, every unconfirmed \
message is published again on a new connection (at-least-once).

Both sides retry an unreachable broker with exponential backoff, for `connect.timeout` at start \
and `reconnect.timeout` after a lost connection; wrong credentials fail at once, naming `url`.";

fn format_param() -> Parameter {
    Parameter::new(
        ParameterType::String,
        "`raw`: the message body is the record's payload; `opencdc`: the body is an OpenCDC JSON \
         record.",
    )
    .default_value(Format::Raw.as_str())
    .validate(Validation::Inclusion(vec![
        Format::Raw.as_str().into(),
        Format::OpenCdc.as_str().into(),
    ]))
}

fn common_params(p: &mut BTreeMap<String, Parameter>) {
    p.insert(
        param::URL.into(),
        Parameter::new(
            ParameterType::String,
            "AMQP URI of the broker, with credentials and URL-encoded virtual host, e.g. \
             amqp://guest:guest@127.0.0.1:5672/%2f.",
        )
        .required()
        .validate(Validation::Regex("^amqps?://".into())),
    );
    p.insert(
        param::QUEUE_DECLARE.into(),
        Parameter::new(
            ParameterType::Bool,
            "Declare the queue (and the exchange, when named) if missing; when false they must \
             exist.",
        )
        .default_value("true"),
    );
    p.insert(
        param::QUEUE_DURABLE.into(),
        Parameter::new(
            ParameterType::Bool,
            "Declare the queue durable, so it survives a broker restart.",
        )
        .default_value("true"),
    );
    p.insert(
        param::EXCHANGE_NAME.into(),
        Parameter::new(
            ParameterType::String,
            "Exchange to publish to (destination) or to bind the queue to (source); empty means \
             the default exchange.",
        )
        .default_value(""),
    );
    p.insert(
        param::EXCHANGE_TYPE.into(),
        Parameter::new(
            ParameterType::String,
            "Type of the exchange when it is declared.",
        )
        .default_value("direct")
        .validate(Validation::Inclusion(vec![
            "direct".into(),
            "fanout".into(),
            "topic".into(),
            "headers".into(),
        ])),
    );
    p.insert(
        param::EXCHANGE_DURABLE.into(),
        Parameter::new(
            ParameterType::Bool,
            "Declare the exchange durable, so it survives a broker restart.",
        )
        .default_value("true"),
    );
    p.insert(
        param::ROUTING_KEY.into(),
        Parameter::new(
            ParameterType::String,
            "Routing key to publish with, or binding key of the queue when an exchange is named; \
             empty means `queueName`.",
        )
        .default_value(""),
    );
    p.insert(param::FORMAT.into(), format_param());
    p.insert(
        param::CONNECT_TIMEOUT.into(),
        Parameter::new(
            ParameterType::Duration,
            "How long `open` keeps retrying an unreachable broker (exponential backoff) before it \
             fails.",
        )
        .default_value(DEFAULT_CONNECT_TIMEOUT)
        .validate(Validation::Exclusion(vec!["0s".into()])),
    );
    p.insert(
        param::RECONNECT_TIMEOUT.into(),
        Parameter::new(
            ParameterType::Duration,
            "How long a connection lost mid-stream is retried (exponential backoff) before the \
             connector fails.",
        )
        .default_value(DEFAULT_RECONNECT_TIMEOUT)
        .validate(Validation::Exclusion(vec!["0s".into()])),
    );
}

/// The source side's parameters.
pub(crate) fn source_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    common_params(&mut p);
    p.insert(
        param::QUEUE_NAME.into(),
        Parameter::new(ParameterType::String, "Queue to consume from.").required(),
    );
    p.insert(
        param::PREFETCH_COUNT.into(),
        Parameter::new(
            ParameterType::Int,
            "How many unacknowledged messages the broker may deliver at once (basic.qos).",
        )
        .default_value(DEFAULT_PREFETCH.to_string())
        .validate(Validation::GreaterThan(0.0))
        .validate(Validation::LessThan(65536.0)),
    );
    p
}

/// The destination side's parameters.
pub(crate) fn destination_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    common_params(&mut p);
    p.insert(
        param::QUEUE_NAME.into(),
        Parameter::new(
            ParameterType::String,
            "Queue to publish to (through the default exchange, or bound to `exchange.name`).",
        )
        .required(),
    );
    p.insert(
        param::CONTENT_TYPE.into(),
        Parameter::new(
            ParameterType::String,
            "Content type of published messages; empty means application/octet-stream for `raw` \
             and application/json for `opencdc`.",
        )
        .default_value(""),
    );
    p.insert(
        param::PERSISTENT.into(),
        Parameter::new(
            ParameterType::Bool,
            "Publish persistent messages (delivery mode 2), which a durable queue keeps across a \
             broker restart.",
        )
        .default_value("true"),
    );
    p.insert(
        param::MANDATORY.into(),
        Parameter::new(
            ParameterType::Bool,
            "Publish with the mandatory flag: a message no queue receives is returned and its \
             record nacked instead of silently dropped.",
        )
        .default_value("true"),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::acceptance::{specification_problems, Side};

    #[test]
    fn specification_is_well_formed_under_both_names() {
        for plugin in [AmqpPlugin::new(), AmqpPlugin::rabbitmq_alias()] {
            let spec = plugin.specification();
            assert!(specification_problems(&spec, Side::Source).is_empty());
            assert!(specification_problems(&spec, Side::Destination).is_empty());
            assert!(spec.source_params[param::URL].is_required());
            assert!(spec.destination_params[param::QUEUE_NAME].is_required());
        }
        let mut r = Registry::new();
        register(&mut r);
        assert!(r.get("builtin:rabbitmq").is_ok());
        assert!(r.get("amqp").is_ok());
    }
}
