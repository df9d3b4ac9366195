//! The watch conformance scenarios on the Redis backend, and a watcher in one OS process seeing
//! every write of another (this test binary run again as the writer).
//!
//! Needs `SLUICE_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379`); every test prints why it is
//! skipped when it is unset. Each test works under a key prefix of its own, whose keys are
//! deleted at the end even when the test fails.

#![cfg(feature = "redis")]

use std::sync::Arc;

use sluice_state::conformance::watch;
use sluice_state::{RedisOptions, RedisStore};

const URL_VAR: &str = "SLUICE_TEST_REDIS_URL";
/// Set in the child process: the key prefix to write under.
const PEER_PREFIX_VAR: &str = "SLUICE_WATCH_PEER_PREFIX";

fn url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipping {test}: {URL_VAR} is not set");
            None
        }
    }
}

fn options(prefix: &str) -> RedisOptions {
    RedisOptions {
        key_prefix: prefix.to_string(),
        ..RedisOptions::default()
    }
}

/// Deletes every key under the prefix when dropped.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut con) = client.get_connection() else {
            eprintln!("could not clean up keys under {:?}", self.prefix);
            return;
        };
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut con)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut con);
        }
    }
}

async fn fixture(test: &str) -> Option<(Cleanup, RedisStore)> {
    let url = url(test)?;
    let prefix = format!("sluice-watch-test:{}:", uuid::Uuid::new_v4().simple());
    let cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let store = RedisStore::connect(&url, options(&prefix))
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
/// parent started this binary with the prefix to write under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_writer() {
    let Ok(prefix) = std::env::var(PEER_PREFIX_VAR) else {
        return;
    };
    let url = std::env::var(URL_VAR).expect("the parent passes the URL");
    let store = RedisStore::connect(&url, options(&prefix))
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
    let writer = watch::peer_writer_command("peer_writer", (PEER_PREFIX_VAR, &cleanup.prefix));
    watch::second_process_sees_every_write(Arc::new(store), move || {
        let mut writer = writer;
        writer.spawn().expect("spawn the writer process")
    })
    .await;
}
