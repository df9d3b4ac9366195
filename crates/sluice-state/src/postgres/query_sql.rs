//! Queries over JSON values, translated to SQL over the `value_json` column.
//!
//! [`crate::query::matches`] defines the semantics and was written to agree with `jsonb`, so the
//! translation is direct:
//!
//! | filter | SQL (`f` is the field: `value_json -> $a -> $b …`) |
//! |---|---|
//! | `EQ` | `f = $v` (jsonb equality: structural, numbers numeric at every depth) |
//! | `NEQ` | `f IS NULL OR f <> $v` (an absent field differs) |
//! | `GT` … `LTE` on a number | `jsonb_typeof(f) = 'number' AND f > $v` |
//! | `GT` … `LTE` on a string | `jsonb_typeof(f) = 'string' AND (f #>> '{}') COLLATE "C" > $s` |
//! | `GT` … `LTE` on anything else | `FALSE` |
//! | `IN` | `f = ANY($vs::jsonb[])` |
//! | `AND` / `OR` | the same, `TRUE` / `FALSE` when empty |
//!
//! A path walks objects only, as [`crate::query::lookup`] does: each step is `-> $text`, which
//! yields NULL on an array or a scalar (`#>` would index arrays). Sorting orders by the kind of
//! value (null, string, number, boolean, array, object, then absent — `NULLS LAST` ascending),
//! then strings by code point (`COLLATE "C"`) and numbers and booleans as jsonb does, then by
//! key. Pages are `LIMIT`/`OFFSET` with the offset as the token, the token format of
//! [`crate::query::run`].
//!
//! One case is answered by [`crate::query::run`] in Sluice instead, over the rows the translated
//! filter selects (at most [`MAX_EVALUATED_ROWS`], else an [`StateError::InvalidRequest`]): a
//! sort key whose value is an array or an object in some matching row (jsonb orders those by
//! size first, Sluice element by element). The query notices that case itself (a window column
//! over the matching rows) and runs again that way.
//!
//! Known differences from the in-process evaluation: numbers with more digits than an `f64`
//! holds compare exactly in PostgreSQL (Sluice rounds them to `f64`), and a JSON object holding
//! `\u0000` in a string, which `jsonb` cannot store, is not found by queries.

use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use super::sql::LIVE;
use super::{item, Inner};
use crate::error::StateError;
use crate::keys::page_limit;
use crate::query::{self, Filter, Query, QueryResponse, QueryResult, Sort};

/// Most rows a query evaluated in Sluice may select (see the module documentation).
pub(crate) const MAX_EVALUATED_ROWS: usize = 100_000;

/// An SQL text with its parameters, built up in order.
#[derive(Default)]
struct Params {
    values: Vec<(Box<dyn ToSql + Sync + Send>, Type)>,
}

impl Params {
    /// Adds a parameter and returns its placeholder (`$n`).
    fn push(&mut self, value: impl ToSql + Sync + Send + 'static, ty: Type) -> String {
        self.values.push((Box::new(value), ty));
        format!("${}", self.values.len())
    }

    /// The field at dotted `path` of `value_json`, walking objects only.
    fn field(&mut self, path: &str) -> String {
        let mut out = String::from("value_json");
        for part in path.split('.') {
            let p = self.push(part.to_string(), Type::TEXT);
            out.push_str(" -> ");
            out.push_str(&p);
        }
        format!("({out})")
    }

    /// The parameters as `query_typed` takes them.
    fn as_typed(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.values
            .iter()
            .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect()
    }
}

/// The SQL condition of `filter`.
fn condition(filter: &Filter, p: &mut Params) -> String {
    let ordered = |path: &str, want: &Value, op: &str, p: &mut Params| match want {
        Value::Number(_) => {
            let f = p.field(path);
            let v = p.push(want.clone(), Type::JSONB);
            format!("(jsonb_typeof({f}) = 'number' AND {f} {op} {v})")
        }
        Value::String(s) => {
            let f = p.field(path);
            let v = p.push(s.clone(), Type::TEXT);
            format!("(jsonb_typeof({f}) = 'string' AND ({f} #>> '{{}}') COLLATE \"C\" {op} {v})")
        }
        _ => "FALSE".to_string(),
    };
    match filter {
        Filter::Eq(path, want) => {
            let f = p.field(path);
            let v = p.push(want.clone(), Type::JSONB);
            format!("({f} = {v})")
        }
        Filter::Neq(path, want) => {
            let f = p.field(path);
            let v = p.push(want.clone(), Type::JSONB);
            format!("({f} IS NULL OR {f} <> {v})")
        }
        Filter::Gt(path, want) => ordered(path, want, ">", p),
        Filter::Gte(path, want) => ordered(path, want, ">=", p),
        Filter::Lt(path, want) => ordered(path, want, "<", p),
        Filter::Lte(path, want) => ordered(path, want, "<=", p),
        Filter::In(_, wants) if wants.is_empty() => "FALSE".to_string(),
        Filter::In(path, wants) => {
            let f = p.field(path);
            let v = p.push(wants.clone(), Type::JSONB_ARRAY);
            format!("({f} = ANY({v}))")
        }
        Filter::And(filters) => join(filters, " AND ", "TRUE", p),
        Filter::Or(filters) => join(filters, " OR ", "FALSE", p),
    }
}

