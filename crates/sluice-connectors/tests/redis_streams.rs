//! Integration tests of the `redis` connector against a real Redis server
//! (`SLUICE_TEST_REDIS_URL`, e.g. `redis://127.0.0.1:6379`; skipped with a message when unset).
//!
//! Every test uses its own stream keys (deleted when it ends).
//!
//! Why a connection drop and not a server restart: the local Redis runs without persistence
//! (`--save "" --appendonly no`), so a restart loses every stream — nothing a connector can make
//! good. What a connector must survive is its connection going away mid-stream, which
//! `CLIENT KILL ID` does to the source's connection alone, without disturbing anyone else's
//! (so that test runs always, unlike the NATS broker restart).
#![cfg(feature = "redis")]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::AsyncCommands;
use sluice_connectors::redis_streams::RedisPlugin;
use sluice_sdk::acceptance::{
    destination_acceptance, source_acceptance, DestinationFixture, Expected, SourceCapabilities,
    SourceFixture, Written,
};
use sluice_sdk::{ConnectorError, Data, Plugin, Position, Record, Settings};

mod support;
use support::{open_source, raw_payload, read_n, settings};

/// How long a test waits for the records it reads.
const READ_LIMIT: Duration = Duration::from_secs(20);

/// The server's URL, or `None` (with the reason printed) when `test` must skip.
fn redis_url(test: &str) -> Option<String> {
    support::service_url("SLUICE_TEST_REDIS_URL", test, "redis://127.0.0.1:6379")
}

/// A key no other test run uses.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "sluice-test:{prefix}:{}:{nanos}:{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
}

/// Keys made by a test, deleted by [`Keys::delete_all`].
#[derive(Clone, Default)]
struct Keys(Arc<Mutex<Vec<String>>>);

impl Keys {
    fn add(&self, key: &str) {
        self.0.lock().expect("lock").push(key.to_string());
    }

    async fn delete_all(&self, url: &str) {
        let keys: Vec<String> = std::mem::take(&mut *self.0.lock().expect("lock"));
        let mut conn = connection(url).await;
        for key in keys {
            let _: redis::RedisResult<i64> = conn.del(&key).await;
        }
    }
}

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, key: &str, fields: &[(&str, &[u8])]) {
    let _: String = conn.xadd(key, "*", fields).await.expect("XADD");
}

// ---------------------------------------------------------------------------------------------
// The acceptance kit.

struct SourceFx {
    url: String,
    conn: redis::aio::MultiplexedConnection,
    keys: Keys,
    key: String,
    produced: usize,
    format: &'static str,
}

#[async_trait]
impl SourceFixture for SourceFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(RedisPlugin)
    }

    async fn settings(&mut self) -> Settings {
        self.key = unique("src");
        self.keys.add(&self.key);
        settings(&[
            ("url", &self.url),
            ("redis.key", &self.key),
            ("format", self.format),
            ("consumer", "acceptance"),
        ])
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        let mut expected = Vec::with_capacity(n);
        for _ in 0..n {
            self.produced += 1;
            let value = format!("entry {} with\nnewline", self.produced);
            if self.format == "raw" {
                xadd(&mut self.conn, &self.key, &[("data", value.as_bytes())]).await;
                expected.push(Expected::Payload(Bytes::from(value)));
            } else {
                xadd(&mut self.conn, &self.key, &[("text", value.as_bytes())]).await;
                let mut map = serde_json::Map::new();
                map.insert("text".into(), serde_json::Value::String(value));
                expected.push(Expected::After(Data::Structured(map)));
            }
        }
        expected
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        let base = [("url", self.url.as_str()), ("redis.key", "k")];
        let with = support::with_setting(&base);
        vec![
            with("mode", "pubsub"),
            with("format", "xml"),
            with("startFrom", "middle"),
            with("redis.port", "70000"),
            with("url", "http://127.0.0.1"),
            with("createGroup", "maybe"),
        ]
    }

    fn capabilities(&self) -> SourceCapabilities {
        support::LIVE_AND_RESUMABLE
    }
}

