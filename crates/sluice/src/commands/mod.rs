//! The subcommands: `run`, `validate`, `connectors`, `bench`, `serve` and `flows`.

pub mod bench;
pub mod bench_connectors;
pub mod bench_signaling;
pub mod bench_state;
pub mod bench_watch;
pub mod connectors;
pub mod flows;
pub mod pipelines;
pub mod remote;
pub mod run;
pub mod serve;
mod signals;
pub mod validate;

use std::path::PathBuf;

use sluice_engine::EngineError;
use sluice_sdk::RegistryError;
use sluice_state::StateError;

use crate::config::ConfigError;
use crate::serve_config::ServeConfigError;
use crate::server::ServeError;

/// Why a command failed. `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `sluice bench --watch` could not run to its end.
    #[error("watch benchmark: {0}")]
    WatchBench(String),
    /// The pipeline file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pipeline file loaded, but connectors reject parts of it; the problems were printed.
    #[error("{file}: {count} problem(s) found")]
    Problems {
        /// The file.
        file: String,
        /// How many.
        count: usize,
    },
    /// `sluice run` of a file whose pipelines are all `stopped`.
    #[error(
        "{file}: no pipeline has `status: running`, so there is nothing to run (the status \
         defaults to `stopped`, as in Conduit)"
    )]
    NothingToRun {
        /// The file.
        file: String,
    },
    /// No data directory was given and the platform has none.
    #[error("cannot determine a data directory: pass --data-dir or set SLUICE_DATA_DIR")]
    NoDataDir,
    /// The data directory could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The state store could not be opened.
    #[error("cannot open the state store {}: {source}", path.display())]
    Store {
        /// The store file.
        path: PathBuf,
        /// The store's error.
        #[source]
        source: StateError,
    },
    /// A pipeline could not start.
    #[error(transparent)]
    Start(EngineError),
    /// One or more pipelines failed (each error was printed with its summary).
    #[error("{failed} of {total} pipeline(s) failed")]
    PipelinesFailed {
        /// How many failed.
        failed: usize,
        /// How many ran.
        total: usize,
    },
    /// The pipelines were stopped hard by a second interrupt.
    #[error("stopped immediately on request; unacknowledged records will be read again next run")]
    Killed,
    /// An unknown connector name.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// Encoding JSON failed.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `sluice bench --connectors` could not measure a scenario.
    #[error("connector benchmark: {0}")]
    ConnectorBench(#[from] bench_connectors::BenchError),
    /// `sluice bench --signaling` could not measure the signaling API.
    #[error("signaling benchmark: {0}")]
    SignalingBench(#[from] bench_signaling::BenchError),
    /// `sluice bench --state` could not measure a backend.
    #[error("state benchmark: {0}")]
    StateBench(#[from] bench_state::BenchError),
    /// The server configuration file could not be read or is invalid.
    #[error(transparent)]
    ServeConfig(#[from] ServeConfigError),
    /// `sluice serve` could not open a store, or its server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// `sluice serve` could not listen on its address.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `sluice flows` could not read the flows.
    #[error(transparent)]
    Flows(#[from] flows::FlowsError),
    /// `sluice serve` could not start its declarative pipelines.
    #[error(transparent)]
    Declarative(#[from] crate::server::pipelines::DeclarativeError),
    /// `sluice pipelines` could not talk to the server.
    #[error(transparent)]
    Pipelines(#[from] pipelines::PipelinesError),
    /// Stopped by a signal before it had started.
    #[error("interrupted while starting")]
    Interrupted,
}

impl CommandError {
    /// The process exit code for this error: 130 after a hard stop by interrupt, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Killed | CommandError::Interrupted => 130,
            _ => 1,
        }
    }
}
