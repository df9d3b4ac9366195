//! Evaluating queries in process: a filter on one JSON value, and a whole query (filter, sort,
//! page) over a set of items, for backends without a query engine of their own.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::{Filter, Query, QueryResponse, QueryResult};
use crate::error::StateError;
use crate::keys::page_limit;
use crate::store::Item;

/// The value at the dotted `path` inside `value` (`person.org` is `value["person"]["org"]`), or
/// `None` if a step is missing or not an object.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, part| v.as_object()?.get(part))
}

/// True if `value`, a JSON object, satisfies `filter`. A value that is not an object matches no
/// filter.
///
/// EQ and IN compare numbers numerically (`1` equals `1.0`) and everything else structurally;
/// NEQ is the negation of EQ, so it also matches when the field is absent. GT, GTE, LT and LTE
/// compare two numbers numerically or two strings by Unicode code point; any other pair (mixed
/// kinds, an absent field, null) does not match.
pub fn matches(filter: &Filter, value: &Value) -> bool {
    value.is_object() && eval(filter, value)
}

/// [`matches()`] on a value known to be an object.
fn eval(filter: &Filter, value: &Value) -> bool {
    let ordered = |path: &str, want: &Value, ok: fn(Ordering) -> bool| {
        lookup(value, path)
            .and_then(|got| compare(got, want))
            .is_some_and(ok)
    };
    match filter {
        Filter::Eq(path, want) => lookup(value, path).is_some_and(|got| equal(got, want)),
        Filter::Neq(path, want) => !lookup(value, path).is_some_and(|got| equal(got, want)),
        Filter::Gt(path, want) => ordered(path, want, Ordering::is_gt),
        Filter::Gte(path, want) => ordered(path, want, Ordering::is_ge),
        Filter::Lt(path, want) => ordered(path, want, Ordering::is_lt),
        Filter::Lte(path, want) => ordered(path, want, Ordering::is_le),
        Filter::In(path, wants) => {
            lookup(value, path).is_some_and(|got| wants.iter().any(|w| equal(got, w)))
        }
        Filter::And(filters) => filters.iter().all(|f| eval(f, value)),
        Filter::Or(filters) => filters.iter().any(|f| eval(f, value)),
    }
}

/// Two numbers in order: exactly for integers, as `f64` otherwise.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let int = |n: &Number| n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// The order of two numbers or two strings; `None` for any other pair.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Structural equality, with numbers compared numerically at every depth.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// Rank of a kind of value in sort order (PostgreSQL's `jsonb` order: null, string, number,
/// boolean, array, object).
fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::String(_) => 1,
        Value::Number(_) => 2,
        Value::Bool(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// A total ascending order over sort values: present values by kind ([`rank`]) then value, and
/// an absent field after every present one (as SQL sorts NULL last in ascending order).
fn sort_order(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => rank(x).cmp(&rank(y)).then_with(|| match (x, y) {
            (Value::Bool(p), Value::Bool(q)) => p.cmp(q),
            (Value::Array(p), Value::Array(q)) => p
                .iter()
                .zip(q)
                .map(|(v, w)| sort_order(Some(v), Some(w)))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| p.len().cmp(&q.len())),
            (Value::Object(_), Value::Object(_)) => x.to_string().cmp(&y.to_string()),
            _ => compare(x, y).unwrap_or(Ordering::Equal),
        }),
    }
}

/// A result on its way through [`run`]: the key, the item and the values it sorts by.
struct Found {
    key: String,
    item: Item,
    sort_values: Vec<Option<Value>>,
}

/// Parses a page token of [`run`]: the offset of the page's first result.
fn parse_token(token: Option<&str>) -> Result<usize, StateError> {
    match token {
        None | Some("") => Ok(0),
        Some(t) if t.bytes().all(|b| b.is_ascii_digit()) => t.parse().map_err(|_| bad_token(t)),
        Some(t) => Err(bad_token(t)),
    }
}

/// The error for a page token this module did not hand out.
fn bad_token(token: &str) -> StateError {
    StateError::InvalidRequest(format!(
        "query page.token {token:?} is not a token a previous page of this store returned"
    ))
}

