//! The pipeline file as written: Conduit's pipeline configuration format, version 2.x.
//!
//! Every struct denies unknown keys, so a misspelt key is reported (with its line and column by
//! the YAML parser) instead of being silently ignored. Scalars deserialized as strings keep their
//! text exactly as written, so `count: 10` or `fsync: true` in `settings` become `"10"` and
//! `"true"`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Just the `version` key of a document, read before the rest so that an unsupported version is
/// reported as such rather than as the errors its different layout would cause.
#[derive(Debug, Deserialize)]
pub struct VersionProbe {
    /// The `version` key, as written.
    #[serde(default)]
    pub version: Option<String>,
}

/// One YAML document of a pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDoc {
    /// Format version, already read and checked through [`VersionProbe`].
    #[serde(default, rename = "version")]
    pub _version: Option<serde::de::IgnoredAny>,
    /// The pipelines, provisioned in order.
    #[serde(default)]
    pub pipelines: Option<Vec<PipelineDoc>>,
}

/// Whether a pipeline runs when the file is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Run it.
    Running,
    /// Check it but do not run it (Conduit's default).
    #[default]
    Stopped,
}

/// One pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineDoc {
    /// Unique id; keys the pipeline's state.
    pub id: String,
    /// `running` or `stopped` (the default).
    #[serde(default)]
    pub status: Option<Status>,
    /// Human-readable name (defaults to the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Human-readable description.
    #[serde(default)]
    pub description: Option<String>,
    /// Sources and destinations.
    #[serde(default)]
    pub connectors: Option<Vec<ConnectorDoc>>,
    /// Pipeline-level processors, run in order after source processors.
    #[serde(default)]
    pub processors: Option<Vec<ProcessorDoc>>,
    /// Dead-letter queue.
    #[serde(default, rename = "dead-letter-queue", alias = "dlq")]
    pub dead_letter_queue: Option<DlqDoc>,
}

/// Which end of a pipeline a connector is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorType {
    /// Reads records.
    Source,
    /// Writes records.
    Destination,
}

/// One connector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorDoc {
    /// Unique within the pipeline.
    pub id: String,
    /// `source` or `destination`.
    #[serde(rename = "type")]
    pub kind: ConnectorType,
    /// Plugin reference (`builtin:file`, `file`, `builtin:file@v0.1.0`).
    pub plugin: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// Plugin settings.
    #[serde(default)]
    pub settings: Option<BTreeMap<String, String>>,
    /// Processors of this connector.
    #[serde(default)]
    pub processors: Option<Vec<ProcessorDoc>>,
}

/// One processor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorDoc {
    /// Unique within the pipeline.
    pub id: String,
    /// Processor plugin (version 2.2).
    #[serde(default)]
    pub plugin: Option<String>,
    /// Processor plugin as written before version 2.2 (deprecated).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Condition selecting the records the processor applies to.
    #[serde(default)]
    pub condition: Option<String>,
    /// Plugin settings.
    #[serde(default)]
    pub settings: Option<BTreeMap<String, String>>,
    /// Parallel workers (at least 1).
    #[serde(default)]
    pub workers: Option<i64>,
}

/// The dead-letter queue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqDoc {
    /// Destination plugin for dead letters (default `builtin:log`).
    #[serde(default)]
    pub plugin: Option<String>,
    /// Its settings.
    #[serde(default)]
    pub settings: Option<BTreeMap<String, String>>,
    /// Nack window size (default 1; 0 disables the window).
    #[serde(default, rename = "window-size")]
    pub window_size: Option<i64>,
    /// Nacks tolerated in the window (default 0: the first nack stops the pipeline).
    #[serde(default, rename = "window-nack-threshold")]
    pub window_nack_threshold: Option<i64>,
}
