//! # sluice-engine
//!
//! Pipelines: one source, a chain of processors, one or more destinations and a dead-letter queue.
//! The engine owns the delivery guarantees: records travel in bounded batches, each destination
//! settles what it was given, a batch completes when every destination settled it (nacked records go
//! to the dead-letter queue within the nack window, or stop the pipeline), the last completed
//! position is saved durably in the state store *before* the source is acked, and a restarted
//! pipeline resumes from that checkpoint: at-least-once delivery, nothing acknowledged is lost.

mod checkpoint;
pub mod config;
mod engine;
pub mod error;
pub mod metrics;
pub mod nack_window;
mod runtime;

pub use checkpoint::{ConnectorRecord, PipelineState as StoredPipelineState};
pub use config::{ConnectorConfig, DlqConfig, PipelineConfig, PipelineOptions, ProcessorConfig};
pub use engine::{Engine, PipelineController, PipelineHandle, PipelineSummary};
pub use error::{ConfigProblem, EngineError};
pub use metrics::{MetricsSnapshot, PipelineMetrics, PipelineState};
