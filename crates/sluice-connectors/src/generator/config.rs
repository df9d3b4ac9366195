//! The generator's settings, parsed: Conduit's parameter names (`recordCount`, `rate`,
//! `readTime`, `burst.*`, `format.type`, `format.options.*`, `operations`, `collections.*`) plus
//! Sluice's `recordSize` and `metadata.createdAt`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sluice_sdk::spec::{Config, Settings, ValidationErrors, Violation};
use sluice_sdk::Operation;

/// Parameter names, shared by the specification and the parser.
pub mod param {
    /// How many records to generate.
    pub const RECORD_COUNT: &str = "recordCount";
    /// Records per second.
    pub const RATE: &str = "rate";
    /// Conduit's deprecated time per record.
    pub const READ_TIME: &str = "readTime";
    /// How long a burst generates.
    pub const BURST_GENERATE_TIME: &str = "burst.generateTime";
    /// How long the generator sleeps between bursts.
    pub const BURST_SLEEP_TIME: &str = "burst.sleepTime";
    /// Payload format of the default collection.
    pub const FORMAT_TYPE: &str = "format.type";
    /// File whose content is the payload (format `file`).
    pub const FORMAT_OPTIONS_PATH: &str = "format.options.path";
    /// Field name → type, for the default collection (wildcard).
    pub const FORMAT_OPTIONS_FIELD: &str = "format.options.*";
    /// Operations of the default collection.
    pub const OPERATIONS: &str = "operations";
    /// Per-collection format type (wildcard).
    pub const COLLECTION_FORMAT_TYPE: &str = "collections.*.format.type";
    /// Per-collection file path (wildcard).
    pub const COLLECTION_FORMAT_OPTIONS_PATH: &str = "collections.*.format.options.path";
    /// Per-collection fields (wildcard).
    pub const COLLECTION_FORMAT_OPTIONS_FIELD: &str = "collections.*.format.options.*";
    /// Per-collection operations (wildcard).
    pub const COLLECTION_OPERATIONS: &str = "collections.*.operations";
    /// Payload size in bytes for the built-in payload shape.
    pub const RECORD_SIZE: &str = "recordSize";
    /// Whether each record carries `opencdc.createdAt`.
    pub const METADATA_CREATED_AT: &str = "metadata.createdAt";
}

/// Default payload size in bytes.
pub const DEFAULT_RECORD_SIZE: usize = 128;
/// Default burst generate time.
pub const DEFAULT_BURST_GENERATE_TIME: Duration = Duration::from_secs(1);

/// The type of one generated field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// A pseudo-random integer.
    Int,
    /// A word.
    String,
    /// The generation time, Unix nanoseconds.
    Time,
    /// A pseudo-random boolean.
    Bool,
    /// A pseudo-random duration under an hour, in nanoseconds.
    Duration,
}

impl FieldType {
    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "int" => Some(FieldType::Int),
            "string" => Some(FieldType::String),
            "time" => Some(FieldType::Time),
            "bool" => Some(FieldType::Bool),
            "duration" => Some(FieldType::Duration),
            _ => None,
        }
    }
}

/// What a collection's payloads look like.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    /// Raw bytes: the built-in `{"id":N,"data":"…"}` shape of `recordSize` bytes, or the JSON of
    /// the configured fields.
    Raw(Vec<(String, FieldType)>),
    /// Structured data: the same shapes as objects.
    Structured(Vec<(String, FieldType)>),
    /// The content of a file, the same for every record.
    File(PathBuf),
}

/// One collection: its name (none for the default one), payload format and operations.
#[derive(Clone, Debug, PartialEq)]
pub struct Collection {
    /// Set as `opencdc.collection` on its records, if present.
    pub name: Option<String>,
    /// Payload format.
    pub format: Format,
    /// Operations, used in turn.
    pub operations: Vec<Operation>,
}

/// Parsed generator settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// How many records in total; `None` for no limit.
    pub record_count: Option<u64>,
    /// Records per second; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Burst generate and sleep times, if bursts are on.
    pub burst: Option<(Duration, Duration)>,
    /// Collections, used in turn.
    pub collections: Vec<Collection>,
    /// Payload size of the built-in shape.
    pub record_size: usize,
    /// Whether records carry `opencdc.createdAt`.
    pub created_at: bool,
}

/// Collects violations so every problem is reported at once.
#[derive(Default)]
struct Problems(Vec<Violation>);

impl Problems {
    fn add(&mut self, parameter: &str, message: impl Into<String>) {
        self.0.push(Violation {
            parameter: parameter.to_string(),
            message: message.into(),
        });
    }

    fn take<T>(&mut self, result: Result<T, ValidationErrors>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.extend(e.0);
                None
            }
        }
    }
}

