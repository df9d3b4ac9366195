//! Processors: transform, filter or reject records between a pipeline's source and destinations.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::connector::Result;
use crate::record::Record;
use crate::spec::{Parameter, Settings};

/// What a processor did with one record.
#[derive(Debug, Clone, PartialEq)]
// Boxing `Keep` would cost an allocation per record on the hot path; the enum is moved, not stored.
#[allow(clippy::large_enum_variant)]
pub enum Processed {
    /// Pass this (possibly changed) record on.
    Keep(Record),
    /// Drop the record; it counts as acknowledged.
    Filtered,
    /// The record cannot be processed; it is nacked (dead-letter queue or pipeline stop).
    Failed(String),
}

/// A step of a pipeline's processor chain.
#[async_trait]
pub trait Processor: Send {
    /// Checks and takes the settings (validated against the specification, defaults filled).
    async fn configure(&mut self, settings: &Settings) -> Result<()>;

    /// Prepares to process records.
    async fn open(&mut self) -> Result<()> {
        Ok(())
    }

    /// Processes a batch: exactly one outcome per input record, in order. An `Err` stops the
    /// pipeline; a per-record problem is [`Processed::Failed`].
    async fn process(&mut self, records: Vec<Record>) -> Result<Vec<Processed>>;

    /// Releases resources. Idempotent.
    async fn teardown(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a processor says about itself.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProcessorSpecification {
    /// Unique name, e.g. `field.set`.
    pub name: String,
    /// One line saying what it does.
    pub summary: String,
    /// Longer text.
    pub description: String,
    /// Semantic version with a leading `v`.
    pub version: String,
    /// Who maintains it.
    pub author: String,
    /// Its parameters.
    pub parameters: BTreeMap<String, Parameter>,
}

/// A processor plugin: its specification and a factory.
pub trait ProcessorPlugin: Send + Sync {
    /// The specification.
    fn specification(&self) -> ProcessorSpecification;

    /// A new, unconfigured processor.
    fn new_processor(&self) -> Box<dyn Processor>;
}
