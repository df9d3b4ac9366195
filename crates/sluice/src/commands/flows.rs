//! `sluice flows list|show`: reads data flows from a running `sluice serve` over HTTP, through
//! Sluice's read-only extension of the DPS API (`GET {basePath}/dataflows[/{id}]`).

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::remote::{expect_success, RemoteError};
use crate::serve_config::{DEFAULT_BASE_PATH, DEFAULT_LISTEN};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "SLUICE_SERVER", value_name = "URL", global = true,
          default_value_t = format!("http://{DEFAULT_LISTEN}"))]
    pub server: String,

    /// A control plane's bearer token (when the server has control planes configured).
    #[arg(
        long,
        env = "SLUICE_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// The server's `signaling.basePath`.
    #[arg(long, value_name = "PATH", global = true, default_value = DEFAULT_BASE_PATH)]
    pub base_path: String,
}

/// `sluice flows ...`.
#[derive(Debug, clap::Subcommand)]
pub enum FlowsCommand {
    /// List data flows as a table: id, process, side, mode, state, dataset, since.
    List {
        /// Only flows in this state (e.g. STARTED; any case).
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// Print the flows as JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one data flow as JSON (secrets masked).
    Show {
        /// The data flow id.
        id: String,
    },
}

/// Why a `sluice flows` command failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    /// A request to the server failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs a `sluice flows` command, writing to `out`.
pub async fn run(
    server: &ServerArgs,
    command: &FlowsCommand,
    out: &mut impl Write,
) -> Result<(), FlowsError> {
    let client = Client::new(server)?;
    match command {
        FlowsCommand::List { state, json } => {
            let flows = client.list(state.as_deref()).await?;
            if *json {
                for f in &flows {
                    writeln!(out, "{f}")?;
                }
            } else {
                write_table(&flows, out)?;
            }
        }
        FlowsCommand::Show { id } => {
            let flow = client.show(id).await?;
            let text = serde_json::to_string_pretty(&flow).unwrap_or_else(|_| flow.to_string());
            writeln!(out, "{text}")?;
        }
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ServerArgs) -> Result<Self, FlowsError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| RemoteError::http(&args.server, e))?;
        let base = format!(
            "{}/{}",
            args.server.trim_end_matches('/'),
            args.base_path.trim_matches('/')
        );
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: args.token.clone(),
        })
    }

    async fn get(&self, url: &str, query: &[(&str, &str)]) -> Result<Value, FlowsError> {
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_segment(v)))
            .collect();
        let full = if query.is_empty() {
            url.to_string()
        } else {
            format!("{url}?{}", query.join("&"))
        };
        let mut req = self.http.get(&full);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = expect_success(url, req.send().await).await?;
        let body = resp.bytes().await.map_err(|e| RemoteError::http(url, e))?;
        Ok(serde_json::from_slice(&body).map_err(|_| {
            RemoteError::http(url, "the answer is not JSON (is this a sluice server?)")
        })?)
    }

    /// Every flow (following pages), optionally in one state.
    async fn list(&self, state: Option<&str>) -> Result<Vec<Value>, FlowsError> {
        let url = format!("{}/dataflows", self.base);
        let mut flows = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("limit", "1000")];
            if let Some(s) = state {
                query.push(("state", s));
            }
            if let Some(t) = &token {
                query.push(("pageToken", t));
            }
            let page = self.get(&url, &query).await?;
            if let Some(items) = page.get("flows").and_then(Value::as_array) {
                flows.extend(items.iter().cloned());
            }
            match page.get("nextPageToken").and_then(Value::as_str) {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(flows),
            }
        }
    }

    async fn show(&self, id: &str) -> Result<Value, FlowsError> {
        let url = format!("{}/dataflows/{}", self.base, encode_segment(id));
        self.get(&url, &[]).await
    }
}

/// Percent-encodes a path segment or query value.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const COLUMNS: [&str; 7] = ["ID", "PROCESS", "SIDE", "MODE", "STATE", "DATASET", "SINCE"];

fn row(f: &Value) -> [String; 7] {
    let text = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let since = f
        .get("stateTimestamp")
        .and_then(Value::as_u64)
        .map(|ms| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        })
        .unwrap_or_else(|| "-".into());
    [
        text("id"),
        text("processId"),
        text("side"),
        text("mode"),
        text("state"),
        text("datasetId"),
        since,
    ]
}

/// Prints flows as an aligned table (a header, then one line per flow).
fn write_table(flows: &[Value], out: &mut impl Write) -> std::io::Result<()> {
    let rows: Vec<[String; 7]> = flows.iter().map(row).collect();
    let mut widths = COLUMNS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str], out: &mut dyn Write| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&COLUMNS, out)?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned() {
        let flows = vec![serde_json::json!({
            "id": "f-1", "processId": "proc-long-name", "side": "provider", "mode": "pull",
            "state": "STARTED", "datasetId": "d", "stateTimestamp": 0
        })];
        let mut out = Vec::new();
        write_table(&flows, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID   PROCESS         SIDE"), "{text}");
        assert!(lines[1].contains("STARTED") && lines[1].ends_with("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
