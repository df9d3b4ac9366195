//! The generator's [`Source`]: record numbers as positions, a count honoured across restarts,
//! pacing by sleeping (never spinning), and batches built in one go.

use std::time::Duration;

use async_trait::async_trait;
use sluice_sdk::connector::Result;
use sluice_sdk::{ConnectorError, Position, Progress, ProgressUnit, ReadBatch, Settings, Source};
use tokio::time::{sleep_until, Instant};

use super::config::GeneratorConfig;
use super::pace::{Allowance, Pace};
use super::payload::RecordFactory;

/// The longest a `read` waits for its next record before returning an empty batch, so the caller
/// can deliver acks and notice a stop.
pub const MAX_IDLE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open,
    Stopped,
}

/// Generates records; see the [module documentation](super).
pub struct GeneratorSource {
    config: Option<GeneratorConfig>,
    factory: Option<RecordFactory>,
    pace: Option<Pace>,
    state: State,
    next_seq: u64,
    last: Option<Position>,
}

impl Default for GeneratorSource {
    fn default() -> Self {
        Self::new()
    }
}

impl GeneratorSource {
    /// A new, unconfigured generator.
    pub fn new() -> Self {
        GeneratorSource {
            config: None,
            factory: None,
            pace: None,
            state: State::Closed,
            next_seq: 1,
            last: None,
        }
    }

    fn total(&self) -> Option<u64> {
        self.config.as_ref().and_then(|c| c.record_count)
    }

    /// Records still to generate under the count, `None` when unlimited.
    fn remaining(&self) -> Option<u64> {
        self.total().map(|t| t.saturating_sub(self.next_seq - 1))
    }
}

#[async_trait]
impl Source for GeneratorSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        let config = GeneratorConfig::parse(settings)?;
        self.factory = Some(RecordFactory::new(&config).await?);
        self.config = Some(config);
        Ok(())
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let Some(config) = &self.config else {
            return Err(ConnectorError::system(
                "the generator was opened before it was configured",
            ));
        };
        self.next_seq = match position {
            None => 1,
            Some(p) => p.to_u64().and_then(|n| n.checked_add(1)).ok_or_else(|| {
                ConnectorError::InvalidPosition {
                    position: p.clone(),
                    reason: "a generator position is a record number".into(),
                }
            })?,
        };
        self.pace = Some(Pace::new(config.rate, config.burst, Instant::now()));
        self.last = None;
        self.state = State::Open;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        match self.state {
            State::Open => {}
            State::Stopped => {
                return Ok(ReadBatch {
                    records: Vec::new(),
                    end_of_stream: true,
                })
            }
            State::Closed => return Err(ConnectorError::StreamNotOpen),
        }
        // Generating never waits on I/O: give the scheduler a chance, so a pipeline reading as
        // fast as it can still lets other tasks (and cancellation) run.
        tokio::task::consume_budget().await;
        let remaining = self.remaining();
        if remaining == Some(0) {
            return Ok(ReadBatch {
                records: Vec::new(),
                end_of_stream: true,
            });
        }
        let want = remaining.map_or(max, |r| max.min(usize::try_from(r).unwrap_or(usize::MAX)));
        let (Some(pace), Some(factory)) = (self.pace.as_mut(), self.factory.as_mut()) else {
            return Err(ConnectorError::StreamNotOpen);
        };
        let give_up = Instant::now() + MAX_IDLE;
        let n = loop {
            match pace.allowance(Instant::now(), want) {
                Allowance::Now(n) => break n,
                Allowance::WaitUntil(at) if at > give_up => {
                    sleep_until(give_up).await;
                    return Ok(ReadBatch::default());
                }
                Allowance::WaitUntil(at) => sleep_until(at).await,
            }
        };
        // From here on nothing awaits: a dropped read never loses generated records.
        let mut records = Vec::with_capacity(n);
        factory.fill(self.next_seq, n, &mut records);
        pace.produced(n);
        self.next_seq += n as u64;
        if let Some(r) = records.last() {
            self.last = Some(r.position.clone());
        }
        Ok(ReadBatch {
            records,
            end_of_stream: self.remaining() == Some(0),
        })
    }

    async fn ack(&mut self, _positions: &[Position]) -> Result<()> {
        match self.state {
            // Nothing to release: generated records exist nowhere else.
            State::Open | State::Stopped => Ok(()),
            State::Closed => Err(ConnectorError::StreamNotOpen),
        }
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        if self.state == State::Open {
            self.state = State::Stopped;
        }
        Ok(self.last.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.state = State::Closed;
        self.pace = None;
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        self.config.as_ref()?;
        Some(Progress {
            done: self.next_seq - 1,
            total: self.total(),
            unit: ProgressUnit::Records,
        })
    }
}
