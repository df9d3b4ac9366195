//! The embedded default backend on redb: one file in the data directory.
//!
//! Layout: table `items` maps a key to a record (a format tag, the item's version,
//! its deadline if it has a TTL, the value bytes); table `deadlines` indexes the items with a TTL
//! by deadline; table `meta` holds the last version handed out. Every write takes the next version
//! from that global counter in the same transaction, so a version (the ETag) is never handed out
//! twice — not after a delete and re-create, not after a reopen — and the counter doubles as the
//! global revision a later watch API needs.
//!
//! Writes run one at a time, queued on a fair async lock: a small one inline on the calling
//! task unless the commit will write the file, anything else on tokio's blocking pool (see
//! [`RedbFeed::write`]). A write is durable when it returns: it
//! is appended to a write-ahead log beside the file (`<file>.wal-*`, see [`wal`]) and answered
//! once an `fdatasync` of the log covers it — concurrent writes share one. Its changes go into a
//! redb write transaction held open across writes ([`pending`]) that is committed to the file,
//! without an fsync, every [`RedbOptions::flush_commits`] writes: redb copies and hashes each
//! page a file commit touches, once per file commit rather than once per write. Until then
//! readers see the held writes through an in-memory [`overlay`] consulted before the file. The
//! file itself is made durable by a checkpoint every [`RedbOptions::checkpoint_bytes`] or
//! [`CHECKPOINT_RECORDS`] of log, after which the log is emptied; opening the store replays the
//! records a crash left in the log. A write becomes visible to readers once it is in the log (a
//! crash of the process from then on no longer loses it), a moment before it is on disk and
//! answered. [`Store::set_many`], [`Store::delete_many`] and [`Store::multi`] commit a whole
//! batch as one record. A call that changes nothing (a rejected write, a delete of a missing
//! key) commits nothing.
//!
//! Reads run inline on the calling task. A get is a look into the overlay, then one short redb
//! read transaction served from redb's own page cache (about 1 µs); a `spawn_blocking` round trip per get measured 10–20×
//! slower (release build, 2 cores: 0.5–1 M inline gets/s vs 25–60 k/s through `spawn_blocking`
//! from one task, 100–160 k/s from four — see `examples/redb_throughput.rs`). The cost of
//! the choice: a get that misses the cache reads the file on the worker thread, like any small
//! synchronous file read. Scans (key listings, queries) and large bulk gets run on the blocking
//! pool.
//!
//! TTL: an item is invisible to every read from its deadline on. Expired items are removed from
//! the file by the writes that follow: each write transaction first sweeps a bounded number of
//! them, oldest deadline first, and opening the store sweeps them all;
//! [`RedbStore::purge_expired`] sweeps them all on demand.
//!
//! Watch: the global version counter is the revision. Every change (a put, a delete, an expired
//! item swept — its expiry event) takes a version; a transaction's changes are written to the
//! `changes` table at one revision, the counter after it, in the same transaction, so history is
//! durable, survives a reopen, and commits become visible in revision order. The history is kept
//! under a [`Retention`] (count and age), enforced by each write and by the expiry reaper that
//! [`Store::change_feed`] starts (every [`DEFAULT_REAP_INTERVAL`]), which also turns TTL expiry
//! into delete events without waiting for a write.

mod changes;
mod errors;
mod overlay;
mod pending;
mod reader;
mod record;
mod tables;
mod wal;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use redb::{Database, Durability, WriteTransaction};

use crate::error::StateError;
use crate::keys;
use crate::query::{self, Query, QueryResponse};
use crate::store::{DeleteRequest, Features, Item, KeyPage, Page, SetRequest, Store, TxOperation};
use crate::watch::{
    spawn_reaper, ChangeFeed, ChangesAfter, ExpirySweep, ReaperHandle, Retention, RevisionNotifier,
    Snapshot, DEFAULT_REAP_INTERVAL,
};
use errors::{backend_error, op_error, open_error, BACKEND};
use overlay::Overlay;
use pending::Held;
use tables::{Tables, CHANGES, DEADLINES, ITEMS, WAL_APPLIED, WAL_LOG_ID};
use wal::Wal;
use writer::Writer;

/// A checkpoint (a durable redb commit, after which the log's older segments are deleted) is
/// taken by the first commit once the log holds [`RedbOptions::checkpoint_bytes`] since the last
/// one, or this many records (each non-durable redb commit holds some memory until a durable
/// one).
const CHECKPOINT_RECORDS: u64 = 65_536;

