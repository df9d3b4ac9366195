//! The Sluice side of every comparison (any [`Store`]) and the in-memory baseline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sluice_state::{SetRequest, Store, TxOperation};

use super::measure::Client;
use super::BenchError;

/// Sluice's store, called through the `Store` trait object as every user of it does.
pub struct SluiceClient {
    store: Arc<dyn Store>,
}

impl SluiceClient {
    /// Drives `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        SluiceClient { store }
    }
}

impl Client for SluiceClient {
    async fn get(&self, key: &str) -> Result<(), BenchError> {
        match self.store.get(key).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(BenchError::new(format!("key {key:?} is missing"))),
            Err(e) => Err(BenchError::new(format!("get: {e}"))),
        }
    }

    async fn set(&self, key: &str, value: &Bytes) -> Result<(), BenchError> {
        self.store
            .set(SetRequest::new(key, value.clone()))
            .await
            .map(drop)
            .map_err(|e| BenchError::new(format!("set: {e}")))
    }

    async fn multi(&self, keys: &[String], value: &Bytes) -> Result<(), BenchError> {
        let ops = keys
            .iter()
            .map(|k| TxOperation::Upsert(SetRequest::new(k.as_str(), value.clone())))
            .collect();
        self.store
            .multi(ops)
            .await
            .map_err(|e| BenchError::new(format!("multi: {e}")))
    }
}

/// The baseline for the memory backend: a hash map behind a mutex, with a version per item as
/// the ETag (what the memory backend keeps), and nothing else.
#[derive(Default)]
pub struct MemoryDirect {
    inner: Mutex<Versioned>,
}

/// The items, each with its version, and the last version handed out.
type Versioned = (HashMap<String, (Bytes, u64)>, u64);

impl MemoryDirect {
    fn lock(&self) -> std::sync::MutexGuard<'_, Versioned> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every key at once (the preload).
    pub fn load(&self, keys: &[String], value: &Bytes) {
        let mut inner = self.lock();
        for key in keys {
            inner.1 += 1;
            let version = inner.1;
            inner.0.insert(key.clone(), (value.clone(), version));
        }
    }
}

impl Client for MemoryDirect {
    async fn get(&self, key: &str) -> Result<(), BenchError> {
        let found = self.lock().0.get(key).map(|(v, ver)| (v.clone(), *ver));
        match found {
            Some(_) => Ok(()),
            None => Err(BenchError::new(format!("key {key:?} is missing"))),
        }
    }

    async fn set(&self, key: &str, value: &Bytes) -> Result<(), BenchError> {
        self.load(std::slice::from_ref(&key.to_string()), value);
        Ok(())
    }

    async fn multi(&self, keys: &[String], value: &Bytes) -> Result<(), BenchError> {
        self.load(keys, value);
        Ok(())
    }
}
