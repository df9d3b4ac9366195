//! Behaviour of the in-memory backend beyond the conformance suite: TTL details, transactions,
//! prefix deletes, key paging, queries, and the lazy sweep of expired items.

mod shared;

use std::sync::Arc;
use std::time::Duration;

use sluice_state::{MemoryStore, SetRequest, Store};

#[test]
fn memory_store_advertises_every_feature_but_durability() {
    let store = MemoryStore::new();
    shared::advertises_every_feature(&store);
    assert!(!store.features().durable);
}

#[tokio::test]
async fn ttl_items_vanish_everywhere() {
    shared::ttl_items_vanish_everywhere(&MemoryStore::new()).await;
}

#[tokio::test]
async fn ttl_is_per_write() {
    shared::ttl_is_per_write(&MemoryStore::new()).await;
}

#[tokio::test]
async fn expired_items_count_as_missing_for_writes() {
    shared::expired_items_count_as_missing_for_writes(&MemoryStore::new()).await;
}

#[tokio::test]
async fn multi_spec_example() {
    shared::multi_spec_example(&MemoryStore::new()).await;
}

#[tokio::test]
async fn multi_failure_applies_nothing() {
    shared::multi_failure_applies_nothing(&MemoryStore::new()).await;
}

#[tokio::test]
async fn multi_checks_against_the_state_before_it() {
    shared::multi_checks_against_the_state_before_it(&MemoryStore::new()).await;
}

#[tokio::test]
async fn delete_with_prefix_rule() {
    shared::delete_with_prefix_rule(&MemoryStore::new()).await;
}

#[tokio::test]
async fn keys_paging() {
    shared::keys_paging(&MemoryStore::new()).await;
}

#[tokio::test]
async fn query_filter_sort_page() {
    shared::query_filter_sort_page(&MemoryStore::new()).await;
}

#[tokio::test]
async fn bulk_calls_report_per_key() {
    shared::bulk_calls_report_per_key(&MemoryStore::new()).await;
}

#[tokio::test]
async fn expired_items_are_swept_by_later_writes_and_by_purge() {
    let store = MemoryStore::new();
    for i in 0..10 {
        store
            .set(SetRequest::new(format!("e{i}"), "v").with_ttl(Duration::from_secs(1)))
            .await
            .expect("set");
    }
    store.set(SetRequest::new("keep", "v")).await.expect("set");
    assert_eq!(store.stored_len(), 11);
    shared::wait_gone(&store, "e9").await;
    // Reads hide expired items but leave them; a write sweeps them.
    assert_eq!(store.stored_len(), 11);
    store.set(SetRequest::new("w", "v")).await.expect("set");
    assert_eq!(store.stored_len(), 2);
    assert_eq!(store.purge_expired(), 0);

    store
        .set(SetRequest::new("late", "v").with_ttl(Duration::from_secs(1)))
        .await
        .expect("set");
    shared::wait_gone(&store, "late").await;
    assert_eq!(store.purge_expired(), 1);
    assert_eq!(store.stored_len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_are_atomic() {
    // Tasks move one unit between two keys in transactions guarded by ETags; the sum never
    // changes and every committed transaction is whole.
    let store = Arc::new(MemoryStore::new());
    store.set(SetRequest::new("x", "100")).await.expect("set");
    store.set(SetRequest::new("y", "0")).await.expect("set");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut moved = 0;
            while moved < 25 {
                let x = store.get("x").await.expect("get").expect("x");
                let y = store.get("y").await.expect("get").expect("y");
                let n = |v: &bytes::Bytes| -> i64 {
                    std::str::from_utf8(v)
                        .expect("utf-8")
                        .parse()
                        .expect("number")
                };
                let ops = vec![
                    sluice_state::TxOperation::Upsert(
                        SetRequest::new("x", (n(&x.value) - 1).to_string()).with_etag(x.etag),
                    ),
                    sluice_state::TxOperation::Upsert(
                        SetRequest::new("y", (n(&y.value) + 1).to_string()).with_etag(y.etag),
                    ),
                ];
                if store.multi(ops).await.is_ok() {
                    moved += 1;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    let get = |k: &'static str| {
        let store = Arc::clone(&store);
        async move { store.get(k).await.expect("get").expect("exists").value }
    };
    assert_eq!(get("x").await.as_ref(), b"0");
    assert_eq!(get("y").await.as_ref(), b"100");
}
