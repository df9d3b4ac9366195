//! `sluice serve` as a Data Plane Signaling data plane, through the real binary: authentication,
//! prepare/start/terminate over HTTP, operations endpoints, `sluice flows`, JSON logs, bad
//! configuration, restart with the embedded store, graceful stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const TOKEN: &str = "s3cret-token";
const BASE: &str = "/dps";
/// The provider's dataset.
const INPUT: &str = "{\"n\":1}\n{\"n\":2}\n";

/// A running `sluice serve`; killed when dropped.
struct Server {
    child: Child,
    url: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the binary with `args` and waits for its "state API on http://..." line.
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .envs(envs.iter().copied())
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
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sluice serve did not come up; stderr:\n{}", seen.join("\n"));
                }
            };
            if let Some(rest) = line.split("state API on http://").nth(1) {
                let address = rest.split_whitespace().next().expect("address");
                return Server {
                    child,
                    url: format!("http://{address}"),
                    stderr: rx,
                };
            }
            seen.push(line);
        }
    }

    /// Stops with SIGTERM and returns the exit status and the rest of stderr.
    fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = self.child.wait().expect("exit status");
        let rest = self.stderr.try_iter().collect();
        (status, rest)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn flow_message(process: &str, message: &str, profile: &str) -> Value {
    json!({
        "messageId": message, "participantId": "provider", "counterPartyId": "consumer",
        "dataspaceContext": "ctx", "processId": process, "agreementId": "agreement-1",
        "datasetId": "d1", "profile": profile, "claims": {}
    })
}

async fn post(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = client().post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("answer");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("answer")
}

fn write_config(dir: &Path) -> String {
    write_config_with(dir, "", "")
}

/// A configuration with control plane `cp1`, dataset and destination `d1`; `top` is put before
/// the `signaling` section, `signaling_extra` inside it.
fn write_config_with(dir: &Path, top: &str, signaling_extra: &str) -> String {
    let input = dir.join("input.jsonl");
    std::fs::write(&input, INPUT).expect("input");
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "{top}signaling:
  basePath: {BASE}
{signaling_extra}  controlPlanes:
    - id: cp1
      endpoint: http://127.0.0.1:9/callbacks
      token: ${{TEST_CP_TOKEN}}
  outbox:
    minBackoff: 50ms
    maxBackoff: 1s
  transfers:
    requireHttps: false
    datasets:
      d1:
        plugin: file
        settings:
          path: {}
    destinations:
      d1:
        plugin: file
        settings:
          path: {}
",
            input.display(),
            dir.join("received.jsonl").display()
        ),
    )
    .expect("config");
    config.display().to_string()
}

fn sluice(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("sluice runs")
}

