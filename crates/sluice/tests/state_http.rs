//! `sluice serve` over real HTTP: Dapr's state API on the embedded, memory, redb, PostgreSQL and
//! Redis stores, its status codes and headers, bad input (never a 500), configuration files, and
//! the binary itself (start, serve, SIGTERM, restart).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sluice::serve_config::{self, ServeConfig};
use sluice::server::{self, NamedStore, Stores};
use sluice_state::{
    DeleteRequest, Features, Item, MemoryStore, RetryPattern, RetryPolicy, SetRequest, StateError,
    Store, TxOperation,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in this process on a free port.
struct TestServer {
    base: String,
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), server::ServeError>>>,
}

impl TestServer {
    /// Starts a server for `config` on 127.0.0.1:0.
    async fn start(config: ServeConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve(&config, listener, async {
                let _ = rx.await;
            })
            .await
        });
        TestServer {
            base,
            client: Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a server for stores built by the test.
    async fn with_stores(stores: Stores) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            Arc::new(stores),
            serve_config::HttpLimits::default(),
            listener,
            async {
                let _ = rx.await;
            },
        ));
        TestServer {
            base,
            client: Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn save(&self, store: &str, items: Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1.0/state/{store}")))
            .json(&items)
            .send()
            .await
            .expect("save")
    }

    async fn get(&self, store: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/v1.0/state/{store}/{key}")))
            .send()
            .await
            .expect("get")
    }

    async fn etag(&self, store: &str, key: &str) -> String {
        let r = self.get(store, key).await;
        assert_eq!(r.status(), StatusCode::OK, "{key} should exist");
        header(&r, "etag").expect("an ETag header")
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("post")
    }

    /// Stops the server and checks it ended cleanly.
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ended cleanly");
        }
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Reads an error answer and checks its shape: a 4xx with `errorCode` and `message`.
async fn client_error(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let body: Value = r.json().await.expect("a JSON error body");
    let code = body["errorCode"].as_str().expect("errorCode").to_string();
    let message = body["message"].as_str().expect("message").to_string();
    assert!(!message.is_empty(), "empty message for {code}");
    (status, code, message)
}

/// A server with the default configuration: the embedded `statestore` in a fresh directory.
async fn embedded() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(ServeConfig::embedded(dir.path())).await;
    (server, dir)
}

/// A configuration from YAML text, with the data directory `dir`.
fn config(text: &str, dir: &Path) -> ServeConfig {
    serve_config::parse("serve.yaml", text, |name| std::env::var(name).ok())
        .expect("valid configuration")
        .resolve(None, dir.to_path_buf())
}

