//! The public data endpoint (mounted at `/public`): `GET /flows/{id}/data` streams a provider
//! pull flow's dataset, `POST /flows/{id}/data` takes a consumer push flow's data, `POST /token`
//! is the OAuth2 `refresh_token` grant. Every data request needs `Authorization: Bearer <token>`;
//! a missing, unknown, revoked or expired token is a 401 with a JSON error.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::inbound::{InboundError, BYTE_OFFSET, POSITION_KIND_HEADER};
use super::serve::range_start;
use super::tokens::TokenError;
use super::Transfers;
use crate::flow::{DataFlow, Side};
use crate::messages::TransferMode;
use crate::state::FlowState;

/// Largest pushed body accepted.
const MAX_PUSH_BODY: usize = 64 << 20;

/// A JSON error response.
pub(super) fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "status": status.as_u16() });
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

pub(super) fn router(t: Arc<Transfers>) -> Router {
    Router::new()
        .route("/flows/{id}/data", get(pull).post(push))
        .route("/token", post(token))
        .layer(DefaultBodyLimit::max(MAX_PUSH_BODY))
        .with_state(t)
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Checks the token and loads the flow.
async fn authorize(t: &Transfers, id: &str, headers: &HeaderMap) -> Result<DataFlow, Response> {
    let token = bearer_token(headers).ok_or_else(|| {
        json_error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>`",
        )
    })?;
    match t.tokens.check(id, token).await {
        Ok(_) => {}
        Err(TokenError::Invalid(why)) => return Err(json_error(StatusCode::UNAUTHORIZED, why)),
        Err(TokenError::Store(e)) => {
            tracing::warn!(error = %e, "public endpoint: cannot check a token");
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the token right now",
            ));
        }
    }
    let dp = t.dataplane().ok_or_else(|| {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the data plane is starting",
        )
    })?;
    match dp.flows().get(id).await {
        Ok(Some((flow, _))) => Ok(flow),
        Ok(None) => Err(json_error(
            StatusCode::NOT_FOUND,
            &format!("unknown data flow {id}"),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "public endpoint: cannot read a flow");
            Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the data flow right now",
            ))
        }
    }
}

async fn pull(
    State(t): State<Arc<Transfers>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let flow = match authorize(&t, &id, &headers).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if flow.side != Side::Provider || flow.mode != TransferMode::Pull {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("data flow {id} is not a provider pull flow: GET is not served"),
        );
    }
    if flow.state != FlowState::Started {
        return json_error(
            StatusCode::CONFLICT,
            &format!("data flow {id} is {}, not STARTED", flow.state),
        );
    }
    let cancel = {
        let mut streams = t.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams
            .entry(id.clone())
            .or_insert_with(CancellationToken::new)
            .child_token()
    };
    t.serve_dataset(
        &flow.dataset_id,
        range_start(headers.get(header::RANGE)),
        cancel,
    )
    .await
}

async fn push(
    State(t): State<Arc<Transfers>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let flow = match authorize(&t, &id, &headers).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if flow.side != Side::Consumer || flow.mode != TransferMode::Push {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("data flow {id} is not a consumer push flow: POST is not accepted"),
        );
    }
    let offsets = headers
        .get(POSITION_KIND_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(BYTE_OFFSET.as_bytes()));
    let last = headers
        .get(sluice_connectors::http::destination::LAST_POSITION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|_| offsets);
    match t.inbound.deliver(&id, body, last).await {
        Ok(n) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "received": n })),
        )
            .into_response(),
        Err(e @ InboundError::BadRequest(_)) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ InboundError::Gap { .. }) => json_error(StatusCode::CONFLICT, &e.to_string()),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Decodes `application/x-www-form-urlencoded` text.
fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

async fn token(State(t): State<Arc<Transfers>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    let (grant_type, refresh) = if text.trim_start().starts_with('{') {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => (
                v.get("grant_type")
                    .and_then(|x| x.as_str())
                    .map(str::to_string),
                v.get("refresh_token")
                    .and_then(|x| x.as_str())
                    .map(str::to_string),
            ),
            Err(e) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("the body is not JSON: {e}"),
                )
            }
        }
    } else {
        (
            form_value(&text, "grant_type"),
            form_value(&text, "refresh_token"),
        )
    };
    if grant_type.as_deref() != Some("refresh_token") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be refresh_token",
        );
    }
    let Some(refresh) = refresh.filter(|r| !r.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    match t.tokens.refresh(&refresh).await {
        Ok(grant) => {
            let mut body = serde_json::json!({
                "access_token": grant.access_token,
                "token_type": "Bearer",
                "expires_in": t.tokens.ttl().as_secs(),
            });
            if let Some(r) = grant.refresh_token {
                body["refresh_token"] = serde_json::Value::String(r);
            }
            let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(TokenError::Invalid(why)) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
        Err(TokenError::Store(e)) => {
            tracing::warn!(error = %e, "token endpoint: store failed");
            oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "cannot refresh right now",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let body = "grant_type=refresh_token&refresh_token=a.b%2Bc+d";
        assert_eq!(
            form_value(body, "grant_type").as_deref(),
            Some("refresh_token")
        );
        assert_eq!(
            form_value(body, "refresh_token").as_deref(),
            Some("a.b+c d")
        );
        assert_eq!(form_value(body, "x"), None);
        assert_eq!(decode("100%"), "100%");
    }
}
