//! `sluice bench --state`: get, set and 10-operation `multi` per second and p99 latency for each
//! state backend at a few concurrencies, each beside the same operation done directly with the
//! backend's own client library in the same run, plus durable sets/s through redb's bulk set.
//!
//! Each side keeps its own copy of the data set (10,000 keys of 128 bytes, loaded first). The two
//! sides of a row alternate (Sluice, direct, Sluice, direct, ...: `--rounds`, 4 by default), each
//! round for an equal share of the time asked for after a short warm-up, and each side's rounds
//! are summed. Reads spread over every key; each task
//! writes keys of its own, so writers never wait on each other's row locks. Writes are
//! last-write sets of existing keys; redb commits are durable (fsync), like the backend's.

mod clients;
mod measure;
mod postgres_direct;
mod redb_direct;
mod redis_direct;
mod table;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_state::{
    MemoryStore, PostgresOptions, PostgresStore, RedbStore, RedisOptions, RedisStore, SetRequest,
    Store,
};

use clients::{MemoryDirect, SluiceClient};
use measure::{Client, Op, Stats, Timing, Workload};
use postgres_direct::PostgresDirect;
use redb_direct::RedbDirect;
use redis_direct::RedisDirect;
use table::Row;

/// Keys loaded before the measurements.
const KEYS: usize = 10_000;
/// Bytes per value.
const VALUE_LEN: usize = 128;
/// Keys per bulk set in the batched-durability measurement.
const BULK_BATCH: usize = 1_000;
/// The table's name for that measurement.
const BULK_LABEL: &str = "bulk set ×1000 (durable sets/s)";

/// The backends `sluice bench --state` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The in-memory store, beside a mutex-guarded hash map.
    Memory,
    /// The embedded redb store, beside the redb crate.
    Redb,
    /// The PostgreSQL store, beside tokio-postgres with the same SQL.
    Postgres,
    /// The Redis store, beside the redis crate with the same commands and scripts.
    Redis,
}

/// Arguments of `sluice bench --state` (flattened into `sluice bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct StateBenchArgs {
    /// Benchmark the state stores (get, set, multi per backend beside its own client library)
    /// instead of pipelines.
    #[arg(long)]
    pub state: bool,

    /// With --state: the backends to measure.
    #[arg(
        long = "backend",
        value_enum,
        value_delimiter = ',',
        default_value = "memory,redb,postgres,redis"
    )]
    pub backends: Vec<Backend>,

    /// With --state: seconds each side of each row is measured (plus a fifth of it to warm up).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,

    /// With --state: each side of a row runs this many times, alternating with the other, for an
    /// equal share of the time each, so that a change of load on the machine during a row weighs
    /// on both sides alike.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,

    /// With --state: the numbers of concurrent tasks to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub concurrency: Vec<usize>,

    /// With --state or --connectors: the PostgreSQL server (`postgres://user@host:port/db`);
    /// with --state the backend is skipped when it is unset.
    #[arg(long, env = "SLUICE_POSTGRES_URL", value_name = "URL")]
    pub postgres_url: Option<String>,

    /// With --state: the Redis server (`redis://host:port`); the backend is skipped when it is
    /// unset.
    #[arg(long, env = "SLUICE_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
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

/// What every backend's measurement needs.
struct Bench {
    workload: Arc<Workload>,
    timing: Timing,
    rounds: u32,
    concurrency: Vec<usize>,
}

