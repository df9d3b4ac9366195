//! The OpenAPI 3.1 document served at `/openapi.json`: every route of `sluice serve` — the DPS
//! API under its base path (with Sluice's flow listing), control-plane registration, the public
//! data endpoint, the state API and the operations endpoints — with the DPS message schemas.
//!
//! Hand-built JSON: the routes are few and stable, and a test checks that every route the server
//! defines appears here and that every route here is served.

use serde_json::{json, Map, Value};

/// One documented operation.
struct Op {
    method: &'static str,
    path: String,
    summary: &'static str,
    tag: &'static str,
    request: Option<&'static str>,
    /// Status → schema name (or `None` for no body).
    responses: Vec<(&'static str, Option<&'static str>)>,
    /// True when the operation takes control-plane credentials.
    secured: bool,
}

fn op(
    method: &'static str,
    path: impl Into<String>,
    summary: &'static str,
    tag: &'static str,
) -> Op {
    Op {
        method,
        path: path.into(),
        summary,
        tag,
        request: None,
        responses: Vec::new(),
        secured: false,
    }
}

impl Op {
    fn body(mut self, schema: &'static str) -> Self {
        self.request = Some(schema);
        self
    }
    fn answer(mut self, status: &'static str, schema: Option<&'static str>) -> Self {
        self.responses.push((status, schema));
        self
    }
    fn secured(mut self) -> Self {
        self.secured = true;
        self
    }
}

/// The public data endpoint's routes (under `/public`), as the transfer module serves them:
/// method, path, summary.
pub const PUBLIC_ROUTES: &[(&str, &str, &str)] = &[
    (
        "get",
        "/flows/{id}/data",
        "Provider pull: stream the dataset (Authorization: Bearer <token from the flow's \
         DataAddress>; Range resumes)",
    ),
    (
        "post",
        "/flows/{id}/data",
        "Consumer push: the provider POSTs data (Authorization: Bearer <token>)",
    ),
    (
        "post",
        "/token",
        "OAuth2 refresh_token grant (form-encoded grant_type=refresh_token&refresh_token=...): \
         a new access token",
    ),
];

