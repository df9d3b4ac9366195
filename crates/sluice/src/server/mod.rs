//! The HTTP server of `sluice serve`: the named state stores behind Dapr's state HTTP API, the
//! Data Plane Signaling API and public data endpoint ([`signaling`]), operations endpoints
//! ([`ops`], [`openapi`]), and graceful shutdown (stop accepting, finish requests in flight).
//!
//! [`serve`] opens the stores of a [`ServeConfig`] and answers the state API on a listener until a
//! shutdown future completes; [`router`] builds the state routes alone, [`app`] every route.

mod body;
pub mod errors;
pub mod flows_api;
pub mod http_metrics;
pub mod openapi;
pub mod ops;
pub mod pipelines;
pub mod signaling;
pub mod state_api;
pub mod stores;
pub mod watch_api;
pub mod wire;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::{ListenerExt, TapIo};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tower_http::trace::TraceLayer;

use crate::serve_config::{HttpLimits, ServeConfig};
use errors::{ApiError, ERR_METHOD_NOT_ALLOWED, ERR_NOT_FOUND};
use http_metrics::HttpMetrics;
use signaling::Signaling;
pub use stores::{NamedStore, OpenError, Stores};

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The stores, by name.
    pub stores: Arc<Stores>,
    /// Size limits.
    pub limits: HttpLimits,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A store could not be opened at start.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The listener failed.
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
    /// Data Plane Signaling could not start.
    #[error(transparent)]
    Signaling(#[from] signaling::SignalingStartError),
}

/// Opens the stores of `config`, then answers requests on `listener` until `shutdown` completes;
/// returns once requests in flight are finished.
pub async fn serve<F>(
    config: &ServeConfig,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let stores = Arc::new(Stores::open(config).await?);
    run(stores, config.http, listener, shutdown).await
}

/// Answers requests for `stores` on `listener` until `shutdown` completes; returns once requests
/// in flight are finished.
pub async fn run<F>(
    stores: Arc<Stores>,
    limits: HttpLimits,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let address = listener.local_addr()?;
    tracing::info!(%address, stores = ?stores.names(), "state API listening");
    axum::serve(without_nagle(listener), router(stores, limits))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("state API stopped");
    Ok(())
}

/// `listener` with Nagle's algorithm turned off on every connection it accepts. A streamed
/// response (the public data endpoint, watch streams) goes out in several writes; with Nagle on,
/// a small write waited for the client's delayed ACK, and about every other keep-alive request
/// took ~40 ms more.
pub fn without_nagle(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay as fn(&mut TcpStream))
}

fn set_nodelay(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot turn off Nagle's algorithm on a connection");
    }
}

/// Every route but signaling: the state API, Dapr's health and metadata endpoints, the
/// operations endpoints and `/openapi.json`.
pub fn router(stores: Arc<Stores>, limits: HttpLimits) -> Router {
    app(stores, limits, None, Arc::new(HttpMetrics::default()))
}

/// Every route of `sluice serve`: the state API, Dapr's health and metadata endpoints, the
/// operations endpoints, `/openapi.json` and, with `signaling`, the DPS API and the public data
/// endpoint. Requests are traced and counted in `http`.
pub fn app(
    stores: Arc<Stores>,
    limits: HttpLimits,
    signaling: Option<Arc<Signaling>>,
    http: Arc<HttpMetrics>,
) -> Router {
    let document = Arc::new(openapi::document(signaling.as_ref().map(|s| s.base_path())));
    let mut routes = state_routes(Arc::clone(&stores), limits)
        .merge(watch_api::routes(Arc::clone(&stores)))
        .merge(ops::routes(Arc::new(ops::Ops {
            stores,
            signaling: signaling.clone(),
            http: Arc::clone(&http),
            flow_counts: ops::FlowCounts::default(),
        })))
        .route(
            "/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move { Json(document.as_ref().clone()) }
            }),
        );
    if let Some(s) = &signaling {
        routes = routes.merge(s.routes());
    }
    routes
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ERR_NOT_FOUND,
                "no such route; the state API is under /v1.0/state/{store}, every route is \
                 listed at /openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ERR_METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            http,
            http_metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
}

/// The state API and Dapr's health and metadata endpoints.
fn state_routes(stores: Arc<Stores>, limits: HttpLimits) -> Router {
    let state = Arc::new(AppState { stores, limits });
    Router::new()
        .route("/v1.0/healthz", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/v1.0/healthz/outbound",
            get(|| async { StatusCode::NO_CONTENT }),
        )
        .route("/v1.0/metadata", get(metadata))
        .merge(state_api::routes())
        .with_state(state)
}

/// Dapr's metadata answer, reduced to the state stores.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MetadataAnswer {
    id: &'static str,
    runtime_version: &'static str,
    components: Vec<Component>,
}

/// One component in Dapr's metadata answer.
#[derive(Debug, Serialize)]
struct Component {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    version: &'static str,
    capabilities: Vec<&'static str>,
}

/// `GET /v1.0/metadata`: the stores, their backends and capabilities, as Dapr lists components.
async fn metadata(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let components = app
        .stores
        .names()
        .into_iter()
        .filter_map(|n| app.stores.get(n))
        .map(|s| Component {
            name: s.name.clone(),
            kind: format!("state.{}", s.backend.as_str()),
            version: "v1",
            capabilities: s.store.features().names(),
        })
        .collect();
    Json(MetadataAnswer {
        id: "sluice",
        runtime_version: env!("CARGO_PKG_VERSION"),
        components,
    })
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    use super::*;

    #[tokio::test]
    async fn connections_are_accepted_with_nagle_off() {
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, _) = plain.accept().await.unwrap();
        assert!(
            !stream.nodelay().unwrap(),
            "the kernel's default has Nagle on"
        );
        drop((stream, client.await.unwrap().unwrap()));

        let mut listener = without_nagle(plain);
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, _) = listener.accept().await;
        assert!(stream.nodelay().unwrap());
        drop((stream, client.await.unwrap().unwrap()));
    }
}
