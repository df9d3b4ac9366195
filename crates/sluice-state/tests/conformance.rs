//! The conformance suite against the in-process backends (memory and redb), and proof that the
//! suite catches broken backends: each deliberately broken wrapper below must fail the scenario
//! that covers its defect.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_state::conformance::{self, Options};
use sluice_state::{
    Concurrency, DeleteRequest, Features, Item, MemoryStore, RedbOptions, RedbStore, SetRequest,
    StateError, Store, TxOperation,
};

fn redb_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(dir.path().join("state.redb")).expect("open redb store"))
}

/// Fewer increments, for the extra runs that test sharing and reopening rather than the
/// contract's 8,000.
const QUICK: Options = Options {
    lost_update_tasks: 4,
    lost_update_increments: 50,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_suite() {
    conformance::run_all(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_store_passes_the_suite_on_a_current_thread_runtime_with_a_store_per_scenario() {
    conformance::run_all_with(
        || Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Options::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::run_all(redb_store(&dir)).await;
}

/// With a file commit every few store commits, reads merge held writes with the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_the_suite_when_held_writes_reach_the_file_every_few_commits() {
    for flush_commits in [1, 3] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = RedbOptions {
            flush_commits,
            ..RedbOptions::default()
        };
        let store = RedbStore::open_with_options(dir.path().join("state.redb"), options)
            .expect("open redb store");
        conformance::run_all(Arc::new(store)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_suites_share_one_redb_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = redb_store(&dir);
    tokio::join!(
        conformance::run_all_with_options(Arc::clone(&store), QUICK),
        conformance::run_all_with_options(Arc::clone(&store), QUICK),
    );
}

#[tokio::test]
async fn the_suite_passes_again_on_a_reopened_redb_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::run_all_with_options(redb_store(&dir), QUICK).await;
    // The first store is dropped; the second run meets the first run's keys and versions.
    conformance::run_all_with_options(redb_store(&dir), QUICK).await;
}

// ---------------------------------------------------------------------------------------------
// The suite catches broken backends.

/// Runs `scenario` in its own task and returns its panic message; fails the test if the
/// scenario passed.
async fn failure_of<F>(scenario: F) -> String
where
    F: Future<Output = ()> + Send + 'static,
{
    let err = tokio::spawn(scenario)
        .await
        .expect_err("the scenario passed on a broken backend");
    assert!(err.is_panic(), "the scenario task was cancelled: {err}");
    let payload = err.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .expect("a panic with a message")
}

/// Asserts that the panic message names the scenario and the backend.
fn assert_names(message: &str, scenario: &str, backend: &str) {
    let want = format!("conformance scenario `{scenario}` failed on backend `{backend}`: ");
    assert!(
        message.starts_with(&want),
        "want a failure starting with {want:?}, got {message:?}"
    );
}

/// The defects the wrapper can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    /// `set` drops the ETag, so every write wins.
    IgnoresEtagsOnSet,
    /// `delete_many` drops ETags.
    BulkDeleteIgnoresEtags,
    /// `bulk_get` leaves out the keys it did not find.
    BulkGetDropsMissing,
    /// `multi` applies operations one by one and stops at the first failure, leaving the earlier
    /// ones applied.
    PartialMulti,
    /// `multi` applies operations in reverse order.
    ReversedMulti,
    /// Advertises no transactions, yet `multi` works.
    MultiWithoutFeature,
    /// Advertises TTLs but drops them.
    DropsTtl,
    /// Checks an ETag with a read, then writes unconditionally (a race).
    CheckThenWrite,
}

/// A memory store with one defect; it implements its own `multi` (on top of set and delete) so
/// the defects do not depend on the memory backend's transactions.
struct Broken {
    inner: MemoryStore,
    defect: Defect,
}

fn broken(defect: Defect) -> Arc<dyn Store> {
    Arc::new(Broken {
        inner: MemoryStore::new(),
        defect,
    })
}

impl Broken {
    /// The ETag and first-write check of one operation against the current state (not atomic
    /// with the writes that follow: good enough for a single-task test).
    async fn check(&self, op: &TxOperation) -> Result<(), StateError> {
        let (etag, concurrency) = match op {
            TxOperation::Upsert(r) => (r.etag.as_deref(), r.concurrency),
            TxOperation::Delete(r) => (r.etag.as_deref(), Concurrency::LastWrite),
        };
        let stored = self.inner.get(op.key()).await?;
        let version = match stored {
            Some(item) => Some(item.etag.parse::<u64>().expect("memory ETags are numbers")),
            None => None,
        };
        sluice_state::etag::check_write(op.key(), etag, concurrency, version)
    }

    async fn apply(&self, op: TxOperation) -> Result<(), StateError> {
        match op {
            TxOperation::Upsert(r) => self.set(r).await.map(drop),
            TxOperation::Delete(r) => self.delete(r).await,
        }
    }
}

#[async_trait]
impl Store for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }

    fn features(&self) -> Features {
        Features {
            etag: true,
            transactional: self.defect != Defect::MultiWithoutFeature,
            ttl: self.defect == Defect::DropsTtl,
            ..Features::default()
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        self.inner.get(key).await
    }

    async fn set(&self, mut req: SetRequest) -> Result<String, StateError> {
        match self.defect {
            Defect::IgnoresEtagsOnSet => req.etag = None,
            Defect::DropsTtl => req.ttl = None,
            Defect::CheckThenWrite => {
                if let Some(etag) = req.etag.take().filter(|e| !e.is_empty()) {
                    let current = self.inner.get(&req.key).await?;
                    if current.is_none_or(|item| item.etag != etag) {
                        return Err(StateError::EtagMismatch { key: req.key });
                    }
                    tokio::task::yield_now().await;
                }
            }
            _ => {}
        }
        self.inner.set(req).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.inner.delete(req).await
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StateError>> {
        let mut results = Vec::new();
        for key in keys {
            let result = self.get(key).await;
            if self.defect == Defect::BulkGetDropsMissing && matches!(result, Ok(None)) {
                continue;
            }
            results.push(result);
        }
        results
    }

    async fn delete_many(&self, reqs: Vec<DeleteRequest>) -> Vec<Result<(), StateError>> {
        let mut results = Vec::new();
        for mut req in reqs {
            if self.defect == Defect::BulkDeleteIgnoresEtags {
                req.etag = None;
            }
            results.push(self.delete(req).await);
        }
        results
    }

    async fn multi(&self, mut ops: Vec<TxOperation>) -> Result<(), StateError> {
        if self.defect != Defect::PartialMulti {
            for (index, op) in ops.iter().enumerate() {
                self.check(op)
                    .await
                    .map_err(|e| StateError::TransactionAborted {
                        index,
                        key: op.key().to_string(),
                        source: Box::new(e),
                    })?;
            }
        }
        if self.defect == Defect::ReversedMulti {
            ops.reverse();
        }
        for (index, op) in ops.into_iter().enumerate() {
            let key = op.key().to_string();
            self.apply(op)
                .await
                .map_err(|e| StateError::TransactionAborted {
                    index,
                    key,
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn ignoring_etags_on_set_fails_etag_on_set() {
    let store = broken(Defect::IgnoresEtagsOnSet);
    let message = failure_of(async move { conformance::etag_on_set(store.as_ref()).await }).await;
    assert_names(&message, "etag_on_set", "broken");
}

#[tokio::test]
async fn ignoring_etags_in_bulk_delete_fails_bulk_delete_etags() {
    let store = broken(Defect::BulkDeleteIgnoresEtags);
    let message =
        failure_of(async move { conformance::bulk_delete_etags(store.as_ref()).await }).await;
    assert_names(&message, "bulk_delete_etags", "broken");
}

#[tokio::test]
async fn a_bulk_get_that_drops_missing_keys_fails_bulk_set_get_delete() {
    let store = broken(Defect::BulkGetDropsMissing);
    let message =
        failure_of(async move { conformance::bulk_set_get_delete(store.as_ref()).await }).await;
    assert_names(&message, "bulk_set_get_delete", "broken");
}

#[tokio::test]
async fn a_partially_applied_multi_fails_transaction_all_or_nothing() {
    let store = broken(Defect::PartialMulti);
    let message =
        failure_of(async move { conformance::transaction_all_or_nothing(store.as_ref()).await })
            .await;
    assert_names(&message, "transaction_all_or_nothing", "broken");
}

#[tokio::test]
async fn a_multi_out_of_order_fails_transaction_order() {
    let store = broken(Defect::ReversedMulti);
    let message =
        failure_of(async move { conformance::transaction_order(store.as_ref()).await }).await;
    assert_names(&message, "transaction_order", "broken");
}

#[tokio::test]
async fn an_operation_beyond_the_advertised_features_fails_its_scenario() {
    let store = broken(Defect::MultiWithoutFeature);
    let message =
        failure_of(async move { conformance::transaction_groups(store.as_ref()).await }).await;
    assert_names(&message, "transaction_groups", "broken");
    assert!(
        message.contains("Unsupported"),
        "the failure should say the operation must be unsupported: {message}"
    );
}

#[tokio::test]
async fn dropping_ttls_fails_ttl_expire_time() {
    let store = broken(Defect::DropsTtl);
    let message =
        failure_of(async move { conformance::ttl_expire_time(store.as_ref()).await }).await;
    assert_names(&message, "ttl_expire_time", "broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_then_write_race_fails_lost_update() {
    let store = broken(Defect::CheckThenWrite);
    let message =
        failure_of(async move { conformance::lost_update_with(store, 8, 100).await }).await;
    assert_names(&message, "lost_update", "broken");
}

#[tokio::test]
async fn the_correct_wrapper_passes_what_the_broken_ones_fail() {
    // The same wrapper with a harmless defect passes the scenarios the others fail, so those
    // failures come from the defects, not from the wrapper.
    let store = broken(Defect::DropsTtl);
    conformance::etag_on_set(store.as_ref()).await;
    conformance::bulk_delete_etags(store.as_ref()).await;
    conformance::bulk_set_get_delete(store.as_ref()).await;
    conformance::transaction_all_or_nothing(store.as_ref()).await;
    conformance::transaction_order(store.as_ref()).await;
    conformance::transaction_groups(store.as_ref()).await;
    conformance::lost_update_with(store, 8, 100).await;
}