/// Collection settings as written, before parsing.
#[derive(Default)]
struct RawCollection<'a> {
    format_type: Option<&'a str>,
    path: Option<&'a str>,
    fields: BTreeMap<&'a str, &'a str>,
    operations: Option<&'a str>,
}

impl GeneratorConfig {
    /// Parses settings (normally validated against the specification first), reporting every
    /// violation by parameter name.
    pub fn parse(settings: &Settings) -> Result<Self, ValidationErrors> {
        let config = Config::new(settings);
        let mut problems = Problems::default();

        let record_count = match problems.take(config.i64(param::RECORD_COUNT)).flatten() {
            Some(n) if n > 0 => Some(n as u64),
            Some(n) if n < -1 => {
                problems.add(
                    param::RECORD_COUNT,
                    format!("{n} is not a count (0 or -1 mean no limit)"),
                );
                None
            }
            _ => None,
        };

        let rate = problems
            .take(config.f64(param::RATE))
            .flatten()
            .unwrap_or(0.0);
        let read_time = problems.take(config.duration(param::READ_TIME)).flatten();
        let rate = if !rate.is_finite() || rate < 0.0 {
            problems.add(
                param::RATE,
                format!("{rate} is not a rate (0 means no limit)"),
            );
            None
        } else if rate > 0.0 {
            Some(rate)
        } else {
            read_time
                .filter(|t| !t.is_zero())
                .map(|t| 1.0 / t.as_secs_f64())
        };

        let sleep = problems
            .take(config.duration(param::BURST_SLEEP_TIME))
            .flatten()
            .unwrap_or_default();
        let generate = problems
            .take(config.duration(param::BURST_GENERATE_TIME))
            .flatten()
            .unwrap_or(DEFAULT_BURST_GENERATE_TIME);
        let burst = if sleep.is_zero() {
            None
        } else if generate.is_zero() {
            problems.add(
                param::BURST_GENERATE_TIME,
                "must be greater than 0 when burst.sleepTime is set",
            );
            None
        } else {
            Some((generate, sleep))
        };

        let record_size = match problems.take(config.u64(param::RECORD_SIZE)).flatten() {
            None => DEFAULT_RECORD_SIZE,
            Some(0) => {
                problems.add(param::RECORD_SIZE, "must be greater than 0");
                DEFAULT_RECORD_SIZE
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let created_at = problems
            .take(config.bool(param::METADATA_CREATED_AT))
            .flatten()
            .unwrap_or(false);

        let collections = parse_collections(settings, &mut problems);

        if problems.0.is_empty() {
            Ok(GeneratorConfig {
                record_count,
                rate,
                burst,
                collections,
                record_size,
                created_at,
            })
        } else {
            Err(ValidationErrors(problems.0))
        }
    }
}

/// The default collection (from `format.*` and `operations`) and the named ones (from
/// `collections.NAME.*`). With no named collection the default one always exists (raw, if no
/// `format.type` is given); with named ones, the default exists only if `format.type` is set —
/// as in Conduit.
fn parse_collections(settings: &Settings, problems: &mut Problems) -> Vec<Collection> {
    let mut default = RawCollection::default();
    let mut named: BTreeMap<&str, RawCollection> = BTreeMap::new();
    for (key, value) in settings {
        let value = value.as_str();
        if let Some(rest) = key.strip_prefix("collections.") {
            let Some((name, setting)) = rest.split_once('.') else {
                problems.add(
                    key,
                    "expected collections.NAME.format.type, .format.options.* or .operations",
                );
                continue;
            };
            if !assign(named.entry(name).or_default(), setting, value) {
                problems.add(key, "unknown collection setting (expected format.type, format.options.* or operations)");
            }
        } else {
            assign(&mut default, key, value);
        }
    }

    let mut out = Vec::new();
    if named.is_empty() || default.format_type.is_some_and(|t| !t.is_empty()) {
        let parsed = parse_collection(None, &default, "", problems);
        out.extend(parsed);
    }
    for (name, raw) in &named {
        let prefix = format!("collections.{name}.");
        out.extend(parse_collection(Some(name), raw, &prefix, problems));
    }
    out
}

/// Records one `format.type`, `format.options.*` or `operations` setting; false if `key` is none
/// of those.
fn assign<'a>(raw: &mut RawCollection<'a>, key: &'a str, value: &'a str) -> bool {
    match key {
        "format.type" => raw.format_type = Some(value),
        "format.options.path" => raw.path = Some(value),
        "operations" => raw.operations = Some(value),
        _ => match key.strip_prefix("format.options.") {
            Some(field) if !field.is_empty() => {
                raw.fields.insert(field, value);
            }
            _ => return false,
        },
    }
    true
}

fn parse_collection(
    name: Option<&str>,
    raw: &RawCollection,
    prefix: &str,
    problems: &mut Problems,
) -> Option<Collection> {
    let before = problems.0.len();
    let mut fields = Vec::new();
    for (field, kind) in &raw.fields {
        match FieldType::parse(kind) {
            Some(t) => fields.push((field.to_string(), t)),
            None => problems.add(
                &format!("{prefix}format.options.{field}"),
                format!("{kind:?} is not a field type (int, string, time, bool, duration)"),
            ),
        }
    }
    let format = match raw.format_type.filter(|t| !t.is_empty()).unwrap_or("raw") {
        "raw" => Format::Raw(fields),
        "structured" => Format::Structured(fields),
        "file" => match raw.path.filter(|p| !p.is_empty()) {
            Some(path) => Format::File(PathBuf::from(path)),
            None => {
                problems.add(
                    &format!("{prefix}format.options.path"),
                    "is required when format.type is file",
                );
                return None;
            }
        },
        other => {
            problems.add(
                &format!("{prefix}format.type"),
                format!("{other:?} must be one of: raw, structured, file"),
            );
            return None;
        }
    };
    let operations = parse_operations(raw.operations.unwrap_or("create"))
        .map_err(|message| problems.add(&format!("{prefix}operations"), message))
        .ok()?;
    (problems.0.len() == before).then(|| Collection {
        name: name.map(str::to_string),
        format,
        operations,
    })
}

/// Parses a comma-separated list of operations.
pub fn parse_operations(text: &str) -> Result<Vec<Operation>, String> {
    let ops = text
        .split(',')
        .map(|op| op.trim().parse::<Operation>())
        .collect::<Result<Vec<_>, _>>()?;
    if ops.is_empty() {
        return Err("names no operation".into());
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_settings_mean_unlimited_raw_records_as_fast_as_possible() {
        let c = GeneratorConfig::parse(&Settings::new()).expect("valid");
        assert_eq!(c.record_count, None);
        assert_eq!(c.rate, None);
        assert_eq!(c.burst, None);
        assert_eq!(c.record_size, DEFAULT_RECORD_SIZE);
        assert_eq!(
            c.collections,
            vec![Collection {
                name: None,
                format: Format::Raw(vec![]),
                operations: vec![Operation::Create],
            }]
        );
    }

    #[test]
    fn conduit_settings_parse() {
        let c = GeneratorConfig::parse(&settings(&[
            ("recordCount", "100"),
            ("readTime", "10ms"),
            ("burst.sleepTime", "1s"),
            ("format.type", "structured"),
            ("format.options.id", "int"),
            ("format.options.name", "string"),
            ("operations", "create, update,delete"),
            ("collections.users.format.type", "raw"),
            ("collections.users.format.options.admin", "bool"),
            ("collections.users.operations", "snapshot"),
        ]))
        .expect("valid");
        assert_eq!(c.record_count, Some(100));
        assert_eq!(c.rate, Some(100.0));
        assert_eq!(
            c.burst,
            Some((Duration::from_secs(1), Duration::from_secs(1)))
        );
        assert_eq!(c.collections.len(), 2);
        assert_eq!(
            c.collections[0].format,
            Format::Structured(vec![
                ("id".into(), FieldType::Int),
                ("name".into(), FieldType::String)
            ])
        );
        assert_eq!(c.collections[0].operations.len(), 3);
        assert_eq!(c.collections[1].name.as_deref(), Some("users"));
        assert_eq!(c.collections[1].operations, vec![Operation::Snapshot]);
    }

    #[test]
    fn minus_one_means_no_limit_like_older_conduit() {
        let c = GeneratorConfig::parse(&settings(&[("recordCount", "-1")])).expect("valid");
        assert_eq!(c.record_count, None);
    }

    #[test]
    fn named_collections_alone_drop_the_default_one() {
        let c = GeneratorConfig::parse(&settings(&[("collections.a.format.type", "raw")]))
            .expect("valid");
        assert_eq!(c.collections.len(), 1);
        assert_eq!(c.collections[0].name.as_deref(), Some("a"));
    }

    #[test]
    fn every_problem_names_its_parameter() {
        let err = GeneratorConfig::parse(&settings(&[
            ("recordCount", "-5"),
            ("rate", "-1"),
            ("recordSize", "0"),
            ("format.type", "xml"),
            ("operations", "upsert"),
            ("collections.b.format.type", "file"),
            ("collections.c.format.options.x", "float"),
            ("collections.d.colour", "red"),
        ]))
        .expect_err("invalid");
        let names: Vec<&str> = err.0.iter().map(|v| v.parameter.as_str()).collect();
        for n in [
            "recordCount",
            "rate",
            "recordSize",
            "format.type",
            "collections.b.format.options.path",
            "collections.c.format.options.x",
            "collections.d.colour",
        ] {
            assert!(names.contains(&n), "{n} missing from {err}");
        }
    }
}
