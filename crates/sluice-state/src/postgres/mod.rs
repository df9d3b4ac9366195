//! The PostgreSQL backend: one table per store, created and migrated by Sluice.
//!
//! # Layout
//!
//! ```sql
//! CREATE TABLE <table> (
//!     key        text COLLATE "C" PRIMARY KEY, -- bytewise order, as every backend lists keys
//!     value      bytea NOT NULL,               -- the value, byte for byte
//!     value_json jsonb,                        -- the value again when it is a JSON object (queries)
//!     version    bigint NOT NULL,              -- the ETag, from <table>_version_seq
//!     expires_at timestamptz,                  -- TTL; NULL for none
//!     updated_at timestamptz NOT NULL
//! );
//! ```
//!
//! plus `<table>_version_seq`, `<table>_migrations` and an index on `expires_at`; see
//! [`PostgresStore::connect`] for how they are created and migrated.
//!
//! # Contract
//!
//! * **ETags** are versions drawn from one sequence for the whole table, so a version is never
//!   handed out twice — not after a delete and re-create either. Every ETag and first-write check
//!   is in the `WHERE` clause of the statement that writes (`UPDATE … WHERE version = $n`,
//!   `INSERT … ON CONFLICT DO UPDATE … WHERE <expired>`), so it is atomic on the server.
//! * **TTL**: `expires_at` is computed by the server (`now() + ttl`) and every read and condition
//!   treats a row past it as absent, so an item is invisible the moment it expires; a background
//!   task deletes expired rows every [`PostgresOptions::sweep_interval`].
//! * **Bulk operations** run in one transaction, pipelined in one round trip, with a result per
//!   request: a failed condition is reported for its key and the rest applies. A server failure
//!   rolls the whole batch back and is reported for every request.
//! * **`multi`** checks every condition against the state before the transaction (the rows
//!   locked), then applies every operation in order, all or nothing. A key the check found
//!   absent cannot be locked, so its first operation runs conditionally and a concurrent writer
//!   that created it meanwhile aborts the transaction rather than being overwritten. A failure of
//!   the request is a [`StateError::TransactionAborted`] naming the operation; a failure of the
//!   server is returned as the [`StateError::Backend`] it is, so retry policies see whether it is
//!   transient (nothing was applied — unless the connection broke during the commit itself, when
//!   the outcome is unknown, as with any database client).
//! * **Queries** are translated to SQL over `value_json`; see [`PostgresStore::query`].
//! * **Consistency**: PostgreSQL is strongly consistent (one primary, read-your-writes); both
//!   hints, eventual and strong, are served strongly.
//! * **Failures**: connection failures (refused, reset, closed, timed out), server shutdowns,
//!   serialization failures (40001) and deadlocks (40P01) are transient
//!   ([`StateError::is_transient`]); the pool replaces closed connections, so the store recovers
//!   by itself after a server restart.
//! * **Limits**: keys must not contain NUL (PostgreSQL `text` cannot hold it), and a key longer
//!   than about 2,700 bytes does not fit the primary-key index; either is an
//!   [`StateError::InvalidRequest`] (in a bulk set, one such key fails the whole batch).

mod connection;
mod errors;
mod feed;
mod ident;
mod listing;
mod options;
mod pipeline;
mod query_sql;
mod schema;
mod sql;
mod sweep;
mod tx;
mod value;
mod write;

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::Row;

pub use ident::MAX_TABLE_NAME_LEN;
pub use options::PostgresOptions;

use errors::{Target, BACKEND};
use ident::TableNames;
use sql::Sql;
use write::{Applied, Remove, Step, Write};

use crate::error::StateError;
use crate::query::{Query, QueryResponse};
use crate::store::{DeleteRequest, Features, Item, KeyPage, Page, SetRequest, Store, TxOperation};
use crate::watch::{ChangeFeed, Retention};

/// A store in a PostgreSQL table (see the [module documentation](self)).
///
/// Cheap to clone: clones share one connection pool. Every method may be called concurrently.
/// Dropping the last clone stops the expiry sweeper and closes the connections.
#[derive(Clone)]
pub struct PostgresStore {
    inner: std::sync::Arc<Inner>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target.0)
            .finish_non_exhaustive()
    }
}

/// What the clones of a store share.
pub(crate) struct Inner {
    pool: Pool,
    sql: Sql,
    names: TableNames,
    target: Target,
    /// The connection settings, for the change feed's `LISTEN` connection.
    config: tokio_postgres::Config,
    /// The change feed, started by the first [`Store::change_feed`] call.
    feed: feed::FeedSlot,
    /// Notifies other processes' watchers after writes; started by the first write.
    pump: std::sync::OnceLock<Option<feed::pump::Pump>>,
    /// Stops the sweeper when the last clone goes.
    _sweeper: Option<sweep::Sweeper>,
}

