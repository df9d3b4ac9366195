//! Talking to a running `sluice serve` from the command line (`sluice flows`, `sluice
//! pipelines`): what can go wrong, and turning an answer into success or that error.

use serde_json::Value;

/// A request to a running server that failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The server could not be reached or answered garbage.
    #[error("cannot talk to {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an error.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
}

impl RemoteError {
    /// `url` could not be reached, or its answer could not be used.
    pub fn http(url: &str, message: impl ToString) -> Self {
        RemoteError::Http {
            url: url.to_string(),
            message: message.to_string(),
        }
    }
}

/// A 2xx answer, or the error it stands for: the `message` of a JSON error body when there is
/// one, else the body's text.
pub async fn expect_success(
    url: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<reqwest::Response, RemoteError> {
    let response = sent.map_err(|e| RemoteError::http(url, e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(RemoteError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        message,
    })
}
