//! The remote watch of `sluice serve` (`GET /v1/watch/{store}`, server-sent events), through the
//! real binary and the SDK's client: resume after a dropped connection (the server is killed and
//! restarted on its durable redb store) with every event seen exactly once, resume with
//! `Last-Event-ID` in the middle of a commit, and the error answers.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use sluice_sdk::watch_client::{RemoteEvent, SseParser, WatchClient, WatchClientOptions};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A running `sluice serve`; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts the binary on `listen` and waits for its "state API on http://..." line.
    fn start(config: &Path, data_dir: &Path, listen: &str) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sluice serve did not come up; stderr:\n{}", seen.join("\n"));
            };
            if let Some(rest) = line.split("state API on http://").nth(1) {
                let address = rest.split_whitespace().next().expect("address");
                // Keep draining stderr so the server never blocks on it.
                std::thread::spawn(move || for _ in rx.iter() {});
                return Server {
                    child,
                    url: format!("http://{address}"),
                };
            }
            seen.push(line);
        }
    }

    /// `host:port`.
    fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// Kills the process (SIGKILL): every connection drops at once.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("serve.yaml");
    std::fs::write(&path, text).expect("config written");
    path
}

const REDB_CONFIG: &str =
    "stores:\n  - name: main\n    backend: redb\nsignaling:\n  enabled: false\n";

async fn put(url: &str, key: &str, value: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1.0/state/main"))
        .json(&json!([{ "key": key, "value": value }]))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 204, "{:?}", resp.text().await);
}

/// One commit changing every key of `keys`.
async fn put_in_one_commit(url: &str, keys: &[&str]) {
    let ops: Vec<_> = keys
        .iter()
        .map(|k| json!({"operation": "upsert", "request": {"key": k, "value": format!("tx-{k}")}}))
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1.0/state/main/transaction"))
        .json(&json!({ "operations": ops }))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 204, "{:?}", resp.text().await);
}

async fn delete(url: &str, key: &str) {
    let resp = reqwest::Client::new()
        .delete(format!("{url}/v1.0/state/main/{key}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 204);
}

/// The next event, within a minute.
async fn next(w: &mut sluice_sdk::watch_client::RemoteWatch) -> RemoteEvent {
    tokio::time::timeout(Duration::from_secs(60), w.next())
        .await
        .expect("an event in time")
        .expect("the watch goes on")
        .expect("no watch error")
}

/// `(op, key, revision)` of a change.
fn change(e: &RemoteEvent) -> (String, String, u64) {
    match e {
        RemoteEvent::Put { key, revision, .. } => ("put".into(), key.clone(), *revision),
        RemoteEvent::Delete { key, revision, .. } => ("delete".into(), key.clone(), *revision),
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_a_dropped_connection_with_every_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), REDB_CONFIG);
    let server = Server::start(&config, dir.path(), "127.0.0.1:0");
    let url = server.url.clone();
    let address = server.address();
    for i in 0..5 {
        put(&url, &format!("w/before-{i}"), "x").await;
    }
    put(&url, "other/not-watched", "x").await;

    let options = WatchClientOptions {
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..WatchClientOptions::default()
    };
    let client = WatchClient::new(&url, "main", vec!["w/".into()], options).expect("client");
    let cancel = CancellationToken::new();
    let mut watch = client.watch(None, cancel.clone());
    match next(&mut watch).await {
        RemoteEvent::Resync { entries, .. } => {
            let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "w/before-0",
                    "w/before-1",
                    "w/before-2",
                    "w/before-3",
                    "w/before-4"
                ]
            );
        }
        other => panic!("expected a resync first, got {other:?}"),
    }

    // Phase 1: single writes and one commit of three keys.
    let mut expected: Vec<(String, String)> = Vec::new();
    for i in 0..10 {
        let key = format!("w/a-{i}");
        put(&url, &key, &format!("v{i}")).await;
        put(&url, "other/x", "ignored").await;
        expected.push(("put".into(), key));
    }
    put_in_one_commit(&url, &["w/tx-1", "w/tx-2", "w/tx-3"]).await;
    for k in ["w/tx-1", "w/tx-2", "w/tx-3"] {
        expected.push(("put".into(), k.into()));
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.push(change(&next(&mut watch).await));
    }

    // The connection drops: the server dies. It comes back on the same address and store.
    server.kill();
    let server = Server::start(&config, dir.path(), &address);
    for i in 0..10 {
        let key = format!("w/b-{i}");
        put(&server.url, &key, "after").await;
        expected.push(("put".into(), key));
    }
    delete(&server.url, "w/a-0").await;
    expected.push(("delete".into(), "w/a-0".into()));
    while seen.len() < expected.len() {
        seen.push(change(&next(&mut watch).await));
    }
    assert!(watch.reconnects() >= 1, "the client must have reconnected");
    let got: Vec<(String, String)> = seen
        .iter()
        .map(|(o, k, _)| (o.clone(), k.clone()))
        .collect();
    assert_eq!(got, expected, "every change exactly once, in order");
    let revisions: Vec<u64> = seen.iter().map(|c| c.2).collect();
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "{revisions:?}");
    // The three changes of the transaction share one revision.
    assert_eq!(revisions[10], revisions[12]);
    assert_eq!(watch.last_revision(), revisions.last().copied());

    // Nothing more is pending: a new write is the very next event.
    put(&server.url, "w/last", "z").await;
    assert_eq!(
        change(&next(&mut watch).await).1,
        "w/last",
        "no duplicate after the reconnect"
    );
    cancel.cancel();
}

