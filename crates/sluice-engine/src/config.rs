//! What a pipeline is made of, independent of any file format.

use std::time::Duration;

use sluice_sdk::Settings;

/// One connector of a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorConfig {
    /// Unique within the pipeline; keys the connector's checkpoint and last-run settings.
    pub id: String,
    /// Plugin name (`file`, `builtin:file`, `builtin:file@v0.1.0`).
    pub plugin: String,
    /// Settings, validated against the plugin's specification before use.
    pub settings: Settings,
}

/// One processor of a pipeline's chain.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessorConfig {
    /// Unique within the pipeline.
    pub id: String,
    /// Plugin name.
    pub plugin: String,
    /// Settings.
    pub settings: Settings,
    /// Optional condition (Conduit syntax) selecting the records the processor applies to.
    pub condition: Option<String>,
    /// Number of parallel workers requested.
    pub workers: Option<usize>,
}

/// Where nacked records go and when too many nacks stop the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct DlqConfig {
    /// Plugin of the dead-letter destination.
    pub plugin: String,
    /// Its settings.
    pub settings: Settings,
    /// How many of the most recent acks and nacks are watched; 0 disables the window (nacks never
    /// stop the pipeline, every nacked record goes to the dead-letter destination).
    pub window_size: usize,
    /// How many nacks the window may hold before the pipeline stops; 0 stops on the first nack.
    pub window_nack_threshold: usize,
}

impl Default for DlqConfig {
    /// Conduit's defaults: the log connector, window 1, threshold 0 (the first nack stops the pipeline).
    fn default() -> Self {
        DlqConfig {
            plugin: "builtin:log".into(),
            settings: Settings::new(),
            window_size: 1,
            window_nack_threshold: 0,
        }
    }
}

/// Tuning knobs; the defaults suit most pipelines.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineOptions {
    /// Most records read from the source per call.
    pub batch_size: usize,
    /// Most batches read but not yet acknowledged to the source (bounds memory).
    pub max_in_flight_batches: usize,
    /// Longest a written record waits before its destination is asked to settle it.
    pub ack_interval: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            batch_size: 1024,
            max_in_flight_batches: 64,
            ack_interval: Duration::from_millis(50),
        }
    }
}

/// A whole pipeline: one source, a processor chain, one or more destinations, a dead-letter queue.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// Unique id; keys the pipeline's state in the store.
    pub id: String,
    /// The source.
    pub source: ConnectorConfig,
    /// The destinations (at least one).
    pub destinations: Vec<ConnectorConfig>,
    /// The processor chain, applied in order.
    pub processors: Vec<ProcessorConfig>,
    /// The dead-letter queue.
    pub dlq: DlqConfig,
    /// Tuning.
    pub options: PipelineOptions,
}
