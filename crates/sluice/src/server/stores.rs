//! The named stores `sluice serve` offers, opened from the configuration, and the store that holds
//! Sluice's own state.
//!
//! Every store is opened (and, for network backends, reached) before the server accepts a request:
//! a backend that cannot be reached stops the start with an error naming the store and backend.
//! Two stores on the same redb file share one handle (redb locks its file, so a second open would
//! fail).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_state::postgres::PostgresStore;
use sluice_state::{
    DeleteRequest, Features, Item, KeyPage, MemoryStore, Page, Query, QueryResponse, RedbStore,
    RedisStore, RetryPolicy, RetryingStore, SetRequest, StateError, Store, TxOperation,
};

use crate::serve_config::{Backend, BackendKind, OwnState, ServeConfig};

/// How long a network backend may take to connect at start beyond its own connect timeout.
pub const CONNECT_GRACE: Duration = Duration::from_secs(10);

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open state store {store:?} ({backend} backend): {source}")]
pub struct OpenError {
    /// The store's name (`(Sluice's own state)` for the embedded one).
    pub store: String,
    /// Its backend.
    pub backend: &'static str,
    /// Why.
    #[source]
    pub source: StateError,
}

/// One store offered over HTTP.
#[derive(Clone)]
pub struct NamedStore {
    /// Its name in URLs.
    pub name: String,
    /// The backend, for messages.
    pub backend: BackendKind,
    /// The store.
    pub store: Arc<dyn Store>,
    /// How transient backend errors are retried when the request says nothing.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for NamedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedStore")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Every store of a server, by name, and Sluice's own state store.
pub struct Stores {
    by_name: BTreeMap<String, NamedStore>,
    own_state: Arc<dyn Store>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("stores", &self.by_name.values().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl NamedStore {
    /// The store retrying its transient failures by `policy` (the store's own when `None`).
    pub fn retrying(&self, policy: Option<RetryPolicy>) -> RetryingStore<Shared> {
        RetryingStore::new(
            Shared(Arc::clone(&self.store)),
            policy.unwrap_or(self.retry),
        )
    }
}

impl Stores {
    /// Opens every store of `config`, in order; the first that fails stops the start.
    pub async fn open(config: &ServeConfig) -> Result<Self, OpenError> {
        let mut redb_files: HashMap<PathBuf, Arc<dyn Store>> = HashMap::new();
        let mut by_name = BTreeMap::new();
        for s in &config.stores {
            let store = open_backend(&s.name, &s.backend, &mut redb_files).await?;
            tracing::info!(
                store = %s.name,
                backend = s.backend.kind().as_str(),
                features = ?store.features().names(),
                "state store ready"
            );
            by_name.insert(
                s.name.clone(),
                NamedStore {
                    name: s.name.clone(),
                    backend: s.backend.kind(),
                    store,
                    retry: s.retry,
                },
            );
        }
        let own_state = match &config.own_state {
            OwnState::Named(name) => match by_name.get(name) {
                Some(s) => Arc::clone(&s.store),
                None => {
                    return Err(OpenError {
                        store: name.clone(),
                        backend: "unknown",
                        source: StateError::InvalidRequest(format!(
                            "state.store names {name:?}, which is not a declared store"
                        )),
                    })
                }
            },
            OwnState::Embedded(path) => {
                let backend = Backend::Redb { path: path.clone() };
                open_backend("(Sluice's own state)", &backend, &mut redb_files).await?
            }
        };
        Ok(Stores { by_name, own_state })
    }

    /// Stores built by the caller (tests, embedding); `own_state` holds Sluice's own state.
    pub fn from_parts(stores: Vec<NamedStore>, own_state: Arc<dyn Store>) -> Self {
        Stores {
            by_name: stores.into_iter().map(|s| (s.name.clone(), s)).collect(),
            own_state,
        }
    }

    /// The store named `name`.
    pub fn get(&self, name: &str) -> Option<&NamedStore> {
        self.by_name.get(name)
    }

    /// Every store's name, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// The store Sluice keeps its own state in (`state.store`, or the embedded default).
    pub fn own_state(&self) -> Arc<dyn Store> {
        Arc::clone(&self.own_state)
    }
}

/// Opens one backend; redb files already open are shared.
async fn open_backend(
    name: &str,
    backend: &Backend,
    redb_files: &mut HashMap<PathBuf, Arc<dyn Store>>,
) -> Result<Arc<dyn Store>, OpenError> {
    let fail = |source: StateError| OpenError {
        store: name.to_string(),
        backend: backend.kind().as_str(),
        source,
    };
    match backend {
        Backend::Memory => Ok(Arc::new(MemoryStore::new())),
        Backend::Redb { path } => {
            let key = absolute(path);
            if let Some(s) = redb_files.get(&key) {
                return Ok(Arc::clone(s));
            }
            let p = path.clone();
            let store = tokio::task::spawn_blocking(move || RedbStore::open(p))
                .await
                .map_err(|e| fail(StateError::backend("redb", e)))?
                .map_err(fail)?;
            let store: Arc<dyn Store> = Arc::new(store);
            redb_files.insert(key, Arc::clone(&store));
            Ok(store)
        }
        Backend::Postgres { url, options } => {
            let connect = PostgresStore::connect(url, options.clone());
            let store = within(options.connect_timeout, connect)
                .await
                .map_err(fail)?;
            Ok(Arc::new(store))
        }
        Backend::Redis { url, options } => {
            let connect = RedisStore::connect(url, options.clone());
            let store = within(options.connect_timeout, connect)
                .await
                .map_err(fail)?;
            Ok(Arc::new(store))
        }
    }
}

/// Runs a backend's connect, failing if it has not answered within its own connect timeout plus
/// [`CONNECT_GRACE`] (its connect may make several attempts, and set up tables or scripts).
async fn within<T>(
    connect_timeout: Duration,
    connect: impl std::future::Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    let limit = connect_timeout.saturating_add(CONNECT_GRACE);
    match tokio::time::timeout(limit, connect).await {
        Ok(result) => result,
        Err(_) => Err(StateError::Backend {
            backend: "connect",
            message: format!("no answer within {}", humantime::format_duration(limit)),
            transient: true,
        }),
    }
}

/// `path` made absolute against the current directory, to recognise one file named two ways.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A shared store handle that is itself a [`Store`], so that per-request wrappers such as
/// [`sluice_state::RetryingStore`] can take it by value.
#[derive(Clone)]
pub struct Shared(pub Arc<dyn Store>);

#[async_trait]
impl Store for Shared {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn features(&self) -> Features {
        self.0.features()
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        self.0.get(key).await
    }

    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        self.0.set(req).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.0.delete(req).await
    }

    async fn set_many(&self, reqs: Vec<SetRequest>) -> Vec<Result<String, StateError>> {
        self.0.set_many(reqs).await
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StateError>> {
        self.0.bulk_get(keys).await
    }

    async fn delete_many(&self, reqs: Vec<DeleteRequest>) -> Vec<Result<(), StateError>> {
        self.0.delete_many(reqs).await
    }

    async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        self.0.multi(ops).await
    }

    async fn delete_with_prefix(&self, prefix: &str) -> Result<u64, StateError> {
        self.0.delete_with_prefix(prefix).await
    }

    async fn keys(&self, pattern: &str, page: Page) -> Result<KeyPage, StateError> {
        self.0.keys(pattern, page).await
    }

    async fn query(&self, q: &Query) -> Result<QueryResponse, StateError> {
        self.0.query(q).await
    }

    fn change_feed(&self) -> Option<Arc<dyn sluice_state::watch::ChangeFeed>> {
        self.0.change_feed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve_config;

    fn config(text: &str, dir: &Path) -> ServeConfig {
        serve_config::parse("serve.yaml", text, |_| None)
            .expect("valid")
            .resolve(None, dir.to_path_buf())
    }

    #[tokio::test]
    async fn sluice_state_defaults_to_an_embedded_file_shared_with_a_store_on_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A declared redb store on the embedded file: one handle serves both (a second open of
        // the file would fail on redb's lock).
        let c = config(
            "stores:\n  - name: main\n    backend: redb\n    settings:\n      path: state.redb\n",
            dir.path(),
        );
        let stores = Stores::open(&c).await.expect("open");
        let main = stores.get("main").expect("main");
        assert!(Arc::ptr_eq(&main.store, &stores.own_state()));
        drop(stores);

        // Only a memory store declared: Sluice's state gets its own embedded file.
        let c = config("stores:\n  - name: m\n    backend: memory\n", dir.path());
        let stores = Stores::open(&c).await.expect("open");
        assert_eq!(stores.names(), ["m"]);
        assert_eq!(stores.own_state().name(), "redb");
        assert!(dir.path().join("state.redb").exists());
    }

    #[tokio::test]
    async fn the_state_store_can_be_a_named_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(
            "stores:\n  - name: a\n    backend: memory\n  - name: b\n    backend: redb\nstate:\n  store: a\n",
            dir.path(),
        );
        let stores = Stores::open(&c).await.expect("open");
        let a = stores.get("a").expect("a");
        assert!(Arc::ptr_eq(&a.store, &stores.own_state()));
        assert!(!dir.path().join("state.redb").exists());
        assert!(dir.path().join("b.redb").exists());
    }
}
