//! `sluice bench --connectors`: the PostgreSQL and NATS connectors through the real engine, each
//! beside a direct client loop doing the same work in the same run.
//!
//! - PostgreSQL CDC → NATS ([`pg_nats`]): a fresh table is captured by the `postgres` source
//!   (pgoutput, a new slot and publication) and published by the `nats` destination. Rows are
//!   inserted from a separate client, first as fast as it can (records/s delivered to NATS), then
//!   at a fixed rate (end-to-end lag per record: the time JetStream stored the message minus the
//!   wall-clock time embedded in the row when its INSERT was sent). Baselines: the same inserts
//!   alone, and the same number of messages published directly to JetStream.
//! - NATS → PostgreSQL ([`nats_pg`]): a stream pre-filled with JSON messages is read by the
//!   `nats` source and upserted in batches by the `postgres` destination, until the table holds
//!   every record. Baseline: a direct loop consuming the stream and upserting batches of the same
//!   size with one multi-row statement each.
//!
//! Every table, stream, replication slot and publication is unique to the run and dropped at
//! the end, also when a scenario fails.

mod inserter;
mod nats_io;
pub mod nats_pg;
pub mod pg_nats;
mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::{
    ConnectorConfig, DlqConfig, Engine, PipelineConfig, PipelineHandle, PipelineOptions,
    PipelineState,
};
use sluice_sdk::{Registry, Settings};
use sluice_state::RedbStore;

pub use table::Row;

/// The PostgreSQL server used when neither `--postgres-url` nor an environment variable says.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The target of both throughput scenarios, in records per second.
pub const TARGET_RECORDS_PER_SEC: f64 = 50_000.0;
/// The target for the p99 end-to-end lag of PostgreSQL CDC → NATS.
pub const TARGET_P99_LAG: Duration = Duration::from_secs(1);

/// Arguments of `sluice bench --connectors` (flattened into `sluice bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectorBenchArgs {
    /// Benchmark the PostgreSQL and NATS connectors (CDC → NATS, NATS → PostgreSQL, each beside
    /// a direct client loop) instead of local pipelines. Uses --postgres-url (or
    /// SLUICE_TEST_POSTGRES_URL, else postgres://postgres@127.0.0.1:5432/test) and --nats-url.
    #[arg(long)]
    pub connectors: bool,

    /// With --connectors: the NATS server (JetStream enabled).
    #[arg(
        long,
        env = "SLUICE_TEST_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_name = "URL"
    )]
    pub nats_url: String,

    /// With --connectors: records of each throughput run.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connector_records: u64,

    /// With --connectors: rows inserted per second in the fixed-rate lag run.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub lag_rate: u64,

    /// With --connectors: seconds of the fixed-rate lag run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub lag_seconds: u64,

    /// With --connectors: rows per INSERT at full speed, and records per batch of the pipelines
    /// and of the direct NATS → PostgreSQL loop.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
}

/// What one `--connectors` run does: the servers, the sizes, the scenarios.
#[derive(Debug, Clone)]
pub struct Plan {
    /// PostgreSQL connection string.
    pub postgres_url: String,
    /// NATS server URL.
    pub nats_url: String,
    /// Records per throughput run.
    pub records: u64,
    /// Rows per second of the lag run.
    pub lag_rate: u64,
    /// Seconds of the lag run.
    pub lag_seconds: u64,
    /// Rows per INSERT and records per pipeline batch.
    pub batch: usize,
    /// Run PostgreSQL CDC → NATS.
    pub pg_to_nats: bool,
    /// Run NATS → PostgreSQL.
    pub nats_to_pg: bool,
    /// Where the pipelines keep their state (a fresh redb file per pipeline, removed after).
    pub dir: PathBuf,
    /// Makes names unique to this run (tables, streams, slots).
    pub tag: String,
}

/// A connector benchmark that could not run to its end.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(String);

impl BenchError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        BenchError(message.into())
    }

    /// A closure that wraps an error with what was being done.
    pub(crate) fn ctx<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> BenchError + '_ {
        move |e| BenchError(format!("{what}: {e}"))
    }
}

/// Scenario names for `--only`.
pub const SCENARIO_PG_NATS: &str = "postgres-nats";
/// Scenario names for `--only`.
pub const SCENARIO_NATS_PG: &str = "nats-postgres";

impl Plan {
    /// The plan for the command line's arguments.
    pub fn from_args(args: &crate::cli::BenchArgs) -> Self {
        let c = &args.connectors;
        let postgres_url = args
            .state
            .postgres_url
            .clone()
            .or_else(|| std::env::var("SLUICE_TEST_POSTGRES_URL").ok())
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_string());
        let wants = |name: &str| {
            args.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|x| x == name))
        };
        Plan {
            postgres_url,
            nats_url: c.nats_url.clone(),
            records: c.connector_records,
            lag_rate: c.lag_rate,
            lag_seconds: c.lag_seconds,
            batch: usize::try_from(c.batch).unwrap_or(1024),
            pg_to_nats: wants(SCENARIO_PG_NATS),
            nats_to_pg: wants(SCENARIO_NATS_PG),
            dir: args.dir.clone(),
            tag: format!("{}_{}", std::process::id(), unique_suffix()),
        }
    }
}

