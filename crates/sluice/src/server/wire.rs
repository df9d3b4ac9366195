//! The JSON shapes of Dapr's state HTTP API and their translation to store requests.
//!
//! Lenient where Dapr is (unknown fields are ignored, an empty `concurrency` or `consistency` means
//! the default, metadata values may be numbers or booleans), strict where a mistake would
//! otherwise pass silently (an unknown concurrency, a TTL that is not a whole number of seconds, a
//! missing `value`).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use sluice_state::{
    Concurrency, Consistency, DeleteRequest, Item, RetryPattern, RetryPolicy, SetRequest,
};

use super::errors::ApiError;

/// Prefix of request metadata in URL query parameters (`?metadata.ttlInSeconds=60`).
pub const METADATA_PREFIX: &str = "metadata.";
/// Metadata key of a write's time to live.
pub const TTL_IN_SECONDS: &str = "ttlInSeconds";
/// Metadata key (and, with [`METADATA_PREFIX`], response header) of an item's expiry time.
pub const TTL_EXPIRE_TIME: &str = "ttlExpireTime";
/// Most attempts a request's own retry policy may ask for.
pub const MAX_REQUEST_RETRY_THRESHOLD: u32 = 10;
/// Longest retry interval a request's own retry policy may ask for.
pub const MAX_REQUEST_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Request metadata: `metadata` objects of the body merged with `metadata.*` URL parameters.
pub type Metadata = BTreeMap<String, String>;

/// A metadata value as sent: Dapr's are strings; numbers and booleans are taken as their text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MetaValue {
    /// A string.
    Text(String),
    /// A number.
    Number(serde_json::Number),
    /// A boolean.
    Bool(bool),
}

impl MetaValue {
    fn into_text(self) -> String {
        match self {
            MetaValue::Text(s) => s,
            MetaValue::Number(n) => n.to_string(),
            MetaValue::Bool(b) => b.to_string(),
        }
    }
}

/// `options` of a write (Dapr's `StateOptions`, with the pre-1.0 `retryPolicy`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionsDoc {
    /// `first-write` or `last-write` (the default).
    #[serde(default)]
    pub concurrency: Option<String>,
    /// `eventual` (the default) or `strong`.
    #[serde(default)]
    pub consistency: Option<String>,
    /// How transient backend errors are retried for this request.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicyDoc>,
}

/// Dapr's pre-1.0 retry policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicyDoc {
    /// A duration (`"100ms"`) or, as Go encodes a `time.Duration`, a number of nanoseconds.
    #[serde(default)]
    pub interval: Option<Value>,
    /// Most attempts in all.
    #[serde(default)]
    pub threshold: Option<i64>,
    /// `linear` or `exponential`.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// One item of a save request, and the `request` of a transaction operation.
#[derive(Debug, Clone, Deserialize)]
pub struct ItemDoc {
    /// The key.
    pub key: String,
    /// The value: any JSON value; `None` when absent (distinct from `null`).
    #[serde(default, deserialize_with = "present")]
    pub value: Option<Value>,
    /// The ETag the stored item must have.
    #[serde(default)]
    pub etag: Option<String>,
    /// Per-item metadata (`ttlInSeconds`).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, MetaValue>>,
    /// Concurrency, consistency, retry policy.
    #[serde(default)]
    pub options: Option<OptionsDoc>,
}

/// Deserializes a field that is present (possibly `null`) as `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Body of `POST /v1.0/state/{store}/bulk`.
#[derive(Debug, Deserialize)]
pub struct BulkGetDoc {
    /// The keys to read.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Dapr's read parallelism; accepted, and checked to be positive, but the store reads the
    /// keys in one call.
    #[serde(default)]
    pub parallelism: Option<i64>,
    /// Request metadata.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, MetaValue>>,
}

/// Body of `POST /v1.0/state/{store}/transaction`.
#[derive(Debug, Deserialize)]
pub struct TransactionDoc {
    /// The operations, applied in order.
    #[serde(default)]
    pub operations: Vec<OperationDoc>,
    /// Metadata for every operation (an operation's own wins).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, MetaValue>>,
}

/// One operation of a transaction.
#[derive(Debug, Deserialize)]
pub struct OperationDoc {
    /// `upsert` or `delete`.
    pub operation: String,
    /// The key, value, ETag and options.
    pub request: ItemDoc,
}

