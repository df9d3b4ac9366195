//! The poller: requests a URL every period and turns new items into records.
//!
//! Positions and dedupe:
//! - with `cursor.field`, each item's cursor (a unique, increasing value) is its position
//!   (`c:` + the value's JSON text); items are sorted by cursor and those at or below the last
//!   position are skipped, and `cursor.param` sends the last cursor to the server. Resuming at a
//!   position continues exactly after it.
//! - without, a response is identified by its validator — ETag, else Last-Modified, else a hash of
//!   the body — and an item's position is `v:` + validator + `#` + its index. A response with the
//!   last validator (or a 304 to the conditional request) yields nothing; a new one yields all its
//!   items. Resuming at a position skips the items up to it if the server still answers with the
//!   same validator.

use std::cmp::Ordering as CmpOrdering;
use std::collections::VecDeque;
use std::hash::Hasher;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::Value;
use sluice_sdk::record::{metadata, unix_nanos_now};
use sluice_sdk::{HealthReporter, Position, Record};
use tokio::time::Instant;

use super::body::{decode, BodyFormat};
use super::config::PollConfig;
use super::error::{excerpt, redact, HttpError};
use crate::backoff::{retrying, Backoff};

/// Where the poller is.
#[derive(Debug, Clone, PartialEq)]
enum Mark {
    /// Nothing read yet.
    Start,
    /// The cursor of the last item.
    Cursor(Value),
    /// The validator of the last response and the index of the last item of it.
    Version { validator: String, index: usize },
}

/// A poller. See the [module docs](self).
pub(crate) struct Poller {
    client: reqwest::Client,
    config: PollConfig,
    format: BodyFormat,
    mark: Mark,
    /// Records of the last response not yet handed out.
    pub buffer: VecDeque<Record>,
    /// When the next request is due.
    pub next_poll: Instant,
    /// Pauses after failures.
    failures: u32,
    /// Send If-None-Match / If-Modified-Since. Off until the first answer after a resume: the
    /// items after the resume position are in the version the validator names, and a 304 would
    /// skip them.
    conditional: bool,
    /// Degraded while polls fail, healthy after a success.
    pub health: HealthReporter,
}

/// Why one poll brought nothing.
pub(crate) enum PollError {
    /// Worth retrying later (connection failure, 429, 5xx).
    Transient(String),
    /// A setting is wrong (401, 403, 404, other 4xx, a body that does not fit the format).
    Permanent(HttpError),
}

