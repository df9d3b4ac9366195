//! # sluice-state
//!
//! The state store Sluice keeps its own state in (checkpointed positions, connector settings) and
//! offers to its users: the [`Store`] trait with ETags and first-write / last-write concurrency, an
//! in-memory backend ([`MemoryStore`]) and the embedded default backend on redb ([`RedbStore`]),
//! one file in the data directory.

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

pub use error::StateError;
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
pub use query::{Filter, Query, QueryResponse, QueryResult, Sort};
pub use redb_store::RedbStore;
#[cfg(feature = "redis")]
pub use redis_store::{RedisOptions, RedisStore};
pub use retry::{with_retry, RetryPattern, RetryPolicy, RetryingStore};
pub use store::{
    Concurrency, Consistency, DeleteRequest, Features, Item, KeyPage, Page, SetRequest, Store,
    TxOperation, DEFAULT_PAGE_LIMIT,
};
