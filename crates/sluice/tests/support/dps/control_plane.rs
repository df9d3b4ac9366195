//! A test control plane: an axum server on `127.0.0.1:0` that records every DPS callback
//! (`POST {base}/transfers/{processId}/dataflow/{event}`) with its body, answers 200 (or 503 for the
//! first N callbacks, to exercise the outbox's retries), and lets tests wait for a callback.
//!
//! It also plays the other party's data endpoints: a push sink (`POST /sink/{name}`, bodies
//! appended per name; `POST /reject/{name}`, always 400) and pull feeds (`GET /feed/finite`, a fixed body; `GET /feed/endless`, a
//! line every few milliseconds until the client goes away).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The callback path prefix: the control plane's configured endpoint is `{url}{CALLBACK_BASE}`.
pub const CALLBACK_BASE: &str = "/cp";
/// The bearer token the feeds require.
pub const FEED_TOKEN: &str = "feed-secret";
/// What `GET /feed/finite` answers.
pub const FEED: &str = "{\"feed\":1}\n{\"feed\":2}\n\nlast line\n";

/// One callback attempt, as received.
#[derive(Clone, Debug)]
pub struct Callback {
    /// The `processId` of the URL.
    pub process_id: String,
    /// `prepared`, `started`, `completed` or `errored`.
    pub event: String,
    /// The JSON body (Null if it was not JSON).
    pub body: Value,
    /// The `Authorization` header sent, if any.
    pub authorization: Option<String>,
    /// What we answered.
    pub answered: u16,
}

#[derive(Default)]
struct Inner {
    calls: Mutex<Vec<Callback>>,
    failures_left: AtomicUsize,
    sinks: Mutex<HashMap<String, Vec<u8>>>,
    sink_auth: Mutex<HashMap<String, Option<String>>>,
}

/// A running test control plane; stops when dropped.
pub struct ControlPlane {
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn record_callback(
    inner: &Inner,
    process_id: String,
    event: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> u16 {
    let fail = inner
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let answered = if fail { 503 } else { 200 };
    inner.calls.lock().expect("lock").push(Callback {
        process_id,
        event,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        answered,
    });
    answered
}

async fn callback(
    State(inner): State<Arc<Inner>>,
    Path((process_id, event)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let code = record_callback(&inner, process_id, event, &headers, &body);
    StatusCode::from_u16(code).expect("status")
}

async fn sink(
    State(inner): State<Arc<Inner>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    inner
        .sinks
        .lock()
        .expect("lock")
        .entry(name.clone())
        .or_default()
        .extend_from_slice(&body);
    inner.sink_auth.lock().expect("lock").insert(name, auth);
    StatusCode::OK
}

/// A push target that refuses everything (a transfer to it fails).
async fn reject() -> Response {
    (StatusCode::BAD_REQUEST, "this sink refuses data").into_response()
}

fn feed_authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {FEED_TOKEN}"))
}

async fn finite_feed(headers: HeaderMap) -> Response {
    if !feed_authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    FEED.into_response()
}

async fn endless_feed(headers: HeaderMap) -> Response {
    if !feed_authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let lines = futures::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let line = Bytes::from(format!("{{\"tick\":{n}}}\n"));
        Some((Ok::<_, std::io::Error>(line), n + 1))
    });
    Body::from_stream(lines).into_response()
}

impl ControlPlane {
    /// Starts a control plane answering 2xx to every callback.
    pub async fn start() -> ControlPlane {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route(
                &format!("{CALLBACK_BASE}/transfers/{{process}}/dataflow/{{event}}"),
                post(callback),
            )
            .route("/sink/{name}", post(sink))
            .route("/reject/{name}", post(reject))
            .route("/feed/finite", get(finite_feed))
            .route("/feed/endless", get(endless_feed))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        ControlPlane { url, inner, stop }
    }

    /// The endpoint to configure for this control plane (callbacks go below it).
    pub fn endpoint(&self) -> String {
        format!("{}{CALLBACK_BASE}", self.url)
    }

    /// Answers 503 to the next `n` callbacks (whichever flow they are for).
    pub fn fail_next(&self, n: usize) {
        self.inner.failures_left.store(n, Ordering::SeqCst);
    }

    /// Every callback attempt so far for `process_id`, in arrival order.
    pub fn calls_for(&self, process_id: &str) -> Vec<Callback> {
        self.inner
            .calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| c.process_id == process_id)
            .cloned()
            .collect()
    }

    /// Waits (up to `timeout`) for a callback `event` for `process_id` that was answered 2xx.
    pub async fn wait_for(&self, process_id: &str, event: &str, timeout: Duration) -> Callback {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self
                .calls_for(process_id)
                .into_iter()
                .find(|c| c.event == event && c.answered < 300)
            {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{event}` callback for process {process_id} within {timeout:?}; got {:#?}",
                self.calls_for(process_id)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The bytes POSTed to sink `name` so far.
    pub fn sink(&self, name: &str) -> Vec<u8> {
        self.inner
            .sinks
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The `Authorization` header of the last POST to sink `name`.
    pub fn sink_authorization(&self, name: &str) -> Option<String> {
        self.inner
            .sink_auth
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .flatten()
    }

    /// Waits until sink `name` holds `len` bytes or more.
    pub async fn wait_sink(&self, name: &str, len: usize, timeout: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.sink(name);
            if got.len() >= len {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sink {name} holds {} bytes, waited for {len}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
