//! The store contract shared by every backend.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StateError;

/// A stored value with its ETag.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The value, byte-identical to what was written.
    pub value: Bytes,
    /// Changes on every write of the key.
    pub etag: String,
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
}

impl SetRequest {
    /// A last-write-wins write of `value` to `key`.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        SetRequest {
            key: key.into(),
            value: value.into(),
            etag: None,
            concurrency: Concurrency::LastWrite,
        }
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
}

impl DeleteRequest {
    /// An unconditional delete.
    pub fn new(key: impl Into<String>) -> Self {
        DeleteRequest {
            key: key.into(),
            etag: None,
        }
    }

    /// Requires the stored ETag to be `etag`.
    pub fn with_etag(mut self, etag: impl Into<String>) -> Self {
        self.etag = Some(etag.into());
        self
    }
}

/// Optional capabilities a backend advertises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// ETags on every item and conditional writes.
    pub etag: bool,
    /// Writes survive a crash once acknowledged.
    pub durable: bool,
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
}