/// The conditions of `filters` joined by `op`, or `empty` if there are none.
fn join(filters: &[Filter], op: &str, empty: &str, p: &mut Params) -> String {
    if filters.is_empty() {
        return empty.to_string();
    }
    let parts: Vec<String> = filters.iter().map(|f| condition(f, p)).collect();
    format!("({})", parts.join(op))
}

/// The `ORDER BY` terms of one sort key, and the test that its value is an array or object.
fn order_terms(sort: &Sort, p: &mut Params) -> (Vec<String>, String) {
    let f = p.field(&sort.key);
    let dir = if sort.descending {
        "DESC NULLS FIRST"
    } else {
        "ASC NULLS LAST"
    };
    let terms = vec![
        format!(
            "CASE jsonb_typeof({f}) WHEN 'null' THEN 0 WHEN 'string' THEN 1 WHEN 'number' THEN 2 \
             WHEN 'boolean' THEN 3 WHEN 'array' THEN 4 WHEN 'object' THEN 5 END {dir}"
        ),
        format!(
            "(CASE WHEN jsonb_typeof({f}) = 'string' THEN {f} #>> '{{}}' END) COLLATE \"C\" {dir}"
        ),
        format!("(CASE WHEN jsonb_typeof({f}) IN ('number', 'boolean') THEN {f} END) {dir}"),
    ];
    let composite = format!("jsonb_typeof({f}) IN ('array', 'object')");
    (terms, composite)
}

/// The offset a page token stands for (the token format of [`crate::query::run`]).
fn parse_token(token: Option<&str>) -> Result<usize, StateError> {
    let bad = |t: &str| {
        StateError::InvalidRequest(format!(
            "query page.token {t:?} is not a token a previous page of this store returned"
        ))
    };
    match token {
        None | Some("") => Ok(0),
        Some(t) if t.bytes().all(|b| b.is_ascii_digit()) => t.parse().map_err(|_| bad(t)),
        Some(t) => Err(bad(t)),
    }
}

/// Answers `q` (see the module documentation).
pub(crate) async fn run(inner: &Inner, q: &Query) -> Result<QueryResponse, StateError> {
    let offset = parse_token(q.page.token.as_deref())?;
    let limit = page_limit(&q.page);
    let table = &inner.names.table;
    let target = &inner.target;
    let what = "query";

    let mut p = Params::default();
    let filter = match &q.filter {
        Some(f) => condition(f, &mut p),
        None => "TRUE".to_string(),
    };
    let filter_params = p.values.len();
    let base = format!("FROM {table} WHERE value_json IS NOT NULL AND {LIVE} AND {filter}");
    let mut order: Vec<String> = Vec::new();
    let mut composites: Vec<String> = Vec::new();
    for sort in &q.sort {
        let (terms, composite) = order_terms(sort, &mut p);
        order.extend(terms);
        composites.push(composite);
    }
    order.push("key ASC".to_string());
    let composite_column = if composites.is_empty() {
        "FALSE".to_string()
    } else {
        format!(
            "coalesce(bool_or({}) OVER (), FALSE)",
            composites.join(" OR ")
        )
    };
    let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let fetch = p.push(to_i64(limit).saturating_add(1), Type::INT8);
    let skip = p.push(to_i64(offset), Type::INT8);
    let sql = format!(
        "SELECT key, value, version, expires_at, {composite_column} {base} \
         ORDER BY {} LIMIT {fetch} OFFSET {skip}",
        order.join(", ")
    );
    let client = inner.client(|| what.to_string()).await?;
    let rows = client
        .query_typed(&sql, &p.as_typed())
        .await
        .map_err(|e| target.pg(what, &e))?;
    let composite = match rows.first() {
        Some(row) => row.try_get::<_, bool>(4).map_err(|e| target.pg(what, &e))?,
        None => false,
    };
    if composite {
        // Keep only the filter's parameters, which come first.
        p.values.truncate(filter_params);
        return evaluate_in_sluice(inner, &client, &base, &p, q).await;
    }
    let mut results = rows
        .iter()
        .map(result)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| target.pg(what, &e))?;
    let token = if results.len() > limit {
        results.truncate(limit);
        Some(offset.saturating_add(limit).to_string())
    } else {
        None
    };
    Ok(QueryResponse { results, token })
}

