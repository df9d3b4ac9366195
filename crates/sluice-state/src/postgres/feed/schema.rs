//! The change feed's schema: what migration 3 creates beside the items table.
//!
//! ```sql
//! CREATE SEQUENCE <table>_revision_seq;   -- revisions, one per writing transaction
//! CREATE SEQUENCE <table>_change_seq;     -- orders the changes of one revision
//! CREATE TABLE <table>_changes (revision, seq, key, op, value, prev_value, at,
//!                               PRIMARY KEY (revision, seq));
//! CREATE TABLE <table>_watch (compacted_through);  -- one row
//! CREATE CONSTRAINT TRIGGER <table>_record AFTER INSERT OR UPDATE OR DELETE ON <table>
//!     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION <table>_record();
//! ```
//!
//! The trigger sees every row any statement changes — set, delete, bulk calls, `multi`,
//! delete-with-prefix, the expiry sweep — with its real previous row, so no write path can forget
//! to record. It is deferred to the commit: by then the transaction holds every row lock it
//! will take, so a transaction that waited for one of them draws its revision after this one
//! has committed — revision order agrees with the order in which conflicting writes applied
//! (drawn at the first write instead, a transaction could draw a lower revision than one whose
//! row it later overwrites). On a transaction's first change it takes the feed's advisory lock
//! *shared*, draws the transaction's revision and keeps it in a transaction-local setting. Each
//! row change becomes one `changes` row at that revision. It does not `NOTIFY`: PostgreSQL
//! serialises the commits of notifying transactions (a database-wide lock held through the
//! commit's flush), which would cap writes at one per disk flush; writers wake watchers through
//! [`super::pump`] instead. An update of an expired row is recorded as its delete (the expiry nobody
//! swept yet) followed by the put, so watchers see the expiry either way.

use super::super::ident::TableNames;

/// The statements of migration 3 for `n`.
pub(crate) fn migration(n: &TableNames) -> String {
    let w = &n.watch;
    let (class, key) = w.lock;
    let record = |key: &str, op: &str, value: &str, prev: &str| {
        format!(
            "INSERT INTO {changes} (revision, seq, key, op, value, prev_value) \
             VALUES (r, nextval('{seq}'), {key}, '{op}', {value}, {prev});",
            changes = w.changes,
            seq = w.change_seq,
        )
    };
    format!(
        "CREATE SEQUENCE IF NOT EXISTS {rev_seq} AS bigint NO CYCLE; \
         CREATE SEQUENCE IF NOT EXISTS {change_seq} AS bigint NO CYCLE; \
         CREATE TABLE IF NOT EXISTS {changes} ( \
             revision bigint NOT NULL, \
             seq bigint NOT NULL, \
             key text COLLATE \"C\" NOT NULL, \
             op \"char\" NOT NULL, \
             value bytea, \
             prev_value bytea, \
             at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (revision, seq) \
         ); \
         CREATE TABLE IF NOT EXISTS {meta} ( \
             id boolean PRIMARY KEY DEFAULT true CHECK (id), \
             compacted_through bigint NOT NULL \
         ); \
         INSERT INTO {meta} (id, compacted_through) VALUES (true, 0) ON CONFLICT DO NOTHING; \
         CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $sluice$ \
         DECLARE r bigint; \
         BEGIN \
           r := nullif(current_setting('{setting}', true), '')::bigint; \
           IF r IS NULL THEN \
             PERFORM pg_advisory_xact_lock_shared({class}, {key}); \
             r := nextval('{rev_seq}'); \
             PERFORM set_config('{setting}', r::text, true); \
           END IF; \
           IF TG_OP = 'DELETE' THEN \
             {del_old} \
             RETURN OLD; \
           END IF; \
           IF TG_OP = 'UPDATE' AND OLD.expires_at IS NOT NULL AND OLD.expires_at <= now() THEN \
             {del_old} \
             {put_fresh} \
           ELSIF TG_OP = 'UPDATE' THEN \
             {put_over} \
           ELSE \
             {put_fresh} \
           END IF; \
           RETURN NEW; \
         END \
         $sluice$; \
         DROP TRIGGER IF EXISTS {trigger} ON {t}; \
         CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {t} \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {func}();",
        rev_seq = w.revision_seq,
        change_seq = w.change_seq,
        changes = w.changes,
        meta = w.meta,
        func = w.trigger_fn,
        setting = w.setting,
        trigger = w.trigger,
        t = n.table,
        del_old = record("OLD.key", "d", "NULL", "OLD.value"),
        put_fresh = record("NEW.key", "p", "NEW.value", "NULL"),
        put_over = record("NEW.key", "p", "NEW.value", "OLD.value"),
    )
}