fn operations(base: Option<&str>) -> Vec<Op> {
    let mut ops = vec![
        op("get", "/healthz", "The process is alive", "operations").answer("200", None),
        op("get", "/readyz", "Every store answers", "operations")
            .answer("200", Some("Readiness"))
            .answer("503", Some("Readiness")),
        op(
            "get",
            "/metrics",
            "Prometheus metrics (text exposition format)",
            "operations",
        )
        .answer("200", None),
        op("get", "/openapi.json", "This document", "operations").answer("200", None),
        op("get", "/v1.0/healthz", "Dapr health check", "state").answer("204", None),
        op(
            "get",
            "/v1.0/healthz/outbound",
            "Dapr outbound health check",
            "state",
        )
        .answer("204", None),
        op(
            "get",
            "/v1.0/metadata",
            "The stores as Dapr components",
            "state",
        )
        .answer("200", None),
    ];
    for method in ["post", "put"] {
        ops.push(
            op(method, "/v1.0/state/{store}", "Save items", "state")
                .body("StateItems")
                .answer("204", None)
                .answer("400", Some("DaprError"))
                .answer("409", Some("DaprError")),
        );
        ops.push(
            op(
                method,
                "/v1.0/state/{store}/bulk",
                "Read several keys",
                "state",
            )
            .answer("200", None)
            .answer("400", Some("DaprError")),
        );
        ops.push(
            op(
                method,
                "/v1.0/state/{store}/transaction",
                "All-or-nothing writes",
                "state",
            )
            .answer("204", None)
            .answer("409", Some("DaprError")),
        );
        ops.push(
            op(
                method,
                "/v1.0-alpha1/state/{store}/query",
                "Query a store",
                "state",
            )
            .answer("200", None)
            .answer("204", None),
        );
    }
    ops.push(
        op(
            "get",
            "/v1.0/state/{store}/{key}",
            "Read a key (any characters, `/` included)",
            "state",
        )
        .answer("200", None)
        .answer("204", None),
    );
    ops.push(
        op(
            "delete",
            "/v1.0/state/{store}/{key}",
            "Delete a key",
            "state",
        )
        .answer("204", None)
        .answer("409", Some("DaprError")),
    );
    ops.push(
        op(
            "get",
            "/v1/watch/{store}",
            "Watch a store as server-sent events: `?prefix=P` (repeatable), `fromRevision=R`, \
             resume with `Last-Event-ID`; events resync, put, delete, compacted, each id its \
             revision",
            "watch",
        )
        .answer("200", None)
        .answer("400", None)
        .answer("404", None)
        .answer("501", None),
    );
    if let Some(base) = base {
        let dps = "signaling";
        let p = |s: &str| format!("{base}{s}");
        ops.extend([
            op(
                "post",
                p("/dataflows/prepare"),
                "Prepare a consumer data flow",
                dps,
            )
            .body("DataFlowPrepareMessage")
            .answer("200", Some("DataFlowStatusMessage"))
            .answer("202", Some("DataFlowStatusMessage"))
            .answer("400", Some("Error"))
            .answer("409", Some("Error"))
            .secured(),
            op(
                "post",
                p("/dataflows/start"),
                "Start a provider data flow",
                dps,
            )
            .body("DataFlowStartMessage")
            .answer("200", Some("DataFlowStatusMessage"))
            .answer("202", Some("DataFlowStatusMessage"))
            .answer("400", Some("Error"))
            .answer("409", Some("Error"))
            .secured(),
            op(
                "post",
                p("/dataflows/{id}/started"),
                "The provider started (consumer side)",
                dps,
            )
            .body("DataFlowAddressMessage")
            .answer("200", Some("DataFlowStatusMessage"))
            .answer("404", Some("Error"))
            .secured(),
            op(
                "post",
                p("/dataflows/{id}/suspend"),
                "Suspend a data flow",
                dps,
            )
            .body("DataFlowReasonMessage")
            .answer("200", Some("DataFlowStatusMessage"))
            .answer("404", Some("Error"))
            .secured(),
            op(
                "post",
                p("/dataflows/{id}/resume"),
                "Resume a suspended data flow",
                dps,
            )
            .body("DataFlowAddressMessage")
            .answer("200", Some("DataFlowStatusMessage"))
            .answer("404", Some("Error"))
            .secured(),
            op(
                "post",
                p("/dataflows/{id}/terminate"),
                "Terminate a data flow",
                dps,
            )
            .body("DataFlowReasonMessage")
            .answer("200", Some("DataFlowStatusMessage"))
            .answer("404", Some("Error"))
            .secured(),
            op(
                "post",
                p("/dataflows/{id}/completed"),
                "The transfer completed",
                dps,
            )
            .answer("200", Some("DataFlowStatusMessage"))
            .answer("404", Some("Error"))
            .secured(),
            op(
                "get",
                p("/dataflows/{id}/status"),
                "A data flow's state",
                dps,
            )
            .answer("200", Some("DataFlowStatus"))
            .answer("404", Some("Error"))
            .secured(),
            op("put", p("/controlplanes"), "Register a control plane", dps)
                .body("ControlPlane")
                .answer("200", Some("ControlPlane"))
                .answer("400", Some("Error"))
                .secured(),
            op(
                "delete",
                p("/controlplanes/{id}"),
                "Unregister a control plane",
                dps,
            )
            .answer("204", None)
            .answer("404", Some("Error"))
            .secured(),
            op(
                "get",
                p("/dataflows"),
                "Sluice extension: list data flows (?state=, ?limit=, ?pageToken=)",
                dps,
            )
            .answer("200", Some("DataFlowPage"))
            .answer("400", Some("Error"))
            .secured(),
            op(
                "get",
                p("/dataflows/{id}"),
                "Sluice extension: a whole data flow, secrets masked",
                dps,
            )
            .answer("200", Some("DataFlow"))
            .answer("404", Some("Error"))
            .secured(),
        ]);
        for (method, path, summary) in PUBLIC_ROUTES {
            ops.push(
                op(method, format!("/public{path}"), summary, "public")
                    .answer("200", None)
                    .answer("401", Some("Error")),
            );
        }
    }
    ops
}

