//! Writes and deletes: from a request to the statement that applies it atomically on the server.
//!
//! Every ETag and first-write check is part of the statement's `WHERE` clause, so a check and
//! its write cannot be separated by a concurrent writer. A failed check is "no row written", not
//! an SQL error, which lets a batch of such statements run pipelined in one transaction with a
//! result per statement.

use bytes::Bytes;
use tokio_postgres::{Client, Statement};

use super::pipeline::Op;
use super::sql::Sql;
use super::value::{self, JsonbText};
use crate::error::StateError;
use crate::etag;
use crate::store::{Concurrency, DeleteRequest, SetRequest};

/// What a write requires of the stored key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Nothing (last-write).
    Any,
    /// The live row has this version (an ETag was given).
    Version(i64),
    /// No live row (first-write without an ETag).
    Absent,
    /// A well-formed ETag no item can have (beyond the versions PostgreSQL hands out): always a
    /// mismatch.
    Never,
}

impl Expect {
    /// The expectation an optional ETag (empty counts as none) and a concurrency mode express.
    fn from_etag(
        key: &str,
        etag: Option<&str>,
        concurrency: Concurrency,
    ) -> Result<Self, StateError> {
        match etag.filter(|e| !e.is_empty()) {
            Some(e) => {
                let version = etag::parse(key, e)?;
                Ok(i64::try_from(version).map_or(Expect::Never, Expect::Version))
            }
            None if concurrency == Concurrency::FirstWrite => Ok(Expect::Absent),
            None => Ok(Expect::Any),
        }
    }

    /// True if `stored` (the live row's version, if any) satisfies the expectation.
    pub fn holds(self, stored: Option<i64>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Version(v) => stored == Some(v),
            Expect::Absent => stored.is_none(),
            Expect::Never => false,
        }
    }
}

/// A validated set request.
#[derive(Clone, Debug)]
pub(crate) struct Write {
    /// The key.
    pub key: String,
    /// The value, stored byte for byte.
    pub value: Bytes,
    /// True if the value is a JSON object (also stored in `value_json`).
    pub json: bool,
    /// The TTL in milliseconds.
    pub ttl_ms: Option<i64>,
    /// The condition.
    pub expect: Expect,
}

impl Write {
    /// Validates a set request (key, ETag syntax).
    pub fn new(req: SetRequest) -> Result<Self, StateError> {
        value::check_key(&req.key)?;
        let expect = Expect::from_etag(&req.key, req.etag.as_deref(), req.concurrency)?;
        Ok(Write {
            json: value::is_json_object(&req.value),
            ttl_ms: value::ttl_millis(req.ttl),
            key: req.key,
            value: req.value,
            expect,
        })
    }
}

/// A validated delete request.
#[derive(Clone, Debug)]
pub(crate) struct Remove {
    /// The key.
    pub key: String,
    /// The condition (`Any` or `Version`/`Never`).
    pub expect: Expect,
}

impl Remove {
    /// Validates a delete request (key, ETag syntax).
    pub fn new(req: DeleteRequest) -> Result<Self, StateError> {
        value::check_key(&req.key)?;
        let expect = Expect::from_etag(&req.key, req.etag.as_deref(), Concurrency::LastWrite)?;
        Ok(Remove {
            key: req.key,
            expect,
        })
    }
}

/// Which statement of [`Sql`] a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `upsert`.
    Upsert,
    /// `insert_absent`.
    InsertAbsent,
    /// `update_if`.
    UpdateIf,
    /// `delete`.
    Delete,
    /// `delete_if`.
    DeleteIf,
    /// `delete_returning_live`.
    DeleteReturningLive,
    /// `upsert_many` (a run of `Upsert` steps).
    UpsertMany,
    /// `insert_absent_many` (a run of `InsertAbsent` steps).
    InsertAbsentMany,
}

