//! The `http` connector against in-process axum servers on 127.0.0.1 (no external service): the
//! acceptance kit for the poller, the webhook receiver and the destination; backpressure, the
//! `acked` response mode, retries with backoff, nacks of 4xx answers, and errors naming settings.
#![cfg(feature = "http")]

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use sluice_connectors::http::{HttpPlugin, HttpSource};
use sluice_sdk::acceptance::{
    destination_acceptance, source_acceptance, DestinationFixture, Expected, SourceCapabilities,
    SourceFixture, Written,
};
use sluice_sdk::spec::validate_settings;
use sluice_sdk::{Data, Destination, Plugin, Position, Record, Settings, Source};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

mod support;
use support::{records, settings};

/// Serves `router` on a free port of 127.0.0.1; returns its address.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

async fn configured_source(pairs: &[(&str, &str)]) -> HttpSource {
    let spec = HttpPlugin.specification();
    let resolved = validate_settings(&spec.source_params, &settings(pairs)).expect("valid");
    let mut src = HttpSource::new();
    src.configure(&resolved).await.expect("configure");
    src
}

async fn destination(pairs: &[(&str, &str)]) -> Box<dyn Destination> {
    support::validated_destination(&HttpPlugin, pairs).await
}

// ---- poll ------------------------------------------------------------------------------------

/// A feed of items `{"id": n, "text": ...}` answering `GET /items?since=N` with the newer ones,
/// newest first (the poller must sort by cursor).
#[derive(Clone, Default)]
struct Feed {
    items: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
}

#[derive(serde::Deserialize)]
struct Since {
    since: Option<u64>,
}

async fn feed(State(feed): State<Feed>, Query(q): Query<Since>) -> Json<Value> {
    feed.requests.fetch_add(1, Ordering::SeqCst);
    let items = feed.items.lock().map(|i| i.clone()).unwrap_or_default();
    let mut newer: Vec<Value> = items
        .into_iter()
        .filter(|i| q.since.is_none_or(|s| i["id"].as_u64().unwrap_or(0) > s))
        .collect();
    newer.reverse();
    Json(json!({ "data": newer, "next": null }))
}

struct PollFx {
    feed: Feed,
}

#[async_trait]
impl SourceFixture for PollFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(HttpPlugin)
    }

    async fn settings(&mut self) -> Settings {
        self.feed = Feed::default();
        let addr = serve(
            Router::new()
                .route("/items", get(feed))
                .with_state(self.feed.clone()),
        )
        .await;
        settings(&[
            ("url", &format!("http://{addr}/items")),
            ("items", "/data"),
            ("cursor.field", "/id"),
            ("cursor.param", "since"),
            ("pollingPeriod", "50ms"),
        ])
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        let mut items = self.feed.items.lock().expect("items");
        (0..n)
            .map(|_| {
                let id = items.len() + 1;
                let item = json!({ "id": id, "text": format!("item {id}") });
                items.push(item.clone());
                let Value::Object(map) = item else {
                    unreachable!("an object literal")
                };
                Expected::After(Data::Structured(map))
            })
            .collect()
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (settings(&[("mode", "poll")]), "url"),
            (
                settings(&[("url", "http://127.0.0.1/"), ("pollingPeriod", "0s")]),
                "pollingPeriod",
            ),
            (
                settings(&[("url", "http://127.0.0.1/"), ("headers", "broken")]),
                "headers",
            ),
            (settings(&[("url", "ftp://127.0.0.1/")]), "url"),
        ]
    }

    fn capabilities(&self) -> SourceCapabilities {
        support::LIVE_AND_RESUMABLE
    }
}

#[tokio::test]
async fn poll_source_passes_the_acceptance_kit() {
    let report = source_acceptance(PollFx {
        feed: Feed::default(),
    })
    .await;
    assert!(report.skipped.is_empty(), "{report:?}");
}

