//! The `nats` connector: NATS JetStream, read through a durable pull consumer and written with
//! publish acknowledgements.
//!
//! Parameter names follow Conduit's NATS JetStream connector (`urls`, `stream`, `subject`,
//! `durable`, `deliverPolicy`, `bufferSize`, `connectionName`, `retryAttempts`, `retryWait`).
//!
//! - [`NatsSource`] pulls from a durable consumer with explicit acks; a record's position is its
//!   stream sequence (see [`position`] for how resuming stays lossless when redeliveries arrive
//!   out of order).
//! - [`NatsDestination`] publishes every record of a batch at once and awaits the publish
//!   acknowledgements in `ack`, retrying transient failures and nacking what the server refused.

mod config;
mod connect;
pub mod destination;
mod error;
pub mod position;
mod record;
pub mod source;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_sdk::{
    Destination, Parameter, ParameterType, Plugin, Registry, Source, Specification, Validation,
};

pub use config::{DeliverPolicy, Format};
pub use destination::NatsDestination;
pub use error::NatsError;
pub use source::NatsSource;

/// Registers the `nats` plugin.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(NatsPlugin));
}

/// Comma-separated server URLs (source and destination).
pub const PARAM_URLS: &str = "urls";
/// The stream to read (source).
pub const PARAM_STREAM: &str = "stream";
/// The subject: the consumer's filter (source) or where to publish (destination).
pub const PARAM_SUBJECT: &str = "subject";
/// The durable consumer's name (source).
pub const PARAM_DURABLE: &str = "durable";
/// Where a newly created consumer starts (source).
pub const PARAM_DELIVER_POLICY: &str = "deliverPolicy";
/// Whether to create the stream if it is missing (source).
pub const PARAM_CREATE_STREAM: &str = "createStream";
/// Whether to create the durable consumer if it is missing (source).
pub const PARAM_CREATE_CONSUMER: &str = "createConsumer";
/// How long the server waits for an ack before redelivering (source).
pub const PARAM_ACK_WAIT: &str = "ackWait";
/// Most messages delivered and not yet acked (source).
pub const PARAM_MAX_ACK_PENDING: &str = "maxAckPending";
/// Messages asked for per pull request (source).
pub const PARAM_BUFFER_SIZE: &str = "bufferSize";
/// `raw` or `opencdc` payloads (source and destination).
pub const PARAM_FORMAT: &str = "format";
/// How long to keep retrying the first connection (source and destination).
pub const PARAM_CONNECT_TIMEOUT: &str = "connectTimeout";
/// The connection's name, shown by the server's monitoring (source and destination).
pub const PARAM_CONNECTION_NAME: &str = "connectionName";
/// How often a transiently failed publish is retried (destination).
pub const PARAM_RETRY_ATTEMPTS: &str = "retryAttempts";
/// Pause before retrying a failed publish (destination).
pub const PARAM_RETRY_WAIT: &str = "retryWait";
/// Most publishes awaiting their acknowledgement (destination).
pub const PARAM_MAX_IN_FLIGHT: &str = "maxInFlight";

/// The built-in `nats` connector plugin (JetStream source and destination).
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsPlugin;

impl Plugin for NatsPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "nats".into(),
            summary: "Reads from a NATS JetStream durable consumer; publishes to JetStream with \
                      publish acknowledgements."
                .into(),
            description: DESCRIPTION.into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: source_params(),
            destination_params: destination_params(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(NatsSource::new()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(NatsDestination::new()))
    }
}

