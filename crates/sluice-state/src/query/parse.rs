//! Dapr's JSON form of a query, read into [`Query`] (and written back, for clients and tests).

use serde_json::{Map, Value};

use super::{Filter, Query, Sort};
use crate::error::StateError;
use crate::store::Page;

/// How deeply AND / OR may nest; deeper filters are refused rather than risking the stack.
const MAX_DEPTH: usize = 32;

/// The operators of a filter, as Dapr spells them.
const OPERATORS: &str = "EQ, NEQ, GT, GTE, LT, LTE, IN, AND, OR";

/// An invalid-request error about the part of the query at `at`.
fn invalid(at: &str, message: impl std::fmt::Display) -> StateError {
    if at.is_empty() {
        StateError::InvalidRequest(format!("query: {message}"))
    } else {
        StateError::InvalidRequest(format!("query {at}: {message}"))
    }
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads a whole query.
pub(super) fn query(value: &Value) -> Result<Query, StateError> {
    let obj = value.as_object().ok_or_else(|| {
        invalid(
            "",
            format!("a query must be a JSON object, got {}", kind(value)),
        )
    })?;
    if let Some(unknown) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "filter" | "sort" | "page"))
    {
        return Err(invalid(
            unknown,
            "unknown field; a query has `filter`, `sort` and `page`",
        ));
    }
    let filter = match obj.get("filter") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(f) => Some(filter(f, "filter", 0)?),
    };
    let sort = match obj.get("sort") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(entries)) => entries
            .iter()
            .enumerate()
            .map(|(i, e)| sort_entry(e, &format!("sort[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(invalid(
                "sort",
                format!(
                    "must be an array of {{\"key\": ..., \"order\": \"ASC\"|\"DESC\"}}, got {}",
                    kind(other)
                ),
            ))
        }
    };
    let page = match obj.get("page") {
        None | Some(Value::Null) => Page::default(),
        Some(p) => page(p)?,
    };
    Ok(Query { filter, sort, page })
}

/// Reads one filter at location `at`, `depth` levels below the top.
fn filter(value: &Value, at: &str, depth: usize) -> Result<Filter, StateError> {
    if depth > MAX_DEPTH {
        return Err(invalid(
            at,
            format!("filters nest deeper than {MAX_DEPTH} levels"),
        ));
    }
    let obj = value.as_object().ok_or_else(|| {
        invalid(
            at,
            format!(
                "a filter must be an object with one operator ({OPERATORS}), got {}",
                kind(value)
            ),
        )
    })?;
    let mut entries = obj.iter();
    let (op, operand) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        _ => {
            let ops: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(invalid(
                at,
                format!(
                    "a filter must have exactly one operator ({OPERATORS}), got {}: {ops:?}",
                    ops.len()
                ),
            ));
        }
    };
    let at = format!("{at}.{op}");
    match op.as_str() {
        "AND" | "OR" => {
            let list = operand.as_array().ok_or_else(|| {
                invalid(
                    &at,
                    format!("takes an array of filters, got {}", kind(operand)),
                )
            })?;
            if list.is_empty() {
                return Err(invalid(&at, "needs at least one filter"));
            }
            let filters = list
                .iter()
                .enumerate()
                .map(|(i, f)| filter(f, &format!("{at}[{i}]"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if op == "AND" {
                Filter::And(filters)
            } else {
                Filter::Or(filters)
            })
        }
        "EQ" | "NEQ" => {
            let (field, v) = comparison(operand, &at)?;
            Ok(if op == "EQ" {
                Filter::Eq(field, v.clone())
            } else {
                Filter::Neq(field, v.clone())
            })
        }
        "GT" | "GTE" | "LT" | "LTE" => {
            let (field, v) = comparison(operand, &at)?;
            if !(v.is_number() || v.is_string()) {
                return Err(invalid(
                    &format!("{at}.{field}"),
                    format!("compares numbers or strings, got {}", kind(v)),
                ));
            }
            let v = v.clone();
            Ok(match op.as_str() {
                "GT" => Filter::Gt(field, v),
                "GTE" => Filter::Gte(field, v),
                "LT" => Filter::Lt(field, v),
                _ => Filter::Lte(field, v),
            })
        }
        "IN" => {
            let (field, v) = comparison(operand, &at)?;
            let values = v.as_array().ok_or_else(|| {
                invalid(
                    &format!("{at}.{field}"),
                    format!("takes an array of values, got {}", kind(v)),
                )
            })?;
            Ok(Filter::In(field, values.clone()))
        }
        other => {
            let hint = if OPERATORS
                .split(", ")
                .any(|known| known.eq_ignore_ascii_case(other))
            {
                " (operators are upper case)"
            } else {
                ""
            };
            Err(invalid(
                &at,
                format!("unknown operator {other:?}{hint}; expected one of {OPERATORS}"),
            ))
        }
    }
}

/// Reads the `{"field.path": value}` operand of a comparison.
fn comparison<'v>(operand: &'v Value, at: &str) -> Result<(String, &'v Value), StateError> {
    let obj = operand.as_object().ok_or_else(|| {
        invalid(
            at,
            format!(
                "takes an object with one field path and its value, got {}",
                kind(operand)
            ),
        )
    })?;
    let mut entries = obj.iter();
    match (entries.next(), entries.next()) {
        (Some((field, value)), None) => {
            field_path(field, at)?;
            Ok((field.clone(), value))
        }
        _ => Err(invalid(
            at,
            format!(
                "takes an object with exactly one field path and its value, got {} fields",
                obj.len()
            ),
        )),
    }
}

