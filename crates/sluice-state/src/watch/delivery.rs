//! The delivery task of one registration: resync, then page through the feed's history after
//! the last delivered revision, filter by prefix, queue each event and hand its `done` to the
//! tracker; wait on the feed when caught up. It owns its position, so a slow watcher only delays
//! itself: writers append to history regardless, and when the watcher reads again the task
//! catches up from history — or, if that was compacted meanwhile, says so and resyncs.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::done::{settle, Pending};
use super::event::{DoneHandle, DoneSlots, WatchEvent};
use super::feed::ChangeFeed;
use super::options::WatchOptions;
use super::registration::Control;
use super::types::{matches_any, normalize_prefixes, Change, ChangesAfter};
use crate::error::StateError;

/// Everything the task needs.
pub(crate) struct Delivery {
    pub(crate) feed: Arc<dyn ChangeFeed>,
    pub(crate) control: Arc<Control>,
    pub(crate) events: mpsc::Sender<Vec<WatchEvent>>,
    pub(crate) done: mpsc::Sender<Pending>,
    pub(crate) options: WatchOptions,
    /// Most events per batch sent to the watcher.
    pub(crate) batch: usize,
    /// The last revision delivered; `None` until the first resync.
    pub(crate) position: Option<u64>,
}

/// Most events sent to the watcher in one batch.
pub(crate) const MAX_BATCH: usize = 256;

/// Why the task stops.
enum Stop {
    /// The watcher closed its end.
    Closed,
}

/// Runs until the registration is closed.
pub(crate) async fn run(mut d: Delivery) {
    match d.serve().await {
        Stop::Closed => tracing::debug!(registration = &*d.control.name, "watch closed"),
    }
}

impl Delivery {
    async fn serve(&mut self) -> Stop {
        let mut generation = self.control.lock().generation;
        loop {
            let position = match self.position {
                Some(p) => p,
                None => match self.resync().await {
                    Ok(p) => p,
                    Err(stop) => return stop,
                },
            };
            let page = match self.read(position).await {
                Ok(page) => page,
                Err(stop) => return stop,
            };
            let page = match page {
                ChangesAfter::Compacted { oldest } => {
                    self.control.metrics.compacted();
                    tracing::warn!(
                        registration = &*self.control.name,
                        after = position,
                        oldest,
                        "watch fell behind compacted history; resyncing"
                    );
                    let notice = WatchEvent::Compacted {
                        after: position,
                        oldest,
                    };
                    if self.events.send(vec![notice]).await.is_err() {
                        return Stop::Closed;
                    }
                    self.position = None;
                    continue;
                }
                ChangesAfter::Changes(page) => page,
            };
            if page.changes.is_empty() {
                if let Err(stop) = self.wait(position, generation).await {
                    return stop;
                }
            } else {
                let prefixes = self.control.lock().list.clone();
                let mut batch = Batch::new(self.batch);
                for change in page.changes {
                    if matches_any(&prefixes, &change.key) {
                        batch.push(change);
                        if batch.events.len() >= self.batch {
                            if let Err(stop) = self.flush(&mut batch).await {
                                return stop;
                            }
                        }
                    }
                }
                if let Err(stop) = self.flush(&mut batch).await {
                    return stop;
                }
                self.position = Some(page.last_revision);
            }
            let now = self.control.lock().generation;
            if now != generation {
                generation = now;
                self.position = None;
            }
        }
    }

    /// Reads a snapshot, queues it as a resync and waits for its `done`; returns its revision.
    async fn resync(&mut self) -> Result<u64, Stop> {
        let snapshot = loop {
            let prefixes = normalize_prefixes(&self.control.lock().list);
            match self.feed.snapshot(&prefixes).await {
                Ok(s) => break s,
                Err(e) => self.backoff("snapshot", e).await?,
            }
        };
        let revision = snapshot.revision;
        let slots = DoneSlots::new(1);
        let done = DoneHandle::new(&slots, 0);
        let event = WatchEvent::Resync {
            revision,
            entries: snapshot.entries,
            done,
        };
        let deadline = Instant::now() + self.options.done_timeout;
        self.events
            .send(vec![event])
            .await
            .map_err(|_| Stop::Closed)?;
        self.control.metrics.resync(revision);
        self.position = Some(revision);
        // No change goes out before the watcher has applied the snapshot (or the timeout passed).
        let pending = Pending {
            slots,
            events: vec![(revision, None)],
            deadline,
        };
        tokio::select! {
            _ = settle(&self.control.name, pending, &self.control.metrics) => {}
            _ = self.events.closed() => return Err(Stop::Closed),
        }
        Ok(revision)
    }

    /// One page after `position`, retrying failures until they pass or the watcher leaves.
    async fn read(&mut self, position: u64) -> Result<ChangesAfter, Stop> {
        loop {
            match self.feed.changes_after(position, self.options.page).await {
                Ok(page) => return Ok(page),
                Err(e) => self.backoff("read changes", e).await?,
            }
        }
    }

    /// Waits for a commit after `position`, a change of prefixes, or the watcher leaving.
    async fn wait(&mut self, position: u64, generation: u64) -> Result<(), Stop> {
        if self.control.lock().generation != generation {
            return Ok(());
        }
        tokio::select! {
            r = self.feed.wait_for_revision(position) => {
                if let Err(e) = r {
                    self.backoff("wait for a revision", e).await?;
                }
            }
            _ = self.control.changed.notified() => {}
            _ = self.events.closed() => return Err(Stop::Closed),
        }
        Ok(())
    }

    /// Queues a batch of changes and hands their `done`s to the tracker.
    async fn flush(&mut self, batch: &mut Batch) -> Result<(), Stop> {
        let Some(last) = batch.last_revision else {
            return Ok(());
        };
        let count = batch.events.len() as u64;
        let events = std::mem::take(&mut batch.events);
        self.events.send(events).await.map_err(|_| Stop::Closed)?;
        self.control.metrics.changes(count, last);
        let pending = Pending {
            slots: std::mem::replace(&mut batch.slots, DoneSlots::new(self.batch)),
            events: std::mem::take(&mut batch.keys),
            deadline: Instant::now() + self.options.done_timeout,
        };
        batch.last_revision = None;
        self.done.send(pending).await.map_err(|_| Stop::Closed)
    }

    /// Logs and counts a failed feed call, then pauses before the retry.
    async fn backoff(&mut self, what: &str, e: StateError) -> Result<(), Stop> {
        self.control.metrics.feed_error();
        tracing::warn!(
            registration = &*self.control.name,
            backend = self.feed.backend(),
            error = %e,
            "watch cannot {what}; retrying"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.options.retry_delay) => Ok(()),
            _ = self.events.closed() => Err(Stop::Closed),
        }
    }
}

/// Events being gathered for one send.
struct Batch {
    events: Vec<WatchEvent>,
    /// Revision and key of each event, for the tracker.
    keys: Vec<(u64, Option<String>)>,
    slots: Arc<DoneSlots>,
    last_revision: Option<u64>,
}

impl Batch {
    fn new(size: usize) -> Self {
        Batch {
            events: Vec::with_capacity(size),
            keys: Vec::with_capacity(size),
            slots: DoneSlots::new(size),
            last_revision: None,
        }
    }

    fn push(&mut self, change: Change) {
        let done = DoneHandle::new(&self.slots, self.events.len());
        let revision = change.revision;
        self.keys.push((revision, Some(change.key.clone())));
        self.events.push(WatchEvent::Change {
            key: change.key,
            op: change.op,
            value: change.value,
            prev_value: change.prev_value,
            revision,
            done,
        });
        self.last_revision = Some(revision);
    }
}
