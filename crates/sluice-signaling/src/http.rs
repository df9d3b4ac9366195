//! The Data Plane Signaling HTTP API: the routes of the specification under a base path, with
//! control-plane authentication and JSON error bodies. Mount [`router`] in any axum server.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dataplane::DataPlane;
use crate::error::SignalingError;
use crate::messages::FlowMessage;
use crate::messages::{AddressMessage, PrepareMessage, ReasonMessage, StartMessage, StatusMessage};

/// A control plane allowed to call this data plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    /// Its id.
    pub controlplane_id: String,
    /// Its base URL for callbacks.
    #[serde(default)]
    pub endpoint: String,
    /// What it sends in `Authorization` when it calls us (a bearer token, or an API key sent as
    /// `X-Api-Key`), and what we send when we call it back.
    #[serde(default)]
    pub authorization: Option<String>,
}

/// Who may call the API.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Accepted credentials: a bearer token or API key → the control plane it identifies.
    credentials: BTreeMap<String, String>,
}

impl Access {
    /// Accepts `credential` (bearer token or API key) as control plane `id`.
    pub fn allow(&mut self, id: impl Into<String>, credential: impl Into<String>) {
        self.credentials.insert(credential.into(), id.into());
    }

    /// True when no credential is configured: the API is open (for local use only).
    pub fn is_open(&self) -> bool {
        self.credentials.is_empty()
    }

    /// The control plane a request's credentials identify, or `None` if they are missing/wrong.
    fn identify(&self, headers: &HeaderMap) -> Option<String> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
        let api_key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string());
        [bearer, api_key]
            .into_iter()
            .flatten()
            .find_map(|c| self.credentials.get(&c).cloned())
    }
}

/// What the handlers share.
struct Api {
    dataplane: DataPlane,
    base_path: String,
    access: RwLock<Access>,
}

/// Store key of a registered control plane.
pub fn control_plane_key(id: &str) -> String {
    format!("sluice/controlplanes/{id}")
}

/// A registered control plane, if any.
pub async fn registered(
    dataplane: &DataPlane,
    id: &str,
) -> Result<Option<ControlPlane>, SignalingError> {
    let Some(item) = dataplane
        .flows()
        .store()
        .get(&control_plane_key(id))
        .await?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&item.value).map(Some).map_err(|e| {
        SignalingError::Internal(format!(
            "registration of control plane {id} is corrupt: {e}"
        ))
    })
}

impl Api {
    /// The control plane a request comes from (by its credentials), if identified.
    fn caller(&self, headers: &HeaderMap) -> Option<String> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .identify(headers)
    }

    /// Fills in the callback address (RC3 messages carry none) and its credentials from the
    /// caller's registration.
    async fn callback_for(
        &self,
        headers: &HeaderMap,
        msg: &mut FlowMessage,
    ) -> Result<(), SignalingError> {
        let Some(id) = self.caller(headers) else {
            return Ok(());
        };
        if let Some(cp) = registered(&self.dataplane, &id).await? {
            if msg.callback_address.is_none() && !cp.endpoint.is_empty() {
                msg.callback_address = Some(cp.endpoint);
            }
            msg.callback_authorization = cp.authorization;
        }
        Ok(())
    }
}

/// A JSON error body: `{"error": "...", "message": "..."}`.
#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
}

fn error_response(status: StatusCode, error: &'static str, message: String) -> Response {
    (status, Json(ErrorBody { error, message })).into_response()
}

/// A request refused before it reached the data plane.
struct Rejection {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl Rejection {
    fn bad_request(message: String) -> Self {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            message,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        error_response(self.status, self.error, self.message)
    }
}

impl IntoResponse for SignalingError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match status.as_u16() {
            400 => "bad_request",
            404 => "not_found",
            409 => "conflict",
            503 => "unavailable",
            _ => "internal",
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "signaling request failed");
        }
        error_response(status, kind, self.to_string())
    }
}

fn parse<T: DeserializeOwned + Default>(body: &Bytes, allow_empty: bool) -> Result<T, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        if allow_empty {
            return Ok(T::default());
        }
        return Err(Rejection::bad_request(
            "the request body is empty; a JSON object is required".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request(format!("malformed JSON body: {e}")))
}

fn check_access(api: &Api, headers: &HeaderMap) -> Result<(), Rejection> {
    let access = api.access.read().unwrap_or_else(|p| p.into_inner());
    if access.is_open() || access.identify(headers).is_some() {
        Ok(())
    } else {
        Err(Rejection {
            status: StatusCode::UNAUTHORIZED,
            error: "unauthorized",
            message:
                "missing or wrong credentials: send `Authorization: Bearer <token>` or `X-Api-Key`"
                    .into(),
        })
    }
}

