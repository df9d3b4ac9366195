//! Deletes expired rows. Expired rows are invisible to every read the moment they expire; the
//! sweep only reclaims their space, in small batches that skip rows a writer holds.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;

use super::errors::Target;
use crate::error::StateError;

/// Rows deleted per statement.
const BATCH: i64 = 1000;

/// Deletes every expired row, a batch at a time; returns how many.
pub(crate) async fn sweep(pool: &Pool, sql: &str, target: &Target) -> Result<u64, StateError> {
    let what = "sweep expired items";
    let client = pool.get().await.map_err(|e| target.pool(what, e))?;
    let stmt = client
        .prepare_cached(sql)
        .await
        .map_err(|e| target.pg(what, &e))?;
    let mut total = 0;
    loop {
        let n = client
            .execute(&stmt, &[&BATCH])
            .await
            .map_err(|e| target.pg(what, &e))?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Aborts the sweeper task when the store is dropped.
#[derive(Debug)]
pub(crate) struct Sweeper(JoinHandle<()>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a task that sweeps every `interval` until the returned guard is dropped. A failed
/// sweep is logged and tried again at the next tick.
pub(crate) fn spawn(pool: Pool, sql: String, target: Target, interval: Duration) -> Sweeper {
    Sweeper(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once; skip it, so the first sweep comes one interval after
        // the start.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match sweep(&pool, &sql, &target).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(target = %target.0, deleted = n, "swept expired items"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired items failed"),
            }
        }
    }))
}
