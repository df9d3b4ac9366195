//! Throughput and p99 latency of the Redis backend beside the bare `redis` client doing the same
//! work in the same run (prints figures; no verdict).
//!
//! ```sh
//! SLUICE_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo run --release -p sluice-state --example redis_throughput
//! ```
//!
//! For each operation, at concurrency 1 and 32 (tasks sharing one multiplexed connection, as the
//! store does), it runs the direct client and `RedisStore` for `SLUICE_BENCH_SECS` seconds each
//! (default 2.5), in alternating slices so that outside load falls on both alike:
//!
//! * `get`: the store's `get` (one `HMGET` of value, version and expiry) beside a direct `HGETALL`
//!   of the same hash, and beside the same `HMGET` sent directly;
//! * `set`: a write with an ETag (each task owns one key and passes the ETag of its last write)
//!   beside the store's set script called directly with the same arguments;
//! * `multi`: a 10-upsert transaction beside the store's transaction script called directly.
//!
//! Keys live under a prefix unique to the run and are deleted at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sluice_state::redis_store::scripts;
use sluice_state::{RedisOptions, RedisStore, SetRequest, Store, TxOperation};

/// Bytes per value.
const VALUE_LEN: usize = 100;
/// Operations per transaction.
const TX_OPS: usize = 10;
/// The concurrencies measured.
const CONCURRENCY: [usize; 2] = [1, 32];
/// Each comparison alternates its contenders this many times (each run a `ROUNDS`th of the time),
/// so that load from elsewhere on the machine falls on both alike.
const ROUNDS: u32 = 10;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What one measured run produced.
struct Figures {
    ops: u64,
    took: Duration,
    hist: Histogram<u64>,
}

impl Figures {
    fn empty() -> Result<Self, Error> {
        Ok(Figures {
            ops: 0,
            took: Duration::ZERO,
            hist: Histogram::new(3)?,
        })
    }

    fn add(&mut self, other: Figures) -> Result<(), Error> {
        self.ops += other.ops;
        self.took += other.took;
        self.hist.add(other.hist)?;
        Ok(())
    }

    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.took.as_secs_f64()
    }

    fn p99_us(&self) -> u64 {
        self.hist.value_at_quantile(0.99)
    }
}

/// Everything a task needs to run one operation.
#[derive(Clone)]
struct Ctx {
    store: RedisStore,
    con: ConnectionManager,
    /// The store's namespace: Redis key of item `k` is `prefix + k`; the version counter is
    /// `prefix` itself.
    prefix: String,
    value: Arc<Vec<u8>>,
    set: Arc<Script>,
    multi: Arc<Script>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    StoreGet,
    DirectHgetall,
    DirectHmget,
    StoreSet,
    DirectSetScript,
    StoreMulti,
    DirectMultiScript,
}

fn item_key(task: usize, i: usize) -> String {
    format!("bench||t{task:03}-{i:02}")
}

/// Runs `op` from `tasks` concurrent tasks for `secs`; each task loops until the deadline.
async fn measure(ctx: &Ctx, op: Op, tasks: usize, secs: Duration) -> Result<Figures, Error> {
    let start = Instant::now();
    let deadline = start + secs;
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let ctx = ctx.clone();
        set.spawn(async move { run_task(ctx, op, task, deadline).await });
    }
    let mut ops = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    while let Some(joined) = set.join_next().await {
        let (n, h) = joined??;
        ops += n;
        hist.add(h)?;
    }
    Ok(Figures {
        ops,
        took: start.elapsed(),
        hist,
    })
}

async fn run_task(
    ctx: Ctx,
    op: Op,
    task: usize,
    deadline: Instant,
) -> Result<(u64, Histogram<u64>), Error> {
    let mut hist = Histogram::<u64>::new(3)?;
    let mut con = ctx.con.clone();
    let own = item_key(task, 0);
    let own_redis = format!("{}{own}", ctx.prefix);
    let tx_keys: Vec<String> = (0..TX_OPS).map(|i| item_key(task, i)).collect();
    let tx_redis: Vec<String> = tx_keys
        .iter()
        .map(|k| format!("{}{k}", ctx.prefix))
        .collect();
    // The ETag of this task's last write of its own key.
    let mut etag = ctx
        .store
        .set(SetRequest::new(&own, ctx.value.to_vec()))
        .await?;
    let mut ops = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        match op {
            Op::StoreGet => {
                let item = ctx.store.get(&own).await?;
                if item.is_none() {
                    return Err("a bench key is missing".into());
                }
            }
            Op::DirectHgetall => {
                let fields: Vec<Vec<u8>> = con.hgetall(&own_redis).await?;
                if fields.is_empty() {
                    return Err("a bench key is missing".into());
                }
            }
            Op::DirectHmget => {
                let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                    .arg(&own_redis)
                    .arg(&scripts::FIELDS[..])
                    .query_async(&mut con)
                    .await?;
                if fields.first().is_none_or(Option::is_none) {
                    return Err("a bench key is missing".into());
                }
            }
            Op::StoreSet => {
                etag = ctx
                    .store
                    .set(SetRequest::new(&own, ctx.value.to_vec()).with_etag(&etag))
                    .await?;
            }
            Op::DirectSetScript => {
                let mut call = ctx.set.prepare_invoke();
                for aux in scripts::aux_keys(&ctx.prefix) {
                    call.key(aux);
                }
                let version: i64 = call
                    .key(&own_redis)
                    .arg(ctx.value.as_slice())
                    .arg(&etag)
                    .arg("")
                    .arg("")
                    .invoke_async(&mut con)
                    .await?;
                if version == scripts::CHECK_FAILED {
                    return Err("the direct set script met an ETag mismatch".into());
                }
                etag = version.to_string();
            }
            Op::StoreMulti => {
                let tx = tx_keys
                    .iter()
                    .map(|k| TxOperation::Upsert(SetRequest::new(k, ctx.value.to_vec())))
                    .collect();
                ctx.store.multi(tx).await?;
            }
            Op::DirectMultiScript => {
                let mut call = ctx.multi.prepare_invoke();
                for aux in scripts::aux_keys(&ctx.prefix) {
                    call.key(aux);
                }
                for k in &tx_redis {
                    call.key(k);
                }
                for _ in 0..TX_OPS {
                    call.arg("s")
                        .arg("")
                        .arg("")
                        .arg(ctx.value.as_slice())
                        .arg("");
                }
                let applied: i64 = call.invoke_async(&mut con).await?;
                if applied != scripts::TX_APPLIED {
                    return Err("the direct transaction script failed a check".into());
                }
            }
        }
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        ops += 1;
    }
    Ok((ops, hist))
}

