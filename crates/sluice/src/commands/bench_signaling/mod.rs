//! `sluice bench --signaling`: start+terminate pairs per second and pair latency of the Data Plane
//! Signaling API, per store and concurrency (issue #5).
//!
//! For every store asked for, and every concurrency, a fresh store is opened (the in-memory store,
//! a new redb file under `--dir`, a new schema on PostgreSQL) and the real DPS router
//! ([`sluice_signaling::http::router`] over a [`sluice_signaling::DataPlane`]) is served in this
//! process on `127.0.0.1:0`. The load generator ([`load`]) drives it over real HTTP/1.1 keep-alive
//! connections, one task per connection: a provider-pull start, then a terminate of the returned
//! flow, for a fixed time after a warm-up. Server and load generator share this machine's cores,
//! which the output says. The `floor` rows serve no data plane at all — start and terminate
//! answered at once with a fixed body — so they measure the HTTP floor of the machine and the
//! generator: the ceiling of any handler, and the yardstick for comparing runs across machines.

mod client;
mod cpu;
mod load;
mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use load::{Outcome, Timing};
pub use server::StoreKind;

/// Arguments of `sluice bench --signaling` (flattened into `sluice bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct SignalingBenchArgs {
    /// Benchmark the Data Plane Signaling API (start+terminate pairs over HTTP per store and
    /// concurrency) instead of pipelines. PostgreSQL uses --postgres-url, else
    /// SLUICE_TEST_POSTGRES_URL, and is skipped when neither is set.
    #[arg(long)]
    pub signaling: bool,

    /// With --signaling: the stores to measure (`floor`: no data plane, fixed answers — the
    /// machine's HTTP ceiling for comparison).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "floor,memory,redb,postgres"
    )]
    pub signaling_stores: Vec<StoreKind>,

    /// With --signaling: the numbers of concurrent connections to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub signaling_concurrency: Vec<usize>,

    /// With --signaling: how long each row is measured, after a warm-up of a fifth of it
    /// (e.g. `10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub signaling_duration: Duration,
}

/// A benchmark that could not run to its end.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(String);

impl BenchError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        BenchError(message.into())
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The stores, in order.
    pub stores: Vec<StoreKind>,
    /// The concurrencies, in order.
    pub concurrency: Vec<usize>,
    /// Warm-up and window of each row.
    pub timing: Timing,
    /// Where redb files go (on the disk that is measured: not a tmpfs).
    pub dir: PathBuf,
    /// The PostgreSQL server, if any.
    pub postgres_url: Option<String>,
}

/// One row of the result.
#[derive(Debug)]
pub struct Row {
    /// The store.
    pub store: StoreKind,
    /// Connections.
    pub concurrency: usize,
    /// What was measured, or why not.
    pub outcome: Result<Outcome, String>,
}

impl Row {
    /// Pairs per second, if measured.
    pub fn pairs_per_sec(&self) -> Option<f64> {
        self.outcome
            .as_ref()
            .ok()
            .map(|o| o.pairs as f64 / o.elapsed.as_secs_f64())
    }
}

/// The target of a store at a concurrency: pairs/s and, in memory at 32, a p99 bound.
pub fn target(store: StoreKind, concurrency: usize) -> Option<(f64, Option<Duration>)> {
    match (store, concurrency) {
        (StoreKind::Memory, 32) => Some((50_000.0, Some(Duration::from_millis(10)))),
        (StoreKind::Redb, 32) => Some((20_000.0, None)),
        (StoreKind::Postgres, 32) => Some((5_000.0, None)),
        _ => None,
    }
}

/// Measures every row of `plan`; `progress` gets one line per row as it finishes. A store that
/// cannot be opened or served fails its rows, not the run.
pub async fn run(plan: &Plan, progress: &mut impl Write) -> Vec<Row> {
    let mut rows = Vec::new();
    for &store in &plan.stores {
        for &concurrency in &plan.concurrency {
            let outcome = measure(plan, store, concurrency).await;
            let row = Row {
                store,
                concurrency,
                outcome: outcome.map_err(|e| e.to_string()),
            };
            let _ = writeln!(progress, "{}", line(&row));
            rows.push(row);
        }
    }
    rows
}

