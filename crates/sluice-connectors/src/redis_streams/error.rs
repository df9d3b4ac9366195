//! What can go wrong talking to Redis, each error naming the connector and the setting involved.

use sluice_sdk::{ConnectorError, Position};

/// A Redis connector failure; converts into the SDK's [`ConnectorError`].
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// `open` was called before a successful `configure`.
    #[error("redis: opened before it was configured")]
    NotConfigured,
    /// The server could not be reached within `connectTimeout`.
    #[error(
        "redis: cannot connect to {address} (settings \"url\" or \"redis.host\"/\"redis.port\") \
         within {waited:?} (setting \"connectTimeout\"): {reason}"
    )]
    Connect {
        /// Where it tried to connect (without credentials).
        address: String,
        /// How long it kept trying.
        waited: std::time::Duration,
        /// The last error.
        reason: String,
    },
    /// A command failed.
    #[error("redis: {what} (setting {setting:?}): {reason}")]
    Command {
        /// What was being done.
        what: String,
        /// The setting it concerns.
        setting: &'static str,
        /// The server's or client's error.
        reason: String,
        /// True if retrying may help (a lost connection, a timeout).
        transient: bool,
    },
    /// `open` got a position this source did not produce.
    #[error("redis: cannot resume at position {position}: not a stream entry id (ms-seq)")]
    InvalidPosition {
        /// The position given.
        position: Position,
    },
}

impl RedisError {
    /// A failed command, transient if the error was about the connection.
    pub(crate) fn command(what: String, setting: &'static str, e: &redis::RedisError) -> Self {
        RedisError::Command {
            what,
            setting,
            reason: e.to_string(),
            transient: is_transient(e),
        }
    }
}

/// True for errors a retry on a new connection may cure.
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

impl From<RedisError> for ConnectorError {
    fn from(e: RedisError) -> Self {
        match e {
            RedisError::InvalidPosition { ref position } => ConnectorError::InvalidPosition {
                position: position.clone(),
                reason: e.to_string(),
            },
            RedisError::Command { transient, .. } => ConnectorError::System {
                message: e.to_string(),
                transient,
            },
            RedisError::Connect { .. } => ConnectorError::System {
                message: e.to_string(),
                transient: true,
            },
            RedisError::NotConfigured => ConnectorError::system(e.to_string()),
        }
    }
}