/// Checks a dotted field path: non-empty parts.
fn field_path(path: &str, at: &str) -> Result<(), StateError> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(invalid(
            at,
            format!("{path:?} is not a field path (names separated by dots, none empty)"),
        ));
    }
    Ok(())
}

/// Reads one entry of `sort`.
fn sort_entry(value: &Value, at: &str) -> Result<Sort, StateError> {
    let obj = value.as_object().ok_or_else(|| {
        invalid(
            at,
            format!(
                "must be an object {{\"key\": ..., \"order\": \"ASC\"|\"DESC\"}}, got {}",
                kind(value)
            ),
        )
    })?;
    if let Some(unknown) = obj.keys().find(|k| !matches!(k.as_str(), "key" | "order")) {
        return Err(invalid(
            &format!("{at}.{unknown}"),
            "unknown field; a sort entry has `key` and `order`",
        ));
    }
    let key = match obj.get("key") {
        Some(Value::String(k)) => k.clone(),
        Some(other) => {
            return Err(invalid(
                &format!("{at}.key"),
                format!("must be a field path, got {}", kind(other)),
            ))
        }
        None => return Err(invalid(at, "has no `key`")),
    };
    field_path(&key, &format!("{at}.key"))?;
    let descending = match obj.get("order") {
        None | Some(Value::Null) => false,
        Some(Value::String(o)) if o.eq_ignore_ascii_case("ASC") => false,
        Some(Value::String(o)) if o.eq_ignore_ascii_case("DESC") => true,
        Some(other) => {
            return Err(invalid(
                &format!("{at}.order"),
                format!("must be \"ASC\" or \"DESC\", got {other}"),
            ))
        }
    };
    Ok(Sort { key, descending })
}

/// Reads `page`.
fn page(value: &Value) -> Result<Page, StateError> {
    let obj = value.as_object().ok_or_else(|| {
        invalid(
            "page",
            format!(
                "must be an object {{\"limit\": n, \"token\": \"...\"}}, got {}",
                kind(value)
            ),
        )
    })?;
    if let Some(unknown) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "token"))
    {
        return Err(invalid(
            &format!("page.{unknown}"),
            "unknown field; a page has `limit` and `token`",
        ));
    }
    let limit = match obj.get("limit") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let n = n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        "page.limit",
                        format!("must be a whole number from 0 up, got {n}"),
                    )
                })?;
            (n > 0).then_some(n)
        }
        Some(other) => {
            return Err(invalid(
                "page.limit",
                format!("must be a whole number, got {}", kind(other)),
            ))
        }
    };
    let token = match obj.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.is_empty() => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(other) => {
            return Err(invalid(
                "page.token",
                format!(
                    "must be the string a previous page returned, got {}",
                    kind(other)
                ),
            ))
        }
    };
    Ok(Page { limit, token })
}

/// The Dapr JSON form of `q`.
pub(super) fn to_json(q: &Query) -> Value {
    let mut out = Map::new();
    if let Some(f) = &q.filter {
        out.insert("filter".into(), filter_json(f));
    }
    if !q.sort.is_empty() {
        let sort = q
            .sort
            .iter()
            .map(|s| {
                let order = if s.descending { "DESC" } else { "ASC" };
                serde_json::json!({ "key": s.key, "order": order })
            })
            .collect();
        out.insert("sort".into(), Value::Array(sort));
    }
    let mut page = Map::new();
    if let Some(limit) = q.page.limit {
        page.insert("limit".into(), Value::from(limit));
    }
    if let Some(token) = &q.page.token {
        page.insert("token".into(), Value::String(token.clone()));
    }
    if !page.is_empty() {
        out.insert("page".into(), Value::Object(page));
    }
    Value::Object(out)
}

