//! Errors of the signaling layer, each mapped to the HTTP status the specification asks for.

use sluice_state::StateError;

use crate::flow::IllegalTransition;

/// Why a signaling call failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// The message is malformed or incomplete (400).
    #[error("{0}")]
    BadRequest(String),
    /// The state machine refuses the move (400).
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// No flow with that id (404).
    #[error("no data flow with id {0:?}")]
    NotFound(String),
    /// A conflicting create: the process already has a flow made by another message (409).
    #[error("{0}")]
    Conflict(String),
    /// The flow changed concurrently; the caller retries (internal, never reaches a client).
    #[error("data flow {0} changed concurrently")]
    Concurrent(String),
    /// An extension point refused or failed (400 when it says the request is at fault).
    #[error("{message}")]
    Hook {
        /// What the hook said.
        message: String,
        /// True if the request is at fault (400), false for a failure of the data plane (500).
        client_error: bool,
    },
    /// The state store failed (500).
    #[error("state store: {0}")]
    Store(#[from] StateError),
    /// An invariant broke (500).
    #[error("{0}")]
    Internal(String),
}

impl SignalingError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            SignalingError::BadRequest(_) | SignalingError::IllegalTransition(_) => 400,
            SignalingError::Hook {
                client_error: true, ..
            } => 400,
            SignalingError::NotFound(_) => 404,
            SignalingError::Conflict(_) => 409,
            SignalingError::Store(StateError::Backend {
                transient: true, ..
            }) => 503,
            _ => 500,
        }
    }
}
