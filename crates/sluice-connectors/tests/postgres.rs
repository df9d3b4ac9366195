//! Integration tests of the `postgres` connector against a real server.
//!
//! They need `SLUICE_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`) and skip
//! with a message when it is unset; the change-data-capture tests also need `wal_level = logical`
//! and skip with a message when the server has another level. Every test uses its own tables,
//! slots and publications, and drops them at the end, also when it fails (a leftover slot would
//! retain the server's WAL).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use serde_json::{json, Map, Value as Json};
use sluice_connectors::postgres::lsn::Lsn;
use sluice_connectors::postgres::position::SourcePosition;
use sluice_connectors::postgres::PostgresPlugin;
use sluice_sdk::acceptance::{
    destination_acceptance, source_acceptance, DestinationFixture, Expected, SourceCapabilities,
    SourceFixture, Written,
};
use sluice_sdk::record::metadata;
use sluice_sdk::{Data, Operation, Payload, Plugin, Position, Record, Settings, Source};
use tokio_postgres::{Client, NoTls};

mod support;
use support::{open_source, read_n, settings};

/// How long a test waits for the records it reads.
const READ_LIMIT: Duration = Duration::from_secs(20);

const URL_VAR: &str = "SLUICE_TEST_POSTGRES_URL";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The server URL, or `None` (after saying why) when the tests should skip.
fn url(test: &str) -> Option<String> {
    support::service_url(URL_VAR, test, "postgres://postgres@127.0.0.1:5432/test")
}

/// Names of what a test created, dropped at its end.
#[derive(Default)]
struct Created {
    tables: Vec<String>,
    slots: Vec<String>,
    publications: Vec<String>,
}

/// A test's connection to the server and the resources it created.
#[derive(Clone)]
struct Db {
    url: String,
    client: Arc<Client>,
    created: Arc<Mutex<Created>>,
    tag: String,
}

impl Db {
    async fn connect(url: &str, tag: &str) -> Db {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("connect to the test server");
        tokio::spawn(conn);
        Db {
            url: url.to_string(),
            client: Arc::new(client),
            created: Arc::default(),
            tag: tag.to_string(),
        }
    }

