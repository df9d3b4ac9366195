//! A real `sluice serve` process for the end-to-end DPS tests: its own data directory, a free port
//! on the loopback interface, and a configuration file written from JSON (YAML reads JSON).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The DPS base path the test servers use.
pub const BASE_PATH: &str = "/api/v1";

/// A running `sluice serve`; killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// The configuration file and data directory (kept alive with the server).
    dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `signaling` section of a test server: control plane `tck` (token `token`, callbacks to
/// `endpoint`), a quick outbox, loopback http allowed, and the given datasets and destinations.
pub fn signaling_config(
    endpoint: &str,
    token: &str,
    datasets: Value,
    destinations: Value,
) -> Value {
    json!({
        "signaling": {
            "basePath": BASE_PATH,
            "controlPlanes": [{"id": "tck", "endpoint": endpoint, "token": token}],
            "outbox": {"pollInterval": "10ms", "minBackoff": "20ms", "maxBackoff": "200ms"},
            "transfers": {
                "requireHttps": false,
                "tokenTtl": "10m",
                "datasets": datasets,
                "destinations": destinations
            }
        }
    })
}

impl Server {
    /// Starts `sluice serve` with `config` (a JSON document) in a fresh data directory and waits
    /// until it listens.
    pub fn start(config: &Value) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("serve.yaml");
        std::fs::write(&file, serde_json::to_string_pretty(config).expect("json")).expect("write");
        Self::launch(dir)
    }

    /// SIGKILLs the server and starts a new one on the same configuration and data directory
    /// (on a new port).
    pub fn kill_and_restart(mut self) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self.dir.take().expect("the server's directory");
        Self::launch(dir)
    }

    /// Starts `sluice serve` on `dir/serve.yaml` and `dir/data`, and waits until it listens.
    fn launch(dir: tempfile::TempDir) -> Server {
        let file = dir.path().join("serve.yaml");
        let data = dir.path().join("data");
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice starts");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                keep.lock().expect("lock").push(line);
            }
        });
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sluice serve did not come up; stderr:\n{}",
                    logs.lock().expect("lock").join("\n")
                );
            };
            if let Some(rest) = line.split("state API on http://").nth(1) {
                let address = rest.split_whitespace().next().expect("address");
                return Server {
                    child,
                    url: format!("http://{address}"),
                    logs,
                    dir: Some(dir),
                };
            }
        }
    }

    /// The DPS API's base URL.
    pub fn api(&self) -> String {
        format!("{}{BASE_PATH}", self.url)
    }

    /// Everything the server wrote on stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("lock").join("\n")
    }

    /// Fails the test if any request was answered with a 5xx (bad input must never be one).
    pub async fn assert_no_server_errors(&self) {
        let metrics = reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let bad: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("sluice_http_requests_total") && l.contains("status=\"5"))
            .collect();
        assert!(
            bad.is_empty(),
            "5xx answers: {bad:#?}\nlogs:\n{}",
            self.logs()
        );
    }
}

/// A data directory file path as a string.
pub fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// A fresh temporary directory for datasets and destinations.
pub fn files_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    (dir, path)
}
