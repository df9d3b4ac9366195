//! Dapr's state HTTP API over Sluice's stores: save, get, delete, bulk get, transactions and
//! queries, with Dapr's paths, shapes, headers and status codes (see `docs/configuration.md` for
//! where Sluice differs).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::{Json, Router};
use sluice_state::{
    with_retry, DeleteRequest, RetryPolicy, SetRequest, StateError, Store, TxOperation,
};

use super::body::read_limited;
use super::errors::{
    ApiError, Operation, ERR_METHOD_NOT_ALLOWED, ERR_NOT_SUPPORTED_STATE_OPERATION,
};
use super::stores::NamedStore;
use super::wire::{self, BulkGetDoc, BulkItem, ItemDoc, Metadata, QueryAnswer, QueryItem};
use super::AppState;

/// URL parameters, in order.
type Params = Vec<(String, String)>;

/// The state routes.
pub fn routes() -> Router<Arc<AppState>> {
    let save: MethodRouter<Arc<AppState>> = post(save).put(save);
    Router::new()
        .route("/v1.0/state/{store}", save)
        .route("/v1.0/state/{store}/", axum::routing::any(empty_key))
        .route(
            "/v1.0/state/{store}/{*key}",
            axum::routing::get(get_key)
                .delete(delete_key)
                .post(post_on_key)
                .put(post_on_key),
        )
        .route("/v1.0-alpha1/state/{store}/query", post(query).put(query))
}

/// `/v1.0/state/{store}/` names no key: 400, whatever the method.
async fn empty_key() -> ApiError {
    ApiError::malformed("the key must not be empty: use /v1.0/state/{store}/{key}")
}

/// The store a request names, or 400 naming the known ones.
fn store<'a>(app: &'a AppState, name: &str) -> Result<&'a NamedStore, ApiError> {
    app.stores
        .get(name)
        .ok_or_else(|| ApiError::store_not_found(name, &app.stores.names()))
}

fn path_params<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::malformed(format!("invalid path: {}", e.body_text())))
}

fn query_params(q: Result<Query<Params>, QueryRejection>) -> Result<Params, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::malformed(format!("invalid URL parameters: {}", e.body_text())))
}

/// Fails with 501 when a write asks for a TTL the store cannot keep, before anything is written.
fn check_ttl_support<'a>(
    store: &NamedStore,
    mut requests: impl Iterator<Item = &'a SetRequest>,
) -> Result<(), ApiError> {
    if !store.store.features().ttl && requests.any(|r| r.ttl.is_some()) {
        return Err(ApiError::from_state(
            Operation::Save,
            &StateError::unsupported(store.store.name(), "TTL (ttlInSeconds)"),
        ));
    }
    Ok(())
}