impl Inner {
    /// Tells watchers, here and in other processes, that a write call ended (it may have
    /// committed). Cheap: wake-ups coalesce.
    fn wrote(&self) {
        self.feed.poke_local();
        let pump = self.pump.get_or_init(|| {
            feed::pump::Pump::spawn(self.config.clone(), self.names.watch.channel.clone())
        });
        if let Some(pump) = pump {
            pump.poke();
        }
    }

    /// A pooled connection for `what` (built only on failure).
    async fn client(&self, what: impl FnOnce() -> String) -> Result<Object, StateError> {
        self.pool
            .get()
            .await
            .map_err(|e| self.target.pool(&what(), e))
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db` or a
    /// `key=value` connection string; no TLS) and creates or migrates the store's table.
    ///
    /// Migration runs in one transaction under an advisory lock named after the table, so
    /// several processes may connect at once to a fresh database. Errors name the server,
    /// database and table — never the password; a server that cannot be reached is a transient
    /// [`StateError::Backend`], a malformed URL or table name an [`StateError::InvalidRequest`].
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StateError> {
        let names = TableNames::new(&options.table, options.schema.as_deref())?;
        let config = connection::parse(url, &options)?;
        let target = Target(format!(
            "{}, table {}",
            connection::describe(&config),
            names.display
        ));
        let pool = connection::pool(config.clone(), &options)?;
        let mut client = pool.get().await.map_err(|e| target.pool("connect", e))?;
        schema::migrate(&mut client, &names, &target).await?;
        drop(client);
        let sql = Sql::new(&names);
        let sweeper = options
            .sweep_interval
            .map(|every| sweep::spawn(pool.clone(), sql.sweep.clone(), target.clone(), every));
        Ok(PostgresStore {
            inner: std::sync::Arc::new(Inner {
                pool,
                sql,
                names,
                target,
                config,
                feed: feed::FeedSlot::default(),
                pump: std::sync::OnceLock::new(),
                _sweeper: sweeper,
            }),
        })
    }

    /// The table's qualified name (`schema.table`, or `table` when no schema was configured).
    pub fn table_name(&self) -> &str {
        &self.inner.names.display
    }

    /// Sets how much change history the store keeps for watchers ([`Retention::default`] unless
    /// set); applied by the feed's reaper, every [`crate::watch::DEFAULT_REAP_INTERVAL`].
    pub fn set_retention(&self, retention: Retention) {
        self.inner.feed.set_retention(retention);
    }

    /// Deletes every expired row now and returns how many (the background sweeper does the same
    /// every [`PostgresOptions::sweep_interval`]). Expired rows are invisible either way.
    pub async fn sweep_expired(&self) -> Result<u64, StateError> {
        sweep::sweep(&self.inner.pool, &self.inner.sql.sweep, &self.inner.target).await
    }

    /// Runs one write or delete outside a transaction.
    async fn run_one(
        &self,
        step: Step<'_>,
        what: impl Fn() -> String,
    ) -> Result<Applied, StateError> {
        let inner = &self.inner;
        let client = inner.client(&what).await?;
        let stmt = client
            .prepare_cached(step.kind().sql(&inner.sql))
            .await
            .map_err(|e| inner.target.pg(&what(), &e))?;
        write::run(&client, &stmt, step)
            .await
            .map_err(|e| inner.target.pg(&what(), &e))
    }

    /// Runs `steps` pipelined in one transaction and commits; one outcome per step. A failure
    /// rolls back everything and is returned alone.
    async fn run_batch(&self, steps: &[Step<'_>], what: &str) -> Result<Vec<Applied>, StateError> {
        let inner = &self.inner;
        let target = &inner.target;
        let mut client = inner.client(|| what.to_string()).await?;
        let kinds: Vec<write::Kind> = steps.iter().map(|s| s.kind()).collect();
        let prepared = write::Prepared::new(&client, &inner.sql, kinds)
            .await
            .map_err(|e| target.pg(what, &e))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| target.pg(what, &e))?;
        let results = pipeline::in_order(prepared.ops(tx.client(), steps)?).await;
        let mut applied = Vec::with_capacity(results.len());
        for (step, result) in steps.iter().zip(results) {
            match result {
                Ok(a) => applied.push(a),
                Err(e) => {
                    let key = step.key();
                    return Err(target.pg(&format!("{what} (at key {key:?}; nothing applied)"), &e));
                }
            }
        }
        tx.commit()
            .await
            .map_err(|e| target.pg(&format!("commit the {what}"), &e))?;
        Ok(applied)
    }
}

/// The item in `row` whose value, version and expiry start at column `first`.
fn item(row: &Row, first: usize) -> Result<Item, tokio_postgres::Error> {
    let value: Vec<u8> = row.try_get(first)?;
    let version: i64 = row.try_get(first + 1)?;
    let expires_at: Option<SystemTime> = row.try_get(first + 2)?;
    Ok(Item {
        value: Bytes::from(value),
        etag: version.to_string(),
        expires_at,
    })
}

/// Fills the slots `indices` of `results` (requests on `keys`) from a batch's outcome, or with
/// copies of its failure.
fn settle<T>(
    results: &mut [Option<Result<T, StateError>>],
    indices: &[usize],
    keys: &[&str],
    outcome: Result<Vec<Applied>, StateError>,
    to_result: impl Fn(&str, Applied) -> Result<T, StateError>,
) {
    match outcome {
        Ok(applied) => {
            for ((&i, key), a) in indices.iter().zip(keys).zip(applied) {
                results[i] = Some(to_result(key, a));
            }
        }
        Err(e) => {
            for &i in indices {
                results[i] = Some(Err(e.replicate(BACKEND)));
            }
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
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
            remote: true,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        value::check_key(key)?;
        let inner = &self.inner;
        let what = || format!("get {key:?}");
        let client = inner.client(what).await?;
        let fail = |e: tokio_postgres::Error| inner.target.pg(&what(), &e);
        let stmt = client.prepare_cached(&inner.sql.get).await.map_err(fail)?;
        let row = client.query_opt(&stmt, &[&key]).await.map_err(fail)?;
        row.map(|r| item(&r, 0)).transpose().map_err(fail)
    }

    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        let w = Write::new(req)?;
        let Some(step) = Step::checked_set(&w) else {
            return Err(StateError::EtagMismatch { key: w.key });
        };
        let applied = self.run_one(step, || format!("set {:?}", w.key)).await;
        self.inner.wrote();
        write::set_result(&w.key, applied?)
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let r = Remove::new(req)?;
        let Some(step) = Step::checked_delete(&r) else {
            return Err(StateError::EtagMismatch { key: r.key });
        };
        let applied = self.run_one(step, || format!("delete {:?}", r.key)).await;
        self.inner.wrote();
        write::delete_result(&r.key, applied?)
    }

    async fn set_many(&self, reqs: Vec<SetRequest>) -> Vec<Result<String, StateError>> {
        let mut results: Vec<Option<Result<String, StateError>>> = Vec::with_capacity(reqs.len());
        let mut writes: Vec<(usize, Write)> = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            results.push(None);
            match Write::new(req) {
                Ok(w) => writes.push((i, w)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let mut indices = Vec::with_capacity(writes.len());
        let mut steps = Vec::with_capacity(writes.len());
        for (i, w) in &writes {
            match Step::checked_set(w) {
                Some(step) => {
                    indices.push(*i);
                    steps.push(step);
                }
                None => results[*i] = Some(Err(StateError::EtagMismatch { key: w.key.clone() })),
            }
        }
        let outcome = match steps.as_slice() {
            [] => Ok(Vec::new()),
            [one] => self
                .run_one(*one, || format!("set {:?}", one.key()))
                .await
                .map(|a| vec![a]),
            _ => {
                self.run_batch(&steps, &format!("bulk set of {} keys", steps.len()))
                    .await
            }
        };
        self.inner.wrote();
        let keys: Vec<&str> = steps.iter().map(Step::key).collect();
        settle(&mut results, &indices, &keys, outcome, write::set_result);
        results.into_iter().flatten().collect()
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StateError>> {
        let mut results: Vec<Option<Result<Option<Item>, StateError>>> =
            Vec::with_capacity(keys.len());
        let mut wanted: Vec<&str> = Vec::with_capacity(keys.len());
        for key in keys {
            match value::check_key(key) {
                Ok(()) => {
                    results.push(None);
                    wanted.push(key);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !wanted.is_empty() {
            let inner = &self.inner;
            let what = || format!("bulk get of {} keys", wanted.len());
            let found: Result<HashMap<String, Item>, StateError> = async {
                let client = inner.client(what).await?;
                let fail = |e: tokio_postgres::Error| inner.target.pg(&what(), &e);
                let stmt = client
                    .prepare_cached(&inner.sql.bulk_get)
                    .await
                    .map_err(fail)?;
                let rows = client.query(&stmt, &[&wanted]).await.map_err(fail)?;
                let mut found = HashMap::with_capacity(rows.len());
                for row in rows {
                    let key: String = row.try_get(0).map_err(fail)?;
                    found.insert(key, item(&row, 1).map_err(fail)?);
                }
                Ok(found)
            }
            .await;
            for (slot, key) in results.iter_mut().zip(keys) {
                if slot.is_none() {
                    *slot = Some(match &found {
                        Ok(found) => Ok(found.get(key).cloned()),
                        Err(e) => Err(e.replicate(BACKEND)),
                    });
                }
            }
        }
        results.into_iter().flatten().collect()
    }

    async fn delete_many(&self, reqs: Vec<DeleteRequest>) -> Vec<Result<(), StateError>> {
        let mut results: Vec<Option<Result<(), StateError>>> = Vec::with_capacity(reqs.len());
        let mut removes: Vec<(usize, Remove)> = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            results.push(None);
            match Remove::new(req) {
                Ok(r) => removes.push((i, r)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let mut indices = Vec::with_capacity(removes.len());
        let mut steps = Vec::with_capacity(removes.len());
        for (i, r) in &removes {
            match Step::checked_delete(r) {
                Some(step) => {
                    indices.push(*i);
                    steps.push(step);
                }
                None => results[*i] = Some(Err(StateError::EtagMismatch { key: r.key.clone() })),
            }
        }
        let outcome = match steps.as_slice() {
            [] => Ok(Vec::new()),
            [one] => self
                .run_one(*one, || format!("delete {:?}", one.key()))
                .await
                .map(|a| vec![a]),
            _ => {
                self.run_batch(&steps, &format!("bulk delete of {} keys", steps.len()))
                    .await
            }
        };
        self.inner.wrote();
        let keys: Vec<&str> = steps.iter().map(Step::key).collect();
        settle(&mut results, &indices, &keys, outcome, write::delete_result);
        results.into_iter().flatten().collect()
    }

    async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        let result = tx::multi(&self.inner, ops).await;
        self.inner.wrote();
        result
    }

    async fn delete_with_prefix(&self, prefix: &str) -> Result<u64, StateError> {
        let inner = &self.inner;
        let client = inner
            .client(|| format!("delete with prefix {prefix:?}"))
            .await?;
        let result =
            listing::delete_with_prefix(&client, &inner.names.table, &inner.target, prefix).await;
        inner.wrote();
        result
    }

    async fn keys(&self, pattern: &str, page: Page) -> Result<KeyPage, StateError> {
        let inner = &self.inner;
        let client = inner
            .client(|| format!("list keys like {pattern:?}"))
            .await?;
        listing::keys(&client, &inner.names.table, &inner.target, pattern, page).await
    }

    /// Translates the query to SQL over `value_json`: a path walks objects only (`-> $1 -> $2`,
    /// never into arrays), EQ / NEQ / IN use jsonb equality, GT / GTE / LT / LTE hold only
    /// between two numbers or two strings (strings by code point, `COLLATE "C"`), sorting orders
    /// by kind of value as jsonb does with absent fields last, and pages are `LIMIT` / `OFFSET`
    /// with the offset as token — the semantics of [`crate::query::run`]. When a sort key holds
    /// an array or an object in a matching row (jsonb orders those by size first, Sluice element
    /// by element), the page is computed by [`crate::query::run`] over the matching rows, at most
    /// 100,000 of them. Numbers with more digits than an `f64` holds compare exactly here (Sluice
    /// rounds them), and an object holding `\u0000` in a string, which jsonb cannot store, is
    /// never found.
    async fn query(&self, q: &Query) -> Result<QueryResponse, StateError> {
        query_sql::run(&self.inner, q).await
    }

    /// The change history kept by a trigger in `<table>_changes` (see [`feed`]); the first call
    /// (inside a tokio runtime) opens the `LISTEN` connection and starts the reaper that turns
    /// expired rows into delete events and applies the [`Retention`]. They stop when the feed
    /// and the store are dropped.
    fn change_feed(&self) -> Option<std::sync::Arc<dyn ChangeFeed>> {
        let inner = &self.inner;
        let feed = inner.feed.get(
            &inner.pool,
            &inner.config,
            &inner.names,
            &inner.sql.sweep,
            &inner.target,
        );
        Some(feed)
    }
}