/// One item of a bulk get answer.
#[derive(Debug, Serialize)]
pub struct BulkItem {
    /// The key.
    pub key: String,
    /// The value, absent for a missing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// The ETag, absent for a missing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `ttlExpireTime` for items with a TTL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Why this key could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One result of a query.
#[derive(Debug, Serialize)]
pub struct QueryItem {
    /// The key.
    pub key: String,
    /// The value.
    pub data: Box<RawValue>,
    /// The ETag.
    pub etag: String,
}

/// The answer to a query.
#[derive(Debug, Serialize)]
pub struct QueryAnswer {
    /// The page of results.
    pub results: Vec<QueryItem>,
    /// Token for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Parses a JSON body, turning any mistake into a 400 that says where.
pub fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::malformed(format!("invalid {what}: {e}")))
}

/// The `metadata.*` URL parameters.
pub fn url_metadata(params: &[(String, String)]) -> Metadata {
    params
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(METADATA_PREFIX)
                .filter(|k| !k.is_empty())
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect()
}

/// The last value of URL parameter `name`, if given.
pub fn url_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Body metadata under `outer` (URL metadata, which wins, as in Dapr).
pub fn merge_metadata(body: Option<BTreeMap<String, MetaValue>>, outer: &Metadata) -> Metadata {
    let mut m: Metadata = body
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_text()))
        .collect();
    for (k, v) in outer {
        m.insert(k.clone(), v.clone());
    }
    m
}

/// Parses `concurrency`; empty or absent is last-write.
pub fn concurrency(s: Option<&str>) -> Result<Concurrency, ApiError> {
    match s.map(str::trim).unwrap_or("") {
        "" | "last-write" => Ok(Concurrency::LastWrite),
        "first-write" => Ok(Concurrency::FirstWrite),
        other => Err(ApiError::malformed(format!(
            "unknown concurrency {other:?}: expected \"first-write\" or \"last-write\""
        ))),
    }
}

/// Parses `consistency`; empty or absent is eventual.
pub fn consistency(s: Option<&str>) -> Result<Consistency, ApiError> {
    match s.map(str::trim).unwrap_or("") {
        "" | "eventual" => Ok(Consistency::Eventual),
        "strong" => Ok(Consistency::Strong),
        other => Err(ApiError::malformed(format!(
            "unknown consistency {other:?}: expected \"eventual\" or \"strong\""
        ))),
    }
}

/// The TTL of a write from its metadata: `None` for none (absent, or `-1`).
pub fn ttl(key: &str, metadata: &Metadata) -> Result<Option<Duration>, ApiError> {
    match metadata.get(TTL_IN_SECONDS) {
        None => Ok(None),
        Some(text) => parse_ttl(text).map_err(|e| e.context(format!("key {key:?}"))),
    }
}

/// Parses `ttlInSeconds`.
fn parse_ttl(text: &str) -> Result<Option<Duration>, ApiError> {
    sluice_state::ttl::parse_ttl_seconds(text)
        .map_err(|e| ApiError::from_state(super::errors::Operation::Save, &e))
}

/// A value's stored form: its JSON text, checked against the size limit.
pub fn encode_value(key: &str, value: &Value, limit: usize) -> Result<Bytes, ApiError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| ApiError::malformed(format!("the value of key {key:?}: {e}")))?;
    if bytes.len() > limit {
        return Err(ApiError::from_state(
            super::errors::Operation::Save,
            &sluice_state::StateError::ValueTooLarge {
                key: key.to_string(),
                size: bytes.len(),
                limit,
            },
        )
        .context("http.maxValueBytes"));
    }
    Ok(Bytes::from(bytes))
}

/// A stored value as JSON to embed in an answer: itself if it is JSON (values written over HTTP
/// always are), else a JSON string of its base64 encoding.
pub fn embed_value(value: &[u8]) -> Box<RawValue> {
    let as_json = std::str::from_utf8(value)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_string()).ok());
    match as_json {
        Some(raw) => raw,
        None => {
            let text = base64::engine::general_purpose::STANDARD.encode(value);
            // Serializing a string cannot fail; `null` stands in should it ever.
            serde_json::value::to_raw_value(&text).unwrap_or_else(|_| RawValue::NULL.to_owned())
        }
    }
}

/// An item's expiry as Dapr reports it (RFC 3339, seconds, UTC), if it has a TTL.
pub fn expire_time(item: &Item) -> Option<String> {
    item.expires_at.map(sluice_state::ttl::format_rfc3339)
}

