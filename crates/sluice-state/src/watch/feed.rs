//! The backend-facing side of watch: what a store must offer ([`ChangeFeed`]) so that
//! [`super::watch`] can serve registrations over it, and [`RevisionNotifier`], the in-process
//! wake-up every backend can use.

use async_trait::async_trait;
use tokio::sync::watch as signal;

use super::types::{ChangesAfter, Snapshot};
use crate::error::StateError;

/// A store's revisioned history, as the watch machinery reads it.
///
/// Contract (every backend, checked by [`crate::conformance::watch`]):
/// - every committed write or transaction (set, delete, `set_many`, `delete_many`, `multi`,
///   `delete_with_prefix`, TTL expiry, a session's keys going) gets one revision, strictly above
///   every earlier one; all its changes carry it; a call that changes nothing gets none;
/// - [`ChangeFeed::snapshot`] and [`ChangeFeed::changes_after`] agree: applying, to a snapshot at
///   revision R, every change after R up to revision S gives exactly the live state at S;
/// - [`ChangeFeed::changes_after`] never skips a change: once it returned a page ending at S,
///   no commit with a revision ≤ S can appear later (backends must publish a revision only once
///   every lower one is visible);
/// - history is only dropped whole revisions at a time, oldest first, and a request reaching
///   into dropped history answers [`ChangesAfter::Compacted`], never a shorter page; so does a
///   request after a revision above the current one (a position from another store's life);
/// - removing an item records a delete even if the item had expired (that is its expiry
///   event), so a delete may name a key a snapshot no longer showed; a write over an expired
///   item records that delete first, then the put (without a previous value).
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// The backend's name, for messages and metrics.
    fn backend(&self) -> &'static str;

    /// The revision of the latest commit (0 before the first).
    async fn current_revision(&self) -> Result<u64, StateError>;

    /// Every live key under any of `prefixes` (the empty prefix means all), read consistently
    /// at one revision, which the snapshot names. Overlapping prefixes yield each key once.
    async fn snapshot(&self, prefixes: &[String]) -> Result<Snapshot, StateError>;

    /// Changes with a revision above `after`, oldest first, about `limit` of them (whole
    /// revisions: a page may run over `limit` to finish one). An empty page means nothing newer
    /// has been committed yet. [`ChangesAfter::Compacted`] if changes after `after` were dropped.
    async fn changes_after(&self, after: u64, limit: usize) -> Result<ChangesAfter, StateError>;

    /// Resolves once a revision above `after` has been committed (at once if one has), with the
    /// latest revision known. Cancel-safe: dropping the future just stops waiting. A backend
    /// whose notifications may be lost (a dropped LISTEN connection) must still resolve within a
    /// bounded time — say a second — so that callers poll [`ChangeFeed::changes_after`] again.
    async fn wait_for_revision(&self, after: u64) -> Result<u64, StateError>;

    /// Drops every change with a revision ≤ `through` (clamped to the current revision); returns
    /// the smallest `after` now served (see [`ChangesAfter::Compacted`]). Retention does this
    /// by itself; this call is for operators and tests.
    async fn compact(&self, through: u64) -> Result<u64, StateError>;
}

/// Publishes the latest committed revision to in-process waiters: what
/// [`ChangeFeed::wait_for_revision`] awaits. A backend calls [`RevisionNotifier::publish`] after
/// each commit (PostgreSQL: from its LISTEN task; Redis: from its `XREAD BLOCK` loop).
#[derive(Debug)]
pub struct RevisionNotifier {
    tx: signal::Sender<u64>,
}

impl Default for RevisionNotifier {
    fn default() -> Self {
        Self::new(0)
    }
}

impl RevisionNotifier {
    /// A notifier whose latest revision is `current`.
    pub fn new(current: u64) -> Self {
        let (tx, _) = signal::channel(current);
        RevisionNotifier { tx }
    }

    /// Records that `revision` was committed; wakes waiters if it is newer than what they saw.
    pub fn publish(&self, revision: u64) {
        self.tx.send_if_modified(|latest| {
            if revision > *latest {
                *latest = revision;
                true
            } else {
                false
            }
        });
    }

    /// The latest revision published.
    pub fn latest(&self) -> u64 {
        *self.tx.borrow()
    }

    /// Waits until a revision above `after` is published; returns the latest.
    pub async fn wait_after(&self, after: u64) -> u64 {
        let mut rx = self.tx.subscribe();
        let latest = match rx.wait_for(|latest| *latest > after).await {
            Ok(latest) => *latest,
            // The sender lives as long as `self`, so this cannot happen while we borrow it.
            Err(_) => self.latest(),
        };
        latest
    }
}
