//! Delivers callbacks from the durable outbox to control planes, with retries and backoff.
//!
//! Entries are tried in creation order; a 2xx answer commits the transition the entry reports and
//! removes it in one transaction ([`DataPlane::delivered`]). A failure is retried with exponential
//! backoff (capped), for ever: a control plane that is down for a while gets its callbacks when it
//! returns. One flow's failing callback never blocks the others.
//!
//! Every `sluice serve` replica runs a deliverer over the same shared store, so before sending an
//! entry a deliverer claims it: a first-write of a claim key ([`claim_key`]) naming the replica.
//! Only the replica holding the claim sends, so one replica at a time delivers each entry; the
//! others skip it for that pass. The claim is removed together with the entry once the callback is
//! answered, and right after a failed attempt (the backoff is each replica's own decision, so
//! another replica may retry meanwhile). A claim also expires by itself, a little after the
//! request timeout ([`OutboxOptions::claim_ttl`]): if the replica holding it dies, another one takes
//! the entry over instead of leaving the callback stuck. On shutdown a deliverer finishes the
//! attempt in progress (at most one request timeout) and stops before the next one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_state::{Concurrency, DeleteRequest, Page, SetRequest, StateError, Store};
use tokio_util::sync::CancellationToken;

use crate::dataplane::{DataPlane, OutboxEntry, OUTBOX_PREFIX};

/// Store key prefix of delivery claims; a claim's key ends like its entry's (see [`claim_key`]).
pub const CLAIM_PREFIX: &str = "sluice/outbox-claims/";

/// How much longer than the request timeout a claim lives: room for reading the entry before the
/// request and recording the delivery after it.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// The claim key of the outbox entry at `entry_key` (`sluice/outbox/<id>` gives
/// `sluice/outbox-claims/<id>`).
pub fn claim_key(entry_key: &str) -> String {
    let id = entry_key.strip_prefix(OUTBOX_PREFIX).unwrap_or(entry_key);
    format!("{CLAIM_PREFIX}{id}")
}

/// Delivery tuning.
#[derive(Clone, Debug)]
pub struct OutboxOptions {
    /// How often the outbox is scanned when idle.
    pub poll_interval: Duration,
    /// First retry delay; doubles per failed attempt.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Timeout of one callback request.
    pub request_timeout: Duration,
}

impl OutboxOptions {
    /// How long a delivery claim lives: the request timeout plus a margin, so that a live claimer
    /// is done with its attempt before the claim expires, and a dead one's claim does not keep
    /// the entry from the other replicas for long.
    pub fn claim_ttl(&self) -> Duration {
        self.request_timeout.saturating_add(CLAIM_MARGIN)
    }
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            poll_interval: Duration::from_millis(50),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of the deliverer, for metrics.
#[derive(Debug, Default)]
pub struct OutboxMetrics {
    /// Callbacks answered 2xx.
    pub delivered: AtomicU64,
    /// Failed attempts (non-2xx answers, connection errors, timeouts).
    pub failures: AtomicU64,
}

/// Runs the deliverer until `shutdown` is cancelled.
pub async fn run(
    dataplane: DataPlane,
    options: OutboxOptions,
    metrics: Arc<OutboxMetrics>,
    shutdown: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(options.request_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the callback HTTP client; callbacks stay queued");
            return;
        }
    };
    let deliverer = Deliverer {
        dp: dataplane,
        client,
        options,
        metrics,
        owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4()),
        retry_at: HashMap::new(),
    };
    deliverer.run(shutdown).await;
}

/// One replica's deliverer.
struct Deliverer {
    dp: DataPlane,
    client: reqwest::Client,
    options: OutboxOptions,
    metrics: Arc<OutboxMetrics>,
    /// Names this run in its claims.
    owner: String,
    /// Per entry: when it may be tried again, and the current delay.
    retry_at: HashMap<String, (Instant, Duration)>,
}

