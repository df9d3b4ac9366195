//! `sluice serve`: offers the configured state stores over Dapr's state HTTP API until stopped.
//!
//! Works with no configuration at all (one embedded redb store named `statestore` in the data
//! directory, on 127.0.0.1:3500). Every store is opened and reached before the first request is
//! accepted. The first SIGINT or SIGTERM stops gracefully: no new connections, requests in flight
//! finish; a second Ctrl-C stops at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use super::run::data_dir;
use super::CommandError;
use crate::cli::ServeArgs;
use crate::serve_config::{self, ServeConfig, ServeFile};
use crate::server::{self, Stores};
use crate::ui;

/// Signals this soon after the first one are taken as the same request.
const SIGNAL_DEBOUNCE: Duration = Duration::from_millis(250);

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
    ui::note(&format!(
        "sluice serve: state API on http://{address} (stores: {}; data directory {})",
        stores.names().join(", "),
        config.data_dir.display()
    ));

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let shutdown = async move {
        // Resolves on the first stop request (or if the sender is gone).
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let server = server::run(stores, config.http, listener, shutdown);
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

/// SIGINT and SIGTERM listeners.
struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Signals {
    fn listen() -> Self {
        let open = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot listen for {name}: {e}");
                None
            }
        };
        Signals {
            interrupt: open(SignalKind::interrupt(), "SIGINT"),
            terminate: open(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Waits for the next signal; true for SIGINT, false for SIGTERM.
    async fn next(&mut self) -> bool {
        async fn recv(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.interrupt) => true,
            _ = recv(&mut self.terminate) => false,
        }
    }
}
