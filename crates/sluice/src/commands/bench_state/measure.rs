//! Drives one operation from N concurrent tasks for a fixed time and records every latency.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::BenchError;

/// Operations per `multi` transaction.
pub const MULTI_OPS: usize = 10;

/// A client the benchmark drives: Sluice's store or a backend's own client library doing the
/// same work. Futures are `Send` so tasks can run on any worker.
pub trait Client: Send + Sync + 'static {
    /// Reads `key`, which exists; fails if it does not.
    fn get(&self, key: &str) -> impl Future<Output = Result<(), BenchError>> + Send;
    /// Writes `value` to `key` (last write wins).
    fn set(&self, key: &str, value: &Bytes) -> impl Future<Output = Result<(), BenchError>> + Send;
    /// Writes `value` to every key in one transaction.
    fn multi(
        &self,
        keys: &[String],
        value: &Bytes,
    ) -> impl Future<Output = Result<(), BenchError>> + Send;
}

/// The operation measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// One get of an existing key.
    Get,
    /// One last-write set.
    Set,
    /// One transaction of [`MULTI_OPS`] upserts.
    Multi,
}

impl Op {
    /// The name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Multi => "multi (10 upserts)",
        }
    }
}

/// The data set: keys that exist before a measurement starts, and the value written.
pub struct Workload {
    /// Every key (the same names on both sides; each side keeps its own copy of the data).
    pub keys: Vec<String>,
    /// The value every write stores.
    pub value: Bytes,
}

impl Workload {
    /// `count` keys of the form `bench||key-00000042` and a `value_len`-byte value.
    pub fn new(count: usize, value_len: usize) -> Self {
        Workload {
            keys: (0..count).map(|i| format!("bench||key-{i:08}")).collect(),
            value: Bytes::from(vec![b'v'; value_len]),
        }
    }

    /// The key for the `i`-th operation of task `task` of `tasks`: a fixed stride (no random
    /// generator on the hot path) through the whole key space for reads, and through the task's
    /// own share of it for writes, so that concurrent transactions never wait on each other's
    /// row locks (or deadlock) in a database that locks rows.
    fn key(&self, task: usize, tasks: usize, i: u64, write: bool) -> &str {
        let n = self.keys.len();
        let step = i.wrapping_mul(7_919);
        let index = if write && tasks > 1 && n >= tasks {
            let share = (n / tasks) as u64;
            task + tasks * (step % share) as usize
        } else {
            (step % n as u64) as usize
        };
        &self.keys[index]
    }
}

/// What one measurement found.
pub struct Stats {
    /// Operations completed in the measured window.
    pub ops: u64,
    /// The measured window.
    pub window: Duration,
    /// Latency of each operation, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Stats {
    /// Operations per second.
    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64()
    }

    /// The 99th-percentile latency in microseconds.
    pub fn p99_micros(&self) -> f64 {
        self.latency.value_at_quantile(0.99) as f64 / 1_000.0
    }

    /// Adds another measurement of the same operation (a later round) to this one.
    pub fn merge(total: Option<Stats>, round: Stats) -> Result<Stats, BenchError> {
        let Some(mut total) = total else {
            return Ok(round);
        };
        total.ops += round.ops;
        total.window += round.window;
        total
            .latency
            .add(&round.latency)
            .map_err(|e| BenchError::new(format!("cannot merge histograms: {e}")))?;
        Ok(total)
    }
}

/// How long to measure and how long to warm up first.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Operations before this much time are not counted.
    pub warmup: Duration,
    /// The measured window after the warm-up.
    pub window: Duration,
}

impl Timing {
    /// One of `rounds` equal shares of the warm-up and the window.
    pub fn share(self, rounds: u32) -> Timing {
        Timing {
            warmup: self.warmup / rounds.max(1),
            window: self.window / rounds.max(1),
        }
    }
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| BenchError::new(format!("cannot create a histogram: {e}")))
}