impl Deliverer {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let progressed = self.pass(&shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
            if !progressed {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.options.poll_interval) => {}
                }
            }
        }
    }

    /// One scan of the outbox; true if anything was delivered. Stops between entries (or during
    /// a listing) once `shutdown` is cancelled, never inside an attempt: an attempt always ends
    /// with its entry delivered or its claim released, so a stopping replica leaves no claim that
    /// would hold the entry back from the others until it expired.
    async fn pass(&mut self, shutdown: &CancellationToken) -> bool {
        let store = self.dp.flows().store().clone();
        let mut page = Page {
            limit: Some(256),
            token: None,
        };
        let mut progressed = false;
        let pattern = format!("{OUTBOX_PREFIX}%");
        loop {
            // A listing holds nothing, so a stop may cut it short (a store that does not answer
            // would otherwise hold the stop up).
            let listed = tokio::select! {
                _ = shutdown.cancelled() => return progressed,
                l = store.keys(&pattern, page) => l,
            };
            let listing = match listed {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the callback outbox");
                    return progressed;
                }
            };
            for key in listing.keys {
                if shutdown.is_cancelled() {
                    return progressed;
                }
                if self
                    .retry_at
                    .get(&key)
                    .is_some_and(|(at, _)| *at > Instant::now())
                {
                    continue;
                }
                progressed |= self.attempt(&store, key).await;
            }
            match listing.next {
                Some(token) => {
                    page = Page {
                        limit: Some(256),
                        token: Some(token),
                    }
                }
                None => return progressed,
            }
        }
    }

    /// Claims, reads and sends one entry; true if it was delivered.
    async fn attempt(&mut self, store: &Arc<dyn Store>, key: String) -> bool {
        let claim = claim_key(&key);
        let etag = match self.claim(store, &claim).await {
            Ok(Some(etag)) => etag,
            // Another replica is delivering it.
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot claim a callback entry; skipping it for now");
                return false;
            }
        };
        // Read only once claimed: a replica that delivered the entry meanwhile removed it together
        // with its claim, so the entry is gone rather than sent twice.
        let entry: OutboxEntry = match store.get(&key).await {
            Ok(Some(item)) => match serde_json::from_slice(&item.value) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(%key, error = %e, "dropping a corrupt callback entry");
                    let _ = store.delete(DeleteRequest::new(key.clone())).await;
                    release(store, &claim, etag).await;
                    return false;
                }
            },
            Ok(None) => {
                release(store, &claim, etag).await;
                return false;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot read a callback entry");
                release(store, &claim, etag).await;
                return false;
            }
        };
        match send(&self.client, &entry).await {
            Ok(()) => {
                // Removes the claim too, in the same transaction as the entry.
                if let Err(e) = self.dp.delivered(&key, &entry).await {
                    tracing::error!(%key, error = %e, "callback delivered but not recorded; it will be sent again");
                    release(store, &claim, etag).await;
                    return false;
                }
                self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                self.retry_at.remove(&key);
                true
            }
            Err(why) => {
                release(store, &claim, etag).await;
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                let delay = self
                    .retry_at
                    .get(&key)
                    .map_or(self.options.initial_backoff, |(_, d)| {
                        (*d * 2).min(self.options.max_backoff)
                    });
                tracing::warn!(url = %entry.url(), flow = %entry.flow_id, error = %why, retry_in = ?delay, "callback failed");
                self.retry_at.insert(key, (Instant::now() + delay, delay));
                false
            }
        }
    }

    /// Writes the claim at `claim` if nobody holds it: its ETag (empty when the store cannot
    /// expire keys and nothing was claimed), or `None` if another replica holds it.
    async fn claim(
        &self,
        store: &Arc<dyn Store>,
        claim: &str,
    ) -> Result<Option<String>, StateError> {
        if !store.features().ttl {
            // A claim that cannot expire would strand the entry if this replica died; a store
            // without TTL is not shared by replicas, so the entry is sent unclaimed.
            return Ok(Some(String::new()));
        }
        let req = SetRequest::new(claim, Bytes::from(self.owner.clone()))
            .with_concurrency(Concurrency::FirstWrite)
            .with_ttl(self.options.claim_ttl());
        match store.set(req).await {
            Ok(etag) => Ok(Some(etag)),
            Err(StateError::EtagMismatch { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Removes our claim, unless it expired and another replica holds the key now (the ETag no longer
/// matches). A claim that cannot be removed expires by itself.
async fn release(store: &Arc<dyn Store>, claim: &str, etag: String) {
    if etag.is_empty() {
        // Sent unclaimed (see `Deliverer::claim`).
        return;
    }
    match store
        .delete(DeleteRequest::new(claim).with_etag(etag))
        .await
    {
        Ok(()) | Err(StateError::EtagMismatch { .. }) => {}
        Err(e) => {
            tracing::warn!(key = %claim, error = %e, "cannot release a callback claim; it expires by itself");
        }
    }
}

async fn send(client: &reqwest::Client, entry: &OutboxEntry) -> Result<(), String> {
    let mut req = client.post(entry.url()).json(&entry.message);
    if let Some(auth) = &entry.authorization {
        req = req.header(reqwest::header::AUTHORIZATION, auth);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("the control plane answered {}", resp.status()))
    }
}
