//! Turning records into row operations (upsert, insert, delete by key) on a known table, and
//! grouping consecutive operations of the same shape into one set-based statement.
//!
//! Rules:
//! - `create`, `snapshot` and `update` upsert by key (`INSERT ... ON CONFLICT (key) DO UPDATE`
//!   of the columns the record carries); without any key they insert.
//! - An `update` whose `payload.before` holds a different key first deletes the old key.
//! - `delete` deletes by key; the key comes from the record's key, else `payload.before`.
//! - The key: a structured record key names its columns; otherwise the `key` setting's columns
//!   (a raw key fills a single key column, a missing one is read from the payload); otherwise
//!   the table's primary key, read from the payload.
//! - Payload fields must be columns of the table (a record with an unknown field is nacked rather
//!   than silently losing data); generated columns are skipped.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use sluice_sdk::{Data, Operation, Record};

use crate::postgres::catalog::Table;
use crate::postgres::value::json_to_text;

/// What to do with rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Insert, updating the row with the same key.
    Upsert,
    /// Insert (no key known).
    Insert,
    /// Delete by key.
    Delete,
}

/// One row operation.
#[derive(Clone, Debug)]
pub struct RowOp {
    /// The table.
    pub table: Arc<Table>,
    /// What to do.
    pub kind: Kind,
    /// Columns written (for deletes: the key columns).
    pub columns: Vec<String>,
    /// Key columns (the conflict target of an upsert).
    pub key: Vec<String>,
    /// One text value per column (`None` for NULL).
    pub values: Vec<Option<String>>,
}

/// Consecutive operations of one shape: one statement.
#[derive(Debug)]
pub struct Group {
    /// The table.
    pub table: Arc<Table>,
    /// What to do.
    pub kind: Kind,
    /// Columns.
    pub columns: Vec<String>,
    /// Key columns.
    pub key: Vec<String>,
    /// Values column by column (one array per column).
    pub values: Vec<Vec<Option<String>>>,
}

impl Group {
    /// How many rows the group holds.
    pub fn len(&self) -> usize {
        self.values.first().map_or(0, Vec::len)
    }

    /// True when the group holds no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Groups consecutive operations of the same table, kind and columns. Within an upsert group a
/// later row with the same key replaces an earlier one (a statement may not touch a row twice).
pub fn group<'a>(ops: impl IntoIterator<Item = &'a RowOp>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut keys: std::collections::HashMap<Vec<Option<String>>, usize> =
        std::collections::HashMap::new();
    for op in ops {
        let same = groups.last().is_some_and(|g| {
            Arc::ptr_eq(&g.table, &op.table)
                && g.kind == op.kind
                && g.columns == op.columns
                && g.key == op.key
        });
        if !same {
            keys.clear();
            groups.push(Group {
                table: op.table.clone(),
                kind: op.kind,
                columns: op.columns.clone(),
                key: op.key.clone(),
                values: vec![Vec::new(); op.columns.len()],
            });
        }
        let Some(g) = groups.last_mut() else { continue };
        if g.kind == Kind::Upsert {
            let key: Vec<Option<String>> = g
                .key
                .iter()
                .map(|k| {
                    g.columns
                        .iter()
                        .position(|c| c == k)
                        .and_then(|i| op.values[i].clone())
                })
                .collect();
            if let Some(&row) = keys.get(&key) {
                for (col, v) in g.values.iter_mut().zip(&op.values) {
                    col[row].clone_from(v);
                }
                continue;
            }
            keys.insert(key, g.len());
        }
        for (col, v) in g.values.iter_mut().zip(&op.values) {
            col.push(v.clone());
        }
    }
    groups
}

/// The row operations for one record on `table`, or why it cannot be written.
pub fn plan(
    record: &Record,
    table: &Arc<Table>,
    key_setting: &[String],
) -> Result<Vec<RowOp>, String> {
    let key_fields = record_key(record, key_setting)?;
    match record.operation {
        Operation::Delete => {
            let before = record.payload.before.as_ref().map(structured).transpose()?;
            let key = key_fields
                .or_else(|| {
                    before
                        .as_ref()
                        .and_then(|b| key_from(b, key_names(key_setting, table)?))
                })
                .ok_or_else(|| {
                    "a delete needs a key: the record has none, and payload.before lacks the \
                     key columns"
                        .to_string()
                })?;
            Ok(vec![delete_op(table, &key)?])
        }
        Operation::Create | Operation::Snapshot | Operation::Update => {
            let after = record.payload.after.as_ref().ok_or_else(|| {
                format!("a {} record needs payload.after", record.operation.as_str())
            })?;
            let row = structured(after)?;
            let key = match key_fields {
                Some(k) => Some(k),
                None => key_names(key_setting, table).and_then(|names| key_from(&row, names)),
            };
            let mut ops = Vec::with_capacity(2);
            // Key fields the payload lacks are written too.
            let mut missing: Vec<(&String, &Json)> = Vec::new();
            if let Some(key) = &key {
                missing.extend(key.iter().filter(|(k, _)| !row.contains_key(*k)));
                if record.operation == Operation::Update {
                    if let Some(Data::Structured(before)) = &record.payload.before {
                        let names: Vec<String> = key.keys().cloned().collect();
                        if let Some(old) = key_from(before, &names) {
                            if &old != key {
                                ops.push(delete_op(table, &old)?);
                            }
                        }
                    }
                }
            }
            ops.push(write_op(table, row.iter().chain(missing), key.as_ref())?);
            Ok(ops)
        }
    }
}

