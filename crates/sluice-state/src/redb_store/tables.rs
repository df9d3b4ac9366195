//! The tables of the store file.

use redb::TableDefinition;

/// Key → record (see [`super::record`]).
pub(super) const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
/// (deadline in milliseconds since the Unix epoch, key) of every item with a TTL: exactly the
/// items in [`ITEMS`] whose record holds that deadline, so expired items are found in deadline
/// order without a scan.
pub(super) const DEADLINES: TableDefinition<(u64, &str), ()> = TableDefinition::new("deadlines");
/// Store-wide counters.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The `meta` key holding the last version handed out.
pub(super) const LAST_VERSION: &str = "last_version";
/// (revision, position within the commit) → a change record (see [`super::changes`]): the
/// history watchers read, written in the same transaction as the change itself.
pub(super) const CHANGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("changes");
/// The `meta` key holding the highest revision dropped from [`CHANGES`] (0: none).
pub(super) const COMPACTED_THROUGH: &str = "compacted_through";
