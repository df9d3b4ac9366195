//! `multi`: a transaction that checks every condition first, then applies every operation in
//! order, all or nothing.
//!
//! 1. Every request is validated; a bad one aborts before anything is sent.
//! 2. If any operation has a condition (an ETag, or first-write), the live rows of those keys
//!    are read and locked (`FOR UPDATE`, in key order) and every condition is checked against
//!    that pre-transaction state; the first that fails aborts.
//! 3. The operations run in list order, pipelined behind the lock in the same round trip (if a
//!    check then fails, the transaction is rolled back with them). Locked rows cannot change under the
//!    transaction. A key the check found absent (for a first-write) cannot be locked, so until
//!    the transaction writes it, the operations on it run conditionally (an insert that yields
//!    to a live row, a delete that reports whether it met one): a concurrent writer that created
//!    the key meanwhile aborts the transaction instead of being silently overwritten.
//! 4. Commit, or roll back on any failure.
//!
//! Failures of the request abort with [`StateError::TransactionAborted`] naming the operation.
//! A failure of the server or the connection is returned as the [`StateError::Backend`] it is
//! (so a retry policy sees whether it is transient); the transaction is rolled back — except
//! when the connection is lost during the commit itself, when the outcome is unknown, as for any
//! database client.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::pipeline;
use super::write::{run_many, Applied, Expect, Kind, Prepared, Remove, Step, Write};
use super::Inner;
use crate::error::StateError;
use crate::store::TxOperation;

/// A validated operation of the transaction.
enum Op {
    /// A write.
    Set(Write),
    /// A delete.
    Delete(Remove),
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Set(w) => &w.key,
            Op::Delete(r) => &r.key,
        }
    }

    fn expect(&self) -> Expect {
        match self {
            Op::Set(w) => w.expect,
            Op::Delete(r) => r.expect,
        }
    }
}

/// `cause` as the abort of operation `index` on `key`.
fn abort(index: usize, key: &str, cause: StateError) -> StateError {
    StateError::TransactionAborted {
        index,
        key: key.to_string(),
        source: Box::new(cause),
    }
}

fn mismatch(index: usize, key: &str) -> StateError {
    abort(
        index,
        key,
        StateError::EtagMismatch {
            key: key.to_string(),
        },
    )
}

/// What one pipelined statement of the transaction answered.
enum Answer {
    /// The lock of the conditional keys: their live rows' versions.
    Locked(Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>),
    /// One write.
    Applied(Result<Applied, tokio_postgres::Error>),
    /// A run of writes of one kind, in order.
    AppliedMany(Result<Vec<Applied>, tokio_postgres::Error>),
}

/// `steps` cut into runs, each answered by one statement: two or more consecutive writes of a
/// kind that has a many-row statement, on distinct keys (with that statement), or one step.
fn runs(steps: &[Step<'_>]) -> Vec<(Range<usize>, Option<Kind>)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < steps.len() {
        let first = steps[start];
        let many = match first {
            Step::Set(_, kind, _) => kind.many(),
            Step::Delete(..) => None,
        };
        let mut end = start + 1;
        if many.is_some() {
            let mut keys: HashSet<&str> = HashSet::from([first.key()]);
            while end < steps.len()
                && matches!(steps[end], Step::Set(..))
                && steps[end].kind() == first.kind()
                && keys.insert(steps[end].key())
            {
                end += 1;
            }
        }
        out.push((start..end, if end - start > 1 { many } else { None }));
        start = end;
    }
    out
}

