//! The PostgreSQL change feed (see [`crate::watch`], "Backends").
//!
//! Every row change is recorded by a trigger in `<table>_changes`, in the writing transaction
//! itself, at the transaction's revision ([`schema`]). Revisions come from a sequence, so a
//! writer never waits for another to commit (commits keep their group-commit throughput);
//! readers only serve history up to the [`horizon`], below which every writer has finished. One
//! `LISTEN` connection per store wakes the task that publishes the horizon to a
//! [`RevisionNotifier`] ([`listen`]), with a one-second poll as fallback; writers' processes
//! send the notifications after their commits ([`pump`]), and wake local watchers directly.
//!
//! A snapshot takes the feed's advisory lock exclusively for one statement — in-flight writers
//! finish first, new ones wait at their first change — and reads the latest revision and the
//! items under the prefixes in that one statement, so it holds exactly the commits up to its
//! revision. History is compacted whole revisions at a time (`compacted_through` in
//! `<table>_watch`), by [`ChangeFeed::compact`] and by the [`Retention`] the expiry reaper
//! applies every [`DEFAULT_REAP_INTERVAL`], together with deleting expired rows (which the
//! trigger turns into delete events).

mod horizon;
mod listen;
pub(crate) mod pump;
pub(crate) mod schema;
mod sql;

use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::Config;

use super::errors::Target;
use super::ident::TableNames;
use crate::error::StateError;
use crate::watch::{
    normalize_prefixes, spawn_reaper, Change, ChangeFeed, ChangePage, ChangesAfter, ExpirySweep,
    KeyValue, Op, ReaperHandle, Retention, RevisionNotifier, Snapshot, DEFAULT_REAP_INTERVAL,
};

pub(crate) use sql::FeedSql;

/// A store's change feed; shared by every [`crate::Store::change_feed`] handle.
pub(crate) struct PgFeed {
    pool: Pool,
    sql: Arc<FeedSql>,
    sweep_sql: String,
    target: Target,
    retention: Mutex<Retention>,
    shared: Arc<listen::Shared>,
    _tasks: listen::Tasks,
}

/// The feed and its reaper, created with the first [`crate::Store::change_feed`] call.
pub(crate) struct FeedSlot {
    feed: OnceLock<(Arc<PgFeed>, Option<ReaperHandle>)>,
    retention: Mutex<Retention>,
}

impl Default for FeedSlot {
    fn default() -> Self {
        FeedSlot {
            feed: OnceLock::new(),
            retention: Mutex::new(Retention::default()),
        }
    }
}

impl FeedSlot {
    /// The feed, started on the first call (which must be inside a tokio runtime).
    pub(crate) fn get(
        &self,
        pool: &Pool,
        config: &Config,
        names: &TableNames,
        sweep_sql: &str,
        target: &Target,
    ) -> Arc<PgFeed> {
        let (feed, _) = self.feed.get_or_init(|| {
            let sql = Arc::new(FeedSql::new(names));
            let shared = Arc::new(listen::Shared {
                notifier: RevisionNotifier::new(0),
                wake: tokio::sync::Notify::new(),
            });
            let tasks = listen::spawn(
                config.clone(),
                names.watch.channel.clone(),
                pool.clone(),
                Arc::clone(&sql),
                Arc::clone(&shared),
                target.0.clone(),
            );
            let feed = Arc::new(PgFeed {
                pool: pool.clone(),
                sql,
                sweep_sql: sweep_sql.to_string(),
                target: target.clone(),
                retention: Mutex::new(*lock(&self.retention)),
                shared,
                _tasks: tasks,
            });
            let reaper = spawn_reaper(Arc::downgrade(&feed), DEFAULT_REAP_INTERVAL);
            (feed, reaper)
        });
        Arc::clone(feed)
    }

    /// Wakes this process's watchers after a commit (other processes hear of it by `NOTIFY`).
    pub(crate) fn poke_local(&self) {
        if let Some((feed, _)) = self.feed.get() {
            feed.shared.wake.notify_one();
        }
    }