/// Answers `q` over `items` (every live item of a store; the order does not matter): keeps the
/// items whose value is a JSON object matching the filter (every object when there is none),
/// sorts them by the sort keys and then by key (so pages are stable), and returns one page.
///
/// The page token is the offset of the next page's first result, as decimal digits; a token that
/// is not one is [`StateError::InvalidRequest`]. Items written or deleted between two pages may
/// shift later pages by as many results.
pub fn run(
    items: impl Iterator<Item = (String, Item)>,
    q: &Query,
) -> Result<QueryResponse, StateError> {
    let offset = parse_token(q.page.token.as_deref())?;
    let limit = page_limit(&q.page);
    let mut found: Vec<Found> = Vec::new();
    for (key, item) in items {
        let Ok(value) = serde_json::from_slice::<Value>(&item.value) else {
            continue;
        };
        if !value.is_object() || q.filter.as_ref().is_some_and(|f| !eval(f, &value)) {
            continue;
        }
        let sort_values = q
            .sort
            .iter()
            .map(|s| lookup(&value, &s.key).cloned())
            .collect();
        found.push(Found {
            key,
            item,
            sort_values,
        });
    }
    found.sort_by(|a, b| {
        q.sort
            .iter()
            .zip(a.sort_values.iter().zip(&b.sort_values))
            .map(|(s, (x, y))| {
                let o = sort_order(x.as_ref(), y.as_ref());
                if s.descending {
                    o.reverse()
                } else {
                    o
                }
            })
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.key.cmp(&b.key))
    });
    let total = found.len();
    let end = offset.saturating_add(limit).min(total);
    let results = found
        .into_iter()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .map(|f| QueryResult {
            key: f.key,
            item: f.item,
        })
        .collect();
    let token = (end < total).then(|| end.to_string());
    Ok(QueryResponse { results, token })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::query::Sort;
    use crate::store::Page;

    fn f(v: Value) -> Filter {
        Query::from_json(&json!({ "filter": v }))
            .unwrap()
            .filter
            .unwrap()
    }

    #[test]
    fn lookup_walks_nested_objects_only() {
        let v = json!({"a": {"b": {"c": 1}}, "arr": [{"x": 1}], "s": "str"});
        assert_eq!(lookup(&v, "a.b.c"), Some(&json!(1)));
        assert_eq!(lookup(&v, "a.b"), Some(&json!({"c": 1})));
        assert_eq!(lookup(&v, "a.x"), None);
        assert_eq!(lookup(&v, "arr.0.x"), None);
        assert_eq!(lookup(&v, "s.len"), None);
    }

    #[test]
    fn eq_compares_numbers_numerically_and_others_structurally() {
        let v = json!({"i": 1, "f": 1.0, "big": u64::MAX, "s": "1", "n": null, "o": {"a": [1, 2.0]}, "b": false});
        assert!(matches(&f(json!({"EQ": {"i": 1.0}})), &v));
        assert!(matches(&f(json!({"EQ": {"f": 1}})), &v));
        assert!(matches(&f(json!({"EQ": {"big": u64::MAX}})), &v));
        assert!(!matches(&f(json!({"EQ": {"big": i64::MAX}})), &v));
        assert!(!matches(&f(json!({"EQ": {"i": "1"}})), &v));
        assert!(!matches(&f(json!({"EQ": {"s": 1}})), &v));
        assert!(matches(&f(json!({"EQ": {"n": null}})), &v));
        assert!(matches(&f(json!({"EQ": {"o": {"a": [1.0, 2]}}})), &v));
        assert!(!matches(&f(json!({"EQ": {"o": {"a": [1, 2, 3]}}})), &v));
        assert!(matches(&f(json!({"EQ": {"b": false}})), &v));
        assert!(!matches(&f(json!({"EQ": {"missing": null}})), &v));
    }

    #[test]
    fn neq_also_matches_an_absent_field() {
        let v = json!({"a": 1});
        assert!(!matches(&f(json!({"NEQ": {"a": 1}})), &v));
        assert!(matches(&f(json!({"NEQ": {"a": 2}})), &v));
        assert!(matches(&f(json!({"NEQ": {"b": 1}})), &v));
    }

    #[test]
    fn ordering_compares_like_kinds_only() {
        let v = json!({"n": 10, "x": 2.5, "s": "10", "neg": -3, "t": true});
        assert!(matches(&f(json!({"GT": {"n": 9}})), &v));
        assert!(!matches(&f(json!({"GT": {"n": 10}})), &v));
        assert!(matches(&f(json!({"GTE": {"n": 10}})), &v));
        assert!(matches(&f(json!({"LT": {"x": 3}})), &v));
        assert!(matches(&f(json!({"LTE": {"x": 2.5}})), &v));
        assert!(matches(&f(json!({"LT": {"neg": 0}})), &v));
        // Strings compare as strings: "10" < "9".
        assert!(matches(&f(json!({"LT": {"s": "9"}})), &v));
        // Mixed kinds never match, in either direction.
        for op in ["GT", "GTE", "LT", "LTE"] {
            assert!(
                !matches(&f(json!({ op: {"n": "5"} })), &v),
                "{op} number vs string"
            );
            assert!(
                !matches(&f(json!({ op: {"s": 5} })), &v),
                "{op} string vs number"
            );
            assert!(
                !matches(&f(json!({ op: {"t": 1} })), &v),
                "{op} bool vs number"
            );
            assert!(
                !matches(&f(json!({ op: {"missing": 1} })), &v),
                "{op} absent"
            );
        }
    }

    #[test]
    fn in_and_or_combine() {
        let v = json!({"state": "CA", "org": {"dept": "eng"}, "id": 3});
        assert!(matches(&f(json!({"IN": {"state": ["WA", "CA"]}})), &v));
        assert!(!matches(&f(json!({"IN": {"state": []}})), &v));
        assert!(matches(&f(json!({"IN": {"id": [3.0]}})), &v));
        let and = json!({"AND": [{"EQ": {"org.dept": "eng"}}, {"GT": {"id": 2}}]});
        assert!(matches(&f(and), &v));
        let and = json!({"AND": [{"EQ": {"org.dept": "eng"}}, {"GT": {"id": 3}}]});
        assert!(!matches(&f(and), &v));
        let or = json!({"OR": [{"EQ": {"org.dept": "ops"}}, {"LT": {"id": 4}}]});
        assert!(matches(&f(or), &v));
        assert!(!matches(&Filter::Or(vec![]), &v));
        assert!(matches(&Filter::And(vec![]), &v));
    }

    #[test]
    fn values_that_are_not_objects_never_match() {
        for v in [json!(null), json!(1), json!("a"), json!([{"a": 1}])] {
            assert!(!matches(&f(json!({"NEQ": {"a": 2}})), &v), "{v}");
        }
    }

    fn item(value: &[u8]) -> Item {
        Item {
            value: Bytes::copy_from_slice(value),
            etag: "1".into(),
            expires_at: None,
        }
    }

    fn items(pairs: &[(&str, Value)]) -> Vec<(String, Item)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), item(v.to_string().as_bytes())))
            .collect()
    }

    fn keys(r: &QueryResponse) -> Vec<&str> {
        r.results.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn run_filters_sorts_and_skips_non_objects() {
        let mut data = items(&[
            ("c", json!({"n": 2, "g": "x"})),
            ("a", json!({"n": 3, "g": "y"})),
            ("b", json!({"n": 2, "g": "y"})),
            ("d", json!({"g": "x"})),
            ("arr", json!([1])),
        ]);
        data.push(("raw".into(), item(b"\xff not json")));
        let q = |sort: Vec<Sort>| Query {
            filter: None,
            sort,
            page: Page::default(),
        };
        let all = run(data.clone().into_iter(), &q(vec![])).unwrap();
        assert_eq!(keys(&all), ["a", "b", "c", "d"], "no sort: by key");
        let by_n = run(
            data.clone().into_iter(),
            &q(vec![Sort {
                key: "n".into(),
                descending: false,
            }]),
        )
        .unwrap();
        assert_eq!(
            keys(&by_n),
            ["b", "c", "a", "d"],
            "ties by key, absent last"
        );
        let by_n_desc = run(
            data.clone().into_iter(),
            &q(vec![Sort {
                key: "n".into(),
                descending: true,
            }]),
        )
        .unwrap();
        assert_eq!(
            keys(&by_n_desc),
            ["d", "a", "b", "c"],
            "absent first, ties by key"
        );
        let two = run(
            data.into_iter(),
            &q(vec![
                Sort {
                    key: "g".into(),
                    descending: true,
                },
                Sort {
                    key: "n".into(),
                    descending: false,
                },
            ]),
        )
        .unwrap();
        assert_eq!(keys(&two), ["b", "a", "c", "d"]);
    }

    #[test]
    fn sort_orders_kinds_like_jsonb() {
        let data = items(&[
            ("obj", json!({"v": {"a": 1}})),
            ("arr", json!({"v": [1]})),
            ("bool", json!({"v": true})),
            ("num", json!({"v": 1})),
            ("str", json!({"v": "a"})),
            ("null", json!({"v": null})),
            ("absent", json!({})),
        ]);
        let q = Query {
            sort: vec![Sort {
                key: "v".into(),
                descending: false,
            }],
            ..Default::default()
        };
        let r = run(data.into_iter(), &q).unwrap();
        assert_eq!(
            keys(&r),
            ["null", "str", "num", "bool", "arr", "obj", "absent"]
        );
    }

    #[test]
    fn pages_follow_tokens_to_the_end() {
        let data: Vec<(String, Item)> = (0..10)
            .map(|i| {
                (
                    format!("k{i}"),
                    item(json!({"i": i}).to_string().as_bytes()),
                )
            })
            .collect();
        let mut q = Query {
            sort: vec![Sort {
                key: "i".into(),
                descending: true,
            }],
            page: Page {
                limit: Some(4),
                token: None,
            },
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = run(data.clone().into_iter(), &q).unwrap();
            assert!(page.results.len() <= 4);
            seen.extend(page.results.into_iter().map(|r| r.key));
            match page.token {
                Some(t) => q.page.token = Some(t),
                None => break,
            }
        }
        let want: Vec<String> = (0..10).rev().map(|i| format!("k{i}")).collect();
        assert_eq!(seen, want);

        q.page.token = Some("99".into());
        let past = run(data.clone().into_iter(), &q).unwrap();
        assert!(past.results.is_empty() && past.token.is_none());
        q.page = Page::default();
        let default = run(data.clone().into_iter(), &q).unwrap();
        assert_eq!(default.results.len(), 10);
        assert_eq!(default.token, None);
    }

    #[test]
    fn a_bad_token_is_an_invalid_request() {
        for token in ["abc", "-1", "1.0", " 1", "99999999999999999999999999"] {
            let q = Query {
                page: Page {
                    limit: None,
                    token: Some(token.into()),
                },
                ..Default::default()
            };
            match run(std::iter::empty(), &q) {
                Err(StateError::InvalidRequest(m)) => assert!(m.contains(token), "{m}"),
                other => panic!("{token:?}: want InvalidRequest, got {other:?}"),
            }
        }
    }
}