/// How a [`RedbStore`] is run.
#[derive(Clone, Copy, Debug)]
pub struct RedbOptions {
    /// How much change history is kept for watchers.
    pub retention: Retention,
    /// Bytes of write-ahead log after which a commit is made durable in the file itself (a
    /// checkpoint) and the log before it deleted: the most a reopen after a crash replays.
    /// Default 128 MiB. Smaller means more frequent checkpoints, each a pause of the writes.
    pub checkpoint_bytes: u64,
    /// Commits held in memory (readers see them, the log has them) before they are written to
    /// the file together. Default 1024. More means fewer, larger writes to the file — redb
    /// copies each page a write touches once per file commit, not once per store commit — and
    /// more memory; 1 writes every commit to the file at once.
    pub flush_commits: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            retention: Retention::default(),
            checkpoint_bytes: 16 * wal::SEGMENT_BYTES,
            flush_commits: 1024,
        }
    }
}

/// Expired items a write transaction sweeps besides its own work.
const SWEEP_PER_WRITE: usize = 32;

/// Bulk gets of more keys than this run on the blocking pool rather than inline.
const INLINE_BULK_GET: usize = 64;

/// Writes of at most this many keys or operations may run inline on the calling task.
const INLINE_WRITE_OPS: usize = 256;

/// Where a write may run: inline on the calling task, when it is small and the writer is free,
/// or always on the blocking pool (sweeps, compaction, prefix deletes, large batches).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Weight {
    Light,
    Heavy,
}

impl Weight {
    /// Light for a write of at most [`INLINE_WRITE_OPS`] keys or operations.
    fn of(ops: usize) -> Self {
        if ops <= INLINE_WRITE_OPS {
            Weight::Light
        } else {
            Weight::Heavy
        }
    }
}

/// A store in one redb file; versions from a persisted global counter are the ETags.
///
/// Cheap to share behind an `Arc`; every method may be called concurrently. redb takes a lock on
/// the file, so a second open of the same file — from this process or another — fails at once
/// with a [`StateError::Backend`] naming the path.
///
/// A write runs to completion (inline, or on the blocking pool) even if its future is dropped
/// while it waits to be durable, so a cancelled `set` may still be applied (as with any request
/// whose answer is lost).
pub struct RedbStore {
    feed: Arc<RedbFeed>,
    reaper: OnceLock<Option<ReaperHandle>>,
}