/// `POST|PUT /v1.0/state/{store}`: saves an array of items; 204 when all are saved.
///
/// Not atomic, like Dapr's: every item is checked first (any bad input is a 400 before anything
/// is written), then all are written in one batch; items that fail are listed in the error, the
/// others stay written.
async fn save(
    State(app): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let name = path_params(path)?;
    let store = store(&app, &name)?;
    let params = query_params(params)?;
    let url_metadata = wire::url_metadata(&params);
    let body = read_limited(&headers, body, app.limits.max_body_bytes).await?;
    let items: Vec<ItemDoc> = wire::parse_body(
        &body,
        "save request (expected a JSON array of {\"key\", \"value\", ...} objects)",
    )?;
    if items.is_empty() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let writes = items
        .into_iter()
        .map(|item| {
            wire::write(
                item,
                &Metadata::new(),
                &url_metadata,
                app.limits.max_value_bytes,
                store.retry,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_ttl_support(store, writes.iter().map(|w| &w.request))?;

    // One retry policy per request: the first an item asks for (Dapr 0.x clients send the same
    // on every item), else the store's. Only items that failed transiently are retried.
    let policy = writes.iter().find_map(|w| w.retry);
    let keys: Vec<String> = writes.iter().map(|w| w.request.key.clone()).collect();
    let requests: Vec<SetRequest> = writes.into_iter().map(|w| w.request).collect();
    let results = store.retrying(policy).set_many(requests).await;
    let failures: Vec<(String, StateError)> = keys
        .into_iter()
        .zip(results)
        .filter_map(|(k, r)| r.err().map(|e| (k, e)))
        .collect();
    if failures.is_empty() {
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(bulk_failure(Operation::Save, &failures))
}

/// One error for a bulk operation in which some keys failed: the worst status (a server error if
/// any, else the first failure's), and every failed key with its cause.
fn bulk_failure(op: Operation, failures: &[(String, StateError)]) -> ApiError {
    let errors: Vec<ApiError> = failures
        .iter()
        .map(|(_, e)| ApiError::from_state(op, e))
        .collect();
    let chosen = errors
        .iter()
        .find(|e| e.status.is_server_error())
        .or_else(|| errors.first())
        .cloned()
        .unwrap_or_else(|| ApiError::malformed("no failure"));
    let list: Vec<String> = failures
        .iter()
        .map(|(k, e)| format!("key {k:?}: {e}"))
        .collect();
    ApiError::new(
        chosen.status,
        chosen.code,
        format!(
            "{} item(s) not saved, the others were: {}",
            failures.len(),
            list.join("; ")
        ),
    )
}

/// `GET /v1.0/state/{store}/{key}`: 200 with the stored value and its `ETag`, 204 when missing.
async fn get_key(
    State(app): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (name, key) = path_params(path)?;
    let store = store(&app, &name)?;
    let params = query_params(params)?;
    wire::consistency(wire::url_param(&params, "consistency"))?;
    wire::check_key(&key)?;
    let s = &store.store;
    let item = with_retry(store.retry, || s.get(&key))
        .await
        .map_err(|e| ApiError::from_state(Operation::Get, &e))?;
    let Some(item) = item else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut headers = HeaderMap::new();
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&item.value).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(etag) = HeaderValue::from_str(&item.etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(expires) = wire::expire_time(&item) {
        if let Ok(v) = HeaderValue::from_str(&expires) {
            headers.insert(HeaderName::from_static("metadata.ttlexpiretime"), v);
        }
    }
    Ok((StatusCode::OK, headers, item.value).into_response())
}

/// `DELETE /v1.0/state/{store}/{key}`: 204; `If-Match` makes it conditional.
async fn delete_key(
    State(app): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (name, key) = path_params(path)?;
    let store = store(&app, &name)?;
    let params = query_params(params)?;
    wire::check_key(&key)?;
    wire::concurrency(wire::url_param(&params, "concurrency"))?;
    let mut req = DeleteRequest::new(key);
    req.consistency = wire::consistency(wire::url_param(&params, "consistency"))?;
    if let Some(v) = headers.get(header::IF_MATCH) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::malformed("the If-Match header is not valid text"))?;
        req.etag = wire::if_match(v);
    }
    // Dapr 0.x took a delete's retry policy from URL parameters.
    let retry_doc = wire::RetryPolicyDoc {
        interval: wire::url_param(&params, "retryInterval")
            .map(|s| serde_json::Value::String(s.to_string())),
        threshold: wire::url_param(&params, "retryThreshold")
            .map(|t| {
                t.trim().parse::<i64>().map_err(|_| {
                    ApiError::malformed(format!("retryThreshold {t:?} is not a whole number"))
                })
            })
            .transpose()?,
        pattern: wire::url_param(&params, "retryPattern").map(str::to_string),
    };
    let policy = wire::retry_policy(&retry_doc, store.retry)?;
    let s = &store.store;
    with_retry(policy, || s.delete(req.clone()))
        .await
        .map_err(|e| ApiError::from_state(Operation::Delete, &e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST|PUT /v1.0/state/{store}/bulk` and `/transaction`; other keys take only GET and DELETE.
async fn post_on_key(
    State(app): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (name, action) = path_params(path)?;
    match action.as_str() {
        "bulk" => bulk_get(app, name, params, headers, body).await,
        "transaction" => transaction(app, name, params, headers, body)
            .await
            .map(IntoResponse::into_response),
        _ => {
            let mut e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ERR_METHOD_NOT_ALLOWED,
                format!(
                    "POST is for /v1.0/state/{name} (save), /v1.0/state/{name}/bulk and \
                     /v1.0/state/{name}/transaction; a key takes GET and DELETE"
                ),
            )
            .into_response();
            e.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, DELETE"));
            Ok(e)
        }
    }
}

/// Bulk get: an array with one item per key, in key order; a missing key has no `data`.
async fn bulk_get(
    app: Arc<AppState>,
    name: String,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let store = store(&app, &name)?;
    let params = query_params(params)?;
    let body = read_limited(&headers, body, app.limits.max_body_bytes).await?;
    let doc: BulkGetDoc = wire::parse_body(
        &body,
        "bulk get request (expected {\"keys\": [...], \"parallelism\": n})",
    )?;
    if doc.parallelism.is_some_and(|p| p < 0) {
        return Err(ApiError::malformed("parallelism must not be negative"));
    }
    // Metadata is accepted as Dapr accepts it; no store of Sluice's reads it.
    let _metadata = wire::merge_metadata(doc.metadata, &wire::url_metadata(&params));
    if let Some(i) = doc.keys.iter().position(String::is_empty) {
        return Err(ApiError::malformed(format!(
            "keys[{i}] is empty; a key must not be empty"
        )));
    }
    let results = store.retrying(None).bulk_get(&doc.keys).await;
    let items: Vec<BulkItem> = doc
        .keys
        .into_iter()
        .zip(results)
        .map(|(key, r)| match r {
            Ok(Some(item)) => BulkItem {
                metadata: wire::expire_time(&item)
                    .map(|t| [(wire::TTL_EXPIRE_TIME.to_string(), t)].into()),
                data: Some(wire::embed_value(&item.value)),
                etag: Some(item.etag),
                error: None,
                key,
            },
            Ok(None) => BulkItem {
                key,
                data: None,
                etag: None,
                metadata: None,
                error: None,
            },
            Err(e) => BulkItem {
                key,
                data: None,
                etag: None,
                metadata: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    Ok((StatusCode::OK, Json(items)).into_response())
}

/// A transaction: all ETags checked first, then every operation in order, all or nothing; 204.
async fn transaction(
    app: Arc<AppState>,
    name: String,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let store = store(&app, &name)?;
    if !store.store.features().transactional {
        return Err(ApiError::from_state(
            Operation::Transaction,
            &StateError::unsupported(store.store.name(), "transactions"),
        ));
    }
    let params = query_params(params)?;
    let body = read_limited(&headers, body, app.limits.max_body_bytes).await?;
    let doc: wire::TransactionDoc = wire::parse_body(
        &body,
        "transaction request (expected {\"operations\": [{\"operation\": ..., \"request\": \
         {...}}]})",
    )?;
    if doc.operations.is_empty() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let defaults = wire::merge_metadata(doc.metadata, &wire::url_metadata(&params));
    let mut ops = Vec::with_capacity(doc.operations.len());
    let mut policy: Option<RetryPolicy> = None;
    for (i, op) in doc.operations.into_iter().enumerate() {
        let at = |e: ApiError| e.context(format!("operations[{i}]"));
        match op.operation.as_str() {
            "upsert" => {
                let w = wire::write(
                    op.request,
                    &defaults,
                    &Metadata::new(),
                    app.limits.max_value_bytes,
                    store.retry,
                )
                .map_err(at)?;
                policy = policy.or(w.retry);
                ops.push(TxOperation::Upsert(w.request));
            }
            "delete" => {
                let (req, retry) = wire::delete(op.request).map_err(at)?;
                if let Some(doc) = retry {
                    let r = wire::retry_policy(&doc, store.retry).map_err(at)?;
                    policy = policy.or(Some(r));
                }
                ops.push(TxOperation::Delete(req));
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ERR_NOT_SUPPORTED_STATE_OPERATION,
                    format!(
                        "operations[{i}]: unknown operation {other:?}: expected \"upsert\" or \
                         \"delete\""
                    ),
                ))
            }
        }
    }
    check_ttl_support(
        store,
        ops.iter().filter_map(|op| match op {
            TxOperation::Upsert(r) => Some(r),
            TxOperation::Delete(_) => None,
        }),
    )?;
    let s = &store.store;
    with_retry(policy.unwrap_or(store.retry), || s.multi(ops.clone()))
        .await
        .map_err(|e| ApiError::from_state(Operation::Transaction, &e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST|PUT /v1.0-alpha1/state/{store}/query`: 200 with `{results, token}`, or 204 when nothing
/// matches (as Dapr answers).
async fn query(
    State(app): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = path_params(path)?;
    let store = store(&app, &name)?;
    if !store.store.features().query {
        return Err(ApiError::from_state(
            Operation::Query,
            &StateError::unsupported(store.store.name(), "queries"),
        ));
    }
    query_params(params)?;
    let body = read_limited(&headers, body, app.limits.max_body_bytes).await?;
    let json: serde_json::Value = wire::parse_body(&body, "query (expected a JSON object)")?;
    let q = sluice_state::Query::from_json(&json)
        .map_err(|e| ApiError::from_state(Operation::Query, &e))?;
    let s: &Arc<dyn Store> = &store.store;
    let answer = with_retry(store.retry, || s.query(&q))
        .await
        .map_err(|e| ApiError::from_state(Operation::Query, &e))?;
    if answer.results.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let results = answer
        .results
        .into_iter()
        .map(|r| QueryItem {
            data: wire::embed_value(&r.item.value),
            etag: r.item.etag,
            key: r.key,
        })
        .collect();
    let body = QueryAnswer {
        results,
        token: answer.token,
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}
