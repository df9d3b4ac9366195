//! No lost updates: concurrent read-modify-write increments with ETag retries add up exactly.

use std::sync::Arc;

use super::scenario::Scenario;
use crate::error::StateError;
use crate::store::{Concurrency, SetRequest, Store};

/// Concurrent tasks in the contract's lost-update test.
pub const LOST_UPDATE_TASKS: u64 = 16;
/// Increments per task in the contract's lost-update test (16 × 500 = 8,000).
pub const LOST_UPDATE_INCREMENTS: u64 = 500;

/// 16 tasks × 500 increments of one counter, each a read, then a write conditional on the ETag
/// read, retried on a mismatch; the counter must end at exactly 8,000.
pub async fn lost_update(store: Arc<dyn Store>) {
    lost_update_with(store, LOST_UPDATE_TASKS, LOST_UPDATE_INCREMENTS).await;
}

/// [`lost_update`] with `tasks` × `increments` (for quick runs of the suite).
pub async fn lost_update_with(store: Arc<dyn Store>, tasks: u64, increments: u64) {
    let s = Scenario::new("lost_update", store.as_ref());
    let key = Arc::new(s.key("counter"));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let store = Arc::clone(&store);
        let key = Arc::clone(&key);
        set.spawn(async move {
            let s = Scenario::new("lost_update", store.as_ref());
            let mut conflicts = 0u64;
            for _ in 0..increments {
                conflicts += increment(&s, store.as_ref(), &key).await;
            }
            conflicts
        });
    }
    let mut conflicts = 0;
    while let Some(joined) = set.join_next().await {
        conflicts += joined.unwrap_or_else(|e| s.fail(&format!("an incrementing task died: {e}")));
    }
    let item = s.some("get counter", store.get(&key).await);
    let total = parse_counter(&s, &item.value);
    s.eq(
        &format!("counter after {tasks} × {increments} increments and {conflicts} ETag conflicts"),
        &total,
        &(tasks * increments),
    );
}

/// One read-modify-write increment, retried on ETag conflicts; returns the conflicts met.
async fn increment(s: &Scenario, store: &dyn Store, key: &str) -> u64 {
    const MAX_ATTEMPTS: u64 = 1_000_000;
    for attempt in 0..MAX_ATTEMPTS {
        let current = s.ok("read counter", store.get(key).await);
        // Let the other tasks run between read and write, so conflicts happen on any runtime.
        tokio::task::yield_now().await;
        let req = match &current {
            Some(item) => SetRequest::new(key, (parse_counter(s, &item.value) + 1).to_string())
                .with_etag(&item.etag),
            None => SetRequest::new(key, "1").with_concurrency(Concurrency::FirstWrite),
        };
        match store.set(req).await {
            Ok(_) => return attempt,
            Err(StateError::EtagMismatch { .. }) => continue,
            Err(e) => s.fail(&format!("increment failed: {e}")),
        }
    }
    s.fail(&format!(
        "no increment succeeded in {MAX_ATTEMPTS} attempts"
    ))
}

fn parse_counter(s: &Scenario, raw: &[u8]) -> u64 {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| s.fail(&format!("counter holds {raw:?}, not a number")))
}
