//! In-process leases for single-process stores (memory, redb): the same rules as PostgreSQL,
//! kept in a map.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Lease, LeaseError, LeaseStore};

/// One lease row.
struct Row {
    owner: String,
    generation: i64,
    expires_at: Instant,
}

/// Leases held in this process.
#[derive(Default)]
pub struct MemoryLeases {
    rows: Mutex<HashMap<String, Row>>,
}

impl MemoryLeases {
    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Row>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn held(row: &Row, lease: &Lease) -> bool {
    row.owner == lease.owner && row.generation == lease.generation
}

#[async_trait]
impl LeaseStore for MemoryLeases {
    async fn acquire(
        &self,
        flow_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        let now = Instant::now();
        let mut rows = self.rows();
        let generation = match rows.get(flow_id) {
            Some(r) if r.expires_at > now && r.owner != owner => return Ok(None),
            Some(r) => r.generation + 1,
            None => 1,
        };
        rows.insert(
            flow_id.to_string(),
            Row {
                owner: owner.to_string(),
                generation,
                expires_at: now + ttl,
            },
        );
        Ok(Some(Lease {
            flow_id: flow_id.to_string(),
            owner: owner.to_string(),
            generation,
        }))
    }

    async fn claim_due(
        &self,
        owner: &str,
        ttl: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>, LeaseError> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (flow_id, row) in self.rows().iter_mut() {
            if out.len() >= limit as usize {
                break;
            }
            if row.expires_at <= now {
                row.owner = owner.to_string();
                row.generation += 1;
                row.expires_at = now + ttl;
                out.push(Lease {
                    flow_id: flow_id.clone(),
                    owner: owner.to_string(),
                    generation: row.generation,
                });
            }
        }
        Ok(out)
    }

    async fn heartbeat(&self, lease: &Lease, ttl: Duration) -> Result<bool, LeaseError> {
        match self.rows().get_mut(&lease.flow_id) {
            Some(row) if held(row, lease) => {
                row.expires_at = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        let mut rows = self.rows();
        if rows.get(&lease.flow_id).is_some_and(|r| held(r, lease)) {
            rows.remove(&lease.flow_id);
        }
        Ok(())
    }

    async fn hand_back(&self, lease: &Lease) -> Result<(), LeaseError> {
        if let Some(row) = self.rows().get_mut(&lease.flow_id) {
            if held(row, lease) {
                row.expires_at = Instant::now();
            }
        }
        Ok(())
    }

    async fn forget(&self, flow_id: &str) -> Result<(), LeaseError> {
        self.rows().remove(flow_id);
        Ok(())
    }

    fn shared(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fencing_and_expiry() {
        let l = MemoryLeases::default();
        let ttl = Duration::from_secs(60);
        let a = l.acquire("f", "a", ttl).await.unwrap().unwrap();
        assert!(l.acquire("f", "b", ttl).await.unwrap().is_none());
        assert!(l.claim_due("b", ttl, 10).await.unwrap().is_empty());
        l.hand_back(&a).await.unwrap();
        let b = l.claim_due("b", ttl, 10).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].generation, a.generation + 1);
        assert!(
            !l.heartbeat(&a, ttl).await.unwrap(),
            "stale owner is fenced"
        );
        assert!(l.heartbeat(&b[0], ttl).await.unwrap());
        l.release(&a).await.unwrap();
        assert!(
            l.heartbeat(&b[0], ttl).await.unwrap(),
            "stale release is ignored"
        );
        l.forget("f").await.unwrap();
        assert!(!l.heartbeat(&b[0], ttl).await.unwrap());
    }
}
