//! An in-memory backend: for tests and for state that need not survive the process.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::StateError;
use crate::etag;
use crate::store::{DeleteRequest, Features, Item, SetRequest, Store};

/// A store kept in a hash map; versions are ETags.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    items: HashMap<String, (bytes::Bytes, u64)>,
    next_version: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-operation; the map is still whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn features(&self) -> Features {
        Features {
            etag: true,
            durable: false,
            ..Features::default()
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        etag::check_key(key)?;
        Ok(self.lock().items.get(key).map(|(v, ver)| Item {
            value: v.clone(),
            etag: ver.to_string(),
            expires_at: None,
        }))
    }

    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        etag::check_key(&req.key)?;
        let mut inner = self.lock();
        let stored = inner.items.get(&req.key).map(|(_, v)| *v);
        etag::check_write(&req.key, req.etag.as_deref(), req.concurrency, stored)?;
        inner.next_version += 1;
        let version = inner.next_version;
        inner.items.insert(req.key, (req.value, version));
        Ok(version.to_string())
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        etag::check_key(&req.key)?;
        let mut inner = self.lock();
        let stored = inner.items.get(&req.key).map(|(_, v)| *v);
        if req.etag.as_deref().is_some_and(|e| !e.is_empty()) {
            etag::check_write(&req.key, req.etag.as_deref(), Default::default(), stored)?;
        }
        inner.items.remove(&req.key);
        Ok(())
    }
}
