//! Retries of transient backend failures (Dapr's retry policy: interval, threshold, pattern),
//! for one call ([`with_retry`]) or for every call to a store ([`RetryingStore`]).
//!
//! Only failures that may pass are retried: [`StateError::is_transient`] backend errors, and a
//! transaction aborted by one. An ETag mismatch, a bad request or a permanent failure is returned
//! at once.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StateError;
use crate::query::{Query, QueryResponse};
use crate::store::{DeleteRequest, Features, Item, KeyPage, Page, SetRequest, Store, TxOperation};

/// How the wait between attempts grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryPattern {
    /// The same interval before every retry.
    #[default]
    Linear,
    /// The interval doubles after every retry.
    Exponential,
}

/// A pattern name that is neither `linear` nor `exponential`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown retry pattern {0:?}: expected \"linear\" or \"exponential\"")]
pub struct UnknownPattern(pub String);

impl FromStr for RetryPattern {
    type Err = UnknownPattern;

    /// Reads Dapr's names, `linear` and `exponential` (in any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("linear") {
            Ok(RetryPattern::Linear)
        } else if s.eq_ignore_ascii_case("exponential") {
            Ok(RetryPattern::Exponential)
        } else {
            Err(UnknownPattern(s.to_string()))
        }
    }
}

/// The longest wait between two attempts, whatever the pattern; keeps an exponential policy with
/// many attempts from sleeping for days.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// How to retry transient failures (Dapr's `retryPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub interval: Duration,
    /// The most attempts in all, the first included (0 and 1 both mean: no retry).
    pub threshold: u32,
    /// How the wait grows.
    pub pattern: RetryPattern,
}

impl Default for RetryPolicy {
    /// No retry: one attempt.
    fn default() -> Self {
        RetryPolicy::none()
    }
}

impl RetryPolicy {
    /// A policy of `threshold` attempts in all, waiting `interval` (growing by `pattern`) between
    /// them.
    pub fn new(interval: Duration, threshold: u32, pattern: RetryPattern) -> Self {
        RetryPolicy {
            interval,
            threshold,
            pattern,
        }
    }

    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryPolicy::new(Duration::ZERO, 1, RetryPattern::Linear)
    }

    /// The wait after failed attempt number `attempt` (1 for the first), at most
    /// [`MAX_RETRY_WAIT`].
    pub fn wait_after(&self, attempt: u32) -> Duration {
        let wait = match self.pattern {
            RetryPattern::Linear => self.interval,
            RetryPattern::Exponential => {
                let doublings = attempt.saturating_sub(1).min(31);
                self.interval.saturating_mul(1 << doublings)
            }
        };
        wait.min(MAX_RETRY_WAIT)
    }

    /// True if failed attempt number `attempt` (1 for the first) may be followed by another.
    fn may_retry(&self, attempt: u32) -> bool {
        attempt < self.threshold
    }
}

/// True if `err` may pass on a retry: a transient backend error, or a transaction aborted by one.
pub fn is_retryable(err: &StateError) -> bool {
    match err {
        StateError::TransactionAborted { source, .. } => is_retryable(source),
        other => other.is_transient(),
    }
}

