//! Rules over key ranges shared by the backends that list keys themselves: page sizes and tokens
//! of [`crate::Store::keys`], and which keys [`crate::Store::delete_with_prefix`] deletes.

use crate::error::StateError;
use crate::store::{KeyPage, Page, DEFAULT_PAGE_LIMIT};

/// The separator of key parts (Dapr's `app-id||key`).
pub const SEPARATOR: &str = "||";

/// The page size `page` asks for: its limit, or [`DEFAULT_PAGE_LIMIT`] when it has none (or 0).
pub fn page_limit(page: &Page) -> usize {
    match page.limit {
        None | Some(0) => DEFAULT_PAGE_LIMIT,
        Some(n) => n,
    }
}

/// The key a listing continues after: the token of the previous page, which is the last key that
/// page held (so keys written or deleted between pages never make a later page repeat or skip a
/// key that stayed). An empty token starts at the beginning.
pub fn resume_after(page: &Page) -> Option<&str> {
    page.token.as_deref().filter(|t| !t.is_empty())
}

/// One page from `keys`, the matching keys after the token in ascending order: the first
/// `limit`, and the last of them as the token if another key follows.
pub fn collect_page(keys: impl Iterator<Item = String>, limit: usize) -> KeyPage {
    let mut out: Vec<String> = keys.take(limit.saturating_add(1)).collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().cloned()
    } else {
        None
    };
    KeyPage { keys: out, next }
}

/// Rejects the empty prefix, which would delete every top-level key.
pub fn check_prefix(prefix: &str) -> Result<(), StateError> {
    if prefix.is_empty() {
        Err(StateError::InvalidRequest(
            "delete with prefix needs a non-empty prefix".to_string(),
        ))
    } else {
        Ok(())
    }
}

/// True if delete-with-prefix `prefix` deletes `key`: the key starts with the prefix and has no
/// further [`SEPARATOR`] after it (Dapr's rule: `app||` deletes `app||k1`, not `app||sub||k3`).
pub fn under_prefix(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| !rest.contains(SEPARATOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rule_stops_at_a_further_separator() {
        assert!(under_prefix("app||", "app||k1"));
        assert!(under_prefix("app||", "app||"));
        assert!(!under_prefix("app||", "app||sub||k3"));
        assert!(!under_prefix("app||", "apple||k4"));
        assert!(!under_prefix("app||", "app|"));
        assert!(under_prefix("app||sub||", "app||sub||k3"));
        assert!(
            under_prefix("app||", "app||a|b"),
            "a single | is no separator"
        );
        assert!(
            under_prefix("app", "apple"),
            "the prefix is taken literally"
        );
        assert!(!under_prefix("app", "app||k1"));
    }

    #[test]
    fn empty_prefix_is_invalid() {
        assert!(matches!(
            check_prefix(""),
            Err(StateError::InvalidRequest(m)) if m.contains("prefix")
        ));
        assert!(check_prefix("a").is_ok());
    }

    #[test]
    fn page_limit_defaults() {
        assert_eq!(page_limit(&Page::default()), DEFAULT_PAGE_LIMIT);
        let page = |limit| Page { limit, token: None };
        assert_eq!(page_limit(&page(Some(0))), DEFAULT_PAGE_LIMIT);
        assert_eq!(page_limit(&page(Some(7))), 7);
    }

    #[test]
    fn pages_end_with_a_token_only_when_more_follow() {
        let keys = |n: usize| (0..n).map(|i| format!("k{i}"));
        let full = collect_page(keys(5), 3);
        assert_eq!(full.keys, ["k0", "k1", "k2"]);
        assert_eq!(full.next.as_deref(), Some("k2"));
        let exact = collect_page(keys(3), 3);
        assert_eq!(exact.keys.len(), 3);
        assert_eq!(exact.next, None);
        let empty = collect_page(keys(0), 3);
        assert!(empty.keys.is_empty() && empty.next.is_none());
        let token = Page {
            limit: None,
            token: Some(String::new()),
        };
        assert_eq!(resume_after(&token), None);
    }
}
