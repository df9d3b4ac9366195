//! What a registration yields: [`WatchEvent`]s, each with a [`DoneHandle`] the watcher completes
//! once it has handled the event.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::{timeout_at, Instant};

use super::types::{KeyValue, Op};

/// One event of a registration, in delivery order.
#[derive(Debug)]
pub enum WatchEvent {
    /// Every live key under the registration's prefixes at `revision`. Comes first (unless the
    /// registration resumed from a retained revision), again after [`WatchEvent::Compacted`],
    /// and after the prefixes change. Changes that follow are those after `revision`.
    Resync {
        /// The snapshot's revision.
        revision: u64,
        /// The entries, in key order.
        entries: Vec<KeyValue>,
        /// Complete once the snapshot is applied; no change is delivered before (or until the
        /// done timeout passes).
        done: DoneHandle,
    },
    /// One change of one key.
    Change {
        /// The key.
        key: String,
        /// Put or delete.
        op: Op,
        /// The new value (`None` for a delete).
        value: Option<Bytes>,
        /// The value before, if there was one.
        prev_value: Option<Bytes>,
        /// The revision of the commit; changes of one commit share it.
        revision: u64,
        /// Complete once handled.
        done: DoneHandle,
    },
    /// The registration fell behind the retained history (or resumed from a compacted
    /// revision): changes after `after` up to `oldest` are gone. A [`WatchEvent::Resync`]
    /// follows at once.
    Compacted {
        /// The last revision the registration had delivered (or was asked to resume after).
        after: u64,
        /// The oldest revision history could still serve.
        oldest: u64,
    },
}

impl WatchEvent {
    /// The event's revision (a resync's snapshot revision; the compacted-through revision).
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Resync { revision, .. } | WatchEvent::Change { revision, .. } => *revision,
            WatchEvent::Compacted { oldest, .. } => *oldest,
        }
    }

    /// Completes the event's done handle with success, if it has one (convenience for
    /// watchers that cannot fail).
    pub fn ack(self) {
        match self {
            WatchEvent::Resync { done, .. } | WatchEvent::Change { done, .. } => done.ok(),
            WatchEvent::Compacted { .. } => {}
        }
    }
}

/// How a watcher finished with an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DoneOutcome {
    /// Handled.
    Ok,
    /// Handling failed, with the watcher's reason.
    Failed(String),
    /// The handle was dropped without being completed (counted as a failure, never as success).
    Dropped,
}

const PENDING: u8 = 0;
const OK: u8 = 1;
const FAILED: u8 = 2;
const DROPPED: u8 = 3;

/// The done states of one batch of events: one allocation per batch instead of a channel per
/// event. The tracker is the only waiter.
pub(crate) struct DoneSlots {
    states: Box<[AtomicU8]>,
    reasons: Mutex<Vec<(usize, String)>>,
    notify: Notify,
}

impl DoneSlots {
    /// `n` pending slots.
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(DoneSlots {
            states: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            reasons: Mutex::new(Vec::new()),
            notify: Notify::new(),
        })
    }

    fn set(&self, i: usize, outcome: DoneOutcome) {
        let state = match outcome {
            DoneOutcome::Ok => OK,
            DoneOutcome::Failed(reason) => {
                self.reasons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, reason));
                FAILED
            }
            DoneOutcome::Dropped => DROPPED,
        };
        if let Some(slot) = self.states.get(i) {
            slot.store(state, Ordering::Release);
        }
        self.notify.notify_one();
    }

    /// The outcome of slot `i`, if it is complete.
    pub(crate) fn outcome(&self, i: usize) -> Option<DoneOutcome> {
        match self.states.get(i)?.load(Ordering::Acquire) {
            OK => Some(DoneOutcome::Ok),
            DROPPED => Some(DoneOutcome::Dropped),
            FAILED => {
                let reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
                let reason = reasons
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                Some(DoneOutcome::Failed(reason))
            }
            _ => None,
        }
    }

    /// Waits for slot `i` until `deadline`; `None` on timeout.
    pub(crate) async fn wait(&self, i: usize, deadline: Instant) -> Option<DoneOutcome> {
        loop {
            if let Some(o) = self.outcome(i) {
                return Some(o);
            }
            // A completion between the check and here leaves a permit: no wake-up is lost.
            if timeout_at(deadline, self.notify.notified()).await.is_err() {
                return self.outcome(i);
            }
        }
    }
}

/// The completion callback of one event: call [`DoneHandle::done`] (or [`DoneHandle::ok`]) once
/// the event is handled. The delivery side waits for it with a bounded timeout; a timeout or a
/// dropped handle is reported as an error and counted in [`super::WatchStats`], never taken as
/// success.
pub struct DoneHandle {
    slot: Option<(Arc<DoneSlots>, usize)>,
}

impl fmt::Debug for DoneHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoneHandle")
            .field("pending", &self.slot.is_some())
            .finish()
    }
}

impl DoneHandle {
    /// The handle of slot `i` of `slots`.
    pub(crate) fn new(slots: &Arc<DoneSlots>, i: usize) -> DoneHandle {
        DoneHandle {
            slot: Some((Arc::clone(slots), i)),
        }
    }

    /// A handle nobody waits for (events a caller builds itself, e.g. in tests or adapters).
    pub fn detached() -> DoneHandle {
        DoneHandle { slot: None }
    }

    /// Reports how handling went.
    pub fn done<E: fmt::Display>(mut self, result: Result<(), E>) {
        let outcome = match result {
            Ok(()) => DoneOutcome::Ok,
            Err(e) => DoneOutcome::Failed(e.to_string()),
        };
        if let Some((slots, i)) = self.slot.take() {
            slots.set(i, outcome);
        }
    }

    /// Reports success.
    pub fn ok(self) {
        self.done(Ok::<(), &str>(()));
    }
}

impl Drop for DoneHandle {
    fn drop(&mut self) {
        if let Some((slots, i)) = self.slot.take() {
            slots.set(i, DoneOutcome::Dropped);
        }
    }
}