/// The document; `base_path` is the DPS base path, `None` when signaling is disabled.
pub fn document(base_path: Option<&str>) -> Value {
    let mut paths = Map::new();
    for o in operations(base_path) {
        let mut responses = Map::new();
        for (status, schema) in &o.responses {
            let mut r = json!({ "description": status });
            if let Some(s) = schema {
                r["content"] = json!({ "application/json": { "schema": schema_ref(s) } });
            }
            responses.insert((*status).into(), r);
        }
        if o.secured {
            responses.insert(
                "401".into(),
                json!({
                    "description": "missing or wrong credentials",
                    "content": { "application/json": { "schema": schema_ref("Error") } }
                }),
            );
        }
        let mut operation = json!({
            "summary": o.summary,
            "tags": [o.tag],
            "responses": responses,
        });
        let params: Vec<Value> = path_params(&o.path)
            .into_iter()
            .map(|n| json!({ "name": n, "in": "path", "required": true, "schema": {"type": "string"} }))
            .collect();
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(s) = o.request {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": schema_ref(s) } }
            });
        }
        if o.secured {
            operation["security"] = json!([{ "bearer": [] }, { "apiKey": [] }]);
        }
        let entry = paths
            .entry(o.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[o.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Data Plane Signaling (RC3, with RC2 leniency), the public data \
                endpoint, Dapr's state API and operations endpoints of `sluice serve`."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-Api-Key" }
            },
            "schemas": schemas()
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn schemas() -> Value {
    let s = |t: &str| json!({ "type": t });
    let string = s("string");
    let object = s("object");
    let flow_base = json!({
        "messageId": string, "participantId": string, "counterPartyId": string,
        "dataspaceContext": string, "processId": string, "agreementId": string,
        "datasetId": string,
        "profile": { "type": "string", "description": "ends in -push or -pull" },
        "transferType": { "type": "string", "description": "RC2 spelling of profile" },
        "callbackAddress": { "type": "string", "description": "RC2: the control plane's callback base URL" },
        "claims": object, "metadata": object,
        "labels": { "type": "array", "items": string }
    });
    let required = json!([
        "messageId",
        "participantId",
        "counterPartyId",
        "dataspaceContext",
        "processId",
        "agreementId",
        "datasetId"
    ]);
    let mut start = flow_base.clone();
    start["dataAddress"] = schema_ref("DataAddress");
    let states = json!({ "type": "string", "enum": ["INITIALIZED", "PREPARING", "PREPARED",
        "STARTING", "STARTED", "SUSPENDED", "COMPLETED", "TERMINATED"] });
    json!({
        "EndpointProperty": {
            "type": "object", "required": ["name", "value"],
            "properties": { "@type": string, "name": string, "value": string }
        },
        "DataAddress": {
            "type": "object", "required": ["endpointType", "endpoint"],
            "properties": {
                "@type": { "const": "DataAddress" }, "endpointType": string, "endpoint": string,
                "endpointProperties": { "type": "array", "items": schema_ref("EndpointProperty") }
            }
        },
        "DataFlowState": states,
        "DataFlowPrepareMessage": { "type": "object", "required": required, "properties": flow_base },
        "DataFlowStartMessage": { "type": "object", "required": required, "properties": start },
        "DataFlowAddressMessage": {
            "type": "object",
            "properties": { "messageId": string, "dataAddress": schema_ref("DataAddress") }
        },
        "DataFlowReasonMessage": {
            "type": "object", "properties": { "messageId": string, "reason": string }
        },
        "DataFlowStatusMessage": {
            "type": "object", "required": ["messageId", "dataFlowId", "state"],
            "properties": {
                "messageId": string, "dataFlowId": string, "state": schema_ref("DataFlowState"),
                "dataAddress": schema_ref("DataAddress"), "error": string
            }
        },
        "DataFlowStatus": {
            "type": "object", "required": ["dataFlowId", "state"],
            "properties": { "dataFlowId": string, "state": schema_ref("DataFlowState") }
        },
        "ControlPlane": {
            "type": "object", "required": ["controlplaneId"],
            "properties": { "controlplaneId": string, "endpoint": string, "authorization": string }
        },
        "DataFlow": {
            "type": "object",
            "required": ["id", "processId", "side", "mode", "state", "stateCount", "stateTimestamp"],
            "properties": {
                "id": string, "processId": string,
                "side": { "enum": ["provider", "consumer"] },
                "mode": string, "profile": string, "participantId": string,
                "counterPartyId": string, "datasetId": string, "agreementId": string,
                "state": schema_ref("DataFlowState"),
                "stateCount": s("integer"), "stateTimestamp": s("integer"), "createdAt": s("integer"),
                "sourceAddress": schema_ref("DataAddress"), "issuedAddress": schema_ref("DataAddress"),
                "error": string
            }
        },
        "DataFlowPage": {
            "type": "object", "required": ["flows"],
            "properties": {
                "flows": { "type": "array", "items": schema_ref("DataFlow") },
                "nextPageToken": string
            }
        },
        "Error": {
            "type": "object", "required": ["error", "message"],
            "properties": { "error": string, "message": string }
        },
        "DaprError": {
            "type": "object", "required": ["errorCode", "message"],
            "properties": { "errorCode": string, "message": string }
        },
        "StateItems": {
            "type": "array",
            "items": { "type": "object", "required": ["key"],
                "properties": { "key": string, "value": {}, "etag": string, "metadata": object, "options": object } }
        },
        "Readiness": {
            "type": "object",
            "properties": { "status": string, "stores": { "type": "object", "additionalProperties": string } }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use sluice_state::{MemoryStore, Store};

    use super::*;
    use crate::serve_config::SignalingFile;
    use crate::server::http_metrics::HttpMetrics;
    use crate::server::signaling::Signaling;
    use crate::server::stores::Stores;

    const BASE: &str = "/api/v1";

    /// Every `.route("...")` path literal in a source file.
    fn route_literals(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let Some(open) = rest.find('"') else { break };
            let after = &rest[open + 1..];
            let Some(close) = after.find('"') else { break };
            out.push(after[..close].to_string());
        }
        out
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The routes the source defines, as full paths: `(file, path)`.
    fn defined_routes() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let signaling = root.join("../sluice-signaling/src");
        let mut sources: Vec<(PathBuf, &str)> = [
            "src/server/mod.rs",
            "src/server/ops.rs",
            "src/server/state_api.rs",
            "src/server/flows_api.rs",
            "src/server/watch_api.rs",
        ]
        .iter()
        .map(|f| (root.join(f), ""))
        .collect();
        sources.push((signaling.join("http.rs"), BASE));
        let mut transfer = Vec::new();
        rust_files(&signaling.join("transfer"), &mut transfer);
        sources.extend(transfer.into_iter().map(|p| (p, "/public")));
        let mut routes = Vec::new();
        for (file, prefix) in sources {
            let text = std::fs::read_to_string(&file).expect("source readable");
            for lit in route_literals(&text) {
                let path = lit
                    .replace("{base}", BASE)
                    .replace("{{", "{")
                    .replace("}}", "}")
                    .replace("{*", "{");
                routes.push((file.display().to_string(), format!("{prefix}{path}")));
            }
        }
        routes
    }

    #[test]
    fn every_route_in_the_source_is_documented() {
        let doc = document(Some(BASE));
        let paths = doc["paths"].as_object().expect("paths");
        let routes = defined_routes();
        assert!(routes.len() >= 20, "too few routes found: {routes:?}");
        for (file, path) in routes {
            // `/v1.0/state/{store}/` only exists to answer "empty key" with a 400.
            if path == "/v1.0/state/{store}/" {
                continue;
            }
            assert!(
                paths.contains_key(&path),
                "{path} (from {file}) is not in /openapi.json"
            );
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_resolvable_references() {
        let doc = document(Some(BASE));
        assert_eq!(doc["openapi"], "3.1.0");
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "dangling reference to {name}");
        }
        let prepare = &doc["paths"]["/api/v1/dataflows/prepare"]["post"];
        assert!(prepare["responses"]["202"].is_object());
        assert!(prepare["responses"]["401"].is_object());
        assert!(document(None)["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .all(|p| !p.starts_with(BASE)));
    }

    #[tokio::test]
    async fn every_documented_route_is_served() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let stores = Arc::new(Stores::from_parts(Vec::new(), Arc::clone(&store)));
        let signaling = Signaling::start(
            &SignalingFile::default(),
            "memory",
            store,
            Arc::new(sluice_connectors::builtin_registry()),
            "http://127.0.0.1:1".into(),
            sluice_signaling::lease::Leasing::in_process(Default::default()),
        )
        .await
        .expect("signaling starts");
        let app = crate::server::app(
            stores,
            Default::default(),
            Some(Arc::new(signaling)),
            Arc::new(HttpMetrics::default()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let doc = document(Some(BASE));
        for (path, methods) in doc["paths"].as_object().expect("paths") {
            let concrete = path
                .split('/')
                .map(|s| if s.starts_with('{') { "probe" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for method in methods.as_object().expect("methods").keys() {
                let m =
                    reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let resp = client
                    .request(m, format!("http://{address}{concrete}"))
                    .body("{}")
                    .send()
                    .await
                    .expect("answer");
                let status = resp.status().as_u16();
                let body = resp.text().await.expect("body");
                assert!(
                    status != 405 && !body.contains("no such route"),
                    "{method} {path} is documented but not served: {status} {body}"
                );
            }
        }
        server.abort();
    }
}