/// The signaling routes under `base_path` (e.g. `/api/v1`). `access` lists accepted credentials.
pub fn router(dataplane: DataPlane, base_path: &str, access: Access) -> Router {
    let base = base_path.trim_end_matches('/').to_string();
    let api = Arc::new(Api {
        dataplane,
        base_path: base.clone(),
        access: RwLock::new(access),
    });
    // Routes carry the base path themselves (no `nest`): one router lookup per request.
    let at = |path: &str| format!("{base}{path}");
    Router::new()
        .route(&at("/dataflows/prepare"), post(prepare))
        .route(&at("/dataflows/start"), post(start))
        .route(&at("/dataflows/{id}/started"), post(started))
        .route(&at("/dataflows/{id}/suspend"), post(suspend))
        .route(&at("/dataflows/{id}/resume"), post(resume))
        .route(&at("/dataflows/{id}/terminate"), post(terminate))
        .route(&at("/dataflows/{id}/completed"), post(completed))
        .route(&at("/dataflows/{id}/status"), get(status))
        .route(&at("/controlplanes"), put(register))
        .route(&at("/controlplanes/{id}"), delete(unregister))
        .with_state(api)
}

fn created(api: &Api, status: StatusMessage, is_async: bool) -> Response {
    if is_async {
        let location = format!("{}/dataflows/{}/status", api.base_path, status.data_flow_id);
        (
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(status),
        )
            .into_response()
    } else {
        (StatusCode::OK, Json(status)).into_response()
    }
}

macro_rules! guard {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r.into_response(),
        }
    };
}

async fn prepare(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    guard!(check_access(&api, &headers));
    let mut msg: PrepareMessage = guard!(parse(&body, false));
    if let Err(e) = api.callback_for(&headers, &mut msg.flow).await {
        return e.into_response();
    }
    match api.dataplane.prepare(msg).await {
        Ok((status, is_async)) => created(&api, status, is_async),
        Err(e) => e.into_response(),
    }
}

async fn start(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    guard!(check_access(&api, &headers));
    let mut msg: StartMessage = guard!(parse(&body, false));
    if let Err(e) = api.callback_for(&headers, &mut msg.flow).await {
        return e.into_response();
    }
    match api.dataplane.start(msg).await {
        Ok((status, is_async)) => created(&api, status, is_async),
        Err(e) => e.into_response(),
    }
}

fn respond(r: Result<StatusMessage, SignalingError>) -> Response {
    match r {
        Ok(status) => (StatusCode::OK, Json(status)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A transition route: `POST /dataflows/{id}/<action>` with an optional JSON body of type `M`.
macro_rules! transition_route {
    ($name:ident, $msg:ty) => {
        async fn $name(
            State(api): State<Arc<Api>>,
            Path(id): Path<String>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            guard!(check_access(&api, &headers));
            let msg: $msg = guard!(parse(&body, true));
            respond(api.dataplane.$name(&id, msg).await)
        }
    };
}

transition_route!(started, AddressMessage);
transition_route!(suspend, ReasonMessage);
transition_route!(resume, AddressMessage);
transition_route!(terminate, ReasonMessage);

async fn completed(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    guard!(check_access(&api, &headers));
    respond(api.dataplane.completed(&id).await)
}

async fn status(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    guard!(check_access(&api, &headers));
    match api.dataplane.status(&id).await {
        Ok(s) => (StatusCode::OK, Json(s)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn register(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    guard!(check_access(&api, &headers));
    let cp: ControlPlane = guard!(parse_control_plane(&body));
    if cp.controlplane_id.trim().is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing required field: controlplaneId".into(),
        );
    }
    let value = match serde_json::to_vec(&cp) {
        Ok(v) => v,
        Err(e) => return SignalingError::Internal(e.to_string()).into_response(),
    };
    let req = sluice_state::SetRequest::new(control_plane_key(&cp.controlplane_id), value);
    match api.dataplane.flows().store().set(req).await {
        Ok(_) => (StatusCode::OK, Json(cp)).into_response(),
        Err(e) => SignalingError::from(e).into_response(),
    }
}

fn parse_control_plane(body: &Bytes) -> Result<ControlPlane, Rejection> {
    serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request(format!("malformed control plane registration: {e}")))
}

async fn unregister(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    guard!(check_access(&api, &headers));
    match registered(&api.dataplane, &id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no control plane with id {id:?}"),
            )
        }
        Err(e) => return e.into_response(),
    }
    let req = sluice_state::DeleteRequest::new(control_plane_key(&id));
    match api.dataplane.flows().store().delete(req).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => SignalingError::from(e).into_response(),
    }
}
