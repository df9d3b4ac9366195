//! Errors of the engine, naming the pipeline and connector involved.

use std::fmt;

use sluice_sdk::ConnectorError;
use sluice_state::StateError;

/// One problem found when checking a pipeline before it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigProblem {
    /// The connector or processor id (or `pipeline`).
    pub connector: String,
    /// The parameter, when the problem is with one.
    pub parameter: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.parameter {
            Some(p) => write!(f, "{}: parameter {p:?}: {}", self.connector, self.message),
            None => write!(f, "{}: {}", self.connector, self.message),
        }
    }
}

/// Why a pipeline could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration has problems; every one is listed.
    #[error("pipeline {pipeline:?} is invalid: {}", join(.problems))]
    Invalid {
        /// The pipeline id.
        pipeline: String,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
    /// A connector failed.
    #[error("pipeline {pipeline:?}, connector {connector:?}: {action}: {source}")]
    Connector {
        /// The pipeline id.
        pipeline: String,
        /// The connector id.
        connector: String,
        /// What the engine was doing (`open`, `read`, `write`, ...).
        action: &'static str,
        /// The connector's error.
        #[source]
        source: Box<ConnectorError>,
    },
    /// The state store failed.
    #[error("pipeline {pipeline:?}: state store: {action}: {source}")]
    State {
        /// The pipeline id.
        pipeline: String,
        /// What the engine was doing.
        action: &'static str,
        /// The store's error.
        #[source]
        source: StateError,
    },
    /// Too many records were nacked.
    #[error("pipeline {pipeline:?}: record at position {position} was nacked by {connector:?} ({reason}) and the nack threshold ({threshold} in the last {window}) is exceeded")]
    NackThreshold {
        /// The pipeline id.
        pipeline: String,
        /// The destination that nacked.
        connector: String,
        /// The nacked record's position.
        position: String,
        /// The destination's reason.
        reason: String,
        /// The configured threshold.
        threshold: usize,
        /// The configured window.
        window: usize,
    },
    /// The engine's own invariants were broken (a connector misreporting acks, a task lost).
    #[error("pipeline {pipeline:?}: {message}")]
    Internal {
        /// The pipeline id.
        pipeline: String,
        /// What went wrong.
        message: String,
    },
    /// The pipeline was stopped hard before it finished.
    #[error("pipeline {pipeline:?} was killed")]
    Killed {
        /// The pipeline id.
        pipeline: String,
    },
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
