//! The `signaling` section of the server configuration: whether and where the Data Plane
//! Signaling API is served, which store holds data flows, the control planes allowed to call (with
//! their secrets, which should come from the environment) and callback delivery tuning.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_signaling::outbox::OutboxOptions;
use sluice_signaling::transfer::{TransferConfig, TransferError, Transfers};
use sluice_state::{MemoryStore, Store};

use super::model::{ControlPlaneDoc, OutboxDoc, SignalingDoc};
use super::{Checker, DEFAULT_STORE};
use crate::yaml_index::YamlPath;

/// Where the DPS routes live when the file does not say.
pub const DEFAULT_BASE_PATH: &str = "/api/v1";

/// Paths the rest of the server owns; the base path may not shadow them.
const RESERVED_PREFIXES: &[&str] = &[
    "/v1.0",
    "/public",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// The `signaling` section, checked, with defaults applied.
#[derive(Clone, PartialEq)]
pub struct SignalingFile {
    /// Serve the DPS API (default true).
    pub enabled: bool,
    /// Path prefix of the DPS routes, without a trailing `/` (`""` for the root).
    pub base_path: String,
    /// The store that holds data flows; `None` means Sluice's own state store.
    pub store: Option<String>,
    /// Control planes registered at start.
    pub control_planes: Vec<ControlPlaneFile>,
    /// Callback delivery.
    pub outbox: OutboxSettings,
    /// Datasets, destinations and the public data endpoint.
    pub transfers: TransferConfig,
    /// Leases of flows shared by replicas.
    pub replicas: sluice_signaling::lease::LeaseConfig,
}

impl Default for SignalingFile {
    fn default() -> Self {
        SignalingFile {
            enabled: true,
            base_path: DEFAULT_BASE_PATH.to_string(),
            store: None,
            control_planes: Vec::new(),
            outbox: OutboxSettings::default(),
            transfers: TransferConfig::default(),
            replicas: sluice_signaling::lease::LeaseConfig::default(),
        }
    }
}

impl std::fmt::Debug for SignalingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalingFile")
            .field("enabled", &self.enabled)
            .field("base_path", &self.base_path)
            .field("store", &self.store)
            .field("control_planes", &self.control_planes)
            .field("outbox", &self.outbox)
            .field("transfers", &self.transfers)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// A control plane allowed to call the DPS API.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlPlaneFile {
    /// Its id.
    pub id: String,
    /// Its base URL for callbacks, if given.
    pub endpoint: Option<String>,
    /// The bearer token it sends.
    pub token: Option<String>,
    /// The API key it sends as `X-Api-Key`.
    pub api_key: Option<String>,
    /// What Sluice sends in `Authorization` when it calls back: as configured, else
    /// `Bearer <token>` when a token is configured.
    pub callback_authorization: Option<String>,
}

impl ControlPlaneFile {
    /// Every credential that identifies this control plane.
    pub fn credentials(&self) -> impl Iterator<Item = &str> {
        self.token
            .iter()
            .chain(self.api_key.iter())
            .map(String::as_str)
    }
}

impl std::fmt::Debug for ControlPlaneFile {
    // Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("ControlPlaneFile")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .field("token", &hidden(&self.token))
            .field("api_key", &hidden(&self.api_key))
            .field(
                "callback_authorization",
                &hidden(&self.callback_authorization),
            )
            .finish()
    }
}

/// Callback delivery tuning (see [`OutboxOptions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSettings {
    /// How often the outbox is scanned when idle.
    pub poll_interval: Duration,
    /// First retry delay; doubles per failed attempt.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Timeout of one callback request.
    pub request_timeout: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        let o = OutboxOptions::default();
        OutboxSettings {
            poll_interval: o.poll_interval,
            min_backoff: o.initial_backoff,
            max_backoff: o.max_backoff,
            request_timeout: o.request_timeout,
        }
    }
}

impl OutboxSettings {
    /// The deliverer's options.
    pub fn options(&self) -> OutboxOptions {
        OutboxOptions {
            poll_interval: self.poll_interval,
            initial_backoff: self.min_backoff,
            max_backoff: self.max_backoff,
            request_timeout: self.request_timeout,
        }
    }
}