/// The raw SSE frames of one connection, until `count` events are read.
async fn frames(
    url: &str,
    last_event_id: Option<&str>,
    count: usize,
) -> Vec<sluice_sdk::watch_client::SseFrame> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let mut resp = req.send().await.expect("answer");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut parser = SseParser::default();
    let mut out = Vec::new();
    while out.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
            .await
            .expect("data in time")
            .expect("readable")
            .expect("not ended");
        out.extend(parser.push(&chunk));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_inside_a_commit_and_errors_are_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), REDB_CONFIG);
    let server = Server::start(&config, dir.path(), "127.0.0.1:0");
    let url = server.url.clone();
    put(&url, "k/0", "zero").await;
    put_in_one_commit(&url, &["k/1", "k/2", "k/3"]).await;
    put(&url, "k/4", "four").await;

    let watch_url = format!("{url}/v1/watch/main?prefix=k/");
    let all = frames(&watch_url, None, 1).await;
    assert_eq!(all[0].event, "resync");
    let resync: serde_json::Value = serde_json::from_str(&all[0].data).unwrap();
    assert_eq!(resync["entries"].as_array().unwrap().len(), 5);

    // From the first revision: the changes after it, the commit's later changes with `R.n` ids.
    let first = frames(&format!("{watch_url}&fromRevision=0"), None, 5).await;
    let ids: Vec<String> = first.iter().map(|f| f.id.clone().unwrap()).collect();
    let r = ids[1].clone();
    assert_eq!(ids[2], format!("{r}.2"));
    assert_eq!(ids[3], format!("{r}.3"));
    let data: serde_json::Value = serde_json::from_str(&first[0].data).unwrap();
    assert_eq!(data["key"], "k/0");
    assert_eq!(data["value"], "\"zero\"");
    assert_eq!(data["encoding"], "utf8");
    assert!(first.iter().all(|f| f.event == "put"));

    // Resume after the commit's second change: its third comes next, then k/4. Last-Event-ID
    // wins over fromRevision.
    let resumed = frames(
        &format!("{watch_url}&fromRevision=0"),
        Some(&format!("{r}.2")),
        2,
    )
    .await;
    let keys: Vec<String> = resumed
        .iter()
        .map(|f| serde_json::from_str::<serde_json::Value>(&f.data).unwrap()["key"].to_string())
        .collect();
    assert_eq!(keys, ["\"k/3\"", "\"k/4\""]);
    assert_eq!(resumed[0].id.as_deref(), Some(format!("{r}.3").as_str()));

    // Unknown store: 404 JSON; bad Last-Event-ID: 400.
    let resp = reqwest::get(format!("{url}/v1/watch/nope")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_NOT_FOUND");
    let resp = reqwest::Client::new()
        .get(&watch_url)
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_a_change_feed_is_501() {
    let Ok(redis) = std::env::var("SLUICE_TEST_REDIS_URL") else {
        eprintln!("skipped: SLUICE_TEST_REDIS_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &format!(
            "stores:\n  - name: r\n    backend: redis\n    settings:\n      url: '{redis}'\n      \
             keyPrefix: 'watch-sse-501-{}:'\nsignaling:\n  enabled: false\n",
            std::process::id()
        ),
    );
    let server = Server::start(&config, dir.path(), "127.0.0.1:0");
    let resp = reqwest::get(format!("{}/v1/watch/r?prefix=a", server.url))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        eprintln!("the redis store has a change feed now: nothing to check");
        return;
    }
    assert_eq!(status, 501);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_STATE_STORE_NOT_SUPPORTED");
}