#[tokio::test]
async fn source_passes_the_acceptance_kit() {
    let Some(url) = redis_url("source_passes_the_acceptance_kit") else {
        return;
    };
    let keys = Keys::default();
    for format in ["fields", "raw"] {
        let fx = SourceFx {
            url: url.clone(),
            conn: connection(&url).await,
            keys: keys.clone(),
            key: String::new(),
            produced: 0,
            format,
        };
        let report = source_acceptance(fx).await;
        for check in [
            "read",
            "snapshot-then-live",
            "resume",
            "acks",
            "stop",
            "cancel",
        ] {
            assert!(
                report.passed.contains(&check),
                "{format} {check}: {report:?}"
            );
        }
    }
    keys.delete_all(&url).await;
}

struct DestinationFx {
    url: String,
    keys: Keys,
    key: String,
    format: &'static str,
}

#[async_trait]
impl DestinationFixture for DestinationFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(RedisPlugin)
    }

    async fn settings(&mut self) -> Settings {
        self.key = unique("dst");
        self.keys.add(&self.key);
        settings(&[
            ("url", &self.url),
            ("redis.key", &self.key),
            ("format", self.format),
        ])
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        let base = [("url", self.url.as_str()), ("redis.key", "k")];
        let with = support::with_setting(&base);
        vec![
            with("maxLen", "-1"),
            with("format", "xml"),
            with("retryAttempts", "-5"),
        ]
    }

    async fn written(&mut self) -> Written {
        let mut conn = connection(&self.url).await;
        let reply: redis::streams::StreamRangeReply =
            conn.xrange_all(&self.key).await.expect("XRANGE");
        let records = reply
            .ids
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let data: Vec<u8> = entry.get("data").expect("a data field");
                if self.format == "opencdc" {
                    sluice_sdk::opencdc::from_json(&data).expect("an OpenCDC record")
                } else {
                    Record::new(Position::from_u64(i as u64), data)
                }
            })
            .collect();
        Written::Records(records)
    }
}

#[tokio::test]
async fn destination_passes_the_acceptance_kit() {
    let Some(url) = redis_url("destination_passes_the_acceptance_kit") else {
        return;
    };
    let keys = Keys::default();
    // `fields` writes a raw payload as the single field `data`, like `raw`.
    for format in ["fields", "raw", "opencdc"] {
        let fx = DestinationFx {
            url: url.clone(),
            keys: keys.clone(),
            key: String::new(),
            format,
        };
        let report = destination_acceptance(fx).await;
        assert!(report.skipped.is_empty(), "{report:?}");
    }
    keys.delete_all(&url).await;
}

// ---------------------------------------------------------------------------------------------
// Behaviour beyond the kit.

#[tokio::test]
async fn structured_records_round_trip_through_a_stream() {
    let Some(url) = redis_url("structured_records_round_trip_through_a_stream") else {
        return;
    };
    let keys = Keys::default();
    let key = unique("rt");
    keys.add(&key);
    let mut dst = RedisPlugin.new_destination().expect("destination");
    dst.configure(&settings(&[
        ("url", &url),
        ("redis.key", &key),
        ("maxLen", "1000"),
    ]))
    .await
    .expect("configure");
    dst.open().await.expect("open");
    let mut map = serde_json::Map::new();
    map.insert("name".into(), "ada".into());
    map.insert("age".into(), 36.into());
    let record = Record::new(Position::from_u64(1), Data::Structured(map));
    dst.write(std::slice::from_ref(&record))
        .await
        .expect("write");
    assert_eq!(dst.ack().await.expect("ack").count, 1);
    dst.teardown().await.expect("teardown");

    let mut src = open_source(
        &RedisPlugin,
        &settings(&[("url", &url), ("redis.key", &key)]),
        None,
    )
    .await;
    let got = read_n(src.as_mut(), 1, READ_LIMIT).await.remove(0);
    let Some(Data::Structured(fields)) = &got.payload.after else {
        panic!("expected a structured payload, got {:?}", got.payload.after);
    };
    assert_eq!(fields["name"], "ada");
    assert_eq!(fields["age"], "36", "stream values are strings");
    assert_eq!(got.metadata["opencdc.collection"], key);
    src.ack(&[got.position]).await.expect("ack");
    src.teardown().await.expect("teardown");
    keys.delete_all(&url).await;
}