/// The record's key as fields, if it names them (structured, or raw with one `key` column).
fn record_key(
    record: &Record,
    key_setting: &[String],
) -> Result<Option<Map<String, Json>>, String> {
    match &record.key {
        Some(Data::Structured(m)) if !m.is_empty() => {
            if key_setting.is_empty() {
                Ok(Some(m.clone()))
            } else {
                Ok(key_from(m, key_setting))
            }
        }
        Some(Data::Raw(bytes)) if !bytes.is_empty() => match key_setting {
            [] => Ok(None),
            [one] => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| "the raw key is not UTF-8 text".to_string())?;
                let mut m = Map::new();
                m.insert(one.clone(), Json::String(text.to_string()));
                Ok(Some(m))
            }
            _ => Err(format!(
                "the key setting names {} columns but the record's key is raw bytes (a raw key \
                 fills a single column)",
                key_setting.len()
            )),
        },
        _ => Ok(None),
    }
}

fn key_names<'a>(key_setting: &'a [String], table: &'a Table) -> Option<&'a [String]> {
    if !key_setting.is_empty() {
        Some(key_setting)
    } else if table.has_primary_key {
        Some(&table.key)
    } else {
        None
    }
}

/// The fields `names` of `row`, if it has them all.
fn key_from(row: &Map<String, Json>, names: &[String]) -> Option<Map<String, Json>> {
    let mut key = Map::with_capacity(names.len());
    for n in names {
        key.insert(n.clone(), row.get(n)?.clone());
    }
    Some(key)
}

fn structured(data: &Data) -> Result<Cow<'_, Map<String, Json>>, String> {
    match data {
        Data::Structured(m) => Ok(Cow::Borrowed(m)),
        Data::Raw(bytes) => match serde_json::from_slice::<Json>(bytes) {
            Ok(Json::Object(m)) => Ok(Cow::Owned(m)),
            _ => Err(
                "the payload is raw bytes, not a JSON object: the postgres destination writes \
                 structured records (fields become columns)"
                    .to_string(),
            ),
        },
    }
}

fn texts<'a>(
    table: &Table,
    fields: impl Iterator<Item = (&'a String, &'a Json)>,
) -> Result<(Vec<String>, Vec<Option<String>>), String> {
    let mut columns = Vec::with_capacity(fields.size_hint().0);
    let mut values = Vec::with_capacity(fields.size_hint().0);
    for (name, value) in fields {
        let col = table.column(name).ok_or_else(|| {
            format!(
                "table {} has no column {name:?} (the record's field)",
                table.collection()
            )
        })?;
        if col.generated {
            continue;
        }
        let text = json_to_text(col.kind, value).map_err(|e| format!("column {name:?} {e}"))?;
        columns.push(name.clone());
        values.push(text);
    }
    Ok((columns, values))
}

fn delete_op(table: &Arc<Table>, key: &Map<String, Json>) -> Result<RowOp, String> {
    let (columns, values) = texts(table, key.iter())?;
    Ok(RowOp {
        table: table.clone(),
        kind: Kind::Delete,
        key: columns.clone(),
        columns,
        values,
    })
}

