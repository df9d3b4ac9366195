//! Waits for each delivered event's `done`, in delivery order, each with its own deadline; counts
//! and logs what came back. Runs beside the delivery task so that waiting never stalls delivery
//! beyond the bounded number of outstanding events.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::event::{DoneOutcome, DoneSlots};
use super::metrics::WatchMetrics;

/// The outstanding `done`s of one batch of events.
pub(crate) struct Pending {
    /// Their states.
    pub(crate) slots: Arc<DoneSlots>,
    /// Revision and key of each event, in slot order (`None` key: a resync).
    pub(crate) events: Vec<(u64, Option<String>)>,
    /// When to stop waiting.
    pub(crate) deadline: Instant,
}

/// Waits for every outcome of a batch, in order, and records each; returns the last one
/// (`None` if it timed out).
pub(crate) async fn settle(
    name: &str,
    pending: Pending,
    metrics: &WatchMetrics,
) -> Option<DoneOutcome> {
    let mut last = None;
    for (i, (revision, key)) in pending.events.iter().enumerate() {
        let what = key.as_deref().unwrap_or("<resync>");
        // Most events are done by the time their turn comes: no timer for those.
        let outcome = match pending.slots.outcome(i) {
            Some(o) => Some(o),
            None => pending.slots.wait(i, pending.deadline).await,
        };
        let Some(outcome) = outcome else {
            metrics.done_timeout();
            tracing::error!(
                registration = name,
                revision,
                key = what,
                "watch event not done within the done timeout"
            );
            last = None;
            continue;
        };
        record(name, *revision, what, &outcome, metrics);
        last = Some(outcome);
    }
    last
}

/// Counts and logs one outcome.
fn record(name: &str, revision: u64, what: &str, outcome: &DoneOutcome, metrics: &WatchMetrics) {
    match outcome {
        DoneOutcome::Ok => metrics.done_ok(),
        DoneOutcome::Failed(reason) => {
            metrics.done_failed();
            tracing::warn!(
                registration = name,
                revision,
                key = what,
                reason = reason.as_str(),
                "watcher reported a failure handling an event"
            );
        }
        DoneOutcome::Dropped => {
            metrics.done_dropped();
            tracing::warn!(
                registration = name,
                revision,
                key = what,
                "watch event dropped without done"
            );
        }
    }
}

/// Settles every pending batch sent on `rx`, in order, until the channel closes.
pub(crate) async fn track(
    name: Arc<str>,
    mut rx: mpsc::Receiver<Pending>,
    metrics: Arc<WatchMetrics>,
) {
    while let Some(pending) = rx.recv().await {
        settle(&name, pending, &metrics).await;
    }
}
