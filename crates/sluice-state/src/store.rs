//! The store contract shared by every backend.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StateError;
use crate::query::{Query, QueryResponse};
use crate::watch::ChangeFeed;

/// A stored value with its ETag.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The value, byte-identical to what was written.
    pub value: Bytes,
    /// Changes on every write of the key.
    pub etag: String,
    /// When the item expires, if it was written with a TTL (reported as `ttlExpireTime`).
    pub expires_at: Option<SystemTime>,
}

/// How a write without an ETag is treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    /// The write wins (the default).
    #[default]
    LastWrite,
    /// The write succeeds only if the key does not exist yet.
    FirstWrite,
}

/// How strongly a read or write must be consistent across replicas. Stores with one copy (all of
/// Sluice's) honour only `Strong`, which is what `Eventual` then gets too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Any replica will do (the default).
    #[default]
    Eventual,
    /// Every replica agrees.
    Strong,
}

/// A write of one key.
#[derive(Clone, Debug, PartialEq)]
pub struct SetRequest {
    /// The key (non-empty).
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// If set (and non-empty), the write succeeds only if it matches the stored ETag.
    pub etag: Option<String>,
    /// How a write without an ETag is treated.
    pub concurrency: Concurrency,
    /// Time to live; `None` means the item never expires (and clears a previous TTL).
    pub ttl: Option<Duration>,
    /// Consistency hint.
    pub consistency: Consistency,
}

impl SetRequest {
    /// A last-write-wins write of `value` to `key`.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        SetRequest {
            key: key.into(),
            value: value.into(),
            etag: None,
            concurrency: Concurrency::LastWrite,
            ttl: None,
            consistency: Consistency::Eventual,
        }
    }

    /// Expires the item after `ttl`.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Requires the stored ETag to be `etag`.
    pub fn with_etag(mut self, etag: impl Into<String>) -> Self {
        self.etag = Some(etag.into());
        self
    }

    /// Sets the concurrency mode.
    pub fn with_concurrency(mut self, c: Concurrency) -> Self {
        self.concurrency = c;
        self
    }
}

/// A delete of one key.
#[derive(Clone, Debug, PartialEq)]
pub struct DeleteRequest {
    /// The key (non-empty).
    pub key: String,
    /// If set (and non-empty), the delete succeeds only if it matches the stored ETag.
    pub etag: Option<String>,
    /// Consistency hint.
    pub consistency: Consistency,
}

impl DeleteRequest {
    /// An unconditional delete.
    pub fn new(key: impl Into<String>) -> Self {
        DeleteRequest {
            key: key.into(),
            etag: None,
            consistency: Consistency::Eventual,
        }
    }

    /// Requires the stored ETag to be `etag`.
    pub fn with_etag(mut self, etag: impl Into<String>) -> Self {
        self.etag = Some(etag.into());
        self
    }
}

/// One operation of a [`Store::multi`] transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum TxOperation {
    /// Write a key.
    Upsert(SetRequest),
    /// Delete a key.
    Delete(DeleteRequest),
}

impl TxOperation {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            TxOperation::Upsert(r) => &r.key,
            TxOperation::Delete(r) => &r.key,
        }
    }
}

/// Which page of a listing to return.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Most keys to return; `None` means the backend's default (100).
    pub limit: Option<usize>,
    /// The `next` token of the previous page; `None` starts at the beginning.
    pub token: Option<String>,
}

/// One page of keys, in ascending key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys.
    pub keys: Vec<String>,
    /// Token for the next page, or `None` if this is the last one.
    pub next: Option<String>,
}

/// Default page size of [`Store::keys`] and [`Store::query`].
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// Optional capabilities a backend advertises (Dapr's feature names in brackets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// ETags on every item and conditional writes (`ETAG`).
    pub etag: bool,
    /// Writes survive a crash once acknowledged.
    pub durable: bool,
    /// `multi` transactions (`TRANSACTIONAL`).
    pub transactional: bool,
    /// Time to live on writes (`TTL`).
    pub ttl: bool,
    /// Queries over JSON values (`QUERY_API`).
    pub query: bool,
    /// Delete with prefix (`DELETE_WITH_PREFIX`).
    pub delete_with_prefix: bool,
    /// Key listing with a LIKE pattern (`KEYS_LIKE`).
    pub keys_like: bool,
    /// Every call is a round trip to a server: callers gain by batching concurrent calls (e.g.
    /// one [`Store::bulk_get`] for many waiting reads). Not one of Dapr's features.
    pub remote: bool,
}

