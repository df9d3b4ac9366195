//! Typed settings of the Redis source and destination, checked against the specification.

use std::str::FromStr;
use std::time::Duration;

use sluice_sdk::spec::{validate_settings, Config, Violation};
use sluice_sdk::{Settings, ValidationErrors};

use super::{
    destination_params, source_params, PARAM_CONNECT_TIMEOUT, PARAM_CONSUMER, PARAM_CREATE_GROUP,
    PARAM_DATABASE, PARAM_FIELD, PARAM_FORMAT, PARAM_GROUP, PARAM_HOST, PARAM_KEY, PARAM_MAX_LEN,
    PARAM_PASSWORD, PARAM_PORT, PARAM_RETRY_ATTEMPTS, PARAM_RETRY_WAIT, PARAM_START_FROM,
    PARAM_URL, PARAM_USERNAME,
};

/// How a record maps to a stream entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The entry's fields are the (structured) payload.
    Fields,
    /// One field holds the raw payload.
    Raw,
    /// One field holds the record as OpenCDC JSON.
    OpenCdc,
}

impl Format {
    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Fields => "fields",
            Format::Raw => "raw",
            Format::OpenCdc => "opencdc",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fields" => Ok(Format::Fields),
            "raw" => Ok(Format::Raw),
            "opencdc" => Ok(Format::OpenCdc),
            other => Err(format!(
                "unknown format {other:?} (expected fields, raw or opencdc)"
            )),
        }
    }
}

/// Where a newly created consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Every entry in the stream (`0`).
    All,
    /// Entries added after the group was created (`$`).
    New,
}

impl StartFrom {
    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            StartFrom::All => "all",
            StartFrom::New => "new",
        }
    }

    /// The id `XGROUP CREATE` takes.
    pub(crate) fn group_id(self) -> &'static str {
        match self {
            StartFrom::All => "0",
            StartFrom::New => "$",
        }
    }
}

impl FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(StartFrom::All),
            "new" => Ok(StartFrom::New),
            other => Err(format!("unknown start {other:?} (expected all or new)")),
        }
    }
}

/// How to reach the server and which stream (both sides).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConnectConfig {
    /// The URL, if given (it wins over the separate settings).
    pub url: Option<String>,
    pub host: String,
    pub port: u16,
    pub database: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    /// The stream's key.
    pub key: String,
}

/// The source's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceConfig {
    pub connect: ConnectConfig,
    pub group: String,
    pub consumer: String,
    pub create_group: bool,
    pub start_from: StartFrom,
    pub format: Format,
    pub field: String,
}

impl SourceConfig {
    /// Validates `settings` against the source specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&source_params(), settings)?;
        let c = Config::new(&resolved);
        Ok(SourceConfig {
            connect: connect_config(&c)?,
            group: c.str(PARAM_GROUP).unwrap_or("sluice").to_string(),
            consumer: c.str(PARAM_CONSUMER).unwrap_or("sluice").to_string(),
            create_group: c.bool(PARAM_CREATE_GROUP)?.unwrap_or(true),
            start_from: parse(&c, PARAM_START_FROM, StartFrom::All)?,
            format: parse(&c, PARAM_FORMAT, Format::Fields)?,
            field: c.str(PARAM_FIELD).unwrap_or("data").to_string(),
        })
    }
}

/// The destination's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DestinationConfig {
    pub connect: ConnectConfig,
    pub format: Format,
    pub field: String,
    pub max_len: u64,
    pub retry_attempts: u32,
    pub retry_wait: Duration,
}

impl DestinationConfig {
    /// Validates `settings` against the destination specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&destination_params(), settings)?;
        let c = Config::new(&resolved);
        Ok(DestinationConfig {
            connect: connect_config(&c)?,
            format: parse(&c, PARAM_FORMAT, Format::Fields)?,
            field: c.str(PARAM_FIELD).unwrap_or("data").to_string(),
            max_len: c.u64(PARAM_MAX_LEN)?.unwrap_or(0),
            retry_attempts: c
                .u64(PARAM_RETRY_ATTEMPTS)?
                .map_or(3, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            retry_wait: c
                .duration(PARAM_RETRY_WAIT)?
                .unwrap_or(Duration::from_secs(1)),
        })
    }
}

fn connect_config(c: &Config<'_>) -> Result<ConnectConfig, ValidationErrors> {
    let port = c.u64(PARAM_PORT)?.unwrap_or(6379);
    let port = u16::try_from(port).map_err(|_| violation(PARAM_PORT, "must be below 65536"))?;
    let connect_timeout = c
        .duration(PARAM_CONNECT_TIMEOUT)?
        .unwrap_or(Duration::from_secs(30));
    if connect_timeout.is_zero() {
        return Err(violation(
            PARAM_CONNECT_TIMEOUT,
            "must be greater than zero",
        ));
    }
    Ok(ConnectConfig {
        url: c.str(PARAM_URL).map(str::to_string),
        host: c.str(PARAM_HOST).unwrap_or("localhost").to_string(),
        port,
        database: c.i64(PARAM_DATABASE)?.unwrap_or(0),
        username: c.str(PARAM_USERNAME).map(str::to_string),
        password: c.str(PARAM_PASSWORD).map(str::to_string),
        connect_timeout,
        key: c.required_str(PARAM_KEY)?.to_string(),
    })
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

pub(crate) fn violation(name: &str, message: &str) -> ValidationErrors {
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
    fn conduit_settings_and_defaults() {
        let s = settings(&[
            ("redis.key", "events"),
            ("redis.port", "6380"),
            ("mode", "stream"),
        ]);
        let c = SourceConfig::from_settings(&s).expect("valid");
        assert_eq!(c.connect.key, "events");
        assert_eq!(c.connect.port, 6380);
        assert_eq!(c.connect.host, "localhost");
        assert_eq!(
            (c.group.as_str(), c.consumer.as_str()),
            ("sluice", "sluice")
        );
        assert_eq!(c.format, Format::Fields);
        assert_eq!(c.start_from, StartFrom::All);
        let d = DestinationConfig::from_settings(&s).expect("valid");
        assert_eq!(d.max_len, 0);
    }

    #[test]
    fn pubsub_mode_and_bad_values_are_refused_by_name() {
        let s = settings(&[("redis.key", "k"), ("mode", "pubsub"), ("format", "xml")]);
        let text = SourceConfig::from_settings(&s)
            .expect_err("invalid")
            .to_string();
        assert!(
            text.contains("\"mode\"") && text.contains("\"format\""),
            "{text}"
        );
        let s = settings(&[("redis.key", "k"), ("url", "http://x")]);
        let text = DestinationConfig::from_settings(&s)
            .expect_err("invalid")
            .to_string();
        assert!(text.contains("\"url\""), "{text}");
    }
}
