//! The conformance suite against every backend.

use std::sync::Arc;

use sluice_state::{conformance, MemoryStore, RedbStore, Store};

fn redb_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(dir.path().join("state.redb")).expect("open redb store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_suite() {
    conformance::run_all(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_store_passes_the_suite_on_a_current_thread_runtime() {
    conformance::run_all_with(|| Arc::new(MemoryStore::new()) as Arc<dyn Store>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::run_all(redb_store(&dir)).await;
}

#[tokio::test]
async fn redb_store_passes_the_suite_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::run_all(redb_store(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_suites_share_one_redb_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = redb_store(&dir);
    tokio::join!(
        conformance::run_all(Arc::clone(&store)),
        conformance::run_all(Arc::clone(&store)),
    );
}

#[tokio::test]
async fn the_suite_passes_again_on_a_reopened_redb_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::run_all(redb_store(&dir)).await;
    // The first store is dropped; the second run meets the first run's keys and versions.
    conformance::run_all(redb_store(&dir)).await;
}

#[tokio::test]
#[should_panic(expected = "conformance scenario `etag_on_set` failed on backend `broken`")]
async fn a_failing_scenario_names_itself_and_the_backend() {
    conformance::etag_on_set(&IgnoresEtags::default()).await;
}

/// A backend that ignores ETags on set, to show the suite catches it.
#[derive(Default)]
struct IgnoresEtags(MemoryStore);

#[async_trait::async_trait]
impl Store for IgnoresEtags {
    fn name(&self) -> &'static str {
        "broken"
    }

    fn features(&self) -> sluice_state::Features {
        self.0.features()
    }

    async fn get(&self, key: &str) -> Result<Option<sluice_state::Item>, sluice_state::StateError> {
        self.0.get(key).await
    }

    async fn set(
        &self,
        mut req: sluice_state::SetRequest,
    ) -> Result<String, sluice_state::StateError> {
        req.etag = None;
        self.0.set(req).await
    }

    async fn delete(
        &self,
        req: sluice_state::DeleteRequest,
    ) -> Result<(), sluice_state::StateError> {
        self.0.delete(req).await
    }
}
