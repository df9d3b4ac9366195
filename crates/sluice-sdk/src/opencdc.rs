//! OpenCDC JSON: the record's exchange format, readable and writable without loss.
//!
//! Raw data (position, raw key or payload) is a base64 string; structured data is a JSON object;
//! absent data is `null`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::record::{Data, Metadata, Operation, Payload, Position, Record};

/// Why a JSON document is not an OpenCDC record.
#[derive(Debug, thiserror::Error)]
#[error("invalid OpenCDC JSON: {0}")]
pub struct OpenCdcError(#[from] serde_json::Error);

/// Encodes a record as one line of OpenCDC JSON (no trailing newline).
pub fn to_json(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + record.size() * 4 / 3);
    write_json(record, &mut out);
    out
}

/// Appends a record's OpenCDC JSON to `out` (no trailing newline).
pub fn write_json(record: &Record, out: &mut Vec<u8>) {
    // Serialising our own types into a Vec cannot fail: every map key is a string.
    let _ = serde_json::to_writer(out, &Wire(record));
}

/// Decodes one OpenCDC JSON document.
pub fn from_json(bytes: &[u8]) -> Result<Record, OpenCdcError> {
    let wire: WireOwned = serde_json::from_slice(bytes)?;
    Ok(wire.0)
}

struct Wire<'a>(&'a Record);

struct DataRef<'a>(&'a Data);

impl Serialize for DataRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Data::Raw(b) => s.serialize_str(&B64.encode(b)),
            Data::Structured(m) => m.serialize(s),
        }
    }
}

#[derive(Serialize)]
struct PayloadRef<'a> {
    before: Option<DataRef<'a>>,
    after: Option<DataRef<'a>>,
}

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut st = s.serialize_struct("Record", 5)?;
        st.serialize_field("position", &B64.encode(r.position.as_bytes()))?;
        st.serialize_field("operation", r.operation.as_str())?;
        st.serialize_field("metadata", &r.metadata)?;
        st.serialize_field("key", &r.key.as_ref().map(DataRef))?;
        st.serialize_field(
            "payload",
            &PayloadRef {
                before: r.payload.before.as_ref().map(DataRef),
                after: r.payload.after.as_ref().map(DataRef),
            },
        )?;
        st.end()
    }
}

struct WireOwned(Record);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    #[serde(default)]
    position: Option<String>,
    operation: Operation,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    key: Option<serde_json::Value>,
    #[serde(default)]
    payload: Option<RawPayload>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPayload {
    #[serde(default)]
    before: Option<serde_json::Value>,
    #[serde(default)]
    after: Option<serde_json::Value>,
}

fn data_from_value(field: &str, v: serde_json::Value) -> Result<Option<Data>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => B64
            .decode(s.as_bytes())
            .map(|b| Some(Data::Raw(Bytes::from(b))))
            .map_err(|e| format!("{field}: raw data must be base64: {e}")),
        serde_json::Value::Object(m) => Ok(Some(Data::Structured(m))),
        other => Err(format!(
            "{field}: expected a base64 string, an object or null, found {}",
            kind(&other)
        )),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl<'de> Deserialize<'de> for WireOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawRecord::deserialize(d)?;
        let position = match raw.position {
            None => Position::default(),
            Some(p) => Position::new(
                &B64.decode(p.as_bytes())
                    .map_err(|e| D::Error::custom(format!("position must be base64: {e}")))?,
            ),
        };
        let payload = raw.payload.unwrap_or_default();
        let key = match raw.key {
            None => None,
            Some(v) => data_from_value("key", v).map_err(D::Error::custom)?,
        };
        let before = match payload.before {
            None => None,
            Some(v) => data_from_value("payload.before", v).map_err(D::Error::custom)?,
        };
        let after = match payload.after {
            None => None,
            Some(v) => data_from_value("payload.after", v).map_err(D::Error::custom)?,
        };
        Ok(WireOwned(Record {
            position,
            operation: raw.operation,
            metadata: raw.metadata.unwrap_or_default(),
            key,
            payload: Payload { before, after },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::metadata;

    fn structured(json: &str) -> Data {
        match serde_json::from_str(json) {
            Ok(serde_json::Value::Object(m)) => Data::Structured(m),
            other => panic!("test fixture is not an object: {other:?}"),
        }
    }

    #[test]
    fn round_trips_raw_and_structured_losslessly() {
        let mut r = Record::new(Position::new(&[0, 159, 146, 150]), vec![0u8, 1, 2, 255]);
        r.operation = Operation::Update;
        r.key = Some(structured(r#"{"id":7,"z":"last","a":"first"}"#));
        r.payload.before = Some(structured(r#"{"n":1.5,"nested":{"x":[1,2,null]}}"#));
        r.metadata
            .insert(metadata::COLLECTION.to_string(), "users".to_string());
        let json = to_json(&r);
        let back = from_json(&json).expect("decodes");
        assert_eq!(back, r);
        // Field order inside structured data survives too.
        let text = String::from_utf8(json).expect("utf8");
        assert!(text.find("\"z\"").expect("z") < text.find("\"a\"").expect("a"));
        assert_eq!(to_json(&back), text.as_bytes());
    }

    #[test]
    fn encodes_the_documented_shape() {
        let r = Record::new(Position::new(b"p1"), "hi");
        let v: serde_json::Value = serde_json::from_slice(&to_json(&r)).expect("json");
        assert_eq!(v["position"], "cDE=");
        assert_eq!(v["operation"], "create");
        assert_eq!(v["key"], serde_json::Value::Null);
        assert_eq!(v["payload"]["before"], serde_json::Value::Null);
        assert_eq!(v["payload"]["after"], "aGk=");
    }

    #[test]
    fn rejects_bad_documents_with_the_field_named() {
        let err = from_json(br#"{"operation":"create","payload":{"after":12}}"#)
            .expect_err("number payload");
        assert!(err.to_string().contains("payload.after"), "{err}");
        let err = from_json(br#"{"operation":"create","key":"not base64!"}"#).expect_err("b64");
        assert!(err.to_string().contains("key"), "{err}");
        let err = from_json(br#"{"operation":"merge"}"#).expect_err("operation");
        assert!(err.to_string().contains("merge"), "{err}");
        let err = from_json(br#"{"operation":"create","extra":1}"#).expect_err("unknown");
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
