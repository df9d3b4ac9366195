//! The `postgres` connector: a source that snapshots tables and then captures their changes
//! through logical replication (pgoutput) or by polling, and a destination that upserts and
//! deletes by key in batches.
//!
//! Settings follow Conduit's PostgreSQL connector (`url`, `tables`, `cdcMode`,
//! `logrepl.slotName`, `logrepl.publicationName`, `logrepl.autoCleanup`, `snapshotMode`,
//! `snapshot.fetchSize`; `table` and `key` on the destination), so its pipeline files run
//! unchanged. See [`source`] and [`destination`] for how each side works.

mod backoff;
pub mod catalog;
pub mod config;
pub mod connect;
pub mod destination;
pub mod error;
pub mod lsn;
pub mod pgoutput;
pub mod position;
pub mod replication;
pub mod source;
pub mod value;

use std::sync::Arc;

use sluice_sdk::{Destination, Plugin, Registry, Source, Specification};

pub use destination::PostgresDestination;
pub use error::PgError;
pub use source::PostgresSource;

/// Registers the `postgres` plugin (source and destination).
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(PostgresPlugin));
}

/// The built-in `postgres` connector plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresPlugin;

impl Plugin for PostgresPlugin {
    fn specification(&self) -> Specification {
        Specification {
            name: "postgres".into(),
            summary: "Snapshots PostgreSQL tables and captures their changes (logical \
                      replication or polling); upserts and deletes rows by key."
                .into(),
            description: DESCRIPTION.into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: config::source_params(),
            destination_params: config::destination_params(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(PostgresSource::new()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        Some(Box::new(PostgresDestination::new()))
    }
}

const DESCRIPTION: &str = "\
Source. On first start it reads every row of the tables in `tables` (operation `snapshot`, in key \
order, `snapshot.fetchSize` rows per query, in one repeatable-read transaction), then follows their \
changes. Records carry `opencdc.collection` (the table; `schema.table` outside `public`), \
`opencdc.createdAt` (the commit time for changes), the primary key as a structured key, and the row \
as structured `payload.after`. Values are JSON typed: booleans, integers and floats as JSON, json \
and jsonb as JSON, numeric as a string (exact), bytea as base64, everything else as PostgreSQL's \
text (timestamps in ISO style, UTC).

With `cdcMode: logrepl` (or `auto`, when the server has wal_level = logical) changes come through \
logical replication with the pgoutput plugin: Sluice creates the publication `logrepl.publicationName` \
for the tables and the slot `logrepl.slotName` when they are missing. A new slot exports its snapshot, \
so the initial snapshot and the change stream meet exactly; a snapshot resumed after a restart (it \
continues after the last key read) or taken on an existing slot may repeat changes (at-least-once). \
Inserts are `create`, updates `update`, deletes `delete`; `payload.before` holds the old row when \
the table has REPLICA IDENTITY FULL, only the key columns when a delete (or a key change) happens \
under the default identity. A table without primary key must have REPLICA IDENTITY FULL. Positions \
are `cdc:COMMIT_LSN:INDEX`; the slot is advanced only to positions the pipeline acknowledged, so a \
restart resumes exactly after the last acknowledged change and the server keeps the WAL until then \
(once everything read is acknowledged, the slot also moves past WAL of other tables, so quiet tables \
do not hold WAL back). \
A lost connection is retried with backoff. The slot retains WAL while the pipeline is stopped: drop \
it (or delete the connector with `logrepl.autoCleanup: true`) when it is no longer needed. TRUNCATE \
is not turned into records.

With `cdcMode: long_polling` (servers without logical replication) each table is polled for rows \
whose `orderingColumn` (a strictly increasing column present in every table) is greater than the \
last one read, as `create` records; updates and deletes are not seen.

Destination. Each record is written to the table named by `table` (by default its \
`opencdc.collection` metadata). `create`, `snapshot` and `update` upsert by key (INSERT ... ON \
CONFLICT (key) DO UPDATE of the record's fields), `delete` deletes by key; the key is the record's \
structured key, else the `key` columns, else the table's primary key read from the payload, and \
without any key rows are inserted. Payload fields map to columns by name; a field that is not a \
column nacks the record. Records are buffered by write and applied at each acknowledgement in one \
transaction, as set-based statements (one per run of records of the same shape); if a row fails, the \
batch is applied again record by record under savepoints and only the failing records are nacked.";

#[cfg(test)]
mod tests {
    use sluice_sdk::acceptance::{specification_problems, Side};

    use super::*;

    #[test]
    fn specification_is_well_formed() {
        let spec = PostgresPlugin.specification();
        assert_eq!(spec.name, "postgres");
        assert!(specification_problems(&spec, Side::Source).is_empty());
        assert!(specification_problems(&spec, Side::Destination).is_empty());
        assert!(spec.source_params[config::URL].is_required());
        assert!(spec.destination_params[config::URL].is_required());
        let mut r = Registry::new();
        register(&mut r);
        assert!(r.new_source("builtin:postgres").is_ok());
        assert!(r.new_destination("postgres").is_ok());
    }
}
