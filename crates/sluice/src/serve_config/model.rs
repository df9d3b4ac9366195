//! The server configuration file as written (YAML). Every struct denies unknown keys, so a
//! misspelt key is reported with its line and column instead of being silently ignored.
//!
//! Store `settings` are kept as a map of scalars and checked per backend afterwards (see
//! [`super`]), so that an unknown or missing setting is reported at the setting's own line.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServeDoc {
    /// Address the HTTP API listens on (`host:port`).
    #[serde(default)]
    pub listen: Option<String>,
    /// Where embedded stores keep their files.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// The named stores.
    #[serde(default)]
    pub stores: Option<Vec<StoreDoc>>,
    /// Which store holds Sluice's own state.
    #[serde(default)]
    pub state: Option<StateDoc>,
    /// Limits of the HTTP API.
    #[serde(default)]
    pub http: Option<HttpDoc>,
    /// The Data Plane Signaling API and its data flows.
    #[serde(default)]
    pub signaling: Option<SignalingDoc>,
    /// Declarative pipelines kept in a store.
    #[serde(default)]
    pub pipelines: Option<super::pipelines::PipelinesDoc>,
}

/// Which backend a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In memory; lost when the process ends.
    Memory,
    /// Embedded redb file.
    Redb,
    /// A PostgreSQL table.
    Postgres,
    /// Redis keys.
    Redis,
}

impl BackendKind {
    /// The name used in the file and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Redb => "redb",
            BackendKind::Postgres => "postgres",
            BackendKind::Redis => "redis",
        }
    }
}

/// One entry of `stores`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreDoc {
    /// The store's name in URLs (`/v1.0/state/{name}`).
    pub name: String,
    /// Which backend.
    pub backend: BackendKind,
    /// Backend settings; scalars keep their text as written.
    #[serde(default)]
    pub settings: Option<BTreeMap<String, String>>,
    /// How transient backend errors are retried.
    #[serde(default)]
    pub retry_policy: Option<RetryDoc>,
}

/// A retry policy as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryDoc {
    /// Wait before the first retry, as a duration (`100ms`, `2s`).
    #[serde(default)]
    pub interval: Option<String>,
    /// Most attempts in all (the first one included).
    #[serde(default)]
    pub threshold: Option<i64>,
    /// `linear` (the same wait every time) or `exponential` (doubling).
    #[serde(default)]
    pub pattern: Option<PatternDoc>,
}

/// How the wait between retries grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternDoc {
    /// The same wait every time.
    Linear,
    /// The wait doubles every time.
    Exponential,
}

/// The `state` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateDoc {
    /// Name of the store that holds Sluice's own state.
    #[serde(default)]
    pub store: Option<String>,
}

/// The `http` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpDoc {
    /// Largest value accepted, in bytes of its JSON text.
    #[serde(default)]
    pub max_value_bytes: Option<i64>,
    /// Largest request body accepted, in bytes.
    #[serde(default)]
    pub max_body_bytes: Option<i64>,
}

/// The `signaling` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignalingDoc {
    /// Whether the DPS API is served at all.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Path prefix of the DPS routes (`/api/v1`).
    #[serde(default)]
    pub base_path: Option<String>,
    /// Name of the store that holds data flows.
    #[serde(default)]
    pub store: Option<String>,
    /// Control planes allowed to call, registered at start.
    #[serde(default)]
    pub control_planes: Option<Vec<ControlPlaneDoc>>,
    /// Delivery of callbacks to control planes.
    #[serde(default)]
    pub outbox: Option<OutboxDoc>,
    /// Datasets, destinations and the public data endpoint.
    #[serde(default)]
    pub transfers: Option<sluice_signaling::transfer::TransferConfig>,
    /// Leases of flows shared by replicas (`ttl`, `claimInterval`, `claimBatch`).
    #[serde(default)]
    pub replicas: Option<sluice_signaling::lease::LeaseConfig>,
}

/// One entry of `signaling.controlPlanes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlPlaneDoc {
    /// Its id.
    pub id: String,
    /// Its base URL for callbacks.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bearer token it sends.
    #[serde(default)]
    pub token: Option<String>,
    /// The API key it sends (`X-Api-Key`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// What Sluice sends in `Authorization` on callbacks.
    #[serde(default)]
    pub callback_authorization: Option<String>,
}

/// The `signaling.outbox` section; durations as written (`100ms`, `30s`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboxDoc {
    /// How often the outbox is scanned when idle.
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// First retry delay.
    #[serde(default)]
    pub min_backoff: Option<String>,
    /// Longest retry delay.
    #[serde(default)]
    pub max_backoff: Option<String>,
    /// Timeout of one callback request.
    #[serde(default)]
    pub request_timeout: Option<String>,
}
