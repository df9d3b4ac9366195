//! Building records fast: payloads for a whole batch are written into one buffer and split off
//! zero-copy, the built-in payload shape is a prebuilt filler with only the id digits formatted
//! per record, and no per-record metadata is allocated unless asked for.
//!
//! Record number `seq` (1-based) belongs to collection `(seq-1) % collections` and uses that
//! collection's operations in turn, so the same settings always produce the same sequence of
//! collections, operations and (apart from `time` fields) payloads — a resumed generator continues
//! exactly where it stopped.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};
use sluice_sdk::record::{metadata, unix_nanos_now};
use sluice_sdk::{ConnectorError, Data, Metadata, Operation, Payload, Position, Record};

use super::config::{Collection, FieldType, Format, GeneratorConfig};

/// `{"id":` + `,"data":"` + `"}`: the bytes of the built-in shape around the id and the filler.
const SHAPE_OVERHEAD: usize = 17;

/// Words for `string` fields.
const WORDS: [&str; 16] = [
    "amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "heron", "iris", "juniper",
    "kelp", "lotus", "maple", "nectar", "onyx", "prairie",
];

/// Which payload of a record is being built: updates carry both, with different content.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    After,
    Before,
}

/// How one collection's payloads are made.
enum Shape {
    /// The built-in shape, raw bytes.
    RawTemplate,
    /// The built-in shape, structured.
    StructuredTemplate,
    /// Configured fields, as JSON bytes.
    RawFields(Vec<(String, FieldType)>),
    /// Configured fields, structured.
    StructuredFields(Vec<(String, FieldType)>),
    /// A file's content.
    File(Bytes),
}

struct CollectionGen {
    name: Option<String>,
    shape: Shape,
    operations: Vec<Operation>,
}

/// Makes the generator's records.
pub struct RecordFactory {
    collections: Vec<CollectionGen>,
    record_size: usize,
    created_at: bool,
    needs_time: bool,
    filler_after: String,
    filler_before: String,
    buf: BytesMut,
}

impl RecordFactory {
    /// Prepares payload templates for `config`, reading any `file` payloads once.
    pub async fn new(config: &GeneratorConfig) -> Result<Self, ConnectorError> {
        let mut collections = Vec::with_capacity(config.collections.len());
        for c in &config.collections {
            collections.push(CollectionGen {
                name: c.name.clone(),
                shape: shape(c).await?,
                operations: c.operations.clone(),
            });
        }
        let needs_time = config.created_at
            || config.collections.iter().any(|c| match &c.format {
                Format::Raw(f) | Format::Structured(f) => {
                    f.iter().any(|(_, t)| *t == FieldType::Time)
                }
                Format::File(_) => false,
            });
        Ok(RecordFactory {
            collections,
            record_size: config.record_size,
            created_at: config.created_at,
            needs_time,
            filler_after: filler(config.record_size, b'a'),
            filler_before: filler(config.record_size, b'A'),
            buf: BytesMut::new(),
        })
    }

    /// Appends records `first_seq .. first_seq + n` to `out`.
    pub fn fill(&mut self, first_seq: u64, n: usize, out: &mut Vec<Record>) {
        if n == 0 || self.collections.is_empty() {
            return;
        }
        let now = if self.needs_time { unix_nanos_now() } else { 0 };
        let created_at = self.created_at.then(|| now.to_string());
        self.buf.reserve(n * (self.record_size + 8));
        out.reserve(n);
        let count = self.collections.len() as u64;
        let mut ctx = Ctx {
            buf: &mut self.buf,
            record_size: self.record_size,
            filler_after: &self.filler_after,
            filler_before: &self.filler_before,
            now,
        };
        for seq in first_seq..first_seq + n as u64 {
            let index = seq.saturating_sub(1);
            let coll = &self.collections[(index % count) as usize];
            let turn = (index / count) as usize % coll.operations.len();
            let operation = coll.operations[turn];
            let payload = match operation {
                Operation::Create | Operation::Snapshot => Payload {
                    before: None,
                    after: Some(ctx.data(&coll.shape, seq, Variant::After)),
                },
                Operation::Update => Payload {
                    before: Some(ctx.data(&coll.shape, seq, Variant::Before)),
                    after: Some(ctx.data(&coll.shape, seq, Variant::After)),
                },
                Operation::Delete => Payload {
                    before: Some(ctx.data(&coll.shape, seq, Variant::Before)),
                    after: None,
                },
            };
            let mut metadata = Metadata::new();
            if let Some(name) = &coll.name {
                metadata.insert(metadata::COLLECTION.to_string(), name.clone());
            }
            if let Some(at) = &created_at {
                metadata.insert(metadata::CREATED_AT.to_string(), at.clone());
            }
            out.push(Record {
                position: Position::from_u64(seq),
                operation,
                metadata,
                key: None,
                payload,
            });
        }
    }
}