/// The database and what its change feed needs; shared by the store, its feed handles and the
/// reaper.
struct RedbFeed {
    db: Database,
    path: PathBuf,
    wal: Wal,
    /// Log bytes after which a commit is a checkpoint.
    checkpoint_bytes: u64,
    /// The sequence number of the last log record (read and written only while holding
    /// `held`).
    last_lsn: AtomicU64,
    /// The write transaction held open across commits; its lock makes commits one at a time.
    /// An async, first-come-first-served lock: a write waiting for the writer holds no thread
    /// (a thread blocked per waiting write made concurrent writers a convoy of thread wake-ups).
    held: Arc<tokio::sync::Mutex<Held>>,
    /// What readers must see of the commits `held` has not committed to the file yet.
    overlay: Overlay,
    retention: Retention,
    notifier: RevisionNotifier,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.feed.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating missing parent directories and the file, and sweeps
    /// the items that expired while it was closed.
    ///
    /// Blocking (it may recover the file after a crash): call it at startup or from
    /// `spawn_blocking`. Fails with a [`StateError::Backend`] naming the path when a directory or
    /// the file cannot be created, the file is not a redb database, or the file is already open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        Self::open_with_retention(path, Retention::default())
    }

    /// Like [`RedbStore::open`], keeping `retention` of change history.
    pub fn open_with_retention(
        path: impl AsRef<Path>,
        retention: Retention,
    ) -> Result<Self, StateError> {
        Self::open_with_options(
            path,
            RedbOptions {
                retention,
                ..RedbOptions::default()
            },
        )
    }

    /// Like [`RedbStore::open`], with `options`.
    pub fn open_with_options(
        path: impl AsRef<Path>,
        options: RedbOptions,
    ) -> Result<Self, StateError> {
        let RedbOptions {
            retention,
            checkpoint_bytes,
            flush_commits,
        } = options;
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                backend_error(format!(
                    "cannot create directory {} for the state store: {e}",
                    parent.display()
                ))
            })?;
        }
        let db = Database::create(&path).map_err(|e| open_error(&path, e))?;
        let log_id = create_tables(&db, &path)?;
        let (wal, entries) = Wal::open(&path, log_id)?;
        let last_lsn = recover(&db, &path, &wal, entries)?;
        let feed = RedbFeed {
            db,
            path,
            wal,
            last_lsn: AtomicU64::new(last_lsn),
            held: Arc::new(tokio::sync::Mutex::new(Held::new(flush_commits))),
            overlay: Overlay::default(),
            checkpoint_bytes,
            retention,
            notifier: RevisionNotifier::new(0),
        };
        let swept = {
            // Nobody else has the store yet.
            let mut held = feed.held.try_lock().map_err(|_| {
                backend_error(format!(
                    "{} is being written while it opens",
                    feed.path.display()
                ))
            })?;
            write_then_flush(&feed, &mut held, |w| w.sweep(usize::MAX))?
        };
        if let (_, Some(lsn)) = swept {
            feed.wal.sync_blocking(lsn)?;
        }
        feed.notifier.publish(changes::current_revision(
            &feed.db,
            &feed.path,
            &feed.overlay,
        )?);
        Ok(RedbStore {
            feed: Arc::new(feed),
            reaper: OnceLock::new(),
        })
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.feed.path
    }

    /// Deletes the store file at `path` and its write-ahead log, if they exist: what removing a
    /// store takes (the file alone would leave its log behind). The store must not be open.
    pub fn remove(path: impl AsRef<Path>) -> Result<(), StateError> {
        let path = path.as_ref();
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(op_error(path, "delete", e)),
        }
        wal::remove_all(path)
    }

    /// Removes every expired item from the file now, in one durable transaction; returns how
    /// many. Reads never see expired items anyway: this only frees their space sooner than the
    /// sweeps of later writes would.
    pub async fn purge_expired(&self) -> Result<usize, StateError> {
        self.feed.purge_expired().await
    }

    /// Runs `f` as one commit (see [`write`]); returns once it is durable.
    async fn write<T, F>(&self, weight: Weight, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T, StateError> + Send + 'static,
    {
        self.feed.write(weight, f).await
    }
}

/// Creates every table so that reads never meet a missing one, and the database's log id (which
/// tells its write-ahead log segments from those of an earlier file at the same path); returns
/// the log id.
fn create_tables(db: &Database, path: &Path) -> Result<u64, StateError> {
    let txn = begin_write(db, path, Durability::Immediate)?;
    let created = txn
        .open_table(ITEMS)
        .map(drop)
        .and_then(|()| txn.open_table(DEADLINES).map(drop))
        .and_then(|()| txn.open_table(CHANGES).map(drop))
        .map_err(|e| op_error(path, "create tables in", e));
    created?;
    let log_id = {
        let mut tables = Tables::open(&txn, path)?;
        match tables.counter(WAL_LOG_ID)? {
            0 => {
                let id = uuid::Uuid::new_v4().as_u64_pair().0.max(1);
                tables.set_meta(WAL_LOG_ID, id)?;
                id
            }
            id => id,
        }
    };
    commit(txn, path)?;
    Ok(log_id)
}

/// Applies the log records the file does not have yet (commits acknowledged before a crash)
/// in one durable commit, then empties the log; returns the last sequence number used.
fn recover(
    db: &Database,
    path: &Path,
    wal: &Wal,
    entries: Vec<wal::Entry>,
) -> Result<u64, StateError> {
    let txn = begin_write(db, path, Durability::Immediate)?;
    let (applied, last) = {
        let mut tables = Tables::open(&txn, path)?;
        let applied = tables.counter(WAL_APPLIED)?;
        let mut last = applied;
        for entry in entries.iter().filter(|e| e.lsn > applied) {
            // The record sets `wal_applied` to its own number itself.
            tables.replay(&entry.redo)?;
            last = entry.lsn;
        }
        (applied, last)
    };
    if last > applied {
        tracing::info!(
            store = %path.display(),
            records = last - applied,
            "replayed the write-ahead log after an unclean stop"
        );
        commit(txn, path)?;
    } else {
        abort(txn, path)?;
    }
    wal.retire_older()?;
    Ok(last)
}