/// A short suffix that differs between runs of the same process id.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}", nanos)
}

/// Runs `sluice bench --connectors`: prints the table and the targets to `out`, progress to
/// stderr. A scenario that fails is reported and the other still runs; the command fails at the
/// end if any did.
pub async fn bench_connectors(
    args: &crate::cli::BenchArgs,
    registry: Registry,
    out: &mut impl Write,
) -> Result<(), super::CommandError> {
    let plan = Plan::from_args(args);
    std::fs::create_dir_all(&plan.dir).map_err(|source| super::CommandError::DataDir {
        path: plan.dir.clone(),
        source,
    })?;
    let (rows, failures) = run(&plan, &registry).await;
    writeln!(
        out,
        "Connectors: {} records per throughput run, lag run {} rows/s for {} s, batches of {}; \
         {} cores",
        plan.records,
        plan.lag_rate,
        plan.lag_seconds,
        plan.batch,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(out)?;
    table::write(&rows, out)?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(BenchError::new(failures.join("; ")).into())
    }
}

/// Runs the scenarios of `plan`; returns the rows measured and the failures (one line each).
pub async fn run(plan: &Plan, registry: &Registry) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    if plan.pg_to_nats {
        if let Err(e) = pg_nats::run(plan, registry, &mut rows).await {
            eprintln!("{SCENARIO_PG_NATS}: failed: {e}");
            failures.push(format!("{SCENARIO_PG_NATS}: {e}"));
        }
    }
    if plan.nats_to_pg {
        if let Err(e) = nats_pg::run(plan, registry, &mut rows).await {
            eprintln!("{SCENARIO_NATS_PG}: failed: {e}");
            failures.push(format!("{SCENARIO_NATS_PG}: {e}"));
        }
    }
    (rows, failures)
}

/// A connector of a pipeline.
fn connector(id: &str, plugin: &str, settings: &[(&str, &str)]) -> ConnectorConfig {
    ConnectorConfig {
        id: id.into(),
        plugin: plugin.into(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Settings>(),
    }
}

/// A running pipeline and the store file it checkpoints to.
struct Running {
    handle: PipelineHandle,
    data: PathBuf,
}

/// Starts `source → dest` on the real engine with a fresh redb store under `dir`, exactly as
/// `sluice run` would.
async fn start(
    dir: &Path,
    registry: &Registry,
    id: &str,
    source: ConnectorConfig,
    dest: ConnectorConfig,
    batch: usize,
) -> Result<Running, BenchError> {
    let data = dir.join(format!("data-{id}"));
    let _ = std::fs::remove_dir_all(&data);
    let store_path = data.join("state.redb");
    let store = RedbStore::open(&store_path).map_err(BenchError::ctx("opening the state store"))?;
    let engine = Engine::new(registry.clone(), Arc::new(store));
    let config = PipelineConfig {
        id: id.into(),
        source,
        destinations: vec![dest],
        processors: vec![],
        dlq: DlqConfig::default(),
        options: PipelineOptions {
            batch_size: batch,
            ..PipelineOptions::default()
        },
    };
    let handle = engine
        .start(config)
        .await
        .map_err(BenchError::ctx("starting the pipeline"))?;
    Ok(Running { handle, data })
}

impl Running {
    /// Waits until the pipeline has acknowledged `records` records, or fails after `timeout`
    /// or when the pipeline ends on its own.
    async fn wait_acked(&self, records: u64, timeout: Duration) -> Result<Instant, BenchError> {
        let controller = self.handle.controller();
        let deadline = Instant::now() + timeout;
        loop {
            let m = controller.metrics();
            if m.acked >= records {
                return Ok(Instant::now());
            }
            if m.nacked > 0 {
                return Err(BenchError::new(format!(
                    "the pipeline nacked {} record(s)",
                    m.nacked
                )));
            }
            if matches!(m.state, PipelineState::Stopped | PipelineState::Failed) {
                return Err(BenchError::new(format!(
                    "the pipeline ended after {} of {records} records",
                    m.acked
                )));
            }
            if Instant::now() > deadline {
                return Err(BenchError::new(format!(
                    "timed out after {timeout:?} with {} of {records} records acknowledged",
                    m.acked
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the pipeline gracefully, waits for it and removes its store.
    async fn stop(self) -> Result<u64, BenchError> {
        self.handle.controller().stop();
        let summary = self.handle.wait().await;
        let _ = std::fs::remove_dir_all(&self.data);
        summary
            .map(|s| s.metrics.acked)
            .map_err(BenchError::ctx("the pipeline failed"))
    }
}

/// Seconds until `n` records at `per_sec` are done, with room to spare: a run's timeout.
fn timeout_for(n: u64, per_sec: f64) -> Duration {
    Duration::from_secs_f64(60.0 + 10.0 * n as f64 / per_sec.max(1.0))
}
