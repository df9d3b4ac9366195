//! End-to-end Data Plane Signaling conformance: every scenario of the conformance list of
//! `spec/signaling.md`, synchronous and asynchronous, against a real `sluice serve` over HTTP with a
//! test control plane receiving the callbacks; the transition table over HTTP; authentication,
//! bad input, deduplication (100 concurrent duplicate starts); outbox retries; and real 100 MiB
//! provider-push and provider-pull transfers between two Sluice servers, byte-identical.

#[path = "support/dps/mod.rs"]
mod dps;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dps::client::{flow_message, property, unique, Answer, Dps, PULL, PUSH};
use dps::control_plane::{ControlPlane, FEED, FEED_TOKEN};
use dps::server::{path_str, signaling_config, Server, BASE_PATH};
use futures::future::join_all;
use serde_json::{json, Value};

const TOKEN: &str = "tck-secret-token";
/// The `lines` dataset: a file of lines, the last one ending with `\n`.
const INPUT: &str = "{\"n\":1}\n{\"n\":2}\nplain text line\n\n{\"n\":4}\n";
/// Long enough for anything that must eventually happen on a loaded machine.
const WAIT: Duration = Duration::from_secs(60);

/// How a scenario goes after the flow is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// The control plane sends `completed`.
    CompletedByControlPlane,
    /// The data plane finishes the (finite) transfer and sends the `completed` callback itself.
    CompletedByDataPlane,
    /// `terminate`.
    Terminate,
    /// `suspend`, then `resume` (data moves again), then `terminate` to clean up.
    SuspendResume,
    /// `suspend`, then `terminate`.
    SuspendTerminate,
}

use Variant::*;

/// The four flows of the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    ProviderPull,
    ProviderPush,
    ConsumerPull,
    ConsumerPush,
}

impl Flow {
    fn variants(self) -> &'static [Variant] {
        match self {
            // A pull provider cannot know when the consumer is done; a push consumer cannot know
            // when the provider is done: the control plane says so.
            Flow::ProviderPull | Flow::ConsumerPush => &[
                CompletedByControlPlane,
                Terminate,
                SuspendResume,
                SuspendTerminate,
            ],
            Flow::ProviderPush | Flow::ConsumerPull => &[
                CompletedByDataPlane,
                CompletedByControlPlane,
                Terminate,
                SuspendResume,
                SuspendTerminate,
            ],
        }
    }
}

/// A test control plane and a `sluice serve` configured for the conformance scenarios.
struct Env {
    cp: ControlPlane,
    server: Server,
    dps: Dps,
    /// Where destinations write: `<out>/<datasetId>.out`.
    out: PathBuf,
    _files: tempfile::TempDir,
}

/// The consumer-side dataset ids (one destination file each) of a flow's scenarios.
fn consumer_datasets() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for flow in [Flow::ConsumerPull, Flow::ConsumerPush] {
        for v in flow.variants() {
            for asynchronous in [false, true] {
                out.push((scenario_dataset(flow, *v, asynchronous), asynchronous));
            }
        }
    }
    for i in 0..4 {
        out.push((format!("misc-{i}"), false));
    }
    out.push(("misc-async".to_string(), true));
    out
}

fn scenario_dataset(flow: Flow, v: Variant, asynchronous: bool) -> String {
    format!(
        "{flow:?}-{v:?}-{}",
        if asynchronous { "async" } else { "sync" }
    )
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sluice serve log ---\n{}", tail(&self.server.logs()));
        }
    }
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

impl Env {
    async fn start() -> Env {
        let cp = ControlPlane::start().await;
        let files = tempfile::tempdir().expect("tempdir");
        let input = files.path().join("input.jsonl");
        std::fs::write(&input, INPUT).expect("input");
        let out = files.path().join("out");
        std::fs::create_dir_all(&out).expect("out dir");
        let file = |asynchronous: bool| json!({"plugin": "file", "settings": {"path": path_str(&input)}, "asynchronous": asynchronous});
        // An unbounded, paced source: the flow stays STARTED until told otherwise.
        let stream = |asynchronous: bool| {
            json!({"plugin": "generator", "asynchronous": asynchronous, "settings": {
                "rate": "200", "format.type": "raw", "recordSize": "16"}})
        };
        let datasets = json!({
            "lines": file(false), "lines-async": file(true),
            "stream": stream(false), "stream-async": stream(true),
        });
        let mut destinations = serde_json::Map::new();
        for (name, asynchronous) in consumer_datasets() {
            destinations.insert(
                name.clone(),
                json!({"plugin": "file", "asynchronous": asynchronous,
                       "settings": {"path": path_str(&out.join(format!("{name}.out")))}}),
            );
        }
        let config = signaling_config(&cp.endpoint(), TOKEN, datasets, Value::Object(destinations));
        let server = Server::start(&config);
        let dps = Dps::new(&server.api(), Some(TOKEN));
        Env {
            cp,
            server,
            dps,
            out,
            _files: files,
        }
    }

    fn destination_file(&self, dataset: &str) -> PathBuf {
        self.out.join(format!("{dataset}.out"))
    }