/// The Dapr JSON form of one filter.
fn filter_json(f: &Filter) -> Value {
    let one = |op: &str, field: &str, v: Value| {
        let mut operand = Map::new();
        operand.insert(field.to_string(), v);
        let mut outer = Map::new();
        outer.insert(op.to_string(), Value::Object(operand));
        Value::Object(outer)
    };
    let list = |op: &str, fs: &[Filter]| {
        let mut outer = Map::new();
        outer.insert(
            op.to_string(),
            Value::Array(fs.iter().map(filter_json).collect()),
        );
        Value::Object(outer)
    };
    match f {
        Filter::Eq(k, v) => one("EQ", k, v.clone()),
        Filter::Neq(k, v) => one("NEQ", k, v.clone()),
        Filter::Gt(k, v) => one("GT", k, v.clone()),
        Filter::Gte(k, v) => one("GTE", k, v.clone()),
        Filter::Lt(k, v) => one("LT", k, v.clone()),
        Filter::Lte(k, v) => one("LTE", k, v.clone()),
        Filter::In(k, vs) => one("IN", k, Value::Array(vs.clone())),
        Filter::And(fs) => list("AND", fs),
        Filter::Or(fs) => list("OR", fs),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<Query, StateError> {
        query(&v)
    }

    /// The message of an invalid request, failing on anything else.
    fn message(v: Value) -> String {
        match parse(v.clone()) {
            Err(StateError::InvalidRequest(m)) => m,
            other => panic!("{v}: want InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn reads_every_part_of_a_dapr_query() {
        let q = parse(json!({
            "filter": {"OR": [
                {"EQ": {"person.org": "Dev Ops"}},
                {"AND": [
                    {"EQ": {"person.org": "Finance"}},
                    {"IN": {"state": ["CA", "WA"]}},
                    {"NEQ": {"x": null}},
                    {"GT": {"id": 3}}, {"GTE": {"id": 3.5}}, {"LT": {"n": "m"}}, {"LTE": {"n": -1}}
                ]}
            ]},
            "sort": [{"key": "state", "order": "DESC"}, {"key": "person.id"}, {"key": "a", "order": "asc"}],
            "page": {"limit": 3, "token": "6"}
        }))
        .unwrap();
        assert_eq!(
            q.filter,
            Some(Filter::Or(vec![
                Filter::Eq("person.org".into(), json!("Dev Ops")),
                Filter::And(vec![
                    Filter::Eq("person.org".into(), json!("Finance")),
                    Filter::In("state".into(), vec![json!("CA"), json!("WA")]),
                    Filter::Neq("x".into(), Value::Null),
                    Filter::Gt("id".into(), json!(3)),
                    Filter::Gte("id".into(), json!(3.5)),
                    Filter::Lt("n".into(), json!("m")),
                    Filter::Lte("n".into(), json!(-1)),
                ]),
            ]))
        );
        assert_eq!(
            q.sort,
            vec![
                Sort {
                    key: "state".into(),
                    descending: true
                },
                Sort {
                    key: "person.id".into(),
                    descending: false
                },
                Sort {
                    key: "a".into(),
                    descending: false
                },
            ]
        );
        assert_eq!(
            q.page,
            Page {
                limit: Some(3),
                token: Some("6".into())
            }
        );
    }

    #[test]
    fn every_part_is_optional() {
        for v in [
            json!({}),
            json!({"filter": null, "sort": null, "page": null}),
            json!({"filter": {}, "sort": [], "page": {}}),
            json!({"page": {"limit": 0, "token": ""}}),
        ] {
            assert_eq!(parse(v).unwrap(), Query::default());
        }
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            (json!(null), "a query must be a JSON object, got null"),
            (json!([]), "a query must be a JSON object, got an array"),
            (json!({"filters": {}}), "query filters: unknown field"),
            (
                json!({"filter": 1}),
                "query filter: a filter must be an object",
            ),
            (
                json!({"filter": {"EQ": {"a": 1}, "NEQ": {"b": 2}}}),
                "exactly one operator",
            ),
            (
                json!({"filter": {"eq": {"a": 1}}}),
                "unknown operator \"eq\" (operators are upper case)",
            ),
            (
                json!({"filter": {"LIKE": {"a": 1}}}),
                "query filter.LIKE: unknown operator",
            ),
            (
                json!({"filter": {"EQ": {}}}),
                "query filter.EQ: takes an object with exactly one field path",
            ),
            (json!({"filter": {"EQ": {"a": 1, "b": 2}}}), "got 2 fields"),
            (
                json!({"filter": {"EQ": "a"}}),
                "query filter.EQ: takes an object",
            ),
            (
                json!({"filter": {"EQ": {"a..b": 1}}}),
                "\"a..b\" is not a field path",
            ),
            (
                json!({"filter": {"EQ": {"": 1}}}),
                "\"\" is not a field path",
            ),
            (
                json!({"filter": {"GT": {"a": true}}}),
                "query filter.GT.a: compares numbers or strings, got a boolean",
            ),
            (
                json!({"filter": {"LTE": {"a": [1]}}}),
                "query filter.LTE.a: compares numbers or strings, got an array",
            ),
            (
                json!({"filter": {"IN": {"a": 1}}}),
                "query filter.IN.a: takes an array of values",
            ),
            (
                json!({"filter": {"AND": {}}}),
                "query filter.AND: takes an array of filters",
            ),
            (
                json!({"filter": {"OR": []}}),
                "query filter.OR: needs at least one filter",
            ),
            (
                json!({"filter": {"AND": [{"EQ": {"a": 1}}, {"GT": {"b": null}}]}}),
                "query filter.AND[1].GT.b: compares",
            ),
            (json!({"sort": {}}), "query sort: must be an array"),
            (json!({"sort": ["a"]}), "query sort[0]: must be an object"),
            (
                json!({"sort": [{"order": "ASC"}]}),
                "query sort[0]: has no `key`",
            ),
            (
                json!({"sort": [{"key": 1}]}),
                "query sort[0].key: must be a field path",
            ),
            (
                json!({"sort": [{"key": "a", "order": "UP"}]}),
                "query sort[0].order: must be \"ASC\" or \"DESC\", got \"UP\"",
            ),
            (
                json!({"sort": [{"key": "a", "dir": "ASC"}]}),
                "query sort[0].dir: unknown field",
            ),
            (json!({"page": 5}), "query page: must be an object"),
            (
                json!({"page": {"limit": -1}}),
                "query page.limit: must be a whole number from 0 up, got -1",
            ),
            (json!({"page": {"limit": 1.5}}), "got 1.5"),
            (
                json!({"page": {"limit": "10"}}),
                "query page.limit: must be a whole number, got a string",
            ),
            (
                json!({"page": {"token": 3}}),
                "query page.token: must be the string",
            ),
            (
                json!({"page": {"size": 3}}),
                "query page.size: unknown field",
            ),
        ];
        for (input, want) in cases {
            let got = message(input.clone());
            assert!(
                got.contains(want),
                "{input}: {got:?} does not contain {want:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let mut f = json!({"EQ": {"a": 1}});
        for _ in 0..40 {
            f = json!({ "AND": [f] });
        }
        assert!(message(json!({ "filter": f })).contains("nest deeper than 32"));
        let mut ok = json!({"EQ": {"a": 1}});
        for _ in 0..MAX_DEPTH {
            ok = json!({ "OR": [ok] });
        }
        parse(json!({ "filter": ok })).unwrap();
    }

    #[test]
    fn to_json_reads_back_as_the_same_query() {
        let q = parse(json!({
            "filter": {"AND": [{"EQ": {"a.b": [1, {"c": 2}]}}, {"OR": [{"IN": {"x": []}}, {"LT": {"y": 2}}]}]},
            "sort": [{"key": "a", "order": "DESC"}, {"key": "b"}],
            "page": {"limit": 9, "token": "18"}
        }))
        .unwrap();
        assert_eq!(parse(q.to_json()).unwrap(), q);
        assert_eq!(parse(Query::default().to_json()).unwrap(), Query::default());
    }

    #[test]
    fn arbitrary_json_never_panics() {
        // A small deterministic generator of odd JSON shapes around the query grammar.
        let atoms = [
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(1.5),
            json!(""),
            json!("x"),
            json!([]),
            json!({}),
            json!(["EQ"]),
            json!({"EQ": {}}),
            json!({"a": 1}),
        ];
        let ops = [
            "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "IN", "AND", "OR", "filter", "sort", "page",
            "limit", "token", "key", "order",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        fn build(
            depth: u32,
            next: &mut dyn FnMut() -> u64,
            atoms: &[Value],
            ops: &[&str],
        ) -> Value {
            let r = next();
            if depth == 0 || r.is_multiple_of(3) {
                return atoms[(r / 3) as usize % atoms.len()].clone();
            }
            if r % 3 == 1 {
                let n = (r / 3 % 3) as usize;
                Value::Array((0..n).map(|_| build(depth - 1, next, atoms, ops)).collect())
            } else {
                let n = (r / 3 % 3) as usize;
                let mut m = Map::new();
                for _ in 0..n {
                    let k = ops[next() as usize % ops.len()];
                    m.insert(k.to_string(), build(depth - 1, next, atoms, ops));
                }
                Value::Object(m)
            }
        }
        for _ in 0..20_000 {
            let v = build(5, &mut next, &atoms, &ops);
            if let Ok(q) = parse(v.clone()) {
                // Whatever parses, writes back to the same query.
                assert_eq!(parse(q.to_json()).unwrap(), q, "{v}");
            }
        }
    }
}