impl RedbFeed {
    /// Runs `f` as one commit; returns once it is durable.
    ///
    /// Waits for the writer first, without holding a thread. A light write then runs inline on
    /// the calling task unless the commit will write the file (a flush or checkpoint is due):
    /// it takes a few µs a key, less than the two thread switches of the blocking pool
    /// (measured ~200 µs a round trip with the HTTP server busy on both cores). Anything else
    /// runs on the blocking pool, holding the writer.
    async fn write<T, F>(self: &Arc<Self>, weight: Weight, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T, StateError> + Send + 'static,
    {
        let mut held = Arc::clone(&self.held).lock_owned().await;
        let inline = weight == Weight::Light && !held.due() && self.checkpoint_due().is_none();
        let (answer, lsn) = if inline {
            let written = write(self, &mut held, f);
            // The writer is free for the next commit while this one waits for the disk.
            drop(held);
            written?
        } else {
            self.blocking(move |feed| write_then_flush(feed, &mut held, f))
                .await?
        };
        if let Some(lsn) = lsn {
            self.wal.synced(lsn).await?;
        }
        Ok(answer)
    }

    /// The log's size (bytes, records) if it has grown enough for the next commit to be a
    /// checkpoint.
    fn checkpoint_due(&self) -> Option<(u64, u64)> {
        let (log_bytes, log_records) = self.wal.pending();
        (log_bytes >= self.checkpoint_bytes || log_records >= CHECKPOINT_RECORDS)
            .then_some((log_bytes, log_records))
    }

    /// Runs `f` on tokio's blocking pool.
    async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&RedbFeed) -> Result<T, StateError> + Send + 'static,
    {
        let feed = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&feed))
            .await
            .map_err(|e| op_error(&self.path, "run a blocking task on", e))?
    }

    /// Sweeps every expired item and applies the history's age bound, in one transaction.
    async fn purge_expired(self: &Arc<Self>) -> Result<usize, StateError> {
        self.write(Weight::Heavy, |w| w.sweep(usize::MAX)).await
    }
}

impl Drop for RedbFeed {
    /// Commits the held writes to the file, durably: a clean close leaves nothing to replay.
    fn drop(&mut self) {
        // Every writer is done: each holds the feed while it holds the writer.
        let Some(held) = Arc::get_mut(&mut self.held).map(tokio::sync::Mutex::get_mut) else {
            return;
        };
        if held.is_open() {
            if let Err(e) = held.commit(&self.db, &self.path, Durability::Immediate) {
                tracing::warn!(store = %self.path.display(), error = %e, "cannot commit held writes on close; the next open replays them from the log");
            }
        }
    }
}

#[async_trait]
impl ExpirySweep for RedbFeed {
    async fn sweep_expired(self: Arc<Self>) -> Result<usize, StateError> {
        self.purge_expired().await
    }
}

#[async_trait]
impl ChangeFeed for Arc<RedbFeed> {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn current_revision(&self) -> Result<u64, StateError> {
        Ok(self.notifier.latest())
    }

    async fn snapshot(&self, prefixes: &[String]) -> Result<Snapshot, StateError> {
        let prefixes = prefixes.to_vec();
        self.blocking(move |f| changes::snapshot(&f.db, &f.path, &f.overlay, &prefixes))
            .await
    }

    async fn changes_after(&self, after: u64, limit: usize) -> Result<ChangesAfter, StateError> {
        self.blocking(move |f| changes::changes_after(&f.db, &f.path, &f.overlay, after, limit))
            .await
    }

    async fn wait_for_revision(&self, after: u64) -> Result<u64, StateError> {
        Ok(self.notifier.wait_after(after).await)
    }

    async fn compact(&self, through: u64) -> Result<u64, StateError> {
        self.write(Weight::Heavy, move |w| w.compact_through(through))
            .await
    }
}

