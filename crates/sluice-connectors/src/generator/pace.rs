//! Pacing: how many records the generator may produce now, under a rate limit and bursts, and
//! when to look again. Pure arithmetic on instants — the caller sleeps, so nothing busy-waits.

use std::time::Duration;

use tokio::time::Instant;

/// How late a consumer may be before the records it missed are forgiven rather than made up.
pub const CATCH_UP: Duration = Duration::from_millis(50);

/// What the generator may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowance {
    /// Produce this many records (at least one).
    Now(usize),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
}

/// Rate limit and burst schedule of one open generator.
#[derive(Clone, Debug)]
pub struct Pace {
    rate: Option<f64>,
    burst: Option<(Duration, Duration)>,
    origin: Instant,
    base: Instant,
    emitted: u64,
}

impl Pace {
    /// A schedule starting at `now`: `rate` records per second at most (none: unlimited), and,
    /// with `burst` = (generate, sleep), records only during the first `generate` of every
    /// `generate + sleep`.
    pub fn new(rate: Option<f64>, burst: Option<(Duration, Duration)>, now: Instant) -> Self {
        Pace {
            rate: rate.filter(|r| r.is_finite() && *r > 0.0),
            burst: burst.filter(|(g, s)| !g.is_zero() && !s.is_zero()),
            origin: now,
            base: now,
            emitted: 0,
        }
    }

    /// How many of `want` records may be produced at `now`. Records the schedule owes from a
    /// slow consumer or a burst pause are made up only within [`CATCH_UP`]; beyond that they are
    /// forgiven, so the rate is a ceiling, never a sprint.
    pub fn allowance(&mut self, now: Instant, want: usize) -> Allowance {
        if want == 0 {
            return Allowance::Now(0);
        }
        if let Some((generate, sleep)) = self.burst {
            let cycle = generate + sleep;
            let into = nanos(now.saturating_duration_since(self.origin)) % nanos(cycle);
            if into >= nanos(generate) {
                let wake = now + Duration::from_nanos((nanos(cycle) - into) as u64);
                return Allowance::WaitUntil(wake);
            }
        }
        let Some(rate) = self.rate else {
            return Allowance::Now(want);
        };
        let elapsed = now.saturating_duration_since(self.base).as_secs_f64();
        // A hair of slack so rounding never leaves a record undue at the instant it was due.
        let due = (elapsed * rate + 1e-6).floor() as u64 + 1;
        let available = due.saturating_sub(self.emitted);
        if available == 0 {
            let at = self.base + Duration::from_secs_f64(self.emitted as f64 / rate);
            return Allowance::WaitUntil(at.max(now));
        }
        // Owed records beyond a little slack (timer lateness) are forgiven: start afresh.
        let slack = (rate * CATCH_UP.as_secs_f64()).ceil().max(1.0) as u64;
        if available > slack {
            self.base = now;
            self.emitted = 0;
            return Allowance::Now(1);
        }
        Allowance::Now(available.min(want as u64) as usize)
    }

    /// Records that `n` records were produced.
    pub fn produced(&mut self, n: usize) {
        self.emitted += n as u64;
    }
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn unlimited_allows_everything() {
        let t = Instant::now();
        let mut p = Pace::new(None, None, t);
        assert_eq!(p.allowance(t, 1024), Allowance::Now(1024));
    }

    #[test]
    fn a_rate_spaces_records_out() {
        let t = Instant::now();
        let mut p = Pace::new(Some(8.0), None, t);
        assert_eq!(p.allowance(t, 100), Allowance::Now(1));
        p.produced(1);
        assert_eq!(
            p.allowance(at(t, 50), 100),
            Allowance::WaitUntil(at(t, 125))
        );
        assert_eq!(p.allowance(at(t, 125), 100), Allowance::Now(1));
        p.produced(1);
        assert_eq!(
            p.allowance(at(t, 200), 100),
            Allowance::WaitUntil(at(t, 250))
        );
    }

    #[test]
    fn a_little_lateness_is_made_up() {
        let t = Instant::now();
        let mut p = Pace::new(Some(100.0), None, t);
        p.produced(1);
        // Records 2..=4 were due at 10, 20 and 30 ms; 5 ms of slack allow catching up.
        assert_eq!(p.allowance(at(t, 32), 100), Allowance::Now(3));
        assert_eq!(p.allowance(at(t, 32), 2), Allowance::Now(2));
    }

    #[test]
    fn a_long_pause_is_forgiven() {
        let t = Instant::now();
        let mut p = Pace::new(Some(100.0), None, t);
        p.produced(1);
        assert_eq!(p.allowance(at(t, 10_000), 1024), Allowance::Now(1));
        p.produced(1);
        assert_eq!(
            p.allowance(at(t, 10_000), 1024),
            Allowance::WaitUntil(at(t, 10_010))
        );
    }

    #[test]
    fn bursts_alternate_generating_and_sleeping() {
        let t = Instant::now();
        let burst = Some((Duration::from_millis(100), Duration::from_millis(400)));
        let mut p = Pace::new(None, burst, t);
        assert_eq!(p.allowance(at(t, 99), 5), Allowance::Now(5));
        assert_eq!(p.allowance(at(t, 100), 5), Allowance::WaitUntil(at(t, 500)));
        assert_eq!(p.allowance(at(t, 499), 5), Allowance::WaitUntil(at(t, 500)));
        assert_eq!(p.allowance(at(t, 500), 5), Allowance::Now(5));
    }
}
