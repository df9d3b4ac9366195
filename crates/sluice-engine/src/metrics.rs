//! Per-pipeline counters, updated lock-free on the hot path and read as snapshots, and the health
//! of every connector: the engine hands each one a [`HealthReporter`] before `open`, and a snapshot
//! shows the pipeline [`PipelineState::Degraded`] while any of them reports itself degraded.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;

use sluice_sdk::{Health, HealthReporter, Position, Progress};

/// Where a pipeline is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineState {
    /// Connectors are being configured and opened.
    Starting,
    /// Records are flowing.
    Running,
    /// Running, but at least one connector reports itself degraded (retrying an unreachable
    /// service); back to `Running` once every connector recovers. See [`MetricsSnapshot::degraded`].
    Degraded,
    /// A graceful stop is draining in-flight records.
    Stopping,
    /// Stopped cleanly (source finished or stop requested).
    Stopped,
    /// Stopped with an error.
    Failed,
}

impl PipelineState {
    fn from_u8(v: u8) -> Self {
        match v {
            v if v == PipelineState::Starting as u8 => PipelineState::Starting,
            v if v == PipelineState::Running as u8 => PipelineState::Running,
            v if v == PipelineState::Degraded as u8 => PipelineState::Degraded,
            v if v == PipelineState::Stopping as u8 => PipelineState::Stopping,
            v if v == PipelineState::Stopped as u8 => PipelineState::Stopped,
            _ => PipelineState::Failed,
        }
    }
}

/// Live counters of one pipeline.
#[derive(Default)]
pub struct PipelineMetrics {
    pub(crate) records_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    state: AtomicU8,
    pub(crate) last_checkpoint: Mutex<Option<Position>>,
    pub(crate) progress: Mutex<Option<Progress>>,
    /// One reporter per connector (source, destinations, dead-letter queue), by connector id.
    pub(crate) health: Mutex<Vec<(String, HealthReporter)>>,
}

/// A consistent-enough copy of a pipeline's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    /// Records read from the source.
    pub records_in: u64,
    /// Bytes (key and payload) read from the source.
    pub bytes_in: u64,
    /// Records written to destinations (counted once per destination).
    pub records_out: u64,
    /// Bytes written to destinations (counted once per destination).
    pub bytes_out: u64,
    /// Records acknowledged to the source (after their position was checkpointed).
    pub acked: u64,
    /// Records a destination failed to write.
    pub nacked: u64,
    /// Nacked records stored in the dead-letter destination (these count as acked).
    pub dead_lettered: u64,
    /// Records read but not yet acknowledged.
    pub lag: u64,
    /// The last position saved in the store.
    pub last_checkpoint: Option<Position>,
    /// The source's own progress report.
    pub progress: Option<Progress>,
    /// Where the pipeline is in its life (`Degraded` while running with a degraded connector).
    pub state: PipelineState,
    /// The connectors reporting themselves degraded now: (connector id, reason).
    pub degraded: Vec<(String, String)>,
}

impl PipelineMetrics {
    pub(crate) fn set_state(&self, s: PipelineState) {
        self.state.store(s as u8, Relaxed);
    }

    /// Registers a connector's reporter and returns a clone for the connector.
    pub(crate) fn reporter(&self, pipeline: &str, connector: &str) -> HealthReporter {
        let r = HealthReporter::new(format!("{pipeline}/{connector}"));
        lock(&self.health).push((connector.to_string(), r.clone()));
        r
    }

    /// The degraded connectors now: (connector id, reason).
    fn degraded(&self) -> Vec<(String, String)> {
        lock(&self.health)
            .iter()
            .filter_map(|(id, r)| match r.status() {
                Health::Healthy => None,
                Health::Degraded(reason) => Some((id.clone(), reason)),
            })
            .collect()
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let records_in = self.records_in.load(Relaxed);
        let degraded = self.degraded();
        let state = match PipelineState::from_u8(self.state.load(Relaxed)) {
            PipelineState::Running if !degraded.is_empty() => PipelineState::Degraded,
            s => s,
        };
        let acked = self.acked.load(Relaxed);
        MetricsSnapshot {
            records_in,
            bytes_in: self.bytes_in.load(Relaxed),
            records_out: self.records_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            acked,
            nacked: self.nacked.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            lag: records_in.saturating_sub(acked),
            last_checkpoint: lock(&self.last_checkpoint).clone(),
            progress: *lock(&self.progress),
            state,
            degraded,
        }
    }
}

/// Locks a metrics mutex; a poisoned one still holds a valid value.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
