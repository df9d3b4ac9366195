//! Exponential backoff between reconnect attempts, reporting the connector's health: degraded
//! while retrying, healthy again on [`Backoff::reset`] (called after the first success).

use std::fmt::Display;
use std::time::Duration;

use sluice_sdk::HealthReporter;

/// The first pause.
const FIRST: Duration = Duration::from_millis(100);
/// The longest pause.
const MAX: Duration = Duration::from_secs(5);

/// Pauses that double from 100 ms up to 5 s, reset after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    attempts: u32,
    health: HealthReporter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A backoff at its first pause.
    pub fn new() -> Self {
        Self::reporting(HealthReporter::default())
    }

    /// A backoff at its first pause that reports retries to `health`.
    pub fn reporting(health: HealthReporter) -> Self {
        Backoff {
            next: FIRST,
            attempts: 0,
            health,
        }
    }

    /// Marks the connector degraded because of `error` (which names the connector), then waits
    /// like [`Backoff::wait`].
    pub async fn wait_degraded(&mut self, error: impl Display) {
        crate::backoff::retrying(&self.health, error, self.next);
        self.wait().await;
    }

    /// The pause the next [`wait`](Self::wait) sleeps.
    #[cfg(test)]
    pub fn next_delay(&self) -> Duration {
        self.next
    }

    /// How many waits since the last reset.
    #[cfg(test)]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Sleeps the current pause and doubles the next.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.attempts += 1;
        self.next = (self.next * 2).min(MAX);
    }

    /// Back to the first pause, and the connector is healthy again.
    pub fn reset(&mut self) {
        self.health.healthy();
        self.next = FIRST;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(b.next_delay());
            b.wait().await;
        }
        assert_eq!(seen[0], Duration::from_millis(100));
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(*seen.last().expect("some"), MAX);
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert_eq!(b.next_delay(), FIRST);
    }
}
