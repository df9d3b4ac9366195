//! Watch: a revisioned change feed with resync and acknowledged delivery (spec/state.md,
//! "Watch"; the datasync API of Ligato cn-infra, with etcd's revisions).
//!
//! # Model
//! Every committed write or transaction of a store gets a **revision**, a `u64` above every
//! earlier one; each change (key, [`Op`], value, previous value) carries its commit's revision, so
//! the changes of one `multi` (or `set_many`, `delete_many`, `delete_with_prefix`, TTL sweep)
//! share one. The store keeps a **history** of changes, bounded by a [`Retention`] (count and/or
//! age) and compacted whole revisions at a time.
//!
//! A store exposes its history as a [`ChangeFeed`] ([`crate::Store::change_feed`]); [`watch`]
//! serves a [`Registration`] over any feed: first a [`WatchEvent::Resync`] (a consistent snapshot
//! of every key under the prefixes at revision R), then every [`WatchEvent::Change`] after R in
//! revision order — no gaps, no duplicates, a key under two prefixes once. Resuming after a
//! revision skips the resync while history still holds what follows it; if it does not, the
//! watcher gets [`WatchEvent::Compacted`] and a fresh resync — never a silent gap.
//!
//! Each event carries a [`DoneHandle`]. The delivery side waits for every `done` in order, each
//! with [`WatchOptions::done_timeout`] (5 s by default); a timeout, a failure and a handle dropped
//! without `done` are logged (`tracing`) and counted ([`WatchStats`]) — never taken as success.
//! No change is delivered before the resync's `done` (or its timeout).
//!
//! Each registration has its own bounded queue and delivery task reading history from its own
//! position: a watcher that stops reading stalls only itself. Writers never wait for watchers.
//! When it reads again, it catches up from history, or resyncs if history moved past it.
//!
//! [`Watchers`] merges registrations over several feeds into one handle and [`Writers`] fans
//! writes out to several stores (the seed's `KVProtoWatchers` / `KVProtoWriters`). [`Session`]
//! gives keys the lifetime of their writer (etcd's lease) on any [`crate::Store`].
//!
//! # Backends
//! - **memory**: history is a ring of changes under the store's lock, appended by the write that
//!   makes them; waiters are woken through a [`RevisionNotifier`]. A reaper task (started with the
//!   first `change_feed()` inside a tokio runtime) sweeps expired items into delete events.
//! - **redb**: the global version counter (the ETag source) is the revision: a commit's revision
//!   is the counter after it. Changes go to a `changes` table in the same write transaction, so
//!   history is durable, a resume works across restarts, and a reader never sees a revision
//!   before the ones below it. Same reaper for TTL expiry.
//! - **PostgreSQL** (to implement against [`ChangeFeed`]): a one-row revision counter updated
//!   (`UPDATE … SET rev = rev + 1 RETURNING rev`) inside each write transaction — the row lock
//!   serialises commits, so revisions become visible in order — and a `changes(revision, seq, key,
//!   op, value, prev_value, at)` table written in the same transaction; `pg_notify(channel,
//!   revision)` on commit; one LISTEN connection per store feeds a [`RevisionNotifier`] (with a
//!   periodic poll as fallback, see [`ChangeFeed::wait_for_revision`]). Snapshot: one
//!   `REPEATABLE READ` transaction reading the counter and the items. Compaction: `DELETE FROM
//!   changes WHERE revision <= $1` plus a stored `compacted_through`.
//! - **Redis** (to implement against [`ChangeFeed`]): inside the existing Lua write scripts,
//!   `INCR {store}:rev` and one `XADD {store}:changes <rev>-<seq> …` per change (key, op, value,
//!   prev) — Lua runs atomically, so stream ids follow revisions. `changes_after(r)` is
//!   `XRANGE ({r}-max +`; waiting is `XREAD BLOCK` on a dedicated connection publishing to a
//!   [`RevisionNotifier`]. Snapshot: a Lua script reading the revision and the keys at once (or
//!   `MULTI` over a scan). Retention: `XTRIM MINID` with `compacted_through` kept in a key.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use sluice_state::{MemoryStore, SetRequest, Store};
//! use sluice_state::watch::{self, WatchEvent, WatchOptions};
//!
//! let store = Arc::new(MemoryStore::new());
//! let mut reg = watch::watch_store(&*store, "demo", vec!["pipelines/".into()], None,
//!     WatchOptions::default())?;
//! store.set(SetRequest::new("pipelines/a", "{}")).await?;
//! while let Some(event) = reg.next().await {
//!     match event {
//!         WatchEvent::Resync { entries, done, .. } => { let _ = entries; done.ok() }
//!         WatchEvent::Change { key, op, done, .. } => { println!("{key} {op:?}"); done.ok() }
//!         WatchEvent::Compacted { .. } => {} // a Resync follows
//!     }
//! }
//! # Ok(()) }
//! ```

mod aggregate;
pub mod bench;
mod delivery;
mod done;
mod event;
mod feed;
mod history;
mod metrics;
mod options;
mod reaper;
mod registration;
mod session;
mod types;

use std::sync::Arc;

pub use aggregate::{AggregatedRegistration, FeedWatcher, Watcher, Watchers, Writers};
pub use event::{DoneHandle, DoneOutcome, WatchEvent};
pub use feed::{ChangeFeed, RevisionNotifier};
pub use history::History;
pub use metrics::{WatchMetrics, WatchStats};
pub use options::WatchOptions;
pub use reaper::{spawn_reaper, ExpirySweep, ReaperHandle, DEFAULT_REAP_INTERVAL};
pub use registration::{watch, Registration, RegistrationControl};
pub use session::{Session, SessionOptions, SessionReaper};
pub use types::{
    matches_any, normalize_prefixes, Change, ChangePage, ChangesAfter, KeyValue, Op, Retention,
    Snapshot,
};

use crate::store::Store;

/// Why a watch call failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The store offers no change feed.
    #[error("the {backend} store does not support watch")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
    },
    /// The prefix is watched already.
    #[error("prefix {prefix:?} is already watched")]
    PrefixExists {
        /// The prefix.
        prefix: String,
    },
    /// The prefix is not watched.
    #[error("prefix {prefix:?} is not watched")]
    PrefixMissing {
        /// The prefix.
        prefix: String,
    },
    /// A store call failed.
    #[error(transparent)]
    State(#[from] crate::error::StateError),
}

/// [`watch`] over `store`'s change feed; [`WatchError::Unsupported`] if it has none.
pub fn watch_store(
    store: &dyn Store,
    name: impl Into<String>,
    prefixes: Vec<String>,
    from_revision: Option<u64>,
    options: WatchOptions,
) -> Result<Registration, WatchError> {
    let feed = store.change_feed().ok_or(WatchError::Unsupported {
        backend: store.name(),
    })?;
    Ok(watch(feed, name, prefixes, from_revision, options))
}

/// Shorthand for an `Arc` of a feed.
pub type SharedFeed = Arc<dyn ChangeFeed>;
