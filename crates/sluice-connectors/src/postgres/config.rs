//! The connector's parameters (named like Conduit's PostgreSQL connector where they overlap) and
//! the typed settings read from them.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_sdk::spec::{validate_settings, Config, Violation};
use sluice_sdk::{Parameter, ParameterType, Settings, Validation, ValidationErrors};

use super::connect::parse_url;
use super::error::Side;

/// Connection string (source and destination).
pub const URL: &str = super::connect::URL;
/// Source: comma-separated tables to read.
pub const TABLES: &str = "tables";
/// Source: one table (Conduit's deprecated spelling of `tables`); destination: the target table.
pub const TABLE: &str = "table";
/// Source: `auto`, `logrepl` or `long_polling`.
pub const CDC_MODE: &str = "cdcMode";
/// Source: replication slot name.
pub const SLOT_NAME: &str = "logrepl.slotName";
/// Source: publication name.
pub const PUBLICATION_NAME: &str = "logrepl.publicationName";
/// Source: drop the slot and publication when the connector is deleted.
pub const AUTO_CLEANUP: &str = "logrepl.autoCleanup";
/// Source: `initial` or `never`.
pub const SNAPSHOT_MODE: &str = "snapshotMode";
/// Source: rows per snapshot query.
pub const FETCH_SIZE: &str = "snapshot.fetchSize";
/// Source, polling mode: the increasing column.
pub const ORDERING_COLUMN: &str = "orderingColumn";
/// Source, polling mode: the longest pause between polls when nothing changes.
pub const POLLING_PERIOD: &str = "pollingPeriod";
/// Destination: key column(s) for records whose key is not structured.
pub const KEY: &str = "key";

/// The default destination table: the record's collection, as Conduit writes it.
pub const TABLE_FROM_COLLECTION: &str = "{{ index .Metadata \"opencdc.collection\" }}";

const SLOT_NAME_RULE: &str = "^[a-z0-9_]{1,63}$";

/// How the source follows changes after the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdcMode {
    /// Logical replication when the server allows it, else an error telling what to set.
    Auto,
    /// Logical replication with pgoutput.
    Logrepl,
    /// Polling by an increasing column.
    LongPolling,
}

/// Whether the source reads the tables' existing rows first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Read every existing row first (operation `snapshot`).
    Initial,
    /// Only changes from now on.
    Never,
}

/// The source's settings.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Parsed connection string.
    pub pg: tokio_postgres::Config,
    /// Tables as written (SQL names, possibly schema-qualified).
    pub tables: Vec<String>,
    /// How changes are followed.
    pub cdc_mode: CdcMode,
    /// Replication slot.
    pub slot_name: String,
    /// Publication.
    pub publication_name: String,
    /// Drop slot and publication in `on_deleted`.
    pub auto_cleanup: bool,
    /// Snapshot or not.
    pub snapshot_mode: SnapshotMode,
    /// Rows per snapshot or polling query.
    pub fetch_size: usize,
    /// Polling mode's increasing column.
    pub ordering_column: Option<String>,
    /// Polling mode's longest pause.
    pub polling_period: Duration,
}

