//! Progress reported by a helper instance, and its mapping onto the connector [`Progress`].

use crate::connector::{Progress, ProgressUnit};

/// What a [`Progress`] built from a fraction counts out of: `done` is the fraction in parts per
/// million, `total` is always `Some(PROGRESS_SCALE)`.
pub const PROGRESS_SCALE: u64 = 1_000_000;

/// A progress callback's answer: how far the stream has got, as a fraction, and a text to show.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressReport {
    /// From 0 (nothing done) to 1 (all done); values outside are clamped when mapped.
    pub fraction: f64,
    /// Free text for display, e.g. "file 3 of 7".
    pub text: String,
}

impl ProgressReport {
    /// The report as a connector [`Progress`]: the fraction in parts per million,
    /// `done = fraction × 1 000 000` out of `total = Some(1 000 000)`, so `done / total` is the
    /// fraction again whatever displays it. The callback says nothing about what it counts, so
    /// the unit is nominally [`ProgressUnit::Records`]; read it as a ratio. `None` for a NaN
    /// fraction (nothing sensible to show).
    pub fn to_progress(&self) -> Option<Progress> {
        if self.fraction.is_nan() {
            return None;
        }
        let fraction = self.fraction.clamp(0.0, 1.0);
        // In range [0, 1_000_000] after clamping, so the cast cannot truncate.
        let done = (fraction * PROGRESS_SCALE as f64).round() as u64;
        Some(Progress {
            done,
            total: Some(PROGRESS_SCALE),
            unit: ProgressUnit::Records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(fraction: f64) -> ProgressReport {
        ProgressReport {
            fraction,
            text: String::new(),
        }
    }

    #[test]
    fn fraction_maps_to_parts_per_million() {
        let p = report(0.25).to_progress().unwrap();
        assert_eq!(p.done, 250_000);
        assert_eq!(p.total, Some(PROGRESS_SCALE));
    }

    #[test]
    fn out_of_range_fractions_are_clamped_and_nan_is_none() {
        assert_eq!(report(-3.0).to_progress().unwrap().done, 0);
        assert_eq!(report(7.5).to_progress().unwrap().done, PROGRESS_SCALE);
        assert_eq!(report(f64::NAN).to_progress(), None);
    }
}
