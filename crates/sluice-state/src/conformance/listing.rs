//! Scenarios over key ranges: delete-with-prefix and key listing with a LIKE pattern.

use std::collections::HashSet;

use super::scenario::Scenario;
use crate::store::{DeleteRequest, KeyPage, Page, SetRequest, Store};

/// `text` as a LIKE pattern matching exactly itself (`%`, `_` and `\` escaped with `\`).
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Delete-with-prefix: `app||` deletes `app||k1` and `app||k2` (and counts them) but not
/// `app||sub||k3` or `apple||k4`; an empty prefix is an invalid request.
pub async fn delete_with_prefix(store: &dyn Store) {
    let s = Scenario::new("delete_with_prefix", store);
    let keys = [
        "app||k1",
        "app||k2",
        "app||sub||k3",
        "apple||k4",
        "other||k5",
    ]
    .map(|k| s.key(k));
    for key in &keys {
        s.ok("seed", store.set(SetRequest::new(key, "v")).await);
    }
    let prefix = s.key("app||");
    if !store.features().delete_with_prefix {
        s.skip("the backend does not advertise DELETE_WITH_PREFIX");
        s.unsupported(
            "delete_with_prefix",
            store.delete_with_prefix(&prefix).await,
        );
        for key in &keys {
            s.some(
                "an unsupported delete_with_prefix deleted nothing",
                store.get(key).await,
            );
        }
        return;
    }
    let deleted = s.ok(
        "delete_with_prefix",
        store.delete_with_prefix(&prefix).await,
    );
    s.eq("keys deleted with the prefix", &deleted, &2);
    for (i, key) in keys.iter().enumerate() {
        let what = format!("after delete_with_prefix, {key}");
        if i < 2 {
            s.none(&what, store.get(key).await);
        } else {
            s.some(&what, store.get(key).await);
        }
    }
    let again = s.ok(
        "delete_with_prefix again",
        store.delete_with_prefix(&prefix).await,
    );
    s.eq("keys deleted by the second call", &again, &0);
    let nested = s.ok(
        "delete_with_prefix of the nested prefix",
        store.delete_with_prefix(&s.key("app||sub||")).await,
    );
    s.eq("keys deleted with the nested prefix", &nested, &1);
    s.invalid_request(
        "delete_with_prefix(\"\")",
        store.delete_with_prefix("").await,
    );
    for key in &keys[3..] {
        s.some("an empty prefix deleted nothing", store.get(key).await);
    }
}

/// Lists every page of `pattern` with page size `limit`; checks page sizes, ascending order and
/// that no key repeats.
async fn list_all(s: &Scenario, store: &dyn Store, pattern: &str, limit: usize) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let mut token = None;
    for page_no in 0.. {
        let page: KeyPage = s.ok(
            &format!("keys({pattern:?}), page {page_no}"),
            store
                .keys(
                    pattern,
                    Page {
                        limit: Some(limit),
                        token,
                    },
                )
                .await,
        );
        s.check(
            page.keys.len() <= limit,
            &format!(
                "page {page_no} holds {} keys, over the limit {limit}",
                page.keys.len()
            ),
        );
        for key in page.keys {
            if let Some(last) = all.last() {
                s.check(
                    *last < key,
                    &format!("keys out of order or repeated across pages: {last:?} then {key:?}"),
                );
            }
            all.push(key);
        }
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
        s.check(page_no < 10_000, "the listing never ends");
    }
    all
}

/// Key listing with a LIKE pattern (`%`, `_`, escapes), in pages: every matching key is seen
/// exactly once across pages, in ascending order, and nothing else is.
pub async fn keys_like(store: &dyn Store) {
    let s = Scenario::new("keys_like", store);
    let base = like_escape(s.prefix());
    if !store.features().keys_like {
        s.skip("the backend does not advertise KEYS_LIKE");
        s.unsupported(
            "keys",
            store.keys(&format!("{base}%"), Page::default()).await,
        );
        return;
    }
    let items: Vec<String> = (0..25).map(|i| s.key(&format!("item-{i:02}"))).collect();
    let others = ["other-1", "item", "items-1", "100%_done", "100xx_done"].map(|k| s.key(k));
    for key in items.iter().chain(&others) {
        s.ok("seed", store.set(SetRequest::new(key, "v")).await);
    }

    for limit in [7, 5, 1, 100] {
        let listed = list_all(&s, store, &format!("{base}item-%"), limit).await;
        s.eq(&format!("keys listed {limit} per page"), &listed, &items);
    }
    let page = s.ok(
        "keys with the default page",
        store.keys(&format!("{base}item-%"), Page::default()).await,
    );
    s.eq("keys in the default page", &page.keys, &items);
    s.eq("next token of a complete listing", &page.next, &None);

    let listed = list_all(&s, store, &format!("{base}item-_5"), 2).await;
    let want: Vec<String> = ["item-05", "item-15"].map(|k| s.key(k)).to_vec();
    s.eq("keys matching `_`", &listed, &want);
    let listed = list_all(&s, store, &format!("{base}100\\%\\_done"), 10).await;
    s.eq(
        "keys matching escaped wildcards",
        &listed,
        &vec![s.key("100%_done")],
    );
    let listed = list_all(&s, store, &format!("{base}100%done"), 10).await;
    s.eq(
        "keys matching an unescaped %",
        &listed,
        &vec![s.key("100%_done"), s.key("100xx_done")],
    );
    let listed = list_all(&s, store, &format!("{base}nothing-%"), 10).await;
    s.check(
        listed.is_empty(),
        &format!("a pattern matching nothing listed {listed:?}"),
    );

    let all = list_all(&s, store, &format!("{base}%"), 4).await;
    let mut want: Vec<String> = items.iter().chain(&others).cloned().collect();
    want.sort();
    s.eq("every key of the run", &all, &want);
    let distinct: HashSet<&String> = all.iter().collect();
    s.eq("distinct keys", &distinct.len(), &all.len());

    for key in &items[10..] {
        s.ok("delete", store.delete(DeleteRequest::new(key)).await);
    }
    let listed = list_all(&s, store, &format!("{base}item-%"), 3).await;
    s.eq("keys listed after deletes", &listed, &items[..10].to_vec());
}
