//! Exponential backoff bounded by a deadline, for reconnecting to a broker or retrying a request,
//! and the health report every retry makes ([`Backoff::wait_degraded`], [`retrying`]).

use std::fmt::Display;
use std::time::Duration;

use sluice_sdk::HealthReporter;
use tokio::time::{sleep, Instant};

/// Marks `health` degraded because of `error` and says when the next attempt comes: the reason
/// reads `<error>, retrying in <pause>` (the error should name the connector, e.g. `nats: ...`).
#[cfg_attr(
    not(any(
        feature = "nats",
        feature = "redis",
        feature = "postgres",
        feature = "http"
    )),
    allow(dead_code)
)]
pub(crate) fn retrying(health: &HealthReporter, error: impl Display, pause: Duration) {
    health.degraded(format!(
        "{error}, retrying in {}",
        humantime::format_duration(round_ms(pause))
    ));
}

/// A pause rounded to whole milliseconds, for messages.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// First pause between attempts.
const FIRST: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const MAX: Duration = Duration::from_secs(5);

/// Pauses that double from 100 ms up to 5 s, until a deadline.
#[derive(Debug)]
#[cfg_attr(
    not(any(feature = "amqp", feature = "mqtt", feature = "http")),
    allow(dead_code)
)]
pub(crate) struct Backoff {
    next: Duration,
    deadline: Instant,
}

#[cfg_attr(
    not(any(feature = "amqp", feature = "mqtt", feature = "http")),
    allow(dead_code)
)]
impl Backoff {
    /// Attempts may go on for `limit` from now.
    pub(crate) fn new(limit: Duration) -> Self {
        Backoff {
            next: FIRST,
            deadline: Instant::now() + limit,
        }
    }

    /// Sleeps before the next attempt; false (without sleeping) once the deadline has passed.
    pub(crate) async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        sleep(self.next.min(self.deadline - now)).await;
        self.next = (self.next * 2).min(MAX);
        true
    }

    /// Like [`Backoff::wait`], and first marks `health` degraded because of `error` (see
    /// [`retrying`]). Once the deadline has passed it returns false and the connector stays
    /// degraded: the caller fails.
    pub(crate) async fn wait_degraded(
        &mut self,
        health: &HealthReporter,
        error: impl Display,
    ) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            health.degraded(format!("{error}, giving up"));
            return false;
        }
        retrying(health, error, self.next.min(self.deadline - now));
        self.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_until_the_deadline() {
        let start = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(1000));
        let mut waits = 0;
        while b.wait().await {
            waits += 1;
        }
        // 100 + 200 + 400 + 300 (cut at the deadline).
        assert_eq!(waits, 4);
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn reports_degraded_with_the_next_pause() {
        let health = HealthReporter::new("test");
        let mut b = Backoff::new(Duration::from_millis(250));
        assert!(b.wait_degraded(&health, "mqtt: connection refused").await);
        assert_eq!(
            health.status(),
            sluice_sdk::Health::Degraded("mqtt: connection refused, retrying in 100ms".into())
        );
        assert!(b.wait_degraded(&health, "mqtt: connection refused").await);
        assert_eq!(
            health.status(),
            sluice_sdk::Health::Degraded("mqtt: connection refused, retrying in 150ms".into())
        );
        assert!(!b.wait_degraded(&health, "mqtt: connection refused").await);
        assert!(health.is_degraded());
        health.healthy();
        assert!(!health.is_degraded());
    }
}
