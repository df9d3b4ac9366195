//! Counts HTTP requests by method, route template and status, for `/metrics`. The route is the
//! matched template (`/api/v1/dataflows/{id}/status`), never the raw path, so the number of series
//! stays bounded whatever clients send.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Counts of one method: route → status → requests.
type Routes = BTreeMap<String, BTreeMap<u16, u64>>;

/// Request counters by method, route and status.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    counts: Mutex<BTreeMap<String, Routes>>,
}

impl HttpMetrics {
    fn record(&self, method: &str, route: &str, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up by `&str` first: no allocation once a route has been seen.
        let routes = match counts.get_mut(method) {
            Some(r) => r,
            None => counts.entry(method.to_string()).or_default(),
        };
        let by_status = match routes.get_mut(route) {
            Some(s) => s,
            None => routes.entry(route.to_string()).or_default(),
        };
        *by_status.entry(status).or_insert(0) += 1;
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(
            "# HELP sluice_http_requests_total HTTP requests answered, by method, route and \
             status.\n# TYPE sluice_http_requests_total counter\n",
        );
        for (method, routes) in counts.iter() {
            for (route, by_status) in routes {
                for (status, n) in by_status {
                    let _ = writeln!(
                        out,
                        "sluice_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                        escape(method),
                        escape(route)
                    );
                }
            }
        }
    }
}

/// Escapes a Prometheus label value.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware: counts every answered request.
pub async fn track(State(metrics): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    metrics.record(
        method.as_str(),
        route.as_ref().map_or("(unmatched)", MatchedPath::as_str),
        response.status().as_u16(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_escaped_labels() {
        let m = HttpMetrics::default();
        m.record("GET", "/healthz", 200);
        m.record("GET", "/healthz", 200);
        m.record("POST", "/a\"b", 404);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "sluice_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2"
        ));
        assert!(out.contains("route=\"/a\\\"b\""), "{out}");
    }
}
