//! `sluice serve`: offers the configured state stores over Dapr's state HTTP API and, unless
//! disabled, acts as a Data Plane Signaling data plane (DPS API, public data endpoint, callback
//! outbox), with operations endpoints, until stopped.
//!
//! Works with no configuration at all (one embedded redb store named `statestore` in the data
//! directory, on 127.0.0.1:3500, data flows in it). Every store is opened and reached, and flows
//! left unfinished by an earlier run are recovered, before the first request is accepted. The
//! first SIGINT or SIGTERM stops gracefully: no new connections, requests in flight finish, then
//! the callback outbox stops and running transfers are stopped with their checkpoints saved; a
//! second Ctrl-C stops at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::run::data_dir;
use super::signals::Signals;
use super::CommandError;
use crate::cli::ServeArgs;
use crate::serve_config::{self, ServeConfig, ServeFile};
use crate::server::http_metrics::HttpMetrics;
use crate::server::pipelines::Declarative;
use crate::server::signaling::{Signaling, PUBLIC_PATH};
use crate::server::{self, Stores};
use crate::ui;

/// Signals this soon after the first one are taken as the same request.
const SIGNAL_DEBOUNCE: Duration = Duration::from_millis(250);
/// How long requests in flight may take after a stop request before running transfers (and the
/// pull streams that serve them, which may never end on their own) are stopped.
const STREAM_GRACE: Duration = Duration::from_secs(10);

/// The configuration `sluice serve` runs with: the file (if any), then the command line, then the
/// defaults. `--data-dir` (or `SLUICE_DATA_DIR`) wins over the file's `dataDir`.
pub fn configuration(args: &ServeArgs) -> Result<ServeConfig, CommandError> {
    let file = match &args.config {
        Some(path) => serve_config::load(path)?,
        None => ServeFile::default(),
    };
    let dir = match args.data_dir.clone().or_else(|| file.data_dir.clone()) {
        Some(d) => d,
        None => data_dir(None)?,
    };
    Ok(file.resolve(args.listen.clone(), dir))
}

/// Runs `sluice serve`.
pub async fn serve(args: &ServeArgs) -> Result<(), CommandError> {
    serve_with(args, sluice_connectors::builtin_registry()).await
}

/// Opens the signaling side: the data plane over the flows store, control planes registered,
/// unfinished flows recovered. `None` when `signaling.enabled` is false.
async fn start_signaling(
    config: &ServeConfig,
    stores: &Stores,
    registry: sluice_sdk::Registry,
    address: std::net::SocketAddr,
) -> Result<Option<Arc<Signaling>>, CommandError> {
    let sig = &config.signaling;
    if !sig.enabled {
        return Ok(None);
    }
    let (name, store) = match &sig.store {
        Some(name) => match stores.get(name) {
            Some(s) => (name.clone(), Arc::clone(&s.store)),
            None => {
                return Err(server::ServeError::Open(server::OpenError {
                    store: name.clone(),
                    backend: "unknown",
                    source: sluice_state::StateError::InvalidRequest(format!(
                        "signaling.store names {name:?}, which is not a declared store"
                    )),
                })
                .into())
            }
        },
        None => ("(Sluice's own state)".to_string(), stores.own_state()),
    };
    let backend = sig
        .store
        .as_ref()
        .and_then(|n| config.stores.iter().find(|s| &s.name == n))
        .map(|s| &s.backend);
    let leasing = server::signaling::leasing_for(backend, sig.replicas)
        .await
        .map_err(server::ServeError::from)?;
    let started = Signaling::start(
        sig,
        &name,
        store,
        Arc::new(registry),
        format!("http://{address}"),
        leasing,
    )
    .await
    .map_err(server::ServeError::from)?;
    Ok(Some(Arc::new(started)))
}

