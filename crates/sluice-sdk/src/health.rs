//! Connector health: how a connector tells its host that it is retrying an unreachable service.
//!
//! The host hands each connector a [`HealthReporter`] (through [`Source::set_health`] or
//! [`Destination::set_health`], before `open`). A connector whose retry loop hits an error calls
//! [`HealthReporter::degraded`] with a reason naming itself and the error, and
//! [`HealthReporter::healthy`] after the first success; the host reads [`HealthReporter::status`]
//! to show the pipeline as degraded and back. Reporting costs one atomic load when nothing changes,
//! so a connector may call `healthy` on every successful call. Transitions are logged (a warning
//! when degraded, an info line when recovered). A connector that never reports stays healthy.
//!
//! [`Source::set_health`]: crate::Source::set_health
//! [`Destination::set_health`]: crate::Destination::set_health

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A connector's health as last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Working normally (or never reported otherwise).
    Healthy,
    /// Retrying a failing service; the reason names the connector and the error.
    Degraded(String),
}

/// Shared state behind every clone of a reporter.
#[derive(Debug)]
struct Inner {
    /// Who reports, for log lines (the host sets it: pipeline and connector id).
    name: String,
    /// True while degraded: read without locking on the hot path.
    degraded: AtomicBool,
    /// The reason of the current degradation.
    reason: Mutex<String>,
}

/// A cheap-to-clone handle through which a connector reports its health to the host.
///
/// Every clone shares one state. [`HealthReporter::default`] is a detached reporter: connectors
/// can hold one before the host hands them theirs, and reports to it are simply kept.
#[derive(Clone, Debug)]
pub struct HealthReporter {
    inner: Arc<Inner>,
}

impl Default for HealthReporter {
    fn default() -> Self {
        HealthReporter::new("connector")
    }
}

impl HealthReporter {
    /// A healthy reporter; `name` identifies the connector in log lines.
    pub fn new(name: impl Into<String>) -> Self {
        HealthReporter {
            inner: Arc::new(Inner {
                name: name.into(),
                degraded: AtomicBool::new(false),
                reason: Mutex::new(String::new()),
            }),
        }
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Marks the connector degraded for `reason` (which should name the connector and the error,
    /// e.g. `nats: connection refused, retrying in 800ms`). Logs a warning on the transition from
    /// healthy; while already degraded it only updates the reason.
    pub fn degraded(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut current = lock(&self.inner.reason);
        let was = self.inner.degraded.swap(true, Ordering::AcqRel);
        if !was {
            tracing::warn!(connector = %self.inner.name, reason = %reason, "connector degraded");
        } else {
            tracing::debug!(connector = %self.inner.name, reason = %reason, "connector still degraded");
        }
        *current = reason;
    }

    /// Marks the connector healthy again. Logs on the transition from degraded; otherwise costs
    /// one atomic load.
    pub fn healthy(&self) {
        if !self.inner.degraded.load(Ordering::Acquire) {
            return;
        }
        let mut current = lock(&self.inner.reason);
        if self.inner.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!(connector = %self.inner.name, after = %current, "connector recovered");
        }
        current.clear();
    }

    /// True while degraded.
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Acquire)
    }

    /// The health now.
    pub fn status(&self) -> Health {
        if !self.is_degraded() {
            return Health::Healthy;
        }
        let reason = lock(&self.inner.reason);
        // Re-check under the lock: `healthy` clears the flag while holding it.
        if self.inner.degraded.load(Ordering::Acquire) {
            Health::Degraded(reason.clone())
        } else {
            Health::Healthy
        }
    }
}

/// Locks the reason; a poisoned lock still holds a valid string.
fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_between_healthy_and_degraded_across_clones() {
        let r = HealthReporter::new("p/src");
        let c = r.clone();
        assert_eq!(r.status(), Health::Healthy);
        c.degraded("nats: connection refused, retrying in 100ms");
        assert!(r.is_degraded());
        c.degraded("nats: connection refused, retrying in 200ms");
        assert_eq!(
            r.status(),
            Health::Degraded("nats: connection refused, retrying in 200ms".into())
        );
        c.healthy();
        assert_eq!(r.status(), Health::Healthy);
        c.healthy();
        assert_eq!(r.status(), Health::Healthy);
        assert_eq!(r.name(), "p/src");
    }
}