    /// Runs one scenario.
    async fn run(&self, flow: Flow, v: Variant, asynchronous: bool) {
        match flow {
            Flow::ProviderPull => self.provider_pull(v, asynchronous).await,
            Flow::ProviderPush => self.provider_push(v, asynchronous).await,
            Flow::ConsumerPull => self.consumer_pull(v, asynchronous).await,
            Flow::ConsumerPush => self.consumer_push(v, asynchronous).await,
        }
    }

    /// Every variant of `flow`, sync and async, concurrently.
    async fn run_all(&self, flow: Flow) {
        let scenarios = flow
            .variants()
            .iter()
            .flat_map(|v| [(*v, false), (*v, true)]);
        join_all(scenarios.map(|(v, a)| self.run(flow, v, a))).await;
        self.server.assert_no_server_errors().await;
    }

    /// Creates a flow (prepare or start), checking the sync (200) or async (202 + Location, then
    /// the `prepared`/`started` callback) answer. Returns the flow id and the status message
    /// that carried the final PREPARED/STARTED (response or callback body).
    async fn create(
        &self,
        process: &str,
        msg: &Value,
        consumer: bool,
        asynchronous: bool,
    ) -> (String, Value) {
        let a = if consumer {
            self.dps.prepare(msg).await
        } else {
            self.dps.start(msg).await
        };
        let (done, pending, event) = if consumer {
            ("PREPARED", "PREPARING", "prepared")
        } else {
            ("STARTED", "STARTING", "started")
        };
        // A finite push may already be over when `/status` is read: COMPLETED comes after
        // STARTED without another signal.
        let settled: &[&str] = if done == "STARTED" {
            &["STARTED", "COMPLETED"]
        } else {
            &[done]
        };
        if !asynchronous {
            assert_eq!(a.status, 200, "{process}: {}", a.body);
            assert_eq!(a.state(), done, "{process}: {}", a.body);
            let id = a.id();
            let now = self.dps.state(&id).await;
            assert!(settled.contains(&now.as_str()), "{process}: {now}");
            return (id, a.body);
        }
        assert_eq!(a.status, 202, "{process}: async answer {}", a.body);
        assert_eq!(a.state(), pending, "{process}: {}", a.body);
        let id = a.id();
        let location = a.location.clone().expect("Location on 202");
        assert!(
            location.ends_with(&format!("{BASE_PATH}/dataflows/{id}/status")),
            "Location {location}"
        );
        let cb = self.cp.wait_for(process, event, WAIT).await;
        assert_eq!(cb.body["dataFlowId"], id.as_str(), "{}", cb.body);
        assert_eq!(cb.body["state"], done, "{event} callback: {}", cb.body);
        assert!(cb.body["messageId"].is_string(), "{}", cb.body);
        assert_eq!(
            cb.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "callbacks carry the control plane's credentials"
        );
        self.dps.wait_state_in(&id, settled, WAIT).await;
        (id, cb.body)
    }

    /// Sends `action` and checks the answer's state and `/status`.
    async fn transition(&self, id: &str, action: &str, extra: Value, expect: &str) -> Answer {
        let a = self.dps.act(id, action, extra).await;
        assert_eq!(a.status, 200, "{action} on {id}: {}", a.body);
        assert_eq!(a.state(), expect, "{action} on {id}: {}", a.body);
        assert_eq!(a.body["dataFlowId"], id);
        assert_eq!(self.dps.state(id).await, expect, "{action} on {id}");
        a
    }

    /// Checks that the control plane got exactly `events` (2xx) for `process`, no `terminated`.
    fn assert_callbacks(&self, process: &str, events: &[&str]) {
        let got: Vec<String> = self
            .cp
            .calls_for(process)
            .into_iter()
            .filter(|c| c.answered < 300)
            .map(|c| c.event)
            .collect();
        assert_eq!(got, events, "callbacks of {process}");
    }

    async fn provider_pull(&self, v: Variant, asynchronous: bool) {
        let process = unique(&format!("pp-{v:?}"));
        let dataset = if asynchronous { "lines-async" } else { "lines" };
        let msg = flow_message(&process, dataset, PULL);
        let (id, started) = self.create(&process, &msg, false, asynchronous).await;
        // STARTED brings an address of the public endpoint with a bearer token.
        let address = &started["dataAddress"];
        assert_eq!(address["@type"], "DataAddress", "{started}");
        assert_eq!(address["endpointType"], PULL);
        let endpoint = address["endpoint"].as_str().expect("endpoint").to_string();
        assert!(
            endpoint.starts_with(&format!("{}/public/", self.server.url)),
            "{endpoint}"
        );
        assert_eq!(property(address, "authType").as_deref(), Some("bearer"));
        let token = property(address, "authorization").expect("token");
        assert_eq!(fetch(&endpoint, Some(&token)).await, (200, INPUT.into()));
        assert_eq!(fetch(&endpoint, None).await.0, 401);
        assert_eq!(fetch(&endpoint, Some("wrong")).await.0, 401);
        match v {
            CompletedByControlPlane => {
                self.transition(&id, "completed", json!({}), "COMPLETED")
                    .await;
                assert_eq!(fetch(&endpoint, Some(&token)).await.0, 401, "revoked");
            }
            Terminate => {
                self.transition(&id, "terminate", json!({"reason": "test"}), "TERMINATED")
                    .await;
                assert_eq!(fetch(&endpoint, Some(&token)).await.0, 401, "revoked");
            }
            SuspendResume => {
                self.transition(&id, "suspend", json!({"reason": "pause"}), "SUSPENDED")
                    .await;
                assert_eq!(fetch(&endpoint, Some(&token)).await.0, 401, "revoked");
                let resumed = self.transition(&id, "resume", json!({}), "STARTED").await;
                let new_address = &resumed.body["dataAddress"];
                let new_token = property(new_address, "authorization")
                    .unwrap_or_else(|| panic!("resume issues a new token: {}", resumed.body));
                assert_ne!(new_token, token);
                let new_endpoint = new_address["endpoint"].as_str().expect("endpoint");
                assert_eq!(
                    fetch(new_endpoint, Some(&new_token)).await,
                    (200, INPUT.into())
                );
                assert_eq!(fetch(&endpoint, Some(&token)).await.0, 401, "old token");
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
            }
            SuspendTerminate => {
                self.transition(&id, "suspend", json!({}), "SUSPENDED")
                    .await;
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
                assert_eq!(fetch(&endpoint, Some(&token)).await.0, 401, "revoked");
            }
            CompletedByDataPlane => unreachable!("a pull provider does not know the end"),
        }
        let expected: &[&str] = if asynchronous { &["started"] } else { &[] };
        self.assert_callbacks(&process, expected);
    }

