//! Turning rows into records: the same shape whether a row comes from the snapshot, the
//! replication stream or a poll.

use serde_json::{Map, Value as Json};
use sluice_sdk::record::{metadata, unix_nanos_now};
use sluice_sdk::{Data, Metadata, Operation, Payload, Position, Record};

use crate::postgres::catalog::Table;
use crate::postgres::value::text_to_json;

/// The columns a row has and which of them form the key.
#[derive(Clone, Debug)]
pub struct Shape {
    /// The collection name records carry.
    pub collection: String,
    /// Column names and type OIDs, in the row's order.
    pub columns: Vec<(String, u32)>,
    /// Indexes (into `columns`) of the key columns, in key order; empty when the table has no key.
    pub key: Vec<usize>,
}

impl Shape {
    /// The shape of rows selected as `table`'s stored columns, in order.
    pub fn of_table(table: &Table) -> Shape {
        let columns: Vec<(String, u32)> = table
            .stored_columns()
            .map(|c| (c.name.clone(), c.type_oid))
            .collect();
        Shape {
            collection: table.collection(),
            key: key_indexes(&columns, &table.key),
            columns,
        }
    }
}

/// The indexes of `key` names among `columns` (all of them, or none if one is missing).
pub fn key_indexes(columns: &[(String, u32)], key: &[String]) -> Vec<usize> {
    let found: Vec<usize> = key
        .iter()
        .filter_map(|k| columns.iter().position(|(name, _)| name == k))
        .collect();
    if found.len() == key.len() {
        found
    } else {
        Vec::new()
    }
}

/// A row's values as text (`None` for NULL), column by column; `Skip` leaves a column out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    /// NULL.
    Null,
    /// Not known (an unchanged TOASTed value): the field is left out.
    Skip,
    /// The value's text.
    Text(&'a str),
}

/// The row as a structured map, by the shape's columns.
pub fn row_map<'a>(shape: &Shape, cells: impl Iterator<Item = Cell<'a>>) -> Map<String, Json> {
    let mut m = Map::with_capacity(shape.columns.len());
    for ((name, oid), cell) in shape.columns.iter().zip(cells) {
        match cell {
            Cell::Skip => {}
            Cell::Null => {
                m.insert(name.clone(), Json::Null);
            }
            Cell::Text(t) => {
                m.insert(name.clone(), text_to_json(*oid, t));
            }
        }
    }
    m
}

/// The key fields of a row map, or `None` when the shape has no key.
pub fn key_of(shape: &Shape, row: &Map<String, Json>) -> Option<Data> {
    if shape.key.is_empty() {
        return None;
    }
    let mut key = Map::with_capacity(shape.key.len());
    for &i in &shape.key {
        let name = &shape.columns[i].0;
        key.insert(name.clone(), row.get(name).cloned().unwrap_or(Json::Null));
    }
    Some(Data::Structured(key))
}

/// A record with the standard metadata (collection, created-at, read-at).
pub fn record(
    position: Position,
    operation: Operation,
    collection: &str,
    key: Option<Data>,
    payload: Payload,
    created_at_nanos: Option<i128>,
) -> Record {
    let now = unix_nanos_now();
    let mut meta = Metadata::new();
    meta.insert(metadata::COLLECTION.to_string(), collection.to_string());
    meta.insert(
        metadata::CREATED_AT.to_string(),
        created_at_nanos.map_or_else(|| now.to_string(), |n| n.to_string()),
    );
    meta.insert(metadata::READ_AT.to_string(), now.to_string());
    Record {
        position,
        operation,
        metadata: meta,
        key,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_and_keys() {
        let shape = Shape {
            collection: "users".into(),
            columns: vec![("id".into(), 23), ("name".into(), 25), ("blob".into(), 25)],
            key: vec![0],
        };
        let row = row_map(
            &shape,
            [Cell::Text("7"), Cell::Null, Cell::Skip].into_iter(),
        );
        assert_eq!(
            serde_json::Value::Object(row.clone()),
            json!({"id": 7, "name": null})
        );
        let Some(Data::Structured(key)) = key_of(&shape, &row) else {
            panic!("structured key")
        };
        assert_eq!(serde_json::Value::Object(key), json!({"id": 7}));
        let cols = vec![("a".to_string(), 23), ("b".to_string(), 23)];
        assert_eq!(key_indexes(&cols, &["b".into()]), vec![1]);
        assert!(key_indexes(&cols, &["b".into(), "zz".into()]).is_empty());
    }

    #[test]
    fn records_carry_standard_metadata() {
        let r = record(
            Position::new(b"p"),
            Operation::Snapshot,
            "users",
            None,
            Payload::default(),
            Some(5),
        );
        assert_eq!(r.metadata[metadata::COLLECTION], "users");
        assert_eq!(r.metadata[metadata::CREATED_AT], "5");
        assert!(r.metadata.contains_key(metadata::READ_AT));
    }
}
