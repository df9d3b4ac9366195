//! The nack window: stop a pipeline when too many of the most recent records were nacked.

use std::collections::VecDeque;

/// Watches the last `size` acks and nacks and says when nacks exceed the threshold.
#[derive(Debug)]
pub struct NackWindow {
    size: usize,
    threshold: usize,
    /// Sequence numbers (in record results) of the nacks still inside the window.
    nacks: VecDeque<u64>,
    /// How many results have been recorded.
    seen: u64,
}

impl NackWindow {
    /// A window over the last `size` results allowing `threshold` nacks; size 0 disables it.
    pub fn new(size: usize, threshold: usize) -> Self {
        NackWindow {
            size,
            threshold,
            nacks: VecDeque::new(),
            seen: 0,
        }
    }

    /// Records `n` acks.
    pub fn acks(&mut self, n: u64) {
        self.seen += n;
    }

    /// Records one nack; returns false if the window now holds more nacks than allowed.
    pub fn nack(&mut self) -> bool {
        self.seen += 1;
        if self.size == 0 {
            return true;
        }
        let oldest_inside = self.seen.saturating_sub(self.size as u64);
        while self.nacks.front().is_some_and(|&s| s < oldest_inside) {
            self.nacks.pop_front();
        }
        self.nacks.push_back(self.seen - 1);
        self.nacks.len() <= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conduit_defaults_stop_on_first_nack() {
        let mut w = NackWindow::new(1, 0);
        w.acks(100);
        assert!(!w.nack());
    }

    #[test]
    fn disabled_window_never_stops() {
        let mut w = NackWindow::new(0, 0);
        for _ in 0..1000 {
            assert!(w.nack());
        }
    }

    #[test]
    fn nacks_leave_the_window_as_acks_arrive() {
        let mut w = NackWindow::new(3, 1);
        assert!(w.nack()); // [n]
        w.acks(2); // [n a a]
        assert!(w.nack()); // [a a n]: the first nack slid out
        assert!(!w.nack()); // [a n n]
    }

    #[test]
    fn threshold_counts_nacks_inside_the_window() {
        let mut w = NackWindow::new(10, 2);
        assert!(w.nack());
        assert!(w.nack());
        assert!(!w.nack());
    }
}
