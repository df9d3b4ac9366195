//! Requests to script arguments and script replies to items: the checks that need no round trip
//! (empty key, malformed ETag, unusable TTL) happen here, before anything is sent.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use redis::Value;

use super::errors::{unexpected, BACKEND};
use crate::error::StateError;
use crate::etag;
use crate::store::{Concurrency, Item, SetRequest};
use crate::ttl;

/// The expected version as the scripts compare it: `""` for none (no ETag or an empty one),
/// else the ETag parsed and re-printed, so `"007"` matches version `7`.
pub(crate) fn etag_arg(key: &str, etag: Option<&str>) -> Result<String, StateError> {
    match etag.filter(|e| !e.is_empty()) {
        Some(e) => Ok(etag::parse(key, e)?.to_string()),
        None => Ok(String::new()),
    }
}

/// The TTL in whole milliseconds, rounded up (so a TTL never ends early), or `""` for none. Like
/// the other backends, a TTL reaching past the end of year 9999 ends there.
pub(crate) fn ttl_arg(ttl: Option<Duration>) -> String {
    match ttl {
        None => String::new(),
        Some(d) => {
            let now = SystemTime::now();
            let latest = ttl::MAX_EXPIRY_MILLIS.saturating_sub(ttl::to_unix_millis(now));
            let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            ms.min(latest).to_string()
        }
    }
}

/// `"1"` for first-write, `""` for last-write.
pub(crate) fn first_write_arg(c: Concurrency) -> &'static str {
    match c {
        Concurrency::FirstWrite => "1",
        Concurrency::LastWrite => "",
    }
}

/// A set request checked and turned into the arguments of the set script.
pub(crate) struct SetArgs {
    /// The expected version, `""` for none.
    pub etag: String,
    /// `"1"` for first-write.
    pub first_write: &'static str,
    /// The TTL in milliseconds, `""` for none.
    pub ttl: String,
}

impl SetArgs {
    /// Checks `req` and prepares its script arguments.
    pub(crate) fn new(req: &SetRequest) -> Result<Self, StateError> {
        etag::check_key(&req.key)?;
        Ok(SetArgs {
            etag: etag_arg(&req.key, req.etag.as_deref())?,
            first_write: first_write_arg(req.concurrency),
            ttl: ttl_arg(req.ttl),
        })
    }
}

/// The set script's reply: the new ETag, or a mismatch for `key`.
pub(crate) fn set_reply(key: &str, reply: Value) -> Result<String, StateError> {
    match reply {
        Value::Int(v) if v > 0 => Ok(v.to_string()),
        Value::Int(super::scripts::CHECK_FAILED) => Err(StateError::EtagMismatch {
            key: key.to_string(),
        }),
        other => Err(unexpected("set", other)),
    }
}

/// The conditional delete script's reply.
pub(crate) fn delete_reply(key: &str, reply: Value) -> Result<(), StateError> {
    match reply {
        Value::Int(1) => Ok(()),
        Value::Int(super::scripts::CHECK_FAILED) => Err(StateError::EtagMismatch {
            key: key.to_string(),
        }),
        other => Err(unexpected("delete", other)),
    }
}

