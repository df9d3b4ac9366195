//! Running a flow's pipeline on the engine: wait until the flow is stored, start the pipeline
//! (resuming from its checkpoint), report readiness for async prepare/start, and when it ends
//! report `completed` (finite source) or `errored` (failure). A stop request (suspend, terminate,
//! shutdown) stops it gracefully, saving its checkpoint, and reports nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_engine::PipelineConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::Outcome;
use super::replica::JobEnd;
use super::Transfers;
use crate::state::FlowState;

/// How long a stop waits for the pipeline to checkpoint and end.
pub(super) const STOP_WAIT: Duration = Duration::from_secs(30);

/// A running job.
struct Entry {
    id: u64,
    stop: CancellationToken,
    done: watch::Receiver<bool>,
}

/// The jobs of this process, by flow id.
#[derive(Default)]
pub(super) struct Jobs {
    running: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
}

/// Reported once the pipeline is running (asynchronous prepare/start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ready {
    Prepared,
    Started,
}

/// What to run for a flow.
pub(super) struct JobSpec {
    pub flow_id: String,
    pub pipeline: PipelineConfig,
    /// The states the flow may be in for the job to start.
    pub run_in: &'static [FlowState],
    /// Report this once the pipeline runs.
    pub ready: Option<Ready>,
    /// Report `completed` when the source ends.
    pub finite: bool,
}

impl Jobs {
    fn register(&self, flow: &str) -> Option<(u64, CancellationToken, watch::Sender<bool>)> {
        let mut map = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(flow) {
            if !*e.done.borrow() {
                return None;
            }
        }
        let stop = CancellationToken::new();
        let (tx, rx) = watch::channel(false);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(
            flow.to_string(),
            Entry {
                id,
                stop: stop.clone(),
                done: rx,
            },
        );
        Some((id, stop, tx))
    }

    fn remove(&self, flow: &str, id: u64) {
        let mut map = self.running.lock().unwrap_or_else(|p| p.into_inner());
        // Only our own entry: a newer job may have replaced it.
        if map.get(flow).is_some_and(|e| e.id == id) {
            map.remove(flow);
        }
    }

    /// Stops a flow's job gracefully and waits (bounded) until it has checkpointed and ended.
    pub async fn stop(&self, flow: &str) {
        let entry = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(flow);
        if let Some(mut e) = entry {
            e.stop.cancel();
            let _ = tokio::time::timeout(STOP_WAIT, e.done.wait_for(|d| *d)).await;
        }
    }

    /// Stops every job and waits for them.
    pub async fn stop_all(&self) {
        let entries: Vec<Entry> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, e)| e)
            .collect();
        for e in &entries {
            e.stop.cancel();
        }
        for mut e in entries {
            let _ = tokio::time::timeout(STOP_WAIT, e.done.wait_for(|d| *d)).await;
        }
    }
}