#[async_trait]
impl Store for RedbStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn features(&self) -> Features {
        Features {
            etag: true,
            durable: true,
            transactional: true,
            ttl: true,
            query: true,
            delete_with_prefix: true,
            keys_like: true,
            remote: false,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        crate::etag::check_key(key)?;
        reader::get(&self.feed.db, &self.feed.path, &self.feed.overlay, key)
    }

    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        crate::etag::check_key(&req.key)?;
        self.write(Weight::Light, move |w| {
            w.sweep(SWEEP_PER_WRITE)?;
            Ok(w.set(&req)?.map(|v| v.to_string()))
        })
        .await?
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        crate::etag::check_key(&req.key)?;
        self.write(Weight::Light, move |w| {
            let result = w.delete(&req)?;
            if result.is_ok() {
                w.sweep(SWEEP_PER_WRITE)?;
            }
            Ok(result.map(drop))
        })
        .await?
    }

    /// Applies the whole batch, in order, in one write transaction with one durable commit. Keys
    /// that fail their own checks are reported and skipped; a backend failure fails every
    /// request, since nothing of the batch is committed then.
    async fn set_many(&self, reqs: Vec<SetRequest>) -> Vec<Result<String, StateError>> {
        if reqs.is_empty() {
            return Vec::new();
        }
        let count = reqs.len();
        let outcome = self
            .write(Weight::of(count), move |w| {
                w.sweep(SWEEP_PER_WRITE)?;
                let results = reqs
                    .iter()
                    .map(|req| Ok(w.set(req)?.map(|v| v.to_string())))
                    .collect::<Result<Vec<_>, StateError>>()?;
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => results,
            Err(failure) => (0..count)
                .map(|_| Err(failure.replicate(BACKEND)))
                .collect(),
        }
    }

    /// Reads every key from one snapshot; inline for a few keys, on the blocking pool for many.
    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StateError>> {
        if keys.len() <= INLINE_BULK_GET {
            let feed = &self.feed;
            return reader::bulk_get(&feed.db, &feed.path, &feed.overlay, keys);
        }
        let owned = keys.to_vec();
        let count = owned.len();
        match self
            .feed
            .blocking(move |f| Ok(reader::bulk_get(&f.db, &f.path, &f.overlay, &owned)))
            .await
        {
            Ok(results) => results,
            Err(failure) => (0..count)
                .map(|_| Err(failure.replicate(BACKEND)))
                .collect(),
        }
    }

    /// Like [`Store::set_many`]: one transaction, one durable commit, per-key rejections.
    async fn delete_many(&self, reqs: Vec<DeleteRequest>) -> Vec<Result<(), StateError>> {
        if reqs.is_empty() {
            return Vec::new();
        }
        let count = reqs.len();
        let outcome = self
            .write(Weight::of(count), move |w| {
                let results = reqs
                    .iter()
                    .map(|req| Ok(w.delete(req)?.map(drop)))
                    .collect::<Result<Vec<_>, StateError>>()?;
                w.sweep(SWEEP_PER_WRITE)?;
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => results,
            Err(failure) => (0..count)
                .map(|_| Err(failure.replicate(BACKEND)))
                .collect(),
        }
    }

    /// One write transaction with one durable commit. As in Dapr, every operation's ETag and
    /// first-write check is made against the state before the transaction (an ETag read before
    /// it stays good even after an earlier operation of the same transaction wrote the key; a
    /// first-write of a key that existed before fails even after an earlier delete of it); only
    /// if all pass are the operations applied, in order. The first failing check is reported as
    /// [`StateError::TransactionAborted`], with nothing applied. A backend failure is reported as
    /// it is, with nothing applied either.
    async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.write(Weight::of(ops.len()), move |w| {
            let aborted = |index: usize, op: &TxOperation, source| StateError::TransactionAborted {
                index,
                key: op.key().to_string(),
                source: Box::new(source),
            };
            // Every check sees the state before the transaction.
            let mut reads = Vec::with_capacity(ops.len());
            for (index, op) in ops.iter().enumerate() {
                match w.check_and_read(op)? {
                    Ok(read) => reads.push(read),
                    Err(source) => return Ok(Err(aborted(index, op, source))),
                }
            }
            if distinct_keys(&ops) {
                // Each key is read once, for its check and its write.
                for (op, read) in ops.iter().zip(reads) {
                    w.apply_read(op, read)?;
                }
            } else {
                // A later operation must see an earlier one's write of its key.
                for op in &ops {
                    w.apply(op)?;
                }
            }
            w.sweep(SWEEP_PER_WRITE)?;
            Ok(Ok(()))
        })
        .await?
    }

    async fn delete_with_prefix(&self, prefix: &str) -> Result<u64, StateError> {
        keys::check_prefix(prefix)?;
        let prefix = prefix.to_string();
        self.write(Weight::Heavy, move |w| w.delete_prefix(&prefix))
            .await
    }

    async fn keys(&self, pattern: &str, page: Page) -> Result<KeyPage, StateError> {
        let pattern = pattern.to_string();
        self.feed
            .blocking(move |f| reader::keys(&f.db, &f.path, &f.overlay, &pattern, &page))
            .await
    }

    /// Runs [`query::run`] over a snapshot of the live items whose values look like JSON
    /// objects, on the blocking pool.
    async fn query(&self, q: &Query) -> Result<QueryResponse, StateError> {
        let q = q.clone();
        self.feed
            .blocking(move |f| {
                let items = reader::object_items(&f.db, &f.path, &f.overlay)?;
                query::run(items.into_iter(), &q)
            })
            .await
    }

    /// The durable history; the first call inside a tokio runtime also starts the expiry
    /// reaper (it stops once the store and every feed handle are dropped).
    fn change_feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        self.reaper
            .get_or_init(|| spawn_reaper(Arc::downgrade(&self.feed), DEFAULT_REAP_INTERVAL));
        Some(Arc::new(Arc::clone(&self.feed)) as Arc<dyn ChangeFeed>)
    }
}