/// The retry policy a request asks for, bounded so that one request cannot hold the server.
pub fn retry_policy(doc: &RetryPolicyDoc, base: RetryPolicy) -> Result<RetryPolicy, ApiError> {
    let mut r = base;
    if let Some(i) = &doc.interval {
        let interval = match i {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(humantime::parse_duration(s.trim()).map_err(|e| {
                ApiError::malformed(format!(
                    "retryPolicy.interval {s:?} is not a duration such as \"100ms\": {e}"
                ))
            })?),
            Value::Number(n) => match n.as_u64() {
                Some(ns) => Some(Duration::from_nanos(ns)),
                None => {
                    return Err(ApiError::malformed(format!(
                        "retryPolicy.interval {n} is not a whole, non-negative number of \
                         nanoseconds"
                    )))
                }
            },
            Value::Null => None,
            other => {
                return Err(ApiError::malformed(format!(
                    "retryPolicy.interval must be a duration string or a number of nanoseconds, \
                     not {other}"
                )))
            }
        };
        if let Some(interval) = interval {
            if interval > MAX_REQUEST_RETRY_INTERVAL {
                return Err(ApiError::malformed(format!(
                    "retryPolicy.interval is longer than the most allowed, {}",
                    humantime::format_duration(MAX_REQUEST_RETRY_INTERVAL)
                )));
            }
            r.interval = interval;
        }
    }
    if let Some(t) = doc.threshold {
        match u32::try_from(t) {
            Ok(0) => {}
            Ok(t) if t <= MAX_REQUEST_RETRY_THRESHOLD => r.threshold = t,
            _ => {
                return Err(ApiError::malformed(format!(
                    "retryPolicy.threshold must be between 1 and {MAX_REQUEST_RETRY_THRESHOLD}, \
                     not {t}"
                )))
            }
        }
    }
    match doc.pattern.as_deref().map(str::trim).unwrap_or("") {
        "" => {}
        "linear" => r.pattern = RetryPattern::Linear,
        "exponential" => r.pattern = RetryPattern::Exponential,
        other => {
            return Err(ApiError::malformed(format!(
                "unknown retryPolicy.pattern {other:?}: expected \"linear\" or \"exponential\""
            )))
        }
    }
    Ok(r)
}

/// A checked write: the store request and the retry policy it asked for, if any.
#[derive(Debug, Clone)]
pub struct Write {
    /// The store request.
    pub request: SetRequest,
    /// The request's own retry policy.
    pub retry: Option<RetryPolicy>,
}

/// Checks a key given in a body or path.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        Err(ApiError::malformed("the key must not be empty"))
    } else {
        Ok(())
    }
}

/// An ETag as given: empty counts as none.
fn etag(e: Option<String>) -> Option<String> {
    e.filter(|e| !e.is_empty())
}

/// Turns an item of a save (or an upsert of a transaction) into a store write. Its metadata is
/// `defaults`, then the item's own, then `overrides` (a save's URL metadata, which wins in Dapr).
pub fn write(
    item: ItemDoc,
    defaults: &Metadata,
    overrides: &Metadata,
    limit: usize,
    base_retry: RetryPolicy,
) -> Result<Write, ApiError> {
    check_key(&item.key)?;
    let key = item.key;
    let value = item
        .value
        .ok_or_else(|| ApiError::malformed(format!("the item with key {key:?} has no `value`")))?;
    let value = encode_value(&key, &value, limit)?;
    let mut metadata = defaults.clone();
    metadata.extend(merge_metadata(item.metadata, overrides));
    let ttl = ttl(&key, &metadata)?;
    let options = item.options.unwrap_or_default();
    let concurrency = concurrency(options.concurrency.as_deref())?;
    let consistency = consistency(options.consistency.as_deref())?;
    let retry = options
        .retry_policy
        .as_ref()
        .map(|p| retry_policy(p, base_retry))
        .transpose()?;
    let mut request = SetRequest::new(key, value).with_concurrency(concurrency);
    request.etag = etag(item.etag);
    request.ttl = ttl;
    request.consistency = consistency;
    Ok(Write { request, retry })
}

/// Turns the `request` of a transaction's delete into a store delete.
pub fn delete(item: ItemDoc) -> Result<(DeleteRequest, Option<RetryPolicyDoc>), ApiError> {
    check_key(&item.key)?;
    let options = item.options.unwrap_or_default();
    concurrency(options.concurrency.as_deref())?;
    let mut request = DeleteRequest::new(item.key);
    request.etag = etag(item.etag);
    request.consistency = consistency(options.consistency.as_deref())?;
    Ok((request, options.retry_policy))
}