async fn measure(plan: &Plan, store: StoreKind, concurrency: usize) -> Result<Outcome, BenchError> {
    if store == StoreKind::Postgres && plan.postgres_url.is_none() {
        return Err(BenchError::new(
            "skipped: set --postgres-url or SLUICE_TEST_POSTGRES_URL",
        ));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tag = format!(
        "{}_{}_{concurrency}",
        std::process::id(),
        nanos % 1_000_000_000
    );
    let served = server::serve(store, &plan.dir, plan.postgres_url.as_deref(), &tag).await?;
    let outcome = load::drive(served.addr, concurrency.max(1), plan.timing, &tag).await;
    let stopped = served.stop().await;
    let outcome = outcome?;
    stopped?;
    Ok(outcome)
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// One row as text.
fn line(row: &Row) -> String {
    let head = format!("{:<9} {:>4} conn", row.store.name(), row.concurrency);
    match &row.outcome {
        Err(why) => format!("{head}  {why}"),
        Ok(o) => {
            let rate = row.pairs_per_sec().unwrap_or(0.0);
            let mut s = format!(
                "{head}  {:>9.0} pairs/s  p50 {:>9}  p99 {:>9}  max {:>9}  ({} pairs, {} errors)",
                rate,
                ms(o.latency.value_at_quantile(0.50)),
                ms(o.latency.value_at_quantile(0.99)),
                ms(o.latency.max()),
                o.pairs,
                o.errors
            );
            if let Some(cpu) = o.cpu.filter(|_| o.pairs > 0) {
                s.push_str(&format!(
                    "  CPU {:.2} cores, {:.0} µs/pair",
                    cpu.as_secs_f64() / o.elapsed.as_secs_f64(),
                    cpu.as_secs_f64() * 1e6 / o.pairs as f64
                ));
            }
            if let Some((want, p99)) = target(row.store, row.concurrency) {
                let ok = rate >= want
                    && p99.is_none_or(|b| {
                        Duration::from_micros(o.latency.value_at_quantile(0.99)) <= b
                    });
                let p99 = p99.map_or(String::new(), |b| format!(", p99 ≤ {} ms", b.as_millis()));
                s.push_str(&format!(
                    "  target ≥ {want:.0}/s{p99}: {}",
                    if ok { "met" } else { "MISSED" }
                ));
            }
            if row.store == StoreKind::Floor {
                s.push_str("  (no handler: this machine's ceiling)");
            }
            if let Some(e) = &o.first_error {
                s.push_str(&format!("\n          first error: {e}"));
            }
            s
        }
    }
}

/// Runs `sluice bench --signaling` and prints the table to `out`; fails if any row failed or
/// saw errors (a skipped PostgreSQL row does not count).
pub async fn bench_signaling(
    args: &SignalingBenchArgs,
    dir: &Path,
    postgres_url: Option<&str>,
    out: &mut impl Write,
) -> Result<(), super::CommandError> {
    let postgres_url = postgres_url
        .map(str::to_string)
        .or_else(|| std::env::var("SLUICE_TEST_POSTGRES_URL").ok());
    let plan = Plan {
        stores: args.signaling_stores.clone(),
        concurrency: args.signaling_concurrency.clone(),
        timing: Timing {
            warmup: args.signaling_duration / 5,
            measure: args.signaling_duration,
        },
        dir: dir.to_path_buf(),
        postgres_url,
    };
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    writeln!(
        out,
        "DPS start+terminate pairs over HTTP/1.1 keep-alive, {:?} per row after a {:?} warm-up.\n\
         Server and load generator run in this one process and share its {cores} core(s) \
         (tokio, {cores} worker threads); reference: the Rust DPS SDK in memory serves ~40,000 \
         pairs/s at 32 connections (p99 ≈ 88 ms) and ~7,800 pairs/s on one.",
        plan.timing.measure, plan.timing.warmup
    )?;
    out.flush()?;
    let rows = run(&plan, out).await;
    let failed = rows.iter().any(|r| match &r.outcome {
        Ok(o) => o.errors > 0,
        Err(why) => !why.starts_with("skipped"),
    });
    if failed {
        return Err(BenchError::new("some rows failed or saw errors (see above)").into());
    }
    Ok(())
}