#[tokio::test]
async fn pending_entries_are_read_again_and_processed_ones_skipped() {
    let Some(url) = redis_url("pending_entries_are_read_again_and_processed_ones_skipped") else {
        return;
    };
    let keys = Keys::default();
    let key = unique("pel");
    keys.add(&key);
    let mut conn = connection(&url).await;
    for i in 0..10 {
        xadd(&mut conn, &key, &[("data", format!("m{i}").as_bytes())]).await;
    }
    let s = settings(&[("url", &url), ("redis.key", &key), ("format", "raw")]);
    // First run: read 8, ack the first 3, then die. Entries 4..8 stay pending for the consumer.
    let mut first = open_source(&RedisPlugin, &s, None).await;
    let head = read_n(first.as_mut(), 8, READ_LIMIT).await;
    first
        .ack(
            &head[..3]
                .iter()
                .map(|r| r.position.clone())
                .collect::<Vec<_>>(),
        )
        .await
        .expect("ack");
    drop(first);
    // The engine had checkpointed record 5 but died before acking 4 and 5: resuming at 5 reads
    // 6..10 (6..8 from the pending list, then 9, 10), each once, in order.
    let mut second = open_source(&RedisPlugin, &s, Some(&head[4].position)).await;
    let rest = read_n(second.as_mut(), 5, READ_LIMIT).await;
    assert_eq!(
        rest.iter().map(raw_payload).collect::<Vec<_>>(),
        (5..10)
            .map(|i| format!("m{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    second
        .ack(&rest.iter().map(|r| r.position.clone()).collect::<Vec<_>>())
        .await
        .expect("ack");
    let more = second.read(10).await.expect("read");
    assert!(more.records.is_empty());
    second.teardown().await.expect("teardown");
    // Everything is acknowledged now, the skipped 4 and 5 included.
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(&key, "sluice").await.expect("XPENDING");
    assert_eq!(pending.count(), 0, "{pending:?}");
    keys.delete_all(&url).await;
}

#[tokio::test]
async fn a_dropped_connection_loses_nothing() {
    let Some(url) = redis_url("a_dropped_connection_loses_nothing") else {
        return;
    };
    const TOTAL: usize = 2000;
    // The source connects to its own logical database, so its connections can be told apart
    // from everyone else's and killed alone.
    const DB: &str = "9";
    let db_url = format!("{}/{DB}", url.trim_end_matches('/'));
    let keys = Keys::default();
    let key = unique("drop");
    keys.add(&key);
    let mut admin = connection(&db_url).await;
    let admin_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut admin)
        .await
        .expect("CLIENT ID");
    let producer = {
        let db_url = db_url.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut conn = connection(&db_url).await;
            for i in 0..TOTAL {
                xadd(&mut conn, &key, &[("data", format!("m{i:05}").as_bytes())]).await;
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    let s = settings(&[("url", &db_url), ("redis.key", &key), ("format", "raw")]);
    let mut src = open_source(&RedisPlugin, &s, None).await;
    let mut seen = BTreeSet::new();
    let mut kills = 0;
    let mut killed = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < TOTAL {
        assert!(
            tokio::time::Instant::now() < until,
            "only {} of {TOTAL} entries were read within 60 s",
            seen.len()
        );
        let batch = src.read(64).await.expect("read");
        for r in &batch.records {
            assert!(seen.insert(raw_payload(r)), "read twice: {r:?}");
        }
        let positions: Vec<Position> = batch.records.iter().map(|r| r.position.clone()).collect();
        src.ack(&positions).await.expect("ack");
        if kills < 3 && seen.len() >= (kills + 1) * TOTAL / 4 {
            kills += 1;
            killed += kill_other_clients(&mut admin, admin_id, DB).await;
        }
    }
    producer.await.expect("producer");
    src.teardown().await.expect("teardown");
    assert_eq!(kills, 3);
    assert!(
        killed >= 3,
        "only {killed} of the source's connections were killed"
    );
    let want: BTreeSet<Vec<u8>> = (0..TOTAL)
        .map(|i| format!("m{i:05}").into_bytes())
        .collect();
    assert_eq!(seen, want);
    let mut conn = connection(&db_url).await;
    let _: i64 = conn.del(&key).await.expect("DEL");
}

/// Kills every client connected to database `db` except `keep`, like a network failure would.
async fn kill_other_clients(
    admin: &mut redis::aio::MultiplexedConnection,
    keep: i64,
    db: &str,
) -> i64 {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .expect("CLIENT LIST");
    let db_field = format!("db={db}");
    let mut killed = 0;
    for line in list.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let id = fields
            .iter()
            .find_map(|f| f.strip_prefix("id="))
            .and_then(|v| v.parse::<i64>().ok());
        let in_db = fields.iter().any(|f| *f == db_field);
        // The source's connection (its last command was a read or an ack), not the producer's.
        let is_source = fields
            .iter()
            .any(|f| *f == "cmd=xreadgroup" || *f == "cmd=xack");
        if let (Some(id), true) = (id, in_db && is_source) {
            if id != keep {
                let n: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query_async(admin)
                    .await;
                killed += n.unwrap_or(0);
            }
        }
    }
    killed
}

#[tokio::test]
async fn a_server_that_is_down_at_open_fails_naming_the_settings() {
    let mut src = RedisPlugin.new_source().expect("source");
    src.configure(&settings(&[
        ("url", "redis://127.0.0.1:1"),
        ("redis.key", "k"),
        ("connectTimeout", "500ms"),
    ]))
    .await
    .expect("configure");
    let err = src.open(None).await.expect_err("no server");
    let text = err.to_string();
    assert!(text.contains("redis") && text.contains("\"url\""), "{text}");
    assert!(text.contains("connectTimeout"), "{text}");
    assert!(matches!(
        err,
        ConnectorError::System {
            transient: true,
            ..
        }
    ));
}

#[tokio::test]
async fn a_missing_group_or_a_key_of_another_type_is_an_error_naming_the_setting() {
    let Some(url) =
        redis_url("a_missing_group_or_a_key_of_another_type_is_an_error_naming_the_setting")
    else {
        return;
    };
    let keys = Keys::default();
    let key = unique("nogroup");
    keys.add(&key);
    let mut conn = connection(&url).await;
    xadd(&mut conn, &key, &[("data", b"x")]).await;
    let mut src = RedisPlugin.new_source().expect("source");
    src.configure(&settings(&[
        ("url", &url),
        ("redis.key", &key),
        ("createGroup", "false"),
    ]))
    .await
    .expect("configure");
    let err = src.open(None).await.expect_err("missing group");
    assert!(err.to_string().contains("\"group\""), "{err}");

    let string_key = unique("string");
    keys.add(&string_key);
    let _: () = conn.set(&string_key, "not a stream").await.expect("SET");
    let mut src = RedisPlugin.new_source().expect("source");
    src.configure(&settings(&[("url", &url), ("redis.key", &string_key)]))
        .await
        .expect("configure");
    let err = src.open(None).await.expect_err("wrong type");
    assert!(err.to_string().contains("\"redis.key\""), "{err}");

    // The destination nacks each entry the server refuses, naming the key.
    let mut dst = RedisPlugin.new_destination().expect("destination");
    dst.configure(&settings(&[("url", &url), ("redis.key", &string_key)]))
        .await
        .expect("configure");
    dst.open().await.expect("open");
    dst.write(&[Record::new(Position::from_u64(1), "x")])
        .await
        .expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!((acks.count, acks.nacks.len()), (1, 1), "{acks:?}");
    assert!(acks.nacks[0].reason.contains("WRONGTYPE"), "{acks:?}");
    dst.teardown().await.expect("teardown");
    keys.delete_all(&url).await;
}
