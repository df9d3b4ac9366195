//! What can go wrong talking to PostgreSQL, each error naming the connector side and, where one
//! is to blame, the setting to look at. Passwords never appear in messages.

use std::fmt;

use sluice_sdk::{ConnectorError, Position};

/// Which side of the connector an error comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The source (snapshot, change data capture, polling).
    Source,
    /// The destination.
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// A PostgreSQL connector failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PgError {
    /// Something failed; `setting` names the parameter to look at, when one is to blame.
    #[error("postgres {side}: {}{message}", setting.map(|s| format!("{s}: ")).unwrap_or_default())]
    Failed {
        /// Source or destination.
        side: Side,
        /// The setting the user should look at, if any.
        setting: Option<&'static str>,
        /// What went wrong, with context.
        message: String,
        /// True when retrying later may succeed (the connection was lost, the server restarts).
        transient: bool,
    },
    /// A position that this connector did not produce or cannot resume from.
    #[error("postgres {side}: cannot use position {position}: {reason}")]
    Position {
        /// Source or destination.
        side: Side,
        /// The position.
        position: Position,
        /// Why.
        reason: String,
    },
}

impl PgError {
    /// A permanent failure blamed on `setting`.
    pub fn setting(side: Side, setting: &'static str, message: impl Into<String>) -> Self {
        PgError::Failed {
            side,
            setting: Some(setting),
            message: message.into(),
            transient: false,
        }
    }

    /// A permanent failure no single setting is to blame for.
    pub fn other(side: Side, message: impl Into<String>) -> Self {
        PgError::Failed {
            side,
            setting: None,
            message: message.into(),
            transient: false,
        }
    }

    /// A failure of a database call while doing `doing`; transient if the connection was lost.
    pub fn db(side: Side, doing: &str, e: &tokio_postgres::Error) -> Self {
        PgError::Failed {
            side,
            setting: None,
            message: format!("{doing}: {}", describe(e)),
            transient: is_transient(e),
        }
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PgError::Failed {
                transient: true,
                ..
            }
        )
    }
}

impl From<PgError> for ConnectorError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Position {
                side,
                position,
                reason,
            } => ConnectorError::InvalidPosition {
                position,
                reason: format!("postgres {side}: {reason}"),
            },
            PgError::Failed { transient, .. } => ConnectorError::System {
                message: e.to_string(),
                transient,
            },
        }
    }
}

/// The server's message (with detail and hint) for database errors, the error's text otherwise.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(" (");
                s.push_str(d);
                s.push(')');
            }
            if let Some(h) = db.hint() {
                s.push_str("; hint: ");
                s.push_str(h);
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

/// True for failures that a reconnect may cure: lost connections, I/O errors, a server that is
/// shutting down or starting up, serialization conflicts.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => is_transient_sqlstate(code.code()),
        // No SQLSTATE: an I/O or protocol error on the connection.
        None => e.as_db_error().is_none(),
    }
}

/// True for SQLSTATE codes a retry may cure.
pub fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || matches!(
            code,
            "57P01" // admin_shutdown
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now
                | "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "53300" // too_many_connections
                | "55006" // object_in_use: a replication slot still held by a lost connection
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_side_and_setting() {
        let e = PgError::setting(Side::Source, "tables", "table \"nope\" does not exist");
        assert_eq!(
            e.to_string(),
            "postgres source: tables: table \"nope\" does not exist"
        );
        let e = PgError::other(Side::Destination, "boom");
        assert_eq!(e.to_string(), "postgres destination: boom");
        assert!(!e.is_transient());
        let c = ConnectorError::from(e);
        assert!(matches!(
            c,
            ConnectorError::System {
                transient: false,
                ..
            }
        ));
    }

    #[test]
    fn connection_errors_are_transient() {
        assert!(is_transient_sqlstate("08006"));
        assert!(is_transient_sqlstate("57P01"));
        assert!(!is_transient_sqlstate("42P01"));
        assert!(!is_transient_sqlstate("28P01"));
    }
}