#[tokio::test]
async fn health_and_metadata_answer() {
    let (s, _dir) = embedded().await;
    let r = s
        .client
        .get(s.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .client
        .get(s.url("/v1.0/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s
        .client
        .get(s.url("/v1.0/metadata"))
        .send()
        .await
        .expect("metadata");
    assert_eq!(r.status(), StatusCode::OK);
    let m: Value = r.json().await.expect("json");
    assert_eq!(m["components"][0]["name"], "statestore");
    assert_eq!(m["components"][0]["type"], "state.redb");
    let caps = m["components"][0]["capabilities"].as_array().expect("caps");
    assert!(caps.contains(&json!("ETAG")), "{caps:?}");
    s.stop().await;
}

#[tokio::test]
async fn values_round_trip_as_dapr_returns_them() {
    let (s, _dir) = embedded().await;
    let r = s
        .save(
            "statestore",
            json!([
                {"key": "obj", "value": {"name": "Luke", "age": 19, "tags": ["jedi", null]}},
                {"key": "str", "value": "DeathStar"},
                {"key": "num", "value": 42},
                {"key": "bool", "value": true},
                {"key": "empty", "value": ""},
                {"key": "jsonish", "value": "{\"a\":1}"},
                {"key": "nothing", "value": null}
            ]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for (key, expected) in [
        ("obj", r#"{"name":"Luke","age":19,"tags":["jedi",null]}"#),
        ("str", r#""DeathStar""#),
        ("num", "42"),
        ("bool", "true"),
        ("empty", r#""""#),
        ("jsonish", r#""{\"a\":1}""#),
        ("nothing", "null"),
    ] {
        let r = s.get("statestore", key).await;
        assert_eq!(r.status(), StatusCode::OK, "{key}");
        assert_eq!(
            header(&r, "content-type").as_deref(),
            Some("application/json")
        );
        let etag = header(&r, "etag").expect("ETag header");
        assert!(!etag.is_empty());
        assert_eq!(r.text().await.expect("body"), expected, "{key}");
    }
    // A missing key: 204, no body, no ETag.
    let r = s.get("statestore", "never-written").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(header(&r, "etag").is_none());
    // Keys with characters that need escaping in a URL.
    let r = s
        .save("statestore", json!([{"key": "a/b c?d", "value": 1}]))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s.get("statestore", "a%2Fb%20c%3Fd").await;
    assert_eq!(r.status(), StatusCode::OK);
    // PUT saves too, as in Dapr.
    let r = s
        .client
        .put(s.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "put", "value": "p"}]))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test]
async fn etags_guard_saves_and_deletes() {
    let (s, _dir) = embedded().await;
    s.save("statestore", json!([{"key": "k", "value": "v1"}]))
        .await;
    let e1 = s.etag("statestore", "k").await;

    // A stale ETag: 409, the value is unchanged.
    let r = s
        .save(
            "statestore",
            json!([{"key": "k", "value": "v2", "etag": format!("{e1}9")}]),
        )
        .await;
    let (status, code, _) = client_error(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "ERR_STATE_SAVE")
    );
    assert_eq!(
        s.get("statestore", "k").await.text().await.expect("body"),
        r#""v1""#
    );

    // A malformed ETag: 400.
    let r = s
        .save(
            "statestore",
            json!([{"key": "k", "value": "v2", "etag": "not-an-etag"}]),
        )
        .await;
    let (status, code, _) = client_error(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "ERR_STATE_SAVE")
    );

    // The right ETag: saved, with a new ETag.
    let r = s
        .save(
            "statestore",
            json!([{"key": "k", "value": "v2", "etag": e1}]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let e2 = s.etag("statestore", "k").await;
    assert_ne!(e1, e2);

    // Delete with a stale If-Match: 409; malformed: 400; right: 204.
    let del = |etag: &str| {
        s.client
            .delete(s.url("/v1.0/state/statestore/k"))
            .header("If-Match", etag)
            .send()
    };
    let (status, code, _) = client_error(del(&e1).await.expect("delete")).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "ERR_STATE_DELETE")
    );
    let (status, _, _) = client_error(del("garbage").await.expect("delete")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(s.get("statestore", "k").await.status(), StatusCode::OK);
    // Quoted, as HTTP clients send ETags, works too.
    let r = del(&format!("\"{e2}\"")).await.expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.get("statestore", "k").await.status(),
        StatusCode::NO_CONTENT
    );

    // Deleting a missing key without an ETag is not an error.
    let r = s
        .client
        .delete(s.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test]
async fn first_write_wins_only_for_new_keys() {
    let (s, _dir) = embedded().await;
    let first = |key: &str, value: &str, etag: Option<&str>| {
        let mut item =
            json!({"key": key, "value": value, "options": {"concurrency": "first-write"}});
        if let Some(e) = etag {
            item["etag"] = json!(e);
        }
        s.save("statestore", json!([item]))
    };
    assert_eq!(
        first("fw", "a", None).await.status(),
        StatusCode::NO_CONTENT
    );
    let (status, _, _) = client_error(first("fw", "b", None).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // An empty ETag counts as none.
    let (status, _, _) = client_error(first("fw", "b", Some("")).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let e = s.etag("statestore", "fw").await;
    assert_eq!(
        first("fw", "c", Some(&e)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("statestore", "fw").await.text().await.expect("body"),
        r#""c""#
    );
    // Last-write (the default) overwrites.
    let r = s
        .save("statestore", json!([{"key": "fw", "value": "d", "options": {"concurrency": "last-write", "consistency": "strong"}}]))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test]
async fn ttl_is_reported_and_items_expire() {
    let (s, _dir) = embedded().await;
    let before = SystemTime::now();
    let r = s
        .save(
            "statestore",
            json!([
                {"key": "short", "value": 1, "metadata": {"ttlInSeconds": "1"}},
                {"key": "long", "value": 2, "metadata": {"ttlInSeconds": "3600"}},
                {"key": "plain", "value": 3}
            ]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let r = s.get("statestore", "long").await;
    let expire = header(&r, "metadata.ttlExpireTime").expect("ttlExpireTime header");
    let at = humantime::parse_rfc3339(&expire).expect("RFC 3339");
    let lo = before + Duration::from_secs(3600) - Duration::from_secs(5);
    let hi = SystemTime::now() + Duration::from_secs(3600) + Duration::from_secs(5);
    assert!(at >= lo && at <= hi, "ttlExpireTime {expire} out of range");
    assert!(header(
        &s.get("statestore", "plain").await,
        "metadata.ttlExpireTime"
    )
    .is_none());

    // Bulk get reports it in the item's metadata.
    let r = s
        .post(
            "/v1.0/state/statestore/bulk",
            json!({"keys": ["long", "plain"]}),
        )
        .await;
    let items: Value = r.json().await.expect("json");
    assert_eq!(items[0]["metadata"]["ttlExpireTime"], json!(expire));
    assert!(items[1].get("metadata").is_none());

    // -1 removes the TTL; URL metadata applies to every item.
    let r = s
        .save(
            "statestore",
            json!([{"key": "long", "value": 2, "metadata": {"ttlInSeconds": "-1"}}]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(header(&s.get("statestore", "long").await, "metadata.ttlExpireTime").is_none());
    let r = s
        .client
        .post(s.url("/v1.0/state/statestore?metadata.ttlInSeconds=600"))
        .json(&json!([{"key": "via-url", "value": 1}]))
        .send()
        .await
        .expect("save");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(header(
        &s.get("statestore", "via-url").await,
        "metadata.ttlExpireTime"
    )
    .is_some());

    // The 1-second item disappears (polled, bounded).
    let mut gone = false;
    for _ in 0..100 {
        if s.get("statestore", "short").await.status() == StatusCode::NO_CONTENT {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "an item with a 1 s TTL was still there after 10 s");
    s.stop().await;
}

#[tokio::test]
async fn bulk_get_reports_every_key_in_order() {
    let (s, _dir) = embedded().await;
    s.save(
        "statestore",
        json!([{"key": "a", "value": {"n": 1}}, {"key": "b", "value": "two"}]),
    )
    .await;
    let r = s
        .post(
            "/v1.0/state/statestore/bulk",
            json!({"keys": ["b", "missing", "a"], "parallelism": 2}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let items: Value = r.json().await.expect("json");
    let items = items.as_array().expect("array");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["key"], "b");
    assert_eq!(items[0]["data"], "two");
    assert!(items[0]["etag"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(items[1], json!({"key": "missing"}));
    assert_eq!(items[2]["data"], json!({"n": 1}));
    // No keys: an empty array.
    let r = s
        .post("/v1.0/state/statestore/bulk", json!({"keys": []}))
        .await;
    assert_eq!(r.json::<Value>().await.expect("json"), json!([]));
    s.stop().await;
}

#[tokio::test]
async fn transactions_apply_in_order_all_or_nothing() {
    let (s, _dir) = embedded().await;
    s.save("statestore", json!([{"key": "key1", "value": "v1"}]))
        .await;
    let tx = |ops: Value| {
        s.post(
            "/v1.0/state/statestore/transaction",
            json!({"operations": ops}),
        )
    };
    let r = tx(json!([
        {"operation": "delete", "request": {"key": "key1"}},
        {"operation": "upsert", "request": {"key": "key2", "value": "v2"}},
        {"operation": "delete", "request": {"key": "key2"}},
        {"operation": "upsert", "request": {"key": "key3", "value": "v3"}}
    ]))
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.get("statestore", "key1").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("statestore", "key2").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("statestore", "key3")
            .await
            .text()
            .await
            .expect("body"),
        r#""v3""#
    );

    // A stale ETag in the second operation: 409 and nothing applied.
    let e3 = s.etag("statestore", "key3").await;
    let r = tx(json!([
        {"operation": "upsert", "request": {"key": "key4", "value": "v4"}},
        {"operation": "upsert", "request": {"key": "key3", "value": "x", "etag": format!("{e3}0")}}
    ]))
    .await;
    let (status, code, message) = client_error(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "ERR_STATE_TRANSACTION"),
        "{message}"
    );
    assert_eq!(
        s.get("statestore", "key4").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("statestore", "key3")
            .await
            .text()
            .await
            .expect("body"),
        r#""v3""#
    );

    // With the right ETag and a TTL, it applies.
    let r = tx(json!([
        {"operation": "upsert", "request": {"key": "key3", "value": "v3b", "etag": e3, "metadata": {"ttlInSeconds": "600"}}},
        {"operation": "delete", "request": {"key": "nope"}}
    ]))
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(header(&s.get("statestore", "key3").await, "metadata.ttlExpireTime").is_some());

    // No operations: nothing to do.
    assert_eq!(tx(json!([])).await.status(), StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test]
async fn queries_filter_sort_and_page() {
    let (s, _dir) = embedded().await;
    let people = json!([
        {"key": "p1", "value": {"person": {"org": "Dev", "id": 1}, "city": "Seattle"}},
        {"key": "p2", "value": {"person": {"org": "Ops", "id": 2}, "city": "Portland"}},
        {"key": "p3", "value": {"person": {"org": "Dev", "id": 3}, "city": "Boston"}},
        {"key": "p4", "value": {"person": {"org": "Dev", "id": 4}, "city": "Austin"}},
        {"key": "scalar", "value": 7}
    ]);
    assert_eq!(
        s.save("statestore", people).await.status(),
        StatusCode::NO_CONTENT
    );
    let q = |body: Value| s.post("/v1.0-alpha1/state/statestore/query", body);

    let r = q(json!({
        "filter": {"EQ": {"person.org": "Dev"}},
        "sort": [{"key": "person.id", "order": "DESC"}],
        "page": {"limit": 2}
    }))
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let page1: Value = r.json().await.expect("json");
    let keys: Vec<&str> = page1["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert_eq!(keys, ["p4", "p3"]);
    assert_eq!(page1["results"][0]["data"]["city"], "Austin");
    assert!(page1["results"][0]["etag"].as_str().is_some());
    let token = page1["token"].as_str().expect("a token for the next page");

    let r = q(json!({
        "filter": {"EQ": {"person.org": "Dev"}},
        "sort": [{"key": "person.id", "order": "DESC"}],
        "page": {"limit": 2, "token": token}
    }))
    .await;
    let page2: Value = r.json().await.expect("json");
    assert_eq!(page2["results"][0]["key"], "p1");
    assert_eq!(page2["results"].as_array().map(Vec::len), Some(1));

    let r = q(json!({"filter": {"OR": [{"EQ": {"city": "Boston"}}, {"IN": {"person.id": [2]}}]}}))
        .await;
    let both: Value = r.json().await.expect("json");
    assert_eq!(both["results"].as_array().map(Vec::len), Some(2));

    // Nothing matches: 204, as Dapr answers.
    let r = q(json!({"filter": {"EQ": {"city": "Atlantis"}}})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // A malformed filter: 400.
    let (status, _, _) = client_error(q(json!({"filter": {"LIKE": {"city": "B%"}}})).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test]
async fn an_unknown_store_is_a_400_naming_the_known_ones() {
    let (s, _dir) = embedded().await;
    let checks = [
        s.get("nostore", "k").await,
        s.save("nostore", json!([{"key": "k", "value": 1}])).await,
        s.post("/v1.0/state/nostore/bulk", json!({"keys": ["k"]}))
            .await,
        s.post("/v1.0/state/nostore/transaction", json!({"operations": []}))
            .await,
        s.post("/v1.0-alpha1/state/nostore/query", json!({})).await,
        s.client
            .delete(s.url("/v1.0/state/nostore/k"))
            .send()
            .await
            .expect("delete"),
    ];
    for r in checks {
        let (status, code, message) = client_error(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(code, "ERR_STATE_STORE_NOT_FOUND");
        assert!(
            message.contains("\"nostore\"") && message.contains("statestore"),
            "{message}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_4xx_with_a_json_error_never_a_500() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        "http:\n  maxValueBytes: 100\n  maxBodyBytes: 2000\n",
        dir.path(),
    );
    let s = TestServer::start(cfg).await;
    let save = "/v1.0/state/statestore";
    let raw = |method: reqwest::Method, path: &str, body: &'static str| {
        s.client
            .request(method, s.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    use reqwest::Method;
    let cases: Vec<(&str, reqwest::Response, StatusCode)> = vec![
        ("invalid JSON", raw(Method::POST, save, "[{\"key\": ").await.expect("send"), StatusCode::BAD_REQUEST),
        ("not an array", raw(Method::POST, save, "{\"key\":\"k\",\"value\":1}").await.expect("send"), StatusCode::BAD_REQUEST),
        ("no key", s.save("statestore", json!([{"value": 1}])).await, StatusCode::BAD_REQUEST),
        ("empty key", s.save("statestore", json!([{"key": "", "value": 1}])).await, StatusCode::BAD_REQUEST),
        ("numeric key", s.save("statestore", json!([{"key": 5, "value": 1}])).await, StatusCode::BAD_REQUEST),
        ("no value", s.save("statestore", json!([{"key": "k"}])).await, StatusCode::BAD_REQUEST),
        ("non-numeric TTL", s.save("statestore", json!([{"key": "k", "value": 1, "metadata": {"ttlInSeconds": "soon"}}])).await, StatusCode::BAD_REQUEST),
        ("fractional TTL", s.save("statestore", json!([{"key": "k", "value": 1, "metadata": {"ttlInSeconds": "1.5"}}])).await, StatusCode::BAD_REQUEST),
        ("negative TTL", s.save("statestore", json!([{"key": "k", "value": 1, "metadata": {"ttlInSeconds": "-2"}}])).await, StatusCode::BAD_REQUEST),
        ("TTL in the URL", s.client.post(s.url("/v1.0/state/statestore?metadata.ttlInSeconds=x")).json(&json!([{"key": "k", "value": 1}])).send().await.expect("send"), StatusCode::BAD_REQUEST),
        ("unknown concurrency", s.save("statestore", json!([{"key": "k", "value": 1, "options": {"concurrency": "second-write"}}])).await, StatusCode::BAD_REQUEST),
        ("unknown consistency", s.save("statestore", json!([{"key": "k", "value": 1, "options": {"consistency": "weak"}}])).await, StatusCode::BAD_REQUEST),
        ("bad retry policy", s.save("statestore", json!([{"key": "k", "value": 1, "options": {"retryPolicy": {"threshold": 999}}}])).await, StatusCode::BAD_REQUEST),
        ("malformed ETag", s.save("statestore", json!([{"key": "k", "value": 1, "etag": "x-y"}])).await, StatusCode::BAD_REQUEST),
        ("value over the limit", s.save("statestore", json!([{"key": "k", "value": "x".repeat(200)}])).await, StatusCode::PAYLOAD_TOO_LARGE),
        ("body over the limit", s.save("statestore", json!([{"key": "k", "value": 1, "pad": "x".repeat(3000)}])).await, StatusCode::PAYLOAD_TOO_LARGE),
        ("bulk: invalid JSON", raw(Method::POST, "/v1.0/state/statestore/bulk", "{keys").await.expect("send"), StatusCode::BAD_REQUEST),
        ("bulk: empty key", s.post("/v1.0/state/statestore/bulk", json!({"keys": ["a", ""]})).await, StatusCode::BAD_REQUEST),
        ("bulk: keys not strings", s.post("/v1.0/state/statestore/bulk", json!({"keys": [1]})).await, StatusCode::BAD_REQUEST),
        ("transaction: invalid JSON", raw(Method::POST, "/v1.0/state/statestore/transaction", "nope").await.expect("send"), StatusCode::BAD_REQUEST),
        ("transaction: unknown operation", s.post("/v1.0/state/statestore/transaction", json!({"operations": [{"operation": "merge", "request": {"key": "k", "value": 1}}]})).await, StatusCode::BAD_REQUEST),
        ("transaction: empty key", s.post("/v1.0/state/statestore/transaction", json!({"operations": [{"operation": "delete", "request": {"key": ""}}]})).await, StatusCode::BAD_REQUEST),
        ("transaction: bad TTL", s.post("/v1.0/state/statestore/transaction", json!({"operations": [{"operation": "upsert", "request": {"key": "k", "value": 1, "metadata": {"ttlInSeconds": "ten"}}}]})).await, StatusCode::BAD_REQUEST),
        ("transaction: malformed ETag", s.post("/v1.0/state/statestore/transaction", json!({"operations": [{"operation": "delete", "request": {"key": "k", "etag": "zz"}}]})).await, StatusCode::BAD_REQUEST),
        ("query: invalid JSON", raw(Method::POST, "/v1.0-alpha1/state/statestore/query", "{").await.expect("send"), StatusCode::BAD_REQUEST),
        ("query: not an object", s.post("/v1.0-alpha1/state/statestore/query", json!([1])).await, StatusCode::BAD_REQUEST),
        ("get: unknown consistency", s.client.get(s.url("/v1.0/state/statestore/k?consistency=sometimes")).send().await.expect("send"), StatusCode::BAD_REQUEST),
        ("delete: malformed If-Match", s.client.delete(s.url("/v1.0/state/statestore/k")).header("If-Match", "abc").send().await.expect("send"), StatusCode::BAD_REQUEST),
        ("delete: unknown concurrency", s.client.delete(s.url("/v1.0/state/statestore/k?concurrency=x")).send().await.expect("send"), StatusCode::BAD_REQUEST),
        ("delete: bad retry threshold", s.client.delete(s.url("/v1.0/state/statestore/k?retryThreshold=many")).send().await.expect("send"), StatusCode::BAD_REQUEST),
        ("empty key in the path", s.client.get(s.url("/v1.0/state/statestore/")).send().await.expect("send"), StatusCode::BAD_REQUEST),
        ("empty key to delete", s.client.delete(s.url("/v1.0/state/statestore/")).send().await.expect("send"), StatusCode::BAD_REQUEST),
        ("POST on a key", s.post("/v1.0/state/statestore/somekey", json!({})).await, StatusCode::METHOD_NOT_ALLOWED),
        ("unknown route", s.client.get(s.url("/v2/state")).send().await.expect("send"), StatusCode::NOT_FOUND),
        ("wrong method", s.client.delete(s.url("/v1.0/state/statestore")).send().await.expect("send"), StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (what, response, expected) in cases {
        let (status, code, message) = client_error(response).await;
        assert_eq!(status, expected, "{what}: {code}: {message}");
        assert!(status.is_client_error(), "{what}");
        assert!(code.starts_with("ERR_"), "{what}: {code}");
    }
    // Nothing of the rejected saves was written.
    assert_eq!(
        s.get("statestore", "k").await.status(),
        StatusCode::NO_CONTENT
    );
    s.stop().await;
}

#[tokio::test]
async fn a_bad_item_rejects_the_whole_save_before_anything_is_written() {
    let (s, _dir) = embedded().await;
    let r = s
        .save(
            "statestore",
            json!([
                {"key": "good", "value": 1},
                {"key": "bad", "value": 2, "metadata": {"ttlInSeconds": "abc"}}
            ]),
        )
        .await;
    let (status, code, message) = client_error(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST")
    );
    assert!(message.contains("\"bad\""), "{message}");
    assert_eq!(
        s.get("statestore", "good").await.status(),
        StatusCode::NO_CONTENT
    );
    s.stop().await;
}

#[tokio::test]
async fn a_configuration_with_memory_and_redb_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        "stores:\n  - name: cache\n    backend: memory\n  - name: durable\n    backend: redb\n    settings:\n      path: sub/durable.redb\nstate:\n  store: durable\n",
        dir.path(),
    );
    let s = TestServer::start(cfg).await;
    for store in ["cache", "durable"] {
        let r = s
            .save(store, json!([{"key": "k", "value": {"in": store}}]))
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{store}");
        let r = s.get(store, "k").await;
        assert_eq!(r.json::<Value>().await.expect("json"), json!({"in": store}));
    }
    // The default store is not there when stores are declared.
    let (status, _, message) = client_error(s.get("statestore", "k").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("cache, durable"), "{message}");
    assert!(dir.path().join("sub/durable.redb").exists());
    s.stop().await;
}

/// A store that fails the first `failures` calls of every kind with a transient error.
struct Flaky {
    inner: MemoryStore,
    failures: usize,
    calls: AtomicUsize,
}

impl Flaky {
    fn fail(&self) -> Result<(), StateError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            Err(StateError::Backend {
                backend: "flaky",
                message: "connection reset".into(),
                transient: true,
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        self.fail()?;
        self.inner.get(key).await
    }
    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        self.fail()?;
        self.inner.set(req).await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.fail()?;
        self.inner.delete(req).await
    }
    async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        self.fail()?;
        self.inner.multi(ops).await
    }
}

fn flaky_server_stores(failures: usize, retry: RetryPolicy) -> (Stores, Arc<Flaky>) {
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(),
        failures,
        calls: AtomicUsize::new(0),
    });
    let store: Arc<dyn Store> = flaky.clone();
    let stores = Stores::from_parts(
        vec![NamedStore {
            name: "flaky".into(),
            backend: serve_config::BackendKind::Memory,
            store: Arc::clone(&store),
            retry,
        }],
        store,
    );
    (stores, flaky)
}

#[tokio::test]
async fn transient_backend_errors_are_retried_with_the_policy() {
    let quick = RetryPolicy::new(Duration::from_millis(1), 3, RetryPattern::Exponential);
    // Two failures, three attempts: every call succeeds in the end.
    let (stores, flaky) = flaky_server_stores(2, quick);
    let s = TestServer::with_stores(stores).await;
    let r = s.save("flaky", json!([{"key": "k", "value": 1}])).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    assert_eq!(s.get("flaky", "k").await.status(), StatusCode::OK);
    s.stop().await;

    // Four failures: the store's three attempts are not enough (500, the backend failed)...
    let (stores, _) = flaky_server_stores(4, quick);
    let s = TestServer::with_stores(stores).await;
    let r = s.save("flaky", json!([{"key": "k", "value": 1}])).await;
    let (status, code, _) = client_error_any(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "ERR_STATE_SAVE")
    );
    // ...but a request's own retryPolicy (Dapr's pre-1.0 option) may ask for more.
    let r = s
        .save(
            "flaky",
            json!([{"key": "k", "value": 1, "options": {"retryPolicy": {"interval": "1ms", "threshold": 5, "pattern": "linear"}}}]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Deletes take theirs from URL parameters.
    let (stores, _) = flaky_server_stores(4, quick);
    let s2 = TestServer::with_stores(stores).await;
    let r = s2
        .client
        .delete(s2.url("/v1.0/state/flaky/k?retryThreshold=6&retryInterval=1ms"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s2.stop().await;
    s.stop().await;
}

/// Like [`client_error`] for any status.
async fn client_error_any(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let body: Value = r.json().await.expect("a JSON error body");
    (
        status,
        body["errorCode"].as_str().unwrap_or_default().to_string(),
        body["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn unsupported_operations_are_501_not_500() {
    // A store without transactions, queries or TTL.
    struct Plain(MemoryStore);
    #[async_trait]
    impl Store for Plain {
        fn name(&self) -> &'static str {
            "plain"
        }
        fn features(&self) -> Features {
            Features {
                etag: true,
                ..Features::default()
            }
        }
        async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
            self.0.get(key).await
        }
        async fn set(&self, req: SetRequest) -> Result<String, StateError> {
            self.0.set(req).await
        }
        async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
            self.0.delete(req).await
        }
    }
    let store: Arc<dyn Store> = Arc::new(Plain(MemoryStore::new()));
    let stores = Stores::from_parts(
        vec![NamedStore {
            name: "plain".into(),
            backend: serve_config::BackendKind::Memory,
            store: Arc::clone(&store),
            retry: serve_config::default_retry(),
        }],
        store,
    );
    let s = TestServer::with_stores(stores).await;
    let cases = [
        s.post("/v1.0/state/plain/transaction", json!({"operations": []}))
            .await,
        s.post("/v1.0-alpha1/state/plain/query", json!({})).await,
        s.save(
            "plain",
            json!([{"key": "k", "value": 1, "metadata": {"ttlInSeconds": "5"}}]),
        )
        .await,
    ];
    for r in cases {
        let (status, code, _) = client_error_any(r).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(code, "ERR_STATE_STORE_NOT_SUPPORTED");
    }
    // The TTL save wrote nothing.
    assert_eq!(s.get("plain", "k").await.status(), StatusCode::NO_CONTENT);
    s.stop().await;
}

/// A store whose reads wait until the test lets them finish.
struct Gated {
    inner: MemoryStore,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait]
impl Store for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        self.entered.notify_one();
        self.release.notified().await;
        self.inner.get(key).await
    }
    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        self.inner.set(req).await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.inner.delete(req).await
    }
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_refuses_new_ones() {
    let gated = Arc::new(Gated {
        inner: MemoryStore::new(),
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let store: Arc<dyn Store> = gated.clone();
    let stores = Stores::from_parts(
        vec![NamedStore {
            name: "gated".into(),
            backend: serve_config::BackendKind::Memory,
            store: Arc::clone(&store),
            retry: serve_config::default_retry(),
        }],
        store,
    );
    let mut s = TestServer::with_stores(stores).await;
    assert_eq!(
        s.save("gated", json!([{"key": "k", "value": "v"}]))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let client = s.client.clone();
    let url = s.url("/v1.0/state/gated/k");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    gated.entered.notified().await;

    // Stop while the read is in flight: the server waits for it.
    if let Some(tx) = s.stop.take() {
        let _ = tx.send(());
    }
    let task = s.task.take().expect("server task");
    // Shutdown has begun once the listener is closed: new connections are refused (polled,
    // bounded).
    let address = s.base.trim_start_matches("http://").to_string();
    let mut closed = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(&address).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        closed,
        "the listener still accepted connections after the stop request"
    );
    assert!(
        !task.is_finished(),
        "the server ended with a request in flight"
    );
    assert!(
        !in_flight.is_finished(),
        "the gated read answered before it was released"
    );
    gated.release.notify_one();
    let r = in_flight.await.expect("request task").expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), r#""v""#);
    task.await
        .expect("server task")
        .expect("server ended cleanly");
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL and Redis over HTTP (skipped when their URLs are not set).

/// Runs the HTTP scenario every backend must pass on store `store` of a running server; keys
/// start with `prefix` and are deleted afterwards.
async fn backend_scenario(s: &TestServer, store: &str, prefix: &str) {
    let k = |n: &str| format!("{prefix}{n}");
    let r = s
        .save(store, json!([{"key": k("a"), "value": {"x": 1}}, {"key": k("b"), "value": "two", "metadata": {"ttlInSeconds": "600"}}]))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "{store}: save");
    let r = s.get(store, &k("a")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = header(&r, "etag").expect("ETag");
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"x": 1}));
    assert!(header(&s.get(store, &k("b")).await, "metadata.ttlExpireTime").is_some());
    let r = s
        .save(
            store,
            json!([{"key": k("a"), "value": 2, "etag": format!("{etag}1")}]),
        )
        .await;
    assert_eq!(
        client_error(r).await.0,
        StatusCode::CONFLICT,
        "{store}: stale ETag"
    );
    let r = s
        .post(
            &format!("/v1.0/state/{store}/transaction"),
            json!({"operations": [
                {"operation": "upsert", "request": {"key": k("c"), "value": 3}},
                {"operation": "delete", "request": {"key": k("a"), "etag": etag}}
            ]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "{store}: transaction");
    let r = s
        .post(
            &format!("/v1.0/state/{store}/bulk"),
            json!({"keys": [k("a"), k("b"), k("c")]}),
        )
        .await;
    let items: Value = r.json().await.expect("json");
    assert!(items[0].get("data").is_none(), "{items}");
    assert_eq!(items[1]["data"], "two");
    assert_eq!(items[2]["data"], 3);
    for key in ["a", "b", "c"] {
        let r = s
            .client
            .delete(s.url(&format!("/v1.0/state/{store}/{}", k(key))))
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

#[tokio::test]
async fn postgres_store_over_http() {
    let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // One table shared by every run of this test; keys are unique per run and deleted after.
    let cfg = config(
        &format!(
            "stores:\n  - name: pg\n    backend: postgres\n    settings:\n      url: '{url}'\n      table: sluice_http_test\n"
        ),
        dir.path(),
    );
    let s = TestServer::start(cfg).await;
    backend_scenario(&s, "pg", &format!("http-{}-", unique())).await;
    s.stop().await;
}

#[tokio::test]
async fn redis_store_over_http() {
    let Ok(url) = std::env::var("SLUICE_TEST_REDIS_URL") else {
        eprintln!("skipped: SLUICE_TEST_REDIS_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // One key prefix (and so one version counter) shared by every run of this test; keys are
    // unique per run and deleted after.
    let cfg = config(
        &format!(
            "stores:\n  - name: cache\n    backend: redis\n    settings:\n      url: '{url}'\n      keyPrefix: 'sluice-http-test:'\n"
        ),
        dir.path(),
    );
    let s = TestServer::start(cfg).await;
    backend_scenario(&s, "cache", &format!("http-{}-", unique())).await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The binary.

/// A running `sluice serve` and the address it printed.
struct Binary {
    child: Child,
    base: String,
}

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("SLUICE_DATA_DIR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// Starts `sluice serve ARGS` and waits for the line announcing its address.
fn spawn_serve(args: &[&str]) -> Binary {
    let mut child = sluice()
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let base = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!(
                "sluice serve ended before listening; stderr:\n{}",
                seen.join("\n")
            );
        };
        if let Some(rest) = line.split("state API on ").nth(1) {
            break rest.split_whitespace().next().expect("address").to_string();
        }
        seen.push(line);
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Binary { child, base }
}

impl Binary {
    /// Sends SIGTERM and returns the exit code.
    fn terminate(mut self) -> Option<i32> {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a valid pid and signal has no memory effects.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill failed");
        self.child.wait().expect("wait").code()
    }
}

#[tokio::test]
async fn the_binary_serves_with_no_configuration_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path").to_string();
    let b = spawn_serve(&["--listen", "127.0.0.1:0", "--data-dir", &data]);
    let client = Client::new();
    let r = client
        .post(format!("{}/v1.0/state/statestore", b.base))
        .json(&json!([{"key": "persisted", "value": {"ok": true}}]))
        .send()
        .await
        .expect("save");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(b.terminate(), Some(0), "graceful stop exits 0");
    assert!(dir.path().join("state.redb").exists());

    // Restarted on the same directory, the value is still there.
    let b = spawn_serve(&["--listen", "127.0.0.1:0", "--data-dir", &data]);
    let r = client
        .get(format!("{}/v1.0/state/statestore/persisted", b.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"ok": true}));
    let r = client
        .get(format!("{}/healthz", b.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(b.terminate(), Some(0));
}

#[test]
fn an_unknown_configuration_key_is_reported_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("serve.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:0\nstores:\n  - name: a\n    backend: memory\n    sttings: {}\n",
    )
    .expect("write");
    let out = sluice()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}:5:5:", file.display()))
            && err.contains("unknown field `sttings`"),
        "{err}"
    );
}

#[test]
fn an_unreachable_backend_stops_the_start_naming_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in [
        ("redis", "redis://127.0.0.1:1"),
        ("postgres", "postgres://sluice@127.0.0.1:1/none"),
    ] {
        let file = dir.path().join(format!("{backend}.yaml"));
        std::fs::write(
            &file,
            format!(
                "listen: 127.0.0.1:0\nstores:\n  - name: remote\n    backend: {backend}\n    settings:\n      url: {url}\n      connectTimeout: 2s\n"
            ),
        )
        .expect("write");
        let out = sluice()
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{backend}: {err}");
        assert!(
            err.contains("state store \"remote\"") && err.contains(&format!("({backend} backend)")),
            "{backend}: {err}"
        );
    }
}
