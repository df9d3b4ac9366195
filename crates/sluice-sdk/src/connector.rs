//! The connector contract: sources and destinations with their full lifecycle.
//!
//! Lifecycle of a source: `configure` → (`on_created` | `on_updated` | neither) → `open` →
//! `read`… `ack`… → `stop` → `teardown`. `on_deleted` is the only call when a connector was removed
//! from its pipeline. A destination is the same with `write`/`ack` in place of `read`/`ack`.
//! Hard stops drop the futures: every method must be cancel-safe in the sense that dropping its
//! future never acknowledges or loses data that was not yet returned or settled.

use async_trait::async_trait;

use crate::health::HealthReporter;
use crate::record::{Position, Record};
use crate::spec::{Settings, ValidationErrors};

/// Errors a connector reports. Each variant says who is at fault, so the engine can decide whether
/// to retry, dead-letter or stop.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The settings broke one or more rules; every violation is listed.
    #[error("invalid settings: {0}")]
    InvalidSettings(#[from] ValidationErrors),
    /// `read` or `write` was called before `open` or after `stop`, or `ack` before `open` or after
    /// `teardown` (acks keep flowing after `stop` until everything read is acknowledged).
    #[error("stream not open")]
    StreamNotOpen,
    /// A position handed to `open` or `ack` is not one this connector produced.
    #[error("invalid position {position}: {reason}")]
    InvalidPosition {
        /// The offending position.
        position: Position,
        /// Why it cannot be used.
        reason: String,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the connector was doing (names the file, host, ...).
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The external system failed; `transient` says whether retrying may help.
    #[error("{message}")]
    System {
        /// What failed.
        message: String,
        /// True if the same call may succeed later.
        transient: bool,
    },
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl ConnectorError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ConnectorError::Io {
            context: context.into(),
            source,
        }
    }

    /// A permanent failure of the external system.
    pub fn system(message: impl Into<String>) -> Self {
        ConnectorError::System {
            message: message.into(),
            transient: false,
        }
    }
}

/// Shorthand for connector results.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// What one `read` returned.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// The records read, in order (possibly none, when the read timed out).
    pub records: Vec<Record>,
    /// True once the stream has ended: no later read returns records. Sticky.
    pub end_of_stream: bool,
}

/// How far a source has got, for progress display.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Units done (records or bytes, see `unit`).
    pub done: u64,
    /// Units in total, when known (a finite generator, a file's size).
    pub total: Option<u64>,
    /// What the numbers count.
    pub unit: ProgressUnit,
}

/// The unit of a [`Progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressUnit {
    /// Records.
    Records,
    /// Bytes of input.
    Bytes,
}

/// A connector that reads records from an external system.
#[async_trait]
pub trait Source: Send {
    /// Checks and takes the settings (already validated against the specification, defaults filled).
    async fn configure(&mut self, settings: &Settings) -> Result<()>;

    /// Called after `configure` the first time this connector runs.
    async fn on_created(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    /// Called after `configure` when the settings changed since the last run.
    async fn on_updated(&mut self, _before: &Settings, _after: &Settings) -> Result<()> {
        Ok(())
    }

    /// The only call made when the connector was removed from its pipeline.
    async fn on_deleted(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    /// Takes the reporter through which this source tells the host it is degraded (retrying an
    /// unreachable service) or healthy again. Called by the host before `open`; the default
    /// ignores it. See [`crate::health`].
    fn set_health(&mut self, _reporter: HealthReporter) {}

    /// Opens the stream at `position` (resume right after it), or at the beginning if none.
    async fn open(&mut self, position: Option<&Position>) -> Result<()>;

    /// Reads up to `max` records. Returns within a bounded time even when nothing arrives (then
    /// with no records), so the caller can deliver acks and notice a stop. Cancel-safe: records not
    /// returned by a dropped call are returned by a later one.
    async fn read(&mut self, max: usize) -> Result<ReadBatch>;

    /// Acknowledges records, in the order they were read: they are safely processed and their
    /// resources can be released (a broker ack, a replication slot advance).
    async fn ack(&mut self, positions: &[Position]) -> Result<()>;

    /// Stops producing records and returns the position of the last record returned by `read`.
    async fn stop(&mut self) -> Result<Option<Position>>;

    /// Releases every resource. Idempotent, and valid without `open`.
    async fn teardown(&mut self) -> Result<()>;

    /// How far the source has got, if it knows.
    fn progress(&self) -> Option<Progress> {
        None
    }
}

/// A destination's report that records written earlier are settled.
#[derive(Debug, Default, PartialEq)]
pub struct Acks {
    /// How many of the oldest unsettled records are now settled (written, or failed in `nacks`).
    pub count: usize,
    /// The settled records that failed, by index within those `count` records, with the reason.
    pub nacks: Vec<Nack>,
}

/// One record a destination could not write.
#[derive(Debug, Clone, PartialEq)]
pub struct Nack {
    /// Index of the record among the records this `Acks` settles.
    pub index: usize,
    /// Why it failed.
    pub reason: String,
}

/// A connector that writes records to an external system.
#[async_trait]
pub trait Destination: Send {
    /// Checks and takes the settings (already validated against the specification, defaults filled).
    async fn configure(&mut self, settings: &Settings) -> Result<()>;

    /// Called after `configure` the first time this connector runs.
    async fn on_created(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    /// Called after `configure` when the settings changed since the last run.
    async fn on_updated(&mut self, _before: &Settings, _after: &Settings) -> Result<()> {
        Ok(())
    }

    /// The only call made when the connector was removed from its pipeline.
    async fn on_deleted(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    /// Takes the reporter through which this destination tells the host it is degraded (retrying
    /// an unreachable service) or healthy again. Called by the host before `open`; the default
    /// ignores it. See [`crate::health`].
    fn set_health(&mut self, _reporter: HealthReporter) {}

    /// Opens the stream.
    async fn open(&mut self) -> Result<()>;

    /// Accepts records; returns once they are *received* (possibly only buffered).
    async fn write(&mut self, records: &[Record]) -> Result<()>;

    /// Settles every record written so far — makes it durable per the connector's policy — and
    /// reports, in write order, which of them failed. Records reported here are never reported again.
    async fn ack(&mut self) -> Result<Acks>;

    /// Flushes caches before shutdown; `last` is the position of the last record written.
    async fn stop(&mut self, _last: Option<&Position>) -> Result<()> {
        Ok(())
    }

    /// Releases every resource. Idempotent, and valid without `open`.
    async fn teardown(&mut self) -> Result<()>;
}
