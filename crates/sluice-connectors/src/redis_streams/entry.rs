//! Stream entries: parsing `XREADGROUP` replies, entry ids, and converting entries to records
//! and back.

use bytes::Bytes;
use redis::Value;
use sluice_sdk::record::metadata;
use sluice_sdk::{Data, Metadata, Position, Record};

use super::config::Format;

/// A stream entry id (`ms-seq`), ordered as Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// Parses `ms-seq`.
    pub fn parse(text: &str) -> Option<EntryId> {
        let (ms, seq) = text.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// Reads a position written by the source.
    pub fn from_position(p: &Position) -> Option<EntryId> {
        EntryId::parse(std::str::from_utf8(p.as_bytes()).ok()?)
    }

    /// The position of the entry.
    pub fn position(self) -> Position {
        Position::new(self.to_string().as_bytes())
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry as read: its id and its field/value pairs (`None` when the entry was deleted while
/// pending).
#[derive(Debug, PartialEq)]
pub(crate) struct Entry {
    pub id: EntryId,
    pub fields: Option<Vec<(Bytes, Bytes)>>,
}

/// The entries of an `XREADGROUP` reply for one stream (nil, an array or a RESP3 map), in order.
pub(crate) fn parse_read_reply(reply: Value) -> Result<Vec<Entry>, String> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.remove(1)),
                other => Err(format!("unexpected stream in reply: {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        other => return Err(format!("unexpected XREADGROUP reply: {other:?}")),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            return Err(format!("unexpected entry list: {entries:?}"));
        };
        for entry in entries {
            out.push(parse_entry(entry)?);
        }
    }
    Ok(out)
}

fn parse_entry(entry: Value) -> Result<Entry, String> {
    let Value::Array(mut parts) = entry else {
        return Err(format!("unexpected entry: {entry:?}"));
    };
    if parts.len() != 2 {
        return Err(format!("unexpected entry with {} parts", parts.len()));
    }
    let fields = parts.pop().unwrap_or(Value::Nil);
    let id = parts.pop().unwrap_or(Value::Nil);
    let id = text(id)
        .and_then(|t| EntryId::parse(&t))
        .ok_or("an entry id is not ms-seq")?;
    let fields = match fields {
        Value::Nil => None,
        Value::Array(values) => {
            let mut pairs = Vec::with_capacity(values.len() / 2);
            let mut it = values.into_iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                pairs.push((bytes(f)?, bytes(v)?));
            }
            Some(pairs)
        }
        Value::Map(values) => Some(
            values
                .into_iter()
                .map(|(f, v)| Ok((bytes(f)?, bytes(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => return Err(format!("unexpected entry fields: {other:?}")),
    };
    Ok(Entry { id, fields })
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn bytes(v: Value) -> Result<Bytes, String> {
    match v {
        Value::BulkString(b) => Ok(Bytes::from(b)),
        Value::SimpleString(s) => Ok(Bytes::from(s)),
        Value::Int(i) => Ok(Bytes::from(i.to_string())),
        other => Err(format!("unexpected field value: {other:?}")),
    }
}

/// The record for an entry of `key`, or why it cannot be one.
pub(crate) fn to_record(
    format: Format,
    field: &str,
    key: &str,
    id: EntryId,
    fields: Vec<(Bytes, Bytes)>,
) -> Result<Record, String> {
    let position = id.position();
    let find = |fields: &[(Bytes, Bytes)]| {
        fields
            .iter()
            .find(|(f, _)| f.as_ref() == field.as_bytes())
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("entry {id} has no field {field:?} (setting \"field\")"))
    };
    let mut record = match format {
        Format::Fields => {
            let map = fields
                .into_iter()
                .map(|(f, v)| {
                    (
                        String::from_utf8_lossy(&f).into_owned(),
                        serde_json::Value::String(String::from_utf8_lossy(&v).into_owned()),
                    )
                })
                .collect();
            Record::new(position, Data::Structured(map))
        }
        Format::Raw => Record::new(position, Data::Raw(find(&fields)?)),
        Format::OpenCdc => {
            let body = find(&fields)?;
            let mut r = sluice_sdk::opencdc::from_json(&body).map_err(|e| e.to_string())?;
            r.position = position;
            r
        }
    };
    let meta: &mut Metadata = &mut record.metadata;
    meta.entry(metadata::COLLECTION.to_string())
        .or_insert_with(|| key.to_string());
    meta.entry(metadata::CREATED_AT.to_string())
        .or_insert_with(|| (u128::from(id.ms) * 1_000_000).to_string());
    Ok(record)
}

/// The field/value pairs to `XADD` for a record, or why it cannot be written.
pub(crate) fn to_fields(
    format: Format,
    field: &str,
    record: &Record,
) -> Result<Vec<(Bytes, Bytes)>, String> {
    let single = |value: Bytes| Ok(vec![(Bytes::copy_from_slice(field.as_bytes()), value)]);
    match format {
        Format::OpenCdc => single(Bytes::from(sluice_sdk::opencdc::to_json(record))),
        Format::Raw | Format::Fields => {
            let after = record
                .payload
                .after
                .as_ref()
                .ok_or("the record has no payload.after to write")?;
            match (format, after) {
                (Format::Fields, Data::Structured(map)) => {
                    if map.is_empty() {
                        return Err("the record's structured payload has no fields; a stream \
                                    entry needs at least one"
                            .into());
                    }
                    Ok(map
                        .iter()
                        .map(|(k, v)| {
                            let value = match v {
                                serde_json::Value::String(s) => {
                                    Bytes::copy_from_slice(s.as_bytes())
                                }
                                other => Bytes::from(other.to_string()),
                            };
                            (Bytes::copy_from_slice(k.as_bytes()), value)
                        })
                        .collect())
                }
                (_, data) => single(data.to_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn ids_order_and_round_trip() {
        let a = EntryId::parse("1700000000000-2").expect("id");
        let b = EntryId::parse("1700000000001-0").expect("id");
        assert!(a < b);
        assert_eq!(EntryId::from_position(&a.position()), Some(a));
        for bad in ["", "12", "a-1", "1-", "-1"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_resp2_replies_including_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("stream"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("a"), bulk("1"), bulk("b"), bulk("2")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply).expect("parse");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, EntryId { ms: 1, seq: 0 });
        assert_eq!(
            entries[0].fields,
            Some(vec![
                (Bytes::from("a"), Bytes::from("1")),
                (Bytes::from("b"), Bytes::from("2"))
            ])
        );
        assert_eq!(entries[1].fields, None);
        assert!(parse_read_reply(Value::Nil).expect("nil").is_empty());
        assert!(parse_read_reply(Value::Int(3)).is_err());
    }

    #[test]
    fn records_and_fields_convert_both_ways() {
        let id = EntryId { ms: 5, seq: 1 };
        let fields = vec![(Bytes::from("name"), Bytes::from("ada"))];
        let r = to_record(Format::Fields, "data", "users", id, fields.clone()).expect("record");
        assert_eq!(r.position, Position::new(b"5-1"));
        assert_eq!(r.metadata[metadata::COLLECTION], "users");
        assert_eq!(r.metadata[metadata::CREATED_AT], "5000000");
        assert_eq!(
            to_fields(Format::Fields, "data", &r).expect("fields"),
            fields
        );
        let raw = Record::new(Position::from_u64(1), "bytes");
        let written = to_fields(Format::Raw, "data", &raw).expect("fields");
        assert_eq!(written, vec![(Bytes::from("data"), Bytes::from("bytes"))]);
        let back = to_record(Format::Raw, "data", "k", id, written).expect("record");
        assert_eq!(back.payload.after, Some(Data::from("bytes")));
        assert!(to_record(Format::Raw, "other", "k", id, fields).is_err());
        let oc = to_fields(Format::OpenCdc, "data", &raw).expect("fields");
        let back = to_record(Format::OpenCdc, "data", "k", id, oc).expect("record");
        assert_eq!(back.payload, raw.payload);
    }
}