/// Marks the job done however its task ends.
struct DoneGuard(watch::Sender<bool>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Transfers {
    /// Starts a flow's job in the background (no-op if one already runs for the flow).
    pub(super) fn spawn_job(self: &Arc<Self>, spec: JobSpec) {
        let Some((id, stop, done)) = self.jobs.register(&spec.flow_id) else {
            tracing::debug!(flow = %spec.flow_id, "transfer: a job already runs");
            return;
        };
        let t = self.clone();
        tokio::spawn(async move {
            let _done = DoneGuard(done);
            let flow = spec.flow_id.clone();
            // Finite jobs (provider push, consumer pull) are the background work replicas share:
            // they run under the flow's lease. A receive job serves this process's endpoint.
            let lease = if spec.finite {
                match t.lease_job(&flow, &stop).await {
                    Some(guard) => Some(guard),
                    None => {
                        t.jobs.remove(&flow, id);
                        return;
                    }
                }
            } else {
                None
            };
            t.run_job(spec, id, &stop).await;
            t.jobs.remove(&flow, id);
            if let Some(guard) = lease {
                let how = if t.shutdown.is_cancelled() {
                    JobEnd::Shutdown
                } else {
                    JobEnd::Done
                };
                guard.end(how).await;
            }
        });
    }

    async fn run_job(self: &Arc<Self>, spec: JobSpec, id: u64, stop: &CancellationToken) {
        let flow = spec.flow_id.as_str();
        // Hooks spawn jobs before their transition commits: a flow still in the state it is
        // leaving (PREPARED on `started`, SUSPENDED on `resume`) is waited for, not refused.
        const LEAVING: &[FlowState] = &[
            FlowState::Preparing,
            FlowState::Prepared,
            FlowState::Suspended,
        ];
        let found = tokio::select! {
            r = self.await_state(flow, spec.run_in, LEAVING, Duration::from_secs(30)) => r,
            _ = stop.cancelled() => return,
        };
        if !found {
            tracing::info!(
                flow,
                "transfer: the flow is not in a state to run; not starting"
            );
            return;
        }
        let started = tokio::select! {
            r = self.engine.start(spec.pipeline) => r,
            _ = stop.cancelled() => return,
        };
        let handle = match started {
            Ok(h) => h,
            Err(e) => {
                self.fail(flow, &format!("cannot start the transfer: {e}"))
                    .await;
                return;
            }
        };
        let controller = handle.controller();
        if let Some(ready) = spec.ready {
            self.report_ready(flow, ready).await;
        }
        let stopper = {
            let (c, s) = (controller.clone(), stop.clone());
            tokio::spawn(async move {
                s.cancelled().await;
                c.stop();
            })
        };
        let result = handle.wait().await;
        stopper.abort();
        let m = controller.metrics();
        self.counters.moved(m.records_in, m.bytes_in);
        if stop.is_cancelled() {
            self.counters.outcome(Outcome::Stopped);
            return;
        }
        match result {
            Ok(_) if spec.finite => {
                self.jobs.remove(flow, id);
                self.finish(flow, stop).await;
            }
            Ok(_) => {}
            Err(e) => {
                self.jobs.remove(flow, id);
                self.fail(flow, &format!("the transfer failed: {e}")).await;
            }
        }
    }

    /// Reports an async prepare/start as done.
    pub(super) async fn report_ready(&self, flow: &str, ready: Ready) {
        let Some(dp) = self.dataplane() else {
            tracing::error!(flow, "transfers: no data plane attached");
            return;
        };
        let r = match ready {
            Ready::Prepared => dp.finish_prepare(flow).await,
            Ready::Started => dp.finish_start(flow).await,
        };
        if let Err(e) = r {
            tracing::warn!(flow, error = %e, "transfer: cannot report readiness");
        }
    }

    /// A finite transfer ended: once the flow is STARTED (an async start may still be waiting
    /// for its callback), report `completed`.
    async fn finish(&self, flow: &str, stop: &CancellationToken) {
        let ready = tokio::select! {
            r = self.await_state(flow, &[FlowState::Started], &[FlowState::Starting, FlowState::Prepared, FlowState::Preparing], Duration::from_secs(3600)) => r,
            _ = stop.cancelled() => false,
            _ = self.shutdown.cancelled() => false,
        };
        if !ready {
            tracing::info!(
                flow,
                "transfer: finished, but the flow moved on; not reporting"
            );
            return;
        }
        self.counters.outcome(Outcome::Completed);
        if let Some(dp) = self.dataplane() {
            if let Err(e) = dp.finish_transfer(flow).await {
                tracing::warn!(flow, error = %e, "transfer: cannot report completion");
            }
        }
    }

    /// A transfer failed: report `errored`.
    pub(super) async fn fail(&self, flow: &str, error: &str) {
        tracing::warn!(flow, error, "transfer failed");
        self.counters.outcome(Outcome::Failed);
        if let Some(dp) = self.dataplane() {
            if let Err(e) = dp.fail_transfer(flow, error).await {
                tracing::warn!(flow, error = %e, "transfer: cannot report the failure");
            }
        }
    }

    /// Waits until the flow is stored in one of `accept` (true), while it is missing (up to
    /// `timeout`) or in one of `pending`; false for any other state or on timeout.
    pub(super) async fn await_state(
        &self,
        flow: &str,
        accept: &[FlowState],
        pending: &[FlowState],
        timeout: Duration,
    ) -> bool {
        let Some(dp) = self.dataplane() else {
            tracing::error!(flow, "transfers: no data plane attached");
            return false;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            match dp.flows().get(flow).await {
                Ok(Some((f, _))) if accept.contains(&f.state) => return true,
                Ok(Some((f, _))) if !pending.contains(&f.state) => return false,
                Ok(_) => {}
                Err(e) => tracing::warn!(flow, error = %e, "transfer: cannot read the flow"),
            }
            if tokio::time::Instant::now() >= deadline || self.shutdown.is_cancelled() {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}