/// Runs `f` until it succeeds, fails with an error that is not [retryable](is_retryable), or
/// `policy.threshold` attempts were made; waits between attempts as the policy says. Dropping the
/// returned future stops the retries.
pub async fn with_retry<T, F, Fut>(policy: RetryPolicy, mut f: F) -> Result<T, StateError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StateError>>,
{
    let mut attempt = 1u32;
    loop {
        match f().await {
            Err(e) if is_retryable(&e) && policy.may_retry(attempt) => {
                let wait = policy.wait_after(attempt);
                tracing::debug!(attempt, ?wait, "transient store failure, retrying: {e}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A store that retries every operation of `inner` by one policy.
///
/// Bulk calls retry only the requests whose own result failed retryably, as a smaller bulk call,
/// and only while no later request of the same batch wrote or deleted the same key (retrying it
/// then would undo the later one). A retried write that had in fact been applied (its answer was
/// lost) meets its own ETag change: a conditional retry then reports a mismatch, as any lost
/// answer would.
pub struct RetryingStore<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S: Store> RetryingStore<S> {
    /// Wraps `inner`, retrying by `policy`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryingStore { inner, policy }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Runs a bulk call with retries of its retryable per-request failures: `call` runs on the
    /// requests still to do and returns one result per request. `writes` names the key a request
    /// changes (`None` for reads), to keep a retry from undoing a later request of the batch.
    async fn bulk<R, T, C, Fut>(
        &self,
        reqs: Vec<R>,
        writes: fn(&R) -> Option<&str>,
        call: C,
    ) -> Vec<Result<T, StateError>>
    where
        R: Clone,
        C: Fn(Vec<R>) -> Fut,
        Fut: Future<Output = Vec<Result<T, StateError>>>,
    {
        let mut results: Vec<Option<Result<T, StateError>>> =
            (0..reqs.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..reqs.len()).collect();
        let mut attempt = 1u32;
        while !pending.is_empty() {
            let batch: Vec<R> = pending.iter().map(|&i| reqs[i].clone()).collect();
            let mut answers = call(batch).await.into_iter();
            for &i in &pending {
                results[i] = Some(answers.next().unwrap_or_else(|| {
                    Err(StateError::backend(
                        self.inner.name(),
                        "a bulk call returned fewer results than requests",
                    ))
                }));
            }
            let superseded = |i: usize| {
                writes(&reqs[i]).is_some_and(|key| {
                    (i + 1..reqs.len())
                        .any(|j| matches!(results[j], Some(Ok(_))) && writes(&reqs[j]) == Some(key))
                })
            };
            let again: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&i| matches!(&results[i], Some(Err(e)) if is_retryable(e)))
                .filter(|&i| !superseded(i))
                .collect();
            if again.is_empty() || !self.policy.may_retry(attempt) {
                break;
            }
            let wait = self.policy.wait_after(attempt);
            tracing::debug!(
                attempt,
                ?wait,
                failed = again.len(),
                "transient bulk failures, retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
            pending = again;
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StateError::backend(self.inner.name(), "no result"))))
            .collect()
    }
}

#[async_trait]
impl<S: Store> Store for RetryingStore<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        with_retry(self.policy, || self.inner.get(key)).await
    }

    async fn set(&self, req: SetRequest) -> Result<String, StateError> {
        with_retry(self.policy, || self.inner.set(req.clone())).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        with_retry(self.policy, || self.inner.delete(req.clone())).await
    }

    async fn set_many(&self, reqs: Vec<SetRequest>) -> Vec<Result<String, StateError>> {
        self.bulk(
            reqs,
            |r| Some(r.key.as_str()),
            |batch| self.inner.set_many(batch),
        )
        .await
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StateError>> {
        // Reads change nothing, so no read supersedes another.
        self.bulk(
            keys.to_vec(),
            |_| None,
            |batch| async move { self.inner.bulk_get(&batch).await },
        )
        .await
    }

    async fn delete_many(&self, reqs: Vec<DeleteRequest>) -> Vec<Result<(), StateError>> {
        self.bulk(
            reqs,
            |r| Some(r.key.as_str()),
            |batch| self.inner.delete_many(batch),
        )
        .await
    }

    async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
        with_retry(self.policy, || self.inner.multi(ops.clone())).await
    }

    async fn delete_with_prefix(&self, prefix: &str) -> Result<u64, StateError> {
        with_retry(self.policy, || self.inner.delete_with_prefix(prefix)).await
    }

    async fn keys(&self, pattern: &str, page: Page) -> Result<KeyPage, StateError> {
        with_retry(self.policy, || self.inner.keys(pattern, page.clone())).await
    }

    async fn query(&self, q: &Query) -> Result<QueryResponse, StateError> {
        with_retry(self.policy, || self.inner.query(q)).await
    }

    fn change_feed(&self) -> Option<std::sync::Arc<dyn crate::watch::ChangeFeed>> {
        self.inner.change_feed()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::MemoryStore;

    fn transient() -> StateError {
        StateError::Backend {
            backend: "flaky",
            message: "connection reset".into(),
            transient: true,
        }
    }

    fn quick(threshold: u32) -> RetryPolicy {
        RetryPolicy::new(Duration::from_millis(1), threshold, RetryPattern::Linear)
    }

    #[test]
    fn patterns_parse_from_dapr_names() {
        assert_eq!("linear".parse(), Ok(RetryPattern::Linear));
        assert_eq!("Exponential".parse(), Ok(RetryPattern::Exponential));
        let err = "fibonacci".parse::<RetryPattern>().unwrap_err();
        assert!(err.to_string().contains("\"fibonacci\""), "{err}");
    }

    #[test]
    fn waits_grow_by_pattern_and_are_capped() {
        let ms = Duration::from_millis;
        let linear = RetryPolicy::new(ms(100), 5, RetryPattern::Linear);
        assert_eq!(
            (1..=4).map(|a| linear.wait_after(a)).collect::<Vec<_>>(),
            [ms(100); 4]
        );
        let exp = RetryPolicy::new(ms(100), 5, RetryPattern::Exponential);
        assert_eq!(
            (1..=4).map(|a| exp.wait_after(a)).collect::<Vec<_>>(),
            [ms(100), ms(200), ms(400), ms(800)]
        );
        assert_eq!(exp.wait_after(u32::MAX), MAX_RETRY_WAIT);
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(is_retryable(&transient()));
        assert!(is_retryable(&StateError::TransactionAborted {
            index: 0,
            key: "k".into(),
            source: Box::new(transient()),
        }));
        assert!(!is_retryable(&StateError::backend("x", "disk full")));
        assert!(!is_retryable(&StateError::EtagMismatch { key: "k".into() }));
        assert!(!is_retryable(&StateError::TransactionAborted {
            index: 0,
            key: "k".into(),
            source: Box::new(StateError::EtagMismatch { key: "k".into() }),
        }));
    }

    #[tokio::test]
    async fn with_retry_stops_at_success_threshold_or_a_permanent_error() {
        let calls = AtomicU32::new(0);
        let fails_twice = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(transient())
                } else {
                    Ok(n)
                }
            }
        };
        assert_eq!(with_retry(quick(3), fails_twice).await.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let always = || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(transient()) }
        };
        assert!(with_retry(quick(4), always)
            .await
            .unwrap_err()
            .is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        for threshold in [0, 1] {
            calls.store(0, Ordering::SeqCst);
            let _ = with_retry(quick(threshold), always).await;
            assert_eq!(calls.load(Ordering::SeqCst), 1, "threshold {threshold}");
        }

        calls.store(0, Ordering::SeqCst);
        let permanent = || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(StateError::EtagMismatch { key: "k".into() }) }
        };
        assert!(matches!(
            with_retry(quick(5), permanent).await,
            Err(StateError::EtagMismatch { .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A memory store whose every operation fails transiently a set number of times per key
    /// (per operation name for calls without a key) before it goes through.
    struct Flaky {
        inner: MemoryStore,
        failures: u32,
        seen: Mutex<HashMap<String, u32>>,
    }

    impl Flaky {
        fn new(failures: u32) -> Self {
            Flaky {
                inner: MemoryStore::new(),
                failures,
                seen: Mutex::new(HashMap::new()),
            }
        }

        /// Fails if `what` has not failed `failures` times yet.
        fn trip(&self, what: &str) -> Result<(), StateError> {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(what.to_string()).or_default();
            if *n < self.failures {
                *n += 1;
                Err(transient())
            } else {
                Ok(())
            }
        }

        fn attempts(&self, what: &str) -> u32 {
            self.seen.lock().unwrap().get(what).copied().unwrap_or(0)
        }
    }

    #[async_trait]
    impl Store for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn features(&self) -> Features {
            self.inner.features()
        }
        async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
            self.trip(&format!("get {key}"))?;
            self.inner.get(key).await
        }
        async fn set(&self, req: SetRequest) -> Result<String, StateError> {
            self.trip(&format!("set {}", req.key))?;
            self.inner.set(req).await
        }
        async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
            self.trip(&format!("delete {}", req.key))?;
            self.inner.delete(req).await
        }
        async fn multi(&self, ops: Vec<TxOperation>) -> Result<(), StateError> {
            self.trip("multi")
                .map_err(|e| StateError::TransactionAborted {
                    index: 0,
                    key: ops.first().map(|o| o.key().to_string()).unwrap_or_default(),
                    source: Box::new(e),
                })?;
            self.inner.multi(ops).await
        }
        async fn delete_with_prefix(&self, prefix: &str) -> Result<u64, StateError> {
            self.trip("delete_with_prefix")?;
            self.inner.delete_with_prefix(prefix).await
        }
        async fn keys(&self, pattern: &str, page: Page) -> Result<KeyPage, StateError> {
            self.trip("keys")?;
            self.inner.keys(pattern, page).await
        }
        async fn query(&self, q: &Query) -> Result<QueryResponse, StateError> {
            self.trip("query")?;
            self.inner.query(q).await
        }
    }

    #[tokio::test]
    async fn a_retrying_store_rides_out_transient_failures_of_every_operation() {
        let store = RetryingStore::new(Flaky::new(2), quick(3));
        store
            .set(SetRequest::new("a||1", "{\"n\":1}"))
            .await
            .unwrap();
        assert_eq!(store.inner().attempts("set a||1"), 2);
        let item = store.get("a||1").await.unwrap().unwrap();
        assert_eq!(item.value.as_ref(), b"{\"n\":1}");
        let results = store
            .set_many(vec![
                SetRequest::new("a||2", "2"),
                SetRequest::new("a||3", "3"),
            ])
            .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let got = store
            .bulk_get(&["a||2".to_string(), "a||3".to_string()])
            .await;
        assert!(got.iter().all(|r| matches!(r, Ok(Some(_)))), "{got:?}");
        store
            .multi(vec![TxOperation::Upsert(SetRequest::new("a||4", "4"))])
            .await
            .unwrap();
        assert_eq!(store.inner().attempts("multi"), 2);
        let page = store.keys("a||%", Page::default()).await.unwrap();
        assert_eq!(page.keys, ["a||1", "a||2", "a||3", "a||4"]);
        let found = store.query(&Query::default()).await.unwrap();
        assert_eq!(found.results.len(), 1);
        let results = store.delete_many(vec![DeleteRequest::new("a||2")]).await;
        assert!(results[0].is_ok(), "{results:?}");
        store.delete(DeleteRequest::new("a||3")).await.unwrap();
        assert_eq!(store.delete_with_prefix("a||").await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_retrying_store_gives_up_after_the_threshold() {
        let store = RetryingStore::new(Flaky::new(5), quick(3));
        let err = store.set(SetRequest::new("k", "v")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(store.inner().attempts("set k"), 3);
        assert_eq!(store.inner().inner.get("k").await.unwrap(), None);
        let results = store.set_many(vec![SetRequest::new("b", "v")]).await;
        assert!(matches!(&results[0], Err(e) if e.is_transient()));
        assert_eq!(store.inner().attempts("set b"), 3);
    }

    /// A store whose bulk set fails transiently for every key in a fixed set, once per key.
    struct BulkFlaky {
        inner: MemoryStore,
        fail_once: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Store for BulkFlaky {
        fn name(&self) -> &'static str {
            "bulk-flaky"
        }
        fn features(&self) -> Features {
            self.inner.features()
        }
        async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
            self.inner.get(key).await
        }
        async fn set(&self, req: SetRequest) -> Result<String, StateError> {
            let tripped = {
                let mut fail = self.fail_once.lock().unwrap();
                let found = fail.iter().position(|k| *k == req.key);
                found.map(|i| fail.remove(i)).is_some()
            };
            if tripped {
                return Err(transient());
            }
            self.inner.set(req).await
        }
        async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
            self.inner.delete(req).await
        }
    }

    #[tokio::test]
    async fn bulk_retries_skip_requests_a_later_one_superseded() {
        let inner = BulkFlaky {
            inner: MemoryStore::new(),
            fail_once: Mutex::new(vec!["x".into(), "y".into()]),
        };
        let store = RetryingStore::new(inner, quick(3));
        // The first write of x fails; the later write of x succeeds, so retrying the first would
        // undo it. y fails once and is retried.
        let results = store
            .set_many(vec![
                SetRequest::new("x", "old"),
                SetRequest::new("y", "y"),
                SetRequest::new("x", "new"),
            ])
            .await;
        assert!(
            matches!(&results[0], Err(e) if e.is_transient()),
            "{results:?}"
        );
        assert!(results[1].is_ok() && results[2].is_ok(), "{results:?}");
        assert_eq!(
            store.get("x").await.unwrap().unwrap().value.as_ref(),
            b"new"
        );
        assert_eq!(store.get("y").await.unwrap().unwrap().value.as_ref(), b"y");
    }
}
