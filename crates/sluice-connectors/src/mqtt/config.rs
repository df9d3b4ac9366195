//! Typed settings of the MQTT source and destination, checked against the specification.

use std::time::Duration;

use sluice_sdk::spec::{validate_settings, Config, Violation};
use sluice_sdk::{Settings, ValidationErrors};

use super::{destination_params, param, source_params};

pub use crate::body_format::Format;

/// The broker and the session (both sides).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Credentials, if any (user, password).
    pub credentials: Option<(String, String)>,
    /// The client id naming the persistent session.
    pub client_id: String,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// How long `open` retries.
    pub connect_timeout: Duration,
    /// How long a lost connection is retried.
    pub reconnect_timeout: Duration,
}

impl Session {
    /// `host:port`, safe to print.
    pub fn display(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The source's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// Broker and session.
    pub session: Session,
    /// Topic filter.
    pub topic: String,
    /// Payload format.
    pub format: Format,
    /// MQTT 5 receive maximum.
    pub receive_maximum: u16,
}

/// The destination's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    /// Broker and session.
    pub session: Session,
    /// Topic.
    pub topic: String,
    /// Payload format.
    pub format: Format,
    /// Retain flag.
    pub retain: bool,
    /// Publishes awaiting PUBACK at most.
    pub inflight: u16,
}

impl SourceConfig {
    /// Validates `settings` against the source specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&source_params(), settings)?;
        let c = Config::new(&resolved);
        let receive_maximum = c.u64(param::RECEIVE_MAXIMUM)?.unwrap_or(1000);
        Ok(SourceConfig {
            session: session(&c)?,
            topic: c.required_str(param::TOPIC)?.to_string(),
            format: format(&c)?,
            receive_maximum: u16::try_from(receive_maximum)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| violation(param::RECEIVE_MAXIMUM, "must be between 1 and 65535"))?,
        })
    }
}

impl DestinationConfig {
    /// Validates `settings` against the destination specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&destination_params(), settings)?;
        let c = Config::new(&resolved);
        let inflight = c.u64(param::INFLIGHT)?.unwrap_or(100);
        Ok(DestinationConfig {
            session: session(&c)?,
            topic: c.required_str(param::TOPIC)?.to_string(),
            format: format(&c)?,
            retain: c.bool(param::RETAIN)?.unwrap_or(false),
            inflight: u16::try_from(inflight)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| violation(param::INFLIGHT, "must be between 1 and 65535"))?,
        })
    }
}

/// A user name and password.
type Credentials = (String, String);

/// Splits `mqtt://[user[:password]@]host[:port][/]` into host, port and credentials.
fn parse_url(url: &str) -> Result<(String, u16, Option<Credentials>), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or("must start with mqtt:// or tcp://")?;
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number from 0 to 65535"))?,
        ),
        _ => (hostport, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host".into());
    }
    let credentials = userinfo.map(|u| match u.split_once(':') {
        Some((user, password)) => (user.to_string(), password.to_string()),
        None => (u.to_string(), String::new()),
    });
    Ok((host.to_string(), port, credentials))
}

fn session(c: &Config<'_>) -> Result<Session, ValidationErrors> {
    let (host, port, mut credentials) =
        parse_url(c.required_str(param::URL)?).map_err(|e| violation(param::URL, &e))?;
    if let Some(user) = c.str(param::USERNAME) {
        credentials = Some((
            user.to_string(),
            c.str(param::PASSWORD).unwrap_or("").into(),
        ));
    } else if let (Some(password), Some((_, p))) = (c.str(param::PASSWORD), credentials.as_mut()) {
        *p = password.to_string();
    }
    let positive = |name: &str, default: Duration| -> Result<Duration, ValidationErrors> {
        match c.duration(name)? {
            None => Ok(default),
            Some(d) if d.is_zero() => Err(violation(name, "must be greater than zero")),
            Some(d) => Ok(d),
        }
    };
    let keep_alive = positive(param::KEEP_ALIVE, Duration::from_secs(30))?;
    if keep_alive < Duration::from_secs(1) {
        return Err(violation(param::KEEP_ALIVE, "must be at least 1s"));
    }
    Ok(Session {
        host,
        port,
        credentials,
        client_id: c.required_str(param::CLIENT_ID)?.to_string(),
        keep_alive,
        connect_timeout: positive(param::CONNECT_TIMEOUT, Duration::from_secs(30))?,
        reconnect_timeout: positive(param::RECONNECT_TIMEOUT, Duration::from_secs(300))?,
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
    fn urls_parse_with_and_without_credentials() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883, None))
        );
        assert_eq!(
            parse_url("tcp://u:p@broker/"),
            Ok(("broker".into(), 1883, Some(("u".into(), "p".into()))))
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://h:70000").is_err());
        assert!(parse_url("mqtt://:1883").is_err());
    }

    #[test]
    fn settings_get_defaults_and_credentials_override() {
        let s = settings(&[
            ("url", "mqtt://a:b@127.0.0.1:1884"),
            ("topic", "sensors/#"),
            ("clientId", "sluice-1"),
            ("password", "secret"),
        ]);
        let c = SourceConfig::from_settings(&s).expect("valid");
        assert_eq!(c.session.display(), "127.0.0.1:1884");
        assert_eq!(c.session.credentials, Some(("a".into(), "secret".into())));
        assert_eq!(c.session.keep_alive, Duration::from_secs(30));
        assert_eq!(c.format, Format::Raw);
        // A destination topic may not hold wildcards.
        let err = DestinationConfig::from_settings(&s).expect_err("wildcard topic");
        assert!(err.to_string().contains("\"topic\""), "{err}");
        let err = SourceConfig::from_settings(&settings(&[("url", "mqtt://h"), ("topic", "t")]))
            .expect_err("no client id");
        assert!(err.to_string().contains("\"clientId\""), "{err}");
    }
}
