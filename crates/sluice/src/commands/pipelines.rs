//! `sluice pipelines apply|delete|list`: manages the declarative pipelines of a running
//! `sluice serve` (its `pipelines:` section) over HTTP. Definitions are keys `{prefix}{name}` of
//! the configured store, written and deleted through the Dapr state API
//! (`/v1.0/state/{store}`), and listed from the resync of the watch endpoint
//! (`/v1/watch/{store}`), which also tells which replica holds each pipeline's lease.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sluice_sdk::watch_client::SseParser;

use super::remote::{expect_success, RemoteError};
use crate::serve_config::{DEFAULT_LISTEN, DEFAULT_PREFIX, DEFAULT_STORE};
use crate::server::pipelines::{decode_value, LEASE_PREFIX};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server, store and prefix.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The server's base URL.
    #[arg(long, env = "SLUICE_SERVER", value_name = "URL", global = true,
          default_value_t = format!("http://{DEFAULT_LISTEN}"))]
    pub server: String,
    /// The store holding the definitions (the server's `pipelines.store`).
    #[arg(long, value_name = "NAME", global = true, default_value = DEFAULT_STORE)]
    pub store: String,
    /// The key prefix of the definitions (the server's `pipelines.prefix`).
    #[arg(long, value_name = "PREFIX", global = true, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
}

/// `sluice pipelines ...`.
#[derive(Debug, clap::Subcommand)]
pub enum PipelinesCommand {
    /// Write a pipeline file (the `sluice run` format) as a definition: the server starts it, or
    /// restarts it with the new settings.
    Apply {
        /// The pipeline file.
        file: PathBuf,
        /// The definition's name (default: the file name without its extension).
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a definition: the server stops its pipelines.
    Delete {
        /// The definition's name.
        name: String,
    },
    /// List the definitions and the replica running each.
    List,
}

/// Why a `sluice pipelines` command failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelinesError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid pipeline file.
    #[error("{0}")]
    Invalid(String),
    /// No name was given and none can be made from the file name.
    #[error("cannot make a definition name from {}; pass --name", .0.display())]
    NoName(PathBuf),
    /// A request to the server failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one `sluice pipelines` command.
pub async fn run(
    target: &TargetArgs,
    command: &PipelinesCommand,
    out: &mut dyn Write,
) -> Result<(), PipelinesError> {
    let http = reqwest::Client::builder()
        .connect_timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| RemoteError::http(&target.server, e))?;
    let base = target.server.trim_end_matches('/');
    match command {
        PipelinesCommand::Apply { file, name } => {
            let name = match name {
                Some(n) => n.clone(),
                None => default_name(file)?,
            };
            let text = std::fs::read_to_string(file).map_err(|source| PipelinesError::Read {
                path: file.clone(),
                source,
            })?;
            crate::config::parse(&file.display().to_string(), &text, |v| {
                std::env::var(v).ok()
            })
            .map_err(|e| PipelinesError::Invalid(e.to_string()))?;
            let url = format!("{base}/v1.0/state/{}", target.store);
            let body = json!([{ "key": format!("{}{name}", target.prefix), "value": text }]);
            let req = http.post(&url).timeout(REQUEST_TIMEOUT).json(&body);
            expect_success(&url, req.send().await).await?;
            writeln!(
                out,
                "applied {name} ({}{name} in store {})",
                target.prefix, target.store
            )?;
        }
        PipelinesCommand::Delete { name } => {
            let url = format!("{base}/v1.0/state/{}/{}{name}", target.store, target.prefix);
            let req = http.delete(&url).timeout(REQUEST_TIMEOUT);
            expect_success(&url, req.send().await).await?;
            writeln!(out, "deleted {name}")?;
        }
        PipelinesCommand::List => {
            let (defs, leases) = list(&http, base, target).await?;
            writeln!(out, "{:<32} {:<34} {:>8}", "NAME", "REPLICA", "BYTES")?;
            for (name, size) in defs {
                let holder = leases
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or("-", |(_, h)| h.as_str());
                writeln!(out, "{name:<32} {holder:<34} {size:>8}")?;
            }
        }
    }
    Ok(())
}

/// The file name without its extension.
fn default_name(file: &Path) -> Result<String, PipelinesError> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| PipelinesError::NoName(file.to_path_buf()))
}

/// Definitions (name, size in bytes) and lease holders (name, replica), read from the first
/// event (the resync) of the watch endpoint.
async fn list(
    http: &reqwest::Client,
    base: &str,
    target: &TargetArgs,
) -> Result<(Vec<(String, usize)>, Vec<(String, String)>), PipelinesError> {
    let mut url = reqwest::Url::parse(&format!("{base}/v1/watch/{}", target.store))
        .map_err(|e| RemoteError::http(base, e))?;
    url.query_pairs_mut()
        .append_pair("prefix", &target.prefix)
        .append_pair("prefix", LEASE_PREFIX);
    let shown = url.to_string();
    let response = expect_success(&shown, http.get(url).send().await).await?;
    let bad = |message: String| PipelinesError::from(RemoteError::http(&shown, message));
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    let read = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| bad(e.to_string()))?;
            if let Some(frame) = parser
                .push(&chunk)
                .into_iter()
                .find(|f| f.event == "resync")
            {
                return Ok(frame.data);
            }
        }
        Err(bad("the stream ended before its first event".into()))
    };
    let data = tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| bad("no answer in time".into()))??;
    let doc: serde_json::Value = serde_json::from_str(&data).map_err(|e| bad(e.to_string()))?;
    let mut defs = Vec::new();
    let mut leases = Vec::new();
    for e in doc["entries"].as_array().into_iter().flatten() {
        let (Some(key), Some(value)) = (e["key"].as_str(), e["value"].as_str()) else {
            continue;
        };
        if let Some(name) = key.strip_prefix(LEASE_PREFIX) {
            leases.push((name.to_string(), value.to_string()));
        } else if let Some(name) = key.strip_prefix(target.prefix.as_str()) {
            let size = decode_value(value.as_bytes()).map_or(value.len(), |t| t.len());
            defs.push((name.to_string(), size));
        }
    }
    Ok((defs, leases))
}
