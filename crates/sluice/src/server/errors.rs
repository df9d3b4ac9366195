//! Errors of the HTTP API, answered as Dapr answers them: a status code and a JSON body
//! `{"errorCode": "ERR_...", "message": "..."}`.
//!
//! Bad input is always a 4xx: a 5xx means the backend failed, never that the request was wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sluice_state::StateError;

/// Dapr's code for a request that cannot be understood.
pub const ERR_MALFORMED_REQUEST: &str = "ERR_MALFORMED_REQUEST";
/// Dapr's code for an unknown store name.
pub const ERR_STATE_STORE_NOT_FOUND: &str = "ERR_STATE_STORE_NOT_FOUND";
/// Dapr's code for an operation the store does not support.
pub const ERR_STATE_STORE_NOT_SUPPORTED: &str = "ERR_STATE_STORE_NOT_SUPPORTED";
/// Dapr's code for a transaction operation other than `upsert` and `delete`.
pub const ERR_NOT_SUPPORTED_STATE_OPERATION: &str = "ERR_NOT_SUPPORTED_STATE_OPERATION";
/// Sluice's code for a request body over `http.maxBodyBytes`.
pub const ERR_REQUEST_TOO_LARGE: &str = "ERR_REQUEST_TOO_LARGE";
/// Sluice's code for a value over `http.maxValueBytes`.
pub const ERR_STATE_VALUE_TOO_LARGE: &str = "ERR_STATE_VALUE_TOO_LARGE";
/// Sluice's code for a path that names no route.
pub const ERR_NOT_FOUND: &str = "ERR_NOT_FOUND";
/// Sluice's code for a route asked with the wrong method.
pub const ERR_METHOD_NOT_ALLOWED: &str = "ERR_METHOD_NOT_ALLOWED";

/// Which API operation failed: picks Dapr's error code for store failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1.0/state/{store}/{key}`.
    Get,
    /// `POST /v1.0/state/{store}`.
    Save,
    /// `DELETE /v1.0/state/{store}/{key}`.
    Delete,
    /// `POST /v1.0/state/{store}/bulk`.
    BulkGet,
    /// `POST /v1.0/state/{store}/transaction`.
    Transaction,
    /// `POST /v1.0-alpha1/state/{store}/query`.
    Query,
}

impl Operation {
    /// Dapr's error code for a failure of this operation.
    pub fn code(self) -> &'static str {
        match self {
            Operation::Get => "ERR_STATE_GET",
            Operation::Save => "ERR_STATE_SAVE",
            Operation::Delete => "ERR_STATE_DELETE",
            Operation::BulkGet => "ERR_STATE_BULK_GET",
            Operation::Transaction => "ERR_STATE_TRANSACTION",
            Operation::Query => "ERR_STATE_QUERY",
        }
    }
}

/// An error answer: status, Dapr error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Dapr-style error code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    error_code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A request that cannot be understood (400).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ERR_MALFORMED_REQUEST, message)
    }

    /// An unknown store (400, as in Dapr), naming the known ones.
    pub fn store_not_found(name: &str, known: &[&str]) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ERR_STATE_STORE_NOT_FOUND,
            format!(
                "state store {name:?} is not found; the stores are: {}",
                known.join(", ")
            ),
        )
    }

    /// A request body over the limit (413).
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ERR_REQUEST_TOO_LARGE,
            format!(
                "the request body is larger than the limit of {limit} bytes (http.maxBodyBytes)"
            ),
        )
    }

    /// A failure of the store while doing `op`, with the status its cause deserves.
    pub fn from_state(op: Operation, err: &StateError) -> Self {
        let (status, code) = classify(op, err);
        Self::new(status, code, err.to_string())
    }

    /// Adds context before the message.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// Status and code for a store error. Exhaustive on purpose: a new kind of error must be placed
/// deliberately on the 4xx or 5xx side.
fn classify(op: Operation, err: &StateError) -> (StatusCode, &'static str) {
    match err {
        StateError::EmptyKey | StateError::InvalidTtl { .. } | StateError::InvalidRequest(_) => {
            (StatusCode::BAD_REQUEST, ERR_MALFORMED_REQUEST)
        }
        StateError::EtagMismatch { .. } => (StatusCode::CONFLICT, op.code()),
        StateError::EtagInvalid { .. } => (StatusCode::BAD_REQUEST, op.code()),
        StateError::Unsupported { .. } => {
            (StatusCode::NOT_IMPLEMENTED, ERR_STATE_STORE_NOT_SUPPORTED)
        }
        StateError::ValueTooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, ERR_STATE_VALUE_TOO_LARGE)
        }
        StateError::TransactionAborted { source, .. } => {
            let (status, _) = classify(op, source);
            (status, op.code())
        }
        StateError::Backend { .. } => (StatusCode::INTERNAL_SERVER_ERROR, op.code()),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, code = self.code, "{}", self.message);
        }
        let body = ErrorBody {
            error_code: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_never_a_server_error() {
        let bad_input = [
            StateError::EmptyKey,
            StateError::InvalidTtl { value: "x".into() },
            StateError::InvalidRequest("empty prefix".into()),
            StateError::EtagInvalid {
                key: "k".into(),
                etag: "x".into(),
            },
            StateError::ValueTooLarge {
                key: "k".into(),
                size: 10,
                limit: 1,
            },
        ];
        for e in &bad_input {
            let a = ApiError::from_state(Operation::Save, e);
            assert!(a.status.is_client_error(), "{e}: {}", a.status);
        }
    }

    #[test]
    fn etag_errors_map_to_409_and_400_with_the_operation_code() {
        let m = ApiError::from_state(
            Operation::Delete,
            &StateError::EtagMismatch { key: "k".into() },
        );
        assert_eq!(
            (m.status, m.code),
            (StatusCode::CONFLICT, "ERR_STATE_DELETE")
        );
        let aborted = StateError::TransactionAborted {
            index: 1,
            key: "k".into(),
            source: Box::new(StateError::EtagMismatch { key: "k".into() }),
        };
        let t = ApiError::from_state(Operation::Transaction, &aborted);
        assert_eq!(
            (t.status, t.code),
            (StatusCode::CONFLICT, "ERR_STATE_TRANSACTION")
        );
        let b = ApiError::from_state(
            Operation::Save,
            &StateError::backend("redb", "disk on fire"),
        );
        assert_eq!(b.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(b.message.contains("disk on fire"));
    }

    #[test]
    fn unknown_store_lists_the_known_ones() {
        let e = ApiError::store_not_found("nope", &["a", "statestore"]);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, ERR_STATE_STORE_NOT_FOUND);
        assert!(e.message.contains("\"nope\""));
        assert!(e.message.contains("a, statestore"));
    }
}
