//! An in-memory backend: for tests and for state that need not survive the process.
//!
//! Items live in an ordered map under one lock, so every operation — a transaction too — is
//! atomic and listings come out in key order. Versions from one counter are the ETags; they never
//! repeat within the store's life.
//!
//! Expired items are invisible from their deadline on and removed lazily: a write of the key
//! replaces it, and every write also sweeps a bounded number of expired items (oldest deadline
//! first) from an index of deadlines, so memory held by expired items stays bounded under writes.
//! [`MemoryStore::purge_expired`] sweeps them all.
//!
//! Watch: every change (a put, a delete, an expired item swept) takes the next version, and a
//! call's changes are recorded at the end of the call, under the same lock, in a [`History`] at
//! one revision — the last version it took. Removing an item records a delete even if it had
//! expired (that is its expiry event), and writing over an expired item records its delete
//! before the put. [`Store::change_feed`] also starts a reaper that sweeps expired items every
//! [`DEFAULT_REAP_INTERVAL`], so expiry events come without waiting for a write.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

// parking_lot: spins briefly before parking, which suits the store's short critical sections.
use parking_lot::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StateError;
use crate::etag;
use crate::keys;
use crate::like::LikePattern;
use crate::query::{self, Query, QueryResponse};
use crate::store::{
    Concurrency, DeleteRequest, Features, Item, KeyPage, Page, SetRequest, Store, TxOperation,
};
use crate::ttl;
use crate::watch::{
    normalize_prefixes, spawn_reaper, Change, ChangeFeed, ChangesAfter, ExpirySweep, History,
    KeyValue, Op, ReaperHandle, Retention, RevisionNotifier, Snapshot, DEFAULT_REAP_INTERVAL,
};

/// Expired items a write sweeps besides its own key.
const SWEEP_PER_WRITE: usize = 32;

/// A store kept in memory; versions are ETags.
#[derive(Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    reaper: OnceLock<Option<ReaperHandle>>,
}

/// What the store, its change feed and its reaper share.
#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    notifier: RevisionNotifier,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("items", &self.lock().items.len())
            .finish()
    }
}

/// One stored item.
#[derive(Clone)]
struct Entry {
    value: Bytes,
    version: u64,
    expires_at: Option<SystemTime>,
}

impl Entry {
    fn item(&self) -> Item {
        Item {
            value: self.value.clone(),
            etag: self.version.to_string(),
            expires_at: self.expires_at,
        }
    }

    fn live(&self, now: SystemTime) -> bool {
        !ttl::is_expired(self.expires_at, now)
    }
}

/// The store's state, behind the lock.
struct Inner {
    items: BTreeMap<String, Entry>,
    /// (deadline, key) of every item with a TTL, exactly those in `items`.
    deadlines: BTreeSet<(SystemTime, String)>,
    last_version: u64,
    /// Changes of the call in progress, recorded at its end.
    pending: Vec<Change>,
    history: History,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            items: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            last_version: 0,
            pending: Vec::new(),
            history: History::new(Retention::default(), 0),
        }
    }
}

impl Inner {
    /// The live item at `key`.
    fn live(&self, key: &str, now: SystemTime) -> Option<&Entry> {
        self.items.get(key).filter(|e| e.live(now))
    }

    /// Stores `entry` at `key`, keeping the deadline index exact, and records the put (after
    /// the delete of an expired item it replaces); returns the entry it replaced.
    fn put(&mut self, key: String, entry: Entry, now: SystemTime) -> Option<Entry> {
        let value = entry.value.clone();
        let deadline = entry.expires_at;
        // One search of the map: the replaced entry comes back from the insert.
        let old = self.items.insert(key.clone(), entry);
        let old_deadline = old.as_ref().and_then(|e| e.expires_at);
        if let Some(at) = old_deadline.filter(|at| Some(*at) != deadline) {
            self.deadlines.remove(&(at, key.clone()));
        }
        if let Some(at) = deadline.filter(|at| Some(*at) != old_deadline) {
            self.deadlines.insert((at, key.clone()));
        }
        let prev_value = match &old {
            Some(e) if e.live(now) => Some(e.value.clone()),
            Some(e) => {
                self.record(key.clone(), Op::Delete, None, Some(e.value.clone()));
                None
            }
            None => None,
        };
        self.record(key, Op::Put, Some(value), prev_value);
        old
    }