fn row(what: &str, conc: usize, f: &Figures, base: Option<&Figures>) {
    let share = base
        .map(|b| format!("{:>6.1} %", 100.0 * f.per_sec() / b.per_sec()))
        .unwrap_or_else(|| "       ".into());
    println!(
        "| {what:<38} | {conc:>4} | {:>10.0} | {:>8} | {share} |",
        f.per_sec(),
        f.p99_us()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Error> {
    let Ok(url) = std::env::var("SLUICE_TEST_REDIS_URL") else {
        println!("set SLUICE_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379) to run this benchmark");
        return Ok(());
    };
    let secs = Duration::from_secs_f64(
        std::env::var("SLUICE_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.5),
    );
    let prefix = format!("sluice-bench:{}:", std::process::id());
    let store = RedisStore::connect(
        &url,
        RedisOptions {
            key_prefix: prefix.clone(),
            ..RedisOptions::default()
        },
    )
    .await?;
    let con = ConnectionManager::new(redis::Client::open(url.as_str())?).await?;
    let ctx = Ctx {
        store: store.clone(),
        con,
        prefix: prefix.clone(),
        value: Arc::new((0..VALUE_LEN).map(|i| (i % 251) as u8).collect()),
        set: Arc::new(Script::new(scripts::SET_LUA)),
        multi: Arc::new(Script::new(scripts::MULTI_LUA)),
    };
    let result = run_all(&ctx, secs).await;
    // Clean up whatever happened: every item, then the version counter.
    let deleted = store.delete_with_prefix("bench||").await?;
    let mut con = ctx.con.clone();
    con.del::<_, ()>(&prefix).await?;
    println!("\n(deleted {deleted} bench keys)");
    result
}

async fn run_all(ctx: &Ctx, secs: Duration) -> Result<(), Error> {
    let workers = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Redis backend vs the bare redis client, {VALUE_LEN}-byte values, {secs:?} per run, \
         {workers} CPU(s) shared with the server\n"
    );
    println!(
        "| operation                              | conc |      ops/s | p99 (µs) | vs direct |"
    );
    println!(
        "|----------------------------------------|-----:|-----------:|---------:|----------:|"
    );
    // Warm up connections, script caches and the runtime.
    measure(ctx, Op::StoreSet, 4, Duration::from_millis(300)).await?;
    let pairs = [
        (
            "get",
            Op::DirectHgetall,
            Some(Op::DirectHmget),
            Op::StoreGet,
        ),
        ("set with ETag", Op::DirectSetScript, None, Op::StoreSet),
        (
            "multi (10 upserts)",
            Op::DirectMultiScript,
            None,
            Op::StoreMulti,
        ),
    ];
    for (name, direct, also, sluice) in pairs {
        for conc in CONCURRENCY {
            let contenders: Vec<Op> = [Some(direct), also, Some(sluice)]
                .into_iter()
                .flatten()
                .collect();
            let mut figures = Vec::new();
            for _ in &contenders {
                figures.push(Figures::empty()?);
            }
            for _ in 0..ROUNDS {
                for (op, total) in contenders.iter().zip(figures.iter_mut()) {
                    total.add(measure(ctx, *op, conc, secs / ROUNDS).await?)?;
                }
            }
            let base = &figures[0];
            for (op, f) in contenders.iter().zip(&figures) {
                if *op == sluice {
                    row(&format!("{name}: RedisStore"), conc, f, Some(base));
                } else {
                    row(&format!("{name}: direct {}", label(*op)), conc, f, None);
                }
            }
        }
    }
    Ok(())
}

fn label(op: Op) -> &'static str {
    match op {
        Op::DirectHgetall => "HGETALL",
        Op::DirectHmget => "HMGET",
        Op::DirectSetScript => "set script",
        Op::DirectMultiScript => "tx script",
        _ => "",
    }
}
