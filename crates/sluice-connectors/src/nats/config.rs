//! Typed settings of the NATS source and destination, checked against the specification.

use std::str::FromStr;
use std::time::Duration;

use sluice_sdk::spec::{validate_settings, Config, Violation};
use sluice_sdk::{Settings, ValidationErrors};

use super::{
    destination_params, source_params, PARAM_ACK_WAIT, PARAM_BUFFER_SIZE, PARAM_CONNECTION_NAME,
    PARAM_CONNECT_TIMEOUT, PARAM_CREATE_CONSUMER, PARAM_CREATE_STREAM, PARAM_DELIVER_POLICY,
    PARAM_DURABLE, PARAM_FORMAT, PARAM_MAX_ACK_PENDING, PARAM_MAX_IN_FLIGHT, PARAM_RETRY_ATTEMPTS,
    PARAM_RETRY_WAIT, PARAM_STREAM, PARAM_SUBJECT, PARAM_URLS,
};

pub use crate::body_format::Format;

/// Where a newly created consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverPolicy {
    /// Every message in the stream.
    All,
    /// Only messages published after the consumer was created.
    New,
}

impl DeliverPolicy {
    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliverPolicy::All => "all",
            DeliverPolicy::New => "new",
        }
    }
}

impl FromStr for DeliverPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(DeliverPolicy::All),
            "new" => Ok(DeliverPolicy::New),
            other => Err(format!(
                "unknown deliver policy {other:?} (expected all or new)"
            )),
        }
    }
}

/// How to reach the server (both sides).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConnectConfig {
    /// Server URLs.
    pub urls: Vec<String>,
    /// How long to keep retrying the first connection.
    pub connect_timeout: Duration,
    /// The connection's name.
    pub connection_name: String,
}

/// The source's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceConfig {
    pub connect: ConnectConfig,
    pub stream: String,
    pub subject: Option<String>,
    pub durable: String,
    pub deliver_policy: DeliverPolicy,
    pub create_stream: bool,
    pub create_consumer: bool,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub buffer_size: usize,
    pub format: Format,
}

impl SourceConfig {
    /// Validates `settings` against the source specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&source_params(), settings)?;
        let c = Config::new(&resolved);
        let create_stream = c.bool(PARAM_CREATE_STREAM)?.unwrap_or(false);
        let subject = c.str(PARAM_SUBJECT).map(str::to_string);
        if create_stream && subject.is_none() {
            return Err(violation(
                PARAM_SUBJECT,
                "is required when createStream is true (it becomes the stream's subject)",
            ));
        }
        Ok(SourceConfig {
            connect: connect_config(&c)?,
            stream: c.required_str(PARAM_STREAM)?.to_string(),
            subject,
            durable: c.required_str(PARAM_DURABLE)?.to_string(),
            deliver_policy: parse(&c, PARAM_DELIVER_POLICY, DeliverPolicy::All)?,
            create_stream,
            create_consumer: c.bool(PARAM_CREATE_CONSUMER)?.unwrap_or(true),
            ack_wait: positive_duration(&c, PARAM_ACK_WAIT, Duration::from_secs(30))?,
            max_ack_pending: c.i64(PARAM_MAX_ACK_PENDING)?.unwrap_or(65536),
            buffer_size: c
                .u64(PARAM_BUFFER_SIZE)?
                .map_or(1024, |n| usize::try_from(n).unwrap_or(1024)),
            format: parse(&c, PARAM_FORMAT, Format::Raw)?,
        })
    }
}

/// The destination's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DestinationConfig {
    pub connect: ConnectConfig,
    pub subject: String,
    pub format: Format,
    pub retry_attempts: u32,
    pub retry_wait: Duration,
    pub max_in_flight: usize,
}

impl DestinationConfig {
    /// Validates `settings` against the destination specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&destination_params(), settings)?;
        let c = Config::new(&resolved);
        Ok(DestinationConfig {
            connect: connect_config(&c)?,
            subject: c.required_str(PARAM_SUBJECT)?.to_string(),
            format: parse(&c, PARAM_FORMAT, Format::OpenCdc)?,
            retry_attempts: c
                .u64(PARAM_RETRY_ATTEMPTS)?
                .map_or(3, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            retry_wait: c
                .duration(PARAM_RETRY_WAIT)?
                .unwrap_or(Duration::from_secs(1)),
            max_in_flight: c
                .u64(PARAM_MAX_IN_FLIGHT)?
                .map_or(16384, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        })
    }
}

fn connect_config(c: &Config<'_>) -> Result<ConnectConfig, ValidationErrors> {
    let urls: Vec<String> = c
        .required_str(PARAM_URLS)?
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(violation(PARAM_URLS, "holds no URL"));
    }
    Ok(ConnectConfig {
        urls,
        connect_timeout: positive_duration(c, PARAM_CONNECT_TIMEOUT, Duration::from_secs(30))?,
        connection_name: c.str(PARAM_CONNECTION_NAME).unwrap_or("sluice").to_string(),
    })
}

fn positive_duration(
    c: &Config<'_>,
    name: &str,
    default: Duration,
) -> Result<Duration, ValidationErrors> {
    let d = c.duration(name)?.unwrap_or(default);
    if d.is_zero() {
        return Err(violation(name, "must be greater than zero"));
    }
    Ok(d)
}

fn parse<T: FromStr<Err = String>>(
    c: &Config<'_>,
    name: &str,
    default: T,
) -> Result<T, ValidationErrors> {
    match c.str(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e: String| violation(name, &e)),
    }
}

fn violation(name: &str, message: &str) -> ValidationErrors {
    ValidationErrors(vec![Violation {
        parameter: name.to_string(),
        message: message.to_string(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn source_defaults_and_url_lists() {
        let s = settings(&[
            ("urls", " nats://a:4222 , nats://b:4222"),
            ("stream", "ORDERS"),
            ("durable", "sluice-orders"),
        ]);
        let c = SourceConfig::from_settings(&s).expect("valid");
        assert_eq!(c.connect.urls, vec!["nats://a:4222", "nats://b:4222"]);
        assert_eq!(c.deliver_policy, DeliverPolicy::All);
        assert_eq!(c.format, Format::Raw);
        assert!(c.create_consumer && !c.create_stream);
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(c.buffer_size, 1024);
        assert_eq!(c.subject, None);
    }

    #[test]
    fn create_stream_needs_a_subject() {
        let s = settings(&[
            ("urls", "nats://127.0.0.1:4222"),
            ("stream", "S"),
            ("durable", "d"),
            ("createStream", "true"),
        ]);
        let err = SourceConfig::from_settings(&s).expect_err("no subject");
        assert!(err.to_string().contains("\"subject\""), "{err}");
    }

    #[test]
    fn destination_defaults_and_bad_values() {
        let s = settings(&[("urls", "nats://127.0.0.1:4222"), ("subject", "out")]);
        let c = DestinationConfig::from_settings(&s).expect("valid");
        assert_eq!(c.format, Format::OpenCdc);
        assert_eq!(c.retry_attempts, 3);
        let s = settings(&[
            ("urls", "nats://127.0.0.1:4222"),
            ("subject", "out.*"),
            ("format", "xml"),
        ]);
        let err = DestinationConfig::from_settings(&s).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("\"subject\"") && text.contains("\"format\""),
            "{text}"
        );
    }
}
