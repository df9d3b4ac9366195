//! Watch delivery across processes' transports — PostgreSQL and Redis: events/s to 1 and 100
//! watchers (the core's [`sluice_state::watch::bench`]) and write→event latency p50 / p99 at a
//! paced 1,000 writes/s (each write its own task, so the rate holds whatever one commit costs).
//!
//! ```sh
//! SLUICE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! SLUICE_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo run --release -p sluice-state --example watch_remote [events] [seconds]
//! ```
//!
//! A backend whose URL is unset is skipped. The PostgreSQL store lives in a fresh schema and the
//! Redis store under a fresh key prefix, both removed at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_state::watch::bench::{run_with, BenchOptions};
use sluice_state::watch::{watch, WatchEvent, WatchOptions};
use sluice_state::{PostgresOptions, PostgresStore, RedisOptions, RedisStore, SetRequest, Store};

/// Writes per second in the latency phase.
const RATE: u64 = 1_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let seconds: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    if let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES_URL") {
        let schema = format!("sluice_watch_bench_{}", &tag[..12]);
        let options = PostgresOptions {
            table: "state".into(),
            schema: Some(schema.clone()),
            pool_size: 32,
            ..PostgresOptions::default()
        };
        let store = PostgresStore::connect(&url, options).await?;
        let result = measure(Arc::new(store), events, seconds).await;
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await?;
        result?;
    } else {
        println!("postgres: skipped (SLUICE_TEST_POSTGRES_URL unset)");
    }
    if let Ok(url) = std::env::var("SLUICE_TEST_REDIS_URL") {
        let options = RedisOptions {
            key_prefix: format!("sluice-watch-bench-{tag}:"),
            ..RedisOptions::default()
        };
        let store = RedisStore::connect(&url, options).await?;
        let prefix = store.key_prefix().to_string();
        let result = measure(Arc::new(store), events, seconds).await;
        let client = redis::Client::open(url.as_str())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut con)
            .await?;
        for chunk in keys.chunks(500) {
            let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut con).await?;
        }
        result?;
    } else {
        println!("redis: skipped (SLUICE_TEST_REDIS_URL unset)");
    }
    Ok(())
}

async fn measure(
    store: Arc<dyn Store>,
    events: usize,
    seconds: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let backend = store.name();
    for watchers in [1usize, 100] {
        let per = if watchers == 1 { events } else { events / 10 };
        let f = run_with(
            Arc::clone(&store),
            BenchOptions {
                watchers,
                events: per,
                latency_samples: 0,
                ..BenchOptions::default()
            },
        )
        .await?;
        println!(
            "{backend}: {watchers} watcher(s): {} events each in {:.2} s: {:.0} events/s delivered \
             ({:.0}/s per watcher), compactions {}",
            f.events,
            f.elapsed.as_secs_f64(),
            f.events_per_sec,
            f.events_per_sec_per_watcher,
            f.compacted
        );
    }
    let (p50, p99, n, achieved) = latency(store, seconds).await?;
    println!(
        "{backend}: write→event latency at {RATE} writes/s ({achieved:.0} achieved, {n} samples): \
         p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Paced writes, each spawned at its tick and stamped with its send time; one watcher.
async fn latency(
    store: Arc<dyn Store>,
    seconds: u64,
) -> Result<(Duration, Duration, u64, f64), Box<dyn std::error::Error>> {
    let feed = store.change_feed().ok_or("no change feed")?;
    let prefix = format!("bench/latency/{}/", uuid::Uuid::new_v4().simple());
    let mut reg = watch(
        feed,
        "latency",
        vec![prefix.clone()],
        None,
        WatchOptions::default().with_queue(4096),
    );
    if let Some(e) = reg.next().await {
        e.ack();
    }
    let total = RATE * seconds;
    let base = Instant::now();
    let watcher = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).ok();
        let mut seen = 0;
        while seen < total {
            let Some(event) = reg.next().await else { break };
            if let WatchEvent::Change { value, done, .. } = event {
                done.ok();
                seen += 1;
                let sent = value
                    .as_deref()
                    .and_then(|v| v.get(..8))
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_le_bytes);
                if let (Some(sent), Some(h)) = (sent, hist.as_mut()) {
                    let now = base.elapsed().as_nanos() as u64;
                    let _ = h.record(now.saturating_sub(sent).max(1));
                }
            } else {
                event.ack();
            }
        }
        hist
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for k in 0..total {
        tick.tick().await;
        let store = Arc::clone(&store);
        let key = format!("{prefix}{k}");
        writers.spawn(async move {
            let mut v = (base.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
            v.resize(16, b'x');
            store.set(SetRequest::new(key, v)).await
        });
        while let Some(done) = writers.try_join_next() {
            done??;
        }
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let hist = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await??
        .ok_or("histogram")?;
    Ok((
        Duration::from_nanos(hist.value_at_quantile(0.5)),
        Duration::from_nanos(hist.value_at_quantile(0.99)),
        hist.len(),
        achieved,
    ))
}
