//! Transfer counters for Prometheus: bytes and records moved, transfers by outcome.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by every transfer task and the public endpoint.
#[derive(Debug, Default)]
pub struct TransferCounters {
    bytes: AtomicU64,
    records: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    stopped: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferMetrics {
    /// Payload bytes moved (sent by push, served by pull, received by consumer push/pull).
    pub bytes_transferred: u64,
    /// Records moved.
    pub records_transferred: u64,
    /// Transfers that ended with all data moved.
    pub transfers_completed: u64,
    /// Transfers that failed (an `errored` callback was sent).
    pub transfers_failed: u64,
    /// Transfers stopped by suspend, terminate or shutdown.
    pub transfers_stopped: u64,
}

impl TransferCounters {
    /// Counts `records` records of `bytes` bytes moved.
    pub fn moved(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a transfer outcome.
    pub fn outcome(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Failed => &self.failed,
            Outcome::Stopped => &self.stopped,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> TransferMetrics {
        TransferMetrics {
            bytes_transferred: self.bytes.load(Ordering::Relaxed),
            records_transferred: self.records.load(Ordering::Relaxed),
            transfers_completed: self.completed.load(Ordering::Relaxed),
            transfers_failed: self.failed.load(Ordering::Relaxed),
            transfers_stopped: self.stopped.load(Ordering::Relaxed),
        }
    }
}

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All data moved.
    Completed,
    /// Failed.
    Failed,
    /// Stopped on request.
    Stopped,
}

impl TransferMetrics {
    /// The counters in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP sluice_transfer_bytes_total Payload bytes moved by data flows.\n\
             # TYPE sluice_transfer_bytes_total counter\n\
             sluice_transfer_bytes_total {}",
            self.bytes_transferred
        );
        let _ = writeln!(
            out,
            "# HELP sluice_transfer_records_total Records moved by data flows.\n\
             # TYPE sluice_transfer_records_total counter\n\
             sluice_transfer_records_total {}",
            self.records_transferred
        );
        let _ = writeln!(
            out,
            "# HELP sluice_transfers_total Transfers by outcome.\n\
             # TYPE sluice_transfers_total counter\n\
             sluice_transfers_total{{outcome=\"completed\"}} {}\n\
             sluice_transfers_total{{outcome=\"failed\"}} {}\n\
             sluice_transfers_total{{outcome=\"stopped\"}} {}",
            self.transfers_completed, self.transfers_failed, self.transfers_stopped
        );
        out
    }
}