/// The query result in the first four columns of `row`.
fn result(row: &Row) -> Result<QueryResult, tokio_postgres::Error> {
    Ok(QueryResult {
        key: row.try_get(0)?,
        item: item(row, 1)?,
    })
}

/// Selects the rows matching the filter (`base`, with the filter's parameters in `p`) and
/// answers the query over them with [`crate::query::run`].
async fn evaluate_in_sluice(
    inner: &Inner,
    client: &tokio_postgres::Client,
    base: &str,
    p: &Params,
    q: &Query,
) -> Result<QueryResponse, StateError> {
    let what = "query (sorting arrays or objects, evaluated in Sluice)";
    let target = &inner.target;
    let sql = format!(
        "SELECT key, value, version, expires_at {base} LIMIT {}",
        MAX_EVALUATED_ROWS + 1
    );
    let rows = client
        .query_typed(&sql, &p.as_typed())
        .await
        .map_err(|e| target.pg(what, &e))?;
    if rows.len() > MAX_EVALUATED_ROWS {
        return Err(StateError::InvalidRequest(format!(
            "the query sorts by a field holding arrays or objects, which the postgres store \
             sorts in Sluice, over at most {MAX_EVALUATED_ROWS} matching items; this filter \
             matches more: narrow it or sort by a scalar field"
        )));
    }
    let items = rows
        .iter()
        .map(|row| result(row).map(|r| (r.key, r.item)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| target.pg(what, &e))?;
    query::run(items.into_iter(), q)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sql(filter: &Filter) -> (String, usize) {
        let mut p = Params::default();
        let text = condition(filter, &mut p);
        (text, p.values.len())
    }

    #[test]
    fn every_value_is_a_parameter() {
        let (text, n) = sql(&Filter::Eq("a.b".into(), json!("x'; DROP TABLE t; --")));
        assert_eq!(text, "((value_json -> $1 -> $2) = $3)");
        assert_eq!(n, 3);
        assert!(!text.contains("DROP"));
    }

    #[test]
    fn comparisons_only_hold_between_like_kinds() {
        let (text, _) = sql(&Filter::Gt("n".into(), json!(5)));
        assert!(
            text.contains("jsonb_typeof((value_json -> $1)) = 'number'"),
            "{text}"
        );
        let (text, _) = sql(&Filter::Lte("s".into(), json!("m")));
        assert!(
            text.contains("= 'string'") && text.contains("COLLATE \"C\" <="),
            "{text}"
        );
        for odd in [json!(true), json!(null), json!([1]), json!({"a": 1})] {
            assert_eq!(sql(&Filter::Lt("x".into(), odd)).0, "FALSE");
        }
    }

    #[test]
    fn empty_combinations_and_lists() {
        assert_eq!(sql(&Filter::And(vec![])).0, "TRUE");
        assert_eq!(sql(&Filter::Or(vec![])).0, "FALSE");
        assert_eq!(sql(&Filter::In("a".into(), vec![])).0, "FALSE");
        let (text, n) = sql(&Filter::Or(vec![
            Filter::Neq("a".into(), json!(1)),
            Filter::In("b".into(), vec![json!(1), json!("x")]),
        ]));
        assert_eq!(
            text,
            "(((value_json -> $1) IS NULL OR (value_json -> $1) <> $2) OR \
             ((value_json -> $3) = ANY($4)))"
        );
        assert_eq!(n, 4);
    }

    #[test]
    fn tokens_are_offsets() {
        assert_eq!(parse_token(None).expect("none"), 0);
        assert_eq!(parse_token(Some("")).expect("empty"), 0);
        assert_eq!(parse_token(Some("12")).expect("12"), 12);
        for bad in ["-1", "a", "1.5", "99999999999999999999999999"] {
            assert!(
                matches!(parse_token(Some(bad)), Err(StateError::InvalidRequest(_))),
                "{bad}"
            );
        }
    }
}
