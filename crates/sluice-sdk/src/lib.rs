//! # sluice-sdk
//!
//! Everything needed to write a Sluice connector, and nothing of the engine: the [`Record`] and its
//! OpenCDC JSON form, the [`Source`] and [`Destination`] traits with their lifecycle, self-describing
//! [`Specification`]s with validated parameters, [`Processor`]s, the plugin [`Registry`], pull and push helpers
//! for writing sources ([`source_helpers`]), and the [`acceptance`] kit every connector passes.
//!
//! ## Health
//!
//! A connector that retries an unreachable service reports it through the [`HealthReporter`] its
//! host hands it with [`Source::set_health`] / [`Destination::set_health`] (called before `open`;
//! the default implementation ignores it, so connectors that never retry need nothing). Call
//! [`HealthReporter::degraded`] from every retry with a reason naming the connector and the error
//! (`"nats: connection refused, retrying in 800ms"`) and [`HealthReporter::healthy`] after the
//! first success; the engine shows the pipeline as degraded meanwhile. See [`health`].

pub mod acceptance;
pub mod connector;
pub mod health;
pub mod host;
pub mod opencdc;
pub mod processor;
pub mod record;
pub mod registry;
pub mod source_helpers;
pub mod spec;
pub mod watch_client;

pub use connector::{
    Acks, ConnectorError, Destination, Nack, Progress, ProgressUnit, ReadBatch, Source,
};
pub use health::{Health, HealthReporter};
pub use processor::{Processed, Processor, ProcessorPlugin, ProcessorSpecification};
pub use record::{Data, Metadata, Operation, Payload, Position, Record};
pub use registry::{Plugin, Registry, RegistryError};
pub use spec::{Parameter, ParameterType, Settings, Specification, Validation, ValidationErrors};
