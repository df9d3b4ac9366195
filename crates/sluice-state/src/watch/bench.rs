//! Measures watch delivery on any store with a change feed: events per second delivered to N
//! watchers (every watcher sees every event), and write→event latency (p50 / p99, from just
//! before the write call to the watcher holding the event).
//!
//! Throughput phase: one writer commits `events` puts in batches (`set_many`) under a fresh
//! prefix while N registrations read and acknowledge every change. The writer stays at most
//! [`BenchOptions::max_lead`] events ahead of the slowest watcher, so a fast writer does not
//! push watchers out of the retained history (a bench of delivery, not of resync). Keys cycle
//! over [`BenchOptions::key_space`] distinct keys. Latency
//! phase: single `set`s, paced, each value carrying its send time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::event::WatchEvent;
use super::options::WatchOptions;
use super::registration::{watch, Registration};
use super::WatchError;
use crate::store::{SetRequest, Store};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Registrations reading every event.
    pub watchers: usize,
    /// Changes committed in the throughput phase.
    pub events: usize,
    /// Puts per `set_many` in the throughput phase.
    pub batch: usize,
    /// Most events the writer may be ahead of the slowest watcher.
    pub max_lead: usize,
    /// Single writes in the latency phase (0 skips it).
    pub latency_samples: usize,
    /// Pause between latency writes.
    pub latency_interval: Duration,
    /// Bytes per value.
    pub value_len: usize,
    /// Distinct keys the throughput phase cycles over (updates of existing keys, as state
    /// changes mostly are).
    pub key_space: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            watchers: 1,
            events: 500_000,
            batch: 100,
            max_lead: 50_000,
            latency_samples: 2_000,
            latency_interval: Duration::from_millis(1),
            value_len: 16,
            key_space: 10_000,
        }
    }
}

/// The measured figures.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchFigures {
    /// The store's backend.
    pub backend: &'static str,
    /// Registrations.
    pub watchers: usize,
    /// Events delivered to each watcher in the throughput phase.
    pub events: usize,
    /// Wall time of the throughput phase.
    pub elapsed: Duration,
    /// Events delivered per second, summed over every watcher.
    pub events_per_sec: f64,
    /// Events delivered per second to each watcher.
    pub events_per_sec_per_watcher: f64,
    /// Median write→event latency.
    pub latency_p50: Duration,
    /// 99th percentile write→event latency.
    pub latency_p99: Duration,
    /// Latency samples taken (over every watcher).
    pub latency_samples: u64,
    /// Compaction notices seen (0 unless watchers fell out of history).
    pub compacted: u64,
}

/// Measures with `watchers` watchers and `events` events, other options default.
pub async fn run(
    store: Arc<dyn Store>,
    watchers: usize,
    events: usize,
) -> Result<BenchFigures, WatchError> {
    run_with(
        store,
        BenchOptions {
            watchers,
            events,
            ..BenchOptions::default()
        },
    )
    .await
}

/// Per-watcher progress the writer paces itself by.
struct Progress {
    seen: Vec<AtomicU64>,
}

