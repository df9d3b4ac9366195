//! The `mqtt` connector: subscribes and publishes at QoS 1 with a persistent session (MQTT 5:
//! clean start off, a session that never expires).
//!
//! - [`MqttSource`]: subscribes to `topic` at QoS 1 as `clientId` with `clean_session` false and
//!   manual acks: a message's PUBACK goes to the broker only once Sluice has saved its position.
//!   MQTT has no replayable offsets, so positions are generated locally and resuming relies on the
//!   broker redelivering every unacknowledged message to the persistent session (see [`source`]).
//! - [`MqttDestination`]: publishes at QoS 1 and settles a record when its PUBACK arrives (see
//!   [`destination`]).
//!
//! Both reconnect with exponential backoff, for a bounded time, when the broker is down at start or
//! goes away mid-stream.

mod config;
pub mod destination;
mod error;
mod session;
pub mod source;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_sdk::{
    Destination, Parameter, ParameterType, Plugin, Registry, Source, Specification, Validation,
};

pub use config::{DestinationConfig, Format, SourceConfig};
pub use destination::MqttDestination;
pub use error::MqttError;
pub use source::MqttSource;

/// Parameter names (Conduit's MQTT connector's where it has one).
pub mod param {
    /// The broker's URL.
    pub const URL: &str = "url";
    /// Topic filter (source) or topic (destination).
    pub const TOPIC: &str = "topic";
    /// The client id, which names the persistent session.
    pub const CLIENT_ID: &str = "clientId";
    /// User name (overrides the URL's).
    pub const USERNAME: &str = "username";
    /// Password (overrides the URL's).
    pub const PASSWORD: &str = "password";
    /// Keep-alive interval.
    pub const KEEP_ALIVE: &str = "keepAlive";
    /// `raw` payloads or OpenCDC JSON payloads.
    pub const FORMAT: &str = "format";
    /// Publish with the retain flag.
    pub const RETAIN: &str = "retain";
    /// How many publishes may await their PUBACK at once.
    pub const INFLIGHT: &str = "inflight";
    /// How many unacknowledged messages the broker may send the source at once.
    pub const RECEIVE_MAXIMUM: &str = "receiveMaximum";
    /// How long `open` keeps trying to reach the broker.
    pub const CONNECT_TIMEOUT: &str = "connect.timeout";
    /// How long a connection lost mid-stream is retried before the connector fails.
    pub const RECONNECT_TIMEOUT: &str = "reconnect.timeout";
}

/// The built-in `mqtt` connector plugin (source and destination).
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttPlugin;

/// Registers the connector as `mqtt`.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(MqttPlugin));
}

impl Plugin for MqttPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "mqtt".into(),
            summary: "Subscribes and publishes at QoS 1 with a persistent session.".into(),
            description: DESCRIPTION.into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: source_params(),
            destination_params: destination_params(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(MqttSource::new()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(MqttDestination::new()))
    }
}

const DESCRIPTION: &str = "\
MQTT 5 at QoS 1 with a persistent session (clean start off, a session that never expires, a fixed \
`clientId`).

Source: subscribes to `topic` (wildcards allowed) at QoS 1 and acknowledges a message to the broker \
(PUBACK) only after Sluice has saved its position, so nothing acknowledged is ever lost. MQTT has \
no replayable offsets: positions are numbers Sluice generates, and resuming after a restart or a \
lost connection relies on the broker keeping the persistent session of `clientId` — its \
subscription, the messages published while Sluice was away, and the ones delivered but not \
acknowledged, which it sends again. Records read but not acknowledged when a connection dropped are \
therefore read again (at-least-once). The broker's limits apply: Mosquitto queues at most \
`max_queued_messages` (1000 by default) for an offline session and keeps sessions across its own \
restart only with `persistence true`. The broker sends at most `receiveMaximum` unacknowledged \
messages at once (the MQTT 5 receive maximum). Each record's payload is the message payload \
(`format: raw`) or the OpenCDC record it holds (`format: opencdc`); metadata carries the topic as \
`opencdc.collection`.

Destination: publishes each record's `payload.after` (`format: raw`) or the whole record as OpenCDC \
JSON (`format: opencdc`) to `topic` at QoS 1; a record is settled when the broker's PUBACK arrives, \
and nacked if the PUBACK carries an error reason (not authorized, quota exceeded, ...). \
Unacknowledged publishes are sent again after a reconnection; if the broker lost the session \
meanwhile the destination fails rather than guess, and the pipeline resends from its checkpoint.

