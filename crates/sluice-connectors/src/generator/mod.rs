//! The `generator` source: makes records by itself — a count or unlimited, at a rate or as fast as
//! possible, in bursts, with payloads of a given size, raw or structured, or with configured
//! fields, in one or several collections — for demos, tests and benchmarks.
//!
//! It understands Conduit's generator settings (`recordCount`, `rate`, `readTime`, `burst.*`,
//! `format.type`, `format.options.*`, `operations`, `collections.*`), so a Conduit pipeline file
//! using `builtin:generator` runs unchanged, and adds `recordSize` and `metadata.createdAt`.
//!
//! Unlike Conduit's, it resumes: a position is the record's number (1, 2, …), `open` at position
//! N continues with record N+1, so `recordCount` is honoured across restarts, and the same
//! settings always generate the same records (apart from `time` fields and `opencdc.createdAt`).
//! A finite generator ends its stream after its last record.
//!
//! Speed: the default payload is a prebuilt filler with only the id digits formatted per record,
//! a batch's payloads share one buffer, and records carry no metadata unless asked for
//! (`metadata.createdAt`, or named collections), so a batch costs a few allocations in total.

mod config;
mod pace;
mod payload;
mod source;

pub use config::{
    param, Collection, FieldType, Format, GeneratorConfig, DEFAULT_BURST_GENERATE_TIME,
    DEFAULT_RECORD_SIZE,
};
pub use pace::{Allowance, Pace};
pub use payload::RecordFactory;
pub use source::{GeneratorSource, MAX_IDLE};

use std::collections::BTreeMap;

use sluice_sdk::spec::{Parameter, ParameterType, Specification, Validation};
use sluice_sdk::{Destination, Plugin, Source};

/// Registers the generator: a source only.
#[derive(Clone, Copy, Debug, Default)]
pub struct GeneratorPlugin;

const OPERATIONS_RE: &str =
    r"^\s*(create|update|delete|snapshot)\s*(,\s*(create|update|delete|snapshot)\s*)*$";

const DESCRIPTION: &str = "\
Generates records by itself, for demos, tests and benchmarks. Accepts Conduit's generator settings \
(recordCount, rate, readTime, burst.*, format.type, format.options.*, operations, collections.*), \
so Conduit pipeline files using builtin:generator run unchanged.

Payloads: without fields, every payload has the built-in shape {\"id\":N,\"data\":\"...\"}, exactly \
recordSize bytes (raw) or the same object (structured). With fields (format.options.NAME: TYPE, \
types int, string, time, bool, duration), payloads hold those fields with reproducible pseudo-random \
values, as JSON bytes (raw) or an object (structured). With format.type file, every payload is the \
file's content.

Positions are record numbers: a resumed generator continues with the next record, so recordCount \
counts across restarts, and the same settings always generate the same records (apart from time \
fields and opencdc.createdAt). A finite generator ends its stream after its last record. Records \
carry no key and no metadata, except opencdc.collection for named collections and \
opencdc.createdAt when metadata.createdAt is true.";

fn described(kind: ParameterType, description: &str) -> Parameter {
    Parameter::new(kind, description)
}

fn source_params() -> BTreeMap<String, Parameter> {
    use ParameterType as T;
    let formats = || Validation::Inclusion(vec!["raw".into(), "structured".into(), "file".into()]);
    let operations = || Validation::Regex(OPERATIONS_RE.into());
    [
        (
            param::RECORD_COUNT,
            described(T::Int, "Number of records to generate; 0 (or -1, as in older Conduit versions) means no limit. Counted across restarts.")
                .default_value("0")
                .validate(Validation::GreaterThan(-2.0)),
        ),
        (
            param::RATE,
            described(T::Float, "Maximum number of records per second; 0 means as fast as possible.")
                .default_value("0"),
        ),
        (
            param::READ_TIME,
            described(T::Duration, "Deprecated (Conduit): the time it takes to read one record. When rate is 0, the rate becomes one record per readTime."),
        ),
        (
            param::BURST_SLEEP_TIME,
            described(T::Duration, "Time the generator sleeps between bursts; 0s means no bursts.")
                .default_value("0s"),
        ),
        (
            param::BURST_GENERATE_TIME,
            described(T::Duration, "How long each burst generates records; used only when burst.sleepTime is set.")
                .default_value("1s"),
        ),
        (
            param::FORMAT_TYPE,
            described(T::String, "Payload format of the default collection: raw, structured or file. Without any collection configured, raw.")
                .validate(formats()),
        ),
        (
            param::FORMAT_OPTIONS_PATH,
            described(T::File, "The file whose content is every payload, with format.type file."),
        ),
        (
            param::FORMAT_OPTIONS_FIELD,
            described(T::String, "A payload field and its type (int, string, time, bool or duration), e.g. format.options.id: int."),
        ),
        (
            param::OPERATIONS,
            described(T::String, "Comma-separated operations the records carry, in turn: create, update, delete, snapshot.")
                .default_value("create")
                .validate(operations()),
        ),
        (
            param::COLLECTION_FORMAT_TYPE,
            described(T::String, "Payload format of the collection named in place of *: raw, structured or file. Records go to the collections in turn and carry opencdc.collection.")
                .validate(formats()),
        ),
        (
            param::COLLECTION_FORMAT_OPTIONS_PATH,
            described(T::File, "The file whose content is every payload of the collection, with format.type file."),
        ),
        (
            param::COLLECTION_FORMAT_OPTIONS_FIELD,
            described(T::String, "A payload field of the collection and its type (int, string, time, bool or duration)."),
        ),
        (
            param::COLLECTION_OPERATIONS,
            described(T::String, "Comma-separated operations of the collection's records, in turn (default create).")
                .validate(operations()),
        ),
        (
            param::RECORD_SIZE,
            described(T::Int, "Payload size in bytes of the built-in payload shape (not used with fields or a file). Below 17 bytes plus the id's digits, a payload holds just the zero-padded id.")
                .default_value(DEFAULT_RECORD_SIZE.to_string())
                .validate(Validation::GreaterThan(0.0)),
        ),
        (
            param::METADATA_CREATED_AT,
            described(T::Bool, "Set opencdc.createdAt (Unix nanoseconds) on every record. Costs an allocation per record, hence off by default.")
                .default_value("false"),
        ),
    ]
    .into_iter()
    .map(|(name, p)| (name.to_string(), p))
    .collect()
}

impl Plugin for GeneratorPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "generator".into(),
            summary:
                "Generates records: a count or unlimited, at a rate, of a size, raw or structured."
                    .into(),
            description: DESCRIPTION.into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: source_params(),
            destination_params: BTreeMap::new(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(GeneratorSource::new()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        None
    }
}
