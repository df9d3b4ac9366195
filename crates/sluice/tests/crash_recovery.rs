//! SIGKILL in the middle of a file→file pipeline, several times, then a clean finish: the output holds
//! every input line, in order, with no gaps, and duplicates only after the checkpoint of each kill.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_state::{RedbStore, Store};

const LINE_LEN: usize = 64;
const LINES: usize = 400_000;
const KILLS: usize = 5;
const CHECKPOINT_KEY: &str = "sluice/pipelines/crash/connectors/in/position";

fn line(i: usize) -> String {
    // Fixed width, so a byte offset converts to a line number.
    let mut s = format!("{{\"line\":{i:09},\"pad\":\"");
    while s.len() < LINE_LEN - 3 {
        s.push('x');
    }
    s.push_str("\"}\n");
    s
}

fn parse(l: &str) -> usize {
    l.get(8..17)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("output line is not an input line: {l:?}"))
}

fn write_pipeline(dir: &Path) -> std::path::PathBuf {
    let yaml = format!(
        r#"version: "2.2"
pipelines:
  - id: crash
    status: running
    description: file to file, killed repeatedly
    connectors:
      - id: in
        type: source
        plugin: builtin:file
        settings:
          path: {input}
      - id: out
        type: destination
        plugin: builtin:file
        settings:
          path: {output}
"#,
        input = dir.join("input.jsonl").display(),
        output = dir.join("output.jsonl").display(),
    );
    let p = dir.join("pipeline.yaml");
    std::fs::write(&p, yaml).expect("write pipeline");
    p
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

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Length of the output up to its last complete line (what the destination keeps on reopen).
fn complete_len(p: &Path) -> usize {
    let bytes = std::fs::read(p).unwrap_or_default();
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

async fn checkpoint_lines(data: &Path) -> usize {
    let store = RedbStore::open(data.join("state.redb")).expect("open state after kill");
    let offset = store
        .get(CHECKPOINT_KEY)
        .await
        .expect("read checkpoint")
        .and_then(|i| std::str::from_utf8(&i.value).ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(
        offset % LINE_LEN,
        0,
        "checkpoint {offset} is not at a line boundary"
    );
    offset / LINE_LEN
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_and_repeats_only_after_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let input = dir.path().join("input.jsonl");
    let output = dir.path().join("output.jsonl");
    let mut text = String::with_capacity(LINES * LINE_LEN);
    for i in 0..LINES {
        text.push_str(&line(i));
    }
    std::fs::write(&input, text).expect("write input");
    let pipeline = write_pipeline(dir.path());

    // (byte offset in the output where the next run starts writing, line it must start with)
    let mut restarts: Vec<(usize, usize)> = Vec::new();
    let mut kills = 0;
    while kills < KILLS {
        let start_len = file_len(&output);
        let mut child = spawn(&pipeline, &data);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut finished = false;
        // Kill once the run has written a little more (mid-stream), or it finished by itself.
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                finished = true;
                break;
            }
            if file_len(&output) > start_len + 2 * 1024 * 1024 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if finished {
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        let resume_line = checkpoint_lines(&data).await;
        restarts.push((complete_len(&output), resume_line));
    }
    assert!(
        kills >= 3,
        "the pipeline finished before it could be killed 3 times ({kills})"
    );

    let child = spawn(&pipeline, &data);
    let out = child.wait_with_output().expect("final run");
    assert!(
        out.status.success(),
        "final run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bytes = std::fs::read(&output).expect("read output");
    let text = std::str::from_utf8(&bytes).expect("utf8 output");
    assert!(text.ends_with('\n'));
    let mut offset = 0usize;
    let mut next_restart = restarts.iter().peekable();
    let mut expected = 0usize;
    let mut duplicates = 0usize;
    for l in text.split_inclusive('\n') {
        let got = parse(l);
        if let Some(&&(at, resume)) = next_restart.peek() {
            if offset == at {
                // A new run starts here: exactly after the checkpoint saved before the kill.
                assert_eq!(
                    got, resume,
                    "run after a kill must resume right after its checkpoint"
                );
                assert!(
                    resume <= expected,
                    "gap: resumed at {resume}, expected {expected}"
                );
                duplicates += expected - resume;
                expected = resume;
                next_restart.next();
            }
        }
        assert_eq!(got, expected, "line out of order at byte {offset}");
        expected += 1;
        offset += l.len();
    }
    assert_eq!(expected, LINES, "output ends before the input does");
    assert!(
        next_restart.next().is_none(),
        "a restart point was never reached"
    );
    println!("{kills} kills, {duplicates} duplicated lines, {LINES} lines delivered");
}