#[tokio::test]
async fn signaling_with_control_planes_operations_and_the_flows_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(
        &[
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        &[("TEST_CP_TOKEN", TOKEN)],
    );
    let api = format!("{}{BASE}", server.url);
    let push = "https://w3id.org/dspace-sig/profile/http-push";
    let pull = "https://w3id.org/dspace-sig/profile/http-pull";

    // Without (or with a wrong) token: 401 with a JSON body, on DPS and extension routes.
    let (status, body) = post(&format!("{api}/dataflows/start"), None, &json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = post(
        &format!("{api}/dataflows/prepare"),
        Some("wrong"),
        &flow_message("p0", "m0", push),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(get(&format!("{api}/dataflows"), None).await.status(), 401);

    // Consumer prepare → PREPARED.
    let (status, prepared) = post(
        &format!("{api}/dataflows/prepare"),
        Some(TOKEN),
        &flow_message("proc-consumer", "m1", push),
    )
    .await;
    assert_eq!(status, 200, "{prepared}");
    assert_eq!(prepared["state"], "PREPARED");
    let consumer_id = prepared["dataFlowId"].as_str().expect("id").to_string();

    // Provider start (pull) → STARTED; a replay answers the same; another message is a 409.
    let start = flow_message("proc-provider", "m2", pull);
    let (status, started) = post(&format!("{api}/dataflows/start"), Some(TOKEN), &start).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["state"], "STARTED");
    let provider_id = started["dataFlowId"].as_str().expect("id").to_string();
    let (status, replay) = post(&format!("{api}/dataflows/start"), Some(TOKEN), &start).await;
    assert_eq!(
        (status, &replay["dataFlowId"]),
        (200, &started["dataFlowId"])
    );
    let (status, conflict) = post(
        &format!("{api}/dataflows/start"),
        Some(TOKEN),
        &flow_message("proc-provider", "m3", pull),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");

    // The handed-out address is this server's public endpoint; its token fetches the dataset.
    let address = &started["dataAddress"];
    let endpoint = address["endpoint"].as_str().expect("endpoint").to_string();
    assert!(
        endpoint.starts_with(&format!("{}/public/", server.url)),
        "{endpoint} is not on {}",
        server.url
    );
    let token = address["endpointProperties"]
        .as_array()
        .expect("properties")
        .iter()
        .find(|p| p["name"] == "authorization")
        .and_then(|p| p["value"].as_str())
        .expect("authorization property")
        .to_string();
    let data = get(&endpoint, Some(&token)).await;
    assert_eq!(data.status(), 200);
    assert_eq!(data.text().await.expect("body"), INPUT);

    // Terminate the provider flow; its status says so; a second terminate changes nothing.
    let terminate = format!("{api}/dataflows/{provider_id}/terminate");
    let (status, term) = post(&terminate, Some(TOKEN), &json!({"messageId": "m4"})).await;
    assert_eq!(status, 200, "{term}");
    assert_eq!(term["state"], "TERMINATED");
    let status_url = format!("{api}/dataflows/{provider_id}/status");
    let s: Value = get(&status_url, Some(TOKEN))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(s, json!({"dataFlowId": provider_id, "state": "TERMINATED"}));
    let (status, _) = post(&terminate, Some(TOKEN), &json!({"messageId": "m5"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&endpoint, Some(&token)).await.status(),
        401,
        "token revoked"
    );
    let (status, missing) = post(
        &format!("{api}/dataflows/nope/terminate"),
        Some(TOKEN),
        &json!({"messageId": "m6"}),
    )
    .await;
    assert_eq!(status, 404, "{missing}");

    // Operations endpoints.
    let health = get(&format!("{}/healthz", server.url), None).await;
    assert_eq!(health.status(), 200);
    let ready = get(&format!("{}/readyz", server.url), None).await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["status"], "ready", "{ready}");
    let metrics = get(&format!("{}/metrics", server.url), None).await;
    assert_eq!(metrics.status(), 200);
    let content_type = metrics.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let metrics = metrics.text().await.expect("text");
    for line in &[
        "sluice_flows{state=\"TERMINATED\"} 1",
        "sluice_flows{state=\"PREPARED\"} 1",
        "sluice_flows{state=\"STARTED\"} 0",
        "# TYPE sluice_callback_failures_total counter",
        "sluice_callbacks_delivered_total 0",
        "# TYPE sluice_transfer_bytes_total counter",
        &format!("sluice_transfer_bytes_total {}", INPUT.len()),
        "# TYPE sluice_transfer_records_total counter",
        "sluice_http_requests_total{method=\"POST\",route=\"/dps/dataflows/start\",status=\"401\"} 1",
        "sluice_http_requests_total{method=\"POST\",route=\"/dps/dataflows/start\",status=\"409\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == *line), "no {line:?} in\n{metrics}");
    }
    let doc: Value = get(&format!("{}/openapi.json", server.url), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/dps/dataflows/prepare",
        "/dps/dataflows/{id}/terminate",
        "/dps/controlplanes",
        "/dps/dataflows",
        "/v1.0/state/{store}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
    assert!(doc["components"]["schemas"]["DataFlowStartMessage"].is_object());

    // `sluice flows list|show` against the running server.
    let common = [
        "--server",
        &server.url,
        "--token",
        TOKEN,
        "--base-path",
        BASE,
    ];
    let list = sluice(&[&["flows", "list"][..], &common].concat());
    assert!(list.status.success(), "{list:?}");
    let table = String::from_utf8(list.stdout).expect("utf-8");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE"),
        "{table}"
    );
    assert!(table.contains(&consumer_id) && table.contains(&provider_id));
    let filtered = sluice(&[&["flows", "list", "--state", "terminated"][..], &common].concat());
    let filtered = String::from_utf8(filtered.stdout).expect("utf-8");
    assert_eq!(filtered.lines().count(), 2, "{filtered}");
    assert!(filtered.contains(&provider_id) && filtered.contains("TERMINATED"));
    assert!(!filtered.contains(&consumer_id));
    let show = sluice(&[&["flows", "show", provider_id.as_str()][..], &common].concat());
    assert!(show.status.success(), "{show:?}");
    let shown: Value = serde_json::from_slice(&show.stdout).expect("JSON");
    assert_eq!(shown["id"], provider_id.as_str());
    assert_eq!(shown["state"], "TERMINATED");
    assert_eq!(shown["processId"], "proc-provider");
    assert_eq!(shown["callbackAuthorization"], "***", "secrets are masked");
    assert!(!String::from_utf8_lossy(&show.stdout).contains(TOKEN));
    let unauthorized = sluice(&[
        "flows",
        "list",
        "--server",
        &server.url,
        "--base-path",
        BASE,
    ]);
    assert_eq!(unauthorized.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unauthorized.stderr).contains("401"));
    let unknown = sluice(&[&["flows", "show", "no-such-flow"][..], &common].concat());
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("404"));

    let (status, _) = server.terminate();
    assert!(status.success(), "graceful stop exits 0: {status:?}");
}

