//! The host's side of the connector contract: wrappers the engine puts around every connector so
//! the lifecycle holds whatever the connector's quality.
//!
//! [`GuardedSource`] and [`GuardedDestination`] refuse calls out of lifecycle order with
//! [`ConnectorError::StreamNotOpen`], pass the connector's own errors through unchanged, and check
//! what the protocol promises (acks to a source in read order; a destination never settles more
//! than was written). They add no await point of their own and change their state only after the
//! connector's call returns, so dropping any of their futures (a hard stop) is exactly as safe as
//! dropping the connector's.
//!
//! Phases: `open` → reads/writes and acks → `stop` → acks only (the engine keeps acking what it
//! processed until the last one, per the spec) → `teardown` → nothing. Re-opening is allowed until
//! teardown. Teardown is idempotent: the connector's `teardown` is called at most once.

use std::collections::VecDeque;

use async_trait::async_trait;

use crate::connector::{Acks, ConnectorError, Destination, Progress, ReadBatch, Result, Source};
use crate::health::HealthReporter;
use crate::record::{Position, Record};
use crate::spec::Settings;

/// Where a guarded connector is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Configured (or not), never opened.
    Idle,
    /// Open: reads/writes and acks accepted.
    Open,
    /// Stopped: acks accepted, reads/writes refused.
    Stopped,
    /// Torn down: every stream call refused.
    TornDown,
}

impl Phase {
    /// Reads and writes need an open stream.
    fn check_open(self) -> Result<()> {
        match self {
            Phase::Open => Ok(()),
            _ => Err(ConnectorError::StreamNotOpen),
        }
    }

    /// Acks are accepted while open and after stop, until teardown.
    fn check_ackable(self) -> Result<()> {
        match self {
            Phase::Open | Phase::Stopped => Ok(()),
            Phase::Idle | Phase::TornDown => Err(ConnectorError::StreamNotOpen),
        }
    }
}

/// Why a [`GuardedSource`] refused an ack without passing it to the connector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckRefusal {
    /// The position is not the oldest unacknowledged one read.
    #[error("position {position} acked out of order: the oldest unacknowledged read position is {expected}")]
    OutOfOrder {
        /// The position acked.
        position: Position,
        /// The position that had to come next.
        expected: Position,
    },
    /// Every read position is already acknowledged; this one was never read (or acked twice).
    #[error("position {position} was never read (or is already acknowledged)")]
    NeverRead {
        /// The position acked.
        position: Position,
    },
    /// An earlier ack failed; acks are refused from then on rather than risk reordering them.
    #[error("ack of position {position} refused: an earlier ack failed, so later acks are refused rather than reordered")]
    AfterFailure {
        /// The first position of the refused ack.
        position: Position,
    },
}

impl AckRefusal {
    /// The position the refusal is about.
    pub fn position(&self) -> &Position {
        match self {
            AckRefusal::OutOfOrder { position, .. }
            | AckRefusal::NeverRead { position }
            | AckRefusal::AfterFailure { position } => position,
        }
    }
}

impl From<AckRefusal> for ConnectorError {
    /// A refused ack is an [`ConnectorError::InvalidPosition`] whose reason is the refusal's text.
    fn from(r: AckRefusal) -> Self {
        ConnectorError::InvalidPosition {
            position: r.position().clone(),
            reason: r.to_string(),
        }
    }
}

/// A [`Source`] that enforces the lifecycle and in-order acks around another source.
///
/// Tracking costs one [`Position`] clone per record read (inline, no allocation, for positions up
/// to 32 bytes) into a reused queue, and one comparison per record acked; records themselves are
/// never cloned. After the connector reports end of stream, reads return an empty end-of-stream
/// batch without calling it (end of stream is sticky whatever the connector does).
pub struct GuardedSource {
    inner: Box<dyn Source>,
    phase: Phase,
    /// Positions read and not yet acknowledged, oldest first.
    unacked: VecDeque<Position>,
    /// Position of the last record read since `open`.
    last_read: Option<Position>,
    /// Set once an ack failed (refused or errored): every later ack is refused.
    ack_failed: bool,
    /// Set once the connector reported end of stream.
    ended: bool,
}

