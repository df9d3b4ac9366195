//! Settings of a [`super::PostgresStore`].

use std::time::Duration;

/// How a [`super::PostgresStore`] connects and where it keeps its items.
///
/// Every field has a default ([`PostgresOptions::default`]); a configuration usually sets only
/// `table` (and `schema` when the database is shared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The table holding the items (`sluice_state` by default). Letters, digits and `_`, not
    /// starting with a digit, at most [`super::MAX_TABLE_NAME_LEN`] bytes: Sluice derives the names
    /// of its sequence, migration table and index from it.
    pub table: String,
    /// The schema of the table; `None` uses the connection's `search_path` (usually `public`).
    /// Created if missing. Same rules as `table`.
    pub schema: Option<String>,
    /// Most connections the store opens at once; operations beyond that wait for a free one.
    pub pool_size: usize,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// How long an operation waits for a free pooled connection before failing (transiently).
    pub acquire_timeout: Duration,
    /// How often expired items are deleted from the table; `None` leaves them to be swept by
    /// [`super::PostgresStore::sweep_expired`] (they are invisible either way).
    pub sweep_interval: Option<Duration>,
    /// The `application_name` the connections report to the server (visible in
    /// `pg_stat_activity`), unless the URL sets one.
    pub application_name: String,
}

impl Default for PostgresOptions {
    /// Table `sluice_state` in the default schema, 16 connections, 10 s to connect or acquire, a
    /// sweep every 60 s, application name `sluice`.
    fn default() -> Self {
        PostgresOptions {
            table: "sluice_state".to_string(),
            schema: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(10),
            sweep_interval: Some(Duration::from_secs(60)),
            application_name: "sluice".to_string(),
        }
    }
}