#[tokio::test]
async fn poll_without_cursor_dedupes_by_etag_and_resumes_within_a_version() {
    #[derive(Clone, Default)]
    struct Doc {
        version: Arc<AtomicUsize>,
        conditional_hits: Arc<AtomicUsize>,
    }
    async fn doc(State(d): State<Doc>, headers: HeaderMap) -> Response {
        let v = d.version.load(Ordering::SeqCst);
        let etag = format!("\"v{v}\"");
        if headers.get("if-none-match").and_then(|h| h.to_str().ok()) == Some(etag.as_str()) {
            d.conditional_hits.fetch_add(1, Ordering::SeqCst);
            return StatusCode::NOT_MODIFIED.into_response();
        }
        let body = json!([format!("v{v} a"), format!("v{v} b"), format!("v{v} c")]);
        ([("etag", etag)], Json(body)).into_response()
    }
    let d = Doc::default();
    let addr = serve(Router::new().route("/doc", get(doc)).with_state(d.clone())).await;
    let url = format!("http://{addr}/doc");
    let conf = [("url", url.as_str()), ("pollingPeriod", "20ms")];
    let mut src = configured_source(&conf).await;
    src.open(None).await.expect("open");
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while got.len() < 2 {
        assert!(Instant::now() < until);
        got.extend(src.read(2 - got.len()).await.expect("read").records);
    }
    // Unchanged document: nothing new, however often it is polled.
    let mut rest = Vec::new();
    while d.conditional_hits.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < until, "no conditional request was made");
        rest.extend(src.read(10).await.expect("read").records);
    }
    assert_eq!(rest.len(), 1, "only the third item of the first version");
    let stopped = src.stop().await.expect("stop");
    assert_eq!(stopped, Some(rest[0].position.clone()));
    src.teardown().await.expect("teardown");

    // Resume after the second item of the same version: only the third comes back.
    let mut again = configured_source(&conf).await;
    again.open(Some(&got[1].position)).await.expect("open");
    let first = again.read(10).await.expect("read").records;
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].payload.after.as_ref().map(Data::to_bytes),
        Some(Bytes::from("v0 c"))
    );
    // A new version yields all of its items.
    d.version.store(1, Ordering::SeqCst);
    let mut fresh = Vec::new();
    while fresh.len() < 3 {
        assert!(Instant::now() < until + Duration::from_secs(5));
        fresh.extend(again.read(10).await.expect("read").records);
    }
    let texts: Vec<Bytes> = fresh
        .iter()
        .map(|r| r.payload.after.as_ref().expect("after").to_bytes())
        .collect();
    assert_eq!(
        texts,
        vec![
            Bytes::from("v1 a"),
            Bytes::from("v1 b"),
            Bytes::from("v1 c")
        ]
    );
    again.teardown().await.expect("teardown");
}

#[tokio::test]
async fn poll_errors_name_the_setting() {
    async fn locked() -> Response {
        (StatusCode::UNAUTHORIZED, "token expired").into_response()
    }
    let addr = serve(Router::new().route("/x", get(locked))).await;
    let mut src = configured_source(&[("url", &format!("http://{addr}/x"))]).await;
    let err = src.open(None).await.expect_err("401");
    let text = err.to_string();
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("setting `headers`"), "{text}");
    assert!(text.contains("token expired"), "{text}");

    let missing = format!("http://{addr}/nothing-here");
    let mut src = configured_source(&[("url", &missing)]).await;
    let err = src.open(None).await.expect_err("404");
    assert!(err.to_string().contains("setting `url`"), "{err}");

    let nobody = format!("http://127.0.0.1:{}/", free_port());
    let mut src = configured_source(&[("url", &nobody), ("connect.timeout", "500ms")]).await;
    let started = Instant::now();
    let err = src.open(None).await.expect_err("connection refused");
    assert!(err.to_string().contains("setting `url`"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it retried"
    );
}

// ---- webhook ---------------------------------------------------------------------------------

/// Sends bodies to a webhook in order, each retried (connection refused, 503) until accepted.
fn sender(url: String) -> mpsc::UnboundedSender<Bytes> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        while let Some(body) = rx.recv().await {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                if matches!(&sent, Ok(r) if r.status().is_success()) {
                    break;
                }
                sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tx
}

