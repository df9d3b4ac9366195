//! A background task that sweeps expired items at an interval, so that TTL expiry shows up as
//! delete events soon after the deadline rather than at the next write.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

use crate::error::StateError;

/// How often the reaper sweeps by default.
pub const DEFAULT_REAP_INTERVAL: Duration = Duration::from_millis(250);

/// A store part that can remove its expired items (recording a delete event for each) and
/// enforce the age bound of its history.
#[async_trait]
pub trait ExpirySweep: Send + Sync + 'static {
    /// Removes every expired item now; returns how many.
    async fn sweep_expired(self: Arc<Self>) -> Result<usize, StateError>;
}

/// The running reaper; dropping it stops the task.
#[derive(Debug)]
pub struct ReaperHandle {
    task: JoinHandle<()>,
}

impl Drop for ReaperHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a reaper over `target` that sweeps every `every` until the target is gone or the
/// handle is dropped. `None` outside a tokio runtime (then expiry is swept by writes only).
pub fn spawn_reaper<T: ExpirySweep>(target: Weak<T>, every: Duration) -> Option<ReaperHandle> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let task = runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(target) = target.upgrade() else {
                return;
            };
            if let Err(e) = target.sweep_expired().await {
                tracing::warn!(error = %e, "expiry reaper could not sweep; will retry");
            }
        }
    });
    Some(ReaperHandle { task })
}