    /// Removes `key`, keeping the deadline index exact, and records the delete (an expired
    /// item's too: that is its expiry event); returns the entry it held.
    fn take(&mut self, key: &str) -> Option<Entry> {
        let old = self.items.remove(key)?;
        if let Some(at) = old.expires_at {
            self.deadlines.remove(&(at, key.to_string()));
        }
        self.next_version();
        self.record(key.to_string(), Op::Delete, None, Some(old.value.clone()));
        Some(old)
    }

    /// Notes one change of the call in progress (its revision is set at the end of the call).
    fn record(&mut self, key: String, op: Op, value: Option<Bytes>, prev_value: Option<Bytes>) {
        self.pending.push(Change {
            revision: 0,
            key,
            op,
            value,
            prev_value,
        });
    }

    /// Ends a call: records its changes at one revision, the last version it took; returns
    /// that revision if it changed anything.
    fn commit(&mut self) -> Option<u64> {
        if self.pending.is_empty() {
            return None;
        }
        let revision = self.last_version;
        let changes = std::mem::take(&mut self.pending);
        self.history.append(revision, changes);
        Some(revision)
    }

    /// Removes up to `max` items whose deadline has passed; returns how many.
    fn sweep(&mut self, now: SystemTime, max: usize) -> usize {
        let due: Vec<String> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max)
            .map(|(_, k)| k.clone())
            .collect();
        for key in &due {
            self.take(key);
        }
        due.len()
    }

    /// The next version, never handed out before.
    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }

    /// Checks one write against the live state: key, ETag, first-write.
    fn check_set(&self, req: &SetRequest, now: SystemTime) -> Result<(), StateError> {
        etag::check_key(&req.key)?;
        let stored = self.live(&req.key, now).map(|e| e.version);
        etag::check_write(&req.key, req.etag.as_deref(), req.concurrency, stored)
    }

    /// Checks one delete against the live state: key, and the ETag if it has one.
    fn check_delete(&self, req: &DeleteRequest, now: SystemTime) -> Result<(), StateError> {
        etag::check_key(&req.key)?;
        if req.etag.as_deref().is_some_and(|e| !e.is_empty()) {
            let stored = self.live(&req.key, now).map(|e| e.version);
            etag::check_write(
                &req.key,
                req.etag.as_deref(),
                Concurrency::LastWrite,
                stored,
            )?;
        }
        Ok(())
    }

    /// Writes without checks; returns the new version.
    fn write(&mut self, req: &SetRequest, now: SystemTime) -> u64 {
        let version = self.next_version();
        let entry = Entry {
            value: req.value.clone(),
            version,
            expires_at: req.ttl.map(|t| ttl::expiry(now, t)),
        };
        self.put(req.key.clone(), entry, now);
        version
    }

    /// Applies one write if its checks pass; returns the new version.
    fn set(&mut self, req: &SetRequest, now: SystemTime) -> Result<u64, StateError> {
        self.check_set(req, now)?;
        Ok(self.write(req, now))
    }

    /// Applies one delete if its checks pass (an expired item at the key is dropped too).
    fn delete(&mut self, req: &DeleteRequest, now: SystemTime) -> Result<(), StateError> {
        self.check_delete(req, now)?;
        self.take(&req.key);
        Ok(())
    }

    /// Checks every operation against the state before the transaction; only if all pass,
    /// applies them all in order.
    fn multi(&mut self, ops: &[TxOperation], now: SystemTime) -> Result<(), StateError> {
        for (index, op) in ops.iter().enumerate() {
            let checked = match op {
                TxOperation::Upsert(req) => self.check_set(req, now),
                TxOperation::Delete(req) => self.check_delete(req, now),
            };
            checked.map_err(|source| StateError::TransactionAborted {
                index,
                key: op.key().to_string(),
                source: Box::new(source),
            })?;
        }
        for op in ops {
            match op {
                TxOperation::Upsert(req) => {
                    self.write(req, now);
                }
                TxOperation::Delete(req) => {
                    self.take(&req.key);
                }
            }
        }
        Ok(())
    }
}

