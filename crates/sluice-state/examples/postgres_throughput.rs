//! Throughput and p99 latency of the PostgreSQL backend beside the same statements run directly
//! with tokio-postgres, in the same run (prints figures; no verdict).
//!
//! ```sh
//! SLUICE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p sluice-state --example postgres_throughput
//! ```
//!
//! For each operation — `get`, `set` (last-write upsert) and a 10-operation `multi` (ten
//! upserts in one transaction) — at concurrency 1 and 32, it runs the direct client and
//! `PostgresStore` alternately, six times each for `BENCH_SECS` seconds (default 0.5), and
//! prints for each: operations per second, p99 latency, client-side CPU time per operation
//! (this process: benchmark, tokio, client library and Sluice; not the server's), and Sluice's
//! throughput as a percentage of the direct client's.
//!
//! The direct client runs the statements `PostgresStore` runs (same SQL, prepared once per
//! connection; the ten upserts of a transaction pipelined, as the store does), one connection
//! per task; the store gets a pool of as many connections. Each writing task writes keys of its
//! own, so writers never wait on each other's row locks. Values are 80-byte JSON objects (stored
//! in `value` and, for queries, `value_json`).
//!
//! The table (`sluice_state_bench_<random>`) is dropped at the end.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;
use sluice_state::{PostgresOptions, PostgresStore, SetRequest, Store, TxOperation};
use tokio_postgres::{Client, NoTls, Statement};

/// Keys read by `get` (written before the measurements).
const READ_KEYS: usize = 1_000;
/// Operations in one `multi`.
const MULTI_OPS: usize = 10;
/// The concurrency levels measured.
const CONCURRENCY: [usize; 2] = [1, 32];
/// Timed runs per client and figure.
const ROUNDS: usize = 6;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A statement on its way, borrowing the connection.
type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A tiny xorshift generator: key choice needs no quality, only speed and no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn read_key(i: usize) -> String {
    format!("bench||read||{i:05}")
}

fn write_key(task: usize, i: usize) -> String {
    format!("bench||write||{task:03}||{i:02}")
}

/// An 80-byte JSON object.
fn value(i: usize) -> Vec<u8> {
    format!("{{\"n\":\"{i:010}\",\"pad\":\"{}\"}}", "x".repeat(54)).into_bytes()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Set,
    Multi,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Multi => "multi(10)",
        }
    }
}

/// The statements `PostgresStore` runs for these operations (see `src/postgres/sql.rs`).
struct DirectSql {
    get: String,
    upsert: String,
}

impl DirectSql {
    fn new(table: &str) -> Self {
        let t = format!("\"{table}\"");
        let seq = format!("\"{table}_version_seq\"");
        DirectSql {
            get: format!(
                "SELECT value, version, expires_at FROM {t} WHERE key = $1 \
                 AND (expires_at IS NULL OR expires_at > now())"
            ),
            upsert: format!(
                "INSERT INTO {t} AS s (key, value, value_json, version, expires_at, updated_at) \
                 VALUES ($1, $2, $3, nextval('{seq}'), CASE WHEN $4::bigint IS NULL THEN NULL \
                 ELSE LEAST(now() + $4::bigint * interval '1 millisecond', \
                 to_timestamp(253402300799999::numeric / 1000)) END, now()) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                 value_json = EXCLUDED.value_json, version = EXCLUDED.version, \
                 expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at \
                 RETURNING version"
            ),
        }
    }
}

/// One direct connection with its prepared statements.
struct Direct {
    client: Client,
    get: Statement,
    upsert: Statement,
}

