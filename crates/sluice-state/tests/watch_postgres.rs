//! The watch conformance scenarios on the PostgreSQL backend, and a watcher in one OS process
//! seeing every write of another (this test binary run again as the writer).
//!
//! Needs `SLUICE_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); every test
//! prints why it is skipped when it is unset. Each test works in a schema of its own
//! (`sluice_watch_<random>`), dropped at the end even when the test fails.

#![cfg(feature = "postgres")]

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use sluice_state::conformance::watch;
use sluice_state::{PostgresOptions, PostgresStore, SetRequest, Store};

const URL_VAR: &str = "SLUICE_TEST_POSTGRES_URL";
/// Set in the child process: the schema to write into.
const PEER_SCHEMA_VAR: &str = "SLUICE_WATCH_PEER_SCHEMA";

fn url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipping {test}: {URL_VAR} is not set");
            None
        }
    }
}

/// A schema name no other run uses.
fn unique_schema() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let random = RandomState::new().hash_one((std::process::id(), n, nanos));
    format!("sluice_watch_{random:016x}")
}

fn options(schema: &str) -> PostgresOptions {
    PostgresOptions {
        table: "state".to_string(),
        schema: Some(schema.to_string()),
        ..PostgresOptions::default()
    }
}

/// Drops the schema (and everything the store created in it) when dropped.
struct Cleanup {
    url: String,
    schema: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        // A runtime of its own: the test's may be gone or unwinding.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    if let Err(e) = client.batch_execute(&sql).await {
                        eprintln!("could not drop the test schema: {e:?}");
                    }
                }
            })
        })
        .join();
    }
}

async fn fixture(test: &str) -> Option<(Cleanup, PostgresStore)> {
    let url = url(test)?;
    let schema = unique_schema();
    let cleanup = Cleanup {
        url: url.clone(),
        schema: schema.clone(),
    };
    let store = PostgresStore::connect(&url, options(&schema))
        .await
        .expect("connect");
    Some((cleanup, store))
}

macro_rules! scenario {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((_cleanup, store)) = fixture(stringify!($name)).await else {
                return;
            };
            watch::$name(Arc::new(store)).await;
        }
    };
}

scenario!(ordered_without_gaps);
scenario!(resume_from_revision);
scenario!(stalled_watcher);
scenario!(done_timeout);
scenario!(resync_after_compaction);
scenario!(overlapping_prefixes);
scenario!(prefix_changes_and_close);
scenario!(delete_with_prefix);
scenario!(ttl_expiry);
scenario!(session_expiry);
scenario!(aggregation);

/// The writer half of [`a_second_process_sees_every_write_in_order`]: does nothing unless the
/// parent started this binary with the schema to write under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_writer() {
    let Ok(schema) = std::env::var(PEER_SCHEMA_VAR) else {
        return;
    };
    let url = std::env::var(URL_VAR).expect("the parent passes the URL");
    let store = PostgresStore::connect(&url, options(&schema))
        .await
        .expect("connect");
    watch::peer_writes(&store).await;
}

/// One OS process writes, this one watches: every write arrives, in order, with no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_sees_every_write_in_order() {
    let Some((cleanup, store)) = fixture("a_second_process_sees_every_write_in_order").await else {
        return;
    };
    let writer = watch::peer_writer_command("peer_writer", (PEER_SCHEMA_VAR, &cleanup.schema));
    watch::second_process_sees_every_write(Arc::new(store), move || {
        let mut writer = writer;
        writer.spawn().expect("spawn the writer process")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_calls_answer() {
    let Some((_cleanup, store)) = fixture("feed_calls_answer").await else {
        return;
    };
    let feed = store.change_feed().expect("feed");
    store.set(SetRequest::new("a/1", "x")).await.expect("set");
    let rev = feed.current_revision().await.expect("revision");
    assert!(rev >= 1);
    let snap = feed.snapshot(&["a/".to_string()]).await.expect("snapshot");
    assert_eq!(snap.entries.len(), 1);
    let page = feed.changes_after(0, 10).await.expect("changes");
    println!("{page:?}");
}