async fn shape(c: &Collection) -> Result<Shape, ConnectorError> {
    Ok(match &c.format {
        Format::Raw(f) if f.is_empty() => Shape::RawTemplate,
        Format::Structured(f) if f.is_empty() => Shape::StructuredTemplate,
        Format::Raw(f) => Shape::RawFields(f.clone()),
        Format::Structured(f) => Shape::StructuredFields(f.clone()),
        Format::File(path) => {
            let bytes = tokio::fs::read(path).await.map_err(|e| {
                ConnectorError::io(
                    format!("reading the generator's payload file {}", path.display()),
                    e,
                )
            })?;
            Shape::File(Bytes::from(bytes))
        }
    })
}

/// ASCII letters cycling from `first`, `len` long.
fn filler(len: usize, first: u8) -> String {
    (0..len)
        .map(|i| char::from(first + (i % 26) as u8))
        .collect()
}

/// The state payload building borrows for one batch.
struct Ctx<'a> {
    buf: &'a mut BytesMut,
    record_size: usize,
    filler_after: &'a str,
    filler_before: &'a str,
    now: u128,
}

impl<'a> Ctx<'a> {
    fn data(&mut self, shape: &Shape, seq: u64, variant: Variant) -> Data {
        match shape {
            Shape::RawTemplate => {
                self.write_template(seq, variant);
                Data::Raw(self.buf.split().freeze())
            }
            Shape::StructuredTemplate => Data::Structured(self.template_map(seq, variant)),
            Shape::RawFields(fields) => {
                let map = fields_map(fields, seq, variant, self.now);
                // Writing a map of strings and numbers into memory cannot fail.
                let _ = serde_json::to_writer((&mut *self.buf).writer(), &map);
                Data::Raw(self.buf.split().freeze())
            }
            Shape::StructuredFields(fields) => {
                Data::Structured(fields_map(fields, seq, variant, self.now))
            }
            Shape::File(bytes) => Data::Raw(bytes.clone()),
        }
    }

    fn filler(&self, variant: Variant) -> &'a str {
        match variant {
            Variant::After => self.filler_after,
            Variant::Before => self.filler_before,
        }
    }

    /// `{"id":SEQ,"data":"FILLER"}`, exactly `record_size` bytes; when that is too small for the
    /// shape, the id alone, zero-padded (or cut to its last digits) to `record_size`.
    fn write_template(&mut self, seq: u64, variant: Variant) {
        let mut digits = itoa::Buffer::new();
        let id = digits.format(seq).as_bytes();
        let size = self.record_size;
        if size >= SHAPE_OVERHEAD + id.len() {
            let fill = &self.filler(variant).as_bytes()[..size - SHAPE_OVERHEAD - id.len()];
            let buf = &mut *self.buf;
            buf.extend_from_slice(b"{\"id\":");
            buf.extend_from_slice(id);
            buf.extend_from_slice(b",\"data\":\"");
            buf.extend_from_slice(fill);
            buf.extend_from_slice(b"\"}");
        } else if size >= id.len() {
            self.buf.put_bytes(b'0', size - id.len());
            self.buf.extend_from_slice(id);
        } else {
            self.buf.extend_from_slice(&id[id.len() - size..]);
        }
    }

    /// `{"id": SEQ, "data": FILLER}` whose compact JSON is `record_size` bytes when it fits.
    fn template_map(&self, seq: u64, variant: Variant) -> Map<String, Value> {
        let digits = itoa::Buffer::new().format(seq).len();
        let fill = self
            .record_size
            .saturating_sub(SHAPE_OVERHEAD + digits)
            .min(self.record_size);
        let mut map = Map::new();
        map.insert("id".into(), Value::from(seq));
        map.insert("data".into(), Value::from(&self.filler(variant)[..fill]));
        map
    }
}

/// The configured fields for record `seq`: pseudo-random but reproducible values (the same `seq`
/// always gives the same values, apart from `time`).
fn fields_map(
    fields: &[(String, FieldType)],
    seq: u64,
    variant: Variant,
    now: u128,
) -> Map<String, Value> {
    let mut map = Map::new();
    for (i, (name, kind)) in fields.iter().enumerate() {
        let salt = (i as u64) << 1 | u64::from(variant == Variant::Before);
        let r = splitmix64(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt);
        let value = match kind {
            FieldType::Int => Value::from(r >> 1),
            FieldType::String => Value::from(WORDS[(r % WORDS.len() as u64) as usize]),
            FieldType::Time => Value::from(u64::try_from(now).unwrap_or(u64::MAX)),
            FieldType::Bool => Value::from(r & 1 == 1),
            FieldType::Duration => Value::from(r % 3_600_000_000_000),
        };
        map.insert(name.clone(), value);
    }
    map
}

