//! The watch conformance scenarios on the PostgreSQL backend, and a watcher in one OS process
//! seeing every write of another (this test binary run again as the writer).
//!
//! Needs `SLUICE_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); every test
//! prints why it is skipped when it is unset. Each test works in a schema of its own
//! (`sluice_watch_<random>`), dropped at the end even when the test fails.

#![cfg(feature = "postgres")]

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sluice_state::{PostgresOptions, PostgresStore, SetRequest, Store};

#[macro_use]
mod watch_suite;
use watch_suite::service_url;

const URL_VAR: &str = "SLUICE_TEST_POSTGRES_URL";
/// Set in the child process: the schema to write into.
const PEER_SCHEMA_VAR: &str = "SLUICE_WATCH_PEER_SCHEMA";

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
    let url = service_url(URL_VAR, test)?;
    let schema = unique_schema();
    let cleanup = Cleanup {
        url: url.clone(),
        schema: schema.clone(),
    };
    Some((cleanup, connect(&url, &schema).await))
}

/// The store over `schema`.
async fn connect(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::connect(url, options(schema))
        .await
        .expect("connect")
}

watch_suite! {
    fixture: fixture,
    url_var: URL_VAR,
    peer_var: PEER_SCHEMA_VAR,
    peer_store: connect,
    peer_name: schema,
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
