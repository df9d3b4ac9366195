//! Tuning of a registration's delivery.

use std::time::Duration;

/// How a registration delivers events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// Events queued for the watcher before delivery pauses (the registration then catches up
    /// from history, or resyncs if it fell out of it). At least 1.
    pub queue: usize,
    /// How long the delivery side waits for an event's `done` before reporting a timeout.
    pub done_timeout: Duration,
    /// Events whose `done` may be outstanding at once beyond the queue; delivery pauses at this
    /// many. At least 1.
    pub max_pending_done: usize,
    /// Changes read from the feed per request.
    pub page: usize,
    /// Pause before retrying a failed read of the feed.
    pub retry_delay: Duration,
}

impl WatchOptions {
    /// Default done timeout.
    pub const DEFAULT_DONE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Sets the done timeout.
    pub fn with_done_timeout(mut self, t: Duration) -> Self {
        self.done_timeout = t;
        self
    }

    /// Sets the queue length.
    pub fn with_queue(mut self, n: usize) -> Self {
        self.queue = n;
        self
    }
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            queue: 1024,
            done_timeout: Self::DEFAULT_DONE_TIMEOUT,
            max_pending_done: 4096,
            page: 1024,
            retry_delay: Duration::from_millis(200),
        }
    }
}
