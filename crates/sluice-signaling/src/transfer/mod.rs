//! Real transfers: the data-moving half of the data plane.
//!
//! [`Transfers`] plugs into a [`DataPlane`] through its extension points and runs every data flow
//! on the Sluice engine, so checkpoints, acknowledgements and resume come from the engine:
//! - provider push: the dataset's source connector → the `http` destination (`raw` format)
//!   POSTing to the consumer's endpoint with its bearer token, then a `completed` callback;
//! - provider pull: a token for the public data endpoint, which streams the dataset on `GET`;
//! - consumer push: the public endpoint takes `POST`ed data into the configured destination;
//! - consumer pull: the provider's endpoint is fetched into the configured destination, then a
//!   `completed` callback.
//!
//! Unbounded sources keep their flow STARTED; suspend stops the pipeline with its checkpoint and
//! resume continues from it. Tokens live in the state store (see [`tokens`]).

pub mod address;
pub mod config;
pub mod error;
mod hooks;
pub mod inbound;
mod jobs;
pub mod lines;
pub mod metrics;
mod public;
pub mod pull_source;
mod replica;
mod serve;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use sluice_engine::Engine;
use sluice_sdk::registry::normalize_plugin_name;
use sluice_sdk::spec::validate_settings;
use sluice_sdk::{Registry, Settings};
use sluice_state::Store;
use tokio_util::sync::CancellationToken;

use crate::dataplane::{DataPlane, DataPlaneBuilder};
use crate::lease::Leasing;

pub use config::{DatasetConfig, DestinationConfig, TransferConfig};
pub use error::TransferError;
pub use metrics::{TransferCounters, TransferMetrics};

use inbound::{InboundHub, InboundPlugin};
use jobs::Jobs;
use pull_source::PullPlugin;
use tokens::Tokens;

/// The transfer half of a data plane: runs data flows on the engine and serves the public data
/// endpoint. Shared as an `Arc`.
pub struct Transfers {
    config: TransferConfig,
    public_base: String,
    registry: Arc<Registry>,
    /// Dataset settings with defaults filled in, by dataset id.
    datasets: BTreeMap<String, Settings>,
    engine: Engine,
    tokens: Tokens,
    inbound: Arc<InboundHub>,
    jobs: Jobs,
    dataplane: OnceLock<DataPlane>,
    counters: Arc<TransferCounters>,
    /// Live pull streams by flow, cancelled when the flow's access is revoked.
    streams: Mutex<HashMap<String, CancellationToken>>,
    shutdown: CancellationToken,
    /// Leases on flows with background jobs (shared with other replicas, or in-process).
    leasing: OnceLock<Leasing>,
}

