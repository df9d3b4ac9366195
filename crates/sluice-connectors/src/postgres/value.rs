//! Converting column values between PostgreSQL's text format and JSON.
//!
//! The source reads every value in text format (pgoutput sends text; the snapshot selects
//! `column::text`) and turns it into JSON by the column's type, so snapshot and change records
//! look the same:
//!
//! | PostgreSQL type | JSON |
//! |---|---|
//! | `boolean` | `true` / `false` |
//! | `smallint`, `integer`, `bigint`, `oid` | number |
//! | `real`, `double precision` | number (`"NaN"`, `"Infinity"`, `"-Infinity"` as strings) |
//! | `numeric` | string (exact: JSON numbers would lose digits in most consumers) |
//! | `json`, `jsonb` | the JSON value itself |
//! | `bytea` | base64 string (as OpenCDC writes raw bytes) |
//! | everything else (text, dates and times in ISO style and UTC, uuid, arrays, ...) | the text |
//!
//! The destination goes the other way: each JSON value becomes text that the server casts to the
//! column's type.

use base64::Engine;
use serde_json::Value as Json;

/// `bool`.
pub const BOOL: u32 = 16;
/// `bytea`.
pub const BYTEA: u32 = 17;
/// `int8`.
pub const INT8: u32 = 20;
/// `int2`.
pub const INT2: u32 = 21;
/// `int4`.
pub const INT4: u32 = 23;
/// `oid`.
pub const OID: u32 = 26;
/// `json`.
pub const JSON: u32 = 114;
/// `float4`.
pub const FLOAT4: u32 = 700;
/// `float8`.
pub const FLOAT8: u32 = 701;
/// `jsonb`.
pub const JSONB: u32 = 3802;

/// The JSON form of a value given in the text format of type `type_oid`.
pub fn text_to_json(type_oid: u32, text: &str) -> Json {
    match type_oid {
        BOOL => match text {
            "t" | "true" => Json::Bool(true),
            "f" | "false" => Json::Bool(false),
            _ => Json::String(text.to_string()),
        },
        INT2 | INT4 | INT8 | OID => text
            .parse::<i64>()
            .map(Json::from)
            .unwrap_or_else(|_| Json::String(text.to_string())),
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(text.to_string())),
        JSON | JSONB => {
            serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_string()))
        }
        BYTEA => match decode_bytea_hex(text) {
            Some(bytes) => Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => Json::String(text.to_string()),
        },
        _ => Json::String(text.to_string()),
    }
}

fn decode_bytea_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the destination needs to know about a column's type to write a JSON value into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// `bytea`: strings are base64 (or `\x` hex).
    Bytea,
    /// `json` or `jsonb`: any JSON value is written as JSON text.
    Json,
    /// An array type: JSON arrays become array literals.
    Array,
    /// Anything else: the value's text.
    Scalar,
}

impl ColumnKind {
    /// The kind of a column from its type OID and `pg_type.typcategory`.
    pub fn of(type_oid: u32, category: &str) -> ColumnKind {
        match type_oid {
            BYTEA => ColumnKind::Bytea,
            JSON | JSONB => ColumnKind::Json,
            _ if category == "A" => ColumnKind::Array,
            _ => ColumnKind::Scalar,
        }
    }
}

/// The text to send for `value` in a column of kind `kind` (`None` for NULL), or why it cannot be
/// written there.
pub fn json_to_text(kind: ColumnKind, value: &Json) -> Result<Option<String>, String> {
    Ok(Some(match (kind, value) {
        (_, Json::Null) => return Ok(None),
        (ColumnKind::Json, v) => v.to_string(),
        (ColumnKind::Bytea, Json::String(s)) => {
            if s.starts_with("\\x") {
                s.clone()
            } else {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("is bytea but the value is not base64: {e}"))?;
                let mut hex = String::with_capacity(2 + bytes.len() * 2);
                hex.push_str("\\x");
                for b in bytes {
                    hex.push_str(&format!("{b:02x}"));
                }
                hex
            }
        }
        (ColumnKind::Array, Json::Array(items)) => array_literal(items),
        (_, Json::String(s)) => s.clone(),
        (_, Json::Bool(b)) => b.to_string(),
        (_, Json::Number(n)) => n.to_string(),
        (_, v @ (Json::Array(_) | Json::Object(_))) => v.to_string(),
    }))
}

/// A PostgreSQL array literal (`{1,"a b",NULL,{2,3}}`) for a JSON array.
fn array_literal(items: &[Json]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Json::Null => out.push_str("NULL"),
            Json::Array(inner) => out.push_str(&array_literal(inner)),
            Json::Bool(b) => out.push_str(if *b { "t" } else { "f" }),
            Json::Number(n) => out.push_str(&n.to_string()),
            Json::String(s) => quote_element(&mut out, s),
            obj @ Json::Object(_) => quote_element(&mut out, &obj.to_string()),
        }
    }
    out.push('}');
    out
}

fn quote_element(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_becomes_typed_json() {
        assert_eq!(text_to_json(BOOL, "t"), json!(true));
        assert_eq!(
            text_to_json(INT8, "-9007199254740993"),
            json!(-9007199254740993i64)
        );
        assert_eq!(text_to_json(FLOAT8, "1.5"), json!(1.5));
        assert_eq!(text_to_json(FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(text_to_json(1700, "12.50"), json!("12.50"));
        assert_eq!(text_to_json(JSONB, "{\"a\": [1]}"), json!({"a": [1]}));
        assert_eq!(text_to_json(BYTEA, "\\x00ff"), json!("AP8="));
        assert_eq!(text_to_json(25, "hello"), json!("hello"));
    }

    #[test]
    fn json_becomes_text_for_the_column() {
        assert_eq!(json_to_text(ColumnKind::Scalar, &json!(null)), Ok(None));
        assert_eq!(
            json_to_text(ColumnKind::Scalar, &json!(12)),
            Ok(Some("12".into()))
        );
        assert_eq!(
            json_to_text(ColumnKind::Json, &json!({"a": 1})),
            Ok(Some("{\"a\":1}".into()))
        );
        assert_eq!(
            json_to_text(ColumnKind::Bytea, &json!("AP8=")),
            Ok(Some("\\x00ff".into()))
        );
        assert!(json_to_text(ColumnKind::Bytea, &json!("not base64!")).is_err());
        assert_eq!(
            json_to_text(ColumnKind::Array, &json!([1, null, "a \"b\"", [true]])),
            Ok(Some("{1,NULL,\"a \\\"b\\\"\",{t}}".into()))
        );
    }

    #[test]
    fn bytea_round_trips() {
        let b64 = text_to_json(BYTEA, "\\x0a0b0c");
        assert_eq!(
            json_to_text(ColumnKind::Bytea, &b64),
            Ok(Some("\\x0a0b0c".into()))
        );
    }
}