impl Kind {
    /// The statement's text.
    pub fn sql(self, sql: &Sql) -> &str {
        match self {
            Kind::Upsert => &sql.upsert,
            Kind::InsertAbsent => &sql.insert_absent,
            Kind::UpdateIf => &sql.update_if,
            Kind::Delete => &sql.delete,
            Kind::DeleteIf => &sql.delete_if,
            Kind::DeleteReturningLive => &sql.delete_returning_live,
            Kind::UpsertMany => &sql.upsert_many,
            Kind::InsertAbsentMany => &sql.insert_absent_many,
        }
    }

    /// The statement that runs many steps of this kind at once, if there is one.
    pub fn many(self) -> Option<Kind> {
        match self {
            Kind::Upsert => Some(Kind::UpsertMany),
            Kind::InsertAbsent => Some(Kind::InsertAbsentMany),
            _ => None,
        }
    }
}

/// One statement to run: a write or a delete and how.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step<'a> {
    /// A write with `Upsert`, `InsertAbsent` or `UpdateIf` (with the version).
    Set(&'a Write, Kind, i64),
    /// A delete with `Delete`, `DeleteIf` (with the version) or `DeleteReturningLive`.
    Delete(&'a str, Kind, i64),
}

impl<'a> Step<'a> {
    /// The step that applies `w` with its own condition checked by the statement, or `None`
    /// when the condition can never hold.
    pub fn checked_set(w: &'a Write) -> Option<Self> {
        match w.expect {
            Expect::Any => Some(Step::Set(w, Kind::Upsert, 0)),
            Expect::Absent => Some(Step::Set(w, Kind::InsertAbsent, 0)),
            Expect::Version(v) => Some(Step::Set(w, Kind::UpdateIf, v)),
            Expect::Never => None,
        }
    }

    /// The step that applies `r` with its own condition checked by the statement, or `None`
    /// when the condition can never hold.
    pub fn checked_delete(r: &'a Remove) -> Option<Self> {
        match r.expect {
            Expect::Any | Expect::Absent => Some(Step::Delete(&r.key, Kind::Delete, 0)),
            Expect::Version(v) => Some(Step::Delete(&r.key, Kind::DeleteIf, v)),
            Expect::Never => None,
        }
    }

    /// The statement the step runs.
    pub fn kind(&self) -> Kind {
        match self {
            Step::Set(_, k, _) | Step::Delete(_, k, _) => *k,
        }
    }

    /// The key the step touches.
    pub fn key(&self) -> &'a str {
        match self {
            Step::Set(w, _, _) => &w.key,
            Step::Delete(k, _, _) => k,
        }
    }
}

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Written with this version.
    Written(i64),
    /// Deleted (or there was nothing to delete).
    Deleted,
    /// The statement's condition did not hold; nothing changed.
    Refused,
}

/// The statements a batch needs, prepared (cached per connection) once each.
pub(crate) struct Prepared {
    kinds: Vec<(Kind, Statement)>,
}

impl Prepared {
    /// Prepares (or finds in the connection's cache) the statements of `kinds`.
    pub async fn new(
        client: &deadpool_postgres::Object,
        sql: &Sql,
        kinds: impl IntoIterator<Item = Kind>,
    ) -> Result<Self, tokio_postgres::Error> {
        let mut prepared: Vec<(Kind, Statement)> = Vec::new();
        for kind in kinds {
            if !prepared.iter().any(|(k, _)| *k == kind) {
                let stmt = client.prepare_cached(kind.sql(sql)).await?;
                prepared.push((kind, stmt));
            }
        }
        Ok(Prepared { kinds: prepared })
    }

