//! The server under test: the DPS router over a [`DataPlane`] on the chosen store, served in this
//! process on `127.0.0.1:0`, and everything the run created removed afterwards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use sluice_signaling::http::{router, Access};
use sluice_signaling::DataPlane;
use sluice_state::{MemoryStore, PostgresOptions, PostgresStore, RedbStore, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::BenchError;

/// The base path the router is mounted under.
pub const BASE_PATH: &str = "/api/v1";

/// Which store the data plane keeps its flows in, or no data plane at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// No data plane: start and terminate are answered at once with a fixed body. The HTTP floor
    /// of this machine and load generator, which no DPS handler can beat; it tells how fast the
    /// machine is when rows are compared across machines.
    Floor,
    /// The in-memory store (not durable).
    Memory,
    /// The durable embedded store (redb, fsync per commit).
    Redb,
    /// PostgreSQL.
    Postgres,
}

impl StoreKind {
    /// The name printed in the table.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Floor => "floor",
            StoreKind::Memory => "memory",
            StoreKind::Redb => "redb",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// What a run created besides the server, removed by [`Served::stop`].
enum Leftover {
    Nothing,
    File(PathBuf),
    Schema { url: String, schema: String },
}

/// A running router on a fresh store.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    leftover: Leftover,
}

/// Opens a fresh store of `kind` (a new redb file under `dir`, a new schema on `postgres_url`)
/// and serves the signaling API over it on an ephemeral port (for [`StoreKind::Floor`], the
/// fixed answers instead).
pub async fn serve(
    kind: StoreKind,
    dir: &Path,
    postgres_url: Option<&str>,
    tag: &str,
) -> Result<Served, BenchError> {
    let (app, leftover) = match open_store(kind, dir, postgres_url, tag).await? {
        Some((store, leftover)) => (
            router(
                DataPlane::builder(store).build(),
                BASE_PATH,
                Access::default(),
            ),
            leftover,
        ),
        None => (floor_router(), Leftover::Nothing),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::new(format!("cannot listen on 127.0.0.1:0: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::new(format!("no local address: {e}")))?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        axum::serve(crate::server::without_nagle(listener), app)
            .with_graceful_shutdown(stop)
            .await
    });
    Ok(Served {
        addr,
        shutdown,
        task,
        leftover,
    })
}

/// A fresh store of `kind` and what to remove after the run; `None` for [`StoreKind::Floor`].
async fn open_store(
    kind: StoreKind,
    dir: &Path,
    postgres_url: Option<&str>,
    tag: &str,
) -> Result<Option<(Arc<dyn Store>, Leftover)>, BenchError> {
    let opened: (Arc<dyn Store>, Leftover) = match kind {
        StoreKind::Floor => return Ok(None),
        StoreKind::Memory => (Arc::new(MemoryStore::new()), Leftover::Nothing),
        StoreKind::Redb => {
            std::fs::create_dir_all(dir)
                .map_err(|e| BenchError::new(format!("cannot create {}: {e}", dir.display())))?;
            let path = dir.join(format!("signaling-{tag}.redb"));
            let _ = RedbStore::remove(&path);
            let open = path.clone();
            let store = tokio::task::spawn_blocking(move || RedbStore::open(&open))
                .await
                .map_err(|e| BenchError::new(format!("opening the redb store: {e}")))?
                .map_err(|e| BenchError::new(format!("opening {}: {e}", path.display())))?;
            (Arc::new(store), Leftover::File(path))
        }
        StoreKind::Postgres => {
            let url = postgres_url.ok_or_else(|| {
                BenchError::new("no PostgreSQL URL (--postgres-url or SLUICE_TEST_POSTGRES_URL)")
            })?;
            let schema = format!("sluice_sigbench_{tag}");
            let options = PostgresOptions {
                table: "flows".to_string(),
                schema: Some(schema.clone()),
                sweep_interval: None,
                ..PostgresOptions::default()
            };
            let store = PostgresStore::connect(url, options)
                .await
                .map_err(|e| BenchError::new(format!("connecting to PostgreSQL: {e}")))?;
            (
                Arc::new(store),
                Leftover::Schema {
                    url: url.to_string(),
                    schema,
                },
            )
        }
    };
    Ok(Some(opened))
}

/// The floor's answer: what a start returns, as far as the load generator reads it.
const FLOOR_ANSWER: &str = r#"{"dataFlowId":"floor","state":"STARTED"}"#;

/// Start and terminate answered at once with [`FLOOR_ANSWER`], nothing read or stored.
fn floor_router() -> axum::Router {
    async fn answer() -> impl IntoResponse {
        ([(header::CONTENT_TYPE, "application/json")], FLOOR_ANSWER)
    }
    axum::Router::new()
        .route(&format!("{BASE_PATH}/dataflows/start"), post(answer))
        .route(
            &format!("{BASE_PATH}/dataflows/{{id}}/terminate"),
            post(answer),
        )
}

impl Served {
    /// Stops the server and removes the store's file or schema.
    pub async fn stop(self) -> Result<(), BenchError> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BenchError::new(format!("the server failed: {e}"))),
            Err(e) => return Err(BenchError::new(format!("the server task failed: {e}"))),
        }
        match self.leftover {
            Leftover::Nothing => Ok(()),
            Leftover::File(path) => RedbStore::remove(&path)
                .map_err(|e| BenchError::new(format!("cannot remove {}: {e}", path.display()))),
            Leftover::Schema { url, schema } => drop_schema(&url, &schema).await,
        }
    }
}

/// Drops the run's schema with everything in it.
async fn drop_schema(url: &str, schema: &str) -> Result<(), BenchError> {
    let failed = |what: &str, e: tokio_postgres::Error| {
        BenchError::new(format!("cannot {what} schema {schema}: {e}"))
    };
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| failed("connect to drop the", e))?;
    let driver = tokio::spawn(connection);
    let dropped = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .map_err(|e| failed("drop the", e));
    drop(client);
    let _ = driver.await;
    dropped
}
