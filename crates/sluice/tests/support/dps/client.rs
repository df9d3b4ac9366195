//! The control plane's side of the DPS API, as the conformance kit uses it: `Authorization` on
//! every call, any answer read as JSON, exact state strings from `/status`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

/// The HTTP pull profile.
pub const PULL: &str = "https://w3id.org/dspace-sig/profile/http-pull";
/// The HTTP push profile.
pub const PUSH: &str = "https://w3id.org/dspace-sig/profile/http-push";

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A unique id with a readable prefix.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An answer: status code, `Location` header and JSON body (Null when not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The body as JSON.
    pub body: Value,
}

impl Answer {
    /// The `dataFlowId` of a status message.
    pub fn id(&self) -> String {
        self.body["dataFlowId"]
            .as_str()
            .unwrap_or_else(|| panic!("no dataFlowId in {} {}", self.status, self.body))
            .to_string()
    }

    /// The `state` of a status message.
    pub fn state(&self) -> &str {
        self.body["state"].as_str().unwrap_or("")
    }

    /// Asserts a 4xx with a JSON error body.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.body.is_object()
                && (self.body["message"].is_string() || self.body["error"].is_string()),
            "error body is not a JSON message: {}",
            self.body
        );
    }
}

/// A prepare/start message for `process` (profile and dataset given), with a fresh messageId.
pub fn flow_message(process: &str, dataset: &str, profile: &str) -> Value {
    json!({
        "messageId": unique("msg"),
        "participantId": "did:web:provider",
        "counterPartyId": "did:web:consumer",
        "dataspaceContext": "ctx",
        "processId": process,
        "agreementId": "agreement-1",
        "datasetId": dataset,
        "profile": profile,
        "claims": {}
    })
}

/// The body of a transition request: a fresh `messageId` plus `extra` fields.
fn action_body(extra: Value) -> Value {
    let mut body = json!({"messageId": unique("msg")});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// The value of a property of a data address.
pub fn property(address: &Value, name: &str) -> Option<String> {
    address["endpointProperties"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["value"].as_str())
        .map(str::to_string)
}

/// A DPS client for one server and token.
#[derive(Clone)]
pub struct Dps {
    /// The API base URL (`http://host:port/api/v1`).
    pub api: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Dps {
    /// A client sending `Authorization: Bearer <token>` (none when `token` is None).
    pub fn new(api: &str, token: Option<&str>) -> Dps {
        Dps {
            api: api.to_string(),
            token: token.map(str::to_string),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(200)
                .build()
                .expect("client"),
        }
    }

    /// Sends `method path` with a raw body (None: no body).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        self.try_send(method, path, body)
            .await
            .expect("the server answers")
    }

    /// Like [`Dps::send`], with a failure to get an answer (a server gone) as an error.
    pub async fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, reqwest::Error> {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await?;
        Ok(Answer {
            status,
            location,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// `POST /dataflows/start`, with a failure to get an answer as an error.
    pub async fn try_start(&self, msg: &Value) -> Result<Answer, reqwest::Error> {
        let body = serde_json::to_vec(msg).expect("json");
        self.try_send(reqwest::Method::POST, "/dataflows/start", Some(body))
            .await
    }

    /// [`Dps::act`], with a failure to get an answer as an error.
    pub async fn try_act(
        &self,
        id: &str,
        action: &str,
        extra: Value,
    ) -> Result<Answer, reqwest::Error> {
        let body = serde_json::to_vec(&action_body(extra)).expect("json");
        self.try_send(
            reqwest::Method::POST,
            &format!("/dataflows/{id}/{action}"),
            Some(body),
        )
        .await
    }

    /// POSTs JSON to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(
            reqwest::Method::POST,
            path,
            Some(serde_json::to_vec(body).expect("json")),
        )
        .await
    }

    /// `POST /dataflows/prepare`.
    pub async fn prepare(&self, msg: &Value) -> Answer {
        self.post("/dataflows/prepare", msg).await
    }

    /// `POST /dataflows/start`.
    pub async fn start(&self, msg: &Value) -> Answer {
        self.post("/dataflows/start", msg).await
    }

    /// `POST /dataflows/{id}/{action}` with `{messageId}` plus `extra` fields.
    pub async fn act(&self, id: &str, action: &str, extra: Value) -> Answer {
        self.post(&format!("/dataflows/{id}/{action}"), &action_body(extra))
            .await
    }

    /// `GET /dataflows/{id}/status`'s answer.
    pub async fn status(&self, id: &str) -> Answer {
        self.send(
            reqwest::Method::GET,
            &format!("/dataflows/{id}/status"),
            None,
        )
        .await
    }

    /// The flow's state string from `/status` (asserting 200 and the exact body shape).
    pub async fn state(&self, id: &str) -> String {
        let a = self.status(id).await;
        assert_eq!(a.status, 200, "status of {id}: {}", a.body);
        assert_eq!(a.body["dataFlowId"], id, "{}", a.body);
        a.state().to_string()
    }

    /// Polls `/status` until the flow is in `state` (fails after `timeout`).
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) {
        self.wait_state_in(id, &[state], timeout).await;
    }

    /// Polls `/status` until the flow is in one of `states` (fails after `timeout`).
    pub async fn wait_state_in(&self, id: &str, states: &[&str], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.state(id).await;
            if states.contains(&now.as_str()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "flow {id} stayed {now}, expected one of {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The whole stored flow (`GET /dataflows/{id}`, a Sluice extension).
    pub async fn flow(&self, id: &str) -> Value {
        let a = self
            .send(reqwest::Method::GET, &format!("/dataflows/{id}"), None)
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }

    /// Every stored flow (`GET /dataflows`, following page tokens).
    pub async fn all_flows(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let path = match &token {
                Some(t) => format!("/dataflows?limit=1000&pageToken={t}"),
                None => "/dataflows?limit=1000".to_string(),
            };
            let a = self.send(reqwest::Method::GET, &path, None).await;
            assert_eq!(a.status, 200, "{}", a.body);
            out.extend(a.body["flows"].as_array().cloned().unwrap_or_default());
            match a.body["nextPageToken"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return out,
            }
        }
    }
}
