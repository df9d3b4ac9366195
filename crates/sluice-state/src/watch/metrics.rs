//! Counters of one registration (or of several, shared), readable at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a registration; [`WatchMetrics::stats`] reads them.
#[derive(Debug, Default)]
pub struct WatchMetrics {
    changes: AtomicU64,
    resyncs: AtomicU64,
    compacted: AtomicU64,
    done_ok: AtomicU64,
    done_failed: AtomicU64,
    done_dropped: AtomicU64,
    done_timeouts: AtomicU64,
    feed_errors: AtomicU64,
    last_revision: AtomicU64,
}

/// A reading of [`WatchMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Change events delivered to the queue.
    pub changes: u64,
    /// Resync events delivered.
    pub resyncs: u64,
    /// Times the registration found its history compacted.
    pub compacted: u64,
    /// Events completed with success.
    pub done_ok: u64,
    /// Events completed with an error.
    pub done_failed: u64,
    /// Events whose handle was dropped without completion.
    pub done_dropped: u64,
    /// Events not completed within the done timeout.
    pub done_timeouts: u64,
    /// Failed reads of the change feed (retried).
    pub feed_errors: u64,
    /// Revision of the last event delivered.
    pub last_revision: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl WatchMetrics {
    /// A reading of every counter.
    pub fn stats(&self) -> WatchStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WatchStats {
            changes: get(&self.changes),
            resyncs: get(&self.resyncs),
            compacted: get(&self.compacted),
            done_ok: get(&self.done_ok),
            done_failed: get(&self.done_failed),
            done_dropped: get(&self.done_dropped),
            done_timeouts: get(&self.done_timeouts),
            feed_errors: get(&self.feed_errors),
            last_revision: get(&self.last_revision),
        }
    }

    pub(crate) fn changes(&self, count: u64, revision: u64) {
        self.changes.fetch_add(count, Ordering::Relaxed);
        self.last_revision.fetch_max(revision, Ordering::Relaxed);
    }
    pub(crate) fn resync(&self, revision: u64) {
        bump(&self.resyncs);
        self.last_revision.fetch_max(revision, Ordering::Relaxed);
    }
    pub(crate) fn compacted(&self) {
        bump(&self.compacted);
    }
    pub(crate) fn done_ok(&self) {
        bump(&self.done_ok);
    }
    pub(crate) fn done_failed(&self) {
        bump(&self.done_failed);
    }
    pub(crate) fn done_dropped(&self) {
        bump(&self.done_dropped);
    }
    pub(crate) fn done_timeout(&self) {
        bump(&self.done_timeouts);
    }
    pub(crate) fn feed_error(&self) {
        bump(&self.feed_errors);
    }
}