    /// The prepared statement of `kind`; an error if `new` was not asked for it (a bug in the
    /// caller).
    pub fn statement(&self, kind: Kind) -> Result<&Statement, StateError> {
        self.kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s)
            .ok_or_else(|| {
                StateError::backend(
                    super::errors::BACKEND,
                    format!("internal error: statement {kind:?} not prepared"),
                )
            })
    }

    /// The futures running `steps` on `client`, in order (for [`super::pipeline::in_order`]).
    /// Fails if a step needs a statement `new` was not asked to prepare (a bug in the caller).
    pub fn ops<'a>(
        &'a self,
        client: &'a Client,
        steps: &[Step<'a>],
    ) -> Result<Vec<Op<'a, Result<Applied, tokio_postgres::Error>>>, StateError> {
        steps
            .iter()
            .map(|step| {
                let stmt = self
                    .kinds
                    .iter()
                    .find(|(k, _)| *k == step.kind())
                    .map(|(_, s)| s)
                    .ok_or_else(|| {
                        StateError::backend(
                            super::errors::BACKEND,
                            format!("internal error: statement {:?} not prepared", step.kind()),
                        )
                    })?;
                Ok(Box::pin(run(client, stmt, *step)) as Op<'a, _>)
            })
            .collect()
    }
}

/// Runs writes of one kind with `stmt` (an `…_many` statement) as one statement, in order; what
/// each did, in the same order. The writes' keys must be distinct.
pub(crate) async fn run_many(
    client: &Client,
    stmt: &Statement,
    writes: &[&Write],
) -> Result<Vec<Applied>, tokio_postgres::Error> {
    let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
    let values: Vec<&[u8]> = writes.iter().map(|w| &w.value[..]).collect();
    let jsons: Vec<Option<JsonbText<'_>>> = writes
        .iter()
        .map(|w| JsonbText::param(&w.value, w.json))
        .collect();
    let ttls: Vec<Option<i64>> = writes.iter().map(|w| w.ttl_ms).collect();
    let rows = client.query(stmt, &[&keys, &values, &jsons, &ttls]).await?;
    let mut written: std::collections::HashMap<String, i64> =
        std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        written.insert(row.try_get(0)?, row.try_get(1)?);
    }
    Ok(writes
        .iter()
        .map(|w| {
            written
                .get(&w.key)
                .map_or(Applied::Refused, |v| Applied::Written(*v))
        })
        .collect())
}

/// Runs one step.
pub(crate) async fn run(
    client: &Client,
    stmt: &Statement,
    step: Step<'_>,
) -> Result<Applied, tokio_postgres::Error> {
    match step {
        Step::Set(w, kind, version) => {
            let value: &[u8] = &w.value;
            let json = JsonbText::param(value, w.json);
            let row = if kind == Kind::UpdateIf {
                client
                    .query_opt(stmt, &[&w.key, &value, &json, &w.ttl_ms, &version])
                    .await?
            } else {
                client
                    .query_opt(stmt, &[&w.key, &value, &json, &w.ttl_ms])
                    .await?
            };
            match row {
                Some(row) => Ok(Applied::Written(row.try_get(0)?)),
                None => Ok(Applied::Refused),
            }
        }
        Step::Delete(key, Kind::DeleteIf, version) => {
            let n = client.execute(stmt, &[&key, &version]).await?;
            Ok(if n == 0 {
                Applied::Refused
            } else {
                Applied::Deleted
            })
        }
        Step::Delete(key, Kind::DeleteReturningLive, _) => {
            let rows = client.query(stmt, &[&key]).await?;
            let mut was_live = false;
            for row in rows {
                was_live |= row.try_get::<_, bool>(0)?;
            }
            Ok(if was_live {
                Applied::Refused
            } else {
                Applied::Deleted
            })
        }
        Step::Delete(key, _, _) => {
            client.execute(stmt, &[&key]).await?;
            Ok(Applied::Deleted)
        }
    }
}

/// The result a caller sees for a step that applied as `applied`.
pub(crate) fn set_result(key: &str, applied: Applied) -> Result<String, StateError> {
    match applied {
        Applied::Written(v) => Ok(v.to_string()),
        Applied::Refused | Applied::Deleted => Err(StateError::EtagMismatch {
            key: key.to_string(),
        }),
    }
}

/// The result a caller sees for a delete step that applied as `applied`.
pub(crate) fn delete_result(key: &str, applied: Applied) -> Result<(), StateError> {
    match applied {
        Applied::Deleted | Applied::Written(_) => Ok(()),
        Applied::Refused => Err(StateError::EtagMismatch {
            key: key.to_string(),
        }),
    }
}