    /// Sets the retention of history (for the feed now and any started later).
    pub(crate) fn set_retention(&self, retention: Retention) {
        *lock(&self.retention) = retention;
        if let Some((feed, _)) = self.feed.get() {
            *lock(&feed.retention) = retention;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PgFeed {
    async fn client(&self, what: &str) -> Result<Object, StateError> {
        self.pool.get().await.map_err(|e| self.target.pool(what, e))
    }

    /// The horizon now, published to waiters.
    async fn settle(&self, client: &Object) -> Result<u64, StateError> {
        let h = horizon::settle(client, &self.sql)
            .await
            .map_err(|e| self.target.pg("read the watch horizon", &e))?;
        self.shared.notifier.publish(h);
        Ok(h)
    }

    /// Applies the retention: drops whole revisions beyond the count bound and older than the
    /// age bound.
    async fn retain(&self, client: &Object) -> Result<(), StateError> {
        let retention = *lock(&self.retention);
        let fail = |e: tokio_postgres::Error| self.target.pg("apply the watch retention", &e);
        let mut through: Option<i64> = None;
        if let Some(max) = retention.max_changes {
            let count: i64 = client
                .query_one(
                    &client
                        .prepare_cached(&self.sql.approx_count)
                        .await
                        .map_err(fail)?,
                    &[],
                )
                .await
                .map_err(fail)?
                .try_get(0)
                .map_err(fail)?;
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            if count > max {
                let stmt = client
                    .prepare_cached(&self.sql.nth_oldest)
                    .await
                    .map_err(fail)?;
                let row = client
                    .query_opt(&stmt, &[&(count - max)])
                    .await
                    .map_err(fail)?;
                if let Some(row) = row {
                    through = Some(row.try_get(0).map_err(fail)?);
                }
            }
        }
        if let Some(age) = retention.max_age {
            let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            let stmt = client
                .prepare_cached(&self.sql.older_than)
                .await
                .map_err(fail)?;
            let old: Option<i64> = client
                .query_one(&stmt, &[&ms])
                .await
                .map_err(fail)?
                .try_get(0)
                .map_err(fail)?;
            through = through.max(old);
        }
        if let Some(through) = through {
            self.compact_with(client, u64::try_from(through).unwrap_or(0))
                .await?;
        }
        Ok(())
    }

    async fn compact_with(&self, client: &Object, through: u64) -> Result<u64, StateError> {
        let horizon = self.settle(client).await?;
        let through = i64::try_from(through.min(horizon)).unwrap_or(i64::MAX);
        let fail = |e: tokio_postgres::Error| self.target.pg("compact the watch history", &e);
        let stmt = client
            .prepare_cached(&self.sql.compact)
            .await
            .map_err(fail)?;
        let oldest: i64 = client
            .query_one(&stmt, &[&through])
            .await
            .map_err(fail)?
            .try_get(0)
            .map_err(fail)?;
        Ok(u64::try_from(oldest).unwrap_or(0))
    }
}

#[async_trait]
impl ExpirySweep for PgFeed {
    async fn sweep_expired(self: Arc<Self>) -> Result<usize, StateError> {
        let n = super::sweep::sweep(&self.pool, &self.sweep_sql, &self.target).await?;
        if n > 0 {
            // Local watchers at once; other processes by their poll fallback.
            self.shared.wake.notify_one();
        }
        let client = self.client("apply the watch retention").await?;
        self.retain(&client).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// A change row's op.
fn op_of(code: i8) -> Option<Op> {
    match code as u8 {
        b'p' => Some(Op::Put),
        b'd' => Some(Op::Delete),
        _ => None,
    }
}

#[async_trait]
impl ChangeFeed for PgFeed {
    fn backend(&self) -> &'static str {
        super::errors::BACKEND
    }

    async fn current_revision(&self) -> Result<u64, StateError> {
        let client = self.client("read the current revision").await?;
        self.settle(&client).await
    }

    async fn snapshot(&self, prefixes: &[String]) -> Result<Snapshot, StateError> {
        let what = "read a watch snapshot";
        let mut client = self.client(what).await?;
        let fail = |e: tokio_postgres::Error| self.target.pg(what, &e);
        let prefixes = normalize_prefixes(prefixes);
        let lock_stmt = client
            .prepare_cached(&self.sql.lock_exclusive)
            .await
            .map_err(fail)?;
        let read = client
            .prepare_cached(&self.sql.snapshot)
            .await
            .map_err(fail)?;
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute(&lock_stmt, &[]).await.map_err(fail)?;
        let rows = tx.query(&read, &[&prefixes]).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        let mut revision = 0u64;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let rev: i64 = row.try_get(0).map_err(fail)?;
            revision = u64::try_from(rev).unwrap_or(0);
            let key: Option<String> = row.try_get(1).map_err(fail)?;
            let value: Option<Vec<u8>> = row.try_get(2).map_err(fail)?;
            if let (Some(key), Some(value)) = (key, value) {
                entries.push(KeyValue {
                    key,
                    value: Bytes::from(value),
                });
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        self.shared.notifier.publish(revision);
        Ok(Snapshot { revision, entries })
    }

    async fn changes_after(&self, after: u64, limit: usize) -> Result<ChangesAfter, StateError> {
        let what = "read the watch history";
        let client = self.client(what).await?;
        let fail = |e: tokio_postgres::Error| self.target.pg(what, &e);
        let mut horizon = self.shared.notifier.latest();
        if after >= horizon {
            horizon = self.settle(&client).await?;
        }
        if after > horizon {
            let stmt = client
                .prepare_cached(&self.sql.compacted_through)
                .await
                .map_err(fail)?;
            let oldest: i64 = client
                .query_one(&stmt, &[])
                .await
                .map_err(fail)?
                .try_get(0)
                .map_err(fail)?;
            return Ok(ChangesAfter::Compacted {
                oldest: u64::try_from(oldest).unwrap_or(0),
            });
        }
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let stmt = client
            .prepare_cached(&self.sql.changes_after)
            .await
            .map_err(fail)?;
        let rows = client
            .query(&stmt, &[&as_i64(after), &as_i64(horizon), &limit])
            .await
            .map_err(fail)?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let compacted: i64 = row.try_get(0).map_err(fail)?;
            let compacted = u64::try_from(compacted).unwrap_or(0);
            if after < compacted {
                return Ok(ChangesAfter::Compacted { oldest: compacted });
            }
            let Some(revision) = row.try_get::<_, Option<i64>>(1).map_err(fail)? else {
                continue;
            };
            let key: String = row.try_get(2).map_err(fail)?;
            let code: i8 = row.try_get(3).map_err(fail)?;
            let op = op_of(code).ok_or_else(|| {
                self.target.permanent(
                    what,
                    format!("unknown change op {code} at revision {revision}"),
                )
            })?;
            let value: Option<Vec<u8>> = row.try_get(4).map_err(fail)?;
            let prev: Option<Vec<u8>> = row.try_get(5).map_err(fail)?;
            changes.push(Change {
                revision: u64::try_from(revision).unwrap_or(0),
                key,
                op,
                value: value.map(Bytes::from),
                prev_value: prev.map(Bytes::from),
            });
        }
        let last_revision = changes.last().map_or(after, |c| c.revision);
        Ok(ChangesAfter::Changes(ChangePage {
            changes,
            last_revision,
        }))
    }

    async fn wait_for_revision(&self, after: u64) -> Result<u64, StateError> {
        let notifier = &self.shared.notifier;
        match tokio::time::timeout(listen::POLL_FALLBACK, notifier.wait_after(after)).await {
            Ok(latest) => Ok(latest),
            Err(_) => {
                let client = self.client("wait for a revision").await?;
                self.settle(&client).await
            }
        }
    }

    async fn compact(&self, through: u64) -> Result<u64, StateError> {
        let client = self.client("compact the watch history").await?;
        self.compact_with(&client, through).await
    }
}
