//! Operations endpoints: `/healthz` (the process answers), `/readyz` (every store answers a read)
//! and `/metrics` (Prometheus text exposition format: data flows by state, callbacks, transfers,
//! HTTP requests).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use sluice_signaling::FlowState;

use super::flows_api::count_by_state;
use super::http_metrics::{escape, HttpMetrics};
use super::signaling::Signaling;
use super::stores::Stores;

/// How long one store may take to answer the readiness probe.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// The key the readiness probe reads (it need not exist).
const PROBE_KEY: &str = "sluice/readyz";
/// The Prometheus text format's content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the operations endpoints look at.
pub struct Ops {
    /// The stores.
    pub stores: Arc<Stores>,
    /// Signaling, when enabled.
    pub signaling: Option<Arc<Signaling>>,
    /// Request counters.
    pub http: Arc<HttpMetrics>,
    /// The last count of flows by state (see [`FLOW_COUNT_MAX_AGE`]).
    pub flow_counts: FlowCounts,
}

/// How old a count of flows by state may be when `/metrics` is scraped. Counting reads every flow
/// of the store, so a scraper polling often costs at most one count per this interval.
pub const FLOW_COUNT_MAX_AGE: Duration = Duration::from_secs(10);

/// The last count of flows by state and when it was taken; one count runs at a time.
pub type FlowCounts = tokio::sync::Mutex<Option<(Instant, HashMap<FlowState, u64>)>>;

/// `/healthz`, `/readyz` and `/metrics`.
pub fn routes(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    let mut stores = Map::new();
    let mut all_ok = true;
    let mut probes: Vec<(String, Arc<dyn sluice_state::Store>)> = ops
        .stores
        .names()
        .into_iter()
        .filter_map(|n| {
            ops.stores
                .get(n)
                .map(|s| (n.to_string(), Arc::clone(&s.store)))
        })
        .collect();
    probes.push(("(sluice state)".to_string(), ops.stores.own_state()));
    for (name, store) in probes {
        let verdict = match tokio::time::timeout(READY_TIMEOUT, store.get(PROBE_KEY)).await {
            Ok(Ok(_)) => "ok".to_string(),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => format!("no answer within {READY_TIMEOUT:?}"),
        };
        all_ok &= verdict == "ok";
        stores.insert(name, Value::String(verdict));
    }
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if all_ok { "ready" } else { "unavailable" }, "stores": stores });
    (status, Json(body)).into_response()
}

/// The flows by state, counted again only when the last count is older than
/// [`FLOW_COUNT_MAX_AGE`]; concurrent scrapes wait for one count.
async fn recent_counts(
    cache: &FlowCounts,
    sig: &Signaling,
) -> Result<HashMap<FlowState, u64>, sluice_signaling::SignalingError> {
    let mut last = cache.lock().await;
    if let Some((at, counts)) = last.as_ref() {
        if at.elapsed() < FLOW_COUNT_MAX_AGE {
            return Ok(counts.clone());
        }
    }
    let counts = count_by_state(sig.dataplane()).await?;
    *last = Some((Instant::now(), counts.clone()));
    Ok(counts)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP sluice_info Build information.\n# TYPE sluice_info gauge\n\
         sluice_info{{version=\"{}\"}} 1",
        escape(env!("CARGO_PKG_VERSION"))
    );
    if let Some(sig) = &ops.signaling {
        match recent_counts(&ops.flow_counts, sig).await {
            Ok(counts) => {
                out.push_str(
                    "# HELP sluice_flows Data flows in the store, by state.\n\
                     # TYPE sluice_flows gauge\n",
                );
                for state in FlowState::ALL {
                    let n = counts.get(&state).copied().unwrap_or(0);
                    let _ = writeln!(out, "sluice_flows{{state=\"{}\"}} {n}", state.as_str());
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot count data flows for /metrics"),
        }
        let o = sig.outbox_metrics();
        let _ = writeln!(
            out,
            "# HELP sluice_callbacks_delivered_total Callbacks the control plane answered 2xx.\n\
             # TYPE sluice_callbacks_delivered_total counter\n\
             sluice_callbacks_delivered_total {}\n\
             # HELP sluice_callback_failures_total Failed callback attempts (non-2xx, errors, \
             timeouts); each is retried.\n\
             # TYPE sluice_callback_failures_total counter\n\
             sluice_callback_failures_total {}",
            o.delivered.load(Ordering::Relaxed),
            o.failures.load(Ordering::Relaxed)
        );
        out.push_str(&sig.transfer_metrics().render_prometheus());
    }
    ops.http.render(&mut out);
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], out).into_response()
}
