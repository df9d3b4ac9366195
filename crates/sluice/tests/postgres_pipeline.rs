//! End to end through the real binary: `sluice run` on a PostgreSQL → PostgreSQL pipeline copies
//! a table's snapshot and then its inserts, updates and deletes into another table, stops
//! gracefully on SIGTERM, and on the next run catches up with what changed while it was stopped.
//!
//! Needs `SLUICE_TEST_POSTGRES_URL`, `psql`, and wal_level = logical; skips with a message
//! otherwise. Its tables, slot and publication are unique to the run and dropped at the end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const URL_VAR: &str = "SLUICE_TEST_POSTGRES_URL";

/// Runs SQL through `psql`; returns its unaligned output.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Drops the test's tables, slot and publication, and kills a still running `sluice`, even when
/// the test fails.
struct Resources {
    url: String,
    tables: Vec<String>,
    slot: String,
    publication: String,
    child: Option<Child>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..50 {
            let active = psql(
                &self.url,
                &format!(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}' AND active",
                    self.slot
                ),
            );
            if active.as_deref() != Ok("1") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = psql(
            &self.url,
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{}'",
                self.slot
            ),
        );
        let _ = psql(
            &self.url,
            &format!("DROP PUBLICATION IF EXISTS {}", self.publication),
        );
        for t in &self.tables {
            let _ = psql(&self.url, &format!("DROP TABLE IF EXISTS {t}"));
        }
    }
}

fn spawn(pipeline: &Path, data: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(pipeline)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice")
}

/// Sends SIGTERM and waits for a graceful exit; returns stderr.
fn stop(child: &mut Option<Child>) -> String {
    let Some(c) = child.take() else {
        return String::new();
    };
    let pid = i32::try_from(c.id()).expect("pid fits");
    // SAFETY: signalling a child process we spawned and still own.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let out = c.wait_with_output().expect("wait for sluice");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "sluice exited with {}: {err}",
        out.status
    );
    err
}

/// Waits until the target table holds exactly what the source table holds.
fn wait_until_equal(r: &mut Resources, src: &str, dst: &str) {
    let content = |t: &str| {
        psql(
            &r.url,
            &format!("SELECT coalesce(string_agg(id || ':' || name || ':' || qty, ',' ORDER BY id), '') FROM {t}"),
        )
        .expect("read table")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, got) = (content(src), content(dst));
        if want == got {
            return;
        }
        if let Some(c) = r.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let err = r
                    .child
                    .take()
                    .and_then(|c| c.wait_with_output().ok())
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                panic!("sluice exited early with {status}: {err}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "the target never caught up:\n source {want}\n target {got}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn postgres_to_postgres_pipeline_copies_snapshot_and_changes_and_resumes_after_a_restart() {
    let Ok(url) = std::env::var(URL_VAR) else {
        eprintln!("skipping: {URL_VAR} is not set");
        return;
    };
    match psql(&url, "SHOW wal_level") {
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
        Ok(level) if level != "logical" => {
            eprintln!(
                "skipping: the server has wal_level = {level}, logical replication needs logical"
            );
            return;
        }
        Ok(_) => {}
    }
    let tag = std::process::id();
    let src = format!("sl_pipe_src_{tag}");
    let dst = format!("sl_pipe_dst_{tag}");
    let mut r = Resources {
        url: url.clone(),
        tables: vec![src.clone(), dst.clone()],
        slot: format!("sl_pipe_slot_{tag}"),
        publication: format!("sl_pipe_pub_{tag}"),
        child: None,
    };
    for t in [&src, &dst] {
        psql(
            &url,
            &format!("CREATE TABLE {t} (id integer PRIMARY KEY, name text, qty integer)"),
        )
        .expect("create table");
    }
    psql(
        &url,
        &format!("INSERT INTO {src} SELECT g, 'row ' || g, g FROM generate_series(1, 50) g"),
    )
    .expect("insert");

    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "version: 2.2
pipelines:
  - id: pg-to-pg
    status: running
    connectors:
      - id: source
        type: source
        plugin: builtin:postgres
        settings:
          url: {url}
          tables: {src}
          cdcMode: logrepl
          logrepl.slotName: {slot}
          logrepl.publicationName: {publication}
      - id: target
        type: destination
        plugin: builtin:postgres
        settings:
          url: {url}
          table: {dst}
",
            slot = r.slot,
            publication = r.publication,
        ),
    )
    .expect("write pipeline");
    let data = dir.path().join("data");

    // First run: the snapshot, then live changes.
    r.child = Some(spawn(&pipeline, &data));
    wait_until_equal(&mut r, &src, &dst);
    psql(
        &url,
        &format!(
            "INSERT INTO {src} SELECT g, 'row ' || g, g FROM generate_series(51, 80) g; \
             UPDATE {src} SET name = 'renamed', qty = qty * 10 WHERE id <= 10; \
             DELETE FROM {src} WHERE id BETWEEN 11 AND 20;"
        ),
    )
    .expect("change the source");
    wait_until_equal(&mut r, &src, &dst);
    stop(&mut r.child);

    // Changes while the pipeline is stopped are kept by the slot.
    psql(
        &url,
        &format!(
            "INSERT INTO {src} SELECT g, 'late ' || g, g FROM generate_series(81, 100) g; \
             DELETE FROM {src} WHERE id = 21; UPDATE {src} SET qty = -1 WHERE id = 50;"
        ),
    )
    .expect("change the source");
    let confirmed = psql(
        &url,
        &format!(
            "SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = '{}'",
            r.slot
        ),
    )
    .expect("read the slot");
    assert_eq!(confirmed, "t", "the slot exists and was confirmed");

    // Second run: resumes from its checkpoint, no new snapshot needed to catch up.
    r.child = Some(spawn(&pipeline, &data));
    wait_until_equal(&mut r, &src, &dst);
    stop(&mut r.child);
}
