//! Replicas: two `sluice serve` processes share their data flows through one PostgreSQL store.
//! A provider-push transfer runs on replica A; A is killed (SIGKILL) mid-transfer; replica B claims
//! the flow's expired lease, resumes the push from the last checkpoint and finishes it: the flow
//! ends COMPLETED with a `completed` callback, and the receiver holds every record (at least once).
//!
//! Needs `SLUICE_TEST_POSTGRES_URL`; skips with a message otherwise.

#[path = "support/dps/mod.rs"]
mod dps;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use dps::client::{flow_message, unique, Dps, PUSH};
use dps::control_plane::ControlPlane;
use dps::server::{files_dir, path_str, signaling_config, Server};
use serde_json::json;

const URL_VAR: &str = "SLUICE_TEST_POSTGRES_URL";
const TOKEN: &str = "replica-secret";
/// Records in the dataset: 60 requests of 8192 lines at the receiver's pace.
const RECORDS: usize = 8192 * 60;
/// How long the receiver takes per request, so the transfer lasts a few seconds.
const RECEIVER_DELAY: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(120);

/// A push receiver: appends every POSTed body, slowly.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    async fn start(&self) -> String {
        async fn take(State(r): State<Receiver>, body: Bytes) -> &'static str {
            tokio::time::sleep(RECEIVER_DELAY).await;
            r.bodies.lock().expect("lock").push(body);
            "ok"
        }
        let app = Router::new()
            .route("/receive", post(take))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/receive", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    fn requests(&self) -> usize {
        self.bodies.lock().expect("lock").len()
    }

    /// Every distinct line received, and how many lines in all.
    fn lines(&self) -> (BTreeSet<String>, usize) {
        let mut set = BTreeSet::new();
        let mut total = 0;
        for b in self.bodies.lock().expect("lock").iter() {
            for line in String::from_utf8_lossy(b).lines() {
                total += 1;
                set.insert(line.to_string());
            }
        }
        (set, total)
    }
}

fn line(i: usize) -> String {
    format!("{{\"record\":{i:08}}}")
}

/// Drops the test's tables.
async fn drop_tables(url: &str, tables: &[&str]) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    for t in tables {
        // The store derives some names from its table; drop whatever starts with it.
        let rows = client
            .query(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() \
                 AND tablename LIKE $1",
                &[&format!("{t}%")],
            )
            .await
            .expect("list tables");
        for r in rows {
            let name: String = r.get(0);
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS \"{name}\" CASCADE"))
                .await
                .expect("drop table");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_s_push_transfer_is_finished_by_the_other_one() {
    let Ok(pg) = std::env::var(URL_VAR) else {
        eprintln!("skipping: {URL_VAR} is not set");
        return;
    };
    let table = unique("dps_rep").replace('-', "_").to_lowercase();
    let table: String = table.chars().take(40).collect();

    let (_files, dir) = files_dir();
    let input = dir.join("records.jsonl");
    let mut text = String::with_capacity(RECORDS * 20);
    for i in 0..RECORDS {
        text.push_str(&line(i));
        text.push('\n');
    }
    std::fs::write(&input, &text).expect("write dataset");

    let cp = ControlPlane::start().await;
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;

    let mut config = signaling_config(
        &cp.endpoint(),
        TOKEN,
        json!({"records": {"plugin": "file", "settings": {"path": path_str(&input)}}}),
        json!({}),
    );
    config["stores"] = json!([{
        "name": "flows",
        "backend": "postgres",
        "settings": {"url": pg, "table": table}
    }]);
    config["signaling"]["store"] = json!("flows");
    config["signaling"]["replicas"] = json!({"ttl": "2s", "claimInterval": "200ms"});

    let a = Server::start(&config);
    let b = Server::start(&config);
    let dps_a = Dps::new(&a.api(), Some(TOKEN));
    let dps_b = Dps::new(&b.api(), Some(TOKEN));

    let process = unique("proc");
    let mut msg = flow_message(&process, "records", PUSH);
    msg["dataAddress"] = json!({
        "endpointType": PUSH,
        "endpoint": endpoint,
        "endpointProperties": [{"name": "authorization", "value": "receiver-token"}]
    });
    let started = dps_a.start(&msg).await;
    assert_eq!(started.status, 200, "{}", started.body);
    let id = started.id();

    // Kill A once the transfer is under way (some requests received, far from all).
    let deadline = tokio::time::Instant::now() + WAIT;
    while receiver.requests() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transfer did not start; logs of A:\n{}",
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_logs = a.logs();
    drop(a); // SIGKILL
    let before = receiver.requests();
    assert!(
        before < RECORDS / 8192,
        "the transfer ended before A was killed ({before} requests)"
    );
    assert_eq!(dps_b.state(&id).await, "STARTED");

    // B resumes it from the checkpoint and finishes it.
    let completed = cp.wait_for(&process, "completed", WAIT).await;
    assert_eq!(completed.body["state"], "COMPLETED", "{}", completed.body);
    dps_b.wait_state(&id, "COMPLETED", WAIT).await;

    let (distinct, total) = receiver.lines();
    let missing: Vec<usize> = (0..RECORDS)
        .filter(|i| !distinct.contains(&line(*i)))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "records lost, e.g. {missing:?}; A's logs:\n{a_logs}\nB's logs:\n{}",
        b.logs()
    );
    assert_eq!(distinct.len(), RECORDS, "nothing but the dataset arrived");
    assert!(total >= RECORDS);
    assert!(
        b.logs().contains("resuming a claimed flow"),
        "B resumed the flow through its lease; logs:\n{}",
        b.logs()
    );
    eprintln!(
        "replicas: {RECORDS} records, {before} requests before the kill, {} lines received \
         ({} duplicates after the checkpoint)",
        total,
        total - RECORDS
    );
    drop(b);
    drop_tables(&pg, &[&table]).await;
}