impl Progress {
    fn slowest(&self) -> u64 {
        self.seen
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// Measures as `options` say.
pub async fn run_with(
    store: Arc<dyn Store>,
    options: BenchOptions,
) -> Result<BenchFigures, WatchError> {
    let feed = store.change_feed().ok_or(WatchError::Unsupported {
        backend: store.name(),
    })?;
    let prefix = format!("bench/watch/{}/", uuid::Uuid::new_v4().simple());
    let watchers = options.watchers.max(1);
    let wopts = WatchOptions::default().with_queue(4096);
    let mut regs: Vec<Registration> = (0..watchers)
        .map(|i| {
            watch(
                Arc::clone(&feed),
                format!("bench-{i}"),
                vec![prefix.clone()],
                None,
                wopts,
            )
        })
        .collect();
    for reg in &mut regs {
        if let Some(e) = reg.next().await {
            e.ack();
        }
    }
    let progress = Arc::new(Progress {
        seen: (0..watchers).map(|_| AtomicU64::new(0)).collect(),
    });
    let base = Instant::now();
    let target = options.events as u64;
    let latency_target = options.latency_samples as u64;
    let mut consumers = Vec::with_capacity(watchers);
    for (i, mut reg) in regs.into_iter().enumerate() {
        let progress = Arc::clone(&progress);
        consumers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).ok();
            let mut finished_at = None;
            let mut compacted = 0u64;
            let mut seen = 0u64;
            let mut latency_seen = 0u64;
            while let Some(event) = reg.next().await {
                match event {
                    WatchEvent::Change { value, done, .. } => {
                        done.ok();
                        if seen < target {
                            seen += 1;
                            progress.seen[i].store(seen, Ordering::Relaxed);
                            if seen == target {
                                finished_at = Some(Instant::now());
                                if latency_target == 0 {
                                    break;
                                }
                            }
                        } else {
                            let sent = value
                                .as_deref()
                                .and_then(|v| v.get(..8))
                                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                                .map(u64::from_le_bytes);
                            if let (Some(sent), Some(h)) = (sent, hist.as_mut()) {
                                let now = base.elapsed().as_nanos() as u64;
                                let _ = h.record(now.saturating_sub(sent).max(1));
                            }
                            latency_seen += 1;
                            if latency_seen == latency_target {
                                break;
                            }
                        }
                    }
                    WatchEvent::Compacted { .. } => compacted += 1,
                    other => other.ack(),
                }
            }
            (finished_at, hist, compacted)
        }));
    }

    // Throughput phase.
    let value = Bytes::from(vec![b'x'; options.value_len.max(8)]);
    let key_space = options.key_space.max(1) as u64;
    let start = Instant::now();
    let mut written = 0u64;
    while written < target {
        while written.saturating_sub(progress.slowest()) > options.max_lead as u64 {
            tokio::task::yield_now().await;
        }
        let n = (options.batch.max(1) as u64).min(target - written);
        let reqs: Vec<SetRequest> = (written..written + n)
            .map(|k| SetRequest::new(format!("{prefix}{}", k % key_space), value.clone()))
            .collect();
        for r in store.set_many(reqs).await {
            r?;
        }
        written += n;
    }

    // Every watcher drains the throughput phase before latency is measured (else the backlog
    // would be measured).
    while progress.slowest() < target {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Latency phase: paced single writes stamped with their send time.
    let mut tick = tokio::time::interval(options.latency_interval.max(Duration::from_micros(1)));
    for k in 0..latency_target {
        tick.tick().await;
        let mut v = (base.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        v.resize(options.value_len.max(8), b'x');
        store
            .set(SetRequest::new(format!("{prefix}lat/{}", k % 64), v))
            .await?;
    }

    let mut last = start;
    let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).ok();
    let mut compacted = 0;
    for c in consumers {
        let Ok((finished, hist, comp)) = c.await else {
            continue;
        };
        compacted += comp;
        if let Some(f) = finished {
            last = last.max(f);
        }
        if let (Some(m), Some(h)) = (merged.as_mut(), hist.as_ref()) {
            let _ = m.add(h);
        }
    }
    let elapsed = last
        .saturating_duration_since(start)
        .max(Duration::from_nanos(1));
    let per_watcher = options.events as f64 / elapsed.as_secs_f64();
    let (p50, p99, samples) = merged.as_ref().map_or((0, 0, 0), |h| {
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.len())
    });
    // Leave the store as it was.
    let _ = cleanup(&*store, &prefix).await;
    Ok(BenchFigures {
        backend: store.name(),
        watchers,
        events: options.events,
        elapsed,
        events_per_sec: per_watcher * watchers as f64,
        events_per_sec_per_watcher: per_watcher,
        latency_p50: Duration::from_nanos(p50),
        latency_p99: Duration::from_nanos(p99),
        latency_samples: samples,
        compacted,
    })
}

/// Deletes the keys the bench wrote.
async fn cleanup(store: &dyn Store, prefix: &str) -> Result<(), crate::StateError> {
    let pattern = format!("{}%", crate::like::escape(prefix));
    loop {
        let page = store
            .keys(
                &pattern,
                crate::store::Page {
                    limit: Some(1000),
                    token: None,
                },
            )
            .await?;
        if page.keys.is_empty() {
            return Ok(());
        }
        let reqs = page
            .keys
            .into_iter()
            .map(crate::store::DeleteRequest::new)
            .collect();
        for r in store.delete_many(reqs).await {
            r?;
        }
    }
}
