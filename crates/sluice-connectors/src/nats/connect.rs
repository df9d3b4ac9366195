//! Connecting to NATS: the first connection is retried with backoff for `connectTimeout`; after
//! that the client reconnects by itself for as long as it lives. Both are reported to the host's
//! [`HealthReporter`]: degraded while retrying or disconnected, healthy once connected.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use sluice_sdk::spec::Violation;
use sluice_sdk::{HealthReporter, ValidationErrors};
use tokio::time::Instant;

use super::config::ConnectConfig;
use super::error::NatsError;
use super::PARAM_URLS;
use crate::backoff::retrying;

/// First pause between connection attempts; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait for one connection attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks that every URL parses as a NATS server address.
pub(crate) fn check_urls(urls: &[String]) -> Result<Vec<ServerAddr>, ValidationErrors> {
    urls.iter()
        .map(|u| {
            u.parse::<ServerAddr>().map_err(|e| {
                ValidationErrors(vec![Violation {
                    parameter: PARAM_URLS.to_string(),
                    message: format!("{u:?} is not a NATS server URL: {e}"),
                }])
            })
        })
        .collect()
}

/// Connects to one of the configured servers, retrying with backoff until `connect_timeout`
/// has passed. `health` is degraded while retrying and whenever the client loses its connection
/// later, healthy while connected.
pub(crate) async fn connect(
    config: &ConnectConfig,
    health: &HealthReporter,
) -> Result<Client, NatsError> {
    let addrs = check_urls(&config.urls).map_err(|e| NatsError::Connect {
        urls: config.urls.join(","),
        waited: Duration::ZERO,
        reason: e.to_string(),
    })?;
    let started = Instant::now();
    let deadline = started + config.connect_timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let options = ConnectOptions::new()
            .name(&config.connection_name)
            .connection_timeout(left.clamp(Duration::from_millis(50), ATTEMPT_TIMEOUT))
            // Reconnect forever once connected: a restarted server must not end the pipeline.
            .max_reconnects(None)
            .event_callback(events(health.clone(), config.urls.join(",")));
        let error = match options.connect(addrs.clone()).await {
            Ok(client) => {
                health.healthy();
                return Ok(client);
            }
            Err(e) => e,
        };
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(NatsError::Connect {
                urls: config.urls.join(","),
                waited: now - started,
                reason: error.to_string(),
            });
        }
        tracing::warn!(
            urls = %config.urls.join(","),
            error = %error,
            retry_in = ?backoff,
            "nats: cannot connect yet; retrying"
        );
        retrying(
            health,
            format!("nats: {}: {error}", config.urls.join(",")),
            backoff,
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The client's event callback: a lost connection degrades `health`, a new one restores it.
fn events(
    health: HealthReporter,
    urls: String,
) -> impl Fn(Event) -> std::future::Ready<()> + Send + Sync + 'static {
    move |event| {
        match event {
            Event::Disconnected => health.degraded(format!(
                "nats: {urls}: disconnected from the server, reconnecting"
            )),
            Event::Connected => health.healthy(),
            _ => {}
        }
        std::future::ready(())
    }
}