const DESCRIPTION: &str = "\
Source: reads the JetStream stream `stream` through the durable pull consumer `durable` \
(created if missing unless `createConsumer: false`, filtered by `subject` if set, starting at \
`deliverPolicy`; the stream itself is created with `subject` when `createStream: true`). Every \
message is acknowledged explicitly, and only once the pipeline has durably checkpointed it, so \
nothing is lost when Sluice, the network or the server fails: unacknowledged messages are \
redelivered by the server after `ackWait`. A record's position is the message's stream sequence; \
on a restart, messages at or below the saved position that the server redelivers are acknowledged \
and skipped (and when redeliveries arrived out of order, the position also carries the highest \
sequence below which everything was processed, so that skipping never drops an unprocessed \
message). With `format: raw` (the default) the payload is the message body, the metadata holds \
`opencdc.collection` (the subject), `opencdc.createdAt` (publish time) and every message header, \
and a `Nats-Msg-Id` header becomes the key; with `format: opencdc` each message body is an \
OpenCDC JSON record. Messages the stopped source had received but not returned are negatively \
acknowledged so they are redelivered at once.

Destination: publishes each record to `subject` and waits for JetStream's publish \
acknowledgement in `ack`; a record the server refuses is nacked, a publish that timed out or \
lost its connection is retried `retryAttempts` times, `retryWait` apart (a retry can store a \
message twice: delivery is at least once). With `format: opencdc` (the default, like Conduit) the \
body is the OpenCDC JSON record; with `format: raw` it is `payload.after` (structured data as \
JSON) and the record's metadata becomes message headers.

Both sides retry the first connection with backoff for `connectTimeout`, then fail naming \
`urls`; later the client reconnects by itself and reading or publishing resumes.";

fn urls_param() -> Parameter {
    Parameter::new(
        ParameterType::String,
        "Comma-separated NATS server URLs, e.g. `nats://127.0.0.1:4222`; credentials may be given \
         in the URL (`nats://user:password@host:4222`, `nats://token@host:4222`).",
    )
    .required()
    .validate(Validation::Regex(
        r"^\s*[^,\s]+(\s*,\s*[^,\s]+)*\s*$".into(),
    ))
}

fn format_param(default: Format, what: &str) -> Parameter {
    Parameter::new(ParameterType::String, what)
        .default_value(default.as_str())
        .validate(Validation::Inclusion(vec![
            Format::Raw.as_str().into(),
            Format::OpenCdc.as_str().into(),
        ]))
}

fn common_params(p: &mut BTreeMap<String, Parameter>) {
    p.insert(PARAM_URLS.into(), urls_param());
    p.insert(
        PARAM_CONNECT_TIMEOUT.into(),
        Parameter::new(
            ParameterType::Duration,
            "How long to keep retrying (with backoff) when the server cannot be reached at open, \
             before failing.",
        )
        .default_value("30s")
        .validate(Validation::Exclusion(vec!["0s".into()])),
    );
    p.insert(
        PARAM_CONNECTION_NAME.into(),
        Parameter::new(
            ParameterType::String,
            "Name of the connection, shown by the server's monitoring.",
        )
        .default_value("sluice"),
    );
}

