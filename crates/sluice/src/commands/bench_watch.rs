//! `sluice bench --watch` (wired by the CLI): watch delivery per backend — events/s to 1 and to
//! 100 watchers, and write→event latency p50/p99 — as a markdown table beside the targets
//! (in-process ≥ 500,000 events/s to one watcher; PostgreSQL and Redis p99 ≤ 20 ms).
//!
//! The measuring is [`sluice_state::watch::bench`]; this prints it.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use sluice_state::watch::bench::{run_with, BenchFigures, BenchOptions};
use sluice_state::watch::WatchError;
use sluice_state::Store;

/// In-process target: events/s delivered to one watcher.
pub const TARGET_IN_PROCESS: f64 = 500_000.0;

/// Cross-process target: write→event p99.
pub const TARGET_P99: Duration = Duration::from_millis(20);

/// Why the watch bench failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchWatchError {
    /// A backend could not be measured.
    #[error("watch benchmark on {backend}: {source}")]
    Watch {
        /// The backend.
        backend: &'static str,
        /// What failed.
        #[source]
        source: WatchError,
    },
    /// Writing the table failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Measures every store in `stores` with 1 watcher and `events` events, then with 100 watchers
/// and a tenth of the events each, and prints one table. `latency_samples` single writes (paced
/// at `latency_interval`) give the latency columns.
pub async fn run(
    stores: Vec<Arc<dyn Store>>,
    events: usize,
    latency_samples: usize,
    latency_interval: Duration,
    out: &mut impl Write,
) -> Result<Vec<BenchFigures>, BenchWatchError> {
    let mut all = Vec::new();
    for store in stores {
        for watchers in [1usize, 100] {
            let per = if watchers == 1 {
                events
            } else {
                (events / 10).max(1)
            };
            let options = BenchOptions {
                watchers,
                events: per,
                latency_samples,
                latency_interval,
                ..BenchOptions::default()
            };
            let figures = run_with(Arc::clone(&store), options)
                .await
                .map_err(|source| BenchWatchError::Watch {
                    backend: store.name(),
                    source,
                })?;
            all.push(figures);
        }
    }
    print_table(&all, out)?;
    Ok(all)
}

/// The figures as a markdown table.
pub fn print_table(rows: &[BenchFigures], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "| backend | watchers | events/watcher | events/s (all watchers) | events/s per watcher | write→event p50 | p99 | target |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|")?;
    for f in rows {
        writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} |",
            f.backend,
            f.watchers,
            f.events,
            f.events_per_sec,
            f.events_per_sec_per_watcher,
            micros(f.latency_p50),
            micros(f.latency_p99),
            verdict(f),
        )?;
    }
    Ok(())
}

fn micros(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{} µs", d.as_micros())
    }
}

/// The target that applies to a row, and whether it is met.
fn verdict(f: &BenchFigures) -> String {
    match (f.backend, f.watchers) {
        ("memory", 1) => {
            let ok = f.events_per_sec_per_watcher >= TARGET_IN_PROCESS;
            format!("≥ 500,000/s: {}", if ok { "met" } else { "missed" })
        }
        ("postgres" | "redis", _) => {
            let ok = f.latency_p99 <= TARGET_P99;
            format!("p99 ≤ 20 ms: {}", if ok { "met" } else { "missed" })
        }
        _ => "-".to_string(),
    }
}

/// `sluice bench --watch` and its options.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchBenchArgs {
    /// Benchmark watch delivery (events/s to 1 and 100 watchers, write→event latency) per
    /// backend instead of pipelines. PostgreSQL and Redis use --postgres-url / --redis-url and
    /// are skipped when unset.
    #[arg(long)]
    pub watch: bool,

    /// With --watch: events written for the one-watcher row (a tenth per watcher with 100).
    #[arg(long, default_value_t = 500_000)]
    pub watch_events: usize,

    /// With --watch: single writes timed for the latency columns, one per millisecond
    /// (1,000 writes/s).
    #[arg(long, default_value_t = 5_000)]
    pub watch_latency_samples: usize,
}

/// Runs `sluice bench --watch`: memory and redb always, PostgreSQL and Redis when their URLs
/// are given; every table, schema and key it creates is removed afterwards.
pub async fn bench_watch(
    args: &WatchBenchArgs,
    dir: &std::path::Path,
    postgres_url: Option<&str>,
    redis_url: Option<&str>,
    out: &mut impl Write,
) -> Result<(), crate::commands::CommandError> {
    let fail = |what: String| crate::commands::CommandError::WatchBench(what);
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let tag = &format!("{}_{nanos}", std::process::id());
    let interval = Duration::from_millis(1);
    let mut rows = Vec::new();

    let memory: Arc<dyn Store> = Arc::new(sluice_state::MemoryStore::new());
    rows.extend(measure(memory, args, interval).await?);

    let path = dir.join(format!("bench-watch-{tag}.redb"));
    let redb = sluice_state::RedbStore::open(&path)
        .map_err(|e| fail(format!("opening {}: {e}", path.display())))?;
    let result = measure(Arc::new(redb), args, interval).await;
    let _ = sluice_state::RedbStore::remove(&path);
    rows.extend(result?);

    match postgres_url {
        Some(url) => {
            let schema = format!("sluice_watch_bench_{tag}");
            let options = sluice_state::PostgresOptions {
                table: "state".into(),
                schema: Some(schema.clone()),
                pool_size: 32,
                ..sluice_state::PostgresOptions::default()
            };
            let store = sluice_state::PostgresStore::connect(url, options)
                .await
                .map_err(|e| fail(format!("postgres: {e}")))?;
            let result = measure(Arc::new(store), args, interval).await;
            drop_schema(url, &schema).await.map_err(fail)?;
            rows.extend(result?);
        }
        None => eprintln!("postgres: skipped (no --postgres-url)"),
    }
    match redis_url {
        Some(url) => {
            let options = sluice_state::RedisOptions {
                key_prefix: format!("sluice-watch-bench-{tag}:"),
                ..sluice_state::RedisOptions::default()
            };
            let store = sluice_state::RedisStore::connect(url, options)
                .await
                .map_err(|e| fail(format!("redis: {e}")))?;
            let prefix = store.key_prefix().to_string();
            let result = measure(Arc::new(store), args, interval).await;
            delete_keys(url, &prefix).await.map_err(fail)?;
            rows.extend(result?);
        }
        None => eprintln!("redis: skipped (no --redis-url)"),
    }
    print_table(&rows, out).map_err(|e| fail(format!("output: {e}")))?;
    Ok(())
}

async fn measure(
    store: Arc<dyn Store>,
    args: &WatchBenchArgs,
    interval: Duration,
) -> Result<Vec<BenchFigures>, crate::commands::CommandError> {
    eprintln!("watch: measuring {}", store.name());
    let mut sink = std::io::sink();
    run(
        vec![store],
        args.watch_events,
        args.watch_latency_samples,
        interval,
        &mut sink,
    )
    .await
    .map_err(|e| crate::commands::CommandError::WatchBench(e.to_string()))
}

async fn drop_schema(url: &str, schema: &str) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("postgres cleanup: {e}"))?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .map_err(|e| format!("postgres cleanup of schema {schema}: {e}"))
}

async fn delete_keys(url: &str, prefix: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis cleanup: {e}"))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis cleanup: {e}"))?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await
        .map_err(|e| format!("redis cleanup: {e}"))?;
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut con)
            .await
            .map_err(|e| format!("redis cleanup: {e}"))?;
    }
    Ok(())
}
