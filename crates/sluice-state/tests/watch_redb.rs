//! The watch conformance scenarios on the redb backend, each its own test on its own file, plus
//! a resume across a reopen (the history is durable).

use std::sync::Arc;

use sluice_state::conformance::watch;
use sluice_state::watch::{watch as start_watch, WatchEvent, WatchOptions};
use sluice_state::{RedbOptions, RedbStore, SetRequest, Store};

/// A store that writes its held commits to the file every third commit, so that the scenarios
/// read history and snapshots from both the file and the held writes.
fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = RedbOptions {
        flush_commits: 3,
        ..RedbOptions::default()
    };
    let store = RedbStore::open_with_options(dir.path().join("state.redb"), options).expect("open");
    (dir, Arc::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_without_gaps() {
    let (_dir, store) = store();
    watch::ordered_without_gaps(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_revision() {
    let (_dir, store) = store();
    watch::resume_from_revision(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watcher() {
    let (_dir, store) = store();
    watch::stalled_watcher(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_timeout() {
    let (_dir, store) = store();
    watch::done_timeout(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_after_compaction() {
    let (_dir, store) = store();
    watch::resync_after_compaction(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_prefixes() {
    let (_dir, store) = store();
    watch::overlapping_prefixes(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_changes_and_close() {
    let (_dir, store) = store();
    watch::prefix_changes_and_close(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_prefix() {
    let (_dir, store) = store();
    watch::delete_with_prefix(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry() {
    let (_dir, store) = store();
    watch::ttl_expiry(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry() {
    let (_dir, store) = store();
    watch::session_expiry(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation() {
    let (_dir, store) = store();
    watch::aggregation(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let after = {
        let store = RedbStore::open(&path).expect("open");
        store.set(SetRequest::new("p/a", "1")).await.expect("set");
        let feed = store.change_feed().expect("feed");
        feed.current_revision().await.expect("revision")
    };
    let store = RedbStore::open(&path).expect("reopen");
    store.set(SetRequest::new("p/b", "2")).await.expect("set");
    let feed = store.change_feed().expect("feed");
    let mut reg = start_watch(
        feed,
        "reopen",
        vec!["p/".into()],
        Some(after),
        WatchOptions::default(),
    );
    match reg.next().await.expect("event") {
        WatchEvent::Change {
            key,
            revision,
            done,
            ..
        } => {
            done.ok();
            assert_eq!(key, "p/b");
            assert!(revision > after);
        }
        other => panic!("want the change after the reopen, got {other:?}"),
    }
}
