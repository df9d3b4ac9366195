//! The embedded default backend on redb: one file in the data directory.

/// Placeholder until the redb backend lands.
pub struct RedbStore;
