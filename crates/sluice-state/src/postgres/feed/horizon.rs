//! The horizon: the highest revision below which every writing transaction has finished, so
//! that history up to it can be read without missing a commit still in flight.
//!
//! Revisions come from a sequence, so transactions may commit out of revision order. Every
//! writing transaction holds the feed's advisory lock (shared) from before it draws its revision
//! until it has committed and is visible. So: read the latest revision drawn, L; then the
//! transactions holding the lock; once all of those are gone, every revision ≤ L is either
//! visible or rolled back, and L is the horizon. Nobody waits on anybody: the reader polls the
//! lock table, writers never block on readers.

use std::time::Duration;

use deadpool_postgres::Object;

use super::sql::FeedSql;

/// Pause between two looks at the lock table while transactions are still committing.
const POLL: Duration = Duration::from_micros(500);

/// The horizon now (see the module documentation).
pub(crate) async fn settle(client: &Object, sql: &FeedSql) -> Result<u64, tokio_postgres::Error> {
    let last_drawn = client.prepare_cached(&sql.last_drawn).await?;
    let holders = client.prepare_cached(&sql.holders).await?;
    let last: i64 = client.query_one(&last_drawn, &[]).await?.try_get(0)?;
    let mut holding: Vec<String> = client.query_one(&holders, &[]).await?.try_get(0)?;
    if holding.is_empty() {
        return Ok(u64::try_from(last).unwrap_or(0));
    }
    let still_holding = client.prepare_cached(&sql.still_holding).await?;
    while !holding.is_empty() {
        tokio::time::sleep(POLL).await;
        let row = client.query_one(&still_holding, &[&holding]).await?;
        holding = row.try_get(0)?;
    }
    Ok(u64::try_from(last).unwrap_or(0))
}
