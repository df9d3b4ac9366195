//! Request and response bodies: decoding them into records (source) and encoding batches of
//! records (destination).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;
use sluice_sdk::{opencdc, Data, Position, Record};

/// How a body maps to records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFormat {
    /// JSON: an array is one record per element, anything else one record; objects become
    /// structured payloads, strings their text, other values their JSON text.
    #[default]
    Json,
    /// The whole body is one raw payload.
    Raw,
    /// OpenCDC records: one object, an array of them, or JSON lines.
    OpenCdc,
}

impl BodyFormat {
    /// The content type a destination sends.
    pub fn content_type(self) -> &'static str {
        match self {
            BodyFormat::Json => "application/json",
            BodyFormat::Raw => "application/octet-stream",
            BodyFormat::OpenCdc => "application/x-ndjson",
        }
    }
}

/// Decodes `body` into records without positions. `items` is a JSON pointer to the array of
/// items (`json` format only; empty for the whole body). The error says what is wrong.
pub(crate) fn decode(format: BodyFormat, body: &Bytes, items: &str) -> Result<Vec<Record>, String> {
    match format {
        BodyFormat::Raw => Ok(vec![Record::new(
            Position::default(),
            Data::Raw(body.clone()),
        )]),
        BodyFormat::Json => {
            let mut value: Value =
                serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
            if !items.is_empty() {
                value = value
                    .pointer_mut(items)
                    .map(Value::take)
                    .ok_or_else(|| format!("the JSON body has nothing at {items:?}"))?;
            }
            Ok(match value {
                Value::Array(elements) => elements.into_iter().map(record_of).collect(),
                other => vec![record_of(other)],
            })
        }
        BodyFormat::OpenCdc => {
            let text = body.as_ref();
            let trimmed = text.trim_ascii_start();
            if trimmed.first() == Some(&b'[') {
                let elements: Vec<Value> = serde_json::from_slice(trimmed)
                    .map_err(|e| format!("the body is not a JSON array: {e}"))?;
                elements
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
                        opencdc::from_json(&bytes).map_err(|e| format!("element {i}: {e}"))
                    })
                    .collect()
            } else {
                text.split(|b| *b == b'\n')
                    .enumerate()
                    .filter(|(_, line)| !line.trim_ascii().is_empty())
                    .map(|(i, line)| {
                        opencdc::from_json(line).map_err(|e| format!("line {}: {e}", i + 1))
                    })
                    .collect()
            }
        }
    }
}

/// A record whose payload is one JSON value.
fn record_of(value: Value) -> Record {
    let data = match value {
        Value::Object(map) => Data::Structured(map),
        Value::String(s) => Data::Raw(Bytes::from(s.into_bytes())),
        other => Data::Raw(Bytes::from(other.to_string().into_bytes())),
    };
    Record::new(Position::default(), data)
}

/// Appends one payload as a JSON value: structured data as an object; raw data as the JSON it
/// holds, else as a string (its text, or base64 if it is not UTF-8).
pub(crate) fn write_json_payload(data: &Data, out: &mut Vec<u8>) {
    match data {
        Data::Structured(map) => {
            let _ = serde_json::to_writer(&mut *out, map);
        }
        Data::Raw(bytes) => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
                out.extend_from_slice(bytes.trim_ascii());
            } else {
                let text = match std::str::from_utf8(bytes) {
                    Ok(s) => std::borrow::Cow::Borrowed(s),
                    Err(_) => std::borrow::Cow::Owned(B64.encode(bytes)),
                };
                let _ = serde_json::to_writer(&mut *out, &*text);
            }
        }
    }
}

/// Appends one record to a body in `format` (`json`: one array element, with its leading comma
/// when it is not the first; `opencdc`: one line; `raw`: the payload and a newline).
pub(crate) fn write_record(format: BodyFormat, record: &Record, first: bool, out: &mut Vec<u8>) {
    match format {
        BodyFormat::OpenCdc => {
            opencdc::write_json(record, out);
            out.push(b'\n');
        }
        BodyFormat::Raw => {
            if let Some(after) = &record.payload.after {
                match after {
                    Data::Raw(bytes) => out.extend_from_slice(bytes),
                    Data::Structured(map) => {
                        let _ = serde_json::to_writer(&mut *out, map);
                    }
                }
            }
            out.push(b'\n');
        }
        BodyFormat::Json => {
            if !first {
                out.push(b',');
            }
            if let Some(after) = &record.payload.after {
                write_json_payload(after, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Data {
        Data::Raw(Bytes::from(s.to_string()))
    }

    #[test]
    fn json_bodies_round_trip_through_the_destination_encoding() {
        let mut map = serde_json::Map::new();
        map.insert("id".into(), Value::from(7));
        let payloads = [
            Data::Structured(map),
            raw("plain text"),
            raw("{\"already\":\"json\"}"),
            raw("42"),
        ];
        let mut body = vec![b'['];
        for (i, p) in payloads.iter().enumerate() {
            let r = Record::new(Position::default(), p.clone());
            write_record(BodyFormat::Json, &r, i == 0, &mut body);
        }
        body.push(b']');
        let decoded = decode(BodyFormat::Json, &Bytes::from(body), "").expect("json");
        let got: Vec<Bytes> = decoded
            .iter()
            .map(|r| r.payload.after.as_ref().expect("after").to_bytes())
            .collect();
        let want: Vec<Bytes> = payloads.iter().map(Data::to_bytes).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn raw_bodies_are_payloads_and_newlines() {
        let mut body = Vec::new();
        for (i, p) in ["one", "", "two\r"].iter().enumerate() {
            let r = Record::new(Position::default(), raw(p));
            write_record(BodyFormat::Raw, &r, i == 0, &mut body);
        }
        assert_eq!(body, b"one\n\ntwo\r\n");
    }

    #[test]
    fn items_pointer_and_errors() {
        let body = Bytes::from_static(br#"{"data":[{"a":1},{"a":2}],"next":null}"#);
        assert_eq!(
            decode(BodyFormat::Json, &body, "/data")
                .expect("items")
                .len(),
            2
        );
        assert!(decode(BodyFormat::Json, &body, "/nope")
            .expect_err("missing")
            .contains("/nope"));
        assert!(decode(BodyFormat::Json, &Bytes::from_static(b"{"), "")
            .expect_err("bad")
            .contains("not JSON"));
        let lines = Bytes::from_static(b"{\"position\":null,\"operation\":\"create\",\"metadata\":{},\"key\":null,\"payload\":{\"before\":null,\"after\":{\"x\":1}}}\n\n");
        assert_eq!(
            decode(BodyFormat::OpenCdc, &lines, "")
                .expect("lines")
                .len(),
            1
        );
        let bad = Bytes::from_static(b"{}\nnot json\n");
        assert!(decode(BodyFormat::OpenCdc, &bad, "").is_err());
    }
}