impl GuardedSource {
    /// Guards `inner`, which has not been called yet.
    pub fn new(inner: Box<dyn Source>) -> Self {
        GuardedSource {
            inner,
            phase: Phase::Idle,
            unacked: VecDeque::new(),
            last_read: None,
            ack_failed: false,
            ended: false,
        }
    }

    /// The guarded source, for callers that are done guarding.
    pub fn into_inner(self) -> Box<dyn Source> {
        self.inner
    }

    /// How many records were read and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Checks that acking `positions` keeps read order, without acking anything: they must be the
    /// oldest unacknowledged read positions, in order, and no earlier ack may have failed.
    pub fn check_ack(&self, positions: &[Position]) -> std::result::Result<(), AckRefusal> {
        let Some(first) = positions.first() else {
            return Ok(());
        };
        if self.ack_failed {
            return Err(AckRefusal::AfterFailure {
                position: first.clone(),
            });
        }
        let mut expected = self.unacked.iter();
        for position in positions {
            match expected.next() {
                Some(e) if e == position => {}
                Some(e) => {
                    return Err(AckRefusal::OutOfOrder {
                        position: position.clone(),
                        expected: e.clone(),
                    })
                }
                None => {
                    return Err(AckRefusal::NeverRead {
                        position: position.clone(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Forgets everything about the previous stream.
    fn reset_stream(&mut self) {
        self.unacked.clear();
        self.last_read = None;
        self.ack_failed = false;
        self.ended = false;
    }
}

#[async_trait]
impl Source for GuardedSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.inner.configure(settings).await
    }

    async fn on_created(&mut self, settings: &Settings) -> Result<()> {
        self.inner.on_created(settings).await
    }

    async fn on_updated(&mut self, before: &Settings, after: &Settings) -> Result<()> {
        self.inner.on_updated(before, after).await
    }

    async fn on_deleted(&mut self, settings: &Settings) -> Result<()> {
        self.inner.on_deleted(settings).await
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.inner.set_health(reporter);
    }

    /// Opens the connector; refused after teardown. Forgets the previous stream's positions.
    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        if self.phase == Phase::TornDown {
            return Err(ConnectorError::StreamNotOpen);
        }
        self.inner.open(position).await?;
        self.reset_stream();
        self.phase = Phase::Open;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        self.phase.check_open()?;
        if self.ended {
            return Ok(ReadBatch {
                records: Vec::new(),
                end_of_stream: true,
            });
        }
        let batch = self.inner.read(max).await?;
        self.unacked
            .extend(batch.records.iter().map(|r| r.position.clone()));
        if let Some(last) = batch.records.last() {
            self.last_read = Some(last.position.clone());
        }
        self.ended = batch.end_of_stream;
        Ok(batch)
    }

    /// Passes the ack on only if it keeps read order (see [`GuardedSource::check_ack`]); a refusal
    /// is a [`ConnectorError::InvalidPosition`]. After a refused or failed ack, later acks are
    /// refused.
    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        self.phase.check_ackable()?;
        if let Err(refusal) = self.check_ack(positions) {
            self.ack_failed = true;
            return Err(refusal.into());
        }
        if positions.is_empty() {
            return Ok(());
        }
        // Marked failed until the connector says otherwise, so a dropped ack future (which may
        // or may not have reached the connector) also stops later acks.
        self.ack_failed = true;
        self.inner.ack(positions).await?;
        self.ack_failed = false;
        self.unacked.drain(..positions.len());
        Ok(())
    }

    /// Stops the connector and returns its last position (logged if it differs from the last
    /// position the guard saw read).
    async fn stop(&mut self) -> Result<Option<Position>> {
        match self.phase {
            Phase::Open | Phase::Stopped => {}
            Phase::Idle | Phase::TornDown => return Err(ConnectorError::StreamNotOpen),
        }
        let last = self.inner.stop().await?;
        self.phase = Phase::Stopped;
        if last != self.last_read {
            tracing::warn!(
                returned = ?last,
                last_read = ?self.last_read,
                "source's stop returned a position other than the last one it read"
            );
        }
        Ok(last)
    }

    /// Tears the connector down once; later calls succeed without calling it.
    async fn teardown(&mut self) -> Result<()> {
        if self.phase == Phase::TornDown {
            return Ok(());
        }
        self.phase = Phase::TornDown;
        self.unacked.clear();
        self.inner.teardown().await
    }

    fn progress(&self) -> Option<Progress> {
        self.inner.progress()
    }
}

/// A [`Destination`] that enforces the lifecycle around another destination, and checks its acks
/// never settle more records than were written nor name a failed record outside what they settle.
pub struct GuardedDestination {
    inner: Box<dyn Destination>,
    phase: Phase,
    /// Records written and not yet settled.
    unsettled: usize,
}

impl GuardedDestination {
    /// Guards `inner`, which has not been called yet.
    pub fn new(inner: Box<dyn Destination>) -> Self {
        GuardedDestination {
            inner,
            phase: Phase::Idle,
            unsettled: 0,
        }
    }

    /// The guarded destination, for callers that are done guarding.
    pub fn into_inner(self) -> Box<dyn Destination> {
        self.inner
    }

    /// How many written records are not yet settled.
    pub fn unsettled(&self) -> usize {
        self.unsettled
    }
}

#[async_trait]
impl Destination for GuardedDestination {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.inner.configure(settings).await
    }

    async fn on_created(&mut self, settings: &Settings) -> Result<()> {
        self.inner.on_created(settings).await
    }

    async fn on_updated(&mut self, before: &Settings, after: &Settings) -> Result<()> {
        self.inner.on_updated(before, after).await
    }

    async fn on_deleted(&mut self, settings: &Settings) -> Result<()> {
        self.inner.on_deleted(settings).await
    }

    fn set_health(&mut self, reporter: HealthReporter) {
        self.inner.set_health(reporter);
    }

    /// Opens the connector; refused after teardown.
    async fn open(&mut self) -> Result<()> {
        if self.phase == Phase::TornDown {
            return Err(ConnectorError::StreamNotOpen);
        }
        self.inner.open().await?;
        self.unsettled = 0;
        self.phase = Phase::Open;
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<()> {
        self.phase.check_open()?;
        self.inner.write(records).await?;
        self.unsettled += records.len();
        Ok(())
    }

    /// Passes the connector's acks through after checking them against what was written.
    async fn ack(&mut self) -> Result<Acks> {
        self.phase.check_ackable()?;
        let acks = self.inner.ack().await?;
        if acks.count > self.unsettled {
            return Err(ConnectorError::system(format!(
                "destination settled {} records but only {} were written and unsettled",
                acks.count, self.unsettled
            )));
        }
        if let Some(nack) = acks.nacks.iter().find(|n| n.index >= acks.count) {
            return Err(ConnectorError::system(format!(
                "destination reported a failure at index {} of an ack settling only {} records",
                nack.index, acks.count
            )));
        }
        self.unsettled -= acks.count;
        Ok(acks)
    }

    async fn stop(&mut self, last: Option<&Position>) -> Result<()> {
        match self.phase {
            Phase::Open | Phase::Stopped => {}
            Phase::Idle | Phase::TornDown => return Err(ConnectorError::StreamNotOpen),
        }
        self.inner.stop(last).await?;
        self.phase = Phase::Stopped;
        Ok(())
    }

    /// Tears the connector down once; later calls succeed without calling it.
    async fn teardown(&mut self) -> Result<()> {
        if self.phase == Phase::TornDown {
            return Ok(());
        }
        self.phase = Phase::TornDown;
        self.inner.teardown().await
    }
}
