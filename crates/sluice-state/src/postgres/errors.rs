//! PostgreSQL and pool failures as [`StateError`]s: every message names the server and table
//! (never the password), and `transient` says whether retrying may help.

use std::error::Error as _;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::error::StateError;

/// The backend name in errors.
pub(crate) const BACKEND: &str = "postgres";

/// Where a store lives, for messages: `postgres://user@host:port/db, table t` without credentials.
#[derive(Clone, Debug)]
pub(crate) struct Target(pub String);

impl Target {
    /// A failure of `what` (e.g. "get key \"a\"") reported by the server or the connection.
    pub fn pg(&self, what: &str, e: &tokio_postgres::Error) -> StateError {
        // Bad input only the server can spot: a LIKE pattern it rejects, or a key too long for
        // the primary-key index (about 2,700 bytes).
        if matches!(
            e.code(),
            Some(&SqlState::INVALID_ESCAPE_SEQUENCE | &SqlState::PROGRAM_LIMIT_EXCEEDED)
        ) {
            return StateError::InvalidRequest(format!("{what}: {}", describe(e)));
        }
        StateError::Backend {
            backend: BACKEND,
            message: format!("{what} on {}: {}", self.0, describe(e)),
            transient: is_transient(e),
        }
    }

    /// A failure to get a pooled connection for `what`.
    pub fn pool(&self, what: &str, e: PoolError) -> StateError {
        let (message, transient) = match &e {
            PoolError::Backend(pg) => (describe(pg), is_transient(pg)),
            // Every connection busy or a connect that hung: a later attempt may find one.
            PoolError::Timeout(_) => (e.to_string(), true),
            PoolError::Closed | PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
                (e.to_string(), false)
            }
        };
        StateError::Backend {
            backend: BACKEND,
            message: format!("{what} on {}: no connection: {message}", self.0),
            transient,
        }
    }

    /// A permanent failure of `what` found by the store itself (e.g. an unexpected schema).
    pub fn permanent(&self, what: &str, message: impl std::fmt::Display) -> StateError {
        StateError::Backend {
            backend: BACKEND,
            message: format!("{what} on {}: {message}", self.0),
            transient: false,
        }
    }
}

/// The error with the server's message, detail and hint when there are any.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut out = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                out.push_str("; ");
                out.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                out.push_str("; hint: ");
                out.push_str(hint);
            }
            out
        }
        None => {
            let mut out = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                let text = s.to_string();
                if !out.contains(&text) {
                    out.push_str(": ");
                    out.push_str(&text);
                }
                source = s.source();
            }
            out
        }
    }
}

/// True if retrying may succeed: the connection failed (refused, reset, closed, timed out), the
/// server is starting or stopping, is out of connections, or aborted the transaction for a
/// serialization failure or deadlock.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        return matches!(
            code,
            "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "57P01" // admin_shutdown
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now
                | "53300" // too_many_connections
                | "55P03" // lock_not_available
        ) || code.starts_with("08"); // connection_exception
    }
    if e.is_closed() {
        return true;
    }
    // Without a server error, an I/O error anywhere in the chain means the connection failed.
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}