    async fn provider_push(&self, v: Variant, asynchronous: bool) {
        let process = unique(&format!("pu-{v:?}"));
        let dataset = match (v, asynchronous) {
            (CompletedByDataPlane, false) => "lines",
            (CompletedByDataPlane, true) => "lines-async",
            (_, false) => "stream",
            (_, true) => "stream-async",
        };
        let sink = process.clone();
        let push_token = unique("push-token");
        let mut msg = flow_message(&process, dataset, PUSH);
        // Given without `@type`, as the kit does.
        msg["dataAddress"] = json!({
            "endpointType": PUSH,
            "endpoint": format!("{}/sink/{sink}", self.cp.url),
            "endpointProperties": [
                {"name": "authorization", "value": push_token},
                {"name": "authType", "value": "bearer"}
            ]
        });
        let (id, started) = self.create(&process, &msg, false, asynchronous).await;
        if !asynchronous {
            assert!(
                started.get("dataAddress").is_none_or(Value::is_null),
                "a push start answers without an address: {started}"
            );
        }
        let mut expected = if asynchronous {
            vec!["started"]
        } else {
            vec![]
        };
        match v {
            CompletedByDataPlane => {
                let cb = self.cp.wait_for(&process, "completed", WAIT).await;
                assert_eq!(cb.body["state"], "COMPLETED", "{}", cb.body);
                assert_eq!(cb.body["dataFlowId"], id.as_str());
                self.dps.wait_state(&id, "COMPLETED", WAIT).await;
                assert_eq!(
                    String::from_utf8_lossy(&self.cp.sink(&sink)),
                    INPUT,
                    "the consumer got the dataset exactly"
                );
                assert_eq!(
                    self.cp.sink_authorization(&sink),
                    Some(format!("Bearer {push_token}"))
                );
                expected.push("completed");
            }
            CompletedByControlPlane => {
                self.cp.wait_sink(&sink, 1, WAIT).await;
                self.transition(&id, "completed", json!({}), "COMPLETED")
                    .await;
                self.assert_sink_stopped(&sink).await;
            }
            Terminate => {
                self.cp.wait_sink(&sink, 1, WAIT).await;
                self.transition(&id, "terminate", json!({"reason": "x"}), "TERMINATED")
                    .await;
                self.assert_sink_stopped(&sink).await;
            }
            SuspendResume => {
                self.cp.wait_sink(&sink, 1, WAIT).await;
                self.transition(&id, "suspend", json!({}), "SUSPENDED")
                    .await;
                let len = self.assert_sink_stopped(&sink).await;
                self.transition(&id, "resume", json!({}), "STARTED").await;
                self.cp.wait_sink(&sink, len + 1, WAIT).await;
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
            }
            SuspendTerminate => {
                self.cp.wait_sink(&sink, 1, WAIT).await;
                self.transition(&id, "suspend", json!({}), "SUSPENDED")
                    .await;
                self.assert_sink_stopped(&sink).await;
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
            }
        }
        self.assert_callbacks(&process, &expected);
    }