struct WebhookFx {
    sender: Option<mpsc::UnboundedSender<Bytes>>,
    produced: usize,
}

#[async_trait]
impl SourceFixture for WebhookFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(HttpPlugin)
    }

    async fn settings(&mut self) -> Settings {
        let port = free_port();
        self.sender = Some(sender(format!("http://127.0.0.1:{port}/hook")));
        self.produced = 0;
        settings(&[
            ("mode", "webhook"),
            ("address", &format!("127.0.0.1:{port}")),
            ("path", "/hook"),
        ])
    }

    async fn produce(&mut self, n: usize) -> Vec<Expected> {
        let texts: Vec<String> = (self.produced..self.produced + n)
            .map(|i| format!("event {i}"))
            .collect();
        self.produced += n;
        let body = serde_json::to_vec(&texts).expect("json");
        if let Some(s) = &self.sender {
            s.send(Bytes::from(body)).expect("sender alive");
        }
        texts
            .into_iter()
            .map(|t| Expected::Payload(Bytes::from(t)))
            .collect()
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (
                settings(&[("mode", "webhook"), ("address", "nowhere")]),
                "address",
            ),
            (
                settings(&[("mode", "webhook"), ("queue.size", "0")]),
                "queue.size",
            ),
            (settings(&[("mode", "webhook"), ("path", "hook")]), "path"),
            (
                settings(&[("mode", "webhook"), ("response", "later")]),
                "response",
            ),
        ]
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            live: true,
            snapshot: false,
            end_of_stream: false,
            // A webhook cannot be replayed: records queued when a source stops are gone.
            resume: false,
            self_producing: false,
        }
    }
}

#[tokio::test]
async fn webhook_source_passes_the_acceptance_kit() {
    let report = source_acceptance(WebhookFx {
        sender: None,
        produced: 0,
    })
    .await;
    assert_eq!(
        report.skipped.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec!["resume"],
        "{report:?}"
    );
}

async fn webhook(pairs: &[(&str, &str)]) -> (HttpSource, String) {
    let mut conf = vec![
        ("mode", "webhook"),
        ("address", "127.0.0.1:0"),
        ("path", "/in"),
    ];
    conf.extend_from_slice(pairs);
    let mut src = configured_source(&conf).await;
    src.open(None).await.expect("open");
    let addr = src.local_addr().expect("listening");
    (src, format!("http://{addr}/in"))
}

#[tokio::test]
async fn webhook_answers_503_when_full_and_400_for_bad_bodies() {
    let (mut src, url) = webhook(&[("queue.size", "5")]).await;
    let client = reqwest::Client::new();
    let post = |body: &'static str| client.post(&url).body(body).send();
    let ok = post(r#"[1,2,3,4,5]"#).await.expect("post");
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let full = post(r#"{"one":"more"}"#).await.expect("post");
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.headers()["retry-after"], "1");
    let bad = post("{not json").await.expect("post");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let batch = src.read(3).await.expect("read");
    assert_eq!(batch.records.len(), 3);
    // Room again: the refused record is accepted now, after the five.
    let ok = post(r#"{"one":"more"}"#).await.expect("post");
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let rest = src.read(10).await.expect("read").records;
    let payloads: Vec<Bytes> = batch
        .records
        .iter()
        .chain(&rest)
        .map(|r| r.payload.after.as_ref().expect("after").to_bytes())
        .collect();
    assert_eq!(
        payloads,
        ["1", "2", "3", "4", "5", r#"{"one":"more"}"#]
            .map(Bytes::from)
            .to_vec()
    );
    let positions: Vec<u64> = batch
        .records
        .iter()
        .chain(&rest)
        .map(|r| r.position.to_u64().expect("number"))
        .collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5, 6]);
    src.stop().await.expect("stop");
    let late = post("[7]").await.expect("post");
    assert_eq!(
        late.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "refused after stop"
    );
    src.teardown().await.expect("teardown");
}

#[tokio::test]
async fn webhook_in_acked_mode_answers_once_the_records_are_acked() {
    let (mut src, url) = webhook(&[("response", "acked")]).await;
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(&url)
            .body(r#"["a","b"]"#)
            .send()
            .await
            .expect("post")
            .status()
    });
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(src.read(2).await.expect("read").records);
    }
    sleep(Duration::from_millis(100)).await;
    assert!(
        !pending.is_finished(),
        "answered before the records were acked"
    );
    src.ack(&[got[0].position.clone()]).await.expect("ack");
    sleep(Duration::from_millis(100)).await;
    assert!(
        !pending.is_finished(),
        "answered before every record was acked"
    );
    src.ack(&[got[1].position.clone()]).await.expect("ack");
    assert_eq!(pending.await.expect("sender"), StatusCode::OK);

    // A request still waiting when the source goes away gets 503, so the sender retries.
    let url = format!("http://{}/in", src.local_addr().expect("listening"));
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(&url)
            .body(r#"["c"]"#)
            .send()
            .await
            .expect("post")
            .status()
    });
    let mut read = Vec::new();
    while read.is_empty() {
        read = src.read(1).await.expect("read").records;
    }
    src.stop().await.expect("stop");
    src.teardown().await.expect("teardown");
    assert_eq!(
        waiting.await.expect("sender"),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn webhook_address_in_use_names_the_setting() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let mut src = configured_source(&[("mode", "webhook"), ("address", &address)]).await;
    let err = src.open(None).await.expect_err("address in use");
    assert!(err.to_string().contains("setting `address`"), "{err}");
}