/// Runs `op` on `client` from `concurrency` tasks: each loops until the window ends; operations
/// started inside the window count and have their latency recorded.
pub async fn run<C: Client>(
    client: &Arc<C>,
    workload: &Arc<Workload>,
    op: Op,
    concurrency: usize,
    timing: Timing,
) -> Result<Stats, BenchError> {
    let start = Instant::now();
    let counted_from = start + timing.warmup;
    let end = counted_from + timing.window;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let client = Arc::clone(client);
        let workload = Arc::clone(workload);
        tasks.spawn(async move {
            let mut latency = histogram()?;
            let mut ops = 0u64;
            let mut i = task as u64 * 1_000_003;
            let mut batch: Vec<String> = Vec::with_capacity(MULTI_OPS);
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let key = |i: u64, write: bool| workload.key(task, concurrency, i, write);
                match op {
                    Op::Get => client.get(key(i, false)).await?,
                    Op::Set => client.set(key(i, true), &workload.value).await?,
                    Op::Multi => {
                        batch.clear();
                        for j in 0..MULTI_OPS as u64 {
                            batch.push(key(i * MULTI_OPS as u64 + j, true).to_string());
                        }
                        client.multi(&batch, &workload.value).await?
                    }
                }
                i += 1;
                if began >= counted_from {
                    latency.saturating_record(began.elapsed().as_nanos() as u64);
                    ops += 1;
                }
            }
            Ok::<_, BenchError>((ops, latency))
        });
    }
    let mut stats = Stats {
        ops: 0,
        window: timing.window,
        latency: histogram()?,
    };
    while let Some(joined) = tasks.join_next().await {
        let (ops, latency) =
            joined.map_err(|e| BenchError::new(format!("a benchmark task died: {e}")))??;
        stats.ops += ops;
        stats
            .latency
            .add(&latency)
            .map_err(|e| BenchError::new(format!("cannot merge histograms: {e}")))?;
    }
    Ok(stats)
}

/// Runs `batch` (which writes `batch_len` keys per call) back to back from one task for the
/// window and reports keys written per second over the time the counted batches took (from the
/// start of the first to the end of the last). At least one batch is counted even when a batch
/// takes longer than the window.
pub async fn run_batches<F, Fut>(
    batch_len: usize,
    timing: Timing,
    mut batch: F,
) -> Result<Stats, BenchError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<(), BenchError>>,
{
    let start = Instant::now();
    let counted_from = start + timing.warmup;
    let end = counted_from + timing.window;
    let mut stats = Stats {
        ops: 0,
        window: timing.window,
        latency: histogram()?,
    };
    let mut round = 0u64;
    let mut counted: Option<(Instant, Instant)> = None;
    loop {
        let began = Instant::now();
        if began >= end && counted.is_some() {
            break;
        }
        batch(round).await?;
        round += 1;
        if began >= counted_from {
            let done = Instant::now();
            stats
                .latency
                .saturating_record(done.duration_since(began).as_nanos() as u64);
            stats.ops += batch_len as u64;
            let first = counted.map_or(began, |(first, _)| first);
            counted = Some((first, done));
        }
    }
    if let Some((first, last)) = counted {
        stats.window = last.duration_since(first).max(Duration::from_nanos(1));
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use std::time::Duration;

    use super::{run_batches, Timing, Workload};

    /// A batch slower than the whole window is still counted, over the time it took.
    #[tokio::test]
    async fn a_batch_longer_than_the_window_is_counted_over_its_own_time() {
        let timing = Timing {
            warmup: Duration::from_millis(1),
            window: Duration::from_millis(5),
        };
        let stats = run_batches(1_000, timing, |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        })
        .await
        .expect("batches");
        assert_eq!(stats.ops, 1_000);
        assert!(
            stats.window >= Duration::from_millis(20),
            "{:?}",
            stats.window
        );
    }

    #[test]
    fn concurrent_writers_never_share_a_key_and_readers_see_them_all() {
        let w = Workload::new(1_000, 8);
        let tasks = 32;
        let mut owner = std::collections::HashMap::new();
        for task in 0..tasks {
            for i in 0..5_000 {
                let key = w.key(task, tasks, i, true);
                assert_eq!(*owner.entry(key).or_insert(task), task, "{key} shared");
            }
        }
        let read: HashSet<&str> = (0..5_000).map(|i| w.key(0, tasks, i, false)).collect();
        assert_eq!(read.len(), 1_000);
        let single: HashSet<&str> = (0..5_000).map(|i| w.key(0, 1, i, true)).collect();
        assert_eq!(single.len(), 1_000);
    }
}
