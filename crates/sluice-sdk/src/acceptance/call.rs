//! Calling a connector under test: every call bounded in time (a hung connector fails its check
//! instead of hanging the test), and what sources and destinations have in common for the
//! settings checks.

use std::future::Future;

use async_trait::async_trait;
use tokio::time::timeout;

use crate::connector::{Destination, Result as ConnectorResult, Source};
use crate::spec::Settings;

use super::failure::Check;
use super::read::READ_DEADLINE;

/// Awaits a connector call that must succeed within [`READ_DEADLINE`]; fails the check, saying
/// what was being done, on an error or a hang.
pub(crate) async fn bounded<T>(
    check: &Check,
    doing: &str,
    call: impl Future<Output = ConnectorResult<T>>,
) -> T {
    match timeout(READ_DEADLINE, call).await {
        Ok(result) => check.ok(result, doing),
        Err(_) => check.fail(format!("{doing} did not return within {READ_DEADLINE:?}")),
    }
}

/// Awaits a connector call whose outcome the check inspects itself, failing only on a hang.
pub(crate) async fn settled<T>(
    check: &Check,
    doing: &str,
    call: impl Future<Output = ConnectorResult<T>>,
) -> ConnectorResult<T> {
    match timeout(READ_DEADLINE, call).await {
        Ok(result) => result,
        Err(_) => check.fail(format!("{doing} did not return within {READ_DEADLINE:?}")),
    }
}

/// The calls the settings checks make, on either side of a connector.
#[async_trait]
pub(crate) trait Instance: Send {
    /// `configure`.
    async fn configure(&mut self, settings: &Settings) -> ConnectorResult<()>;
    /// `teardown`.
    async fn teardown(&mut self) -> ConnectorResult<()>;
}

#[async_trait]
impl Instance for Box<dyn Source> {
    async fn configure(&mut self, settings: &Settings) -> ConnectorResult<()> {
        Source::configure(self.as_mut(), settings).await
    }
    async fn teardown(&mut self) -> ConnectorResult<()> {
        Source::teardown(self.as_mut()).await
    }
}

#[async_trait]
impl Instance for Box<dyn Destination> {
    async fn configure(&mut self, settings: &Settings) -> ConnectorResult<()> {
        Destination::configure(self.as_mut(), settings).await
    }
    async fn teardown(&mut self) -> ConnectorResult<()> {
        Destination::teardown(self.as_mut()).await
    }
}
