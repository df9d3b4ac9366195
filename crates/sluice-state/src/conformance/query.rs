//! Queries over JSON values: every filter operator, sorting and paging.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::scenario::Scenario;
use crate::query::{Filter, Query, QueryResponse, Sort};
use crate::store::{Page, SetRequest, Store};

/// The people the scenario stores: (key suffix, id, name, department, score). Ids and scores are
/// chosen so that comparing numbers as strings gives different answers; names are lowercase
/// ASCII so that every collation orders them alike.
const PEOPLE: [(&str, i64, &str, &str, f64); 6] = [
    ("p1", 2, "alice", "eng", 2.5),
    ("p2", 9, "bob", "ops", 10.0),
    ("p3", 10, "carol", "eng", -1.0),
    ("p4", 100, "dave", "sales", 7.25),
    ("p5", 33, "erin", "ops", 10.0),
    ("p6", 1, "frank", "eng", 0.0),
];

fn field(path: &str) -> String {
    path.to_string()
}

/// Runs `q` page by page; checks that the pages concatenate without repeats and that every
/// result carries the stored value and ETag.
async fn run_query(
    s: &Scenario,
    store: &dyn Store,
    what: &str,
    mut q: Query,
    stored: &[(String, Vec<u8>, String)],
) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for page_no in 0.. {
        let page: QueryResponse = s.ok(&format!("{what}, page {page_no}"), store.query(&q).await);
        if let Some(limit) = q.page.limit {
            s.check(
                page.results.len() <= limit,
                &format!(
                    "{what}: page {page_no} holds {} results, over {limit}",
                    page.results.len()
                ),
            );
        }
        for r in page.results {
            let Some((_, value, etag)) = stored.iter().find(|(k, _, _)| *k == r.key) else {
                s.fail(&format!(
                    "{what}: found {:?}, which the scenario did not write",
                    r.key
                ));
            };
            s.check(
                r.item.value.as_ref() == value.as_slice(),
                &format!(
                    "{what}: the value of {:?} differs from the one stored",
                    r.key
                ),
            );
            s.eq(&format!("{what}: ETag of {:?}", r.key), &r.item.etag, etag);
            s.check(
                !keys.contains(&r.key),
                &format!("{what}: {:?} returned twice", r.key),
            );
            keys.push(r.key);
        }
        match page.token {
            Some(token) => q.page.token = Some(token),
            None => break,
        }
        s.check(page_no < 1_000, &format!("{what}: the pages never end"));
    }
    keys
}