impl Checker {
    /// Checks the `signaling` section; `declared` are the declared store names.
    pub(super) fn signaling(
        &mut self,
        doc: Option<SignalingDoc>,
        declared: &HashMap<String, YamlPath>,
    ) -> SignalingFile {
        let mut out = SignalingFile::default();
        let Some(doc) = doc else {
            return out;
        };
        let path = YamlPath::root().key("signaling");
        out.enabled = doc.enabled.unwrap_or(true);
        if let Some(base) = doc.base_path {
            match check_base_path(&base) {
                Ok(b) => out.base_path = b,
                Err(why) => self.error(&path.key("basePath"), why),
            }
        }
        if let Some(name) = doc.store {
            let known = if declared.is_empty() {
                name == DEFAULT_STORE
            } else {
                declared.contains_key(&name)
            };
            if known {
                out.store = Some(name);
            } else {
                let mut names: Vec<&str> = declared.keys().map(String::as_str).collect();
                if names.is_empty() {
                    names.push(DEFAULT_STORE);
                }
                names.sort_unstable();
                self.error(
                    &path.key("store"),
                    format!(
                        "no store named {name:?} (stores: {}); leave it out to keep flows in \
                         Sluice's own state store",
                        names.join(", ")
                    ),
                );
            }
        }
        let mut ids = HashSet::new();
        let mut secrets = HashSet::new();
        for (i, cp) in doc
            .control_planes
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = path.key("controlPlanes").index(i);
            if let Some(cp) = self.control_plane(&at, cp, &mut ids, &mut secrets) {
                out.control_planes.push(cp);
            }
        }
        if let Some(replicas) = doc.replicas {
            out.replicas = replicas;
        }
        if let Some(outbox) = doc.outbox {
            out.outbox = self.outbox(&path.key("outbox"), outbox);
        }
        if let Some(transfers) = doc.transfers {
            if let Some(url) = &transfers.public_base_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.error(
                        &path.key("transfers").key("publicBaseUrl"),
                        format!("{url:?} is not a base URL: expected http(s)://host[:port]"),
                    );
                }
            }
            self.transfers(&path.key("transfers"), &transfers);
            out.transfers = transfers;
        }
        out
    }

    fn control_plane(
        &mut self,
        at: &YamlPath,
        doc: ControlPlaneDoc,
        ids: &mut HashSet<String>,
        secrets: &mut HashSet<String>,
    ) -> Option<ControlPlaneFile> {
        let before = self.errors.len();
        let id = doc.id.trim().to_string();
        if id.is_empty() {
            self.error(&at.key("id"), "must not be empty".into());
        } else if !ids.insert(id.clone()) {
            self.error(&at.key("id"), format!("duplicate control plane id {id:?}"));
        }
        let endpoint = doc.endpoint.map(|e| e.trim().to_string());
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                self.error(
                    &at.key("endpoint"),
                    format!(
                        "{e:?} is not a callback base URL: expected http://host[:port]/path or \
                         https://..."
                    ),
                );
            }
        }
        let nonempty = |v: Option<String>| v.map(|s| s.trim().to_string());
        let token = nonempty(doc.token);
        let api_key = nonempty(doc.api_key);
        for (key, value) in [("token", &token), ("apiKey", &api_key)] {
            match value {
                Some(v) if v.is_empty() => self.error(
                    &at.key(key),
                    "must not be empty (is the environment variable set?)".into(),
                ),
                Some(v) if !secrets.insert(v.clone()) => self.error(
                    &at.key(key),
                    "the same credential is given twice; every credential must identify one \
                     control plane"
                        .into(),
                ),
                _ => {}
            }
        }
        if token.is_none() && api_key.is_none() {
            self.error(
                at,
                format!(
                    "control plane {id:?} needs `token` or `apiKey` (the credential it sends; \
                     keep it in the environment: `token: ${{CP_TOKEN}}`)"
                ),
            );
        }
        let callback_authorization = doc
            .callback_authorization
            .or_else(|| token.as_ref().map(|t| format!("Bearer {t}")));
        (self.errors.len() == before).then_some(ControlPlaneFile {
            id,
            endpoint,
            token,
            api_key,
            callback_authorization,
        })
    }

    /// Checks datasets and destinations against the built-in connectors' specifications, as the
    /// server will at start, so that a wrong setting is reported at its own line.
    fn transfers(&mut self, at: &YamlPath, config: &TransferConfig) {
        let mut probe = config.clone();
        probe.public_base_url = Some("http://127.0.0.1".into());
        let registry = Arc::new(sluice_connectors::builtin_registry());
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        match Transfers::new(probe, registry, store) {
            Ok(_) => {}
            Err(TransferError::Config { what, message }) => {
                let mut path = at.clone();
                for part in what.split('.') {
                    path = path.key(part);
                }
                // The innermost key that exists in the file carries the position.
                while self.index.locate(0, &path).is_none() && path.0.len() > at.0.len() {
                    path.0.pop();
                }
                let shown = if path.0.len() > at.0.len() {
                    message
                } else {
                    format!("{what}: {message}")
                };
                self.error(&path, shown);
            }
            Err(e) => self.error(at, e.to_string()),
        }
    }

    fn outbox(&mut self, at: &YamlPath, doc: OutboxDoc) -> OutboxSettings {
        let mut o = OutboxSettings::default();
        for (key, text, slot) in [
            ("pollInterval", doc.poll_interval, &mut o.poll_interval),
            ("minBackoff", doc.min_backoff, &mut o.min_backoff),
            ("maxBackoff", doc.max_backoff, &mut o.max_backoff),
            (
                "requestTimeout",
                doc.request_timeout,
                &mut o.request_timeout,
            ),
        ] {
            if let Some(text) = text {
                if let Some(d) = self.duration(&at.key(key), &text) {
                    *slot = d;
                }
            }
        }
        if o.min_backoff > o.max_backoff {
            self.error(
                &at.key("maxBackoff"),
                format!(
                    "maxBackoff ({}) is shorter than minBackoff ({})",
                    humantime::format_duration(o.max_backoff),
                    humantime::format_duration(o.min_backoff)
                ),
            );
        }
        o
    }
}

/// Checks a base path and returns it without a trailing `/` (`""` for the root).
fn check_base_path(base: &str) -> Result<String, String> {
    let b = base.trim();
    if !b.starts_with('/') {
        return Err(format!(
            "{b:?} must start with '/', such as {DEFAULT_BASE_PATH}"
        ));
    }
    let trimmed = b.trim_end_matches('/');
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    };
    if !trimmed.is_empty() && !trimmed[1..].split('/').all(segment_ok) {
        return Err(format!(
            "{b:?} is not a path: segments may contain letters, digits, '-', '_', '.' and '~'"
        ));
    }
    if let Some(r) = RESERVED_PREFIXES
        .iter()
        .find(|r| trimmed == **r || trimmed.starts_with(&format!("{r}/")))
    {
        return Err(format!(
            "{b:?} would hide the server's own {r} routes; choose another base path"
        ));
    }
    Ok(trimmed.to_string())
}
