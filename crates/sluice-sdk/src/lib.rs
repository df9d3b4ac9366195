//! # sluice-sdk
//!
//! Everything needed to write a Sluice connector, and nothing of the engine: the [`Record`] and its
//! OpenCDC JSON form, the [`Source`] and [`Destination`] traits with their lifecycle, self-describing
//! [`Specification`]s with validated parameters, [`Processor`]s, the plugin [`Registry`], pull and push helpers
//! for writing sources ([`source_helpers`]), and the [`acceptance`] kit every connector passes.

pub mod acceptance;
pub mod connector;
pub mod host;
pub mod opencdc;
pub mod processor;
pub mod record;
pub mod registry;
pub mod source_helpers;
pub mod spec;

pub use connector::{
    Acks, ConnectorError, Destination, Nack, Progress, ProgressUnit, ReadBatch, Source,
};
pub use processor::{Processed, Processor, ProcessorPlugin, ProcessorSpecification};
pub use record::{Data, Metadata, Operation, Payload, Position, Record};
pub use registry::{Plugin, Registry, RegistryError};
pub use spec::{Parameter, ParameterType, Settings, Specification, Validation, ValidationErrors};