    /// A unique lowercase name.
    fn name(&self, kind: &str) -> String {
        format!(
            "sl_{}_{kind}_{}_{}",
            self.tag,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A new table (`columns` as in CREATE TABLE), dropped at the end.
    async fn table(&self, columns: &str) -> String {
        let name = self.name("t");
        self.exec(&format!("CREATE TABLE {name} ({columns})")).await;
        self.created.lock().expect("lock").tables.push(name.clone());
        name
    }

    /// A slot name and a publication name, both dropped at the end (if they were created).
    fn slot_and_publication(&self) -> (String, String) {
        let slot = self.name("slot");
        let publication = self.name("pub");
        let mut c = self.created.lock().expect("lock");
        c.slots.push(slot.clone());
        c.publications.push(publication.clone());
        (slot, publication)
    }

    async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn wal_is_logical(&self) -> bool {
        let level: String = self
            .client
            .query_one("SHOW wal_level", &[])
            .await
            .expect("show wal_level")
            .get(0);
        if level != "logical" {
            eprintln!(
                "skipping {}: the server has wal_level = {level}; logical replication needs \
                 wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart)",
                self.tag
            );
        }
        level == "logical"
    }

    /// The slot's confirmed position.
    async fn confirmed_flush(&self, slot: &str) -> Option<Lsn> {
        let row = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("read the slot");
        row.and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|t| t.parse().ok())
    }

    /// Drops everything the test created. Slots still held by a closing connection are waited
    /// for, then their holder is terminated.
    async fn cleanup(&self) {
        let created = std::mem::take(&mut *self.created.lock().expect("lock"));
        for slot in &created.slots {
            for attempt in 0..50 {
                let row = self
                    .client
                    .query_opt(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                        &[slot],
                    )
                    .await
                    .ok()
                    .flatten();
                let Some(row) = row else { break };
                match row.get::<_, Option<i32>>(0) {
                    None => {
                        let _ = self
                            .client
                            .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                            .await;
                    }
                    Some(pid) if attempt > 20 => {
                        let _ = self
                            .client
                            .execute("SELECT pg_terminate_backend($1)", &[&pid])
                            .await;
                    }
                    Some(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for p in &created.publications {
            let _ = self
                .client
                .batch_execute(&format!("DROP PUBLICATION IF EXISTS {p}"))
                .await;
        }
        for t in &created.tables {
            let _ = self
                .client
                .batch_execute(&format!("DROP TABLE IF EXISTS {t}"))
                .await;
        }
    }
}

/// Runs `body` with a fresh [`Db`] and cleans up afterwards, also when it panics. Skips (returns)
/// when the server is not configured, or lacks logical replication and `logical` is asked for.
async fn with_db<F, Fut>(tag: &str, logical: bool, body: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(url) = url(tag) else { return };
    let db = Db::connect(&url, tag).await;
    if logical && !db.wal_is_logical().await {
        return;
    }
    let outcome = AssertUnwindSafe(body(db.clone())).catch_unwind().await;
    db.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn source_settings(db: &Db, table: &str, slot: &str, publication: &str) -> Settings {
    settings(&[
        ("url", &db.url),
        ("tables", table),
        ("cdcMode", "logrepl"),
        ("logrepl.slotName", slot),
        ("logrepl.publicationName", publication),
    ])
}

/// Reads for a while and fails if any record arrives.
async fn expect_nothing_more(src: &mut dyn Source) {
    for _ in 0..5 {
        let batch = src.read(100).await.expect("read");
        assert!(
            batch.records.is_empty(),
            "unexpected records: {:?}",
            batch
                .records
                .iter()
                .map(|r| &r.position)
                .collect::<Vec<_>>()
        );
    }
}

fn after(r: &Record) -> Json {
    match &r.payload.after {
        Some(Data::Structured(m)) => Json::Object(m.clone()),
        other => panic!("expected a structured payload.after, got {other:?}"),
    }
}

fn before(r: &Record) -> Option<Json> {
    match &r.payload.before {
        Some(Data::Structured(m)) => Some(Json::Object(m.clone())),
        None => None,
        other => panic!("expected a structured payload.before, got {other:?}"),
    }
}

fn key(r: &Record) -> Json {
    match &r.key {
        Some(Data::Structured(m)) => Json::Object(m.clone()),
        other => panic!("expected a structured key, got {other:?}"),
    }
}

fn ids(records: &[Record]) -> Vec<i64> {
    records
        .iter()
        .map(|r| key(r)["id"].as_i64().expect("integer id"))
        .collect()
}

fn object(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Acceptance kit
// ---------------------------------------------------------------------------------------------

/// The source fixture: each check gets a fresh table, slot and publication.
struct SourceFx {
    db: Db,
    table: String,
    next_id: i64,
    polling: bool,
}

#[async_trait]
impl SourceFixture for SourceFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(PostgresPlugin)
    }

    async fn settings(&mut self) -> Settings {
        // The previous check's source is torn down: free its slot before making new ones.
        self.db.cleanup().await;
        self.table = self.db.table("id integer PRIMARY KEY, name text").await;
        self.next_id = 1;
        if self.polling {
            return settings(&[
                ("url", &self.db.url),
                ("tables", &self.table),
                ("cdcMode", "long_polling"),
                ("orderingColumn", "id"),
                ("pollingPeriod", "50ms"),
            ]);
        }
        let (slot, publication) = self.db.slot_and_publication();
        source_settings(&self.db, &self.table, &slot, &publication)
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            let name = format!("row {id}");
            self.db
                .client
                .execute(
                    &format!("INSERT INTO {} (id, name) VALUES ($1, $2)", self.table),
                    &[&(id as i32), &name],
                )
                .await
                .expect("insert");
            out.push(Expected::After(Data::Structured(object(
                json!({"id": id, "name": name}),
            ))));
        }
        out
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        let base = |extra: (&str, &str)| {
            let mut s = settings(&[("url", &self.db.url), ("tables", "x")]);
            s.insert(extra.0.into(), extra.1.into());
            s
        };
        vec![
            (base(("cdcMode", "sometimes")), "cdcMode"),
            (base(("logrepl.slotName", "Not-Valid")), "logrepl.slotName"),
            (base(("snapshotMode", "later")), "snapshotMode"),
            (base(("tables", "")), "tables"),
            (base(("cdcMode", "long_polling")), "orderingColumn"),
            (base(("url", "postgres://127.0.0.1/test")), "url"),
        ]
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            live: true,
            snapshot: !self.polling,
            end_of_stream: false,
            resume: true,
            self_producing: false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_passes_the_acceptance_kit() {
    with_db("srcacc", true, |db| async move {
        let report = source_acceptance(SourceFx {
            db,
            table: String::new(),
            next_id: 1,
            polling: false,
        })
        .await;
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
                "{check} did not run: {report:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_source_passes_the_acceptance_kit() {
    with_db("pollacc", false, |db| async move {
        let report = source_acceptance(SourceFx {
            db,
            table: String::new(),
            next_id: 1,
            polling: true,
        })
        .await;
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
                "{check} did not run: {report:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_connector_drops_its_slot_and_publication() {
    with_db("cleanup", true, |db| async move {
        let t = db.table("id integer PRIMARY KEY").await;
        let (slot, publication) = db.slot_and_publication();
        let s = source_settings(&db, &t, &slot, &publication);
        let mut src = open_source(&PostgresPlugin, &s, None).await;
        src.teardown().await.expect("teardown");
        assert!(
            db.confirmed_flush(&slot).await.is_some(),
            "the slot was created"
        );
        // Deleted from its pipeline: the only call is on_deleted.
        let mut gone = PostgresPlugin.new_source().expect("source side");
        gone.on_deleted(&s).await.expect("on_deleted");
        assert!(
            db.confirmed_flush(&slot).await.is_none(),
            "the slot is still there"
        );
        let pubs: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(pubs, 0, "the publication is still there");
    })
    .await;
}

/// The destination fixture: each check gets a fresh table; records name it as their collection.
struct DestinationFx {
    db: Db,
    table: String,
}

#[async_trait]
impl DestinationFixture for DestinationFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(PostgresPlugin)
    }

    async fn settings(&mut self) -> Settings {
        self.table = self
            .db
            .table("id integer PRIMARY KEY, name text, score double precision")
            .await;
        settings(&[("url", &self.db.url)])
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (
                settings(&[("url", &self.db.url), ("table", "{{ .Whatever }}")]),
                "table",
            ),
            (settings(&[("url", "not a url")]), "url"),
        ]
    }

    fn records(&mut self, n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let mut r = Record {
                    position: Position::from_u64(i as u64 + 1),
                    operation: Operation::Create,
                    key: Some(Data::Structured(object(json!({"id": i})))),
                    payload: Payload {
                        before: None,
                        after: Some(Data::Structured(object(
                            json!({"id": i, "name": format!("name {i}"), "score": i as f64 + 0.5}),
                        ))),
                    },
                    ..Record::default()
                };
                r.metadata
                    .insert(metadata::COLLECTION.into(), self.table.clone());
                r
            })
            .collect()
    }

    async fn written(&mut self) -> Written {
        let rows = self
            .db
            .client
            .query(
                &format!("SELECT id, name, score FROM {} ORDER BY id", self.table),
                &[],
            )
            .await
            .expect("read back");
        Written::Records(
            rows.iter()
                .map(|row| {
                    let id: i32 = row.get(0);
                    let name: String = row.get(1);
                    let score: f64 = row.get(2);
                    Record {
                        payload: Payload {
                            before: None,
                            after: Some(Data::Structured(object(
                                json!({"id": id, "name": name, "score": score}),
                            ))),
                        },
                        ..Record::default()
                    }
                })
                .collect(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_passes_the_acceptance_kit() {
    with_db("dstacc", false, |db| async move {
        let report = destination_acceptance(DestinationFx {
            db,
            table: String::new(),
        })
        .await;
        for check in ["write", "read-back", "cancel"] {
            assert!(
                report.passed.contains(&check),
                "{check} did not run: {report:?}"
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Change data capture
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_delivers_changes_in_commit_order_with_before_images_per_replica_identity() {
    with_db("cdcorder", true, |db| async move {
        let full = db
            .table("id integer PRIMARY KEY, name text, n bigint")
            .await;
        db.exec(&format!("ALTER TABLE {full} REPLICA IDENTITY FULL"))
            .await;
        let plain = db
            .table("id integer PRIMARY KEY, name text, n bigint")
            .await;
        db.exec(&format!("INSERT INTO {full} VALUES (1, 'snap', 0)"))
            .await;
        let (slot, publication) = db.slot_and_publication();
        let s = source_settings(&db, &format!("{full},{plain}"), &slot, &publication);
        let mut src = open_source(&PostgresPlugin, &s, None).await;

        let snapshot = read_n(src.as_mut(), 1, READ_LIMIT).await;
        assert_eq!(snapshot[0].operation, Operation::Snapshot);
        assert_eq!(snapshot[0].metadata[metadata::COLLECTION], full);
        assert_eq!(
            after(&snapshot[0]),
            json!({"id": 1, "name": "snap", "n": 0})
        );

        // Two transactions interleaved: the one committed first comes first.
        let other = Db::connect(&db.url, "cdcorder2").await;
        db.exec("BEGIN").await;
        db.exec(&format!(
            "INSERT INTO {plain} VALUES (10, 'first begun', 1)"
        ))
        .await;
        other
            .exec(&format!(
                "INSERT INTO {plain} VALUES (20, 'first committed', 2)"
            ))
            .await;
        db.exec("COMMIT").await;
        db.exec(&format!(
            "BEGIN; UPDATE {full} SET name = 'changed', n = 5 WHERE id = 1; \
             UPDATE {plain} SET name = 'changed' WHERE id = 10; \
             UPDATE {plain} SET id = 11 WHERE id = 10; COMMIT;"
        ))
        .await;
        db.exec(&format!(
            "BEGIN; DELETE FROM {full} WHERE id = 1; DELETE FROM {plain} WHERE id = 20; COMMIT;"
        ))
        .await;

        let changes = read_n(src.as_mut(), 7, READ_LIMIT).await;
        let ops: Vec<(Operation, &str, Json)> = changes
            .iter()
            .map(|r| {
                (
                    r.operation,
                    r.metadata[metadata::COLLECTION].as_str(),
                    key(r),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                (Operation::Create, plain.as_str(), json!({"id": 20})),
                (Operation::Create, plain.as_str(), json!({"id": 10})),
                (Operation::Update, full.as_str(), json!({"id": 1})),
                (Operation::Update, plain.as_str(), json!({"id": 10})),
                (Operation::Update, plain.as_str(), json!({"id": 11})),
                (Operation::Delete, full.as_str(), json!({"id": 1})),
                (Operation::Delete, plain.as_str(), json!({"id": 20})),
            ]
        );
        assert_eq!(
            after(&changes[0]),
            json!({"id": 20, "name": "first committed", "n": 2})
        );
        // REPLICA IDENTITY FULL: the whole old row.
        assert_eq!(
            before(&changes[2]),
            Some(json!({"id": 1, "name": "snap", "n": 0}))
        );
        assert_eq!(
            after(&changes[2]),
            json!({"id": 1, "name": "changed", "n": 5})
        );
        // Default identity: no old row for an update that keeps the key ...
        assert_eq!(before(&changes[3]), None);
        // ... the old key when the key changes ...
        assert_eq!(before(&changes[4]), Some(json!({"id": 10})));
        // ... and the old key on delete.
        assert_eq!(
            before(&changes[5]),
            Some(json!({"id": 1, "name": "changed", "n": 5}))
        );
        assert_eq!(before(&changes[6]), Some(json!({"id": 20})));
        assert!(changes[6].payload.after.is_none());
        // Positions are unique and ordered by commit, then by change.
        let positions: Vec<(Lsn, u32)> = changes
            .iter()
            .map(
                |r| match SourcePosition::decode(&r.position).expect("position") {
                    SourcePosition::Cdc { commit, index } => (commit, index),
                    other => panic!("not a change position: {other:?}"),
                },
            )
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        // Commit time is the creation time.
        let created: i128 = changes[0].metadata[metadata::CREATED_AT]
            .parse()
            .expect("nanos");
        let read: i128 = changes[0].metadata[metadata::READ_AT]
            .parse()
            .expect("nanos");
        assert!(created <= read);

        expect_nothing_more(src.as_mut()).await;
        src.teardown().await.expect("teardown");
        other.cleanup().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_values_are_typed_json() {
    with_db("cdctypes", true, |db| async move {
        let t = db
            .table(
                "id bigint PRIMARY KEY, ok boolean, small smallint, price numeric(10,2), \
                 ratio double precision, doc jsonb, raw bytea, at timestamptz, tags text[], \
                 nothing text",
            )
            .await;
        let row = format!(
            "INSERT INTO {t} VALUES (9007199254740993, true, 7, 12.50, 0.25, \
             '{{\"a\": [1, 2]}}', '\\x00ff', '2024-01-02 03:04:05+00', '{{x,y}}', NULL)"
        );
        db.exec(&row).await;
        let (slot, publication) = db.slot_and_publication();
        let mut src = open_source(
            &PostgresPlugin,
            &source_settings(&db, &t, &slot, &publication),
            None,
        )
        .await;
        db.exec(&row.replace("9007199254740993", "2")).await;
        let records = read_n(src.as_mut(), 2, READ_LIMIT).await;
        let want = |id: i64| {
            json!({
                "id": id, "ok": true, "small": 7, "price": "12.50", "ratio": 0.25,
                "doc": {"a": [1, 2]}, "raw": "AP8=", "at": "2024-01-02 03:04:05+00",
                "tags": "{x,y}", "nothing": null
            })
        };
        assert_eq!(records[0].operation, Operation::Snapshot);
        assert_eq!(after(&records[0]), want(9007199254740993));
        assert_eq!(records[1].operation, Operation::Create);
        assert_eq!(
            after(&records[1]),
            want(2),
            "snapshot and change records look alike"
        );
        src.teardown().await.expect("teardown");
    })
    .await;
}

/// Inserts `txs` transactions of `per_tx` rows each, ids counting from `first`.
async fn insert_transactions(db: &Db, table: &str, first: i64, txs: usize, per_tx: usize) {
    let mut id = first;
    for _ in 0..txs {
        let values: Vec<String> = (0..per_tx)
            .map(|_| {
                id += 1;
                format!("({}, 'row {}')", id - 1, id - 1)
            })
            .collect();
        db.exec(&format!(
            "INSERT INTO {table} (id, name) VALUES {}",
            values.join(", ")
        ))
        .await;
    }
}

fn cdc(r: &Record) -> (Lsn, u32) {
    match SourcePosition::decode(&r.position).expect("position") {
        SourcePosition::Cdc { commit, index } => (commit, index),
        other => panic!("not a change position: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_resumes_at_the_acked_position_and_the_slot_keeps_the_rest() {
    with_db("cdcrestart", true, |db| async move {
        let t = db.table("id integer PRIMARY KEY, name text").await;
        let (slot, publication) = db.slot_and_publication();
        let mut s = source_settings(&db, &t, &slot, &publication);
        s.insert("snapshotMode".into(), "never".into());
        let mut first = open_source(&PostgresPlugin, &s, None).await;
        // 10 transactions of 10 rows: ids 1..=100.
        insert_transactions(&db, &t, 1, 10, 10).await;
        let read = read_n(first.as_mut(), 60, READ_LIMIT).await;
        assert_eq!(ids(&read), (1..=60).collect::<Vec<_>>());
        let positions: Vec<Position> = read.iter().map(|r| r.position.clone()).collect();
        // Acknowledge the first 40 only (four whole transactions), in two calls.
        first.ack(&positions[..25]).await.expect("ack");
        first.ack(&positions[25..40]).await.expect("ack");
        assert_eq!(
            first.stop().await.expect("stop"),
            Some(positions[59].clone())
        );
        first.teardown().await.expect("teardown");

        // The slot was confirmed up to the fifth transaction (the first one not acknowledged),
        // not past it.
        let (fifth_commit, index) = cdc(&read[40]);
        assert_eq!(index, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let confirmed = db.confirmed_flush(&slot).await.expect("the slot exists");
            assert!(
                confirmed <= fifth_commit,
                "the slot was confirmed to {confirmed}, past the unacknowledged {fifth_commit}"
            );
            if confirmed == fifth_commit {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot stayed at {confirmed}, before the acknowledged changes ended at \
                 {fifth_commit}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // More changes while the source is down, then a restart at the last acknowledged
        // position: exactly the rest, nothing lost, nothing repeated.
        insert_transactions(&db, &t, 101, 2, 5).await;
        let mut second = open_source(&PostgresPlugin, &s, Some(&positions[39])).await;
        let rest = read_n(second.as_mut(), 70, READ_LIMIT).await;
        assert_eq!(ids(&rest), (41..=110).collect::<Vec<_>>());
        let same = |a: &[Record], b: &[Record]| {
            a.iter()
                .map(|r| (r.position.clone(), after(r)))
                .collect::<Vec<_>>()
                == b.iter()
                    .map(|r| (r.position.clone(), after(r)))
                    .collect::<Vec<_>>()
        };
        assert!(
            same(&rest[..20], &read[40..60]),
            "the unacknowledged records come again, the same"
        );
        expect_nothing_more(second.as_mut()).await;

        // Resuming in the middle of a transaction skips exactly its acknowledged part.
        let all: Vec<Position> = rest.iter().map(|r| r.position.clone()).collect();
        second.ack(&all[..5]).await.expect("ack");
        second.teardown().await.expect("teardown");
        let mut third = open_source(&PostgresPlugin, &s, Some(&all[4])).await;
        let tail = read_n(third.as_mut(), 65, READ_LIMIT).await;
        assert_eq!(ids(&tail), (46..=110).collect::<Vec<_>>());
        expect_nothing_more(third.as_mut()).await;
        third.teardown().await.expect("teardown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_table_does_not_hold_back_the_slot() {
    with_db("quiet", true, |db| async move {
        let quiet = db.table("id integer PRIMARY KEY").await;
        let busy = db.table("id integer PRIMARY KEY, pad text").await;
        let (slot, publication) = db.slot_and_publication();
        let mut s = source_settings(&db, &quiet, &slot, &publication);
        s.insert("snapshotMode".into(), "never".into());
        let mut src = open_source(&PostgresPlugin, &s, None).await;
        let start = db.confirmed_flush(&slot).await.expect("the slot exists");
        // WAL from a table the source does not follow: no record, yet the slot may move on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            db.exec(&format!(
                "INSERT INTO {busy} SELECT g, repeat('x', 100) FROM generate_series({}, {}) g",
                n * 1000 + 1,
                n * 1000 + 1000
            ))
            .await;
            n += 1;
            let batch = src.read(10).await.expect("read");
            assert!(batch.records.is_empty(), "records of an unfollowed table");
            if db.confirmed_flush(&slot).await.expect("the slot exists") > start {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot stayed at {start} while the server wrote WAL"
            );
        }
        // A change to the followed table still arrives.
        db.exec(&format!("INSERT INTO {quiet} VALUES (1)")).await;
        assert_eq!(ids(&read_n(src.as_mut(), 1, READ_LIMIT).await), vec![1]);
        src.teardown().await.expect("teardown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replication_connection_is_resumed_with_nothing_lost() {
    with_db("cdclost", true, |db| async move {
        let t = db.table("id integer PRIMARY KEY, name text").await;
        let (slot, publication) = db.slot_and_publication();
        let mut s = source_settings(&db, &t, &slot, &publication);
        s.insert("snapshotMode".into(), "never".into());
        let mut src = open_source(&PostgresPlugin, &s, None).await;
        insert_transactions(&db, &t, 1, 4, 5).await;
        let mut got = read_n(src.as_mut(), 10, READ_LIMIT).await;
        let acked: Vec<Position> = got.iter().map(|r| r.position.clone()).collect();
        src.ack(&acked).await.expect("ack");
        // Kill the server process streaming the slot.
        let killed: i64 = db
            .client
            .query_one(
                "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&slot],
            )
            .await
            .expect("terminate")
            .get(0);
        assert_eq!(killed, 1, "the slot was not being streamed");
        insert_transactions(&db, &t, 21, 4, 5).await;
        got.extend(read_n(src.as_mut(), 30, READ_LIMIT).await);
        assert_eq!(ids(&got), (1..=40).collect::<Vec<_>>());
        expect_nothing_more(src.as_mut()).await;
        src.teardown().await.expect("teardown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_reads_new_rows_by_the_ordering_column_and_resumes() {
    with_db("polling", false, |db| async move {
        let t = db.table("id serial PRIMARY KEY, name text").await;
        db.exec(&format!(
            "INSERT INTO {t} (name) SELECT 'old ' || g FROM generate_series(1, 3) g"
        ))
        .await;
        let s = settings(&[
            ("url", &db.url),
            ("tables", &t),
            ("cdcMode", "long_polling"),
            ("orderingColumn", "id"),
            ("pollingPeriod", "50ms"),
        ]);
        let mut src = open_source(&PostgresPlugin, &s, None).await;
        let existing = read_n(src.as_mut(), 3, READ_LIMIT).await;
        assert_eq!(ids(&existing), vec![1, 2, 3]);
        db.exec(&format!(
            "INSERT INTO {t} (name) SELECT 'new ' || g FROM generate_series(1, 4) g"
        ))
        .await;
        let new = read_n(src.as_mut(), 4, READ_LIMIT).await;
        assert_eq!(ids(&new), vec![4, 5, 6, 7]);
        assert!(new.iter().all(|r| r.operation == Operation::Create));
        assert_eq!(after(&new[0]), json!({"id": 4, "name": "new 1"}));
        expect_nothing_more(src.as_mut()).await;
        src.teardown().await.expect("teardown");

        // Resume after the fifth row: the sixth and seventh, then what is new.
        let mut again = open_source(&PostgresPlugin, &s, Some(&new[1].position)).await;
        db.exec(&format!("INSERT INTO {t} (name) VALUES ('later')"))
            .await;
        assert_eq!(
            ids(&read_n(again.as_mut(), 3, READ_LIMIT).await),
            vec![6, 7, 8]
        );
        again.teardown().await.expect("teardown");

        // snapshotMode: never starts after the rows that exist.
        let mut s2 = s.clone();
        s2.insert("snapshotMode".into(), "never".into());
        let mut fresh = open_source(&PostgresPlugin, &s2, None).await;
        expect_nothing_more(fresh.as_mut()).await;
        db.exec(&format!("INSERT INTO {t} (name) VALUES ('newest')"))
            .await;
        assert_eq!(ids(&read_n(fresh.as_mut(), 1, READ_LIMIT).await), vec![9]);
        fresh.teardown().await.expect("teardown");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Destination
// ---------------------------------------------------------------------------------------------

fn change(op: Operation, table: &str, id: i64, after: Option<Json>) -> Record {
    let mut r = Record {
        position: Position::from_u64(id as u64),
        operation: op,
        key: Some(Data::Structured(object(json!({"id": id})))),
        payload: Payload {
            before: None,
            after: after.map(|a| Data::Structured(object(a))),
        },
        ..Record::default()
    };
    r.metadata.insert(metadata::COLLECTION.into(), table.into());
    r
}

async fn rows(db: &Db, table: &str) -> Vec<(i32, String)> {
    db.client
        .query(&format!("SELECT id, name FROM {table} ORDER BY id"), &[])
        .await
        .expect("select")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_upserts_and_deletes_by_key_in_one_transaction_per_ack() {
    with_db("dstbatch", false, |db| async move {
        let t = db
            .table("id integer PRIMARY KEY, name text CHECK (name <> 'forbidden')")
            .await;
        let mut dst = PostgresPlugin.new_destination().expect("destination side");
        dst.configure(&settings(&[("url", &db.url)]))
            .await
            .expect("configure");
        dst.open().await.expect("open");

        let mut batch: Vec<Record> = (1..=5)
            .map(|i| {
                change(
                    Operation::Create,
                    &t,
                    i,
                    Some(json!({"id": i, "name": format!("n{i}")})),
                )
            })
            .collect();
        batch.push(change(
            Operation::Update,
            &t,
            2,
            Some(json!({"id": 2, "name": "two"})),
        ));
        batch.push(change(Operation::Delete, &t, 3, None));
        batch.push(change(
            Operation::Snapshot,
            &t,
            4,
            Some(json!({"id": 4, "name": "four"})),
        ));
        dst.write(&batch).await.expect("write");
        assert!(rows(&db, &t).await.is_empty(), "write only buffers");
        let acks = dst.ack().await.expect("ack");
        assert_eq!((acks.count, acks.nacks.len()), (8, 0));
        assert_eq!(
            rows(&db, &t).await,
            vec![
                (1, "n1".into()),
                (2, "two".into()),
                (4, "four".into()),
                (5, "n5".into())
            ]
        );

        // A row the table refuses: only that record is nacked, the rest of the batch commits.
        let batch = vec![
            change(
                Operation::Update,
                &t,
                1,
                Some(json!({"id": 1, "name": "uno"})),
            ),
            change(
                Operation::Create,
                &t,
                6,
                Some(json!({"id": 6, "name": "forbidden"})),
            ),
            change(
                Operation::Create,
                &t,
                7,
                Some(json!({"id": 7, "name": "siete", "nope": 1})),
            ),
            change(Operation::Delete, &t, 5, None),
        ];
        dst.write(&batch).await.expect("write");
        let acks = dst.ack().await.expect("ack");
        assert_eq!(acks.count, 4);
        let nacked: Vec<usize> = acks.nacks.iter().map(|n| n.index).collect();
        assert_eq!(nacked, vec![1, 2], "{:?}", acks.nacks);
        assert!(
            acks.nacks[0].reason.contains("check constraint"),
            "{:?}",
            acks.nacks
        );
        assert!(
            acks.nacks[1].reason.contains("\"nope\""),
            "{:?}",
            acks.nacks
        );
        assert_eq!(
            rows(&db, &t).await,
            vec![(1, "uno".into()), (2, "two".into()), (4, "four".into())]
        );
        assert_eq!(
            dst.ack().await.expect("empty ack"),
            sluice_sdk::Acks::default()
        );
        dst.teardown().await.expect("teardown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_takes_table_and_key_from_settings_for_raw_keys() {
    with_db("dstraw", false, |db| async move {
        let t = db.table("code text PRIMARY KEY, qty integer").await;
        let mut dst = PostgresPlugin.new_destination().expect("destination side");
        dst.configure(&settings(&[
            ("url", &db.url),
            ("table", &t),
            ("key", "code"),
        ]))
        .await
        .expect("configure");
        dst.open().await.expect("open");
        let rec = |code: &'static str, qty: i64| {
            let mut r = Record::new(
                Position::from_u64(1),
                Data::from(format!("{{\"qty\": {qty}}}").into_bytes()),
            );
            r.key = Some(Data::from(code));
            r
        };
        dst.write(&[rec("a", 1), rec("b", 2), rec("a", 3)])
            .await
            .expect("write");
        let acks = dst.ack().await.expect("ack");
        assert_eq!((acks.count, acks.nacks.len()), (3, 0), "{:?}", acks.nacks);
        let got: Vec<(String, i32)> = db
            .client
            .query(&format!("SELECT code, qty FROM {t} ORDER BY code"), &[])
            .await
            .expect("select")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got, vec![("a".into(), 3), ("b".into(), 2)]);
        dst.teardown().await.expect("teardown");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_setting_and_never_the_password() {
    with_db("errors", false, |db| async move {
        // An unknown user (the test server may trust every password, but not unknown roles).
        let bad_url = urls::with_user(&db.url, "sluice_no_such_user", "s3cret-pw");
        let mut src = PostgresPlugin.new_source().expect("source side");
        src.configure(&settings(&[("url", &bad_url), ("tables", "x")]))
            .await
            .expect("configure");
        let e = src
            .open(None)
            .await
            .expect_err("authentication must fail")
            .to_string();
        assert!(e.starts_with("postgres source: url: "), "{e}");
        assert!(e.contains("sluice_no_such_user"), "{e}");
        assert!(!e.contains("s3cret-pw"), "the password leaked: {e}");
        src.teardown().await.expect("teardown");

        let mut dst = PostgresPlugin.new_destination().expect("destination side");
        dst.configure(&settings(&[("url", &bad_url)]))
            .await
            .expect("configure");
        let e = dst
            .open()
            .await
            .expect_err("authentication must fail")
            .to_string();
        assert!(e.starts_with("postgres destination: url: "), "{e}");
        assert!(!e.contains("s3cret-pw"), "the password leaked: {e}");

        // A missing table.
        let missing = db.name("missing");
        let mut src = PostgresPlugin.new_source().expect("source side");
        src.configure(&settings(&[
            ("url", &db.url),
            ("tables", &missing),
            ("cdcMode", "long_polling"),
            ("orderingColumn", "id"),
        ]))
        .await
        .expect("configure");
        let e = src.open(None).await.expect_err("missing table").to_string();
        assert!(e.contains("tables: ") && e.contains(&missing), "{e}");
        let mut dst = PostgresPlugin.new_destination().expect("destination side");
        dst.configure(&settings(&[("url", &db.url), ("table", &missing)]))
            .await
            .expect("configure");
        let e = dst.open().await.expect_err("missing table").to_string();
        assert!(e.contains("table: ") && e.contains(&missing), "{e}");

        // A record naming a missing table is nacked with the name.
        let mut dst = PostgresPlugin.new_destination().expect("destination side");
        dst.configure(&settings(&[("url", &db.url)]))
            .await
            .expect("configure");
        dst.open().await.expect("open");
        dst.write(&[change(
            Operation::Create,
            &missing,
            1,
            Some(json!({"id": 1})),
        )])
        .await
        .expect("write");
        let acks = dst.ack().await.expect("ack");
        assert_eq!(acks.nacks.len(), 1);
        assert!(acks.nacks[0].reason.contains(&missing), "{:?}", acks.nacks);

        // A table without key and without REPLICA IDENTITY FULL cannot be replicated.
        if db.wal_is_logical().await {
            let keyless = db.table("a integer").await;
            let (slot, publication) = db.slot_and_publication();
            let mut src = PostgresPlugin.new_source().expect("source side");
            src.configure(&source_settings(&db, &keyless, &slot, &publication))
                .await
                .expect("configure");
            let e = src.open(None).await.expect_err("keyless table").to_string();
            assert!(e.contains("REPLICA IDENTITY FULL"), "{e}");
        }
    })
    .await;
}

/// Building URLs for other users of the test server.
mod urls {
    /// `url` with its user and password replaced.
    pub fn with_user(url: &str, user: &str, password: &str) -> String {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .expect("a postgres:// URL");
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        format!("postgres://{user}:{password}@{host}")
    }
}
