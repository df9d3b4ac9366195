//! Delivers callbacks from the durable outbox to control planes, with retries and backoff.
//!
//! Entries are tried in creation order; a 2xx answer commits the transition the entry reports and
//! removes it in one transaction ([`DataPlane::delivered`]). A failure is retried with exponential
//! backoff (capped), for ever: a control plane that is down for a while gets its callbacks when it
//! returns. One flow's failing callback never blocks the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_state::{DeleteRequest, Page};
use tokio_util::sync::CancellationToken;

use crate::dataplane::{DataPlane, OutboxEntry, OUTBOX_PREFIX};

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
    // Per entry: when it may be tried again, and the current delay.
    let mut retry_at: HashMap<String, (Instant, Duration)> = HashMap::new();
    loop {
        let progressed = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = pass(&dataplane, &client, &options, &metrics, &mut retry_at) => r,
        };
        if !progressed {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(options.poll_interval) => {}
            }
        }
    }
}

/// One scan of the outbox; true if anything was delivered.
async fn pass(
    dp: &DataPlane,
    client: &reqwest::Client,
    options: &OutboxOptions,
    metrics: &OutboxMetrics,
    retry_at: &mut HashMap<String, (Instant, Duration)>,
) -> bool {
    let store = dp.flows().store().clone();
    let mut page = Page {
        limit: Some(256),
        token: None,
    };
    let mut progressed = false;
    loop {
        let listing = match store.keys(&format!("{OUTBOX_PREFIX}%"), page).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the callback outbox");
                return progressed;
            }
        };
        for key in listing.keys {
            if retry_at
                .get(&key)
                .is_some_and(|(at, _)| *at > Instant::now())
            {
                continue;
            }
            let entry: OutboxEntry = match store.get(&key).await {
                Ok(Some(item)) => match serde_json::from_slice(&item.value) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(%key, error = %e, "dropping a corrupt callback entry");
                        let _ = store.delete(DeleteRequest::new(key.clone())).await;
                        continue;
                    }
                },
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot read a callback entry");
                    continue;
                }
            };
            match send(client, &entry).await {
                Ok(()) => {
                    if let Err(e) = dp.delivered(&key, &entry).await {
                        tracing::error!(%key, error = %e, "callback delivered but not recorded; it will be sent again");
                        continue;
                    }
                    metrics.delivered.fetch_add(1, Ordering::Relaxed);
                    retry_at.remove(&key);
                    progressed = true;
                }
                Err(why) => {
                    metrics.failures.fetch_add(1, Ordering::Relaxed);
                    let delay = retry_at
                        .get(&key)
                        .map_or(options.initial_backoff, |(_, d)| {
                            (*d * 2).min(options.max_backoff)
                        });
                    tracing::warn!(url = %entry.url(), flow = %entry.flow_id, error = %why, retry_in = ?delay, "callback failed");
                    retry_at.insert(key, (Instant::now() + delay, delay));
                }
            }
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