/// Runs `sluice bench --state`: every backend asked for, in turn; prints the table and the
/// targets to `out` and progress to stderr. A backend that fails is reported and the others
/// still run; the command fails at the end if any did.
pub async fn bench_state(
    args: &StateBenchArgs,
    dir: &Path,
    out: &mut impl Write,
) -> Result<(), super::CommandError> {
    std::fs::create_dir_all(dir).map_err(|source| super::CommandError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let window = Duration::from_secs(args.seconds);
    let bench = Bench {
        workload: Arc::new(Workload::new(KEYS, VALUE_LEN)),
        timing: Timing {
            warmup: window / 5,
            window,
        },
        rounds: args.rounds,
        concurrency: args
            .concurrency
            .iter()
            .copied()
            .filter(|&c| c > 0)
            .collect(),
    };
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for backend in &args.backends {
        let result = match backend {
            Backend::Memory => bench.memory(&mut rows).await,
            Backend::Redb => bench.redb(dir, &mut rows).await,
            Backend::Postgres => match &args.postgres_url {
                Some(url) => bench.postgres(url, &mut rows).await,
                None => {
                    eprintln!("postgres: skipped (set SLUICE_POSTGRES_URL or --postgres-url)");
                    Ok(())
                }
            },
            Backend::Redis => match &args.redis_url {
                Some(url) => bench.redis(url, &mut rows).await,
                None => {
                    eprintln!("redis: skipped (set SLUICE_REDIS_URL or --redis-url)");
                    Ok(())
                }
            },
        };
        if let Err(e) = result {
            eprintln!("{backend:?}: failed: {e}");
            failures.push(format!("{backend:?}: {e}"));
        }
    }
    writeln!(
        out,
        "State stores: {KEYS} keys of {VALUE_LEN} bytes; {} s per side of each row, in {} \
         alternating rounds each after a {} ms warm-up; {} cores",
        args.seconds,
        args.rounds,
        bench.timing.share(args.rounds).warmup.as_millis(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(out)?;
    table::write(&rows, out)?;
    writeln!(out)?;
    table::write_targets(&rows, out)?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(BenchError::new(failures.join("; ")).into())
    }
}

/// Loads the workload into `store` with bulk sets.
async fn preload(store: &dyn Store, workload: &Workload) -> Result<(), BenchError> {
    for chunk in workload.keys.chunks(BULK_BATCH) {
        let reqs = chunk
            .iter()
            .map(|k| SetRequest::new(k.as_str(), workload.value.clone()))
            .collect();
        if let Some(e) = store.set_many(reqs).await.into_iter().find_map(Result::err) {
            return Err(BenchError::new(format!("loading the keys: {e}")));
        }
    }
    Ok(())
}

impl Bench {
    /// Measures every operation at every concurrency on both sides and appends the rows.
    async fn compare<D: Client>(
        &self,
        backend: &'static str,
        store: Arc<dyn Store>,
        direct: Arc<D>,
        rows: &mut Vec<Row>,
    ) -> Result<(), BenchError> {
        let transactional = store.features().transactional;
        let sluice = Arc::new(SluiceClient::new(store));
        for op in [Op::Get, Op::Set, Op::Multi] {
            for &concurrency in &self.concurrency {
                eprintln!("{backend}: {} at concurrency {concurrency}", op.label());
                let supported = op != Op::Multi || transactional;
                let timing = self.timing.share(self.rounds);
                let (mut sluice_stats, mut direct_stats) = (None, None);
                for _ in 0..self.rounds {
                    if supported {
                        let round =
                            measure::run(&sluice, &self.workload, op, concurrency, timing).await?;
                        sluice_stats = Some(Stats::merge(sluice_stats, round)?);
                    }
                    let round =
                        measure::run(&direct, &self.workload, op, concurrency, timing).await?;
                    direct_stats = Some(Stats::merge(direct_stats, round)?);
                }
                rows.push(Row {
                    backend,
                    operation: op.label().to_string(),
                    concurrency,
                    sluice: sluice_stats.ok_or_else(|| "not supported".to_string()),
                    direct: direct_stats.ok_or_else(|| "not measured".to_string()),
                });
            }
        }
        Ok(())
    }

    async fn memory(&self, rows: &mut Vec<Row>) -> Result<(), BenchError> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        preload(store.as_ref(), &self.workload).await?;
        let direct = Arc::new(MemoryDirect::default());
        direct.load(&self.workload.keys, &self.workload.value);
        self.compare("memory", store, direct, rows).await
    }

    async fn redb(&self, dir: &Path, rows: &mut Vec<Row>) -> Result<(), BenchError> {
        let sluice_path = dir.join("bench-state-sluice.redb");
        let _ = RedbStore::remove(&sluice_path);
        let store = RedbStore::open(&sluice_path)
            .map_err(|e| BenchError::new(format!("opening {}: {e}", sluice_path.display())))?;
        let store = Arc::new(store);
        let direct = Arc::new(RedbDirect::create(&dir.join("bench-state-direct.redb"))?);
        let result = self.redb_rows(&store, &direct, rows).await;
        let direct_path = direct.path().to_path_buf();
        drop((store, direct));
        let _ = RedbStore::remove(&sluice_path);
        let _ = std::fs::remove_file(&direct_path);
        result
    }

    async fn redb_rows(
        &self,
        store: &Arc<RedbStore>,
        direct: &Arc<RedbDirect>,
        rows: &mut Vec<Row>,
    ) -> Result<(), BenchError> {
        preload(store.as_ref(), &self.workload).await?;
        direct
            .set_many(self.workload.keys.clone().into(), &self.workload.value)
            .await?;
        let dyn_store: Arc<dyn Store> = store.clone();
        self.compare("redb", dyn_store, Arc::clone(direct), rows)
            .await?;

        eprintln!("redb: {BULK_LABEL}");
        let batches: Vec<Arc<[String]>> = self
            .workload
            .keys
            .chunks(BULK_BATCH)
            .map(Arc::from)
            .collect();
        let value: &Bytes = &self.workload.value;
        let pick = |round: u64| Arc::clone(&batches[round as usize % batches.len()]);
        let timing = self.timing.share(self.rounds);
        let (mut sluice, mut direct_stats) = (None, None);
        for _ in 0..self.rounds {
            let round = measure::run_batches(BULK_BATCH, timing, |round| {
                let reqs = pick(round)
                    .iter()
                    .map(|k| SetRequest::new(k.as_str(), value.clone()))
                    .collect();
                async move {
                    match store.set_many(reqs).await.into_iter().find_map(Result::err) {
                        Some(e) => Err(BenchError::new(format!("bulk set: {e}"))),
                        None => Ok(()),
                    }
                }
            })
            .await?;
            sluice = Some(Stats::merge(sluice, round)?);
            let round = measure::run_batches(BULK_BATCH, timing, |round| {
                direct.set_many(pick(round), value)
            })
            .await?;
            direct_stats = Some(Stats::merge(direct_stats, round)?);
        }
        rows.push(Row {
            backend: "redb",
            operation: BULK_LABEL.to_string(),
            concurrency: 1,
            sluice: sluice.ok_or_else(|| "not measured".to_string()),
            direct: direct_stats.ok_or_else(|| "not measured".to_string()),
        });
        Ok(())
    }

    async fn postgres(&self, url: &str, rows: &mut Vec<Row>) -> Result<(), BenchError> {
        let pid = std::process::id();
        let sluice_table = format!("sluice_bench_{pid}_sluice");
        let direct_table = format!("sluice_bench_{pid}_direct");
        let options = |table: &str| PostgresOptions {
            table: table.to_string(),
            sweep_interval: None,
            ..PostgresOptions::default()
        };
        let pool_size = options(&sluice_table).pool_size;
        let connect = |table: String| async move {
            PostgresStore::connect(url, options(&table))
                .await
                .map_err(|e| BenchError::new(format!("connecting for table {table}: {e}")))
        };
        let store = connect(sluice_table.clone()).await?;
        // A second store creates the direct side's table with the backend's own schema.
        drop(connect(direct_table.clone()).await?);
        let direct = Arc::new(PostgresDirect::new(url, &direct_table, pool_size)?);
        let result = async {
            preload(&store, &self.workload).await?;
            direct
                .load(&self.workload.keys, &self.workload.value)
                .await?;
            self.compare("postgres", Arc::new(store), Arc::clone(&direct), rows)
                .await
        }
        .await;
        let dropped = direct.drop_tables(&[&sluice_table, &direct_table]).await;
        result.and(dropped)
    }

    async fn redis(&self, url: &str, rows: &mut Vec<Row>) -> Result<(), BenchError> {
        let pid = std::process::id();
        let sluice_prefix = format!("sluice-bench-{pid}-sluice:");
        let direct_prefix = format!("sluice-bench-{pid}-direct:");
        let options = RedisOptions {
            key_prefix: sluice_prefix.clone(),
            ..RedisOptions::default()
        };
        let store = RedisStore::connect(url, options)
            .await
            .map_err(|e| BenchError::new(format!("connecting: {e}")))?;
        let direct = Arc::new(RedisDirect::connect(url, &direct_prefix).await?);
        let result = async {
            preload(&store, &self.workload).await?;
            direct
                .load(&self.workload.keys, &self.workload.value)
                .await?;
            self.compare("redis", Arc::new(store), Arc::clone(&direct), rows)
                .await
        }
        .await;
        let cleaned = direct
            .delete_prefixes(&[&sluice_prefix, &direct_prefix])
            .await
            .map(drop);
        result.and(cleaned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn quick_bench() -> Bench {
        Bench {
            workload: Arc::new(Workload::new(200, 16)),
            timing: Timing {
                warmup: Duration::from_millis(5),
                window: Duration::from_millis(30),
            },
            rounds: 2,
            concurrency: vec![1, 4],
        }
    }

    #[test]
    fn the_state_flags_parse() {
        let cli = Cli::try_parse_from([
            "sluice",
            "bench",
            "--state",
            "--backend",
            "memory,redb",
            "--seconds",
            "2",
            "--rounds",
            "3",
            "--concurrency",
            "1,8",
            "--postgres-url",
            "postgres://u@127.0.0.1/db",
        ])
        .expect("parse");
        let Command::Bench(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(args.state.state);
        assert_eq!(args.state.backends, vec![Backend::Memory, Backend::Redb]);
        assert_eq!(args.state.seconds, 2);
        assert_eq!(args.state.rounds, 3);
        assert_eq!(args.state.concurrency, vec![1, 8]);
        assert_eq!(
            args.state.postgres_url.as_deref(),
            Some("postgres://u@127.0.0.1/db")
        );
        let cli = Cli::try_parse_from(["sluice", "bench"]).expect("parse");
        let Command::Bench(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(!args.state.state);
        assert_eq!(args.state.backends.len(), 4);
        assert!(Cli::try_parse_from(["sluice", "bench", "--state", "--seconds", "0"]).is_err());
        assert!(Cli::try_parse_from(["sluice", "bench", "--state", "--backend", "etcd"]).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_and_redb_give_a_row_per_operation_and_concurrency_with_both_sides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bench = quick_bench();
        let mut rows = Vec::new();
        bench.memory(&mut rows).await.expect("memory");
        bench.redb(dir.path(), &mut rows).await.expect("redb");
        // 3 operations × 2 concurrencies per backend, plus redb's bulk set.
        assert_eq!(rows.len(), 13);
        for r in &rows {
            let sluice = r.sluice.as_ref().expect("Sluice figures");
            let direct = r.direct.as_ref().expect("direct figures");
            assert!(
                sluice.ops > 0 && direct.ops > 0,
                "{} {}",
                r.backend,
                r.operation
            );
            assert!(r.ratio().is_some());
        }
        let bulk = rows.last().expect("rows");
        assert_eq!(
            (bulk.backend, bulk.operation.as_str()),
            ("redb", BULK_LABEL)
        );
        assert_eq!(
            bulk.sluice.as_ref().expect("bulk").ops % BULK_BATCH as u64,
            0
        );
        // The files are removed afterwards.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);

        let mut out = Vec::new();
        table::write(&rows, &mut out).expect("table");
        table::write_targets(&rows, &mut out).expect("targets");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("| redb |")).count(),
            7
        );
        assert!(
            text.contains("| memory | multi (10 upserts) | 4 |"),
            "{text}"
        );
        assert!(text.contains("- redb gets/s ≥ 200,000"), "{text}");
        assert!(
            text.contains("- redb durable sets/s in batched mode"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_backend_without_its_url_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = StateBenchArgs {
            state: true,
            backends: vec![Backend::Postgres, Backend::Redis],
            seconds: 1,
            rounds: 1,
            concurrency: vec![1],
            postgres_url: None,
            redis_url: None,
        };
        let mut out = Vec::new();
        bench_state(&args, dir.path(), &mut out)
            .await
            .expect("bench");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("| ")).count(),
            1,
            "only the header row: {text}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_the_command_after_the_other_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = StateBenchArgs {
            state: true,
            backends: vec![Backend::Redis],
            seconds: 1,
            rounds: 1,
            concurrency: vec![1],
            postgres_url: None,
            // Port 1 on loopback: nothing listens there.
            redis_url: Some("redis://127.0.0.1:1".to_string()),
        };
        let mut out = Vec::new();
        let err = bench_state(&args, dir.path(), &mut out)
            .await
            .expect_err("unreachable");
        assert!(err.to_string().contains("Redis"), "{err}");
        assert!(!out.is_empty(), "the table is still printed");
    }

    /// The URL in `var`, or `None` after printing why the test is skipped.
    fn service_url(var: &str, test: &str) -> Option<String> {
        let url = std::env::var(var).ok().filter(|u| !u.is_empty());
        if url.is_none() {
            println!("skipping {test}: {var} is not set");
        }
        url
    }

    fn assert_complete(rows: &[Row], backend: &str) {
        assert_eq!(rows.len(), 6, "3 operations × 2 concurrencies");
        for r in rows {
            assert_eq!(r.backend, backend);
            let sluice = r.sluice.as_ref().expect("Sluice figures");
            let direct = r.direct.as_ref().expect("direct figures");
            assert!(sluice.ops > 0 && direct.ops > 0, "{}", r.operation);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_gives_both_sides_and_drops_its_tables() {
        let Some(url) = service_url(
            "SLUICE_TEST_POSTGRES_URL",
            "postgres_gives_both_sides_and_drops_its_tables",
        ) else {
            return;
        };
        let mut rows = Vec::new();
        quick_bench()
            .postgres(&url, &mut rows)
            .await
            .expect("postgres");
        assert_complete(&rows, "postgres");
        let direct = PostgresDirect::new(&url, "unused", 1).expect("pool");
        let pattern = format!("sluice\\_bench\\_{}\\_%", std::process::id());
        let left = direct.relations_like(&pattern).await.expect("count");
        assert_eq!(left, 0, "tables, sequences or indexes left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_gives_both_sides_and_deletes_its_keys() {
        let Some(url) = service_url(
            "SLUICE_TEST_REDIS_URL",
            "redis_gives_both_sides_and_deletes_its_keys",
        ) else {
            return;
        };
        let mut rows = Vec::new();
        quick_bench().redis(&url, &mut rows).await.expect("redis");
        assert_complete(&rows, "redis");
        let prefix = format!("sluice-bench-{}-", std::process::id());
        let direct = RedisDirect::connect(&url, "unused:")
            .await
            .expect("connect");
        assert_eq!(
            direct.delete_prefixes(&[&prefix]).await.expect("scan"),
            0,
            "keys left behind"
        );
    }
}
