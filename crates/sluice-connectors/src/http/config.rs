//! Typed settings of the HTTP source and destination, checked against the specification.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use sluice_sdk::spec::{validate_settings, Config, Violation};
use sluice_sdk::{Settings, ValidationErrors};

use super::body::BodyFormat;
use super::{destination_params, param, source_params};

/// How the source gets its records.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Request a URL periodically.
    Poll(Box<PollConfig>),
    /// Receive POSTs.
    Webhook(WebhookConfig),
}

/// When a webhook answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResponse {
    /// 202 once the records are queued.
    Received,
    /// 200 once every record of the request was acknowledged.
    Acked,
}

/// Poll mode settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PollConfig {
    /// The URL.
    pub url: reqwest::Url,
    /// GET or POST.
    pub method: Method,
    /// Request headers.
    pub headers: HeaderMap,
    /// Pause between polls.
    pub period: Duration,
    /// JSON pointer to the items ("" for the body).
    pub items: String,
    /// JSON pointer to each item's cursor, if any.
    pub cursor_field: Option<String>,
    /// Query parameter carrying the last cursor, if any.
    pub cursor_param: Option<String>,
    /// How long `open` retries the first poll.
    pub connect_timeout: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

/// Webhook mode settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// Listen address.
    pub address: SocketAddr,
    /// Accepted path.
    pub path: String,
    /// Queue bound in records.
    pub queue_size: usize,
    /// When to answer.
    pub response: WebhookResponse,
    /// Largest body.
    pub max_body_size: usize,
    /// How long `open` retries binding the address.
    pub connect_timeout: Duration,
}

/// The source's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// Body format.
    pub format: BodyFormat,
    /// Poll or webhook.
    pub mode: Mode,
}

/// The destination's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    /// Where to send.
    pub url: reqwest::Url,
    /// POST, PUT or PATCH.
    pub method: Method,
    /// Request headers.
    pub headers: HeaderMap,
    /// `json` or `opencdc`.
    pub format: BodyFormat,
    /// Records per request.
    pub batch_size: usize,
    /// Attempts per request.
    pub max_attempts: u32,
    /// First pause.
    pub initial_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl SourceConfig {
    /// Validates `settings` against the source specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&source_params(), settings)?;
        let c = Config::new(&resolved);
        let format = body_format(&c)?;
        let connect_timeout = positive(&c, param::CONNECT_TIMEOUT, Duration::from_secs(30))?;
        let mode = match c.str(param::MODE).unwrap_or("poll") {
            "webhook" => {
                let address = c.str(param::ADDRESS).unwrap_or("127.0.0.1:8080");
                Mode::Webhook(WebhookConfig {
                    address: address.parse().map_err(|e| {
                        violation(
                            param::ADDRESS,
                            &format!("{address:?} is not host:port: {e}"),
                        )
                    })?,
                    path: c.str(param::PATH).unwrap_or("/").to_string(),
                    queue_size: count(&c, param::QUEUE_SIZE, 10_000)?,
                    response: match c.str(param::RESPONSE) {
                        Some("acked") => WebhookResponse::Acked,
                        _ => WebhookResponse::Received,
                    },
                    max_body_size: count(&c, param::MAX_BODY_SIZE, 16 << 20)?,
                    connect_timeout,
                })
            }
            _ => {
                let url = c
                    .str(param::URL)
                    .ok_or_else(|| violation(param::URL, "is required with mode poll"))?;
                Mode::Poll(Box::new(PollConfig {
                    url: parse_url(url)?,
                    method: if c.str(param::METHOD) == Some("POST") {
                        Method::POST
                    } else {
                        Method::GET
                    },
                    headers: headers(&resolved)?,
                    period: positive(&c, param::POLLING_PERIOD, Duration::from_secs(10))?,
                    items: c.str(param::ITEMS).unwrap_or("").to_string(),
                    cursor_field: c.str(param::CURSOR_FIELD).map(str::to_string),
                    cursor_param: c.str(param::CURSOR_PARAM).map(str::to_string),
                    connect_timeout,
                    request_timeout: positive(&c, param::REQUEST_TIMEOUT, Duration::from_secs(30))?,
                }))
            }
        };
        Ok(SourceConfig { format, mode })
    }
}

