//! One handle over several watchers (merging their events) and over several writers (fanning a
//! write out to each), as the seed's `KVProtoWatchers` / `KVProtoWriters`.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::event::WatchEvent;
use super::feed::ChangeFeed;
use super::options::WatchOptions;
use super::registration::{watch, Registration, RegistrationControl};
use super::WatchError;
use crate::error::StateError;
use crate::store::{DeleteRequest, SetRequest, Store};

/// Something that can start a registration (the seed's `KeyValProtoWatcher`).
pub trait Watcher: Send + Sync {
    /// Starts a registration; see [`super::watch`].
    fn watch(
        &self,
        name: &str,
        prefixes: Vec<String>,
        from_revision: Option<u64>,
    ) -> Result<Registration, WatchError>;
}

/// A [`Watcher`] over one change feed with fixed options.
#[derive(Clone)]
pub struct FeedWatcher {
    feed: Arc<dyn ChangeFeed>,
    options: WatchOptions,
}

impl FeedWatcher {
    /// Watches `feed` with `options`.
    pub fn new(feed: Arc<dyn ChangeFeed>, options: WatchOptions) -> Self {
        FeedWatcher { feed, options }
    }

    /// Watches `store`'s feed; [`WatchError::Unsupported`] if it has none.
    pub fn of_store(store: &dyn Store, options: WatchOptions) -> Result<Self, WatchError> {
        let feed = store.change_feed().ok_or(WatchError::Unsupported {
            backend: store.name(),
        })?;
        Ok(FeedWatcher { feed, options })
    }
}

impl Watcher for FeedWatcher {
    fn watch(
        &self,
        name: &str,
        prefixes: Vec<String>,
        from_revision: Option<u64>,
    ) -> Result<Registration, WatchError> {
        Ok(watch(
            Arc::clone(&self.feed),
            name,
            prefixes,
            from_revision,
            self.options,
        ))
    }
}

/// Several watchers behind one: a watch registers with each and merges their events.
#[derive(Clone, Default)]
pub struct Watchers {
    members: Vec<Arc<dyn Watcher>>,
    queue: usize,
}

impl Watchers {
    /// Over `members`; the merged queue holds `queue` events.
    pub fn new(members: Vec<Arc<dyn Watcher>>, queue: usize) -> Self {
        Watchers { members, queue }
    }

    /// Registers `prefixes` with every member. Revisions are per feed, so a resume revision
    /// applies to every member alike only if they share one history; pass `None` otherwise.
    pub fn watch(
        &self,
        name: &str,
        prefixes: Vec<String>,
        from_revision: Option<u64>,
    ) -> Result<AggregatedRegistration, WatchError> {
        let (tx, events) = mpsc::channel(self.queue.max(1));
        let mut controls = Vec::with_capacity(self.members.len());
        let mut tasks = Vec::new();
        for (source, member) in self.members.iter().enumerate() {
            let mut reg = member.watch(name, prefixes.clone(), from_revision)?;
            controls.push(reg.control());
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(event) = reg.next().await {
                    if tx.send((source, event)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        Ok(AggregatedRegistration {
            controls,
            events,
            tasks,
        })
    }
}

/// Registrations with several watchers as one: events arrive tagged with the index of the
/// watcher they came from; within one source, order and completeness are those of a single
/// [`Registration`]. Prefix changes and close apply to every member.
#[derive(Debug)]
pub struct AggregatedRegistration {
    controls: Vec<RegistrationControl>,
    events: mpsc::Receiver<(usize, WatchEvent)>,
    tasks: Vec<JoinHandle<()>>,
}

impl AggregatedRegistration {
    /// The next event and the index of its watcher; `None` once closed.
    pub async fn next(&mut self) -> Option<(usize, WatchEvent)> {
        self.events.recv().await
    }

    /// The member registrations' controls, in watcher order.
    pub fn members(&self) -> &[RegistrationControl] {
        &self.controls
    }

    /// Adds `prefix` to every member.
    pub fn add_prefix(&self, prefix: &str) -> Result<(), WatchError> {
        self.controls.iter().try_for_each(|c| c.add_prefix(prefix))
    }

    /// Removes `prefix` from every member.
    pub fn remove_prefix(&self, prefix: &str) -> Result<(), WatchError> {
        self.controls
            .iter()
            .try_for_each(|c| c.remove_prefix(prefix))
    }

    /// Closes every member.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for AggregatedRegistration {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Several stores written as one: each write goes to every member, in order; the first
/// failure is returned after every member was tried.
#[derive(Clone, Default)]
pub struct Writers {
    members: Vec<Arc<dyn Store>>,
}

impl Writers {
    /// Over `members`.
    pub fn new(members: Vec<Arc<dyn Store>>) -> Self {
        Writers { members }
    }

    /// Writes `req` to every member.
    pub async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let mut first = None;
        for m in &self.members {
            if let Err(e) = m.set(req.clone()).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Deletes `req` from every member.
    pub async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let mut first = None;
        for m in &self.members {
            if let Err(e) = m.delete(req.clone()).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Deletes with prefix on every member; returns the count per member.
    pub async fn delete_with_prefix(&self, prefix: &str) -> Result<Vec<u64>, StateError> {
        let mut first = None;
        let mut counts = Vec::with_capacity(self.members.len());
        for m in &self.members {
            match m.delete_with_prefix(prefix).await {
                Ok(n) => counts.push(n),
                Err(e) => {
                    counts.push(0);
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(counts), Err)
    }
}
