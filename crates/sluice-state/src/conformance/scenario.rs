//! One scenario's run: names the scenario and the backend in every failure, hands out keys under
//! a prefix no other run uses, and checks results against the store contract.

use std::fmt::Debug;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Serialize;

use crate::error::StateError;
use crate::store::{Item, Store};

/// A running scenario. Every failure panics with
/// "conformance scenario `NAME` failed on backend `BACKEND`: ...".
pub(crate) struct Scenario {
    name: &'static str,
    backend: &'static str,
    prefix: String,
}

impl Scenario {
    /// Starts scenario `name` against `store`, with a key prefix unique to this run (random per
    /// process and counted within it), so runs may share one store, even a persistent one.
    pub(crate) fn new(name: &'static str, store: &dyn Store) -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let random = RandomState::new().hash_one(run);
        Scenario {
            name,
            backend: store.name(),
            prefix: format!("conformance||{name}||{random:016x}-{run}||"),
        }
    }

    /// The prefix every key of this run starts with (ends in `||`).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A key of this run.
    pub(crate) fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// Announces that the scenario does not apply to this backend, and why.
    pub(crate) fn skip(&self, reason: &str) {
        println!(
            "conformance scenario `{}` skipped on backend `{}`: {reason}",
            self.name, self.backend
        );
    }

    /// Fails the scenario.
    pub(crate) fn fail(&self, message: &str) -> ! {
        panic!(
            "conformance scenario `{}` failed on backend `{}`: {message}",
            self.name, self.backend
        )
    }

    /// Fails with `message` unless `ok`.
    pub(crate) fn check(&self, ok: bool, message: &str) {
        if !ok {
            self.fail(message);
        }
    }

    /// Fails unless `got == want`.
    pub(crate) fn eq<T: PartialEq + Debug + ?Sized>(&self, what: &str, got: &T, want: &T) {
        if got != want {
            self.fail(&format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// The value of a call that must succeed.
    pub(crate) fn ok<T>(&self, what: &str, result: Result<T, StateError>) -> T {
        result.unwrap_or_else(|e| self.fail(&format!("{what}: unexpected error: {e}")))
    }

    /// The item of a read that must find one.
    pub(crate) fn some<T: Debug>(&self, what: &str, result: Result<Option<T>, StateError>) -> T {
        self.ok(what, result)
            .unwrap_or_else(|| self.fail(&format!("{what}: the key is missing")))
    }

    /// Fails unless a read succeeded and found nothing.
    pub(crate) fn none<T: Debug>(&self, what: &str, result: Result<Option<T>, StateError>) {
        if let Some(found) = self.ok(what, result) {
            self.fail(&format!("{what}: expected no item, found {found:?}"));
        }
    }

    /// The item of a read that must find exactly `want`.
    pub(crate) fn value(
        &self,
        what: &str,
        result: Result<Option<Item>, StateError>,
        want: &[u8],
    ) -> Item {
        let item = self.some(what, result);
        if item.value.as_ref() != want {
            self.fail(&format!(
                "{what}: value is {:?}, want {:?}",
                item.value,
                Bytes::copy_from_slice(want)
            ));
        }
        item
    }

    /// Fails unless `result` is an ETag mismatch for `key`.
    pub(crate) fn mismatch<T: Debug>(&self, what: &str, key: &str, result: Result<T, StateError>) {
        match result {
            Err(StateError::EtagMismatch { key: k }) if k == key => {}
            other => self.fail(&format!(
                "{what}: want an ETag mismatch for {key:?}, got {other:?}"
            )),
        }
    }

    /// Fails unless `result` is an invalid-ETag error for `key`.
    pub(crate) fn invalid<T: Debug>(&self, what: &str, key: &str, result: Result<T, StateError>) {
        match result {
            Err(StateError::EtagInvalid { key: k, .. }) if k == key => {}
            other => self.fail(&format!(
                "{what}: want an invalid-ETag error for {key:?}, got {other:?}"
            )),
        }
    }

    /// Fails unless `result` is an empty-key error.
    pub(crate) fn empty_key<T: Debug>(&self, what: &str, result: Result<T, StateError>) {
        if !matches!(result, Err(StateError::EmptyKey)) {
            self.fail(&format!("{what}: want an empty-key error, got {result:?}"));
        }
    }

    /// Fails unless `result` is an invalid-request error.
    pub(crate) fn invalid_request<T: Debug>(&self, what: &str, result: Result<T, StateError>) {
        if !matches!(result, Err(StateError::InvalidRequest(_))) {
            self.fail(&format!(
                "{what}: want an invalid-request error, got {result:?}"
            ));
        }
    }

    /// Fails unless `result` says the backend does not support the operation.
    pub(crate) fn unsupported<T: Debug>(&self, what: &str, result: Result<T, StateError>) {
        if !matches!(result, Err(StateError::Unsupported { .. })) {
            self.fail(&format!(
                "{what}: the backend does not advertise the feature, so it must answer \
                 StateError::Unsupported; got {result:?}"
            ));
        }
    }

    /// Fails unless `result` is an aborted transaction naming operation `index` on `key`; returns
    /// the cause.
    pub(crate) fn aborted<T: Debug>(
        &self,
        what: &str,
        index: usize,
        key: &str,
        result: Result<T, StateError>,
    ) -> StateError {
        match result {
            Err(StateError::TransactionAborted {
                index: i,
                key: k,
                source,
            }) if i == index && k == key => *source,
            other => self.fail(&format!(
                "{what}: want TransactionAborted naming operation {index} (key {key:?}), \
                 got {other:?}"
            )),
        }
    }

    /// Fails unless a bulk call returned `want` results.
    pub(crate) fn count<T>(&self, what: &str, results: &[T], want: usize) {
        if results.len() != want {
            self.fail(&format!(
                "{what}: {} result(s) for {want} request(s)",
                results.len()
            ));
        }
    }

    /// `value` as JSON bytes.
    pub(crate) fn json<T: Serialize + ?Sized>(&self, value: &T) -> Vec<u8> {
        serde_json::to_vec(value)
            .unwrap_or_else(|e| self.fail(&format!("cannot serialize a test value: {e}")))
    }
}

/// A well-formed ETag that differs from `etag` and that a version-counting store will not hand
/// out soon.
/// Numeric ETags move far ahead; others get their last character changed within its class
/// (digit, hex letter, letter), so the result keeps the shape a backend checks.
pub(crate) fn bad_etag(etag: &str) -> String {
    if let Ok(v) = etag.parse::<u64>() {
        return v.wrapping_add(1_000_000_007).to_string();
    }
    let mut chars: Vec<char> = etag.chars().collect();
    match chars.last_mut() {
        Some(c) => {
            *c = match *c {
                '0'..='8' | 'a'..='e' | 'A'..='E' | 'g'..='y' | 'G'..='Y' => {
                    char::from_u32(u32::from(*c) + 1).unwrap_or('0')
                }
                '9' => '0',
                'f' => 'a',
                'F' => 'A',
                'z' => 'g',
                'Z' => 'G',
                _ => '0',
            };
            chars.into_iter().collect()
        }
        None => "1".to_string(),
    }
}

/// An ETag no backend accepts as well-formed.
pub(crate) const MALFORMED_ETAG: &str = "not-an-etag!";