/// A fast, well-mixed hash of one number (SplitMix64's finaliser).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::config::GeneratorConfig;
    use sluice_sdk::spec::Settings;

    async fn factory(pairs: &[(&str, &str)]) -> RecordFactory {
        let settings: Settings = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = GeneratorConfig::parse(&settings).expect("valid");
        RecordFactory::new(&config).await.expect("factory")
    }

    fn after(r: &Record) -> Bytes {
        r.payload.after.as_ref().expect("after").to_bytes()
    }

    #[tokio::test]
    async fn the_built_in_shape_is_exactly_record_size_and_json() {
        let mut f = factory(&[("recordSize", "40")]).await;
        let mut out = Vec::new();
        f.fill(1, 3, &mut out);
        f.fill(999_999, 2, &mut out);
        for r in &out {
            let bytes = after(r);
            assert_eq!(bytes.len(), 40, "{bytes:?}");
            let v: Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(v["id"].as_u64(), r.position.to_u64());
        }
        assert_eq!(
            &after(&out[0])[..],
            br#"{"id":1,"data":"abcdefghijklmnopqrstuv"}"#
        );
    }

    #[tokio::test]
    async fn tiny_sizes_hold_the_padded_id() {
        let mut f = factory(&[("recordSize", "4")]).await;
        let mut out = Vec::new();
        f.fill(42, 1, &mut out);
        f.fill(123_456, 1, &mut out);
        assert_eq!(&after(&out[0])[..], b"0042");
        assert_eq!(&after(&out[1])[..], b"3456");
    }

    #[tokio::test]
    async fn structured_template_serialises_to_the_same_bytes_as_raw() {
        let mut raw = factory(&[("recordSize", "64")]).await;
        let mut structured = factory(&[("recordSize", "64"), ("format.type", "structured")]).await;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        raw.fill(7, 1, &mut a);
        structured.fill(7, 1, &mut b);
        assert!(matches!(b[0].payload.after, Some(Data::Structured(_))));
        assert_eq!(after(&a[0]), after(&b[0]));
    }

    #[tokio::test]
    async fn operations_cycle_and_shape_the_payload() {
        let mut f = factory(&[("operations", "create,update,delete,snapshot")]).await;
        let mut out = Vec::new();
        f.fill(1, 4, &mut out);
        let ops: Vec<Operation> = out.iter().map(|r| r.operation).collect();
        assert_eq!(
            ops,
            [
                Operation::Create,
                Operation::Update,
                Operation::Delete,
                Operation::Snapshot
            ]
        );
        assert!(out[0].payload.before.is_none());
        assert_ne!(out[1].payload.before, out[1].payload.after);
        assert!(out[1].payload.before.is_some());
        assert!(out[2].payload.after.is_none() && out[2].payload.before.is_some());
    }

    #[tokio::test]
    async fn fields_are_reproducible_and_typed() {
        let pairs = [
            ("format.type", "raw"),
            ("format.options.n", "int"),
            ("format.options.s", "string"),
            ("format.options.b", "bool"),
            ("format.options.d", "duration"),
            ("format.options.t", "time"),
        ];
        let mut f = factory(&pairs).await;
        let mut g = factory(&pairs).await;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        f.fill(5, 2, &mut a);
        g.fill(5, 2, &mut b);
        let va: Value = serde_json::from_slice(&after(&a[0])).expect("json");
        let vb: Value = serde_json::from_slice(&after(&b[0])).expect("json");
        for field in ["n", "s", "b", "d"] {
            assert_eq!(va[field], vb[field], "{field}");
        }
        assert!(va["n"].is_u64() && va["s"].is_string() && va["b"].is_boolean());
        assert!(va["t"].as_u64().is_some_and(|t| t > 0));
        assert_ne!(after(&a[0]), after(&a[1]));
    }

    #[tokio::test]
    async fn collections_alternate_and_are_named() {
        let mut f = factory(&[
            ("collections.a.format.type", "raw"),
            ("collections.b.format.type", "structured"),
            ("metadata.createdAt", "true"),
        ])
        .await;
        let mut out = Vec::new();
        f.fill(1, 3, &mut out);
        let names: Vec<&str> = out
            .iter()
            .map(|r| r.metadata[metadata::COLLECTION].as_str())
            .collect();
        assert_eq!(names, ["a", "b", "a"]);
        assert!(out
            .iter()
            .all(|r| r.metadata.contains_key(metadata::CREATED_AT)));
    }

    #[tokio::test]
    async fn file_payloads_are_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.bin");
        std::fs::write(&path, b"hello file").expect("write");
        let path = path.to_string_lossy().into_owned();
        let mut f = factory(&[("format.type", "file"), ("format.options.path", &path)]).await;
        let mut out = Vec::new();
        f.fill(1, 2, &mut out);
        assert_eq!(&after(&out[1])[..], b"hello file");
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_naming_it() {
        let settings: Settings = [
            ("format.type", "file"),
            ("format.options.path", "/no/such/file"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = GeneratorConfig::parse(&settings).expect("valid");
        let err = RecordFactory::new(&config).await.err().expect("error");
        assert!(err.to_string().contains("/no/such/file"), "{err}");
    }
}
