//! Turning the Redis client's errors into [`StateError`]s, transient or not.

use redis::{RedisError, RetryMethod};

use crate::error::StateError;

/// The backend's name in errors and messages.
pub(crate) const BACKEND: &str = "redis";

/// A backend error for a failed Redis call; `context` says what was being done.
///
/// Connection refused / reset / dropped, timeouts and the server's "try again later" replies
/// (loading, busy, master down) are transient: a retry may succeed once the connection manager has
/// reconnected. Everything else (a script error, a key of the wrong type) is permanent.
pub(crate) fn backend(context: &str, e: &RedisError) -> StateError {
    StateError::Backend {
        backend: BACKEND,
        message: format!("{context}: {e}"),
        transient: is_transient(e),
    }
}

/// True if retrying the call may succeed.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect
                | RetryMethod::RetryImmediately
                | RetryMethod::WaitAndRetry
                | RetryMethod::ReconnectFromInitialConnections
        )
}

/// True if the server did not know a script (its cache was flushed, or it restarted).
pub(crate) fn is_no_script(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// A permanent error for a reply of a shape the scripts never produce.
pub(crate) fn unexpected(context: &str, reply: impl std::fmt::Debug) -> StateError {
    StateError::backend(BACKEND, format!("{context}: unexpected reply {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_failures_are_transient_and_script_errors_are_not() {
        let refused: RedisError =
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(backend("get", &refused).is_transient());
        let timed_out: RedisError = std::io::Error::from(std::io::ErrorKind::TimedOut).into();
        assert!(backend("get", &timed_out).is_transient());
        let reset: RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(backend("get", &reset).is_transient());

        let script: RedisError = (
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        )
            .into();
        let err = backend("set", &script);
        assert!(!err.is_transient());
        assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    }
}
