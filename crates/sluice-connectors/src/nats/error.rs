//! What can go wrong talking to NATS, each error naming the connector and the setting involved.

use sluice_sdk::{ConnectorError, Position};

/// A NATS connector failure; converts into the SDK's [`ConnectorError`].
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// `open` was called before a successful `configure`.
    #[error("nats: opened before it was configured")]
    NotConfigured,
    /// No server could be reached within `connectTimeout`.
    #[error(
        "nats: cannot connect to {urls} (setting \"urls\") within {waited:?} (setting \
         \"connectTimeout\"): {reason}"
    )]
    Connect {
        /// The URLs tried.
        urls: String,
        /// How long it kept trying.
        waited: std::time::Duration,
        /// The last error.
        reason: String,
    },
    /// A JetStream API call (stream or consumer lookup, creation, info) failed.
    #[error("nats: {what} (setting {setting:?}): {reason}")]
    Api {
        /// What was being done.
        what: String,
        /// The setting it concerns.
        setting: &'static str,
        /// The server's or client's error.
        reason: String,
        /// True if retrying may help (the connection was lost, the server timed out).
        transient: bool,
    },
    /// `open` got a position this source did not produce.
    #[error("nats: cannot resume at position {position}: {reason}")]
    InvalidPosition {
        /// The position given.
        position: Position,
        /// Why it cannot be used.
        reason: String,
    },
}

impl From<NatsError> for ConnectorError {
    fn from(e: NatsError) -> Self {
        match e {
            NatsError::InvalidPosition { position, reason } => {
                ConnectorError::InvalidPosition { position, reason }
            }
            NatsError::Api { transient, .. } => ConnectorError::System {
                message: e.to_string(),
                transient,
            },
            NatsError::Connect { .. } => ConnectorError::System {
                message: e.to_string(),
                transient: true,
            },
            NatsError::NotConfigured => ConnectorError::system(e.to_string()),
        }
    }
}