// ---- destination -----------------------------------------------------------------------------

/// Captures request bodies; answers with the scripted statuses first, then 200.
#[derive(Clone, Default)]
struct Sink {
    bodies: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    script: Arc<Mutex<VecDeque<(StatusCode, &'static str)>>>,
}

async fn sink(State(s): State<Sink>, headers: HeaderMap, body: Bytes) -> Response {
    let scripted = s.script.lock().ok().and_then(|mut q| q.pop_front());
    if let Some((status, text)) = scripted {
        return (status, text).into_response();
    }
    if let Ok(mut b) = s.bodies.lock() {
        b.push((headers, body));
    }
    StatusCode::OK.into_response()
}

async fn sink_server() -> (Sink, String) {
    let s = Sink::default();
    let addr = serve(
        Router::new()
            .route("/sink", post(sink))
            .with_state(s.clone()),
    )
    .await;
    (s, format!("http://{addr}/sink"))
}

/// The records a sink received, decoded from each body's format.
fn received(s: &Sink) -> Vec<Record> {
    let bodies = s.bodies.lock().map(|b| b.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for (headers, body) in bodies {
        if headers["content-type"] == "application/x-ndjson" {
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(sluice_sdk::opencdc::from_json(line).expect("OpenCDC line"));
            }
        } else {
            let values: Vec<Value> = serde_json::from_slice(&body).expect("a JSON array");
            for v in values {
                let data = match v {
                    Value::Object(m) => Data::Structured(m),
                    Value::String(s) => Data::Raw(Bytes::from(s)),
                    other => Data::Raw(Bytes::from(other.to_string())),
                };
                out.push(Record::new(Position::default(), data));
            }
        }
    }
    out
}

struct DestinationFx {
    sink: Sink,
    format: &'static str,
}

#[async_trait]
impl DestinationFixture for DestinationFx {
    fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(HttpPlugin)
    }

    async fn settings(&mut self) -> Settings {
        let (sink, url) = sink_server().await;
        self.sink = sink;
        settings(&[("url", &url), ("format", self.format), ("batch.size", "7")])
    }

    fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
        vec![
            (
                settings(&[("url", "http://h/"), ("method", "GET")]),
                "method",
            ),
            (
                settings(&[("url", "http://h/"), ("batch.size", "0")]),
                "batch.size",
            ),
            (settings(&[("url", "not a url")]), "url"),
        ]
    }

    async fn written(&mut self) -> Written {
        Written::Records(received(&self.sink))
    }
}

