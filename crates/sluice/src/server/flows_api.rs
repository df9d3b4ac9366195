//! Sluice's read-only extension of the DPS API: list data flows (`GET {base}/dataflows`,
//! optionally by state, paginated) and show one whole (`GET {base}/dataflows/{id}`). Authenticated
//! like the DPS routes. Secrets (callback credentials, tokens in handed-out addresses) are masked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_signaling::repository::flow_key;
use sluice_signaling::{DataFlow, DataPlane, FlowState, SignalingError};
use sluice_state::Page;

/// Most flows in one listing page.
pub const MAX_PAGE: usize = 1000;
/// Flows in a listing page when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// What masked secrets read as.
pub const MASK: &str = "***";

/// Credentials accepted on the extension routes (the configured control planes').
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    accepted: HashSet<String>,
}

impl Credentials {
    /// Accepts `credential` as a bearer token or API key.
    pub fn allow(&mut self, credential: &str) {
        self.accepted.insert(credential.to_string());
    }

    /// True if the request may pass: no credential is configured, or it sends an accepted one as
    /// `Authorization: Bearer ...` or `X-Api-Key`.
    fn admits(&self, headers: &HeaderMap) -> bool {
        if self.accepted.is_empty() {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
        let api_key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        [bearer, api_key]
            .into_iter()
            .flatten()
            .any(|c| self.accepted.contains(c))
    }
}

struct Api {
    dataplane: DataPlane,
    credentials: Credentials,
}

/// The extension routes under `base_path`.
pub fn routes(dataplane: DataPlane, base_path: &str, credentials: Credentials) -> Router {
    let base = base_path.trim_end_matches('/');
    let api = Arc::new(Api {
        dataplane,
        credentials,
    });
    Router::new()
        .route(&format!("{base}/dataflows"), get(list))
        .route(&format!("{base}/dataflows/{{id}}"), get(show))
        .with_state(api)
}

/// `GET {base}/dataflows` query parameters.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    page_token: Option<String>,
}

/// One page of flows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowPage {
    /// The flows of this page (masked), in id order.
    pub flows: Vec<Value>,
    /// Pass as `pageToken` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

fn error(status: StatusCode, kind: &'static str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": kind, "message": message })),
    )
        .into_response()
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong credentials: send `Authorization: Bearer <token>` or `X-Api-Key`".into(),
    )
}

fn failed(e: SignalingError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "listing data flows failed");
    }
    error(status, "internal", e.to_string())
}

/// Parses a state name as the API spells it (any case).
pub fn parse_state(text: &str) -> Option<FlowState> {
    serde_json::from_value(Value::String(text.trim().to_ascii_uppercase())).ok()
}

async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !api.credentials.admits(&headers) {
        return unauthorized();
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let state = match q.state.as_deref().filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(s) => match parse_state(s) {
            Some(st) => Some(st),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "unknown state {s:?}: one of INITIALIZED, PREPARING, PREPARED, STARTING, \
                         STARTED, SUSPENDED, COMPLETED, TERMINATED"
                    ),
                )
            }
        },
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("limit must be from 1 to {MAX_PAGE}, not {limit}"),
        );
    }
    let page = Page {
        limit: Some(limit),
        token: q.page_token,
    };
    match flows_page(&api.dataplane, page).await {
        Ok((flows, next)) => Json(FlowPage {
            flows: flows
                .iter()
                .filter(|f| state.is_none_or(|s| f.state == s))
                .map(masked)
                .collect(),
            next_page_token: next,
        })
        .into_response(),
        Err(e) => failed(e),
    }
}

async fn show(State(api): State<Arc<Api>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !api.credentials.admits(&headers) {
        return unauthorized();
    }
    match api.dataplane.flows().get(&id).await {
        Ok(Some((flow, _))) => Json(masked(&flow)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no data flow with id {id:?}"),
        ),
        Err(e) => failed(e),
    }
}

/// One page of stored flows (in id order) and the token of the next page.
pub async fn flows_page(
    dataplane: &DataPlane,
    page: Page,
) -> Result<(Vec<DataFlow>, Option<String>), SignalingError> {
    let (ids, next) = dataplane.flows().list(page).await?;
    let keys: Vec<String> = ids.iter().map(|id| flow_key(id)).collect();
    let items = dataplane.flows().store().bulk_get(&keys).await;
    let mut flows = Vec::with_capacity(ids.len());
    for (id, item) in ids.iter().zip(items) {
        // `None`: deleted between the listing and the read.
        if let Some(item) = item? {
            match serde_json::from_slice::<DataFlow>(&item.value) {
                Ok(f) => flows.push(f),
                Err(e) => tracing::warn!(flow = %id, error = %e, "skipping a corrupt data flow"),
            }
        }
    }
    Ok((flows, next))
}

/// How many flows are in each state, by scanning every stored flow.
pub async fn count_by_state(
    dataplane: &DataPlane,
) -> Result<HashMap<FlowState, u64>, SignalingError> {
    let mut counts = HashMap::new();
    let mut page = Page {
        limit: Some(MAX_PAGE),
        token: None,
    };
    loop {
        let (flows, next) = flows_page(dataplane, page).await?;
        for f in flows {
            *counts.entry(f.state).or_insert(0) += 1;
        }
        match next {
            Some(token) => {
                page = Page {
                    limit: Some(MAX_PAGE),
                    token: Some(token),
                }
            }
            None => return Ok(counts),
        }
    }
}

/// A flow as JSON with its secrets masked: the callback credentials and the `authorization` /
/// `refreshToken` properties of its addresses.
pub fn masked(flow: &DataFlow) -> Value {
    let mut v = serde_json::to_value(flow).unwrap_or(Value::Null);
    mask(&mut v);
    v
}

fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(c) = map.get_mut("callbackAuthorization") {
                *c = Value::String(MASK.into());
            }
            let secret_property = matches!(
                map.get("name").and_then(Value::as_str),
                Some("authorization" | "refreshToken")
            );
            if secret_property {
                if let Some(value) = map.get_mut("value") {
                    *value = Value::String(MASK.into());
                }
            }
            map.values_mut().for_each(mask);
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_everywhere() {
        let mut v = serde_json::json!({
            "callbackAuthorization": "Bearer s3cret",
            "issuedAddress": {"endpoint": "http://x", "endpointProperties": [
                {"name": "authorization", "value": "tok"},
                {"name": "authType", "value": "bearer"},
                {"name": "refreshToken", "value": "r"}]},
            "createdResponse": {"dataAddress": {"endpointProperties": [
                {"name": "authorization", "value": "tok"}]}}
        });
        mask(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("\"tok\""),
            "{text}"
        );
        assert!(text.contains("bearer"), "non-secret kept: {text}");
        assert_eq!(v["issuedAddress"]["endpointProperties"][2]["value"], MASK);
    }

    #[test]
    fn states_parse_in_any_case() {
        assert_eq!(parse_state("started"), Some(FlowState::Started));
        assert_eq!(parse_state("TERMINATED"), Some(FlowState::Terminated));
        assert_eq!(parse_state("running"), None);
    }
}