impl MemoryStore {
    /// An empty store keeping the default [`Retention`] of history.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store keeping `retention` of history.
    pub fn with_retention(retention: Retention) -> Self {
        let store = Self::default();
        store.lock().history.set_retention(retention);
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// Locks the state for a write, after sweeping a few expired items; the changes are
    /// recorded and published when the guard goes.
    fn lock_for_write(&self, now: SystemTime) -> WriteGuard<'_> {
        let mut guard = WriteGuard {
            inner: self.lock(),
            notifier: &self.shared.notifier,
        };
        guard.inner.sweep(now, SWEEP_PER_WRITE);
        guard
    }

    /// Removes every expired item now (recording a delete event for each); returns how many.
    /// Reads never see expired items anyway: this frees their memory and tells watchers.
    pub fn purge_expired(&self) -> usize {
        self.shared.purge_expired()
    }

    /// How many items the store holds, expired ones not yet swept included (for tests and
    /// metrics).
    pub fn stored_len(&self) -> usize {
        self.lock().items.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // parking_lot locks are not poisoned; every operation leaves the map whole before it
        // can panic.
        self.inner.lock()
    }

    fn purge_expired(&self) -> usize {
        let mut inner = self.lock();
        let swept = inner.sweep(SystemTime::now(), usize::MAX);
        inner.history.expire(Instant::now());
        if let Some(revision) = inner.commit() {
            self.notifier.publish(revision);
        }
        swept
    }
}

/// The lock held for a write: on release, the call's changes go to history at one revision and
/// waiters are woken.
struct WriteGuard<'a> {
    inner: MutexGuard<'a, Inner>,
    notifier: &'a RevisionNotifier,
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Some(revision) = self.inner.commit() {
            // Published under the lock, so revisions are published in order.
            self.notifier.publish(revision);
        }
    }
}

#[async_trait]
impl ExpirySweep for Shared {
    async fn sweep_expired(self: Arc<Self>) -> Result<usize, StateError> {
        Ok(self.purge_expired())
    }
}

#[async_trait]
impl ChangeFeed for Shared {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn current_revision(&self) -> Result<u64, StateError> {
        Ok(self.lock().history.last_revision())
    }

    async fn snapshot(&self, prefixes: &[String]) -> Result<Snapshot, StateError> {
        let now = SystemTime::now();
        let inner = self.lock();
        let mut entries = Vec::new();
        for prefix in normalize_prefixes(prefixes) {
            let range = inner
                .items
                .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                .filter(|(_, e)| e.live(now))
                .map(|(k, e)| KeyValue {
                    key: k.clone(),
                    value: e.value.clone(),
                });
            entries.extend(range);
        }
        Ok(Snapshot {
            revision: inner.history.last_revision(),
            entries,
        })
    }

    async fn changes_after(&self, after: u64, limit: usize) -> Result<ChangesAfter, StateError> {
        Ok(self.lock().history.changes_after(after, limit))
    }

    async fn wait_for_revision(&self, after: u64) -> Result<u64, StateError> {
        Ok(self.notifier.wait_after(after).await)
    }

