//! Converting between NATS messages and records.

use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use sluice_sdk::record::metadata;
use sluice_sdk::{Data, Metadata, Position, Record};

use super::config::Format;

/// The header whose value becomes a raw record's key.
pub(crate) const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// What one delivered message carries that the record needs.
pub(crate) struct Delivered<'a> {
    /// The subject it was published to.
    pub subject: &'a str,
    /// Its body.
    pub payload: &'a Bytes,
    /// Its headers.
    pub headers: Option<&'a HeaderMap>,
    /// When the server stored it (Unix nanoseconds).
    pub published_nanos: i128,
}

/// Builds the record for a delivered message at `position`, or says why the body is not an
/// OpenCDC record (with `format: opencdc`).
pub(crate) fn to_record(
    format: Format,
    message: &Delivered<'_>,
    position: Position,
) -> Result<Record, String> {
    match format {
        Format::Raw => {
            let mut record = Record::new(position, Data::Raw(message.payload.clone()));
            let mut meta = Metadata::new();
            if let Some(headers) = message.headers {
                for (name, values) in headers.iter() {
                    if let Some(last) = values.last() {
                        meta.insert(name.to_string(), last.as_str().to_string());
                    }
                }
                record.key = headers
                    .get(MSG_ID_HEADER)
                    .map(|v| Data::Raw(Bytes::copy_from_slice(v.as_str().as_bytes())));
            }
            meta.insert(
                metadata::COLLECTION.to_string(),
                message.subject.to_string(),
            );
            if message.published_nanos > 0 {
                meta.insert(
                    metadata::CREATED_AT.to_string(),
                    message.published_nanos.to_string(),
                );
            }
            record.metadata = meta;
            Ok(record)
        }
        Format::OpenCdc => {
            let mut record =
                sluice_sdk::opencdc::from_json(message.payload).map_err(|e| e.to_string())?;
            record.position = position;
            record
                .metadata
                .entry(metadata::COLLECTION.to_string())
                .or_insert_with(|| message.subject.to_string());
            Ok(record)
        }
    }
}

/// What to publish for a record: its body and headers. A record `raw` cannot represent (no
/// `payload.after`) is an error naming why.
pub(crate) fn to_message(
    format: Format,
    record: &Record,
) -> Result<(Bytes, Option<HeaderMap>), String> {
    match format {
        Format::OpenCdc => Ok((Bytes::from(sluice_sdk::opencdc::to_json(record)), None)),
        Format::Raw => {
            let payload = record
                .payload
                .after
                .as_ref()
                .ok_or("the record has no payload.after to publish (format: raw)")?
                .to_bytes();
            if record.metadata.is_empty() {
                return Ok((payload, None));
            }
            let mut headers = HeaderMap::new();
            for (name, value) in &record.metadata {
                // Metadata that cannot be a header (a ':' in the name, a newline in the value)
                // is left out rather than failing the record.
                if let (Ok(n), Ok(v)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
                    headers.insert(n, v);
                }
            }
            Ok((payload, Some(headers)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_records_carry_headers_subject_and_key() {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, "order-7");
        headers.insert("trace", "abc");
        let payload = Bytes::from_static(b"body");
        let delivered = Delivered {
            subject: "orders.new",
            payload: &payload,
            headers: Some(&headers),
            published_nanos: 42,
        };
        let r = to_record(Format::Raw, &delivered, Position::from_u64(3)).expect("record");
        assert_eq!(r.payload.after, Some(Data::Raw(payload.clone())));
        assert_eq!(r.key, Some(Data::from("order-7")));
        assert_eq!(r.metadata[metadata::COLLECTION], "orders.new");
        assert_eq!(r.metadata[metadata::CREATED_AT], "42");
        assert_eq!(r.metadata["trace"], "abc");
        let (body, out) = to_message(Format::Raw, &r).expect("message");
        assert_eq!(body, payload);
        let out = out.expect("headers");
        assert_eq!(out.get("trace").map(HeaderValue::as_str), Some("abc"));
    }

    #[test]
    fn opencdc_round_trips_and_rejects_garbage() {
        let mut original = Record::new(Position::from_u64(1), "x");
        original.key = Some(Data::from("k"));
        let (body, headers) = to_message(Format::OpenCdc, &original).expect("message");
        assert!(headers.is_none());
        let delivered = Delivered {
            subject: "s",
            payload: &body,
            headers: None,
            published_nanos: 0,
        };
        let back = to_record(Format::OpenCdc, &delivered, Position::from_u64(9)).expect("record");
        assert_eq!(back.key, original.key);
        assert_eq!(back.position, Position::from_u64(9));
        assert_eq!(back.metadata[metadata::COLLECTION], "s");
        let garbage = Bytes::from_static(b"not json");
        let bad = Delivered {
            payload: &garbage,
            ..delivered
        };
        assert!(to_record(Format::OpenCdc, &bad, Position::from_u64(1)).is_err());
        let mut no_payload = original.clone();
        no_payload.payload.after = None;
        assert!(to_message(Format::Raw, &no_payload).is_err());
    }
}