#[tokio::test]
async fn destination_passes_the_acceptance_kit_json_and_opencdc() {
    for format in ["json", "opencdc"] {
        let report = destination_acceptance(DestinationFx {
            sink: Sink::default(),
            format,
        })
        .await;
        assert!(report.skipped.is_empty(), "{format}: {report:?}");
    }
}

#[tokio::test]
async fn destination_retries_429_and_5xx_then_succeeds_with_headers() {
    let (s, url) = sink_server().await;
    if let Ok(mut q) = s.script.lock() {
        q.push_back((StatusCode::SERVICE_UNAVAILABLE, "busy"));
        q.push_back((StatusCode::TOO_MANY_REQUESTS, "slow down"));
    }
    let mut dst = destination(&[
        ("url", &url),
        ("headers.Authorization", "Bearer secret-token"),
        ("retry.initialBackoff", "10ms"),
    ])
    .await;
    dst.write(&records(3)).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!((acks.count, acks.nacks.len()), (3, 0));
    let bodies = s.bodies.lock().expect("bodies").clone();
    assert_eq!(bodies.len(), 1, "one batch, delivered on the third attempt");
    assert_eq!(bodies[0].0["authorization"], "Bearer secret-token");
    assert_eq!(bodies[0].1, Bytes::from(r#"["r0","r1","r2"]"#));
    dst.teardown().await.expect("teardown");
}

#[tokio::test]
async fn destination_nacks_a_batch_refused_with_4xx() {
    let (s, url) = sink_server().await;
    if let Ok(mut q) = s.script.lock() {
        q.push_back((StatusCode::UNPROCESSABLE_ENTITY, "field `x` is missing"));
    }
    let mut dst = destination(&[("url", &url), ("batch.size", "2")]).await;
    let mut delete = Record::new(Position::from_u64(9), "x");
    delete.payload.after = None;
    let mut rs = records(3);
    rs.insert(1, delete);
    dst.write(&rs).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!(acks.count, 4);
    // The first request (r0 and the delete, which is not sendable) was refused: both nacked;
    // the second (r1, r2) went through.
    let indexes: Vec<usize> = acks.nacks.iter().map(|n| n.index).collect();
    assert_eq!(indexes, vec![0, 1]);
    assert!(acks.nacks[0].reason.contains("422"), "{:?}", acks.nacks);
    assert!(
        acks.nacks[0].reason.contains("field `x` is missing"),
        "{:?}",
        acks.nacks
    );
    assert!(
        acks.nacks[1].reason.contains("no payload.after"),
        "{:?}",
        acks.nacks
    );
    assert_eq!(received(&s).len(), 2);
    dst.teardown().await.expect("teardown");
}

#[tokio::test]
async fn destination_gives_up_after_the_last_attempt_naming_the_url() {
    let (s, url) = sink_server().await;
    if let Ok(mut q) = s.script.lock() {
        for _ in 0..3 {
            q.push_back((StatusCode::INTERNAL_SERVER_ERROR, "down"));
        }
    }
    let mut dst = destination(&[
        ("url", &url),
        ("retry.maxAttempts", "3"),
        ("retry.initialBackoff", "5ms"),
    ])
    .await;
    dst.write(&records(2)).await.expect("write buffers");
    let err = dst.ack().await.expect_err("three 500s");
    let text = err.to_string();
    assert!(text.contains("setting `url`"), "{text}");
    assert!(text.contains("3 times"), "{text}");
    assert!(text.contains("500"), "{text}");
    // Nothing was acked, and the batch is still pending: the next ack sends it.
    let acks = dst.ack().await.expect("the server is back");
    assert_eq!((acks.count, acks.nacks.len()), (2, 0));

    let nobody = format!("http://127.0.0.1:{}/", free_port());
    let mut dst = destination(&[
        ("url", &nobody),
        ("retry.maxAttempts", "2"),
        ("retry.initialBackoff", "5ms"),
    ])
    .await;
    dst.write(&records(1)).await.expect("write buffers");
    let err = dst.ack().await.expect_err("connection refused");
    assert!(err.to_string().contains("setting `url`"), "{err}");
}
