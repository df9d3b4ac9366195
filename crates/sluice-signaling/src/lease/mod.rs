//! Leases on data flows, so that several replicas can share the flows of one store.
//!
//! A flow whose work runs in the background (a provider push, a consumer pull) holds a lease while
//! its job runs: a row naming the owning replica, an expiry the job pushes forward (heartbeat), and
//! a *generation* bumped by every new owner. A heartbeat or release only succeeds for the owner and
//! generation that took the lease, so a replica that lost its lease (it stalled past the expiry and
//! another one claimed the flow) learns it at its next heartbeat and stops its job: the generation
//! fences stale owners. A row whose lease expired is *due*: some replica's claim loop takes it and
//! resumes the flow's job from its last checkpoint. A row is deleted when the flow needs no more
//! work (finished, failed, suspended, terminated).
//!
//! Two implementations: [`PostgresLeases`] (a table beside the store's, claims with
//! `FOR UPDATE SKIP LOCKED`, time from the database's clock) for replicas sharing PostgreSQL, and
//! [`MemoryLeases`] for single-process stores, so one code path serves both.

mod memory;
mod postgres;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

pub use memory::MemoryLeases;
pub use postgres::PostgresLeases;

/// A lease held on a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The flow.
    pub flow_id: String,
    /// The replica holding it.
    pub owner: String,
    /// Bumped by every new owner; fences stale ones.
    pub generation: i64,
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease backend failed (transient: try again later).
    #[error("lease store {target}: {operation} failed: {message}")]
    Backend {
        /// Where the leases live (never a password).
        target: String,
        /// What was attempted.
        operation: &'static str,
        /// The backend's message.
        message: String,
    },
    /// The configuration was refused.
    #[error("leases: {0}")]
    Config(String),
}

/// Lease tuning (`signaling.replicas` in the server configuration).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// How long a lease lasts without a heartbeat, e.g. `10s`: a dead replica's flows resume
    /// elsewhere after about this long. Jobs heartbeat every third of it.
    #[serde(with = "duration_text")]
    pub ttl: Duration,
    /// How often a replica looks for due flows, e.g. `2s`.
    #[serde(with = "duration_text")]
    pub claim_interval: Duration,
    /// Most flows claimed at once.
    pub claim_batch: u32,
}

impl Default for LeaseConfig {
    /// A 10 s lease, a claim every 2 s, 16 flows at a time.
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(10),
            claim_interval: Duration::from_secs(2),
            claim_batch: 16,
        }
    }
}

impl LeaseConfig {
    /// How often a running job heartbeats: a third of the lease.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(10))
    }
}

/// Where leases live. Every method is one atomic step.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease on `flow_id` for `owner` for `ttl` if nobody else holds a live one (absent,
    /// expired, or already `owner`'s), with a new generation; `None` if another owner holds it.
    async fn acquire(
        &self,
        flow_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError>;

    /// Takes up to `limit` due leases (expired, owner dead or gone) for `owner`, skipping rows
    /// another replica is claiming at the same moment.
    async fn claim_due(
        &self,
        owner: &str,
        ttl: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>, LeaseError>;

    /// Extends `lease` by `ttl` from now; false if it is no longer held (lost or released).
    async fn heartbeat(&self, lease: &Lease, ttl: Duration) -> Result<bool, LeaseError>;

    /// Deletes `lease` (the flow needs no more work) if still held.
    async fn release(&self, lease: &Lease) -> Result<(), LeaseError>;

    /// Expires `lease` at once, keeping the row, so another replica resumes the flow without
    /// waiting (graceful shutdown).
    async fn hand_back(&self, lease: &Lease) -> Result<(), LeaseError>;

    /// Deletes the lease on `flow_id` whoever holds it: the flow needs no more work (suspended,
    /// terminated, completed). The holder's next heartbeat fails and its job stops.
    async fn forget(&self, flow_id: &str) -> Result<(), LeaseError>;

    /// True when other processes share these leases (a claim loop is worth running).
    fn shared(&self) -> bool;
}

/// The leases of one replica: where they live, who this replica is, and the tuning.
#[derive(Clone)]
pub struct Leasing {
    /// The lease store.
    pub store: Arc<dyn LeaseStore>,
    /// This replica's owner id (unique per process).
    pub owner: String,
    /// Tuning.
    pub config: LeaseConfig,
}

impl std::fmt::Debug for Leasing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leasing")
            .field("owner", &self.owner)
            .field("shared", &self.store.shared())
            .field("config", &self.config)
            .finish()
    }
}

impl Leasing {
    /// Leases in `store` for a new owner id (`<host-ish>-<pid>-<uuid>`).
    pub fn new(store: Arc<dyn LeaseStore>, config: LeaseConfig) -> Self {
        let owner = format!("pid{}-{}", std::process::id(), uuid::Uuid::new_v4());
        Leasing {
            store,
            owner,
            config,
        }
    }

    /// In-process leases (single-process stores).
    pub fn in_process(config: LeaseConfig) -> Self {
        Self::new(Arc::new(MemoryLeases::default()), config)
    }

    /// Takes the lease on `flow_id` for this replica.
    pub async fn acquire(&self, flow_id: &str) -> Result<Option<Lease>, LeaseError> {
        self.store
            .acquire(flow_id, &self.owner, self.config.ttl)
            .await
    }

    /// Takes due leases for this replica.
    pub async fn claim_due(&self) -> Result<Vec<Lease>, LeaseError> {
        self.store
            .claim_due(&self.owner, self.config.ttl, self.config.claim_batch.max(1))
            .await
    }

    /// Extends `lease`.
    pub async fn heartbeat(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.store.heartbeat(lease, self.config.ttl).await
    }
}

/// Reads durations written as humantime text (`10s`, `500ms`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let value = humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))?;
        if value.is_zero() {
            return Err(serde::de::Error::custom(
                "a duration of zero is not allowed",
            ));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_camel_case_durations() {
        let c: LeaseConfig =
            serde_json::from_str(r#"{"ttl":"2s","claimInterval":"500ms"}"#).expect("parses");
        assert_eq!(c.ttl, Duration::from_secs(2));
        assert_eq!(c.claim_interval, Duration::from_millis(500));
        assert_eq!(c.claim_batch, 16);
        assert!(serde_json::from_str::<LeaseConfig>(r#"{"ttl":"0s"}"#).is_err());
        assert!(serde_json::from_str::<LeaseConfig>(r#"{"tll":"1s"}"#).is_err());
    }
}
