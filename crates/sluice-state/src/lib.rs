//! # sluice-state
//!
//! The state store Sluice keeps its own state in (checkpointed positions, connector settings) and
//! offers to its users: the [`Store`] trait with ETags and first-write / last-write concurrency, an
//! in-memory backend ([`MemoryStore`]) and the embedded default backend on redb ([`RedbStore`]),
//! one file in the data directory.

pub mod conformance;
pub mod error;
pub mod etag;
pub mod memory;
pub mod query;
pub mod redb_store;
pub mod store;

pub use error::StateError;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use query::{Filter, Query, QueryResponse, QueryResult, Sort};
pub use store::{
    Concurrency, Consistency, DeleteRequest, Features, Item, KeyPage, Page, SetRequest, Store,
    TxOperation, DEFAULT_PAGE_LIMIT,
};
