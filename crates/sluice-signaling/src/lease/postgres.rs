//! Leases in a PostgreSQL table beside the store's: `(flow_id PRIMARY KEY, owner, generation,
//! expires_at)`. Expiry uses the database's clock, so replicas' clocks do not matter; due leases
//! are claimed with `FOR UPDATE SKIP LOCKED`, so concurrent claimers never take the same flow.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::{Lease, LeaseError, LeaseStore};

/// Most bytes of a PostgreSQL identifier.
const MAX_IDENT: usize = 63;

/// Leases shared by every replica connected to one database.
pub struct PostgresLeases {
    pool: Pool,
    target: String,
    sql: Statements,
}

/// The statements, with the table name filled in.
struct Statements {
    acquire: String,
    claim: String,
    heartbeat: String,
    release: String,
    hand_back: String,
    forget: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        let ttl = "($3::bigint * interval '1 millisecond')";
        Statements {
            acquire: format!(
                "INSERT INTO {table} AS l (flow_id, owner, generation, expires_at) \
                 VALUES ($1, $2, 1, now() + {ttl}) \
                 ON CONFLICT (flow_id) DO UPDATE SET owner = EXCLUDED.owner, \
                 generation = l.generation + 1, expires_at = EXCLUDED.expires_at \
                 WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner \
                 RETURNING l.generation"
            ),
            claim: format!(
                "WITH due AS (SELECT flow_id FROM {table} WHERE expires_at <= now() \
                 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE {table} AS l SET owner = $1, generation = l.generation + 1, \
                 expires_at = now() + {ttl} FROM due WHERE l.flow_id = due.flow_id \
                 RETURNING l.flow_id, l.generation"
            ),
            heartbeat: format!(
                "UPDATE {table} SET expires_at = now() + {ttl} \
                 WHERE flow_id = $1 AND owner = $2 AND generation = $4"
            ),
            release: format!(
                "DELETE FROM {table} WHERE flow_id = $1 AND owner = $2 AND generation = $3"
            ),
            hand_back: format!(
                "UPDATE {table} SET expires_at = now() \
                 WHERE flow_id = $1 AND owner = $2 AND generation = $3"
            ),
            forget: format!("DELETE FROM {table} WHERE flow_id = $1"),
        }
    }
}

/// `name` if it is a plain identifier (letters, digits, `_`, not starting with a digit).
fn ident(name: &str, what: &str) -> Result<String, LeaseError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IDENT
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(format!("\"{name}\""))
    } else {
        Err(LeaseError::Config(format!(
            "{what} {name:?} is not a plain identifier of at most {MAX_IDENT} bytes"
        )))
    }
}

impl PostgresLeases {
    /// Connects to `url` and creates the lease table `<table>` (in `schema` if given) unless it
    /// exists; several replicas may do so at once (an advisory lock serialises them).
    pub async fn connect(
        url: &str,
        table: &str,
        schema: Option<&str>,
        pool_size: usize,
        connect_timeout: Duration,
    ) -> Result<Self, LeaseError> {
        let qualified = match schema {
            Some(s) => format!("{}.{}", ident(s, "schema")?, ident(table, "table")?),
            None => ident(table, "table")?,
        };
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| LeaseError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("sluice-leases");
        }
        let target = format!(
            "{}, table {qualified}",
            config.get_dbname().unwrap_or("(default database)")
        );
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| LeaseError::Config(format!("cannot build the connection pool: {e}")))?;
        let leases = PostgresLeases {
            pool,
            target,
            sql: Statements::new(&qualified),
        };
        leases.migrate(&qualified, schema).await?;
        Ok(leases)
    }

    fn fail(&self, operation: &'static str, e: impl std::fmt::Display) -> LeaseError {
        LeaseError::Backend {
            target: self.target.clone(),
            operation,
            message: e.to_string(),
        }
    }

    async fn client(
        &self,
        operation: &'static str,
    ) -> Result<deadpool_postgres::Object, LeaseError> {
        self.pool.get().await.map_err(|e| self.fail(operation, e))
    }

    async fn migrate(&self, qualified: &str, schema: Option<&str>) -> Result<(), LeaseError> {
        let mut client = self.client("create the lease table").await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.fail("create the lease table", e))?;
        let mut ddl = format!(
            "SELECT pg_advisory_xact_lock(hashtext('sluice-leases:' || '{}'));",
            qualified.replace('\'', "")
        );
        if let Some(s) = schema {
            ddl.push_str(&format!(
                "CREATE SCHEMA IF NOT EXISTS {};",
                ident(s, "schema")?
            ));
        }
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {qualified} (flow_id text PRIMARY KEY, \
             owner text NOT NULL, generation bigint NOT NULL, expires_at timestamptz NOT NULL);"
        ));
        tx.batch_execute(&ddl)
            .await
            .map_err(|e| self.fail("create the lease table", e))?;
        tx.commit()
            .await
            .map_err(|e| self.fail("create the lease table", e))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl LeaseStore for PostgresLeases {
    async fn acquire(
        &self,
        flow_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        let client = self.client("acquire").await?;
        let row = client
            .query_opt(&self.sql.acquire, &[&flow_id, &owner, &millis(ttl)])
            .await
            .map_err(|e| self.fail("acquire", e))?;
        Ok(row.map(|r| Lease {
            flow_id: flow_id.to_string(),
            owner: owner.to_string(),
            generation: r.get(0),
        }))
    }

    async fn claim_due(
        &self,
        owner: &str,
        ttl: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>, LeaseError> {
        let client = self.client("claim").await?;
        let rows = client
            .query(&self.sql.claim, &[&owner, &i64::from(limit), &millis(ttl)])
            .await
            .map_err(|e| self.fail("claim", e))?;
        Ok(rows
            .iter()
            .map(|r| Lease {
                flow_id: r.get(0),
                owner: owner.to_string(),
                generation: r.get(1),
            })
            .collect())
    }

    async fn heartbeat(&self, lease: &Lease, ttl: Duration) -> Result<bool, LeaseError> {
        let client = self.client("heartbeat").await?;
        let n = client
            .execute(
                &self.sql.heartbeat,
                &[
                    &lease.flow_id,
                    &lease.owner,
                    &millis(ttl),
                    &lease.generation,
                ],
            )
            .await
            .map_err(|e| self.fail("heartbeat", e))?;
        Ok(n == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        let client = self.client("release").await?;
        client
            .execute(
                &self.sql.release,
                &[&lease.flow_id, &lease.owner, &lease.generation],
            )
            .await
            .map_err(|e| self.fail("release", e))?;
        Ok(())
    }

    async fn hand_back(&self, lease: &Lease) -> Result<(), LeaseError> {
        let client = self.client("hand back").await?;
        client
            .execute(
                &self.sql.hand_back,
                &[&lease.flow_id, &lease.owner, &lease.generation],
            )
            .await
            .map_err(|e| self.fail("hand back", e))?;
        Ok(())
    }

    async fn forget(&self, flow_id: &str) -> Result<(), LeaseError> {
        let client = self.client("forget").await?;
        client
            .execute(&self.sql.forget, &[&flow_id])
            .await
            .map_err(|e| self.fail("forget", e))?;
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }
}