/// Queries with EQ, NEQ, GT, GTE, LT, LTE, IN, AND and OR (nested paths, numbers compared as
/// numbers), sorting on one and two keys (ties by key) and paging.
pub async fn query(store: &dyn Store) {
    let s = Scenario::new("query", store);
    let run = Value::String(s.prefix().to_string());
    let only_run = Filter::Eq(field("run"), run.clone());
    if !store.features().query {
        s.skip("the backend does not advertise QUERY_API");
        let q = Query {
            filter: Some(only_run),
            ..Default::default()
        };
        s.unsupported("query", store.query(&q).await);
        return;
    }

    let mut stored: Vec<(String, Vec<u8>, String)> = Vec::new();
    for (suffix, id, name, dept, score) in PEOPLE {
        let key = s.key(suffix);
        let value = s.json(&json!({
            "run": run, "id": id, "name": name, "org": { "dept": dept }, "score": score,
        }));
        let etag = s.ok(
            "seed",
            store.set(SetRequest::new(&key, value.clone())).await,
        );
        stored.push((key, value, etag));
    }
    // Values a query must step over without failing: not JSON, not objects, no `run` field.
    for (suffix, value) in [
        ("raw", b"\xff\x00 not json".to_vec()),
        ("array", b"[1,2,3]".to_vec()),
        ("string", b"\"eng\"".to_vec()),
        ("number", b"42".to_vec()),
        (
            "other",
            s.json(&json!({ "id": 5, "org": { "dept": "eng" } })),
        ),
    ] {
        s.ok(
            "seed",
            store.set(SetRequest::new(s.key(suffix), value)).await,
        );
    }
    let key = |suffix: &str| s.key(suffix);
    let within_run = |f: Filter| Some(Filter::And(vec![only_run.clone(), f]));

    let cases: Vec<(&str, Filter, Vec<&str>)> = vec![
        (
            "EQ on a nested path",
            Filter::Eq(field("org.dept"), json!("eng")),
            vec!["p1", "p3", "p6"],
        ),
        (
            "EQ on a number",
            Filter::Eq(field("id"), json!(33)),
            vec!["p5"],
        ),
        (
            "NEQ",
            Filter::Neq(field("org.dept"), json!("eng")),
            vec!["p2", "p4", "p5"],
        ),
        (
            "GT on numbers",
            Filter::Gt(field("id"), json!(9)),
            vec!["p3", "p4", "p5"],
        ),
        (
            "GTE on numbers",
            Filter::Gte(field("id"), json!(9)),
            vec!["p2", "p3", "p4", "p5"],
        ),
        (
            "LT on numbers",
            Filter::Lt(field("id"), json!(10)),
            vec!["p1", "p2", "p6"],
        ),
        (
            "LTE on numbers",
            Filter::Lte(field("id"), json!(10)),
            vec!["p1", "p2", "p3", "p6"],
        ),
        (
            "GT on fractions",
            Filter::Gt(field("score"), json!(2.5)),
            vec!["p2", "p4", "p5"],
        ),
        (
            "LT below zero",
            Filter::Lt(field("score"), json!(0)),
            vec!["p3"],
        ),
        (
            "GT on strings",
            Filter::Gt(field("name"), json!("bob")),
            vec!["p3", "p4", "p5", "p6"],
        ),
        (
            "LTE on strings",
            Filter::Lte(field("name"), json!("bob")),
            vec!["p1", "p2"],
        ),
        (
            "IN",
            Filter::In(
                field("name"),
                vec![json!("bob"), json!("dave"), json!("zoe")],
            ),
            vec!["p2", "p4"],
        ),
        (
            "AND",
            Filter::And(vec![
                Filter::Eq(field("org.dept"), json!("ops")),
                Filter::Gte(field("score"), json!(10)),
            ]),
            vec!["p2", "p5"],
        ),
        (
            "OR",
            Filter::Or(vec![
                Filter::Eq(field("org.dept"), json!("sales")),
                Filter::Lt(field("id"), json!(5)),
            ]),
            vec!["p1", "p4", "p6"],
        ),
        (
            "OR of AND",
            Filter::Or(vec![
                Filter::And(vec![
                    Filter::Eq(field("org.dept"), json!("eng")),
                    Filter::Gt(field("score"), json!(0)),
                ]),
                Filter::Eq(field("name"), json!("dave")),
            ]),
            vec!["p1", "p4"],
        ),
        (
            "EQ on a missing field",
            Filter::Eq(field("org.floor"), json!(1)),
            vec![],
        ),
    ];
    for (what, filter, want) in cases {
        let q = Query {
            filter: within_run(filter),
            ..Default::default()
        };
        let got: BTreeSet<String> = run_query(&s, store, what, q, &stored)
            .await
            .into_iter()
            .collect();
        let want: BTreeSet<String> = want.into_iter().map(key).collect();
        s.eq(what, &got, &want);
    }

    let sort = |k: &str, descending: bool| Sort {
        key: field(k),
        descending,
    };
    let sorts: Vec<(&str, Vec<Sort>, Vec<&str>)> = vec![
        (
            "sort by a number",
            vec![sort("id", false)],
            vec!["p6", "p1", "p2", "p3", "p5", "p4"],
        ),
        (
            "sort by a string",
            vec![sort("name", false)],
            vec!["p1", "p2", "p3", "p4", "p5", "p6"],
        ),
        (
            "sort descending, ties by key",
            vec![sort("score", true)],
            vec!["p2", "p5", "p4", "p1", "p6", "p3"],
        ),
        (
            "sort on two keys",
            vec![sort("org.dept", false), sort("id", true)],
            vec!["p3", "p1", "p6", "p5", "p2", "p4"],
        ),
    ];
    for (what, sort, want) in sorts {
        let want: Vec<String> = want.into_iter().map(key).collect();
        for limit in [None, Some(4), Some(1)] {
            let q = Query {
                filter: Some(only_run.clone()),
                sort: sort.clone(),
                page: Page { limit, token: None },
            };
            let got = run_query(
                &s,
                store,
                &format!("{what}, page size {limit:?}"),
                q,
                &stored,
            )
            .await;
            s.eq(&format!("{what}, page size {limit:?}"), &got, &want);
        }
    }

    let q = Query {
        filter: Some(only_run.clone()),
        sort: vec![sort("id", false)],
        page: Page {
            limit: Some(4),
            token: None,
        },
    };
    let first = s.ok("first page", store.query(&q).await);
    let first_keys: Vec<String> = first.results.iter().map(|r| r.key.clone()).collect();
    s.eq(
        "first page of 4",
        &first_keys,
        &["p6", "p1", "p2", "p3"].map(key).to_vec(),
    );
    s.check(
        first.token.is_some(),
        "a first page of 4 out of 6 gave no token",
    );
}
