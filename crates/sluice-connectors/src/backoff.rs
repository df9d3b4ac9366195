//! Exponential backoff bounded by a deadline, for reconnecting to a broker or retrying a request.

use std::time::Duration;

use tokio::time::{sleep, Instant};

/// First pause between attempts.
const FIRST: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const MAX: Duration = Duration::from_secs(5);

/// Pauses that double from 100 ms up to 5 s, until a deadline.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    deadline: Instant,
}

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
}