fn write_op<'a>(
    table: &Arc<Table>,
    row: impl Iterator<Item = (&'a String, &'a Json)>,
    key: Option<&Map<String, Json>>,
) -> Result<RowOp, String> {
    let (columns, values) = texts(table, row)?;
    if columns.is_empty() {
        return Err("the record has no field to write".into());
    }
    let Some(key) = key else {
        return Ok(RowOp {
            table: table.clone(),
            kind: Kind::Insert,
            columns,
            key: Vec::new(),
            values,
        });
    };
    let key: Vec<String> = key.keys().cloned().collect();
    if !table.is_unique(&key) {
        return Err(format!(
            "no unique index or primary key on ({}) of {}: cannot upsert by that key",
            key.join(", "),
            table.collection()
        ));
    }
    Ok(RowOp {
        table: table.clone(),
        kind: Kind::Upsert,
        columns,
        key,
        values,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_sdk::{Payload, Position};

    use super::*;
    use crate::postgres::catalog::Column;
    use crate::postgres::value::ColumnKind;

    fn table() -> Arc<Table> {
        let col = |name: &str| Column {
            name: name.into(),
            type_oid: 25,
            type_name: "text".into(),
            kind: ColumnKind::Scalar,
            generated: name == "gen",
        };
        Arc::new(Table {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![col("id"), col("name"), col("gen")],
            key: vec!["id".into()],
            has_primary_key: true,
            replica_identity: 'd',
            unique_keys: vec![vec!["id".into()]],
        })
    }

    fn rec(op: Operation, key: Option<Json>, before: Option<Json>, after: Option<Json>) -> Record {
        let data = |v: Json| match v {
            Json::Object(m) => Data::Structured(m),
            other => Data::Raw(other.to_string().into_bytes().into()),
        };
        Record {
            position: Position::from_u64(1),
            operation: op,
            metadata: Default::default(),
            key: key.map(data),
            payload: Payload {
                before: before.map(data),
                after: after.map(data),
            },
        }
    }

    #[test]
    fn creates_upsert_by_key_and_deletes_by_key() {
        let t = table();
        let ops = plan(
            &rec(
                Operation::Create,
                Some(json!({"id": 1})),
                None,
                Some(json!({"name": "a", "gen": 5})),
            ),
            &t,
            &[],
        )
        .expect("plan");
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].kind, Kind::Upsert);
        assert_eq!(ops[0].columns, vec!["name", "id"]);
        assert_eq!(ops[0].values, vec![Some("a".into()), Some("1".into())]);

        let ops = plan(
            &rec(
                Operation::Delete,
                None,
                Some(json!({"id": 2, "name": "x"})),
                None,
            ),
            &t,
            &[],
        )
        .expect("plan");
        assert_eq!(ops[0].kind, Kind::Delete);
        assert_eq!(ops[0].columns, vec!["id"]);
    }

    #[test]
    fn a_key_change_deletes_the_old_row_first() {
        let ops = plan(
            &rec(
                Operation::Update,
                Some(json!({"id": 2})),
                Some(json!({"id": 1})),
                Some(json!({"id": 2, "name": "b"})),
            ),
            &table(),
            &[],
        )
        .expect("plan");
        assert_eq!(
            ops.iter().map(|o| o.kind).collect::<Vec<_>>(),
            vec![Kind::Delete, Kind::Upsert]
        );
    }

    #[test]
    fn bad_records_say_why() {
        let t = table();
        let unknown = plan(
            &rec(
                Operation::Create,
                None,
                None,
                Some(json!({"id": 1, "zz": 1})),
            ),
            &t,
            &[],
        );
        assert!(unknown.expect_err("unknown").contains("\"zz\""));
        let raw = plan(
            &rec(Operation::Create, None, None, Some(json!("text"))),
            &t,
            &[],
        );
        assert!(raw.expect_err("raw").contains("not a JSON object"));
        let keyless_delete = plan(&rec(Operation::Delete, None, None, None), &t, &[]);
        assert!(keyless_delete.expect_err("no key").contains("needs a key"));
        let not_unique = plan(
            &rec(
                Operation::Create,
                Some(json!({"name": "a"})),
                None,
                Some(json!({"id": 1})),
            ),
            &t,
            &[],
        );
        assert!(not_unique
            .expect_err("not unique")
            .contains("no unique index"));
    }

    #[test]
    fn raw_keys_fill_the_key_setting() {
        let mut r = rec(Operation::Create, None, None, Some(json!({"name": "a"})));
        r.key = Some(Data::Raw(bytes::Bytes::from_static(b"7")));
        let ops = plan(&r, &table(), &["id".to_string()]).expect("plan");
        assert_eq!(ops[0].columns, vec!["name", "id"]);
        assert_eq!(ops[0].values[1], Some("7".into()));
    }

    #[test]
    fn groups_merge_same_shapes_and_keep_the_last_row_per_key() {
        let t = table();
        let op = |id: &str, name: &str| RowOp {
            table: t.clone(),
            kind: Kind::Upsert,
            columns: vec!["id".into(), "name".into()],
            key: vec!["id".into()],
            values: vec![Some(id.into()), Some(name.into())],
        };
        let del = RowOp {
            table: t.clone(),
            kind: Kind::Delete,
            columns: vec!["id".into()],
            key: vec!["id".into()],
            values: vec![Some("1".into())],
        };
        let groups = group(&vec![
            op("1", "a"),
            op("2", "b"),
            op("1", "c"),
            del,
            op("1", "d"),
        ]);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].len(), 2);
        assert_eq!(
            groups[0].values[1],
            vec![Some("c".into()), Some("b".into())]
        );
        assert_eq!(groups[1].kind, Kind::Delete);
        assert_eq!(groups[2].values[1], vec![Some("d".into())]);
    }
}
