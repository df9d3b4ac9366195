//! The `redis` connector: Redis Streams, read through a consumer group (`XREADGROUP` / `XACK`)
//! and written with `XADD`.
//!
//! Parameter names follow Conduit's Redis connector (`redis.key`, `redis.host`, `redis.port`,
//! `redis.database`, `redis.username`, `redis.password`, `mode`), plus `url` for a connection
//! URL. Only Conduit's `stream` mode is supported: pub/sub keeps nothing to resume from.
//!
//! - [`RedisSource`] reads as one consumer of a consumer group; a record's position is the
//!   stream entry id (see [`source`] for why resuming at one is lossless).
//! - [`RedisDestination`] appends each batch with one pipeline of `XADD`s and reports each
//!   entry's outcome in `ack`.

mod config;
mod connect;
pub mod destination;
mod entry;
mod error;
pub mod source;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_sdk::{
    Destination, Parameter, ParameterType, Plugin, Registry, Source, Specification, Validation,
};

pub use config::{Format, StartFrom};
pub use destination::RedisDestination;
pub use error::RedisError;
pub use source::RedisSource;

/// Registers the `redis` plugin.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(RedisPlugin));
}

/// The stream's key (source and destination).
pub const PARAM_KEY: &str = "redis.key";
/// A connection URL; overrides host, port, database, username and password when set.
pub const PARAM_URL: &str = "url";
/// The server's host.
pub const PARAM_HOST: &str = "redis.host";
/// The server's port.
pub const PARAM_PORT: &str = "redis.port";
/// The logical database.
pub const PARAM_DATABASE: &str = "redis.database";
/// The ACL user name.
pub const PARAM_USERNAME: &str = "redis.username";
/// The password.
pub const PARAM_PASSWORD: &str = "redis.password";
/// Conduit's mode; only `stream`.
pub const PARAM_MODE: &str = "mode";
/// The consumer group (source).
pub const PARAM_GROUP: &str = "group";
/// The consumer's name within the group (source).
pub const PARAM_CONSUMER: &str = "consumer";
/// Whether to create the group (and the stream) if missing (source).
pub const PARAM_CREATE_GROUP: &str = "createGroup";
/// Where a newly created group starts (source).
pub const PARAM_START_FROM: &str = "startFrom";
/// `fields`, `raw` or `opencdc` (source and destination).
pub const PARAM_FORMAT: &str = "format";
/// The field holding the payload with `raw` or `opencdc` (source and destination).
pub const PARAM_FIELD: &str = "field";
/// Approximate maximum stream length kept by `XADD` (destination).
pub const PARAM_MAX_LEN: &str = "maxLen";
/// How long to keep retrying the first connection (source and destination).
pub const PARAM_CONNECT_TIMEOUT: &str = "connectTimeout";
/// How often a batch whose connection failed is sent again (destination).
pub const PARAM_RETRY_ATTEMPTS: &str = "retryAttempts";
/// Pause before sending a failed batch again (destination).
pub const PARAM_RETRY_WAIT: &str = "retryWait";

/// The built-in `redis` connector plugin (Streams source and destination).
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisPlugin;

impl Plugin for RedisPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "redis".into(),
            summary: "Reads a Redis stream through a consumer group; appends records to a Redis \
                      stream."
                .into(),
            description: DESCRIPTION.into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: source_params(),
            destination_params: destination_params(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(RedisSource::new()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(RedisDestination::new()))
    }
}

const DESCRIPTION: &str = "\
Source: reads the stream at `redis.key` as consumer `consumer` of consumer group `group` \
(`XREADGROUP`), created with the stream if missing unless `createGroup: false`, starting at \
`startFrom`. An entry is acknowledged (`XACK`) only once the pipeline has durably checkpointed it. \
A record's position is the entry id. On open, the consumer first re-reads its own pending entries \
(delivered earlier, never acknowledged), acknowledging and skipping those at or below the saved \
position, then reads new entries; entries therefore arrive in id order, so skipping at or below \
the saved position never drops an unprocessed one. Keep `consumer` stable and unique per running \
source. With `format: fields` (the default) the payload is structured: each field of the entry \
becomes a string (non-UTF-8 bytes are replaced); with `format: raw` the payload is the bytes of \
the field `field`, with `format: opencdc` that field holds an OpenCDC JSON record. Metadata: \
`opencdc.collection` (the key) and `opencdc.createdAt` (from the id's milliseconds).

Destination: appends each record to the stream at `redis.key` with `XADD` (trimmed to about \
`maxLen` entries when set), one pipeline per batch, and reports each entry's outcome in `ack`: an \
entry the server refused (a key of another type, a full memory) is nacked with the server's \
message; a batch whose connection failed is sent again `retryAttempts` times, `retryWait` apart \
(an entry can then be stored twice: delivery is at least once). With `format: fields` a \
structured payload becomes one field per top-level key (strings as they are, other values as \
JSON) and a raw payload the single field `field`; with `raw` the field `field` holds \
`payload.after`; with `opencdc` it holds the OpenCDC JSON record.

Both sides retry the first connection with backoff for `connectTimeout`, then fail naming the \
connection settings; later the connection is re-established by itself and reading resumes from \
the consumer's pending entries.";

