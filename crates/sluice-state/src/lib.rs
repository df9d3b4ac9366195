//! # sluice-state
//!
//! The state store Sluice keeps its own state in (checkpointed positions, connector settings) and
//! offers to its users: the [`Store`] trait with ETags and first-write / last-write concurrency, an
//! in-memory backend ([`MemoryStore`]) and the embedded default backend on redb ([`RedbStore`]),
//! one file in the data directory.
//!
//! ## Watch
//! [`watch`] is a revisioned change feed over a store, as in etcd and Ligato cn-infra's
//! datasync: every committed write or transaction gets a global revision; a registration
//! ([`watch::watch`], [`watch::watch_store`]) receives a resync — a consistent snapshot of its
//! prefixes at revision R — then every change after R in revision order, without gaps or
//! duplicates, each with a `done` callback the delivery side waits for (bounded, timeouts
//! counted). Registrations resume from a revision; a compacted one gets a notice and a fresh
//! resync. Backends expose their history through [`watch::ChangeFeed`]
//! ([`Store::change_feed`]): memory keeps it in memory, redb in a durable table next to the
//! items; the module documents how PostgreSQL and Redis map onto it. [`watch::Session`] gives
//! keys the lifetime of their writer on any store; [`watch::Watchers`] / [`watch::Writers`]
//! aggregate several watchers or writers behind one handle; [`conformance::watch`] checks a
//! backend's feed; [`watch::bench`] measures delivery.

pub mod conformance;
pub mod error;
pub mod etag;
pub mod keys;
pub mod like;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod query;
pub mod redb_store;
#[cfg(feature = "redis")]
pub mod redis_store;
pub mod retry;
pub mod store;
pub mod ttl;
pub mod watch;

pub use error::StateError;
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
pub use query::{Filter, Query, QueryResponse, QueryResult, Sort};
pub use redb_store::{RedbOptions, RedbStore};
#[cfg(feature = "redis")]
pub use redis_store::{RedisOptions, RedisStore};
pub use retry::{with_retry, RetryPattern, RetryPolicy, RetryingStore};
pub use store::{
    Concurrency, Consistency, DeleteRequest, Features, Item, KeyPage, Page, SetRequest, Store,
    TxOperation, DEFAULT_PAGE_LIMIT,
};
