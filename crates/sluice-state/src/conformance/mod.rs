//! The conformance suite every [`Store`] backend must pass: every scenario of the store contract
//! (spec/state.md, "Conformance scenarios"), so that a user gets the same promises whichever
//! backend holds the state.
//!
//! This is test-support code: a failed scenario panics with "conformance scenario `NAME` failed
//! on backend `BACKEND`: ...". Each run of a scenario writes under its own unique key prefix, so
//! suites may run concurrently against one shared (even persistent) store. A scenario for an
//! optional feature the backend does not advertise ([`crate::Features`]) prints why it is
//! skipped and checks instead that the operation answers [`crate::StateError::Unsupported`].
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! sluice_state::conformance::run_all(Arc::new(sluice_state::MemoryStore::new())).await;
//! # }
//! ```

mod basic;
mod bulk;
mod etag;
mod listing;
mod lost_update;
mod query;
mod scenario;
mod transactions;
mod ttl;
pub mod watch;

use std::sync::Arc;

use crate::store::Store;

pub use basic::{advertises_etags, consistency_hint, delete, empty_key, missing_key, value_types};
pub use bulk::{bulk_delete_etags, bulk_set_etags, bulk_set_get_delete};
pub use etag::{etag_on_delete, etag_on_set, etags_never_repeat, first_write};
pub use listing::{delete_with_prefix, keys_like, like_escape};
pub use lost_update::{lost_update, lost_update_with, LOST_UPDATE_INCREMENTS, LOST_UPDATE_TASKS};
pub use query::query;
pub use transactions::{
    transaction_all_or_nothing, transaction_checks_before_applying, transaction_groups,
    transaction_order,
};
pub use ttl::{ttl_cleared_by_write, ttl_expire_time, ttl_expiry, EXPIRY_DEADLINE};

/// How much work the heavier scenarios do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Concurrent tasks in [`lost_update`].
    pub lost_update_tasks: u64,
    /// Increments per task in [`lost_update`].
    pub lost_update_increments: u64,
}

impl Default for Options {
    /// The contract's figures: 16 tasks × 500 increments = 8,000 (what CI runs).
    fn default() -> Self {
        Options {
            lost_update_tasks: LOST_UPDATE_TASKS,
            lost_update_increments: LOST_UPDATE_INCREMENTS,
        }
    }
}

/// The names of every scenario, in the order [`run_all`] runs them.
pub const SCENARIOS: &[&str] = &[
    "advertises_etags",
    "value_types",
    "missing_key",
    "delete",
    "empty_key",
    "consistency_hint",
    "etag_on_set",
    "etag_on_delete",
    "etags_never_repeat",
    "first_write",
    "bulk_set_get_delete",
    "bulk_set_etags",
    "bulk_delete_etags",
    "transaction_groups",
    "transaction_order",
    "transaction_all_or_nothing",
    "transaction_checks_before_applying",
    "ttl_expiry",
    "ttl_expire_time",
    "ttl_cleared_by_write",
    "delete_with_prefix",
    "keys_like",
    "query",
    "lost_update",
];

/// Runs every scenario against `store`, one after another, with the contract's figures.
pub async fn run_all(store: Arc<dyn Store>) {
    run_all_with_options(store, Options::default()).await;
}

/// Runs every scenario against `store`, one after another.
pub async fn run_all_with_options(store: Arc<dyn Store>, options: Options) {
    run_all_with(|| Arc::clone(&store), options).await;
}

/// Runs every scenario, each against a store from `factory` (a fresh one per scenario for
/// backends whose stores are cheap to make, so one scenario's failure cannot affect the next).
pub async fn run_all_with<F>(mut factory: F, options: Options)
where
    F: FnMut() -> Arc<dyn Store>,
{
    advertises_etags(factory().as_ref()).await;
    value_types(factory().as_ref()).await;
    missing_key(factory().as_ref()).await;
    delete(factory().as_ref()).await;
    empty_key(factory().as_ref()).await;
    consistency_hint(factory().as_ref()).await;
    etag_on_set(factory().as_ref()).await;
    etag_on_delete(factory().as_ref()).await;
    etags_never_repeat(factory().as_ref()).await;
    first_write(factory().as_ref()).await;
    bulk_set_get_delete(factory().as_ref()).await;
    bulk_set_etags(factory().as_ref()).await;
    bulk_delete_etags(factory().as_ref()).await;
    transaction_groups(factory().as_ref()).await;
    transaction_order(factory().as_ref()).await;
    transaction_all_or_nothing(factory().as_ref()).await;
    transaction_checks_before_applying(factory().as_ref()).await;
    ttl_expiry(factory().as_ref()).await;
    ttl_expire_time(factory().as_ref()).await;
    ttl_cleared_by_write(factory().as_ref()).await;
    delete_with_prefix(factory().as_ref()).await;
    keys_like(factory().as_ref()).await;
    query(factory().as_ref()).await;
    lost_update_with(
        factory(),
        options.lost_update_tasks,
        options.lost_update_increments,
    )
    .await;
}
