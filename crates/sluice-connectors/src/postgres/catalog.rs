//! What the connector needs to know about a table, read from the system catalogs: its columns
//! and their types, its key, its replica identity and its unique indexes.

use tokio_postgres::Client;

use super::connect::quote_ident;
use super::error::{PgError, Side};
use super::value::ColumnKind;

/// One column of a table.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// Its type as SQL (`numeric(10,2)`, `text[]`), for casts.
    pub type_name: String,
    /// How JSON values are written into it.
    pub kind: ColumnKind,
    /// True for generated columns, which cannot be written and are not replicated.
    pub generated: bool,
}

/// A table.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Its OID.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in order (generated ones included, flagged).
    pub columns: Vec<Column>,
    /// Key columns: the primary key, else the replica identity index, else none.
    pub key: Vec<String>,
    /// True if `key` is the primary key.
    pub has_primary_key: bool,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// The column lists of every unique index without expressions or predicates.
    pub unique_keys: Vec<Vec<String>>,
}

impl Table {
    /// `"schema"."name"`, for SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The name records carry in `opencdc.collection`: the table name, schema-qualified unless
    /// the schema is `public`.
    pub fn collection(&self) -> String {
        collection_name(&self.schema, &self.name)
    }

    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Columns that hold data (not generated).
    pub fn stored_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }

    /// True if some unique index covers exactly these columns (in any order), so they can be an
    /// `ON CONFLICT` target.
    pub fn is_unique(&self, columns: &[String]) -> bool {
        let mut want: Vec<&str> = columns.iter().map(String::as_str).collect();
        want.sort_unstable();
        self.unique_keys.iter().any(|k| {
            let mut have: Vec<&str> = k.iter().map(String::as_str).collect();
            have.sort_unstable();
            have == want
        })
    }
}

/// The collection name of a table in `schema`.
pub fn collection_name(schema: &str, name: &str) -> String {
    if schema == "public" {
        name.to_string()
    } else {
        format!("{schema}.{name}")
    }
}

/// Reads the description of the table `name` (as SQL would resolve it: `users`,
/// `app.users`, `"MixedCase"`); errors blame `setting`.
pub async fn lookup(
    client: &Client,
    side: Side,
    setting: &'static str,
    name: &str,
) -> Result<Table, PgError> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, \
             c.relkind::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)::oid",
            &[&name],
        )
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => PgError::setting(
                side,
                setting,
                format!("{name:?} is not a valid table name: {}", db.message()),
            ),
            None => PgError::db(side, &format!("looking up table {name:?}"), &e),
        })?;
    let Some(row) = rows.first() else {
        return Err(PgError::setting(
            side,
            setting,
            format!("table {name:?} does not exist"),
        ));
    };
    let oid: u32 = row.get(0);
    let schema: String = row.get(1);
    let relname: String = row.get(2);
    let replica_identity: String = row.get(3);
    let relkind: String = row.get(4);
    if relkind != "r" && relkind != "p" {
        return Err(PgError::setting(
            side,
            setting,
            format!("{name:?} is not a table (relkind {relkind:?})"),
        ));
    }
    let columns = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), \
             t.typcategory::text, a.attgenerated::text \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| PgError::db(side, &format!("reading the columns of {name:?}"), &e))?
        .iter()
        .map(|r| {
            let type_oid: u32 = r.get(1);
            let category: String = r.get(3);
            let generated: String = r.get(4);
            Column {
                name: r.get(0),
                type_oid,
                type_name: r.get(2),
                kind: ColumnKind::of(type_oid, &category),
                generated: !generated.is_empty(),
            }
        })
        .collect();
    let indexes = client
        .query(
            "SELECT i.indisprimary, i.indisreplident, \
             ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n \
                   ORDER BY k.o) \
             FROM pg_index i \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL \
               AND i.indexprs IS NULL",
            &[&oid],
        )
        .await
        .map_err(|e| PgError::db(side, &format!("reading the indexes of {name:?}"), &e))?;
    let mut primary = None;
    let mut identity = None;
    let mut unique_keys = Vec::new();
    for r in &indexes {
        let cols: Vec<String> = r.get(2);
        if r.get::<_, bool>(0) {
            primary = Some(cols.clone());
        }
        if r.get::<_, bool>(1) {
            identity = Some(cols.clone());
        }
        unique_keys.push(cols);
    }
    let has_primary_key = primary.is_some();
    Ok(Table {
        oid,
        schema,
        name: relname,
        columns,
        key: primary.or(identity).unwrap_or_default(),
        has_primary_key,
        replica_identity: replica_identity.chars().next().unwrap_or('d'),
        unique_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            oid: 1,
            schema: "app".into(),
            name: "Users".into(),
            columns: vec![],
            key: vec!["id".into()],
            has_primary_key: true,
            replica_identity: 'd',
            unique_keys: vec![vec!["id".into()], vec!["a".into(), "b".into()]],
        }
    }

    #[test]
    fn names_and_unique_keys() {
        let t = table();
        assert_eq!(t.qualified(), "\"app\".\"Users\"");
        assert_eq!(t.collection(), "app.Users");
        assert_eq!(collection_name("public", "x"), "x");
        assert!(t.is_unique(&["b".into(), "a".into()]));
        assert!(!t.is_unique(&["a".into()]));
    }
}
