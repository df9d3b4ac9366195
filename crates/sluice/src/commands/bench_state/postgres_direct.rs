//! The PostgreSQL comparison: tokio-postgres (through a deadpool pool of the same size as the
//! store's) running the statements Sluice's PostgreSQL backend runs for the same requests — the
//! live-row select for a get, the versioned upsert for a last-write set, and for a 10-upsert
//! `multi` a transaction with the 10 upserts pipelined — against a table of its own that a second
//! store created, so both sides have the same schema and indexes.

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sluice_state::ttl::MAX_EXPIRY_MILLIS;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::measure::Client;
use super::BenchError;

fn failed(action: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::new(format!("postgres (direct): cannot {action}: {e}"))
}

/// The store's statements for one table (same text as the backend's).
struct Statements {
    get: String,
    upsert: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        let t = format!("\"{table}\"");
        let next_version = format!("nextval('\"{table}_version_seq\"')");
        let expires = format!(
            "CASE WHEN $4::bigint IS NULL THEN NULL ELSE \
             LEAST(now() + $4::bigint * interval '1 millisecond', \
             to_timestamp({MAX_EXPIRY_MILLIS}::numeric / 1000)) END"
        );
        Statements {
            get: format!(
                "SELECT value, version, expires_at FROM {t} WHERE key = $1 AND \
                 (expires_at IS NULL OR expires_at > now())"
            ),
            upsert: format!(
                "INSERT INTO {t} AS s (key, value, value_json, version, expires_at, updated_at) \
                 VALUES ($1, $2, $3, {next_version}, {expires}, now()) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                 value_json = EXCLUDED.value_json, version = EXCLUDED.version, \
                 expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at \
                 RETURNING version"
            ),
        }
    }
}

/// A connection pool on the direct side's table.
pub struct PostgresDirect {
    pool: Pool,
    sql: Statements,
}

impl PostgresDirect {
    /// A pool of `pool_size` connections to `url`, for the table `table` (created beforehand by a
    /// store, so that its schema is the backend's).
    pub fn new(url: &str, table: &str, pool_size: usize) -> Result<Self, BenchError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| failed("parse the URL", e))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| failed("build a pool", e))?;
        Ok(PostgresDirect {
            pool,
            sql: Statements::new(table),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, BenchError> {
        self.pool
            .get()
            .await
            .map_err(|e| failed("get a connection", e))
    }

    /// Writes every key in one transaction (the preload).
    pub async fn load(&self, keys: &[String], value: &Bytes) -> Result<(), BenchError> {
        self.upsert_all(keys, value).await
    }

    async fn upsert_all(&self, keys: &[String], value: &Bytes) -> Result<(), BenchError> {
        let mut client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.upsert)
            .await
            .map_err(|e| failed("prepare", e))?;
        let tx = client.transaction().await.map_err(|e| failed("begin", e))?;
        let none_json: Option<serde_json::Value> = None;
        let no_ttl: Option<i64> = None;
        let value: &[u8] = value;
        let params: Vec<[&(dyn ToSql + Sync); 4]> = keys
            .iter()
            .map(|key| -> [&(dyn ToSql + Sync); 4] { [key, &value, &none_json, &no_ttl] })
            .collect();
        // Sent without waiting for each reply: pipelined on the connection, as the store does.
        let writes = params.iter().map(|p| tx.query_one(&stmt, p));
        for written in futures::future::join_all(writes).await {
            written.map_err(|e| failed("upsert", e))?;
        }
        tx.commit().await.map_err(|e| failed("commit", e))
    }

    /// How many relations (tables, sequences, indexes) have a name matching the LIKE `pattern`.
    #[cfg(test)]
    pub async fn relations_like(&self, pattern: &str) -> Result<i64, BenchError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname LIKE $1",
                &[&pattern],
            )
            .await
            .map_err(|e| failed("count relations", e))?;
        row.try_get(0).map_err(|e| failed("count relations", e))
    }

    /// Drops the tables and sequences of `tables` (the benchmark's own).
    pub async fn drop_tables(&self, tables: &[&str]) -> Result<(), BenchError> {
        let client = self.client().await?;
        for table in tables {
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS \"{table}\", \"{table}_migrations\"; \
                     DROP SEQUENCE IF EXISTS \"{table}_version_seq\"; \
                     DROP TABLE IF EXISTS \"{table}_changes\", \"{table}_watch\"; \
                     DROP SEQUENCE IF EXISTS \"{table}_revision_seq\", \"{table}_change_seq\"; \
                     DROP FUNCTION IF EXISTS \"{table}_record\"();"
                ))
                .await
                .map_err(|e| failed(&format!("drop the table {table}"), e))?;
        }
        Ok(())
    }
}

impl Client for PostgresDirect {
    async fn get(&self, key: &str) -> Result<(), BenchError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.get)
            .await
            .map_err(|e| failed("prepare", e))?;
        let row = client
            .query_opt(&stmt, &[&key])
            .await
            .map_err(|e| failed("select", e))?;
        let Some(row) = row else {
            return Err(BenchError::new(format!("key {key:?} is missing")));
        };
        let value: &[u8] = row.try_get(0).map_err(|e| failed("read the value", e))?;
        let version: i64 = row.try_get(1).map_err(|e| failed("read the version", e))?;
        std::hint::black_box((Bytes::copy_from_slice(value), version.to_string()));
        Ok(())
    }

    async fn set(&self, key: &str, value: &Bytes) -> Result<(), BenchError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.upsert)
            .await
            .map_err(|e| failed("prepare", e))?;
        let none_json: Option<serde_json::Value> = None;
        let no_ttl: Option<i64> = None;
        let value: &[u8] = value;
        let row = client
            .query_one(&stmt, &[&key, &value, &none_json, &no_ttl])
            .await
            .map_err(|e| failed("upsert", e))?;
        let version: i64 = row.try_get(0).map_err(|e| failed("read the version", e))?;
        std::hint::black_box(version.to_string());
        Ok(())
    }

    async fn multi(&self, keys: &[String], value: &Bytes) -> Result<(), BenchError> {
        self.upsert_all(keys, value).await
    }
}