    async fn compact(&self, through: u64) -> Result<u64, StateError> {
        Ok(self.lock().history.compact_through(through))
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn features(&self) -> Features {
        Features {
            etag: true,
            durable: false,
            transactional: true,
            ttl: true,
            query: true,
            delete_with_prefix: true,
            keys_like: true,
            remote: false,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        etag::check_key(key)?;
        Ok(self.lock().live(key, SystemTime::now()).map(Entry::item))
    }

    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        let now = SystemTime::now();
        let version = self.lock_for_write(now).set(&req, now)?;
        Ok(version.to_string())
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let now = SystemTime::now();
        self.lock_for_write(now).delete(&req, now)
    }

    /// Applies the batch under one lock, in order; a key that fails its checks is reported and
    /// left unchanged.
    async fn set_many(&self, reqs: Vec<SetRequest>) -> Vec<Result<String, StateError>> {
        let now = SystemTime::now();
        let mut inner = self.lock_for_write(now);
        reqs.iter()
            .map(|req| inner.set(req, now).map(|v| v.to_string()))
            .collect()
    }

    /// Reads every key from one consistent state.
    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StateError>> {
        let now = SystemTime::now();
        let inner = self.lock();
        keys.iter()
            .map(|key| {
                etag::check_key(key)?;
                Ok(inner.live(key, now).map(Entry::item))
            })
            .collect()
    }

    async fn delete_many(&self, reqs: Vec<DeleteRequest>) -> Vec<Result<(), StateError>> {
        let now = SystemTime::now();
        let mut inner = self.lock_for_write(now);
        reqs.iter().map(|req| inner.delete(req, now)).collect()
    }

    /// Atomic under the lock. As in Dapr, every operation's ETag and first-write check is made
    /// against the state before the transaction (an ETag read before it stays good even after an
    /// earlier operation of the same transaction wrote the key; a first-write of a key that
    /// existed before fails even after an earlier delete of it); only if all pass are the
    /// operations applied, in order. The first failing check is reported as
    /// [`StateError::TransactionAborted`], with nothing applied.
    async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        let now = SystemTime::now();
        self.lock_for_write(now).multi(&ops, now)
    }

    async fn delete_with_prefix(&self, prefix: &str) -> Result<u64, StateError> {
        keys::check_prefix(prefix)?;
        let now = SystemTime::now();
        let mut inner = self.lock_for_write(now);
        let doomed: Vec<String> = inner
            .items
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| keys::under_prefix(prefix, k))
            .map(|(k, _)| k.clone())
            .collect();
        let mut deleted = 0u64;
        for key in doomed {
            if inner.take(&key).is_some_and(|e| e.live(now)) {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn keys(&self, pattern: &str, page: Page) -> Result<KeyPage, StateError> {
        let like = LikePattern::new(pattern);
        let prefix = like.literal_prefix();
        let limit = keys::page_limit(&page);
        let start = match keys::resume_after(&page) {
            Some(after) if after >= prefix.as_str() => Bound::Excluded(after),
            _ => Bound::Included(prefix.as_str()),
        };
        let now = SystemTime::now();
        let inner = self.lock();
        let matching = inner
            .items
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, e)| e.live(now) && like.matches(k))
            .map(|(k, _)| k.clone());
        Ok(keys::collect_page(matching, limit))
    }

    async fn query(&self, q: &Query) -> Result<QueryResponse, StateError> {
        let now = SystemTime::now();
        let live: Vec<(String, Item)> = self
            .lock()
            .items
            .iter()
            .filter(|(_, e)| e.live(now))
            .map(|(k, e)| (k.clone(), e.item()))
            .collect();
        query::run(live.into_iter(), q)
    }