#[tokio::test]
async fn no_configuration_serves_open_signaling_and_keeps_flows_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8").to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--log-format",
        "json",
    ];
    let server = Server::start(&args, &[]);
    let api = format!("{}/api/v1", server.url);
    // No control planes configured: no credentials needed. The start may be refused by the
    // transfers (no dataset is configured), but never with a 401, 404 or 5xx.
    let (status, prepared) = post(
        &format!("{api}/dataflows/prepare"),
        None,
        &json!({"messageId": "m1", "participantId": "p", "counterPartyId": "c",
                "dataspaceContext": "x", "processId": "proc-1", "agreementId": "a",
                "datasetId": "d", "transferType": "HttpData-PULL"}),
    )
    .await;
    assert!(status == 200 || status == 400, "{status} {prepared}");
    let id = prepared["dataFlowId"].as_str().map(str::to_string);
    let (status, body) = post(&format!("{api}/dataflows/prepare"), None, &json!({"x": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"]
        .as_str()
        .expect("message")
        .contains("processId"));
    let ready = get(&format!("{}/readyz", server.url), None).await;
    assert_eq!(ready.status(), 200);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status:?}");
    // JSON logs: every tracing line is one JSON object.
    let json_lines: Vec<Value> = stderr
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    assert!(
        json_lines
            .iter()
            .any(|l| l["level"].is_string() && l["fields"].is_object()),
        "no JSON log line in {stderr:#?}"
    );

    // The embedded store keeps the flow across a restart.
    if let Some(id) = id {
        let server = Server::start(&args, &[]);
        let s: Value = get(
            &format!("{}/api/v1/dataflows/{id}/status", server.url),
            None,
        )
        .await
        .json()
        .await
        .expect("json");
        assert_eq!(s["dataFlowId"], id.as_str(), "{s}");
    }
}

#[test]
fn bad_signaling_configuration_is_reported_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        "signaling:\n  basePath: api\n  controlPlanes:\n    - id: cp1\n      endpoint: ftp://x\n",
    )
    .expect("config");
    let out = sluice(&["serve", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = config.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:2:")),
        "basePath line: {stderr}"
    );
    assert!(stderr.contains("must start with '/'"), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:5:")),
        "endpoint line: {stderr}"
    );
    assert!(stderr.contains("needs `token` or `apiKey`"), "{stderr}");

    std::fs::write(
        &config,
        "signaling:\n  controlPlanes:\n    - id: a\n      tokn: x\n",
    )
    .expect("config");
    let out = sluice(&["serve", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{file}:4:")), "{stderr}");
    assert!(stderr.contains("unknown field `tokn`"), "{stderr}");
    assert!(stderr.contains("signaling.controlPlanes[0]"), "{stderr}");
}

#[tokio::test]
async fn flows_can_live_in_a_named_postgres_store() {
    let Ok(pg) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
        eprintln!("skipped: set SLUICE_TEST_POSTGRES_URL to run this test");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let table = format!("sig_flows_{}_{nanos}", std::process::id());
    let config = write_config_with(
        dir.path(),
        &format!(
            "stores:\n  - name: pg\n    backend: postgres\n    settings:\n      url: ${{TEST_PG_URL}}\n      table: {table}\n"
        ),
        "  store: pg\n",
    );
    let data = dir.path().join("data");
    let server = Server::start(
        &[
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        &[("TEST_CP_TOKEN", TOKEN), ("TEST_PG_URL", &pg)],
    );
    let api = format!("{}{BASE}", server.url);
    let (status, prepared) = post(
        &format!("{api}/dataflows/prepare"),
        Some(TOKEN),
        &flow_message(
            "proc-pg",
            "m1",
            "https://w3id.org/dspace-sig/profile/http-push",
        ),
    )
    .await;
    assert_eq!(status, 200, "{prepared}");
    let id = prepared["dataFlowId"].as_str().expect("id");
    // The flow is in the PostgreSQL table, readable through the state API of store `pg`.
    let stored = get(
        &format!("{}/v1.0/state/pg/sluice%2Fflows%2F{id}", server.url),
        None,
    )
    .await;
    assert_eq!(stored.status(), 200);
    let stored: Value = stored.json().await.expect("json");
    assert_eq!(stored["state"], "PREPARED");
    let ready: Value = get(&format!("{}/readyz", server.url), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(ready["stores"]["pg"], "ok", "{ready}");
    let metrics = get(&format!("{}/metrics", server.url), None)
        .await
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("sluice_flows{state=\"PREPARED\"} 1"),
        "{metrics}"
    );
    let (status, _) = server.terminate();
    assert!(status.success());
    let (db, connection) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .expect("drop the test table");
}