impl SourceConfig {
    /// Validates `settings` against the source specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&source_params(), settings)?;
        let c = Config::new(&resolved);
        let url = c.required_str(URL)?;
        let pg = parse_url(Side::Source, url).map_err(|e| violation(URL, &strip(&e, URL)))?;
        let mut tables: Vec<String> = Vec::new();
        for t in c.str(TABLES).into_iter().chain(c.str(TABLE)) {
            for name in t.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !tables.iter().any(|x| x == name) {
                    tables.push(name.to_string());
                }
            }
        }
        if tables.is_empty() {
            return Err(violation(
                TABLES,
                "is required: the comma-separated tables to read",
            ));
        }
        if tables.iter().any(|t| t == "*") {
            return Err(violation(
                TABLES,
                "\"*\" is not supported: name the tables to read",
            ));
        }
        let cdc_mode = match c.str(CDC_MODE).unwrap_or("auto") {
            "logrepl" => CdcMode::Logrepl,
            "long_polling" => CdcMode::LongPolling,
            "auto" => CdcMode::Auto,
            other => return Err(violation(CDC_MODE, &format!("unknown mode {other:?}"))),
        };
        let ordering_column = c.str(ORDERING_COLUMN).map(str::to_string);
        if cdc_mode == CdcMode::LongPolling && ordering_column.is_none() {
            return Err(violation(
                ORDERING_COLUMN,
                "is required with cdcMode long_polling: an increasing column (such as a serial \
                 id) to poll by",
            ));
        }
        let snapshot_mode = match c.str(SNAPSHOT_MODE).unwrap_or("initial") {
            "initial" => SnapshotMode::Initial,
            "never" => SnapshotMode::Never,
            other => return Err(violation(SNAPSHOT_MODE, &format!("unknown mode {other:?}"))),
        };
        let fetch_size = c.u64(FETCH_SIZE)?.unwrap_or(10_000);
        let polling_period = c
            .duration(POLLING_PERIOD)?
            .unwrap_or(Duration::from_secs(1));
        if polling_period.is_zero() {
            return Err(violation(POLLING_PERIOD, "must be greater than zero"));
        }
        Ok(SourceConfig {
            pg,
            tables,
            cdc_mode,
            slot_name: c.str(SLOT_NAME).unwrap_or("sluiceslot").to_string(),
            publication_name: c.str(PUBLICATION_NAME).unwrap_or("sluicepub").to_string(),
            auto_cleanup: c.bool(AUTO_CLEANUP)?.unwrap_or(true),
            snapshot_mode,
            fetch_size: usize::try_from(fetch_size.max(1)).unwrap_or(10_000),
            ordering_column,
            polling_period,
        })
    }
}

/// Where the destination writes a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableTarget {
    /// The table named by this metadata key of each record (`opencdc.collection` by default).
    FromMetadata(String),
    /// Always this table.
    Fixed(String),
}

/// The destination's settings.
#[derive(Clone, Debug)]
pub struct DestinationConfig {
    /// Parsed connection string.
    pub pg: tokio_postgres::Config,
    /// Target table.
    pub table: TableTarget,
    /// Key columns for records whose key is raw or missing.
    pub key: Vec<String>,
}