impl DestinationConfig {
    /// Validates `settings` against the destination specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&destination_params(), settings)?;
        let c = Config::new(&resolved);
        let max_attempts = c.u64(param::RETRY_MAX_ATTEMPTS)?.unwrap_or(5);
        Ok(DestinationConfig {
            url: parse_url(c.required_str(param::URL)?)?,
            method: match c.str(param::METHOD) {
                Some("PUT") => Method::PUT,
                Some("PATCH") => Method::PATCH,
                _ => Method::POST,
            },
            headers: headers(&resolved)?,
            format: body_format(&c)?,
            batch_size: count(&c, param::BATCH_SIZE, 1000)?,
            max_attempts: u32::try_from(max_attempts)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| violation(param::RETRY_MAX_ATTEMPTS, "must be from 1 to 2^32-1"))?,
            initial_backoff: c
                .duration(param::RETRY_INITIAL_BACKOFF)?
                .unwrap_or(Duration::from_millis(200)),
            max_backoff: c
                .duration(param::RETRY_MAX_BACKOFF)?
                .unwrap_or(Duration::from_secs(10)),
            request_timeout: positive(&c, param::REQUEST_TIMEOUT, Duration::from_secs(30))?,
        })
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, ValidationErrors> {
    reqwest::Url::parse(url).map_err(|e| violation(param::URL, &format!("{url:?}: {e}")))
}

/// Headers from `headers` (`Name: value, Name2: value2`) and every `headers.NAME`.
fn headers(settings: &Settings) -> Result<HeaderMap, ValidationErrors> {
    let mut map = HeaderMap::new();
    let mut add = |setting: &str, name: &str, value: &str| -> Result<(), ValidationErrors> {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| violation(setting, &format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| violation(setting, "a header value holds a forbidden character"))?;
        map.append(name, value);
        Ok(())
    };
    if let Some(list) = settings.get(param::HEADERS).filter(|s| !s.is_empty()) {
        for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, value) = pair.split_once(':').ok_or_else(|| {
                violation(param::HEADERS, &format!("{pair:?} is not `Name: value`"))
            })?;
            add(param::HEADERS, name, value)?;
        }
    }
    for (key, value) in settings {
        if let Some(name) = key.strip_prefix(param::HEADER_PREFIX) {
            add(key, name, value)?;
        }
    }
    Ok(map)
}

fn body_format(c: &Config<'_>) -> Result<BodyFormat, ValidationErrors> {
    match c.str(param::FORMAT) {
        None | Some("json") => Ok(BodyFormat::Json),
        Some("raw") => Ok(BodyFormat::Raw),
        Some("opencdc") => Ok(BodyFormat::OpenCdc),
        Some(other) => Err(violation(
            param::FORMAT,
            &format!("unknown format {other:?}"),
        )),
    }
}

fn positive(c: &Config<'_>, name: &str, default: Duration) -> Result<Duration, ValidationErrors> {
    match c.duration(name)? {
        None => Ok(default),
        Some(d) if d.is_zero() => Err(violation(name, "must be greater than zero")),
        Some(d) => Ok(d),
    }
}

fn count(c: &Config<'_>, name: &str, default: usize) -> Result<usize, ValidationErrors> {
    match c.u64(name)? {
        None => Ok(default),
        Some(0) => Err(violation(name, "must be greater than zero")),
        Some(n) => usize::try_from(n).map_err(|_| violation(name, "is too large")),
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
    fn headers_come_from_both_forms() {
        let s = settings(&[
            ("url", "http://127.0.0.1:9/x"),
            ("headers", "X-One: 1, X-Two:2"),
            ("headers.Authorization", "Bearer a,b"),
        ]);
        let d = DestinationConfig::from_settings(&s).expect("valid");
        assert_eq!(d.headers["x-one"], "1");
        assert_eq!(d.headers["x-two"], "2");
        assert_eq!(d.headers["authorization"], "Bearer a,b");
        assert_eq!(d.method, Method::POST);
        assert_eq!(d.batch_size, 1000);
        let err = DestinationConfig::from_settings(&settings(&[
            ("url", "http://h/"),
            ("headers", "nocolon"),
        ]))
        .expect_err("bad headers");
        assert!(err.to_string().contains("\"headers\""), "{err}");
    }

    #[test]
    fn poll_needs_a_url_and_webhook_an_address() {
        let err = SourceConfig::from_settings(&Settings::new()).expect_err("no url");
        assert!(err.to_string().contains("\"url\""), "{err}");
        let c = SourceConfig::from_settings(&settings(&[("mode", "webhook")])).expect("valid");
        match c.mode {
            Mode::Webhook(w) => {
                assert_eq!(w.address.to_string(), "127.0.0.1:8080");
                assert_eq!(w.response, WebhookResponse::Received);
            }
            other => panic!("{other:?}"),
        }
        let err = SourceConfig::from_settings(&settings(&[("mode", "webhook"), ("address", "x")]))
            .expect_err("bad address");
        assert!(err.to_string().contains("\"address\""), "{err}");
    }
}
