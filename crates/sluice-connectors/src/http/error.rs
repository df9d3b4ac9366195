//! What can go wrong in the HTTP connector, each error naming the connector and, where a setting
//! is to blame, the setting.

use sluice_sdk::ConnectorError;

/// An HTTP connector failure.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// `open` was called before a successful `configure`.
    #[error("http: opened before it was configured")]
    NotConfigured,
    /// The webhook address cannot be listened on.
    #[error("http: cannot listen on {address} (setting `address`): {detail}")]
    Bind {
        /// The address.
        address: String,
        /// The OS error.
        detail: String,
    },
    /// The polled server answered in a way a setting explains.
    #[error("http: {method} {url} answered {status}{hint}: {excerpt}")]
    Refused {
        /// The method.
        method: String,
        /// The URL (without credentials).
        url: String,
        /// The status.
        status: u16,
        /// Which setting to check.
        hint: String,
        /// The start of the answer.
        excerpt: String,
    },
    /// The server could not be reached (or kept failing) within the allowed time or attempts.
    #[error("http: {method} {url} (setting `url`) failed {attempts}: {last}")]
    Unreachable {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// How long or how many times it was tried.
        attempts: String,
        /// The last error.
        last: String,
    },
    /// A polled body could not be decoded.
    #[error("http: the answer of {url} does not fit `format` {format}: {detail}")]
    Body {
        /// The URL.
        url: String,
        /// The format.
        format: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl From<HttpError> for ConnectorError {
    fn from(e: HttpError) -> Self {
        let transient = matches!(e, HttpError::Unreachable { .. });
        ConnectorError::System {
            message: e.to_string(),
            transient,
        }
    }
}

/// The first `max` characters of a body, for error messages.
pub(crate) fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// A URL without user name and password, safe to print.
pub(crate) fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}