/// Runs `sluice serve` with the connectors of `registry`.
pub async fn serve_with(
    args: &ServeArgs,
    registry: sluice_sdk::Registry,
) -> Result<(), CommandError> {
    // Listen before anything else, so that an early Ctrl-C is not lost.
    let mut signals = Signals::listen();
    let config = configuration(args)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| CommandError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let stores = tokio::select! {
        opened = Stores::open(&config) => Arc::new(opened.map_err(server::ServeError::from)?),
        _ = signals.next() => return Err(CommandError::Interrupted),
    };
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| CommandError::Listen {
                address: config.listen.clone(),
                source,
            })?;
    let address = listener.local_addr().map_err(CommandError::Output)?;
    if address.ip().is_unspecified()
        && config.signaling.enabled
        && config.signaling.transfers.public_base_url.is_none()
    {
        tracing::warn!(
            %address,
            "listening on all interfaces without signaling.transfers.publicBaseUrl: handed-out \
             data addresses name http://{address}, which other hosts cannot reach; set it"
        );
    }
    let signaling = tokio::select! {
        s = start_signaling(&config, &stores, registry.clone(), address) => s?,
        _ = signals.next() => return Err(CommandError::Interrupted),
    };
    // Declarative pipelines (`pipelines:`), started once the stores are open.
    let declarative = if config.pipelines.enabled {
        tokio::select! {
            d = Declarative::start(&config.pipelines, &stores, registry) => Some(d?),
            _ = signals.next() => return Err(CommandError::Interrupted),
        }
    } else {
        None
    };
    ui::note(&format!(
        "sluice serve: state API on http://{address} (stores: {}; data directory {})",
        stores.names().join(", "),
        config.data_dir.display()
    ));
    if let Some(s) = &signaling {
        ui::note(&format!(
            "sluice serve: signaling API on http://{address}{}, public data endpoint on \
             http://{address}{PUBLIC_PATH}, metrics on http://{address}/metrics",
            s.base_path()
        ));
    }
    let outbox_stop = CancellationToken::new();
    let outbox = signaling
        .as_ref()
        .map(|s| s.spawn_outbox(outbox_stop.clone()));
    let claims = signaling
        .as_ref()
        .and_then(|s| s.spawn_claims(outbox_stop.clone()));

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let shutdown = async move {
        // Resolves on the first stop request (or if the sender is gone).
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let app = server::app(
        stores,
        config.http,
        signaling.clone(),
        Arc::new(HttpMetrics::default()),
    );
    let stopping = signaling.clone();
    let server = async move {
        axum::serve(server::without_nagle(listener), app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(server::ServeError::from)?;
        tracing::info!("HTTP server stopped; stopping callbacks and transfers");
        outbox_stop.cancel();
        if let Some(task) = claims {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the lease claim loop ended abnormally");
            }
        }
        if let Some(task) = outbox {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the callback deliverer ended abnormally");
            }
        }
        if let Some(s) = &signaling {
            s.shutdown().await;
        }
        if let Some(d) = declarative {
            d.shutdown().await;
        }
        Ok::<(), server::ServeError>(())
    };
    tokio::pin!(server);
    let mut first: Option<Instant> = None;
    loop {
        tokio::select! {
            result = &mut server => return result.map_err(CommandError::from),
            interrupt = signals.next() => match first {
                None => {
                    first = Some(Instant::now());
                    ui::note(
                        "stopping: no new connections, finishing requests in flight (press \
                         Ctrl-C again to stop immediately)",
                    );
                    let _ = stop_tx.send(true);
                    server::watch_api::close_streams();
                    if let Some(s) = stopping.clone() {
                        tokio::spawn(async move {
                            tokio::time::sleep(STREAM_GRACE).await;
                            s.shutdown().await;
                        });
                    }
                }
                Some(at) if interrupt && at.elapsed() >= SIGNAL_DEBOUNCE => {
                    ui::note("stopping immediately");
                    return Err(CommandError::Killed);
                }
                Some(_) => {}
            },
        }
    }
}