impl Direct {
    async fn connect(url: &str, sql: &DirectSql) -> Result<Self, BoxError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        let get = client.prepare(&sql.get).await?;
        let upsert = client.prepare(&sql.upsert).await?;
        Ok(Direct {
            client,
            get,
            upsert,
        })
    }

    async fn run(
        &mut self,
        op: Op,
        keys: &[String],
        values: &[(Vec<u8>, Value)],
    ) -> Result<(), BoxError> {
        let ttl: Option<i64> = None;
        match op {
            Op::Get => {
                let row = self.client.query_opt(&self.get, &[&keys[0]]).await?;
                let row = row.ok_or("a read key is missing")?;
                let _value: Vec<u8> = row.try_get(0)?;
                let _version: i64 = row.try_get(1)?;
                let _expires: Option<std::time::SystemTime> = row.try_get(2)?;
            }
            Op::Set => {
                let (raw, json) = &values[0];
                let row = self
                    .client
                    .query_one(&self.upsert, &[&keys[0], &raw.as_slice(), json, &ttl])
                    .await?;
                let _version: i64 = row.try_get(0)?;
            }
            Op::Multi => {
                let tx = self.client.transaction().await?;
                let upsert = &self.upsert;
                let futures: Vec<Pending<'_, Result<i64, tokio_postgres::Error>>> = keys
                    .iter()
                    .zip(values)
                    .map(|(key, (raw, json))| {
                        let tx = &tx;
                        Box::pin(async move {
                            let row = tx
                                .query_one(upsert, &[key, &raw.as_slice(), json, &ttl])
                                .await?;
                            row.try_get::<_, i64>(0)
                        }) as Pending<'_, _>
                    })
                    .collect();
                for result in join_in_order(futures).await {
                    result?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// Polls every future once (sending each statement, in order), then waits for them in order.
async fn join_in_order<T>(mut futures: Vec<Pending<'_, T>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut started = false;
    let mut next = 0;
    std::future::poll_fn(|cx| {
        if !started {
            started = true;
            for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *o = Some(v);
                }
            }
        }
        while next < futures.len() {
            if out[next].is_none() {
                match futures[next].as_mut().poll(cx) {
                    Poll::Ready(v) => out[next] = Some(v),
                    Poll::Pending => return Poll::Pending,
                }
            }
            next += 1;
        }
        Poll::Ready(())
    })
    .await;
    out.into_iter().flatten().collect()
}

/// One operation through the store.
async fn run_sluice(
    store: &dyn Store,
    op: Op,
    keys: &[String],
    values: &[(Vec<u8>, Value)],
) -> Result<(), BoxError> {
    match op {
        Op::Get => {
            store.get(&keys[0]).await?.ok_or("a read key is missing")?;
        }
        Op::Set => {
            store
                .set(SetRequest::new(&keys[0], values[0].0.clone()))
                .await?;
        }
        Op::Multi => {
            let ops = keys
                .iter()
                .zip(values)
                .map(|(k, (raw, _))| TxOperation::Upsert(SetRequest::new(k, raw.clone())))
                .collect();
            store.multi(ops).await?;
        }
    }
    Ok(())
}

/// What one timed run measured.
struct Figures {
    ops: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    /// CPU time this process (client side: the benchmark, tokio, the client library and Sluice)
    /// spent during the run; the server's is not included.
    cpu: Duration,
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (Linux; zero
/// elsewhere). Resolution: one clock tick (10 ms); runs add up to seconds.
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Figures {
    fn merge(&mut self, other: &Figures) -> Result<(), BoxError> {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
        self.latency_us.add(&other.latency_us)?;
        Ok(())
    }

    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    }
}

/// Figures with nothing measured yet.
fn empty() -> Result<Figures, BoxError> {
    Ok(Figures {
        ops: 0,
        elapsed: Duration::ZERO,
        latency_us: histogram()?,
        cpu: Duration::ZERO,
    })
}

fn histogram() -> Result<Histogram<u64>, BoxError> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Inputs of one operation by task `task`: the keys and values it touches.
fn inputs(
    op: Op,
    task: usize,
    rng: &mut Rng,
    values: &[(Vec<u8>, Value)],
) -> (Vec<String>, Vec<(Vec<u8>, Value)>) {
    match op {
        Op::Get => (vec![read_key(rng.below(READ_KEYS))], Vec::new()),
        Op::Set => {
            let i = rng.below(MULTI_OPS);
            (vec![write_key(task, i)], vec![values[i].clone()])
        }
        Op::Multi => (
            (0..MULTI_OPS).map(|i| write_key(task, i)).collect(),
            values[..MULTI_OPS].to_vec(),
        ),
    }
}

/// Runs `op` from `concurrency` tasks for `secs`, through the store or direct connections.
async fn measure(
    op: Op,
    concurrency: usize,
    secs: Duration,
    store: Option<Arc<dyn Store>>,
    directs: &mut Vec<Direct>,
    values: &Arc<Vec<(Vec<u8>, Value)>>,
) -> Result<Figures, BoxError> {
    let start = Instant::now();
    let cpu_before = process_cpu();
    let deadline = start + secs;
    let mut tasks = tokio::task::JoinSet::new();
    let mut taken: Vec<Direct> = Vec::new();
    if store.is_none() {
        taken = directs.drain(..concurrency).collect();
    }
    let mut taken = taken.into_iter();
    for task in 0..concurrency {
        let store = store.clone();
        let mut direct = taken.next();
        let values = Arc::clone(values);
        tasks.spawn(async move {
            let mut rng = Rng::new(RandomState::new().hash_one(task));
            let mut hist = histogram()?;
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let (keys, vals) = inputs(op, task, &mut rng, &values);
                let t0 = Instant::now();
                match (&store, direct.as_mut()) {
                    (Some(store), _) => run_sluice(store.as_ref(), op, &keys, &vals).await?,
                    (None, Some(d)) => d.run(op, &keys, &vals).await?,
                    (None, None) => return Err::<_, BoxError>("no client for a task".into()),
                }
                let us = u64::try_from(t0.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                hist.saturating_record(us);
                ops += 1;
            }
            Ok((ops, hist, direct))
        });
    }
    let mut figures = empty()?;
    while let Some(joined) = tasks.join_next().await {
        let (ops, hist, direct) = joined??;
        figures.ops += ops;
        figures.latency_us.add(&hist)?;
        directs.extend(direct);
    }
    figures.elapsed = start.elapsed();
    figures.cpu = process_cpu().saturating_sub(cpu_before);
    Ok(figures)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
        println!("SLUICE_TEST_POSTGRES_URL is not set: nothing to measure");
        return Ok(());
    };
    let secs = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(Duration::from_millis(500), Duration::from_secs_f64);
    let max_concurrency = CONCURRENCY.iter().copied().max().unwrap_or(1);
    let table = format!(
        "sluice_state_bench_{:016x}",
        RandomState::new().hash_one(std::process::id())
    );
    let options = PostgresOptions {
        table: table.clone(),
        pool_size: max_concurrency,
        sweep_interval: None,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect(&url, options).await?;
    let result = bench(&url, &table, store, secs, max_concurrency).await;
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS \"{table}\"; DROP TABLE IF EXISTS \"{table}_migrations\"; \
             DROP SEQUENCE IF EXISTS \"{table}_version_seq\";"
        ))
        .await?;
    result
}

async fn bench(
    url: &str,
    table: &str,
    store: PostgresStore,
    secs: Duration,
    max_concurrency: usize,
) -> Result<(), BoxError> {
    let sql = DirectSql::new(table);
    let mut directs = Vec::new();
    for _ in 0..max_concurrency {
        directs.push(Direct::connect(url, &sql).await?);
    }
    let version: String = directs[0]
        .client
        .query_one("SELECT version()", &[])
        .await?
        .try_get(0)?;
    let values: Arc<Vec<(Vec<u8>, Value)>> = Arc::new(
        (0..MULTI_OPS)
            .map(|i| {
                let raw = value(i);
                let json = serde_json::from_slice(&raw)?;
                Ok((raw, json))
            })
            .collect::<Result<_, serde_json::Error>>()?,
    );
    for result in store
        .set_many(
            (0..READ_KEYS)
                .map(|i| SetRequest::new(read_key(i), value(i)))
                .collect(),
        )
        .await
    {
        result?;
    }
    let store: Arc<dyn Store> = Arc::new(store);
    println!(
        "PostgreSQL state store vs tokio-postgres, {} cores, {ROUNDS} × {:.1} s per figure; {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        secs.as_secs_f64(),
        version.split(" on ").next().unwrap_or(&version)
    );
    println!(
        "{:<10} {:>5} {:>13} {:>8} {:>9} {:>13} {:>8} {:>9} {:>9}",
        "operation",
        "tasks",
        "direct ops/s",
        "p99 ms",
        "cpu µs/op",
        "sluice ops/s",
        "p99 ms",
        "cpu µs/op",
        "sluice %"
    );
    for op in [Op::Get, Op::Set, Op::Multi] {
        for concurrency in CONCURRENCY {
            // Warm up both (statement caches, pool), then alternate to spread any drift.
            measure(
                op,
                concurrency,
                Duration::from_millis(200),
                None,
                &mut directs,
                &values,
            )
            .await?;
            measure(
                op,
                concurrency,
                Duration::from_millis(200),
                Some(Arc::clone(&store)),
                &mut directs,
                &values,
            )
            .await?;
            let mut direct = empty()?;
            let mut sluice = empty()?;
            for round in 0..ROUNDS {
                // Alternate which goes first, so that drift (other load on the machine) hits
                // both alike.
                for sluice_turn in [round % 2 == 1, round % 2 == 0] {
                    if sluice_turn {
                        let store = Some(Arc::clone(&store));
                        sluice.merge(
                            &measure(op, concurrency, secs, store, &mut directs, &values).await?,
                        )?;
                    } else {
                        direct.merge(
                            &measure(op, concurrency, secs, None, &mut directs, &values).await?,
                        )?;
                    }
                }
            }
            println!(
                "{:<10} {:>5} {:>13.0} {:>8.2} {:>9.1} {:>13.0} {:>8.2} {:>9.1} {:>8.1}%",
                op.name(),
                concurrency,
                direct.per_second(),
                direct.p99_ms(),
                direct.cpu_us_per_op(),
                sluice.per_second(),
                sluice.p99_ms(),
                sluice.cpu_us_per_op(),
                100.0 * sluice.per_second() / direct.per_second()
            );
        }
    }
    Ok(())
}
