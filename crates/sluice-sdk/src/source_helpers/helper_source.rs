//! A complete [`Source`] built from an [`Opener`] that hands out pull or push instances.

use async_trait::async_trait;

use super::instance::SourceInstance;
use super::progress::ProgressReport;
use crate::connector::{ConnectorError, Progress, ReadBatch, Result, Source};
use crate::record::Position;
use crate::spec::Settings;

/// The connector-specific part of a [`HelperSource`]: take settings, and build a
/// [`SourceInstance`] that produces the records after a position. The other methods default to
/// doing nothing.
#[async_trait]
pub trait Opener: Send {
    /// Checks and takes the settings (see [`Source::configure`]).
    async fn configure(&mut self, settings: &Settings) -> Result<()>;

    /// See [`Source::on_created`].
    async fn on_created(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    /// See [`Source::on_updated`].
    async fn on_updated(&mut self, _before: &Settings, _after: &Settings) -> Result<()> {
        Ok(())
    }

    /// See [`Source::on_deleted`].
    async fn on_deleted(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    /// See [`Source::set_health`]. Default: ignored.
    fn set_health(&mut self, _reporter: crate::health::HealthReporter) {}

    /// An instance producing the records right after `position` (from the beginning if none).
    async fn open(&mut self, position: Option<&Position>) -> Result<SourceInstance>;

    /// Acknowledges records, in read order (a broker ack, a slot advance). Default: nothing to
    /// release.
    async fn ack(&mut self, _positions: &[Position]) -> Result<()> {
        Ok(())
    }

    /// Releases resources held outside instances (a connection pool). Default: none.
    async fn teardown(&mut self) -> Result<()> {
        Ok(())
    }
}

/// An [`Opener`] made of one function from start position to instance; it takes no settings.
/// Built by [`opener_fn`].
pub struct FnOpener<F>(F);

/// Wraps `open` as an [`Opener`], for sources that need no settings and no acks (generators,
/// tests).
pub fn opener_fn<F>(open: F) -> FnOpener<F>
where
    F: FnMut(Option<&Position>) -> Result<SourceInstance> + Send,
{
    FnOpener(open)
}

#[async_trait]
impl<F> Opener for FnOpener<F>
where
    F: FnMut(Option<&Position>) -> Result<SourceInstance> + Send,
{
    async fn configure(&mut self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<SourceInstance> {
        (self.0)(position)
    }
}

/// Where a [`HelperSource`] is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not opened yet.
    Idle,
    /// Reading.
    Open,
    /// Stopped: no more reads, acks still accepted.
    Stopped,
    /// Torn down: nothing accepted until opened again.
    TornDown,
}

/// A [`Source`] whose records come from the [`SourceInstance`] its [`Opener`] builds.
///
/// `open(position)` asks the opener for a fresh instance (closing any previous one); `read(max)`
/// is the instance's `next_batch_up_to(max)` (cancel-safe: records collected by a dropped read stay
/// in the instance); `ack` goes to the opener; `stop` closes the instance and returns the position
/// of the last record `read` returned; `teardown` closes everything (idempotent). Reads are
/// refused with [`ConnectorError::StreamNotOpen`] unless open; acks are accepted while open and
/// after `stop` (the engine keeps acking what it processed) until `teardown`. An error ends the
/// instance's stream (see [`source_helpers`](super)); re-opening starts a new one.
pub struct HelperSource<O> {
    opener: O,
    instance: Option<SourceInstance>,
    phase: Phase,
    last_position: Option<Position>,
}

impl<O: Opener> HelperSource<O> {
    /// A source, not yet opened, using `opener`.
    pub fn new(opener: O) -> Self {
        HelperSource {
            opener,
            instance: None,
            phase: Phase::Idle,
            last_position: None,
        }
    }

    /// The current instance's progress callback answer, text included (the [`Source::progress`]
    /// mapping keeps only the fraction).
    pub fn progress_report(&self) -> Option<ProgressReport> {
        self.instance.as_ref()?.progress()
    }

    /// Closes the current instance, if any, keeping it for progress reports.
    fn close_instance(&mut self) {
        if let Some(instance) = self.instance.as_mut() {
            instance.close();
        }
    }
}

#[async_trait]
impl<O: Opener> Source for HelperSource<O> {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.opener.configure(settings).await
    }

    async fn on_created(&mut self, settings: &Settings) -> Result<()> {
        self.opener.on_created(settings).await
    }

    async fn on_updated(&mut self, before: &Settings, after: &Settings) -> Result<()> {
        self.opener.on_updated(before, after).await
    }

    async fn on_deleted(&mut self, settings: &Settings) -> Result<()> {
        self.opener.on_deleted(settings).await
    }

    fn set_health(&mut self, reporter: crate::health::HealthReporter) {
        self.opener.set_health(reporter);
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        self.close_instance();
        self.instance = None;
        self.phase = Phase::Idle;
        self.last_position = None;
        self.instance = Some(self.opener.open(position).await?);
        self.phase = Phase::Open;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        let instance = match (self.phase, self.instance.as_mut()) {
            (Phase::Open, Some(instance)) => instance,
            _ => return Err(ConnectorError::StreamNotOpen),
        };
        let batch = instance.next_batch_up_to(max).await?;
        if let Some(last) = batch.records.last() {
            self.last_position = Some(last.position.clone());
        }
        let end_of_stream = batch.is_end_of_stream();
        Ok(ReadBatch {
            records: batch.records,
            end_of_stream,
        })
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        match self.phase {
            Phase::Open | Phase::Stopped => self.opener.ack(positions).await,
            Phase::Idle | Phase::TornDown => Err(ConnectorError::StreamNotOpen),
        }
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        match self.phase {
            Phase::Open | Phase::Stopped => {
                self.close_instance();
                self.phase = Phase::Stopped;
                Ok(self.last_position.clone())
            }
            Phase::Idle | Phase::TornDown => Err(ConnectorError::StreamNotOpen),
        }
    }

    async fn teardown(&mut self) -> Result<()> {
        if self.phase == Phase::TornDown {
            return Ok(());
        }
        self.phase = Phase::TornDown;
        self.instance = None;
        self.opener.teardown().await
    }

    fn progress(&self) -> Option<Progress> {
        self.progress_report()?.to_progress()
    }
}