/// Runs `f` as one commit; returns its answer and, if the commit still has to wait for the log
/// to reach the disk, the sequence number to wait for ([`Wal::synced`]). `f` returns its
/// answer; what it changed is committed if it changed anything (a rejected request changes
/// nothing). A backend error from `f` drops what it changed.
///
/// A commit is appended to the write-ahead log and made visible to readers through the
/// [`Overlay`] (it is in the log, so a crash of the process no longer loses it); it is durable
/// once the log's syncer has run. Its changes also go into the write transaction held open
/// across commits ([`Held`]), which is committed to the file without an fsync every so often
/// (the overlay is emptied then). Once the log has grown enough, a commit is made durable in the
/// file itself instead (a checkpoint) and the log's older segments deleted.
///
/// Once committed, the transaction's revision is published to watchers. Commits run one at a
/// time, so log records and revisions are in commit order and a reader woken by revision R sees
/// every revision up to R.
fn write<T>(
    feed: &RedbFeed,
    held: &mut Held,
    f: impl FnOnce(&mut Writer<'_>) -> Result<T, StateError>,
) -> Result<(T, Option<u64>), StateError> {
    let path = feed.path.as_path();
    let lsn = feed.last_lsn.load(Ordering::Acquire) + 1;
    // Opening changes nothing in the transaction: a failure needs no rebuild.
    let mut w = held
        .txn(&feed.db, path)
        .and_then(|txn| Writer::open(txn, path, feed.retention))?;
    let outcome = f(&mut w).and_then(|answer| {
        let (changed, revision) = w.finish()?;
        let redo = if changed { Some(w.seal(lsn)?) } else { None };
        Ok((answer, redo, revision))
    });
    let (answer, redo, revision) = match outcome {
        Ok(done) => done,
        Err(failed) => {
            drop(w);
            held.restore(&feed.db, path);
            return Err(failed);
        }
    };
    let Some(redo) = redo else {
        return Ok((answer, None));
    };
    if let Some((log_bytes, log_records)) = feed.checkpoint_due() {
        // The log's records so far become redundant once this commit is durable in the file.
        let began = std::time::Instant::now();
        let rotated = feed.wal.rotate().and_then(|covered| {
            w.apply_deferred(&redo)?;
            Ok(covered)
        });
        drop(w);
        let covered = match rotated {
            Ok(covered) => covered,
            Err(failed) => {
                held.restore(&feed.db, path);
                return Err(failed);
            }
        };
        held.commit(&feed.db, path, Durability::Immediate)?;
        feed.last_lsn.store(lsn, Ordering::Release);
        feed.overlay.clear();
        publish(feed, revision);
        // The commit is durable whatever happens to the old segments: a segment left behind is
        // deleted by the next checkpoint.
        if let Err(e) = feed.wal.retire(covered) {
            tracing::warn!(store = %path.display(), error = %e, "cannot delete write-ahead log segments after a checkpoint");
        }
        tracing::debug!(
            store = %path.display(),
            log_bytes,
            log_records,
            millis = began.elapsed().as_millis() as u64,
            "checkpoint"
        );
        return Ok((answer, None));
    }
    if let Err(failed) = feed.wal.append(lsn, &redo) {
        drop(w);
        held.restore(&feed.db, path);
        return Err(failed);
    }
    feed.last_lsn.store(lsn, Ordering::Release);
    // Our own record always decodes; were it not to, the commit is still in the log and the
    // open transaction, and readers see it from the next flush on.
    let shown = feed.overlay.apply(&redo, path);
    publish(feed, revision);
    // While the log's sync is under way: the commit's item and history writes.
    let applied = w.apply_deferred(&redo);
    drop(w);
    held.hold(redo);
    if let Err(e) = applied {
        // The commit stands (it is in the log and shown to readers); the transaction, which
        // holds part of it, is rebuilt from the held records, this one's included.
        tracing::warn!(store = %path.display(), error = %e, "cannot apply a commit to the held write transaction; rebuilding it");
        held.restore(&feed.db, path);
    }
    shown?;
    Ok((answer, Some(lsn)))
}

/// Runs `f` as one commit ([`write`]), then commits the held writes to the file if they are
/// due. Blocks: for the blocking pool and the opening of the store.
fn write_then_flush<T>(
    feed: &RedbFeed,
    held: &mut Held,
    f: impl FnOnce(&mut Writer<'_>) -> Result<T, StateError>,
) -> Result<(T, Option<u64>), StateError> {
    let written = write(feed, held, f);
    if held.due() {
        flush(feed, held);
    }
    written
}

/// Commits the open transaction to the file without an fsync (the log has its commits) and
/// empties the overlay. A failure is only logged: the transaction is rebuilt and tried again
/// with the next flush.
fn flush(feed: &RedbFeed, held: &mut Held) {
    let (commits, bytes) = held.size();
    let began = std::time::Instant::now();
    match held.commit(&feed.db, &feed.path, Durability::None) {
        Ok(()) => {
            feed.overlay.clear();
            tracing::debug!(
                store = %feed.path.display(),
                commits,
                bytes,
                micros = began.elapsed().as_micros() as u64,
                "held commits written to the file"
            );
        }
        Err(e) => {
            tracing::warn!(store = %feed.path.display(), error = %e, "cannot commit held writes to the file; keeping them in memory");
        }
    }
}

/// Whether no two of `ops` share a key.
fn distinct_keys(ops: &[TxOperation]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity_and_hasher(
        ops.len(),
        foldhash::fast::RandomState::default(),
    );
    ops.iter().all(|op| seen.insert(op.key()))
}

/// Wakes the watchers waiting for `revision`.
fn publish(feed: &RedbFeed, revision: Option<u64>) {
    if let Some(revision) = revision {
        feed.notifier.publish(revision);
    }
}

/// Begins a write transaction with `durability`.
fn begin_write(
    db: &Database,
    path: &Path,
    durability: Durability,
) -> Result<WriteTransaction, StateError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| op_error(path, "begin a write transaction on", e))?;
    txn.set_durability(durability)
        .map_err(|e| op_error(path, "set durability on", e))?;
    Ok(txn)
}

