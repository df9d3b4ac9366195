//! Watch delivery on the memory (and optionally redb) backend: events/s to 1 and 100 watchers
//! and write→event latency. `cargo run --release -p sluice-state --example watch_throughput
//! [events] [memory|redb] [one]`.

use std::sync::Arc;

use sluice_state::watch::bench::{run_with, BenchOptions};
use sluice_state::watch::Retention;
use sluice_state::{MemoryStore, RedbStore, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500_000);
    let redb = std::env::args().nth(2).is_some_and(|a| a == "redb");
    let dir = tempfile::tempdir()?;
    let counts: Vec<usize> = match std::env::args().nth(3).as_deref() {
        Some("one") => vec![1],
        _ => vec![1, 100],
    };
    for watchers in counts {
        let store: Arc<dyn Store> = if redb {
            Arc::new(RedbStore::open(
                dir.path().join(format!("w{watchers}.redb")),
            )?)
        } else {
            Arc::new(MemoryStore::with_retention(Retention::default()))
        };
        let per = if watchers == 1 { events } else { events / 10 };
        let f = run_with(
            store,
            BenchOptions {
                watchers,
                events: per,
                ..BenchOptions::default()
            },
        )
        .await?;
        println!(
            "{:<6} watchers={:<4} events/watcher={:<8} total events/s={:>12.0} per watcher={:>12.0} p50={:?} p99={:?} compacted={}",
            f.backend,
            f.watchers,
            f.events,
            f.events_per_sec,
            f.events_per_sec_per_watcher,
            f.latency_p50,
            f.latency_p99,
            f.compacted
        );
    }
    Ok(())
}