impl Poller {
    /// A poller resuming after `position` (or from the start).
    pub(crate) fn new(
        config: PollConfig,
        format: BodyFormat,
        position: Option<&Position>,
    ) -> Result<Poller, String> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let mark = match position {
            None => Mark::Start,
            Some(p) => parse_position(p)?,
        };
        Ok(Poller {
            client,
            config,
            format,
            mark,
            buffer: VecDeque::new(),
            next_poll: Instant::now(),
            failures: 0,
            conditional: false,
            health: HealthReporter::default(),
        })
    }

    /// Polls until the first request succeeds, retrying transient failures for `connect.timeout`.
    pub(crate) async fn first_poll(&mut self) -> Result<(), HttpError> {
        let mut backoff = Backoff::new(self.config.connect_timeout);
        loop {
            match self.poll_once().await {
                Ok(()) => {
                    self.health.healthy();
                    return Ok(());
                }
                Err(PollError::Permanent(e)) => return Err(e),
                Err(PollError::Transient(last)) => {
                    tracing::warn!(url = %redact(&self.config.url), error = %last, "http: poll failed, retrying");
                    let reason = format!(
                        "http: {} {}: {last}",
                        self.config.method,
                        redact(&self.config.url)
                    );
                    if !backoff.wait_degraded(&self.health, reason).await {
                        return Err(HttpError::Unreachable {
                            method: self.config.method.to_string(),
                            url: redact(&self.config.url),
                            attempts: format!("for {:?}", self.config.connect_timeout),
                            last,
                        });
                    }
                }
            }
        }
    }

    /// One scheduled poll: on success the next is a period away, on a transient failure a
    /// growing pause (capped at the period) away.
    pub(crate) async fn poll_due(&mut self) -> Result<(), HttpError> {
        match self.poll_once().await {
            Ok(()) => {
                self.health.healthy();
                self.failures = 0;
                self.next_poll = Instant::now() + self.config.period;
                Ok(())
            }
            Err(PollError::Permanent(e)) => Err(e),
            Err(PollError::Transient(e)) => {
                self.failures = self.failures.saturating_add(1);
                let pause = Duration::from_millis(100)
                    .saturating_mul(1 << self.failures.min(8))
                    .min(self.config.period);
                tracing::warn!(url = %redact(&self.config.url), error = %e, "http: poll failed, retrying (degraded)");
                let reason = format!(
                    "http: {} {}: {e}",
                    self.config.method,
                    redact(&self.config.url)
                );
                retrying(&self.health, reason, pause);
                self.next_poll = Instant::now() + pause;
                Ok(())
            }
        }
    }

    /// Sends one request and buffers the new items. Nothing changes unless it succeeds, so a
    /// dropped call loses nothing.
    async fn poll_once(&mut self) -> Result<(), PollError> {
        let mut url = self.config.url.clone();
        if let (Some(param), Mark::Cursor(value)) = (&self.config.cursor_param, &self.mark) {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            url.query_pairs_mut().append_pair(param, &text);
        }
        let mut request = self
            .client
            .request(self.config.method.clone(), url)
            .headers(self.config.headers.clone());
        if let (true, Mark::Version { validator, .. }) = (self.conditional, &self.mark) {
            if let Some(etag) = validator.strip_prefix("etag:") {
                if let Ok(v) = HeaderValue::from_str(etag) {
                    request = request.header(header::IF_NONE_MATCH, v);
                }
            } else if let Some(date) = validator.strip_prefix("modified:") {
                if let Ok(v) = HeaderValue::from_str(date) {
                    request = request.header(header::IF_MODIFIED_SINCE, v);
                }
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| PollError::Transient(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(());
        }
        let validator = validator_of(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| PollError::Transient(e.to_string()))?;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(PollError::Transient(format!(
                "answered {status}: {}",
                excerpt(&body, 200)
            )));
        }
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => " (check the credentials in setting `headers`)",
                404 => " (check setting `url`)",
                _ => "",
            };
            return Err(PollError::Permanent(HttpError::Refused {
                method: self.config.method.to_string(),
                url: redact(&self.config.url),
                status: status.as_u16(),
                hint: hint.into(),
                excerpt: excerpt(&body, 200),
            }));
        }
        let items = decode(self.format, &body, &self.config.items).map_err(|detail| {
            PollError::Permanent(HttpError::Body {
                url: redact(&self.config.url),
                format: match self.format {
                    BodyFormat::Json => "json",
                    BodyFormat::Raw => "raw",
                    BodyFormat::OpenCdc => "opencdc",
                },
                detail,
            })
        })?;
        let fresh = match self.config.cursor_field.clone() {
            Some(field) => self.by_cursor(items, &field)?,
            None => self.by_version(items, validator.unwrap_or_else(|| hash_of(&body))),
        };
        self.buffer.extend(fresh);
        self.conditional = true;
        Ok(())
    }

    fn by_cursor(&mut self, items: Vec<Record>, field: &str) -> Result<Vec<Record>, PollError> {
        let mut keyed = Vec::with_capacity(items.len());
        for (i, record) in items.into_iter().enumerate() {
            let cursor = match &record.payload.after {
                Some(sluice_sdk::Data::Structured(map)) => {
                    let object = Value::Object(map.clone());
                    object.pointer(field).cloned()
                }
                _ => None,
            };
            let Some(cursor) = cursor.filter(|c| !c.is_null()) else {
                return Err(PollError::Permanent(HttpError::Body {
                    url: redact(&self.config.url),
                    format: "json",
                    detail: format!("item {i} has no value at {field:?} (setting `cursor.field`)"),
                }));
            };
            keyed.push((cursor, record));
        }
        keyed.sort_by(|a, b| compare(&a.0, &b.0));
        let mut out = Vec::new();
        for (cursor, mut record) in keyed {
            if let Mark::Cursor(last) = &self.mark {
                if compare(&cursor, last) != CmpOrdering::Greater {
                    continue;
                }
            }
            record.position = Position::new(format!("c:{cursor}").as_bytes());
            stamp(&mut record, &self.config.url);
            self.mark = Mark::Cursor(cursor);
            out.push(record);
        }
        Ok(out)
    }

    fn by_version(&mut self, items: Vec<Record>, validator: String) -> Vec<Record> {
        let skip = match &self.mark {
            Mark::Version {
                validator: v,
                index,
            } if *v == validator => index + 1,
            _ => 0,
        };
        let mut out = Vec::new();
        for (index, mut record) in items.into_iter().enumerate().skip(skip) {
            record.position = Position::new(format!("v:{validator}#{index}").as_bytes());
            stamp(&mut record, &self.config.url);
            out.push(record);
            self.mark = Mark::Version {
                validator: validator.clone(),
                index,
            };
        }
        if out.is_empty() && skip == 0 {
            // A new, empty version: remember it so the same empty answer is not re-read.
            self.mark = Mark::Version {
                validator,
                index: usize::MAX - 1,
            };
        }
        out
    }
}

