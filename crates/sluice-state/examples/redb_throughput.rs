//! A quick throughput check of the redb backend (not a benchmark with a verdict: it prints figures).
//!
//! Run with `cargo run --release -p sluice-state --example redb_throughput`. Measures gets/s
//! (inline reads, sequential and from concurrent tasks, of items with and without a TTL, and — for
//! comparison — the same get behind a `spawn_blocking` round trip), durable single sets/s, durable
//! 10-operation transactions/s, and durable sets/s through `set_many` at a few batch sizes (also
//! with a TTL on every item). The store lives in a temporary directory on the default temp
//! filesystem.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_state::{RedbStore, SetRequest, StateError, Store, TxOperation};

/// Keys written before the read measurements.
const KEYS: usize = 100_000;
/// Bytes per value.
const VALUE_LEN: usize = 64;
/// Gets per read measurement.
const GETS: usize = 1_000_000;
/// Keys written with a TTL (a day) for the TTL measurements.
const TTL_KEYS: usize = 10_000;

fn key(i: usize) -> String {
    format!("bench||key-{i:08}")
}

fn ttl_key(i: usize) -> String {
    format!("bench||ttl-{i:08}")
}

fn rate(ops: usize, took: Duration) -> String {
    format!(
        "{:>12.0} ops/s ({ops} ops in {took:.2?})",
        ops as f64 / took.as_secs_f64()
    )
}

fn first_error(results: Vec<Result<String, StateError>>) -> Result<(), StateError> {
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(RedbStore::open(dir.path().join("state.redb"))?);
    let value = vec![0xAB_u8; VALUE_LEN];
    println!(
        "redb throughput: {KEYS} keys, {VALUE_LEN}-byte values, {} cores, file {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        store.path().display()
    );

    // Durable set_many at a few batch sizes (fresh keys, then overwrites).
    for (round, batch) in [100, 1_000, 10_000].into_iter().enumerate() {
        for (label, offset) in [("insert", (round + 1) * 1_000_000), ("overwrite", 0)] {
            let total = 100_000.max(batch * 5);
            let start = Instant::now();
            for chunk in (0..total).step_by(batch) {
                let reqs = (chunk..chunk + batch)
                    .map(|i| SetRequest::new(key(offset + i % KEYS), value.clone()))
                    .collect();
                first_error(store.set_many(reqs).await)?;
            }
            println!(
                "set_many batch {batch:>6} {label:<9}: {}",
                rate(total, start.elapsed())
            );
        }
    }

    // Durable set_many with a TTL on every item (records carry a deadline, plus the deadline index).
    let day = Duration::from_secs(86_400);
    let batch = 1_000;
    let start = Instant::now();
    for chunk in (0..TTL_KEYS).step_by(batch) {
        let reqs = (chunk..chunk + batch)
            .map(|i| SetRequest::new(ttl_key(i), value.clone()).with_ttl(day))
            .collect();
        first_error(store.set_many(reqs).await)?;
    }
    println!(
        "set_many batch   1000 with TTL : {}",
        rate(TTL_KEYS, start.elapsed())
    );

    // Durable transactions of 10 upserts, one at a time.
    let txs = 200;
    let start = Instant::now();
    for t in 0..txs {
        let ops = (0..10)
            .map(|i| TxOperation::Upsert(SetRequest::new(key(t * 10 + i), value.clone())))
            .collect();
        store.multi(ops).await?;
    }
    println!(
        "multi of 10 upserts, sequential: {} (transactions)",
        rate(txs, start.elapsed())
    );

    // Durable single sets, one at a time.
    let singles = 500;
    let start = Instant::now();
    for i in 0..singles {
        store.set(SetRequest::new(key(i), value.clone())).await?;
    }
    println!(
        "single durable set, sequential : {}",
        rate(singles, start.elapsed())
    );

    // Gets: inline, sequential.
    let start = Instant::now();
    for i in 0..GETS {
        let item = store.get(&key(i * 7 % KEYS)).await?;
        std::hint::black_box(item);
    }
    println!(
        "get inline, 1 task              : {}",
        rate(GETS, start.elapsed())
    );

    // Gets of items with a TTL: the reader checks each deadline against the clock.
    let start = Instant::now();
    for i in 0..GETS {
        let item = store.get(&ttl_key(i * 7 % TTL_KEYS)).await?;
        std::hint::black_box(item);
    }
    println!(
        "get inline of TTL items, 1 task : {}",
        rate(GETS, start.elapsed())
    );

    // Gets: inline, from concurrent tasks.
    for tasks in [2, 4] {
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let store = Arc::clone(&store);
            set.spawn(async move {
                for i in 0..GETS / tasks {
                    let item = store.get(&key((i * 7 + t) % KEYS)).await?;
                    std::hint::black_box(item);
                }
                Ok::<_, StateError>(())
            });
        }
        while let Some(done) = set.join_next().await {
            done??;
        }
        println!(
            "get inline, {tasks} tasks             : {}",
            rate(GETS, start.elapsed())
        );
    }

    // For comparison: the same get behind a spawn_blocking round trip, as a blocking-pool read would be.
    let gets = GETS / 10;
    let start = Instant::now();
    for i in 0..gets {
        let store = Arc::clone(&store);
        let handle = tokio::runtime::Handle::current();
        let item =
            tokio::task::spawn_blocking(move || handle.block_on(store.get(&key(i * 7 % KEYS))))
                .await??;
        std::hint::black_box(item);
    }
    println!(
        "get via spawn_blocking, 1 task  : {}",
        rate(gets, start.elapsed())
    );

    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..4 {
        let store = Arc::clone(&store);
        set.spawn(async move {
            for i in 0..gets / 4 {
                let store = Arc::clone(&store);
                let handle = tokio::runtime::Handle::current();
                let item = tokio::task::spawn_blocking(move || {
                    handle.block_on(store.get(&key((i * 7 + t) % KEYS)))
                })
                .await
                .map_err(|e| StateError::backend("redb", e))??;
                std::hint::black_box(item);
            }
            Ok::<_, StateError>(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    println!(
        "get via spawn_blocking, 4 tasks : {}",
        rate(gets, start.elapsed())
    );
    Ok(())
}