/// Runs `ops` as one transaction (see the module documentation).
pub(crate) async fn multi(inner: &Inner, ops: Vec<TxOperation>) -> Result<(), StateError> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut validated = Vec::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        let key = op.key().to_string();
        let checked = match op {
            TxOperation::Upsert(req) => Write::new(req).map(Op::Set),
            TxOperation::Delete(req) => Remove::new(req).map(Op::Delete),
        };
        validated.push(checked.map_err(|cause| abort(index, &key, cause))?);
    }
    if let Some((index, op)) = validated
        .iter()
        .enumerate()
        .find(|(_, op)| op.expect() == Expect::Never)
    {
        return Err(mismatch(index, op.key()));
    }

    let what = format!("transaction of {} operations", validated.len());
    let target = &inner.target;
    let mut client = inner.client(|| what.clone()).await?;
    let conditional: Vec<&str> = validated
        .iter()
        .filter(|op| op.expect() != Expect::Any)
        .map(Op::key)
        .collect();
    let mut kinds: Vec<Kind> = Vec::new();
    for op in &validated {
        kinds.extend(match op {
            Op::Set(_) => [Kind::Upsert, Kind::InsertAbsent],
            Op::Delete(_) => [Kind::Delete, Kind::DeleteReturningLive],
        });
    }
    if validated
        .iter()
        .filter(|op| matches!(op, Op::Set(_)))
        .count()
        > 1
    {
        kinds.extend([Kind::UpsertMany, Kind::InsertAbsentMany]);
    }
    let prepared = Prepared::new(&client, &inner.sql, kinds)
        .await
        .map_err(|e| target.pg(&what, &e))?;
    let lock = if conditional.is_empty() {
        None
    } else {
        Some(
            client
                .prepare_cached(&inner.sql.lock_versions)
                .await
                .map_err(|e| target.pg(&what, &e))?,
        )
    };

    let tx = client
        .transaction()
        .await
        .map_err(|e| target.pg(&what, &e))?;

    // The writes are planned as if every check passes (when one fails, the transaction is
    // rolled back whatever they did): a key that a first-write needs absent is written
    // conditionally until the transaction's own first write of it, since a concurrent writer
    // could create it meanwhile.
    let guarded: HashSet<&str> = validated
        .iter()
        .filter(|op| op.expect() == Expect::Absent)
        .map(Op::key)
        .collect();
    let mut created: HashSet<&str> = HashSet::new();
    let steps: Vec<Step<'_>> = validated
        .iter()
        .map(|op| {
            let guard = guarded.contains(op.key()) && !created.contains(op.key());
            match (op, guard) {
                (Op::Set(w), false) => Step::Set(w, Kind::Upsert, 0),
                (Op::Set(w), true) => {
                    created.insert(op.key());
                    Step::Set(w, Kind::InsertAbsent, 0)
                }
                (Op::Delete(r), false) => Step::Delete(&r.key, Kind::Delete, 0),
                (Op::Delete(r), true) => Step::Delete(&r.key, Kind::DeleteReturningLive, 0),
            }
        })
        .collect();

    // One round trip: the lock (`FOR UPDATE`, executed first, so no locked row changes before
    // the writes) and every write, pipelined; a run of writes of one kind is one statement.
    let runs = runs(&steps);
    let mut pipelined: Vec<pipeline::Op<'_, Answer>> = Vec::with_capacity(runs.len() + 1);
    if let Some(lock) = &lock {
        let tx = &tx;
        let conditional = &conditional;
        pipelined.push(Box::pin(async move {
            Answer::Locked(tx.query(lock, &[conditional]).await)
        }));
    }
    for (range, many) in &runs {
        match many {
            Some(kind) => {
                let stmt = prepared.statement(*kind)?;
                let writes: Vec<&Write> = steps[range.clone()]
                    .iter()
                    .filter_map(|step| match step {
                        Step::Set(w, _, _) => Some(*w),
                        Step::Delete(..) => None,
                    })
                    .collect();
                let client = tx.client();
                pipelined.push(Box::pin(async move {
                    Answer::AppliedMany(run_many(client, stmt, &writes).await)
                }));
            }
            None => {
                for op in prepared.ops(tx.client(), &steps[range.clone()])? {
                    pipelined.push(Box::pin(async move { Answer::Applied(op.await) }));
                }
            }
        }
    }
    let mut answers = pipeline::in_order(pipelined).await.into_iter();
    if lock.is_some() {
        let rows = match answers.next() {
            Some(Answer::Locked(rows)) => rows.map_err(|e| target.pg(&what, &e))?,
            _ => {
                return Err(target.permanent(&what, "internal error: the lock's answer is missing"))
            }
        };
        let mut stored: HashMap<String, i64> = HashMap::with_capacity(rows.len());
        for row in rows {
            let key: String = row.try_get(0).map_err(|e| target.pg(&what, &e))?;
            let version: i64 = row.try_get(1).map_err(|e| target.pg(&what, &e))?;
            stored.insert(key, version);
        }
        for (index, op) in validated.iter().enumerate() {
            if !op.expect().holds(stored.get(op.key()).copied()) {
                // Dropping the transaction rolls it back, writes included.
                return Err(mismatch(index, op.key()));
            }
        }
    }
    let mut index = 0;
    for answer in answers {
        let applied = match answer {
            Answer::Applied(Ok(a)) => vec![a],
            Answer::AppliedMany(Ok(many)) => many,
            Answer::Applied(Err(e)) | Answer::AppliedMany(Err(e)) => {
                return Err(target.pg(&format!("{what}, operation {index}"), &e))
            }
            Answer::Locked(_) => {
                return Err(target.permanent(&what, "internal error: a write's answer is missing"))
            }
        };
        for a in applied {
            let Some(step) = steps.get(index) else {
                return Err(target.permanent(&what, "internal error: more answers than writes"));
            };
            if a == Applied::Refused {
                return Err(mismatch(index, step.key()));
            }
            index += 1;
        }
    }
    if index != steps.len() {
        return Err(target.permanent(&what, "internal error: a write's answer is missing"));
    }
    tx.commit()
        .await
        .map_err(|e| target.pg(&format!("commit the {what}"), &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Concurrency, SetRequest};

    fn write(key: &str) -> Write {
        Write::new(SetRequest::new(key, "v".to_string()).with_concurrency(Concurrency::FirstWrite))
            .expect("valid")
    }

    #[test]
    fn runs_group_consecutive_writes_of_one_kind_on_distinct_keys() {
        let (a, b, c, e) = (write("a"), write("b"), write("c"), write("e"));
        let steps = [
            Step::Set(&a, Kind::InsertAbsent, 0),
            Step::Set(&b, Kind::InsertAbsent, 0),
            Step::Set(&c, Kind::Upsert, 0),
            Step::Delete("d", Kind::Delete, 0),
            Step::Set(&e, Kind::Upsert, 0),
            Step::Set(&b, Kind::Upsert, 0),
            // The same key again: a new run, so the two writes of `b` keep their order.
            Step::Set(&b, Kind::Upsert, 0),
            Step::Set(&c, Kind::UpdateIf, 3),
            Step::Set(&a, Kind::UpdateIf, 4),
        ];
        let got: Vec<_> = runs(&steps);
        assert_eq!(
            got,
            vec![
                (0..2, Some(Kind::InsertAbsentMany)),
                (2..3, None),
                (3..4, None),
                (4..6, Some(Kind::UpsertMany)),
                (6..7, None),
                (7..8, None),
                (8..9, None),
            ]
        );
    }
}
