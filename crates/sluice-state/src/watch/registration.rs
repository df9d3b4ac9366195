//! A watch registration: the watcher's end (a bounded queue of events) and the controls that
//! change its prefixes or close it, alone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::delivery;
use super::event::WatchEvent;
use super::feed::ChangeFeed;
use super::metrics::{WatchMetrics, WatchStats};
use super::options::WatchOptions;
use super::WatchError;

/// The prefixes of a registration and a generation that moves on every change of them.
#[derive(Debug, Default)]
pub(crate) struct Prefixes {
    pub(crate) list: Vec<String>,
    pub(crate) generation: u64,
}

/// State shared by a registration's handle and its delivery task.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) name: Arc<str>,
    prefixes: Mutex<Prefixes>,
    /// Woken when the prefixes change.
    pub(crate) changed: Notify,
    pub(crate) metrics: Arc<WatchMetrics>,
}

impl Control {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Prefixes> {
        // Only plain data is behind the lock; a panic elsewhere cannot leave it half-written.
        self.prefixes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Changes the prefixes of one registration; cheap to clone. Dropping it changes nothing.
#[derive(Clone, Debug)]
pub struct RegistrationControl {
    control: Arc<Control>,
}

impl RegistrationControl {
    /// The registration's name.
    pub fn name(&self) -> &str {
        &self.control.name
    }

    /// The prefixes watched now.
    pub fn prefixes(&self) -> Vec<String> {
        self.control.lock().list.clone()
    }

    /// Starts watching `prefix` too. The next event is a [`WatchEvent::Resync`] of every prefix
    /// (so the watcher learns the keys already under the new one). Fails if it is watched
    /// already.
    pub fn add_prefix(&self, prefix: impl Into<String>) -> Result<(), WatchError> {
        let prefix = prefix.into();
        {
            let mut p = self.control.lock();
            if p.list.contains(&prefix) {
                return Err(WatchError::PrefixExists { prefix });
            }
            p.list.push(prefix);
            p.generation += 1;
        }
        self.control.changed.notify_one();
        Ok(())
    }

    /// Stops watching `prefix`: changes under it alone are no longer delivered. Fails if it is
    /// not watched.
    pub fn remove_prefix(&self, prefix: &str) -> Result<(), WatchError> {
        {
            let mut p = self.control.lock();
            let Some(at) = p.list.iter().position(|q| q == prefix) else {
                return Err(WatchError::PrefixMissing {
                    prefix: prefix.to_string(),
                });
            };
            p.list.remove(at);
            // No resync needed: the remaining prefixes' keys are all delivered already.
        }
        Ok(())
    }

    /// The registration's counters.
    pub fn stats(&self) -> WatchStats {
        self.control.metrics.stats()
    }

    /// The registration's live counters.
    pub fn metrics(&self) -> Arc<WatchMetrics> {
        Arc::clone(&self.control.metrics)
    }
}

/// One watch: yields [`WatchEvent`]s in order from [`Registration::next`]. Closing (or dropping)
/// it stops its delivery alone; other registrations on the same feed go on.
#[derive(Debug)]
pub struct Registration {
    control: RegistrationControl,
    /// Batches of events from the delivery task (one page's worth at most).
    events: mpsc::Receiver<Vec<WatchEvent>>,
    /// The rest of the batch being read.
    buffer: VecDeque<WatchEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl Registration {
    /// The next event; `None` once the registration is closed.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        if let Some(e) = self.buffer.pop_front() {
            return Some(e);
        }
        let batch = self.events.recv().await?;
        self.buffer.extend(batch);
        self.buffer.pop_front()
    }

    /// The next event if one is queued.
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        if self.buffer.is_empty() {
            self.buffer.extend(self.events.try_recv().ok()?);
        }
        self.buffer.pop_front()
    }

    /// The registration's name.
    pub fn name(&self) -> &str {
        self.control.name()
    }

    /// A handle that changes the prefixes and reads the counters.
    pub fn control(&self) -> RegistrationControl {
        self.control.clone()
    }

    /// See [`RegistrationControl::add_prefix`].
    pub fn add_prefix(&self, prefix: impl Into<String>) -> Result<(), WatchError> {
        self.control.add_prefix(prefix)
    }

    /// See [`RegistrationControl::remove_prefix`].
    pub fn remove_prefix(&self, prefix: &str) -> Result<(), WatchError> {
        self.control.remove_prefix(prefix)
    }

    /// The registration's counters.
    pub fn stats(&self) -> WatchStats {
        self.control.stats()
    }

    /// Stops this registration's delivery (events still queued are dropped).
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a registration named `name` over `feed`, watching every key under `prefixes`.
///
/// `from_revision`: `None` starts with a [`WatchEvent::Resync`] at the current revision;
/// `Some(r)` resumes after revision `r` (the last one the watcher saw) if the feed still holds
/// the changes after it, else delivers [`WatchEvent::Compacted`] and a fresh resync. Must be
/// called inside a tokio runtime (it spawns the delivery task).
pub fn watch(
    feed: Arc<dyn ChangeFeed>,
    name: impl Into<String>,
    prefixes: Vec<String>,
    from_revision: Option<u64>,
    options: WatchOptions,
) -> Registration {
    let name: Arc<str> = Arc::from(name.into());
    let metrics = Arc::new(WatchMetrics::default());
    let control = Arc::new(Control {
        name: Arc::clone(&name),
        prefixes: Mutex::new(Prefixes {
            list: prefixes,
            generation: 0,
        }),
        changed: Notify::new(),
        metrics: Arc::clone(&metrics),
    });
    // Events travel in batches of up to `batch`, so the queue holds about `queue` events.
    let queue = options.queue.max(1);
    let batch = queue.min(delivery::MAX_BATCH);
    let (events_tx, events) = mpsc::channel((queue / batch).max(1));
    let (done_tx, done_rx) = mpsc::channel((options.max_pending_done / batch).max(1));
    let tracker = tokio::spawn(super::done::track(
        Arc::clone(&name),
        done_rx,
        Arc::clone(&metrics),
    ));
    let pump = tokio::spawn(delivery::run(delivery::Delivery {
        feed,
        control: Arc::clone(&control),
        events: events_tx,
        done: done_tx,
        options,
        batch,
        position: from_revision,
    }));
    Registration {
        control: RegistrationControl { control },
        events,
        buffer: VecDeque::new(),
        tasks: vec![pump, tracker],
    }
}
