//! Connecting to Redis: the first connection is retried with backoff for `connectTimeout`; after
//! that the connection manager re-establishes a dropped connection by itself.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo};
use sluice_sdk::{HealthReporter, ValidationErrors};
use tokio::time::Instant;

use super::config::{violation, ConnectConfig};
use super::error::RedisError;
use super::PARAM_URL;
use crate::backoff::retrying;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait for a reply; above the source's `BLOCK` time.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the configured server (checks the URL or the separate settings).
pub(crate) fn client(config: &ConnectConfig) -> Result<Client, ValidationErrors> {
    let info = match &config.url {
        Some(url) => url
            .as_str()
            .into_connection_info()
            .map_err(|e| violation(PARAM_URL, &format!("is not a Redis URL: {e}")))?,
        None => {
            let base = format!(
                "redis://{}:{}/{}",
                config.host, config.port, config.database
            )
            .as_str()
            .into_connection_info()
            .map_err(|e| violation(super::PARAM_HOST, &format!("is not a host: {e}")))?;
            let mut redis = base.redis_settings().clone();
            if let Some(user) = &config.username {
                redis = redis.set_username(user);
            }
            if let Some(password) = &config.password {
                redis = redis.set_password(password);
            }
            base.set_redis_settings(redis)
        }
    };
    Client::open(info).map_err(|e| violation(PARAM_URL, &e.to_string()))
}

/// Where a client connects, without credentials, for messages.
pub(crate) fn address(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// Connects, retrying with backoff until `connect_timeout` has passed (`health` degraded
/// meanwhile, healthy once connected).
pub(crate) async fn connect(
    client: &Client,
    config: &ConnectConfig,
    health: &HealthReporter,
) -> Result<ConnectionManager, RedisError> {
    let started = Instant::now();
    let deadline = started + config.connect_timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(left.clamp(Duration::from_millis(50), MAX_BACKOFF * 2)))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF);
        let error = match ConnectionManager::new_with_config(client.clone(), manager_config).await {
            Ok(manager) => {
                health.healthy();
                return Ok(manager);
            }
            Err(e) => e,
        };
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(RedisError::Connect {
                address: address(client),
                waited: now - started,
                reason: error.to_string(),
            });
        }
        tracing::warn!(address = %address(client), error = %error, retry_in = ?backoff, "redis: cannot connect yet; retrying");
        retrying(
            health,
            format!("redis: {}: {error}", address(client)),
            backoff,
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
