//! Replicas sharing one store: jobs run under a lease on their flow (see [`crate::lease`]).
//!
//! A finite job (provider push, consumer pull) first takes its flow's lease — if another live
//! replica holds it, the job does not run — then heartbeats while it runs. Losing the lease (it
//! expired and another replica claimed the flow, or the flow was suspended or terminated on
//! another replica, which deletes the lease) stops the job without reporting anything. A finished
//! or failed job releases the lease; one stopped by a graceful shutdown hands it back, so another
//! replica resumes the flow at once. Each replica's claim loop takes due leases (their owner died
//! or handed them back) and resumes those flows' jobs from their last checkpoint, which the engine
//! keeps in the shared store. A failure on one flow is logged and never stops the loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Transfers;
use crate::flow::{DataFlow, Side};
use crate::lease::{Lease, LeaseConfig, Leasing};
use crate::messages::TransferMode;
use crate::state::FlowState;

/// A job's hold on its flow's lease: a heartbeat task that stops the job when the lease is lost.
pub(super) struct LeaseGuard {
    leasing: Leasing,
    lease: Lease,
    lost: CancellationToken,
    heartbeat: JoinHandle<()>,
}

/// How a leased job ended, which decides what happens to its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JobEnd {
    /// The flow needs no more work from a job (finished, failed, suspended, terminated): delete.
    Done,
    /// Stopped by this process's shutdown: hand the lease back for another replica.
    Shutdown,
}

impl LeaseGuard {
    /// True once the lease was lost (the job was stopped for it).
    pub(super) fn lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops heartbeating and releases or hands back the lease (nothing if it was lost).
    pub(super) async fn end(self, how: JobEnd) {
        self.heartbeat.abort();
        if self.lost() {
            return;
        }
        let r = match how {
            JobEnd::Done => self.leasing.store.release(&self.lease).await,
            JobEnd::Shutdown => self.leasing.store.hand_back(&self.lease).await,
        };
        if let Err(e) = r {
            // The lease expires by itself; another replica then finds the flow done or resumes it.
            tracing::warn!(flow = %self.lease.flow_id, error = %e, "lease: cannot let go");
        }
    }
}

/// True for flows whose work is a background job replicas share: a started provider push (or one
/// starting asynchronously) and a started consumer pull with the provider's address.
pub(super) fn needs_lease(flow: &DataFlow) -> bool {
    match (flow.side, flow.mode, flow.state) {
        (Side::Provider, TransferMode::Push, FlowState::Started | FlowState::Starting) => true,
        (Side::Consumer, TransferMode::Pull, FlowState::Started) => flow.source_address.is_some(),
        _ => false,
    }
}

impl Transfers {
    /// This process's leases: as set by [`Transfers::use_leasing`], else in-process ones.
    pub(super) fn leasing(&self) -> &Leasing {
        self.leasing
            .get_or_init(|| Leasing::in_process(LeaseConfig::default()))
    }

    /// Shares flows with other replicas through `leasing` (call before `recover`, before any
    /// job starts). False if leases were already in use.
    pub fn use_leasing(&self, leasing: Leasing) -> bool {
        self.leasing.set(leasing).is_ok()
    }

    /// Takes the lease for a job on `flow` and starts heartbeating; `None` when another replica
    /// holds it (or the lease store cannot be reached: the claim loop retries later). Losing the
    /// lease cancels `stop`.
    pub(super) async fn lease_job(
        &self,
        flow: &str,
        stop: &CancellationToken,
    ) -> Option<LeaseGuard> {
        let leasing = self.leasing().clone();
        let lease = match leasing.acquire(flow).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::info!(flow, "transfer: another replica runs this flow");
                return None;
            }
            Err(e) => {
                tracing::warn!(flow, error = %e, "transfer: cannot take the flow's lease; not running");
                return None;
            }
        };
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            leasing.clone(),
            lease.clone(),
            stop.clone(),
            lost.clone(),
        ));
        Some(LeaseGuard {
            leasing,
            lease,
            lost,
            heartbeat,
        })
    }

    /// Deletes a flow's lease whoever holds it (suspend, terminate, complete): the holder, here or
    /// on another replica, stops its job at its next heartbeat.
    pub(super) async fn forget_lease(&self, flow: &str) {
        if let Err(e) = self.leasing().store.forget(flow).await {
            tracing::warn!(flow, error = %e, "lease: cannot delete the flow's lease");
        }
    }

    /// Starts this replica's claim loop: every `claim_interval`, take due leases and resume their
    /// flows. Runs until `cancel` or the transfers' shutdown. Only worth it with shared leases.
    pub fn spawn_claim_loop(self: &Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        let t = self.clone();
        tokio::spawn(async move {
            let interval = t.leasing().config.claim_interval;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = cancel.cancelled() => return,
                    _ = t.shutdown.cancelled() => return,
                }
                match t.leasing().claim_due().await {
                    Ok(leases) => {
                        for lease in leases {
                            t.resume_claimed(lease).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "lease: cannot claim due flows"),
                }
            }
        })
    }

    /// Resumes a claimed flow's job (from its last checkpoint), or deletes the lease when the
    /// flow needs no job. Failures are logged.
    async fn resume_claimed(self: &Arc<Self>, lease: Lease) {
        let flow_id = lease.flow_id.clone();
        let Some(dp) = self.dataplane() else {
            tracing::error!(flow = %flow_id, "transfers: no data plane attached");
            return;
        };
        let flow = match dp.flows().get(&flow_id).await {
            Ok(found) => found.map(|(f, _)| f),
            Err(e) => {
                // Kept: the lease expires and the flow is claimed again.
                tracing::warn!(flow = %flow_id, error = %e, "lease: cannot read a claimed flow");
                return;
            }
        };
        let Some(flow) = flow.filter(needs_lease) else {
            if let Err(e) = self.leasing().store.release(&lease).await {
                tracing::warn!(flow = %flow_id, error = %e, "lease: cannot release");
            }
            return;
        };
        tracing::info!(flow = %flow_id, generation = lease.generation, "lease: resuming a claimed flow");
        if let Err(e) = self.on_recover(flow).await {
            tracing::warn!(flow = %flow_id, error = %e.message, "lease: cannot resume a claimed flow");
            if let Err(e) = self.leasing().store.release(&lease).await {
                tracing::warn!(flow = %flow_id, error = %e, "lease: cannot release");
            }
        }
    }
}

/// Extends `lease` every heartbeat interval until `stop`; on loss (or no successful heartbeat for
/// a whole lease) cancels `lost` and `stop`.
async fn heartbeat(
    leasing: Leasing,
    lease: Lease,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let every = leasing.config.heartbeat_interval();
    let ttl: Duration = leasing.config.ttl;
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match leasing.heartbeat(&lease).await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                tracing::warn!(flow = %lease.flow_id, "lease lost: stopping the job");
                break;
            }
            Err(e) if last_ok.elapsed() >= ttl => {
                tracing::warn!(flow = %lease.flow_id, error = %e, "lease expired unrenewed: stopping the job");
                break;
            }
            Err(e) => tracing::warn!(flow = %lease.flow_id, error = %e, "lease: heartbeat failed"),
        }
    }
    lost.cancel();
    stop.cancel();
}
