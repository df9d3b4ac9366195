//! Data Plane Signaling inside `sluice serve`: builds the [`DataPlane`] over the flows store with
//! the transfer extension points, registers the configured control planes, recovers flows left
//! running by an earlier process, and offers the routes (DPS API, Sluice's read-only flow
//! listing, the public data endpoint) and the callback deliverer.

use std::sync::Arc;

use axum::Router;
use sluice_sdk::Registry;
use sluice_signaling::http::{control_plane_key, Access, ControlPlane};
use sluice_signaling::lease::{LeaseConfig, LeaseError, Leasing, PostgresLeases};
use sluice_signaling::outbox::{self, OutboxMetrics};
use sluice_signaling::transfer::{TransferError, TransferMetrics, Transfers};
use sluice_signaling::{DataPlane, SignalingError};
use sluice_state::{SetRequest, StateError, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::flows_api::{self, Credentials};
use crate::serve_config::{Backend, OutboxSettings, SignalingFile};

/// Where the public data endpoint is mounted.
pub const PUBLIC_PATH: &str = "/public";

/// Why signaling could not start.
#[derive(Debug, thiserror::Error)]
pub enum SignalingStartError {
    /// The flows store cannot commit a transition with its side effects.
    #[error(
        "signaling.store: the {backend} store {store:?} does not support transactions, which data \
         flows need"
    )]
    NoTransactions {
        /// The store.
        store: String,
        /// Its backend.
        backend: &'static str,
    },
    /// The `signaling.transfers` configuration was refused.
    #[error(transparent)]
    Transfers(#[from] TransferError),
    /// A configured control plane could not be registered.
    #[error("cannot register control plane {id:?}: {source}")]
    Register {
        /// The control plane.
        id: String,
        /// The store's error.
        #[source]
        source: StateError,
    },
    /// The lease table of replicas could not be opened.
    #[error("signaling.store: cannot open the leases of replicas: {0}")]
    Leases(#[source] LeaseError),
    /// Flows of an earlier run could not be recovered.
    #[error("cannot recover data flows: {0}")]
    Recover(#[source] SignalingError),
}

/// The running signaling side of the server.
pub struct Signaling {
    dataplane: DataPlane,
    base_path: String,
    access: Access,
    credentials: Credentials,
    outbox: OutboxSettings,
    outbox_metrics: Arc<OutboxMetrics>,
    transfers: Arc<Transfers>,
    /// Whether flows are shared with other replicas (a claim loop runs).
    shared: bool,
}

/// The leases for flows in a store with `backend`: a lease table beside a PostgreSQL store's
/// table (`<table>_flow_leases`), so replicas on it share flows; in-process leases otherwise.
pub async fn leasing_for(
    backend: Option<&Backend>,
    config: LeaseConfig,
) -> Result<Leasing, SignalingStartError> {
    match backend {
        Some(Backend::Postgres { url, options }) => {
            let table = format!("{}_flow_leases", options.table);
            let leases = PostgresLeases::connect(
                url,
                &table,
                options.schema.as_deref(),
                4,
                options.connect_timeout,
            )
            .await
            .map_err(SignalingStartError::Leases)?;
            Ok(Leasing::new(Arc::new(leases), config))
        }
        _ => Ok(Leasing::in_process(config)),
    }
}

impl Signaling {
    /// Builds the data plane over `store` (named `store_name` in messages), registers the
    /// configured control planes and recovers unfinished flows. `public_base_url` is where the
    /// public data endpoint is reached when the configuration does not say.
    pub async fn start(
        config: &SignalingFile,
        store_name: &str,
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        public_base_url: String,
        leasing: Leasing,
    ) -> Result<Self, SignalingStartError> {
        if !store.features().transactional {
            return Err(SignalingStartError::NoTransactions {
                store: store_name.to_string(),
                backend: store.name(),
            });
        }
        let mut transfer_config = config.transfers.clone();
        if transfer_config.public_base_url.is_none() {
            transfer_config.public_base_url = Some(public_base_url);
        }
        let transfers = Transfers::new(transfer_config, registry, Arc::clone(&store))?;
        let shared = leasing.store.shared();
        if shared {
            tracing::info!(owner = %leasing.owner, "flows are shared with other replicas through leases");
        }
        transfers.use_leasing(leasing);
        let dataplane = transfers
            .install(DataPlane::builder(Arc::clone(&store)))
            .build();
        transfers.attach(dataplane.clone());

        let mut access = Access::default();
        let mut credentials = Credentials::default();
        for cp in &config.control_planes {
            for c in cp.credentials() {
                access.allow(cp.id.clone(), c);
                credentials.allow(c);
            }
            register(&store, cp).await?;
        }
        if access.is_open() {
            tracing::warn!(
                "no control plane is configured: the signaling API accepts every caller (use \
                 only on a trusted network)"
            );
        }
        let recovered = dataplane
            .recover()
            .await
            .map_err(SignalingStartError::Recover)?;
        if recovered > 0 {
            tracing::info!(flows = recovered, "recovered unfinished data flows");
        }
        Ok(Signaling {
            dataplane,
            base_path: config.base_path.clone(),
            access,
            credentials,
            outbox: config.outbox,
            outbox_metrics: Arc::new(OutboxMetrics::default()),
            transfers,
            shared,
        })
    }

    /// The data plane.
    pub fn dataplane(&self) -> &DataPlane {
        &self.dataplane
    }

    /// The base path of the DPS routes (`""` for the root).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Callback delivery counters.
    pub fn outbox_metrics(&self) -> &OutboxMetrics {
        &self.outbox_metrics
    }

    /// Transfer counters.
    pub fn transfer_metrics(&self) -> TransferMetrics {
        self.transfers.metrics()
    }

    /// The DPS API under the base path, Sluice's flow listing beside it, and the public data
    /// endpoint under [`PUBLIC_PATH`].
    pub fn routes(&self) -> Router {
        sluice_signaling::http::router(self.dataplane.clone(), &self.base_path, self.access.clone())
            .merge(flows_api::routes(
                self.dataplane.clone(),
                &self.base_path,
                self.credentials.clone(),
            ))
            .nest(PUBLIC_PATH, self.transfers.public_router())
    }

    /// Starts delivering callbacks until `cancel` is cancelled.
    pub fn spawn_outbox(&self, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(outbox::run(
            self.dataplane.clone(),
            self.outbox.options(),
            Arc::clone(&self.outbox_metrics),
            cancel,
        ))
    }

    /// Starts the claim loop that resumes flows of dead replicas, when flows are shared; runs
    /// until `cancel`.
    pub fn spawn_claims(&self, cancel: CancellationToken) -> Option<JoinHandle<()>> {
        self.shared.then(|| self.transfers.spawn_claim_loop(cancel))
    }

    /// Stops running transfers, saving their checkpoints.
    pub async fn shutdown(&self) {
        self.transfers.shutdown().await;
    }
}

/// Registers a configured control plane, as `PUT /controlplanes` would.
async fn register(
    store: &Arc<dyn Store>,
    cp: &crate::serve_config::ControlPlaneFile,
) -> Result<(), SignalingStartError> {
    let registration = ControlPlane {
        controlplane_id: cp.id.clone(),
        endpoint: cp.endpoint.clone().unwrap_or_default(),
        authorization: cp.callback_authorization.clone(),
    };
    let value = serde_json::to_vec(&registration).map_err(|e| SignalingStartError::Register {
        id: cp.id.clone(),
        source: StateError::InvalidRequest(e.to_string()),
    })?;
    store
        .set(SetRequest::new(control_plane_key(&cp.id), value))
        .await
        .map_err(|source| SignalingStartError::Register {
            id: cp.id.clone(),
            source,
        })?;
    Ok(())
}