/// Commits (durably or not, as the transaction was begun).
fn commit(txn: WriteTransaction, path: &Path) -> Result<(), StateError> {
    txn.commit().map_err(|e| op_error(path, "commit to", e))
}

/// Drops a transaction's changes.
fn abort(txn: WriteTransaction, path: &Path) -> Result<(), StateError> {
    txn.abort()
        .map_err(|e| op_error(path, "abort a transaction on", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit that fails half-way leaves no trace, and the commits held before it stay.
    #[tokio::test]
    async fn a_commit_failing_half_way_keeps_the_held_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            store.set(SetRequest::new("kept", "1")).await.expect("set");
            let failed = store
                .write(Weight::Light, |w| {
                    w.set(&SetRequest::new("half", "x"))?
                        .map_err(|e| backend_error(e.to_string()))?;
                    Err::<(), _>(backend_error("injected failure".to_string()))
                })
                .await;
            assert!(failed.is_err());
            assert!(store.get("half").await.expect("get").is_none());
            assert!(
                store.feed.held.lock().await.is_open(),
                "the transaction was rebuilt"
            );
            store
                .set(SetRequest::new("after", "2"))
                .await
                .expect("set after");
            assert!(store.get("kept").await.expect("get").is_some());
        }
        let store = RedbStore::open(&path).expect("reopen");
        assert!(store.get("half").await.expect("get").is_none());
        assert!(store.get("kept").await.expect("get").is_some());
        assert!(store.get("after").await.expect("get").is_some());
    }

    /// A store with `retention` whose held commits go to the file every third commit, so that
    /// history is read from both.
    fn with_retention(path: &Path, retention: Retention) -> RedbStore {
        let options = RedbOptions {
            retention,
            flush_commits: 3,
            ..RedbOptions::default()
        };
        RedbStore::open_with_options(path, options).expect("open")
    }

    /// Writes `keys` in one commit; returns its revision.
    async fn commit_keys(store: &RedbStore, keys: &[&str]) -> u64 {
        let reqs = keys.iter().map(|k| SetRequest::new(*k, "v")).collect();
        for result in store.set_many(reqs).await {
            result.expect("set");
        }
        store.feed.current_revision().await.expect("revision")
    }

    /// The keys of the changes after `after`, or the compaction notice.
    async fn history_after(store: &RedbStore, after: u64) -> Result<Vec<(u64, String)>, u64> {
        match store
            .feed
            .changes_after(after, 1000)
            .await
            .expect("changes")
        {
            ChangesAfter::Changes(page) => Ok(page
                .changes
                .into_iter()
                .map(|c| (c.revision, c.key))
                .collect()),
            ChangesAfter::Compacted { oldest } => Err(oldest),
        }
    }

    /// The count bound drops whole revisions, oldest first, and a commit larger than the bound
    /// drops itself too; the file holds the same history after a reopen.
    #[tokio::test]
    async fn history_keeps_whole_revisions_within_the_count_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let retention = Retention {
            max_changes: Some(5),
            max_age: None,
        };
        let (r2, r3, r4, r5) = {
            let store = with_retention(&path, retention);
            commit_keys(&store, &["a1", "a2"]).await;
            let r2 = commit_keys(&store, &["b1", "b2"]).await;
            let r3 = commit_keys(&store, &["c1", "c2"]).await;
            let r4 = commit_keys(&store, &["d1", "d2"]).await;
            assert_eq!(history_after(&store, 0).await, Err(r2));
            let kept = vec![
                (r3, "c1".to_string()),
                (r3, "c2".to_string()),
                (r4, "d1".to_string()),
                (r4, "d2".to_string()),
            ];
            assert_eq!(history_after(&store, r2).await, Ok(kept));
            let big: Vec<String> = (0..7).map(|i| format!("e{i}")).collect();
            let big: Vec<&str> = big.iter().map(String::as_str).collect();
            let r5 = commit_keys(&store, &big).await;
            assert_eq!(history_after(&store, r4).await, Err(r5));
            assert_eq!(history_after(&store, r5).await, Ok(vec![]));
            (r2, r3, r4, r5)
        };
        let store = with_retention(&path, retention);
        assert_eq!(history_after(&store, r2).await, Err(r5));
        assert_eq!(history_after(&store, r5).await, Ok(vec![]));
        let r6 = commit_keys(&store, &["f1"]).await;
        assert_eq!(
            history_after(&store, r5).await,
            Ok(vec![(r6, "f1".to_string())])
        );
        assert!(r2 < r3 && r3 < r4 && r4 < r5 && r5 < r6);
    }

    /// The age bound drops the revisions committed before it, and keeps the rest.
    #[tokio::test]
    async fn history_drops_revisions_older_than_the_age_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = with_retention(
            &dir.path().join("state.redb"),
            Retention {
                max_changes: None,
                max_age: Some(std::time::Duration::from_millis(300)),
            },
        );
        let r1 = commit_keys(&store, &["old1", "old2"]).await;
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
        let r2 = commit_keys(&store, &["new"]).await;
        assert_eq!(history_after(&store, 0).await, Err(r1));
        assert_eq!(
            history_after(&store, r1).await,
            Ok(vec![(r2, "new".to_string())])
        );
    }

    /// A write that finds the writer busy waits for it, and commits once the writer is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_finding_the_writer_busy_waits_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(RedbStore::open(dir.path().join("state.redb")).expect("open"));
        let busy = store.feed.held.lock().await;
        let writer = Arc::clone(&store);
        let set = tokio::spawn(async move { writer.set(SetRequest::new("k", "v")).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!set.is_finished(), "the write waited for the writer");
        assert!(store.get("k").await.expect("get").is_none());
        drop(busy);
        set.await.expect("join").expect("set");
        assert!(store.get("k").await.expect("get").is_some());
    }
}