/// The reply to an `HMGET` of an item's [`FIELDS`](super::scripts::FIELDS): `None` for a
/// missing (or expired) key, else the item.
pub(crate) fn item_reply(reply: Value) -> Result<Option<Item>, StateError> {
    let fields = match reply {
        Value::Array(fields) if fields.len() == 3 => fields,
        other => return Err(unexpected("get", other)),
    };
    let mut fields = fields.into_iter();
    let (Some(data), Some(version), Some(expires)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(StateError::backend(BACKEND, "get: a reply lost its fields"));
    };
    let etag = match version {
        Value::Nil => return Ok(None),
        Value::BulkString(b) => {
            String::from_utf8(b).map_err(|e| unexpected("get (version)", e.into_bytes()))?
        }
        other => return Err(unexpected("get (version)", other)),
    };
    let value = match data {
        Value::BulkString(b) => Bytes::from(b),
        Value::Nil => {
            return Err(StateError::backend(
                BACKEND,
                "get: the item has a version but no `data` field (written by something else?)",
            ))
        }
        other => return Err(unexpected("get (data)", other)),
    };
    let expires_at = match expires {
        Value::Nil => None,
        Value::BulkString(b) if b.is_empty() => None,
        Value::BulkString(b) => {
            let millis = std::str::from_utf8(&b)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| unexpected("get (expires)", &b))?;
            Some(ttl::from_unix_millis(millis))
        }
        other => return Err(unexpected("get (expires)", other)),
    };
    Ok(Some(Item {
        value,
        etag,
        expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_normalised_and_malformed_ones_rejected() {
        assert_eq!(etag_arg("k", None).unwrap(), "");
        assert_eq!(etag_arg("k", Some("")).unwrap(), "");
        assert_eq!(etag_arg("k", Some("007")).unwrap(), "7");
        assert!(matches!(
            etag_arg("k", Some("W/\"x\"")),
            Err(StateError::EtagInvalid { key, etag }) if key == "k" && etag == "W/\"x\""
        ));
        assert!(matches!(
            etag_arg("k", Some("-1")),
            Err(StateError::EtagInvalid { .. })
        ));
    }

    #[test]
    fn ttls_round_up_to_whole_milliseconds_and_end_by_year_9999() {
        assert_eq!(ttl_arg(None), "");
        assert_eq!(ttl_arg(Some(Duration::ZERO)), "0");
        assert_eq!(ttl_arg(Some(Duration::from_secs(2))), "2000");
        assert_eq!(ttl_arg(Some(Duration::from_micros(1))), "1");
        assert_eq!(ttl_arg(Some(Duration::from_micros(1500))), "2");
        let before = ttl::to_unix_millis(SystemTime::now());
        let capped: u64 = ttl_arg(Some(Duration::MAX)).parse().unwrap();
        let after = ttl::to_unix_millis(SystemTime::now());
        assert!(capped <= ttl::MAX_EXPIRY_MILLIS - before);
        assert!(capped >= ttl::MAX_EXPIRY_MILLIS - after);
    }

    #[test]
    fn replies_decode_to_items_and_errors() {
        let missing = Value::Array(vec![Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(item_reply(missing).unwrap(), None);
        let item = item_reply(Value::Array(vec![
            Value::BulkString(vec![0, 255]),
            Value::BulkString(b"42".to_vec()),
            Value::BulkString(Vec::new()),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(item.value.as_ref(), &[0, 255]);
        assert_eq!(item.etag, "42");
        assert_eq!(item.expires_at, None);

        let item = item_reply(Value::Array(vec![
            Value::BulkString(vec![]),
            Value::BulkString(b"1".to_vec()),
            Value::BulkString(b"1709211909000".to_vec()),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            item.expires_at,
            Some(ttl::from_unix_millis(1_709_211_909_000))
        );

        assert!(item_reply(Value::Nil).is_err());
        let no_data = Value::Array(vec![
            Value::Nil,
            Value::BulkString(b"1".to_vec()),
            Value::Nil,
        ]);
        assert!(item_reply(no_data).is_err());
        let bad_expiry = Value::Array(vec![
            Value::BulkString(vec![]),
            Value::BulkString(b"1".to_vec()),
            Value::BulkString(b"soon".to_vec()),
        ]);
        assert!(item_reply(bad_expiry).is_err());
        assert!(matches!(
            set_reply("k", Value::Int(0)),
            Err(StateError::EtagMismatch { key }) if key == "k"
        ));
        assert_eq!(set_reply("k", Value::Int(9)).unwrap(), "9");
        assert!(delete_reply("k", Value::Int(1)).is_ok());
        assert!(delete_reply("k", Value::Okay).is_err());
    }
}
