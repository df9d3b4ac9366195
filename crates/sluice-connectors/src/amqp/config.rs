//! Typed settings of the AMQP source and destination, checked against the specification.

use std::time::Duration;

use lapin::uri::AMQPUri;
use sluice_sdk::spec::{validate_settings, Config, Violation};
use sluice_sdk::{Settings, ValidationErrors};

use super::{destination_params, param, source_params, DEFAULT_PREFETCH};

pub use crate::body_format::Format;

/// Where the broker is and how to talk to it (both sides).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The URI as configured (contains the password: never print it, use [`Endpoint::display`]).
    pub url: String,
    /// `host:port/vhost`, safe to print.
    pub display: String,
    /// How long `open` retries.
    pub connect_timeout: Duration,
    /// How long a lost connection is retried.
    pub reconnect_timeout: Duration,
}

/// Queue and exchange topology (both sides).
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The queue.
    pub queue: String,
    /// Declare what is missing.
    pub declare: bool,
    /// Declare the queue durable.
    pub queue_durable: bool,
    /// The exchange; empty for the default exchange.
    pub exchange: String,
    /// Exchange type when declared.
    pub exchange_type: String,
    /// Declare the exchange durable.
    pub exchange_durable: bool,
    /// Routing (or binding) key.
    pub routing_key: String,
}

/// The source's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// The broker.
    pub endpoint: Endpoint,
    /// The queue and its binding.
    pub topology: Topology,
    /// basic.qos prefetch count.
    pub prefetch: u16,
    /// Body format.
    pub format: Format,
}

/// The destination's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    /// The broker.
    pub endpoint: Endpoint,
    /// Where messages go.
    pub topology: Topology,
    /// Body format.
    pub format: Format,
    /// Content type property of every message.
    pub content_type: String,
    /// Delivery mode 2.
    pub persistent: bool,
    /// Mandatory flag.
    pub mandatory: bool,
}

impl SourceConfig {
    /// Validates `settings` against the source specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&source_params(), settings)?;
        let c = Config::new(&resolved);
        let prefetch = c
            .u64(param::PREFETCH_COUNT)?
            .unwrap_or(DEFAULT_PREFETCH.into());
        Ok(SourceConfig {
            endpoint: endpoint(&c)?,
            topology: topology(&c)?,
            prefetch: u16::try_from(prefetch)
                .map_err(|_| violation(param::PREFETCH_COUNT, "must be at most 65535"))?,
            format: format(&c)?,
        })
    }
}

impl DestinationConfig {
    /// Validates `settings` against the destination specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&destination_params(), settings)?;
        let c = Config::new(&resolved);
        let format = format(&c)?;
        let content_type = match c.str(param::CONTENT_TYPE) {
            Some(t) => t.to_string(),
            None if format == Format::OpenCdc => "application/json".into(),
            None => "application/octet-stream".into(),
        };
        Ok(DestinationConfig {
            endpoint: endpoint(&c)?,
            topology: topology(&c)?,
            format,
            content_type,
            persistent: c.bool(param::PERSISTENT)?.unwrap_or(true),
            mandatory: c.bool(param::MANDATORY)?.unwrap_or(true),
        })
    }
}

fn endpoint(c: &Config<'_>) -> Result<Endpoint, ValidationErrors> {
    let url = c.required_str(param::URL)?;
    let parsed: AMQPUri = url
        .parse()
        .map_err(|e: String| violation(param::URL, &format!("not an AMQP URI: {e}")))?;
    let display = format!(
        "{}:{}/{}",
        parsed.authority.host, parsed.authority.port, parsed.vhost
    );
    let positive = |name: &str, default: Duration| -> Result<Duration, ValidationErrors> {
        match c.duration(name)? {
            None => Ok(default),
            Some(d) if d.is_zero() => Err(violation(name, "must be greater than zero")),
            Some(d) => Ok(d),
        }
    };
    Ok(Endpoint {
        url: url.to_string(),
        display,
        connect_timeout: positive(param::CONNECT_TIMEOUT, Duration::from_secs(30))?,
        reconnect_timeout: positive(param::RECONNECT_TIMEOUT, Duration::from_secs(300))?,
    })
}

fn topology(c: &Config<'_>) -> Result<Topology, ValidationErrors> {
    let queue = c.required_str(param::QUEUE_NAME)?.to_string();
    let routing_key = c.str(param::ROUTING_KEY).unwrap_or(&queue).to_string();
    Ok(Topology {
        declare: c.bool(param::QUEUE_DECLARE)?.unwrap_or(true),
        queue_durable: c.bool(param::QUEUE_DURABLE)?.unwrap_or(true),
        exchange: c.str(param::EXCHANGE_NAME).unwrap_or("").to_string(),
        exchange_type: c.str(param::EXCHANGE_TYPE).unwrap_or("direct").to_string(),
        exchange_durable: c.bool(param::EXCHANGE_DURABLE)?.unwrap_or(true),
        routing_key,
        queue,
    })
}

fn format(c: &Config<'_>) -> Result<Format, ValidationErrors> {
    match c.str(param::FORMAT) {
        None => Ok(Format::Raw),
        Some(v) => v.parse().map_err(|e: String| violation(param::FORMAT, &e)),
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
    fn conduit_settings_get_defaults() {
        let s = settings(&[
            ("url", "amqp://guest:secret@127.0.0.1:5672/%2f"),
            ("queueName", "orders"),
        ]);
        let c = SourceConfig::from_settings(&s).expect("valid");
        assert_eq!(c.endpoint.display, "127.0.0.1:5672//");
        assert!(!c.endpoint.display.contains("secret"));
        assert_eq!(c.topology.routing_key, "orders");
        assert!(c.topology.declare && c.topology.queue_durable);
        assert_eq!(c.prefetch, DEFAULT_PREFETCH);
        assert_eq!(c.endpoint.connect_timeout, Duration::from_secs(30));
        let d = DestinationConfig::from_settings(&s).expect("valid");
        assert_eq!(d.content_type, "application/octet-stream");
        assert!(d.persistent && d.mandatory);
        assert_eq!(d.format, Format::Raw);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let s = settings(&[("url", "amqp://h:99999999/x"), ("queueName", "q")]);
        let err = SourceConfig::from_settings(&s).expect_err("bad port");
        assert!(err.to_string().contains("\"url\""), "{err}");
        let s = settings(&[
            ("url", "http://h/"),
            ("queueName", "q"),
            ("prefetchCount", "0"),
            ("format", "xml"),
        ]);
        let err = SourceConfig::from_settings(&s).expect_err("invalid");
        for name in ["url", "prefetchCount", "format"] {
            assert!(err.to_string().contains(&format!("\"{name}\"")), "{err}");
        }
    }
}
