//! How keys, values and TTLs become SQL parameters.
//!
//! A value is stored byte for byte in `value bytea`. When it is a JSON object it is also stored in
//! `value_json jsonb`, which queries read; the raw text is sent as is (jsonb's binary input is a
//! version byte and the text), so nothing is re-serialized.

use std::error::Error;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::Value;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::error::StateError;
use crate::etag;

/// The longest TTL passed to the server (ten thousand years), so that `now() + ttl` cannot
/// overflow; the server then caps the expiry at [`crate::ttl::MAX_EXPIRY_MILLIS`] (the end of
/// year 9999), as every backend does.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(10_000 * 366 * 24 * 3600);

/// Checks a key: non-empty and free of NUL, which PostgreSQL `text` cannot hold.
pub(crate) fn check_key(key: &str) -> Result<(), StateError> {
    etag::check_key(key)?;
    if key.contains('\0') {
        return Err(StateError::InvalidRequest(format!(
            "key {key:?} contains a NUL character, which the postgres store cannot hold"
        )));
    }
    Ok(())
}

/// A TTL as whole milliseconds for the `expires_at` computation (`None` → no expiry).
pub(crate) fn ttl_millis(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| i64::try_from(t.min(MAX_TTL).as_millis()).unwrap_or(i64::MAX))
}

/// True if `value` is a JSON object that `jsonb` accepts (no string holds `\u0000`, which jsonb
/// rejects), so it is worth storing in `value_json` for queries.
///
/// Validates without building the value; only a value with `\u` escapes is parsed in full, to
/// see whether an escape stands for NUL or half a surrogate pair (both of which jsonb rejects;
/// the parse rejects the second).
pub(crate) fn is_json_object(value: &[u8]) -> bool {
    let starts_like_object = value
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !starts_like_object {
        return false;
    }
    if value.windows(2).any(|w| w == b"\\u") {
        return match serde_json::from_slice::<Value>(value) {
            Ok(v @ Value::Object(_)) => !holds_nul(&v),
            _ => false,
        };
    }
    // Valid JSON that starts with `{` is an object.
    serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok()
}

/// True if any string or object key in `v` contains NUL.
fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The `value_json` parameter: the raw bytes of a value already known to be a JSON object.
#[derive(Debug)]
pub(crate) struct JsonbText<'a>(pub &'a [u8]);

impl JsonbText<'_> {
    /// `Some` for a JSON object (see [`is_json_object`]), `None` (SQL NULL) otherwise.
    pub fn param(value: &[u8], is_object: bool) -> Option<JsonbText<'_>> {
        is_object.then_some(JsonbText(value))
    }
}

impl ToSql for JsonbText<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // jsonb's binary format: version 1, then the JSON text.
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_objects_jsonb_accepts_are_queryable() {
        assert!(is_json_object(br#"{"a":1}"#));
        assert!(is_json_object(b"  \n{\"a\": {\"b\": [1, \"x\"]}}"));
        assert!(is_json_object(b"{}"));
        // The escape of a backslash followed by `u0000` is no NUL.
        assert!(is_json_object(br#"{"a":"\\u0000"}"#));
        assert!(is_json_object(br#"{"a":"\ud83d\ude00 \u00e9"}"#));
        for not in [
            &b"[1,2]"[..],
            b"42",
            b"\"s\"",
            b"{not json",
            b"\xff\x00",
            b"",
            br#"{"a":"\u0000"}"#,
            br#"{"\u0000":1}"#,
            br#"{"a":[{"b":"x\u0000"}]}"#,
            br#"{"a":1} trailing"#,
            br#"{"a":1"#,
            br#"{"a":"\ud800"}"#,
            br#"{"a":"\ude00 lone"}"#,
        ] {
            assert!(!is_json_object(not), "{:?}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn keys_with_nul_are_rejected() {
        assert!(matches!(check_key(""), Err(StateError::EmptyKey)));
        assert!(matches!(
            check_key("a\0b"),
            Err(StateError::InvalidRequest(_))
        ));
        assert!(check_key("a||b ✓").is_ok());
    }

    #[test]
    fn ttls_become_milliseconds_and_are_capped() {
        assert_eq!(ttl_millis(None), None);
        assert_eq!(ttl_millis(Some(Duration::from_millis(1500))), Some(1500));
        assert_eq!(
            ttl_millis(Some(Duration::MAX)),
            Some(MAX_TTL.as_millis() as i64)
        );
    }
}
