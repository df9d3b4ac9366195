//! The record: the unit of data that flows from a source to its destinations.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use smallvec::SmallVec;

/// Opaque bytes a source can resume from. Only the source that produced a position can interpret it.
///
/// Positions up to 32 bytes live inline, so the common cases (an offset, a sequence number, an LSN)
/// cost no allocation per record.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Position(SmallVec<[u8; 32]>);

impl Position {
    /// A position holding these bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Position(SmallVec::from_slice(bytes))
    }

    /// A position holding the decimal text of `n` (used by offset- and sequence-based sources).
    pub fn from_u64(n: u64) -> Self {
        let mut buf = itoa::Buffer::new();
        Position::new(buf.format(n).as_bytes())
    }

    /// Reads back a position written by [`Position::from_u64`].
    pub fn to_u64(&self) -> Option<u64> {
        std::str::from_utf8(&self.0).ok()?.parse().ok()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// True for the empty position (which never overwrites a saved checkpoint).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "Position({s:?})"),
            _ => write!(f, "Position(0x{})", hex(&self.0)),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => f.write_str(s),
            _ => write!(f, "0x{}", hex(&self.0)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What happened to the data a record describes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A new entity.
    #[default]
    Create,
    /// A change to an existing entity.
    Update,
    /// A removed entity.
    Delete,
    /// An entity read as part of an initial snapshot.
    Snapshot,
}

impl Operation {
    /// The lowercase name used in OpenCDC.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Snapshot => "snapshot",
        }
    }
}

impl std::str::FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "create" => Ok(Operation::Create),
            "update" => Ok(Operation::Update),
            "delete" => Ok(Operation::Delete),
            "snapshot" => Ok(Operation::Snapshot),
            other => Err(format!(
                "unknown operation {other:?} (expected create, update, delete or snapshot)"
            )),
        }
    }
}

/// A key or payload: raw bytes, or structured data that round-trips as a JSON object.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Opaque bytes (a line of a file, a message body).
    Raw(Bytes),
    /// Named fields.
    Structured(serde_json::Map<String, serde_json::Value>),
}

impl Data {
    /// Approximate size in bytes, used for byte counters.
    pub fn size(&self) -> usize {
        match self {
            Data::Raw(b) => b.len(),
            // Estimating structured size exactly would mean serialising; this is a cheap lower bound.
            Data::Structured(m) => m.len() * 16,
        }
    }

    /// The data as bytes: raw data as is, structured data as compact JSON.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Data::Raw(b) => b.clone(),
            Data::Structured(m) => Bytes::from(serde_json::to_vec(m).unwrap_or_default()),
        }
    }
}

impl From<&'static str> for Data {
    fn from(s: &'static str) -> Self {
        Data::Raw(Bytes::from_static(s.as_bytes()))
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Self {
        Data::Raw(Bytes::from(v))
    }
}

impl From<Bytes> for Data {
    fn from(b: Bytes) -> Self {
        Data::Raw(b)
    }
}

/// String metadata attached to a record (see [`metadata`] for standard keys).
pub type Metadata = BTreeMap<String, String>;

/// Standard OpenCDC metadata keys.
pub mod metadata {
    /// The OpenCDC version, `v1`.
    pub const VERSION: &str = "opencdc.version";
    /// When the record was created in the source system (Unix nanoseconds, as a string).
    pub const CREATED_AT: &str = "opencdc.createdAt";
    /// When Sluice read the record (Unix nanoseconds, as a string).
    pub const READ_AT: &str = "opencdc.readAt";
    /// The collection (table, topic, file) the record belongs to.
    pub const COLLECTION: &str = "opencdc.collection";
    /// The connector id that produced the record (set by the engine).
    pub const SOURCE_CONNECTOR: &str = "sluice.source.connector";
}

/// The state of the entity before and after the operation.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Payload {
    /// The entity before the change (updates and deletes, where the source knows it).
    pub before: Option<Data>,
    /// The entity after the change (absent for deletes).
    pub after: Option<Data>,
}

/// One change read from a source.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Record {
    /// Where the source can resume right after this record.
    pub position: Position,
    /// What happened.
    pub operation: Operation,
    /// String metadata.
    pub metadata: Metadata,
    /// The entity's key, if it has one.
    pub key: Option<Data>,
    /// The entity's state.
    pub payload: Payload,
}

impl Record {
    /// A `create` record at `position` whose payload is `after`.
    pub fn new(position: Position, after: impl Into<Data>) -> Self {
        Record {
            position,
            operation: Operation::Create,
            metadata: Metadata::new(),
            key: None,
            payload: Payload {
                before: None,
                after: Some(after.into()),
            },
        }
    }

    /// Approximate size in bytes of key and payload, for byte counters.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Data::size)
            + self.payload.before.as_ref().map_or(0, Data::size)
            + self.payload.after.as_ref().map_or(0, Data::size)
    }
}

/// Unix time in nanoseconds now, as OpenCDC writes it.
pub fn unix_nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_u64() {
        let p = Position::from_u64(1234567890123);
        assert_eq!(p.to_u64(), Some(1234567890123));
        assert_eq!(p.to_string(), "1234567890123");
        assert!(!p.is_empty());
        assert!(Position::default().is_empty());
    }

    #[test]
    fn binary_position_displays_as_hex() {
        let p = Position::new(&[0, 1, 0xff]);
        assert_eq!(p.to_string(), "0x0001ff");
        assert_eq!(p.to_u64(), None);
    }

    #[test]
    fn operation_parses_and_rejects() {
        assert_eq!("snapshot".parse::<Operation>(), Ok(Operation::Snapshot));
        assert!("upsert"
            .parse::<Operation>()
            .unwrap_err()
            .contains("upsert"));
    }

    #[test]
    fn record_size_counts_key_and_payload() {
        let mut r = Record::new(Position::from_u64(1), "hello");
        r.key = Some(Data::from("k"));
        assert_eq!(r.size(), 6);
    }
}