    /// After a suspend/terminate/complete was answered, nothing more arrives at the sink.
    async fn assert_sink_stopped(&self, sink: &str) -> usize {
        let len = self.cp.sink(sink).len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            self.cp.sink(sink).len(),
            len,
            "data kept arriving at {sink} after the flow stopped"
        );
        len
    }

    async fn consumer_pull(&self, v: Variant, asynchronous: bool) {
        let process = unique(&format!("cl-{v:?}"));
        let dataset = scenario_dataset(Flow::ConsumerPull, v, asynchronous);
        let msg = flow_message(&process, &dataset, PULL);
        let (id, prepared) = self.create(&process, &msg, true, asynchronous).await;
        assert!(
            prepared.get("dataAddress").is_none_or(Value::is_null),
            "a pull consumer prepares without an address: {prepared}"
        );
        let feed = if v == CompletedByDataPlane {
            "finite"
        } else {
            "endless"
        };
        let address = json!({
            "@type": "DataAddress",
            "endpointType": PULL,
            "endpoint": format!("{}/feed/{feed}", self.cp.url),
            "endpointProperties": [
                {"@type": "EndpointProperty", "name": "authorization", "value": FEED_TOKEN},
                {"@type": "EndpointProperty", "name": "authType", "value": "bearer"}
            ]
        });
        self.transition(&id, "started", json!({"dataAddress": address}), "STARTED")
            .await;
        let file = self.destination_file(&dataset);
        let mut expected = if asynchronous {
            vec!["prepared"]
        } else {
            vec![]
        };
        match v {
            CompletedByDataPlane => {
                let cb = self.cp.wait_for(&process, "completed", WAIT).await;
                assert_eq!(cb.body["state"], "COMPLETED", "{}", cb.body);
                self.dps.wait_state(&id, "COMPLETED", WAIT).await;
                assert_eq!(read(&file), FEED, "the destination holds the feed exactly");
                expected.push("completed");
            }
            CompletedByControlPlane => {
                wait_file(&file, 1).await;
                self.transition(&id, "completed", json!({}), "COMPLETED")
                    .await;
                assert_ticks(&read(&file));
            }
            Terminate => {
                wait_file(&file, 1).await;
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
                assert_ticks(&read(&file));
            }
            SuspendResume => {
                wait_file(&file, 1).await;
                self.transition(&id, "suspend", json!({}), "SUSPENDED")
                    .await;
                let len = read(&file).len();
                self.transition(&id, "resume", json!({}), "STARTED").await;
                wait_file(&file, len + 1).await;
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
                // Resumed from the checkpoint: the ticks go on with no gap and no repeat.
                assert_ticks(&read(&file));
            }
            SuspendTerminate => {
                wait_file(&file, 1).await;
                self.transition(&id, "suspend", json!({}), "SUSPENDED")
                    .await;
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
                assert_ticks(&read(&file));
            }
        }
        self.assert_callbacks(&process, &expected);
    }

    async fn consumer_push(&self, v: Variant, asynchronous: bool) {
        let process = unique(&format!("cu-{v:?}"));
        let dataset = scenario_dataset(Flow::ConsumerPush, v, asynchronous);
        let msg = flow_message(&process, &dataset, PUSH);
        let (id, prepared) = self.create(&process, &msg, true, asynchronous).await;
        // PREPARED brings the address the provider will push to.
        let address = &prepared["dataAddress"];
        assert_eq!(address["@type"], "DataAddress", "{prepared}");
        let endpoint = address["endpoint"].as_str().expect("endpoint").to_string();
        assert!(
            endpoint.starts_with(&format!("{}/public/", self.server.url)),
            "{endpoint}"
        );
        let token = property(address, "authorization").expect("token");
        let file = self.destination_file(&dataset);
        let mut sent = String::new();
        let mut push = |line: &str| {
            sent.push_str(line);
            sent.clone()
        };
        assert_eq!(send(&endpoint, None, "x\n").await, 401);
        // PREPARED means ready to receive. A 503 ("not receiving right now") is retried so the
        // rest of the scenario runs, and reported at the end.
        let mut not_ready = 0;
        send_when_ready(&endpoint, &token, "{\"a\":1}\n", &mut not_ready).await;
        push("{\"a\":1}\n");
        self.transition(&id, "started", json!({}), "STARTED").await;
        assert_eq!(send(&endpoint, Some(&token), "{\"a\":2}\n").await, 200);
        let mut want = push("{\"a\":2}\n");
        match v {
            CompletedByControlPlane => {
                self.transition(&id, "completed", json!({}), "COMPLETED")
                    .await;
                assert_eq!(send(&endpoint, Some(&token), "late\n").await, 401);
            }
            Terminate => {
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
                assert_eq!(send(&endpoint, Some(&token), "late\n").await, 401);
            }
            SuspendResume => {
                self.transition(&id, "suspend", json!({}), "SUSPENDED")
                    .await;
                assert_eq!(send(&endpoint, Some(&token), "late\n").await, 401);
                let resumed = self.transition(&id, "resume", json!({}), "STARTED").await;
                let new_address = &resumed.body["dataAddress"];
                let new_token = property(new_address, "authorization")
                    .unwrap_or_else(|| panic!("resume issues a new token: {}", resumed.body));
                let new_endpoint = new_address["endpoint"].as_str().expect("endpoint");
                send_when_ready(new_endpoint, &new_token, "{\"a\":3}\n", &mut not_ready).await;
                want = push("{\"a\":3}\n");
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
            }
            SuspendTerminate => {
                self.transition(&id, "suspend", json!({}), "SUSPENDED")
                    .await;
                self.transition(&id, "terminate", json!({}), "TERMINATED")
                    .await;
            }
            CompletedByDataPlane => unreachable!("a push consumer does not know the end"),
        }
        // Every POST answered 200 was made durable before the answer.
        assert_eq!(read(&file), want, "destination of {process}");
        assert_eq!(
            not_ready,
            0,
            "{process}: the push endpoint answered 503 ({not_ready} times) right after a {} \
             PREPARED or a resume",
            if asynchronous {
                "asynchronous"
            } else {
                "synchronous"
            }
        );
        let expected: &[&str] = if asynchronous { &["prepared"] } else { &[] };
        self.assert_callbacks(&process, expected);
    }
}