Mosquitto sends PUBACKs with Nagle's algorithm unless its listener has `set_tcp_nodelay true`; \
without it every `ack` that waits for the last PUBACK of a burst can stall ~40 ms (the client's \
delayed TCP ACK), which halves the destination's throughput under the engine's periodic acks.

`clientId` must be unique per broker: two connections with the same id disconnect each other. Both \
sides retry an unreachable broker with exponential backoff, for `connect.timeout` at start and \
`reconnect.timeout` after a lost connection; refused credentials fail at once, naming the setting.";

fn common_params(p: &mut BTreeMap<String, Parameter>) {
    p.insert(
        param::URL.into(),
        Parameter::new(
            ParameterType::String,
            "The broker, as mqtt://[user:password@]host[:port] (port 1883 by default; tcp:// is \
             accepted too).",
        )
        .required()
        .validate(Validation::Regex("^(mqtt|tcp)://[^/?#]+/?$".into())),
    );
    p.insert(
        param::CLIENT_ID.into(),
        Parameter::new(
            ParameterType::String,
            "Client id; it names the persistent session the broker keeps between runs, so it \
             must be fixed and unique per broker.",
        )
        .required()
        .validate(Validation::Regex("^[^\\s]{1,128}$".into())),
    );
    p.insert(
        param::USERNAME.into(),
        Parameter::new(
            ParameterType::String,
            "User name; overrides the one in `url`.",
        )
        .default_value(""),
    );
    p.insert(
        param::PASSWORD.into(),
        Parameter::new(
            ParameterType::String,
            "Password; overrides the one in `url` (use ${VAR} to take it from the environment).",
        )
        .default_value(""),
    );
    p.insert(
        param::KEEP_ALIVE.into(),
        Parameter::new(
            ParameterType::Duration,
            "Keep-alive interval: how soon a dead connection is noticed.",
        )
        .default_value("30s"),
    );
    p.insert(
        param::FORMAT.into(),
        Parameter::new(
            ParameterType::String,
            "`raw`: the MQTT payload is the record's payload; `opencdc`: the payload is an \
             OpenCDC JSON record.",
        )
        .default_value(Format::Raw.as_str())
        .validate(Validation::Inclusion(vec![
            Format::Raw.as_str().into(),
            Format::OpenCdc.as_str().into(),
        ])),
    );
    p.insert(
        param::CONNECT_TIMEOUT.into(),
        Parameter::new(
            ParameterType::Duration,
            "How long `open` keeps retrying an unreachable broker (exponential backoff) before it \
             fails.",
        )
        .default_value("30s")
        .validate(Validation::Exclusion(vec!["0s".into()])),
    );
    p.insert(
        param::RECONNECT_TIMEOUT.into(),
        Parameter::new(
            ParameterType::Duration,
            "How long a connection lost mid-stream is retried (exponential backoff) before the \
             connector fails.",
        )
        .default_value("5m")
        .validate(Validation::Exclusion(vec!["0s".into()])),
    );
}

/// The source side's parameters.
pub(crate) fn source_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    common_params(&mut p);
    p.insert(
        param::TOPIC.into(),
        Parameter::new(
            ParameterType::String,
            "Topic filter to subscribe to at QoS 1; `+` and `#` wildcards are allowed.",
        )
        .required(),
    );
    p.insert(
        param::RECEIVE_MAXIMUM.into(),
        Parameter::new(
            ParameterType::Int,
            "How many unacknowledged messages the broker may send at once (MQTT 5 receive \
             maximum); it bounds how many records can be in flight in the pipeline.",
        )
        .default_value("1000")
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
        param::TOPIC.into(),
        Parameter::new(
            ParameterType::String,
            "Topic to publish to at QoS 1 (no wildcards).",
        )
        .required()
        .validate(Validation::Regex("^[^+#]+$".into())),
    );
    p.insert(
        param::RETAIN.into(),
        Parameter::new(ParameterType::Bool, "Publish with the retain flag.").default_value("false"),
    );
    p.insert(
        param::INFLIGHT.into(),
        Parameter::new(
            ParameterType::Int,
            "How many publishes may await their PUBACK at once.",
        )
        .default_value("100")
        .validate(Validation::GreaterThan(0.0))
        .validate(Validation::LessThan(65536.0)),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::acceptance::{specification_problems, Side};

    #[test]
    fn specification_is_well_formed() {
        let spec = MqttPlugin.specification();
        assert!(specification_problems(&spec, Side::Source).is_empty());
        assert!(specification_problems(&spec, Side::Destination).is_empty());
        for params in [&spec.source_params, &spec.destination_params] {
            for name in [param::URL, param::TOPIC, param::CLIENT_ID] {
                assert!(params[name].is_required(), "{name}");
            }
        }
    }
}