    /// The store's history; the first call inside a tokio runtime also starts the expiry
    /// reaper (it stops when the store is dropped).
    fn change_feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        self.reaper
            .get_or_init(|| spawn_reaper(Arc::downgrade(&self.shared), DEFAULT_REAP_INTERVAL));
        Some(Arc::clone(&self.shared) as Arc<dyn ChangeFeed>)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_deadline_index_follows_overwrites_and_deletes() {
        let mut inner = Inner::default();
        let now = SystemTime::now();
        let ttl = |s| SetRequest::new("k", "v").with_ttl(Duration::from_secs(s));
        inner.set(&ttl(10), now).unwrap();
        inner.set(&ttl(20), now).unwrap();
        assert_eq!(inner.deadlines.len(), 1);
        inner.set(&SetRequest::new("k", "v"), now).unwrap();
        assert!(inner.deadlines.is_empty());
        inner.set(&ttl(10), now).unwrap();
        inner.set(&ttl(10), now).unwrap();
        assert_eq!(
            inner.deadlines.len(),
            1,
            "same deadline twice keeps one entry"
        );
        inner.delete(&DeleteRequest::new("k"), now).unwrap();
        assert!(inner.deadlines.is_empty() && inner.items.is_empty());
    }

    #[test]
    fn sweep_removes_only_due_items() {
        let mut inner = Inner::default();
        let now = SystemTime::now();
        for (key, secs) in [("a", 1), ("b", 2), ("c", 100)] {
            inner
                .set(
                    &SetRequest::new(key, "v").with_ttl(Duration::from_secs(secs)),
                    now,
                )
                .unwrap();
        }
        inner.set(&SetRequest::new("d", "v"), now).unwrap();
        assert_eq!(inner.sweep(now + Duration::from_secs(5), 1), 1);
        assert_eq!(inner.sweep(now + Duration::from_secs(5), 10), 1);
        assert_eq!(inner.sweep(now + Duration::from_secs(5), 10), 0);
        let left: Vec<&String> = inner.items.keys().collect();
        assert_eq!(left, ["c", "d"]);
        assert_eq!(inner.deadlines.len(), 1);
    }

    #[test]
    fn a_failed_transaction_changes_nothing() {
        let mut inner = Inner::default();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        inner
            .set(&SetRequest::new("a", "a1").with_ttl(hour), now)
            .unwrap();
        inner.set(&SetRequest::new("b", "b1"), now).unwrap();
        let ops = vec![
            TxOperation::Upsert(SetRequest::new("a", "a2")),
            TxOperation::Delete(DeleteRequest::new("b")),
            TxOperation::Upsert(SetRequest::new("c", "c").with_ttl(hour)),
            TxOperation::Upsert(SetRequest::new("a", "a3").with_etag("2")),
        ];
        let err = inner.multi(&ops, now).unwrap_err();
        assert!(
            matches!(err, StateError::TransactionAborted { index: 3, .. }),
            "{err:?}"
        );
        let a = inner.live("a", now).unwrap();
        assert_eq!((a.value.as_ref(), a.version), (&b"a1"[..], 1));
        assert!(a.expires_at.is_some());
        assert_eq!(inner.live("b", now).unwrap().version, 2);
        assert!(!inner.items.contains_key("c"));
        assert_eq!(inner.last_version, 2, "no version was handed out");
        assert_eq!(inner.deadlines.len(), 1);
    }

    #[test]
    fn transaction_checks_see_the_state_before_it() {
        let mut inner = Inner::default();
        let now = SystemTime::now();
        let v1 = inner.set(&SetRequest::new("a", "a1"), now).unwrap();
        let ops = vec![
            TxOperation::Upsert(SetRequest::new("a", "a2")),
            TxOperation::Upsert(SetRequest::new("a", "a3").with_etag(v1.to_string())),
            TxOperation::Upsert(
                SetRequest::new("n", "n").with_concurrency(Concurrency::FirstWrite),
            ),
        ];
        inner.multi(&ops, now).unwrap();
        assert_eq!(inner.live("a", now).unwrap().value.as_ref(), b"a3");
        assert_eq!(inner.live("n", now).unwrap().value.as_ref(), b"n");
    }
}