/// GET `url` with an optional bearer token: status and body text.
async fn fetch(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("answer");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("text"))
}

/// POSTs `body` to a push endpoint until it is taken (200); counts 503 answers ("not receiving
/// right now") in `not_ready`, which the caller reports.
async fn send_when_ready(url: &str, token: &str, body: &str, not_ready: &mut u32) {
    loop {
        match send(url, Some(token), body).await {
            200 => return,
            503 if *not_ready < 500 => *not_ready += 1,
            other => panic!("push to {url} answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// POSTs `body` to a push endpoint: the status.
async fn send(url: &str, token: Option<&str>, body: &str) -> u16 {
    let mut req = reqwest::Client::new().post(url).body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("answer").status().as_u16()
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

async fn wait_file(path: &Path, len: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::metadata(path)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
        < len
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never reached {len} bytes",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The endless feed's lines, `{"tick":0}` on, with no gap and no repeat.
fn assert_ticks(text: &str) {
    assert!(!text.is_empty());
    for (i, line) in text.lines().enumerate() {
        assert_eq!(
            line,
            format!("{{\"tick\":{i}}}"),
            "line {i} of the pulled feed (no gap, no repeat):\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_pull_scenarios() {
    Env::start().await.run_all(Flow::ProviderPull).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_push_scenarios() {
    Env::start().await.run_all(Flow::ProviderPush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_pull_scenarios() {
    Env::start().await.run_all(Flow::ConsumerPull).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_push_scenarios() {
    Env::start().await.run_all(Flow::ConsumerPush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_bad_input_and_deduplication() {
    let env = Env::start().await;
    let dps = &env.dps;
    let created = dps
        .prepare(&flow_message(&unique("auth"), "misc-0", PUSH))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.id();

    // Every route needs the control plane's credentials: 401 with a JSON body without them.
    let routes: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::POST,
            "/dataflows/prepare".into(),
            Some(flow_message("p", "misc-0", PUSH)),
        ),
        (
            reqwest::Method::POST,
            "/dataflows/start".into(),
            Some(flow_message("p", "lines", PULL)),
        ),
        (
            reqwest::Method::POST,
            format!("/dataflows/{id}/started"),
            Some(json!({"messageId": "m"})),
        ),
        (
            reqwest::Method::POST,
            format!("/dataflows/{id}/suspend"),
            Some(json!({"messageId": "m"})),
        ),
        (
            reqwest::Method::POST,
            format!("/dataflows/{id}/resume"),
            Some(json!({"messageId": "m"})),
        ),
        (
            reqwest::Method::POST,
            format!("/dataflows/{id}/terminate"),
            Some(json!({"messageId": "m"})),
        ),
        (
            reqwest::Method::POST,
            format!("/dataflows/{id}/completed"),
            Some(json!({})),
        ),
        (
            reqwest::Method::GET,
            format!("/dataflows/{id}/status"),
            None,
        ),
        (
            reqwest::Method::PUT,
            "/controlplanes".into(),
            Some(json!({"controlplaneId": "x", "endpoint": "http://x"})),
        ),
        (reqwest::Method::DELETE, "/controlplanes/tck".into(), None),
    ];
    for (token, what) in [(None, "no token"), (Some("wrong-token"), "a wrong token")] {
        let client = Dps::new(&env.server.api(), token);
        for (method, path, body) in &routes {
            let a = client
                .send(
                    method.clone(),
                    path,
                    body.as_ref().map(|b| b.to_string().into_bytes()),
                )
                .await;
            assert_eq!(a.status, 401, "{method} {path} with {what}: {}", a.body);
            a.assert_json_error(401);
        }
    }
    // Nothing of that was applied.
    assert_eq!(dps.state(&id).await, "PREPARED");

    // Malformed or incomplete messages: 400 with a JSON message naming the problem.
    let raw = |path: &str, body: &str| {
        let path = path.to_string();
        let body = body.as_bytes().to_vec();
        async move { dps.send(reqwest::Method::POST, &path, Some(body)).await }
    };
    for path in ["/dataflows/prepare", "/dataflows/start"] {
        for body in ["{not json", "", "[]", "42", "{\"processId\": 5}"] {
            raw(path, body).await.assert_json_error(400);
        }
        let missing = raw(path, "{}").await;
        missing.assert_json_error(400);
        assert!(
            missing.body.to_string().contains("processId"),
            "names the missing field: {}",
            missing.body
        );
        let mut no_profile = flow_message(&unique("bad"), "lines", PULL);
        no_profile["profile"] = json!("https://example.com/profile/carrier-pigeon");
        dps.post(path, &no_profile).await.assert_json_error(400);
    }
    let mut bad_address = flow_message(&unique("bad"), "lines", PUSH);
    bad_address["dataAddress"] = json!("not an object");
    dps.start(&bad_address).await.assert_json_error(400);
    // A push to a non-http endpoint is refused.
    let mut ftp = flow_message(&unique("bad"), "lines", PUSH);
    ftp["dataAddress"] = json!({"endpointType": PUSH, "endpoint": "ftp://x/y"});
    dps.start(&ftp).await.assert_json_error(400);
    // A dataset this data plane does not offer.
    dps.start(&flow_message(&unique("bad"), "no-such-dataset", PULL))
        .await
        .assert_json_error(400);
    for action in ["started", "suspend", "resume", "terminate"] {
        raw(&format!("/dataflows/{id}/{action}"), "{bad json")
            .await
            .assert_json_error(400);
    }
    assert_eq!(dps.state(&id).await, "PREPARED");

    // Unknown flows: 404 with a JSON body.
    for action in ["started", "suspend", "resume", "terminate", "completed"] {
        dps.act("no-such-flow", action, json!({}))
            .await
            .assert_json_error(404);
    }
    dps.status("no-such-flow").await.assert_json_error(404);

    // Illegal transitions: 400 with a JSON body; the state does not change.
    dps.act(&id, "suspend", json!({}))
        .await
        .assert_json_error(400);
    dps.act(&id, "completed", json!({}))
        .await
        .assert_json_error(400);
    assert_eq!(dps.state(&id).await, "PREPARED");

    // Unknown fields are ignored; RC2 messages (transferType, no profile, no claims) accepted.
    let mut extra = flow_message(&unique("extra"), "misc-1", PUSH);
    extra["somethingNew"] = json!({"x": [1, 2]});
    assert_eq!(dps.prepare(&extra).await.status, 200);
    let rc2 = json!({"messageId": unique("m"), "participantId": "p", "counterPartyId": "c",
        "dataspaceContext": "x", "processId": unique("rc2"), "agreementId": "a",
        "datasetId": "lines", "transferType": "HttpData-PULL"});
    let a = dps.start(&rc2).await;
    assert_eq!((a.status, a.state()), (200, "STARTED"), "{}", a.body);

    // Deduplication: the same messageId replays the stored answer; another one is a 409.
    for (consumer, dataset, profile) in [(true, "misc-2", PUSH), (false, "lines", PULL)] {
        let msg = flow_message(&unique("dedup"), dataset, profile);
        let send = |m: Value| async move {
            if consumer {
                dps.prepare(&m).await
            } else {
                dps.start(&m).await
            }
        };
        let first = send(msg.clone()).await;
        assert_eq!(first.status, 200, "{}", first.body);
        let replay = send(msg.clone()).await;
        assert_eq!(replay.status, 200);
        assert_eq!(
            replay.body, first.body,
            "a replay answers the stored response"
        );
        let mut other = msg.clone();
        other["messageId"] = json!(unique("other"));
        send(other).await.assert_json_error(409);
        // Also after the flow moved on.
        dps.act(&first.id(), "terminate", json!({})).await;
        let late = send(msg).await;
        assert_eq!((late.status, late.id()), (200, first.id()));
    }
    // An asynchronous create replays as a 202.
    let msg = flow_message(&unique("dedup-async"), "misc-async", PULL);
    let first = dps.prepare(&msg).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let replay = dps.prepare(&msg).await;
    assert_eq!((replay.status, replay.id()), (202, first.id()));
    assert!(replay.location.is_some());

    env.server.assert_no_server_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_duplicate_starts_make_one_flow() {
    let env = Env::start().await;
    let dps = &env.dps;

    // 100 identical push starts: all answered with the same flow, which transfers once.
    let process = unique("dup-same");
    let mut msg = flow_message(&process, "lines", PUSH);
    msg["dataAddress"] = json!({"endpointType": PUSH,
        "endpoint": format!("{}/sink/{process}", env.cp.url)});
    let answers = join_all((0..100).map(|_| dps.start(&msg))).await;
    let first = answers[0].clone();
    assert_eq!(first.status, 200, "{}", first.body);
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            a.body, first.body,
            "every duplicate replays the same answer"
        );
    }
    env.cp.wait_for(&process, "completed", WAIT).await;
    dps.wait_state(&first.id(), "COMPLETED", WAIT).await;
    assert_eq!(
        String::from_utf8_lossy(&env.cp.sink(&process)),
        INPUT,
        "the dataset was sent exactly once"
    );

    // 100 starts of one process with different messageIds: one wins, 99 are 409s.
    let process2 = unique("dup-other");
    let answers = join_all((0..100).map(|_| {
        let msg = flow_message(&process2, "lines", PULL);
        async move { dps.start(&msg).await }
    }))
    .await;
    let won: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    for a in answers.iter().filter(|a| a.status != 200) {
        a.assert_json_error(409);
    }

    let flows = dps.all_flows().await;
    for p in [&process, &process2] {
        let n = flows
            .iter()
            .filter(|f| f["processId"] == p.as_str())
            .count();
        assert_eq!(n, 1, "flows of process {p}");
    }
    env.server.assert_no_server_errors().await;
}

/// The specification's table: what moving to `to` from `from` does.
fn table(from: &str, to: &str) -> &'static str {
    if from == to {
        return "same";
    }
    let allowed: &[&str] = match to {
        "STARTED" => &["PREPARED", "STARTING", "SUSPENDED"],
        "SUSPENDED" => &["STARTED"],
        "COMPLETED" => &["STARTED"],
        "TERMINATED" => &["PREPARING", "PREPARED", "STARTING", "STARTED", "SUSPENDED"],
        _ => &[],
    };
    if allowed.contains(&from) {
        "apply"
    } else {
        "illegal"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_of_the_table_over_http() {
    let env = Env::start().await;
    // Callbacks never succeed, so PREPARING and STARTING stay.
    env.cp.fail_next(usize::MAX);
    let dps = &env.dps;
    let actions = [
        ("started", "STARTED"),
        ("resume", "STARTED"),
        ("suspend", "SUSPENDED"),
        ("completed", "COMPLETED"),
        ("terminate", "TERMINATED"),
    ];
    let states = [
        "PREPARING",
        "PREPARED",
        "STARTING",
        "STARTED",
        "SUSPENDED",
        "COMPLETED",
        "TERMINATED",
    ];
    let cell = |from: &'static str, action: &'static str, to: &'static str| async move {
        // A flow in `from`: consumer push flows, except STARTING (an async provider pull).
        let process = unique(&format!("table-{from}-{action}"));
        let id = match from {
            "PREPARING" => {
                dps.prepare(&flow_message(&process, "misc-async", PUSH))
                    .await
            }
            "STARTING" => {
                dps.start(&flow_message(&process, "lines-async", PULL))
                    .await
            }
            _ => dps.prepare(&flow_message(&process, "misc-3", PUSH)).await,
        }
        .id();
        let path: &[(&str, &str)] = match from {
            "STARTED" => &[("started", "STARTED")],
            "SUSPENDED" => &[("started", "STARTED"), ("suspend", "SUSPENDED")],
            "COMPLETED" => &[("started", "STARTED"), ("completed", "COMPLETED")],
            "TERMINATED" => &[("terminate", "TERMINATED")],
            _ => &[],
        };
        for (a, s) in path {
            let r = dps.act(&id, a, json!({})).await;
            assert_eq!((r.status, r.state()), (200, *s), "{}", r.body);
        }
        assert_eq!(dps.state(&id).await, from);
        let count = dps.flow(&id).await["stateCount"]
            .as_u64()
            .expect("stateCount");
        let a = dps.act(&id, action, json!({})).await;
        let provider = from == "STARTING";
        let expect = if action == "started" && provider {
            "illegal" // `started` is a consumer message
        } else {
            table(from, to)
        };
        let after = dps.flow(&id).await;
        let ctx = format!("{action} from {from}: {} {}", a.status, a.body);
        match expect {
            "apply" => {
                assert_eq!((a.status, a.state()), (200, to), "{ctx}");
                assert_eq!(after["state"], to, "{ctx}");
                assert_eq!(after["stateCount"], count + 1, "{ctx}");
            }
            "same" => {
                assert_eq!((a.status, a.state()), (200, to), "{ctx}");
                assert_eq!(
                    after["stateCount"], count,
                    "same state changes nothing: {ctx}"
                );
            }
            _ => {
                a.assert_json_error(400);
                assert_eq!(after["state"], from, "{ctx}");
                assert_eq!(after["stateCount"], count, "{ctx}");
            }
        }
    };
    let cells = states
        .iter()
        .flat_map(|from| actions.iter().map(move |(a, to)| (*from, *a, *to)));
    join_all(cells.map(|(f, a, t)| cell(f, a, t))).await;
    env.server.assert_no_server_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_retried_until_answered_and_failures_send_errored() {
    let env = Env::start().await;
    let dps = &env.dps;
    env.cp.fail_next(3);
    let process = unique("retry");
    let a = dps
        .start(&flow_message(&process, "lines-async", PULL))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.id();
    // Until the control plane answers 2xx, the transition the callback reports is not committed.
    loop {
        let state = dps.state(&id).await;
        let attempts = env.cp.calls_for(&process);
        if attempts.iter().any(|c| c.answered < 300) {
            break;
        }
        assert_eq!(state, "STARTING", "read before any callback succeeded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cb = env.cp.wait_for(&process, "started", WAIT).await;
    let attempts = env.cp.calls_for(&process);
    let codes: Vec<u16> = attempts.iter().map(|c| c.answered).collect();
    assert_eq!(
        codes,
        [503, 503, 503, 200],
        "three failures, then delivered"
    );
    for c in &attempts {
        assert_eq!(c.event, "started");
        assert_eq!(
            c.body["messageId"], cb.body["messageId"],
            "the same message is retried"
        );
    }
    dps.wait_state(&id, "STARTED", WAIT).await;

    // A transfer that fails reports `errored` and changes no state.
    let process = unique("errored");
    let mut msg = flow_message(&process, "lines", PUSH);
    msg["dataAddress"] = json!({"endpointType": PUSH,
        "endpoint": format!("{}/reject/{process}", env.cp.url)});
    let a = dps.start(&msg).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let cb = env.cp.wait_for(&process, "errored", WAIT).await;
    assert_eq!(cb.body["dataFlowId"], a.id().as_str());
    assert!(
        cb.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        cb.body
    );
    assert_eq!(dps.state(&a.id()).await, "STARTED");
    env.server.assert_no_server_errors().await;
}

/// A provider and a consumer `sluice serve` for a 100 MiB file dataset `big`.
struct Pair {
    cp: ControlPlane,
    provider: Server,
    consumer: Server,
    source: PathBuf,
    received: PathBuf,
    _files: tempfile::TempDir,
}

const BIG: usize = 100 << 20;

/// Random-ish bytes (xorshift), any byte value, ending with `\n` (the file source reads lines:
/// a last line without `\n` would be written back with one).
fn big_file(path: &Path) {
    let mut data = Vec::with_capacity(BIG);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < BIG {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(BIG);
    data[BIG - 1] = b'\n';
    std::fs::write(path, data).expect("dataset");
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- provider log ---\n{}", tail(&self.provider.logs()));
            eprintln!("--- consumer log ---\n{}", tail(&self.consumer.logs()));
        }
    }
}

impl Pair {
    async fn start() -> Pair {
        let cp = ControlPlane::start().await;
        let files = tempfile::tempdir().expect("tempdir");
        let source = files.path().join("big.bin");
        let received = files.path().join("received.bin");
        big_file(&source);
        let provider = Server::start(&signaling_config(
            &cp.endpoint(),
            TOKEN,
            json!({"big": {"plugin": "file", "settings": {"path": path_str(&source)}}}),
            json!({}),
        ));
        let consumer = Server::start(&signaling_config(
            &cp.endpoint(),
            TOKEN,
            json!({}),
            json!({"big": {"plugin": "file", "settings": {"path": path_str(&received)}}}),
        ));
        Pair {
            cp,
            provider,
            consumer,
            source,
            received,
            _files: files,
        }
    }

    fn assert_identical(&self) {
        let a = std::fs::read(&self.source).expect("source");
        let b = std::fs::read(&self.received).expect("received");
        let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
        assert!(
            a.len() == b.len() && first_diff.is_none(),
            "received {} bytes of {}, first difference at {first_diff:?}",
            b.len(),
            a.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_push_of_100_mib_between_two_servers() {
    let pair = Pair::start().await;
    let provider = Dps::new(&pair.provider.api(), Some(TOKEN));
    let consumer = Dps::new(&pair.consumer.api(), Some(TOKEN));
    let (p_process, c_process) = (unique("push-provider"), unique("push-consumer"));
    let prepared = consumer
        .prepare(&flow_message(&c_process, "big", PUSH))
        .await;
    assert_eq!(
        (prepared.status, prepared.state()),
        (200, "PREPARED"),
        "{}",
        prepared.body
    );
    let mut start = flow_message(&p_process, "big", PUSH);
    start["dataAddress"] = prepared.body["dataAddress"].clone();
    let started = provider.start(&start).await;
    assert_eq!(
        (started.status, started.state()),
        (200, "STARTED"),
        "{}",
        started.body
    );
    let consumer_id = prepared.id();
    let a = consumer.act(&consumer_id, "started", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);

    let cb = pair
        .cp
        .wait_for(&p_process, "completed", Duration::from_secs(300))
        .await;
    assert_eq!(cb.body["state"], "COMPLETED");
    provider.wait_state(&started.id(), "COMPLETED", WAIT).await;
    // The control plane tells the consumer; everything it acknowledged is durable.
    let done = consumer.act(&consumer_id, "completed", json!({})).await;
    assert_eq!(
        (done.status, done.state()),
        (200, "COMPLETED"),
        "{}",
        done.body
    );
    pair.assert_identical();
    pair.provider.assert_no_server_errors().await;
    pair.consumer.assert_no_server_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_pull_of_100_mib_between_two_servers() {
    let pair = Pair::start().await;
    let provider = Dps::new(&pair.provider.api(), Some(TOKEN));
    let consumer = Dps::new(&pair.consumer.api(), Some(TOKEN));
    let (p_process, c_process) = (unique("pull-provider"), unique("pull-consumer"));
    let started = provider.start(&flow_message(&p_process, "big", PULL)).await;
    assert_eq!(
        (started.status, started.state()),
        (200, "STARTED"),
        "{}",
        started.body
    );
    let prepared = consumer
        .prepare(&flow_message(&c_process, "big", PULL))
        .await;
    assert_eq!(
        (prepared.status, prepared.state()),
        (200, "PREPARED"),
        "{}",
        prepared.body
    );
    let consumer_id = prepared.id();
    let a = consumer
        .act(
            &consumer_id,
            "started",
            json!({"dataAddress": started.body["dataAddress"].clone()}),
        )
        .await;
    assert_eq!((a.status, a.state()), (200, "STARTED"), "{}", a.body);

    let cb = pair
        .cp
        .wait_for(&c_process, "completed", Duration::from_secs(300))
        .await;
    assert_eq!(cb.body["state"], "COMPLETED");
    consumer.wait_state(&consumer_id, "COMPLETED", WAIT).await;
    pair.assert_identical();
    let done = provider.act(&started.id(), "completed", json!({})).await;
    assert_eq!(
        (done.status, done.state()),
        (200, "COMPLETED"),
        "{}",
        done.body
    );
    pair.provider.assert_no_server_errors().await;
    pair.consumer.assert_no_server_errors().await;
}