impl Transfers {
    /// Checks the configuration (every dataset and destination against its connector's
    /// specification; errors name the dataset and field) and prepares the transfer machinery.
    /// `config.public_base_url` must be set (the server derives it from its listen address).
    pub fn new(
        config: TransferConfig,
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Transfers>, TransferError> {
        let public_base = config
            .public_base_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                TransferError::config(
                    "publicBaseUrl",
                    "is not set (the server derives it from its listen address)",
                )
            })?
            .trim_end_matches('/')
            .to_string();
        if !(public_base.starts_with("http://") || public_base.starts_with("https://")) {
            return Err(TransferError::config(
                "publicBaseUrl",
                format!("{public_base:?} is not an http(s) URL"),
            ));
        }
        let mut datasets = BTreeMap::new();
        for (id, ds) in &config.datasets {
            let what = format!("datasets.{id}");
            let spec = registry
                .get(&ds.plugin)
                .map_err(|e| TransferError::config(format!("{what}.plugin"), e.to_string()))?
                .specification();
            if registry.new_source(&ds.plugin).is_err() {
                return Err(TransferError::config(
                    format!("{what}.plugin"),
                    format!("connector {:?} has no source side", ds.plugin),
                ));
            }
            let resolved = validate_settings(&spec.source_params, &ds.settings)
                .map_err(|e| settings_error(&what, e))?;
            datasets.insert(id.clone(), resolved);
        }
        for (key, d) in &config.destinations {
            let what = format!("destinations.{key}");
            let spec = registry
                .get(&d.plugin)
                .map_err(|e| TransferError::config(format!("{what}.plugin"), e.to_string()))?
                .specification();
            if registry.new_destination(&d.plugin).is_err() {
                return Err(TransferError::config(
                    format!("{what}.plugin"),
                    format!("connector {:?} has no destination side", d.plugin),
                ));
            }
            validate_settings(&spec.destination_params, &d.settings)
                .map_err(|e| settings_error(&what, e))?;
        }
        let inbound = Arc::new(InboundHub::default());
        let mut engine_registry = (*registry).clone();
        engine_registry.register(Arc::new(InboundPlugin::new(inbound.clone())));
        engine_registry.register(Arc::new(PullPlugin));
        let counters = Arc::new(TransferCounters::default());
        Ok(Arc::new(Transfers {
            tokens: Tokens::new(store.clone(), config.token_ttl),
            engine: Engine::new(engine_registry, store),
            config,
            public_base,
            registry,
            datasets,
            inbound,
            jobs: Jobs::default(),
            dataplane: OnceLock::new(),
            counters,
            streams: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            leasing: OnceLock::new(),
        }))
    }

    /// Registers the transfer extension points on a data plane builder.
    pub fn install(self: &Arc<Self>, builder: DataPlaneBuilder) -> DataPlaneBuilder {
        macro_rules! hook {
            ($builder:expr, $setter:ident, $method:ident) => {{
                let t = self.clone();
                $builder.$setter(move |flow| {
                    let t = t.clone();
                    async move { t.$method(flow).await }
                })
            }};
        }
        let b = hook!(builder, on_prepare, on_prepare);
        let b = hook!(b, on_start, on_start);
        let b = hook!(b, on_started, on_started);
        let b = hook!(b, on_suspend, on_suspend);
        let b = hook!(b, on_resume, on_resume);
        let b = hook!(b, on_terminate, on_terminate);
        let b = hook!(b, on_complete, on_complete);
        hook!(b, on_recover, on_recover)
    }

    /// Hands over the built data plane, so transfer tasks can report (`finish_*`,
    /// `fail_transfer`). Call once, right after `build`.
    pub fn attach(&self, dataplane: DataPlane) {
        if self.dataplane.set(dataplane).is_err() {
            tracing::warn!("transfers: a data plane was already attached; keeping the first");
        }
    }

    /// The public data endpoint (pull `GET`, push `POST`, token refresh), to be mounted by the
    /// server at `/public`.
    pub fn public_router(self: &Arc<Self>) -> axum::Router {
        public::router(self.clone())
    }

    /// Transfer counters for Prometheus.
    pub fn metrics(&self) -> TransferMetrics {
        self.counters.snapshot()
    }

    /// The externally visible base URL of the public data endpoint.
    pub fn public_base_url(&self) -> &str {
        &self.public_base
    }

    /// Stops every running pipeline gracefully, saving its checkpoint, and waits for them; ends
    /// every pull stream. Flows stay in their state, so a restart resumes them (`on_recover`).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.jobs.stop_all().await;
        let streams: Vec<_> = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, s) in streams {
            s.cancel();
        }
    }

    /// The connector registry the datasets and destinations come from.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn dataplane(&self) -> Option<&DataPlane> {
        self.dataplane.get()
    }
}

fn settings_error(what: &str, e: sluice_sdk::ValidationErrors) -> TransferError {
    let fields: Vec<String> =
        e.0.iter()
            .map(|v| format!("{what}.settings.{}: {}", v.parameter, v.message))
            .collect();
    TransferError::config(what, fields.join("; "))
}

/// True for the `file` plugin under any of its spellings.
fn is_file_plugin(plugin: &str) -> bool {
    normalize_plugin_name(plugin) == "file"
}