fn stamp(record: &mut Record, url: &reqwest::Url) {
    record
        .metadata
        .entry(metadata::COLLECTION.into())
        .or_insert_with(|| url.path().to_string());
    record
        .metadata
        .insert(metadata::READ_AT.into(), unix_nanos_now().to_string());
}

/// Numbers compare as numbers, anything else by its text.
fn compare(a: &Value, b: &Value) -> CmpOrdering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(CmpOrdering::Equal),
        _ => text(a).cmp(&text(b)),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn validator_of(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        return Some(format!("etag:{etag}"));
    }
    headers
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .map(|d| format!("modified:{d}"))
}

fn hash_of(body: &Bytes) -> String {
    // FNV-1a: stable across runs and platforms (std's default hasher is randomly seeded).
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(body);
    format!("hash:{:016x}", h.finish())
}

fn parse_position(p: &Position) -> Result<Mark, String> {
    let text = std::str::from_utf8(p.as_bytes()).map_err(|_| "not UTF-8".to_string())?;
    if let Some(cursor) = text.strip_prefix("c:") {
        let value: Value =
            serde_json::from_str(cursor).map_err(|e| format!("bad cursor {cursor:?}: {e}"))?;
        return Ok(Mark::Cursor(value));
    }
    if let Some(rest) = text.strip_prefix("v:") {
        if let Some((validator, index)) = rest.rsplit_once('#') {
            let index = index.parse().map_err(|_| format!("bad index {index:?}"))?;
            return Ok(Mark::Version {
                validator: validator.to_string(),
                index,
            });
        }
    }
    Err("an http poll position starts with c: (a cursor) or v: (a version and index)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        assert_eq!(
            parse_position(&Position::new(b"c:42")),
            Ok(Mark::Cursor(Value::from(42)))
        );
        assert_eq!(
            parse_position(&Position::new(b"c:\"2024-01-01T00:00:00Z\"")),
            Ok(Mark::Cursor(Value::from("2024-01-01T00:00:00Z")))
        );
        assert_eq!(
            parse_position(&Position::new(b"v:etag:\"abc#1\"#3")),
            Ok(Mark::Version {
                validator: "etag:\"abc#1\"".into(),
                index: 3
            })
        );
        assert!(parse_position(&Position::new(b"17")).is_err());
    }

    #[test]
    fn cursors_compare_numbers_as_numbers() {
        assert_eq!(
            compare(&Value::from(9), &Value::from(10)),
            CmpOrdering::Less
        );
        assert_eq!(
            compare(&Value::from("2024-02"), &Value::from("2024-10")),
            CmpOrdering::Less
        );
        assert_ne!(
            hash_of(&Bytes::from_static(b"a")),
            hash_of(&Bytes::from_static(b"b"))
        );
    }
}
