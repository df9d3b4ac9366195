//! The watch conformance scenarios on the in-memory backend, each its own test.

use std::sync::Arc;

use sluice_state::conformance::watch;
use sluice_state::{MemoryStore, Store};

fn store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_without_gaps() {
    watch::ordered_without_gaps(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_revision() {
    watch::resume_from_revision(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watcher() {
    watch::stalled_watcher(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_timeout() {
    watch::done_timeout(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_after_compaction() {
    watch::resync_after_compaction(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_prefixes() {
    watch::overlapping_prefixes(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_changes_and_close() {
    watch::prefix_changes_and_close(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_prefix() {
    watch::delete_with_prefix(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry() {
    watch::ttl_expiry(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry() {
    watch::session_expiry(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation() {
    watch::aggregation(store()).await;
}

/// A registration that stops reading while history is compacted under it gets a compaction
/// notice and a resync when it reads again, and ends at the store's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_out_of_retention_and_resyncs() {
    use sluice_state::watch::{watch as start_watch, Retention, WatchEvent, WatchOptions};
    use sluice_state::SetRequest;
    use std::collections::BTreeMap;

    let store = MemoryStore::with_retention(Retention {
        max_changes: Some(10),
        max_age: None,
    });
    let feed = store.change_feed().expect("feed");
    let mut options = WatchOptions::default().with_queue(1);
    options.page = 2;
    let mut reg = start_watch(feed, "slow", vec!["s/".into()], None, options);
    let mut model = BTreeMap::new();
    let mut compacted = 0;
    let mut resyncs = 0;
    // The resync, then stall while 100 writes go by.
    match reg.next().await.expect("resync") {
        e @ WatchEvent::Resync { .. } => {
            resyncs += 1;
            e.ack()
        }
        other => panic!("want a resync, got {other:?}"),
    }
    for i in 0..100 {
        store
            .set(SetRequest::new(format!("s/k{}", i % 7), format!("{i}")))
            .await
            .expect("set");
    }
    store.set(SetRequest::new("s/end", "x")).await.expect("set");
    loop {
        match reg.next().await.expect("event") {
            WatchEvent::Compacted { .. } => compacted += 1,
            WatchEvent::Resync { entries, done, .. } => {
                resyncs += 1;
                model = entries.into_iter().map(|kv| (kv.key, kv.value)).collect();
                done.ok();
                if model.contains_key("s/end") {
                    break;
                }
            }
            WatchEvent::Change {
                key, value, done, ..
            } => {
                done.ok();
                let end = key == "s/end";
                match value {
                    Some(v) => model.insert(key, v),
                    None => model.remove(&key),
                };
                if end {
                    break;
                }
            }
        }
    }
    assert!(compacted >= 1, "a compaction notice");
    assert_eq!(resyncs, 1 + compacted, "a resync after each notice");
    assert_eq!(model.len(), 8);
    assert_eq!(reg.stats().compacted, compacted as u64);
}
