//! The signaling HTTP API over real HTTP, with a test control plane receiving callbacks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_signaling::http::{router, Access};
use sluice_signaling::outbox::{self, OutboxMetrics, OutboxOptions};
use sluice_signaling::{Completion, DataAddress, DataPlane, HookOutput};
use sluice_state::MemoryStore;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "secret-token";

/// Callbacks the test control plane received: (process, event, body, authorization).
type Received = Arc<Mutex<Vec<(String, String, Value, Option<String>)>>>;

async fn control_plane() -> (String, Received) {
    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/cp/transfers/{process}/dataflow/{event}",
            post(
                |State(r): State<Received>,
                 Path((process, event)): Path<(String, String)>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    r.lock().expect("lock").push((process, event, body, auth));
                    StatusCode::OK
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/cp"), received)
}

struct Server {
    base: String,
    dp: DataPlane,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

async fn server() -> Server {
    let dp = DataPlane::builder(Arc::new(MemoryStore::new()))
        .on_start(|flow| async move {
            if flow.dataset_id == "async" {
                return Ok(HookOutput {
                    completion: Completion::Async,
                    ..HookOutput::done()
                });
            }
            let pull = flow.mode == sluice_signaling::TransferMode::Pull;
            Ok(HookOutput {
                issued_address: pull.then(|| {
                    DataAddress::new(
                        "https://w3id.org/dspace-sig/profile/http-pull",
                        "http://127.0.0.1/public",
                    )
                    .with_property("authorization", "t")
                    .with_property("authType", "bearer")
                }),
                ..HookOutput::done()
            })
        })
        .build();
    let mut access = Access::default();
    access.allow("cp-1", TOKEN);
    let app = router(dp.clone(), "/api/v1", access);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
    });
    tokio::spawn(outbox::run(
        dp.clone(),
        OutboxOptions {
            poll_interval: Duration::from_millis(10),
            ..OutboxOptions::default()
        },
        Arc::new(OutboxMetrics::default()),
        stop.clone(),
    ));
    Server {
        base: format!("http://{addr}/api/v1"),
        dp,
        http: reqwest::Client::new(),
        _stop: stop.drop_guard(),
    }
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> (u16, HeaderMap, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    async fn state(&self, id: &str) -> String {
        let r = self
            .http
            .get(format!("{}/dataflows/{id}/status", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("status");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["dataFlowId"], id);
        v["state"].as_str().unwrap_or_default().to_string()
    }
}

fn start_body(process: &str, profile: &str, dataset: &str) -> Value {
    json!({
        "messageId": format!("{process}-m1"),
        "participantId": "provider", "counterPartyId": "consumer", "dataspaceContext": "ctx",
        "processId": process, "agreementId": "agr", "datasetId": dataset,
        "profile": profile, "claims": {}
    })
}

#[tokio::test]
async fn provider_pull_start_suspend_resume_terminate() {
    let s = server().await;
    let (code, _, body) = s
        .post(
            "/dataflows/start",
            start_body("pp1", "https://w3id.org/dspace-sig/profile/http-pull", "d"),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "STARTED");
    assert_eq!(body["dataAddress"]["@type"], "DataAddress");
    let id = body["dataFlowId"].as_str().expect("id").to_string();
    let (code, _, body) = s
        .post(
            &format!("/dataflows/{id}/suspend"),
            json!({"messageId": "m2"}),
        )
        .await;
    assert_eq!((code, body["state"].as_str()), (200, Some("SUSPENDED")));
    assert_eq!(s.state(&id).await, "SUSPENDED");
    let (code, _, body) = s
        .post(
            &format!("/dataflows/{id}/resume"),
            json!({"messageId": "m3"}),
        )
        .await;
    assert_eq!((code, body["state"].as_str()), (200, Some("STARTED")));
    let (code, _, _) = s
        .post(
            &format!("/dataflows/{id}/terminate"),
            json!({"messageId": "m4", "reason": "done"}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(s.state(&id).await, "TERMINATED");
    // Illegal from a final state: 400 with a JSON message.
    let (code, _, body) = s
        .post(
            &format!("/dataflows/{id}/suspend"),
            json!({"messageId": "m5"}),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("TERMINATED"),
        "{body}"
    );
}

#[tokio::test]
async fn async_start_answers_202_with_location_then_calls_back_started() {
    let s = server().await;
    let (cp, received) = control_plane().await;
    let r = s
        .http
        .put(format!("{}/controlplanes", s.base))
        .bearer_auth(TOKEN)
        .json(&json!({"controlplaneId": "cp-1", "endpoint": cp, "authorization": "Bearer back"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let (code, headers, body) = s
        .post(
            "/dataflows/start",
            start_body(
                "as1",
                "https://w3id.org/dspace-sig/profile/http-push",
                "async",
            ),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["state"], "STARTING");
    let id = body["dataFlowId"].as_str().expect("id").to_string();
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location");
    assert_eq!(location, format!("/api/v1/dataflows/{id}/status"));
    assert_eq!(s.state(&id).await, "STARTING");

    s.dp.finish_start(&id).await.expect("finish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().expect("lock").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no callback arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (process, event, body, auth) = received.lock().expect("lock")[0].clone();
    assert_eq!((process.as_str(), event.as_str()), ("as1", "started"));
    assert_eq!(body["state"], "STARTED");
    assert_eq!(auth.as_deref(), Some("Bearer back"));
    // The state commits once the callback was answered.
    while s.state(&id).await != "STARTED" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "state never became STARTED"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bad_input_gets_json_4xx_never_500() {
    let s = server().await;
    // No credentials.
    let r = s
        .http
        .post(format!("{}/dataflows/start", s.base))
        .json(&start_body("x", "a-pull", "d"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    // Malformed JSON, missing fields, unknown flow, conflicting create.
    let r = s
        .http
        .post(format!("{}/dataflows/start", s.base))
        .bearer_auth(TOKEN)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json error body");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("malformed JSON"),
        "{body}"
    );
    let (code, _, body) = s.post("/dataflows/start", json!({"messageId": "m"})).await;
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap_or("").contains("processId"),
        "{body}"
    );
    let (code, _, _) = s
        .post("/dataflows/nope/suspend", json!({"messageId": "m"}))
        .await;
    assert_eq!(code, 404);
    let (code, _, _) = s
        .post("/dataflows/start", start_body("dup", "a-pull", "d"))
        .await;
    assert_eq!(code, 200);
    let (code, _, replay) = s
        .post("/dataflows/start", start_body("dup", "a-pull", "d"))
        .await;
    assert_eq!(code, 200, "same message replays");
    assert_eq!(replay["state"], "STARTED");
    let mut other = start_body("dup", "a-pull", "d");
    other["messageId"] = json!("another");
    let (code, _, _) = s.post("/dataflows/start", other).await;
    assert_eq!(code, 409);
    let r = s
        .http
        .delete(format!("{}/controlplanes/unknown", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn rc2_messages_with_a_callback_address_are_accepted() {
    let s = server().await;
    let (cp, _) = control_plane().await;
    let body = json!({
        "messageId": "rc2-m1", "participantId": "p", "counterPartyId": "c", "dataspaceContext": "x",
        "processId": "rc2", "agreementId": "a", "datasetId": "d", "transferType": "HttpData-PULL",
        "callbackAddress": cp, "somethingNew": true
    });
    let (code, _, resp) = s.post("/dataflows/start", body).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["state"], "STARTED");
}
