//! Per-pipeline counters, updated lock-free on the hot path and read as snapshots.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;

use sluice_sdk::{Position, Progress};

/// Where a pipeline is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineState {
    /// Connectors are being configured and opened.
    Starting,
    /// Records are flowing.
    Running,
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
            0 => PipelineState::Starting,
            1 => PipelineState::Running,
            2 => PipelineState::Stopping,
            3 => PipelineState::Stopped,
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
    /// Where the pipeline is in its life.
    pub state: PipelineState,
}

impl PipelineMetrics {
    pub(crate) fn set_state(&self, s: PipelineState) {
        self.state.store(s as u8, Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let records_in = self.records_in.load(Relaxed);
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
            state: PipelineState::from_u8(self.state.load(Relaxed)),
        }
    }
}

/// Locks a metrics mutex; a poisoned one still holds a valid value.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