fn common_params(p: &mut BTreeMap<String, Parameter>) {
    p.insert(
        PARAM_KEY.into(),
        Parameter::new(ParameterType::String, "Key of the stream.").required(),
    );
    p.insert(
        PARAM_URL.into(),
        Parameter::new(
            ParameterType::String,
            "Connection URL, e.g. `redis://user:password@127.0.0.1:6379/0`; when set, it \
             replaces redis.host, redis.port, redis.database, redis.username and redis.password.",
        )
        .validate(Validation::Regex(
            r"^(redis|rediss|unix|redis\+unix)://".into(),
        )),
    );
    p.insert(
        PARAM_HOST.into(),
        Parameter::new(ParameterType::String, "Host of the Redis server.")
            .default_value("localhost"),
    );
    p.insert(
        PARAM_PORT.into(),
        Parameter::new(ParameterType::Int, "Port of the Redis server.")
            .default_value("6379")
            .validate(Validation::GreaterThan(0.0))
            .validate(Validation::LessThan(65536.0)),
    );
    p.insert(
        PARAM_DATABASE.into(),
        Parameter::new(ParameterType::Int, "Logical database number.")
            .default_value("0")
            .validate(Validation::GreaterThan(-1.0)),
    );
    p.insert(
        PARAM_USERNAME.into(),
        Parameter::new(ParameterType::String, "ACL user name (Redis 6 or later)."),
    );
    p.insert(
        PARAM_PASSWORD.into(),
        Parameter::new(ParameterType::String, "Password."),
    );
    p.insert(
        PARAM_MODE.into(),
        Parameter::new(
            ParameterType::String,
            "Conduit's mode; only `stream` is supported (pub/sub keeps nothing to resume from).",
        )
        .default_value("stream")
        .validate(Validation::Inclusion(vec!["stream".into()])),
    );
    p.insert(
        PARAM_FIELD.into(),
        Parameter::new(
            ParameterType::String,
            "With `format: raw` or `opencdc`, the entry field that holds the payload.",
        )
        .default_value("data"),
    );
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
}

fn format_param(what: &str) -> Parameter {
    Parameter::new(ParameterType::String, what)
        .default_value(Format::Fields.as_str())
        .validate(Validation::Inclusion(vec![
            Format::Fields.as_str().into(),
            Format::Raw.as_str().into(),
            Format::OpenCdc.as_str().into(),
        ]))
}

/// The source side's parameters.
pub(crate) fn source_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    common_params(&mut p);
    p.insert(
        PARAM_GROUP.into(),
        Parameter::new(
            ParameterType::String,
            "Consumer group; the server remembers what the group acknowledged.",
        )
        .default_value("sluice"),
    );
    p.insert(
        PARAM_CONSUMER.into(),
        Parameter::new(
            ParameterType::String,
            "Consumer name within the group; keep it stable (its pending entries are re-read on \
             open) and unique per running source.",
        )
        .default_value("sluice"),
    );
    p.insert(
        PARAM_CREATE_GROUP.into(),
        Parameter::new(
            ParameterType::Bool,
            "Create the group (and an empty stream) if missing; otherwise a missing group is an \
             error.",
        )
        .default_value("true"),
    );
    p.insert(
        PARAM_START_FROM.into(),
        Parameter::new(
            ParameterType::String,
            "Where a newly created group starts: `all` (every entry) or `new` (entries added \
             after it was created).",
        )
        .default_value(StartFrom::All.as_str())
        .validate(Validation::Inclusion(vec![
            StartFrom::All.as_str().into(),
            StartFrom::New.as_str().into(),
        ])),
    );
    p.insert(
        PARAM_FORMAT.into(),
        format_param(
            "`fields`: the entry's fields are the structured payload; `raw`: the field `field` \
             is the payload; `opencdc`: the field `field` is an OpenCDC JSON record.",
        ),
    );
    p
}

/// The destination side's parameters.
pub(crate) fn destination_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    common_params(&mut p);
    p.insert(
        PARAM_FORMAT.into(),
        format_param(
            "`fields`: a structured payload's keys become fields (a raw payload goes to `field`); \
             `raw`: `payload.after` goes to `field`; `opencdc`: the OpenCDC JSON record goes to \
             `field`.",
        ),
    );
    p.insert(
        PARAM_MAX_LEN.into(),
        Parameter::new(
            ParameterType::Int,
            "Keep about this many entries (`XADD MAXLEN ~`); 0 keeps everything.",
        )
        .default_value("0")
        .validate(Validation::GreaterThan(-1.0)),
    );
    p.insert(
        PARAM_RETRY_ATTEMPTS.into(),
        Parameter::new(
            ParameterType::Int,
            "How many times a batch whose connection failed is sent again before its records are \
             nacked.",
        )
        .default_value("3")
        .validate(Validation::GreaterThan(-1.0)),
    );
    p.insert(
        PARAM_RETRY_WAIT.into(),
        Parameter::new(ParameterType::Duration, "Pause before each retry.").default_value("1s"),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::acceptance::{specification_problems, Side};

    #[test]
    fn specification_is_well_formed() {
        let spec = RedisPlugin.specification();
        assert_eq!(spec.name, "redis");
        assert!(specification_problems(&spec, Side::Source).is_empty());
        assert!(specification_problems(&spec, Side::Destination).is_empty());
        assert!(spec.source_params[PARAM_KEY].is_required());
        assert!(spec.destination_params[PARAM_KEY].is_required());
    }
}
