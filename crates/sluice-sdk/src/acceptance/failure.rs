//! How a failed acceptance check reports itself: a panic naming the check and the connector, so a
//! failing `#[tokio::test]` says at once what broke and where.

use std::fmt::Display;

/// One running check of one connector. Its failures panic with both names.
#[derive(Clone, Debug)]
pub(crate) struct Check {
    connector: String,
    name: &'static str,
}

impl Check {
    /// A check called `name` of the connector called `connector`.
    pub(crate) fn new(connector: &str, name: &'static str) -> Self {
        Check {
            connector: connector.to_string(),
            name,
        }
    }

    /// The check's name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Fails the check.
    #[track_caller]
    pub(crate) fn fail(&self, message: impl Display) -> ! {
        panic!(
            "acceptance check `{}` failed for connector `{}`: {}",
            self.name, self.connector, message
        )
    }

    /// Fails the check with `message()` unless `condition` holds.
    #[track_caller]
    pub(crate) fn ensure(&self, condition: bool, message: impl FnOnce() -> String) {
        if !condition {
            self.fail(message())
        }
    }

    /// The value of a connector call that must succeed; fails the check, saying what was being
    /// done, if it returned an error.
    #[track_caller]
    pub(crate) fn ok<T, E: Display>(&self, result: Result<T, E>, doing: &str) -> T {
        match result {
            Ok(v) => v,
            Err(e) => self.fail(format!("{doing} failed: {e}")),
        }
    }
}

/// Shortens bytes to a readable excerpt for failure messages.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        format!("{text:?}… ({} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
}