impl Features {
    /// Dapr's names of the advertised features.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (on, name) in [
            (self.etag, "ETAG"),
            (self.transactional, "TRANSACTIONAL"),
            (self.ttl, "TTL"),
            (self.query, "QUERY_API"),
            (self.delete_with_prefix, "DELETE_WITH_PREFIX"),
            (self.keys_like, "KEYS_LIKE"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }
}

/// A key-value store with ETags. Every backend passes [`crate::conformance`].
#[async_trait]
pub trait Store: Send + Sync {
    /// The backend's name, for messages.
    fn name(&self) -> &'static str;

    /// What the backend supports.
    fn features(&self) -> Features;

    /// The item at `key`, or `None` if it does not exist (not an error).
    async fn get(&self, key: &str) -> Result<Option<Item>, StateError>;

    /// Writes one key and returns its new ETag.
    async fn set(&self, req: SetRequest) -> Result<String, StateError>;

    /// Deletes one key. Deleting a missing key without an ETag is not an error.
    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError>;

    /// Writes several keys and returns one result per request, in request order: the new ETag, or
    /// why that key was not written.
    ///
    /// Not atomic (bulk set in the store contract): a key whose ETag or concurrency check fails is
    /// reported and left unchanged while the others are applied. Requests apply in list order, so a
    /// later request for the same key sees the earlier one. The default loops over [`Store::set`];
    /// durable backends override it to commit the whole batch at once, which is what makes batched
    /// checkpointing fast.
    async fn set_many(&self, reqs: Vec<SetRequest>) -> Vec<Result<String, StateError>> {
        let mut results = Vec::with_capacity(reqs.len());
        for req in reqs {
            results.push(self.set(req).await);
        }
        results
    }

    /// Reads several keys; one result per key, in key order. A missing key is `Ok(None)`, never an
    /// error of the whole call.
    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StateError>> {
        let mut results = Vec::with_capacity(keys.len());
        for key in keys {
            results.push(self.get(key).await);
        }
        results
    }

    /// Deletes several keys; one result per request. Not atomic, like [`Store::set_many`].
    async fn delete_many(&self, reqs: Vec<DeleteRequest>) -> Vec<Result<(), StateError>> {
        let mut results = Vec::with_capacity(reqs.len());
        for req in reqs {
            results.push(self.delete(req).await);
        }
        results
    }

    /// A transaction: checks every ETag (and first-write condition) first, each against the state
    /// before the transaction (as Dapr does); only if all pass, applies every operation in list
    /// order, all or nothing. A failed check is [`StateError::TransactionAborted`] naming the
    /// operation.
    async fn multi(&self, _ops: Vec<TxOperation>) -> Result<(), StateError> {
        Err(StateError::unsupported(self.name(), "transactions"))
    }

    /// Deletes every key that starts with `prefix` followed by no further `||` separator (Dapr's
    /// rule: `app||` deletes `app||k1` but not `app||sub||k3`); returns how many. An empty prefix
    /// is an error.
    async fn delete_with_prefix(&self, _prefix: &str) -> Result<u64, StateError> {
        Err(StateError::unsupported(self.name(), "delete with prefix"))
    }

    /// Keys matching a SQL LIKE pattern (`%` any run, `_` one character, `\\` escapes), one page at
    /// a time in ascending order. Expired keys are not listed.
    async fn keys(&self, _pattern: &str, _page: Page) -> Result<KeyPage, StateError> {
        Err(StateError::unsupported(self.name(), "key listing"))
    }

    /// A query over JSON values: filter, sort and page (see [`crate::query`]).
    async fn query(&self, _q: &Query) -> Result<QueryResponse, StateError> {
        Err(StateError::unsupported(self.name(), "queries"))
    }

    /// The store's revisioned change history, for [`crate::watch`]; `None` (the default) if the
    /// backend keeps none. Every call returns a handle to the same history.
    fn change_feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        None
    }
}