/// An `If-Match` value as an ETag: surrounding quotes (as HTTP clients send strong ETags) are
/// removed; an empty one counts as none.
pub fn if_match(value: &str) -> Option<String> {
    let v = value.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    Some(v.to_string()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_metadata_takes_only_prefixed_parameters() {
        let p = vec![
            ("metadata.ttlInSeconds".to_string(), "60".to_string()),
            ("consistency".to_string(), "strong".to_string()),
            ("metadata.".to_string(), "x".to_string()),
        ];
        let m = url_metadata(&p);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("ttlInSeconds").map(String::as_str), Some("60"));
        assert_eq!(url_param(&p, "consistency"), Some("strong"));
    }

    #[test]
    fn url_metadata_wins_over_body_metadata() {
        let body: BTreeMap<String, MetaValue> =
            serde_json::from_str(r#"{"ttlInSeconds": 5, "a": true}"#).expect("metadata");
        let outer: Metadata = [("ttlInSeconds".to_string(), "9".to_string())].into();
        let m = merge_metadata(Some(body), &outer);
        assert_eq!(m.get("ttlInSeconds").map(String::as_str), Some("9"));
        assert_eq!(m.get("a").map(String::as_str), Some("true"));
    }

    #[test]
    fn options_accept_dapr_values_and_reject_others() {
        assert_eq!(concurrency(None).ok(), Some(Concurrency::LastWrite));
        assert_eq!(concurrency(Some("")).ok(), Some(Concurrency::LastWrite));
        assert_eq!(
            concurrency(Some("first-write")).ok(),
            Some(Concurrency::FirstWrite)
        );
        assert!(concurrency(Some("first")).is_err());
        assert_eq!(consistency(Some("strong")).ok(), Some(Consistency::Strong));
        assert!(consistency(Some("linearizable")).is_err());
    }

    #[test]
    fn values_are_stored_as_json_text_and_checked_against_the_limit() {
        let v: Value = serde_json::from_str(r#"{"a": [1, "x"]}"#).expect("json");
        assert_eq!(
            encode_value("k", &v, 100).expect("fits").as_ref(),
            br#"{"a":[1,"x"]}"#
        );
        let s = Value::String("DeathStar".into());
        assert_eq!(
            encode_value("k", &s, 100).expect("fits").as_ref(),
            br#""DeathStar""#
        );
        let e = encode_value("k", &v, 5).expect_err("too large");
        assert_eq!(e.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn stored_json_is_embedded_as_is_and_other_bytes_as_base64() {
        assert_eq!(embed_value(br#"{"a":1}"#).get(), r#"{"a":1}"#);
        assert_eq!(embed_value(b"not json").get(), r#""bm90IGpzb24=""#);
        assert_eq!(embed_value(&[0xff, 0x00]).get(), r#""/wA=""#);
    }

    #[test]
    fn a_missing_value_differs_from_null() {
        let with_null: ItemDoc = serde_json::from_str(r#"{"key":"k","value":null}"#).expect("item");
        assert_eq!(with_null.value, Some(Value::Null));
        let without: ItemDoc = serde_json::from_str(r#"{"key":"k"}"#).expect("item");
        assert_eq!(without.value, None);
        let e = write(
            without,
            &Metadata::new(),
            &Metadata::new(),
            100,
            crate::serve_config::default_retry(),
        )
        .expect_err("no value");
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn retry_policies_are_parsed_and_bounded() {
        let doc: RetryPolicyDoc =
            serde_json::from_str(r#"{"interval":"50ms","threshold":4,"pattern":"linear"}"#)
                .expect("doc");
        let r = retry_policy(&doc, crate::serve_config::default_retry()).expect("valid");
        assert_eq!(r.interval, Duration::from_millis(50));
        assert_eq!(r.threshold, 4);
        assert_eq!(r.pattern, RetryPattern::Linear);
        let go: RetryPolicyDoc = serde_json::from_str(r#"{"interval":2000000}"#).expect("doc");
        assert_eq!(
            retry_policy(&go, crate::serve_config::default_retry())
                .expect("valid")
                .interval,
            Duration::from_millis(2)
        );
        for bad in [
            r#"{"threshold":1000}"#,
            r#"{"interval":"forever"}"#,
            r#"{"interval":"1h"}"#,
            r#"{"pattern":"fibonacci"}"#,
            r#"{"interval":-5}"#,
        ] {
            let doc: RetryPolicyDoc = serde_json::from_str(bad).expect("doc");
            assert!(
                retry_policy(&doc, crate::serve_config::default_retry()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn if_match_strips_quotes_and_ignores_empty() {
        assert_eq!(if_match("\"7\"").as_deref(), Some("7"));
        assert_eq!(if_match("7").as_deref(), Some("7"));
        assert_eq!(if_match(""), None);
        assert_eq!(if_match("\"\""), None);
    }
}