impl DestinationConfig {
    /// Validates `settings` against the destination specification and reads them.
    pub fn from_settings(settings: &Settings) -> Result<Self, ValidationErrors> {
        let resolved = validate_settings(&destination_params(), settings)?;
        let c = Config::new(&resolved);
        let url = c.required_str(URL)?;
        let pg = parse_url(Side::Destination, url).map_err(|e| violation(URL, &strip(&e, URL)))?;
        let table = parse_table(c.str(TABLE).unwrap_or(TABLE_FROM_COLLECTION))
            .map_err(|m| violation(TABLE, &m))?;
        let key = c
            .str(KEY)
            .map(|k| {
                k.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(DestinationConfig { pg, table, key })
    }
}

/// Reads the `table` setting: a name, or `{{ index .Metadata "KEY" }}`.
fn parse_table(text: &str) -> Result<TableTarget, String> {
    let text = text.trim();
    if !text.contains("{{") {
        return Ok(TableTarget::Fixed(text.to_string()));
    }
    let inner = text
        .strip_prefix("{{")
        .and_then(|t| t.strip_suffix("}}"))
        .map(str::trim);
    let words: Vec<&str> = inner
        .map(|i| i.split_whitespace().collect())
        .unwrap_or_default();
    match words.as_slice() {
        ["index", ".Metadata", key]
            if key.len() >= 2 && key.starts_with('"') && key.ends_with('"') =>
        {
            Ok(TableTarget::FromMetadata(key[1..key.len() - 1].to_string()))
        }
        _ => Err(format!(
            "{text:?}: the only template supported is {{{{ index .Metadata \"KEY\" }}}} (a \
             metadata value); otherwise give a table name"
        )),
    }
}

/// The message of a `url` error without its `postgres side: url: ` prefix (the violation names
/// the parameter itself).
fn strip(e: &super::error::PgError, setting: &str) -> String {
    let text = e.to_string();
    let marker = format!("{setting}: ");
    match text.find(&marker) {
        Some(i) => text[i + marker.len()..].to_string(),
        None => text,
    }
}

fn violation(name: &str, message: &str) -> ValidationErrors {
    ValidationErrors(vec![Violation {
        parameter: name.to_string(),
        message: message.to_string(),
    }])
}

fn url_param() -> Parameter {
    Parameter::new(
        ParameterType::String,
        "Connection string: postgres://USER:PASSWORD@HOST:PORT/DB (or key=value pairs). TLS is \
         not supported; the password never appears in messages.",
    )
    .required()
}

/// The source side's parameters.
pub fn source_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    p.insert(URL.into(), url_param());
    p.insert(
        TABLES.into(),
        Parameter::new(
            ParameterType::String,
            "Comma-separated tables to read (`users`, `app.orders`, `\"MixedCase\"`). Required \
             (or its older spelling `table`).",
        )
        .default_value(""),
    );
    p.insert(
        TABLE.into(),
        Parameter::new(ParameterType::String, "Deprecated spelling of `tables`.").default_value(""),
    );
    p.insert(
        CDC_MODE.into(),
        Parameter::new(
            ParameterType::String,
            "How changes are followed after the snapshot: `logrepl` (logical replication with \
             pgoutput; needs wal_level = logical), `long_polling` (polls by `orderingColumn`; \
             inserts only), `auto` (logrepl when the server has wal_level = logical, else \
             long_polling if `orderingColumn` is set).",
        )
        .default_value("auto")
        .validate(Validation::Inclusion(vec![
            "auto".into(),
            "logrepl".into(),
            "long_polling".into(),
        ])),
    );
    p.insert(
        SLOT_NAME.into(),
        Parameter::new(
            ParameterType::String,
            "Logical replication slot (created if missing). It keeps the server's WAL until \
             Sluice acknowledges it: drop it when the pipeline is gone.",
        )
        .default_value("sluiceslot")
        .validate(Validation::Regex(SLOT_NAME_RULE.into())),
    );
    p.insert(
        PUBLICATION_NAME.into(),
        Parameter::new(
            ParameterType::String,
            "Publication (created for the tables if missing; tables an existing one lacks are \
             added to it).",
        )
        .default_value("sluicepub"),
    );
    p.insert(
        AUTO_CLEANUP.into(),
        Parameter::new(
            ParameterType::Bool,
            "Drop the slot and the publication when the connector is deleted from its pipeline.",
        )
        .default_value("true"),
    );
    p.insert(
        SNAPSHOT_MODE.into(),
        Parameter::new(
            ParameterType::String,
            "`initial`: read every existing row first (operation `snapshot`); `never`: only \
             changes from now on.",
        )
        .default_value("initial")
        .validate(Validation::Inclusion(vec![
            "initial".into(),
            "never".into(),
        ])),
    );
    p.insert(
        FETCH_SIZE.into(),
        Parameter::new(
            ParameterType::Int,
            "Rows fetched per snapshot (or polling) query.",
        )
        .default_value("10000")
        .validate(Validation::GreaterThan(0.0)),
    );
    p.insert(
        ORDERING_COLUMN.into(),
        Parameter::new(
            ParameterType::String,
            "With `cdcMode: long_polling`: a strictly increasing column (a serial id) present in \
             every table; rows are read in its order and the position is its last value.",
        )
        .default_value(""),
    );
    p.insert(
        POLLING_PERIOD.into(),
        Parameter::new(
            ParameterType::Duration,
            "With `cdcMode: long_polling`: the longest pause between polls while nothing changes \
             (polls back off from 10ms to this).",
        )
        .default_value("1s"),
    );
    p
}

/// The destination side's parameters.
pub fn destination_params() -> BTreeMap<String, Parameter> {
    let mut p = BTreeMap::new();
    p.insert(URL.into(), url_param());
    p.insert(
        TABLE.into(),
        Parameter::new(
            ParameterType::String,
            "Target table, or `{{ index .Metadata \"KEY\" }}` to take it from each record's \
             metadata (by default its `opencdc.collection`).",
        )
        .default_value(TABLE_FROM_COLLECTION),
    );
    p.insert(
        KEY.into(),
        Parameter::new(
            ParameterType::String,
            "Key column(s), comma-separated, for records whose key is raw bytes or missing (a \
             raw key fills the single key column; a missing one is taken from the payload). \
             Structured keys name their columns themselves.",
        )
        .default_value(""),
    );
    p
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
    fn source_defaults_and_table_lists() {
        let s = settings(&[
            ("url", "postgres://u@127.0.0.1/db"),
            ("tables", "a, app.b ,a"),
            ("table", "c"),
        ]);
        let c = SourceConfig::from_settings(&s).expect("valid");
        assert_eq!(c.tables, vec!["a", "app.b", "c"]);
        assert_eq!(c.cdc_mode, CdcMode::Auto);
        assert_eq!(c.snapshot_mode, SnapshotMode::Initial);
        assert_eq!(c.slot_name, "sluiceslot");
        assert_eq!(c.publication_name, "sluicepub");
        assert!(c.auto_cleanup);
        assert_eq!(c.fetch_size, 10_000);
    }

    #[test]
    fn source_problems_name_the_parameter() {
        let no_tables = settings(&[("url", "postgres://u@h/db")]);
        let e = SourceConfig::from_settings(&no_tables).expect_err("no tables");
        assert!(e.to_string().contains("\"tables\""), "{e}");
        let polling = settings(&[
            ("url", "postgres://u@h/db"),
            ("tables", "t"),
            ("cdcMode", "long_polling"),
        ]);
        let e = SourceConfig::from_settings(&polling).expect_err("no ordering column");
        assert!(e.to_string().contains("orderingColumn"), "{e}");
        let bad_slot = settings(&[
            ("url", "postgres://u@h/db"),
            ("tables", "t"),
            ("logrepl.slotName", "Bad-Name"),
        ]);
        let e = SourceConfig::from_settings(&bad_slot).expect_err("bad slot");
        assert!(e.to_string().contains("logrepl.slotName"), "{e}");
        let bad_url = settings(&[("url", "postgres://h/db"), ("tables", "t")]);
        let e = SourceConfig::from_settings(&bad_url).expect_err("no user");
        assert!(e.to_string().contains("\"url\""), "{e}");
    }

    #[test]
    fn destination_table_templates() {
        let s = settings(&[("url", "postgres://u@h/db")]);
        let c = DestinationConfig::from_settings(&s).expect("valid");
        assert_eq!(
            c.table,
            TableTarget::FromMetadata("opencdc.collection".into())
        );
        assert!(c.key.is_empty());
        let s = settings(&[
            ("url", "postgres://u@h/db"),
            ("table", "t"),
            ("key", "a, b"),
        ]);
        let c = DestinationConfig::from_settings(&s).expect("valid");
        assert_eq!(c.table, TableTarget::Fixed("t".into()));
        assert_eq!(c.key, vec!["a", "b"]);
        let s = settings(&[("url", "postgres://u@h/db"), ("table", "{{ .Foo }}")]);
        let e = DestinationConfig::from_settings(&s).expect_err("template");
        assert!(e.to_string().contains("\"table\""), "{e}");
    }
}
