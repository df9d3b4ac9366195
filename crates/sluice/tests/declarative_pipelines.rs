//! Declarative pipelines of `sluice serve` (`pipelines:`), through the real binary and
//! `sluice pipelines`: apply → the pipeline runs (its file grows), change → restarted with the new
//! settings, delete → stopped, a bad definition is logged and leaves the others alone; and two
//! replicas on PostgreSQL: one pipeline runs on exactly one, and moves when that one is killed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A running `sluice serve` with JSON logs collected; killed when dropped.
struct Server {
    child: Child,
    url: String,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Server {
    fn start(config: &Path, data_dir: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice starts");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("state API on http://").nth(1) {
                    let address = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(address);
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let Ok(address) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice serve did not come up: {:?}", logs.lock().unwrap());
        };
        Server {
            child,
            url: format!("http://{address}"),
            logs,
        }
    }

    /// Log lines whose message is `message` and whose `definition` field is `definition`.
    fn count(&self, message: &str, definition: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l["fields"]["message"] == message && l["fields"]["definition"] == definition
            })
            .count()
    }

    /// Waits until `count(message, definition)` reaches `n`.
    fn wait_for(&self, message: &str, definition: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count(message, definition) < n {
            assert!(
                Instant::now() < deadline,
                "no {n}× {message:?} for {definition:?}; logs: {:#?}",
                self.logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sluice pipelines ARGS` against `server`.
fn pipelines(server: &str, store: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["pipelines", "--server", server, "--store", store])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("sluice pipelines runs")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An endless generator → file pipeline, `rate` records a second, into `out`.
fn generator_to_file(id: &str, rate: u32, out: &Path) -> String {
    format!(
        "version: 2.2
pipelines:
  - id: {id}
    status: running
    connectors:
      - id: gen
        type: source
        plugin: builtin:generator
        settings:
          rate: {rate}
      - id: out
        type: destination
        plugin: builtin:file
        settings:
          path: {out}
",
        out = out.display()
    )
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Waits until `path` has grown past `at_least` bytes.
fn wait_growth(path: &Path, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = size(path);
        if s > at_least {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not grow past {at_least}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts `path` does not change over a short while (its pipeline is stopped).
fn assert_still(path: &Path) {
    let before = size(path);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(size(path), before, "{} still grows", path.display());
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("written");
    p
}

#[test]
fn apply_change_and_delete_start_restart_and_stop_a_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "serve.yaml",
        "stores:\n  - name: main\n    backend: redb\npipelines:\n  store: main\n  leaseTtl: 2s\n\
         signaling:\n  enabled: false\n",
    );
    let server = Server::start(&config, &dir.path().join("data"));
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");

    // Apply: it runs and writes its file.
    let file = write(dir.path(), "gen.yaml", &generator_to_file("gen", 200, &a));
    let out = ok(pipelines(
        &server.url,
        "main",
        &["apply", file.to_str().unwrap()],
    ));
    assert!(out.contains("applied gen"), "{out}");
    server.wait_for("declarative pipelines started", "gen", 1);
    wait_growth(&a, 0);

    // A bad definition is logged with its key and leaves `gen` running.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &generator_to_file("bad", 1, &dir.path().join("bad.jsonl"))
            .replace("builtin:generator", "builtin:nope"),
    );
    ok(pipelines(
        &server.url,
        "main",
        &["apply", bad.to_str().unwrap()],
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l["fields"]["definition"] == "bad" && l["fields"]["key"] == "pipelines/bad")
    {
        assert!(
            Instant::now() < deadline,
            "the bad definition was not reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let grown = size(&a);
    wait_growth(&a, grown);

    // `list` shows both and who runs `gen`.
    let listed = ok(pipelines(&server.url, "main", &["list"]));
    let gen_line = listed
        .lines()
        .find(|l| l.starts_with("gen "))
        .expect("gen listed");
    assert!(
        !gen_line.contains(" - "),
        "gen has a lease holder: {listed}"
    );
    assert!(listed.lines().any(|l| l.starts_with("bad ")), "{listed}");

    // Change: stopped gracefully, started with the new settings (another file).
    let changed = write(dir.path(), "gen2.yaml", &generator_to_file("gen", 200, &b));
    ok(pipelines(
        &server.url,
        "main",
        &["apply", changed.to_str().unwrap(), "--name", "gen"],
    ));
    server.wait_for("declarative pipelines stopped", "gen", 1);
    server.wait_for("declarative pipelines started", "gen", 2);
    wait_growth(&b, 0);
    assert_still(&a);

    // Applying the same definition again changes nothing.
    ok(pipelines(
        &server.url,
        "main",
        &["apply", changed.to_str().unwrap(), "--name", "gen"],
    ));
    let grown = size(&b);
    wait_growth(&b, grown);
    assert_eq!(server.count("declarative pipelines started", "gen"), 2);

    // Delete: stopped.
    ok(pipelines(&server.url, "main", &["delete", "gen"]));
    server.wait_for("declarative pipelines stopped", "gen", 2);
    assert_still(&b);
    let listed = ok(pipelines(&server.url, "main", &["list"]));
    assert!(!listed.lines().any(|l| l.starts_with("gen ")), "{listed}");
}

#[test]
fn on_resync_a_restarted_server_starts_what_is_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "serve.yaml",
        "stores:\n  - name: main\n    backend: redb\npipelines:\n  store: main\n  leaseTtl: 1s\n\
         signaling:\n  enabled: false\n",
    );
    let data = dir.path().join("data");
    let out = dir.path().join("o.jsonl");
    let server = Server::start(&config, &data);
    let file = write(dir.path(), "p.yaml", &generator_to_file("p", 100, &out));
    ok(pipelines(
        &server.url,
        "main",
        &["apply", file.to_str().unwrap()],
    ));
    server.wait_for("declarative pipelines started", "p", 1);
    server.kill();

    // The definition is in the durable store: the next start runs it (its old lease went with
    // the dead replica's session).
    let server = Server::start(&config, &data);
    server.wait_for("declarative pipelines started", "p", 1);
    let s = size(&out);
    wait_growth(&out, s);
}

#[test]
fn two_replicas_on_postgres_run_a_pipeline_once_and_take_over_when_one_dies() {
    let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let table = format!("sluice_decl_{}", std::process::id());
    let config = write(
        dir.path(),
        "serve.yaml",
        &format!(
            "stores:\n  - name: shared\n    backend: postgres\n    settings:\n      url: '{url}'\n      \
             table: {table}\npipelines:\n  store: shared\n  leaseTtl: 1s\nsignaling:\n  enabled: false\n"
        ),
    );
    let one = Server::start(&config, &dir.path().join("one"));
    let two = Server::start(&config, &dir.path().join("two"));
    let out = dir.path().join("o.jsonl");
    let name = format!("ha-{}", std::process::id());
    let file = write(dir.path(), "p.yaml", &generator_to_file(&name, 100, &out));
    ok(pipelines(
        &one.url,
        "shared",
        &["apply", file.to_str().unwrap(), "--name", &name],
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = |s: &Server| s.count("declarative pipelines started", &name);
    while started(&one) + started(&two) == 0 {
        assert!(Instant::now() < deadline, "the pipeline never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_growth(&out, 0);
    // Several lease periods later, still exactly one replica runs it.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        started(&one) + started(&two),
        1,
        "it must run on exactly one replica"
    );
    let (runner, other) = if started(&one) == 1 {
        (one, two)
    } else {
        (two, one)
    };

    // The runner dies without a word: the other takes over once its lease expires.
    runner.kill();
    other.wait_for("declarative pipelines started", &name, 1);
    let s = size(&out);
    wait_growth(&out, s);
    let listed = ok(pipelines(&other.url, "shared", &["list"]));
    assert!(
        listed.lines().any(|l| l.starts_with(name.as_str())),
        "{listed}"
    );
    ok(pipelines(&other.url, "shared", &["delete", &name]));
    other.wait_for("declarative pipelines stopped", &name, 1);
}
