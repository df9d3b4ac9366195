//! Key ranges: listing keys with a LIKE pattern in pages, and delete-with-prefix.
//!
//! Both run as one-shot statements (`query_typed`), which PostgreSQL plans with the actual
//! pattern; the key column's `"C"` collation then lets an anchored pattern (`app||%`) become a
//! range scan of the primary key, and orders keys bytewise, as the other backends do.

use tokio_postgres::types::{ToSql, Type};

use super::errors::Target;
use super::sql::LIVE;
use super::value;
use crate::error::StateError;
use crate::keys::{self, SEPARATOR};
use crate::like;
use crate::store::{KeyPage, Page};

/// `pattern` in PostgreSQL's LIKE syntax, or an error if it holds NUL (no key can). The
/// crate's pattern language (see [`crate::like`]) lets a lone `\\` at the end stand for itself,
/// which PostgreSQL rejects; it becomes an escaped backslash.
fn to_pg_pattern(pattern: &str) -> Result<String, StateError> {
    if pattern.contains('\0') {
        return Err(StateError::InvalidRequest(format!(
            "key pattern {pattern:?} contains a NUL character, which no key of the postgres \
             store can hold"
        )));
    }
    let trailing_escapes = pattern.chars().rev().take_while(|c| *c == '\\').count();
    let mut out = pattern.to_string();
    if trailing_escapes % 2 == 1 {
        out.push('\\');
    }
    Ok(out)
}

/// One page of live keys matching `pattern`, after the page token, in ascending byte order.
pub(crate) async fn keys(
    client: &tokio_postgres::Client,
    table: &str,
    target: &Target,
    pattern: &str,
    page: Page,
) -> Result<KeyPage, StateError> {
    let pg_pattern = to_pg_pattern(pattern)?;
    let limit = keys::page_limit(&page);
    let after = keys::resume_after(&page);
    // One more than asked, to learn whether another page follows.
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&pg_pattern, Type::TEXT)];
    let mut sql = format!("SELECT key FROM {table} WHERE key LIKE $1 AND {LIVE}");
    if let Some(after) = &after {
        params.push((after, Type::TEXT));
        sql.push_str(" AND key > $2");
    }
    params.push((&fetch, Type::INT8));
    sql.push_str(&format!(" ORDER BY key LIMIT ${}", params.len()));
    let what = format!("list keys like {pattern:?}");
    let rows = client
        .query_typed(&sql, &params)
        .await
        .map_err(|e| target.pg(&what, &e))?;
    let found = rows
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| target.pg(&what, &e))?;
    Ok(keys::collect_page(found.into_iter(), limit))
}

/// Deletes every key that is `prefix` followed by text without a further `||`; returns how many
/// live items were deleted (expired ones go too, uncounted).
pub(crate) async fn delete_with_prefix(
    client: &tokio_postgres::Client,
    table: &str,
    target: &Target,
    prefix: &str,
) -> Result<u64, StateError> {
    keys::check_prefix(prefix)?;
    value::check_key(prefix)?;
    let pattern = format!("{}%", like::escape(prefix));
    let sql = format!(
        "WITH deleted AS (DELETE FROM {table} WHERE key LIKE $1 \
         AND strpos(substr(key, char_length($2) + 1), $3) = 0 RETURNING expires_at) \
         SELECT count(*) FROM deleted WHERE expires_at IS NULL OR expires_at > now()"
    );
    let what = format!("delete with prefix {prefix:?}");
    let rows = client
        .query_typed(
            &sql,
            &[
                (&pattern, Type::TEXT),
                (&prefix, Type::TEXT),
                (&SEPARATOR, Type::TEXT),
            ],
        )
        .await
        .map_err(|e| target.pg(&what, &e))?;
    let count: i64 = match rows.first() {
        Some(row) => row.try_get(0).map_err(|e| target.pg(&what, &e))?,
        None => 0,
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_postgres_patterns() {
        assert_eq!(to_pg_pattern("a\\%b%").expect("ok"), "a\\%b%");
        assert_eq!(to_pg_pattern("a\\\\").expect("ok"), "a\\\\");
        assert_eq!(to_pg_pattern("a\\").expect("ok"), "a\\\\");
        assert_eq!(to_pg_pattern("a\\\\\\").expect("ok"), "a\\\\\\\\");
        assert!(matches!(
            to_pg_pattern("a\0"),
            Err(StateError::InvalidRequest(_))
        ));
    }
}
