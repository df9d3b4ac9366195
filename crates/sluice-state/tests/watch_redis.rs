//! The watch conformance scenarios on the Redis backend, and a watcher in one OS process seeing
//! every write of another (this test binary run again as the writer).
//!
//! Needs `SLUICE_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379`); every test prints why it is
//! skipped when it is unset. Each test works under a key prefix of its own, whose keys are
//! deleted at the end even when the test fails.

#![cfg(feature = "redis")]

use sluice_state::{RedisOptions, RedisStore};

#[macro_use]
mod watch_suite;
use watch_suite::service_url;

const URL_VAR: &str = "SLUICE_TEST_REDIS_URL";
/// Set in the child process: the key prefix to write under.
const PEER_PREFIX_VAR: &str = "SLUICE_WATCH_PEER_PREFIX";

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
    let url = service_url(URL_VAR, test)?;
    let prefix = format!("sluice-watch-test:{}:", uuid::Uuid::new_v4().simple());
    let cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    Some((cleanup, connect(&url, &prefix).await))
}

/// The store under `prefix`.
async fn connect(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(url, options(prefix))
        .await
        .expect("connect")
}

watch_suite! {
    fixture: fixture,
    url_var: URL_VAR,
    peer_var: PEER_PREFIX_VAR,
    peer_store: connect,
    peer_name: prefix,
}