/// The source side's parameters.
pub(crate) fn source_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    common_params(&mut p);
    p.insert(
        PARAM_STREAM.into(),
        Parameter::new(
            ParameterType::String,
            "Name of the JetStream stream to read.",
        )
        .required()
        .validate(Validation::Regex(r"^[^.*>\s]+$".into())),
    );
    p.insert(
        PARAM_SUBJECT.into(),
        Parameter::new(
            ParameterType::String,
            "Subject filter of the consumer (wildcards allowed); also the stream's subject when \
             `createStream` creates it. Empty: every subject of the stream.",
        ),
    );
    p.insert(
        PARAM_DURABLE.into(),
        Parameter::new(
            ParameterType::String,
            "Name of the durable consumer; the server remembers what it acknowledged, so keep it \
             stable and unique per pipeline.",
        )
        .required()
        .validate(Validation::Regex(r"^[^.*>\s]+$".into())),
    );
    p.insert(
        PARAM_DELIVER_POLICY.into(),
        Parameter::new(
            ParameterType::String,
            "Where a newly created consumer starts: `all` (every message in the stream) or `new` \
             (messages published after it was created).",
        )
        .default_value(DeliverPolicy::All.as_str())
        .validate(Validation::Inclusion(vec![
            DeliverPolicy::All.as_str().into(),
            DeliverPolicy::New.as_str().into(),
        ])),
    );
    p.insert(
        PARAM_CREATE_STREAM.into(),
        Parameter::new(
            ParameterType::Bool,
            "Create the stream (file storage, `subject` as its subject) if it does not exist.",
        )
        .default_value("false"),
    );
    p.insert(
        PARAM_CREATE_CONSUMER.into(),
        Parameter::new(
            ParameterType::Bool,
            "Create the durable consumer if it does not exist (otherwise a missing consumer is an \
             error).",
        )
        .default_value("true"),
    );
    p.insert(
        PARAM_ACK_WAIT.into(),
        Parameter::new(
            ParameterType::Duration,
            "How long the server waits for an acknowledgement before redelivering a message (used \
             when creating the consumer).",
        )
        .default_value("30s")
        .validate(Validation::Exclusion(vec!["0s".into()])),
    );
    p.insert(
        PARAM_MAX_ACK_PENDING.into(),
        Parameter::new(
            ParameterType::Int,
            "Most messages delivered but not yet acknowledged (used when creating the consumer); \
             keep it above the pipeline's records in flight, or reading pauses until acks arrive.",
        )
        .default_value("65536")
        .validate(Validation::GreaterThan(0.0)),
    );
    p.insert(
        PARAM_BUFFER_SIZE.into(),
        Parameter::new(
            ParameterType::Int,
            "Messages asked for per pull request; a new request goes out when half have arrived.",
        )
        .default_value("1024")
        .validate(Validation::GreaterThan(0.0))
        .validate(Validation::LessThan(1_000_001.0)),
    );
    p.insert(
        PARAM_FORMAT.into(),
        format_param(
            Format::Raw,
            "`raw`: the message body is the payload; `opencdc`: the body is an OpenCDC JSON \
             record.",
        ),
    );
    p
}

/// The destination side's parameters.
pub(crate) fn destination_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    common_params(&mut p);
    p.insert(
        PARAM_SUBJECT.into(),
        Parameter::new(
            ParameterType::String,
            "Subject to publish to; a JetStream stream must capture it.",
        )
        .required()
        .validate(Validation::Regex(r"^[^*>\s]+$".into())),
    );
    p.insert(
        PARAM_FORMAT.into(),
        format_param(
            Format::OpenCdc,
            "`opencdc`: publish each record as OpenCDC JSON; `raw`: publish `payload.after`, with \
             the metadata as headers.",
        ),
    );
    p.insert(
        PARAM_RETRY_ATTEMPTS.into(),
        Parameter::new(
            ParameterType::Int,
            "How many times a publish that timed out or lost its connection is retried before \
             its record is nacked.",
        )
        .default_value("3")
        .validate(Validation::GreaterThan(-1.0)),
    );
    p.insert(
        PARAM_RETRY_WAIT.into(),
        Parameter::new(
            ParameterType::Duration,
            "Pause before each retry of a failed publish.",
        )
        .default_value("1s"),
    );
    p.insert(
        PARAM_MAX_IN_FLIGHT.into(),
        Parameter::new(
            ParameterType::Int,
            "Most publishes awaiting their acknowledgement; past it, `write` waits for the oldest.",
        )
        .default_value("16384")
        .validate(Validation::GreaterThan(0.0)),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::acceptance::{specification_problems, Side};

    #[test]
    fn specification_is_well_formed() {
        let spec = NatsPlugin.specification();
        assert_eq!(spec.name, "nats");
        assert!(specification_problems(&spec, Side::Source).is_empty());
        assert!(specification_problems(&spec, Side::Destination).is_empty());
        assert!(spec.source_params[PARAM_URLS].is_required());
        assert!(spec.source_params[PARAM_DURABLE].is_required());
        assert!(spec.destination_params[PARAM_SUBJECT].is_required());
    }
}
