//! The `sluice` binary end to end: `validate`, `connectors` and `run`, with good and bad files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `sluice` command with a clean environment for the variables it reads.
fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("SLUICE_DATA_DIR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

fn output(c: &mut Command) -> Output {
    c.output().expect("run sluice")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

fn validate(file: &Path) -> Output {
    output(sluice().arg("validate").arg(file))
}

fn assert_failed_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr:\n{err}"
    );
    assert_eq!(o.status.code(), Some(1), "stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// A generator → file pipeline writing `count` records to `out`.
fn generator_to_file(id: &str, count: u64, out: &Path) -> String {
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
          recordCount: {count}
      - id: out
        type: destination
        plugin: builtin:file
        settings:
          path: {out}
",
        out = out.display()
    )
}

fn line_count(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn validate_accepts_a_good_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.txt");
    let f = write(dir.path(), "p.yaml", &generator_to_file("good", 5, &out));
    let o = validate(&f);
    assert!(o.status.success(), "stderr:\n{}", stderr(&o));
    assert!(
        stdout(&o).contains("valid, 1 pipeline(s): good (running)"),
        "{}",
        stdout(&o)
    );
    assert!(!out.exists(), "validate must not run anything");
}

#[test]
fn every_example_validates() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        seen += 1;
        let o = validate(&path);
        assert!(
            o.status.success(),
            "{} does not validate:\n{}",
            path.display(),
            stderr(&o)
        );
    }
    assert!(seen >= 4, "expected at least 4 examples, found {seen}");
}

#[test]
fn invalid_yaml_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "bad.yaml",
        "version: 2.2\npipelines:\n  - id: p\n    connectors: [\n      {id: a, type: source\n",
    );
    let o = validate(&f);
    let err = stderr(&o);
    assert_failed_with(&o, &["bad.yaml:"]);
    let prefix = format!("{}:", f.display());
    let line = err
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no diagnostic line in:\n{err}"));
    let mut parts = line[prefix.len()..].splitn(3, ':');
    let line_no: usize = parts
        .next()
        .and_then(|n| n.parse().ok())
        .expect("line number");
    let col: usize = parts.next().and_then(|n| n.parse().ok()).expect("column");
    assert!(line_no >= 4 && col >= 1, "{line}");
}

#[test]
fn unknown_keys_are_reported_with_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = generator_to_file("p", 5, &dir.path().join("o.txt")).replace(
        "    status: running\n",
        "    status: running\n    colour: blue\n",
    );
    let f = write(dir.path(), "p.yaml", &text);
    let o = validate(&f);
    assert_failed_with(
        &o,
        &[&format!("{}:5:5: ", f.display()), "colour", "pipelines[0]"],
    );
}

#[test]
fn unknown_plugins_are_reported_at_the_plugin_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text =
        generator_to_file("p", 5, &dir.path().join("o.txt")).replace("builtin:file", "builtin:s3");
    let f = write(dir.path(), "p.yaml", &text);
    let o = validate(&f);
    assert_failed_with(
        &o,
        &[
            &format!("{}:13:9: pipelines[0].connectors[1].plugin: ", f.display()),
            "\"builtin:s3\"",
            "generator",
        ],
    );
}

#[test]
fn missing_and_ill_typed_parameters_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = generator_to_file("p", 5, &dir.path().join("o.txt"))
        .replace("recordCount: 5", "recordCount: many")
        .replace(
            &format!("path: {}", dir.path().join("o.txt").display()),
            "pth: o.txt",
        );
    let f = write(dir.path(), "p.yaml", &text);
    let o = validate(&f);
    let file = f.display().to_string();
    assert_failed_with(
        &o,
        &[
            &format!("{file}:10:11: pipelines[0].connectors[0].settings: \"recordCount\": "),
            "\"many\"",
            &format!("{file}:14:9: pipelines[0].connectors[1].settings: \"path\": "),
            "required",
            &format!("{file}:15:11: pipelines[0].connectors[1].settings: \"pth\": "),
            "unknown parameter",
        ],
    );
}

#[test]
fn a_missing_or_unreadable_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.yaml");
    let o = validate(&missing);
    assert_failed_with(&o, &["cannot read pipeline file", "nope.yaml"]);
    // A directory cannot be read as a file, even by root.
    let o = validate(dir.path());
    assert_failed_with(&o, &["cannot read pipeline file"]);
    let o = output(
        sluice()
            .arg("run")
            .arg(&missing)
            .arg("--data-dir")
            .arg(dir.path().join("data")),
    );
    assert_failed_with(&o, &["cannot read pipeline file"]);
}

#[test]
fn unset_environment_variables_are_named_with_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = generator_to_file("p", 5, Path::new("${SLUICE_TEST_UNSET_VAR}"));
    let f = write(dir.path(), "p.yaml", &text);
    let o = output(
        sluice()
            .arg("validate")
            .arg(&f)
            .env_remove("SLUICE_TEST_UNSET_VAR"),
    );
    assert_failed_with(
        &o,
        &[
            &format!("{}:15:17: ", f.display()),
            "\"SLUICE_TEST_UNSET_VAR\" is not set",
        ],
    );
    let o = output(
        sluice()
            .arg("validate")
            .arg(&f)
            .env("SLUICE_TEST_UNSET_VAR", dir.path().join("x.txt")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn two_sources_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = generator_to_file("p", 5, &dir.path().join("o.txt")).replace(
        "      - id: out\n",
        "      - id: gen2\n        type: source\n        plugin: builtin:generator\n      - id: out\n",
    );
    let f = write(dir.path(), "p.yaml", &text);
    let o = validate(&f);
    assert_failed_with(&o, &["2 source connectors", "exactly one source"]);
}

#[test]
fn connectors_list_shows_the_builtins() {
    let o = output(sluice().args(["connectors", "list"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for n in ["blackhole", "file", "generator", "log"] {
        assert!(names.contains(&n), "{n} missing from:\n{out}");
    }
    let file_line = out
        .lines()
        .find(|l| l.starts_with("file "))
        .expect("file line");
    assert!(file_line.contains("source,destination"), "{file_line}");
    assert!(file_line.contains(" v"), "version missing: {file_line}");
}

#[test]
fn connectors_spec_describes_every_parameter() {
    let o = output(sluice().args(["connectors", "spec", "builtin:file"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("file v"), "{out}");
    assert!(out.contains("Source parameters:"), "{out}");
    assert!(out.contains("Destination parameters:"), "{out}");
    assert!(out.contains("  path (file, required)"), "{out}");

    let o = output(sluice().args(["connectors", "spec", "file", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let spec: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON spec");
    assert_eq!(spec["name"], "file");
    assert_eq!(spec["source_params"]["path"]["type"], "file");
    assert_eq!(spec["types"], serde_json::json!(["source", "destination"]));

    let o = output(sluice().args(["connectors", "spec", "nope"]));
    assert_failed_with(&o, &["unknown connector plugin \"nope\""]);
}

#[test]
fn run_writes_exactly_count_records_and_a_second_run_adds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = dir.path().join("out.txt");
    let f = write(dir.path(), "p.yaml", &generator_to_file("twice", 250, &out));
    let run = || output(sluice().arg("run").arg(&f).arg("--data-dir").arg(&data));

    let o = run();
    assert!(o.status.success(), "first run failed:\n{}", stderr(&o));
    assert_eq!(line_count(&out), 250);
    let err = stderr(&o);
    assert!(
        err.contains("pipeline \"twice\" finished: 250 records read"),
        "summary missing:\n{err}"
    );
    assert!(data.join("state.redb").exists());

    // Same pipeline id, same data dir: the checkpoint is at the end, nothing is redone.
    let o = run();
    assert!(o.status.success(), "second run failed:\n{}", stderr(&o));
    assert_eq!(line_count(&out), 250, "the second run wrote records again");
    assert!(
        stderr(&o).contains("pipeline \"twice\" finished: 0 records read"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_data_dir_can_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("env-data");
    let out = dir.path().join("out.txt");
    let f = write(dir.path(), "p.yaml", &generator_to_file("envdir", 3, &out));
    let o = output(sluice().arg("run").arg(&f).env("SLUICE_DATA_DIR", &data));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(data.join("state.redb").exists());
    assert_eq!(line_count(&out), 3);
}

#[test]
fn a_bad_file_leaves_no_state_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = dir.path().join("out.txt");
    let good = generator_to_file("same-id", 40, &out);
    let bad = write(
        dir.path(),
        "bad.yaml",
        &good.replace("recordCount: 40", "recordCount: 40\n          colour: blue"),
    );
    let o = output(sluice().arg("run").arg(&bad).arg("--data-dir").arg(&data));
    assert_failed_with(&o, &["\"colour\"", "unknown parameter"]);
    assert!(!data.exists(), "a rejected file must not create state");
    assert!(!out.exists());

    // A file that is valid but fails at run time (the output's directory does not exist) ...
    let missing_dir = dir.path().join("no-such-dir").join("out.txt");
    let failing = write(
        dir.path(),
        "failing.yaml",
        &generator_to_file("same-id", 40, &missing_dir),
    );
    let o = output(
        sluice()
            .arg("run")
            .arg(&failing)
            .arg("--data-dir")
            .arg(&data),
    );
    assert!(!o.status.success(), "expected a run-time failure");
    assert!(stderr(&o).contains("same-id"), "{}", stderr(&o));

    // ... and the good file then runs completely with the same data dir.
    let f = write(dir.path(), "good.yaml", &good);
    let o = output(sluice().arg("run").arg(&f).arg("--data-dir").arg(&data));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(line_count(&out), 40);
}

#[test]
fn a_file_with_only_stopped_pipelines_has_nothing_to_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = generator_to_file("idle", 5, &dir.path().join("o.txt"))
        .replace("status: running", "status: stopped");
    let f = write(dir.path(), "p.yaml", &text);
    let o = output(
        sluice()
            .arg("run")
            .arg(&f)
            .arg("--data-dir")
            .arg(dir.path().join("d")),
    );
    assert_failed_with(&o, &["no pipeline has `status: running`"]);
}

#[test]
fn pipelines_of_a_file_run_concurrently_and_stopped_ones_do_not_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.txt");
    let b = dir.path().join("b.txt");
    let c = dir.path().join("c.txt");
    let one = generator_to_file("one", 30, &a);
    let two = generator_to_file("two", 20, &b);
    let three = generator_to_file("three", 10, &c).replace("status: running", "status: stopped");
    let body = |s: &str| {
        s.split_once("pipelines:\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    };
    let text = format!(
        "version: 2.2\npipelines:\n{}{}{}",
        body(&one),
        body(&two),
        body(&three)
    );
    let f = write(dir.path(), "p.yaml", &text);
    let o = output(
        sluice()
            .arg("run")
            .arg(&f)
            .arg("--data-dir")
            .arg(dir.path().join("d")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(line_count(&a), 30);
    assert_eq!(line_count(&b), 20);
    assert!(!c.exists(), "a stopped pipeline ran");
}

/// Runs an endless generator → blackhole pipeline, sends `signal` once it is moving, and returns
/// the process's output.
fn stop_endless_pipeline_with(signal: libc::c_int) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "version: 2.2
pipelines:
  - id: endless
    status: running
    connectors:
      - id: gen
        type: source
        plugin: builtin:generator
        settings:
          rate: 2000
      - id: sink
        type: destination
        plugin: builtin:file
        settings:
          path: ./sink.txt
";
    let f = write(dir.path(), "p.yaml", text);
    let child = sluice()
        .current_dir(dir.path())
        .arg("run")
        .arg(&f)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Let it start and move some records.
    let sink = dir.path().join("sink.txt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while line_count(&sink) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill() failed");
    let started = Instant::now();
    let o = child.wait_with_output().expect("wait");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "graceful stop took too long"
    );
    let err = stderr(&o);
    let read: u64 = err
        .split("pipeline \"endless\" stopped: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop summary in:\n{err}"));
    // Graceful: everything read was written before the process ended.
    assert_eq!(line_count(&sink) as u64, read, "{err}");
    o
}

#[test]
fn sigint_stops_an_endless_pipeline_gracefully() {
    let o = stop_endless_pipeline_with(libc::SIGINT);
    assert!(o.status.success(), "status {:?}:\n{}", o.status, stderr(&o));
    assert!(stderr(&o).contains("press Ctrl-C again"), "{}", stderr(&o));
}

#[test]
fn sigterm_stops_an_endless_pipeline_gracefully() {
    let o = stop_endless_pipeline_with(libc::SIGTERM);
    assert!(o.status.success(), "status {:?}:\n{}", o.status, stderr(&o));
}

#[test]
fn validate_reports_every_problem_of_every_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "version: 2.2
pipelines:
  - id: a
    status: stopped
    connectors:
      - {id: src, type: source, plugin: builtin:generator, settings: {recordCount: -1x}}
      - {id: dst, type: destination, plugin: builtin:nope}
  - id: b
    status: running
    connectors:
      - {id: src, type: source, plugin: builtin:blackhole}
      - {id: dst, type: destination, plugin: builtin:log}
";
    let f = write(dir.path(), "p.yaml", text);
    let o = validate(&f);
    let file = f.display().to_string();
    assert_failed_with(
        &o,
        &[
            &format!("{file}:6:"),
            "\"recordCount\"",
            &format!("{file}:7:"),
            "builtin:nope",
            &format!("{file}:11:"),
            "cannot be used as a source",
            "3 problem(s) found",
        ],
    );
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

#[test]
fn the_generator_to_file_example_runs_with_its_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("gen.jsonl");
    let o = output(
        sluice()
            .arg("run")
            .arg(example("generator-to-file.yaml"))
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .env("SLUICE_COUNT", "100")
            .env("SLUICE_OUTPUT", &out),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).expect("output");
    assert_eq!(text.lines().count(), 100);
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("OpenCDC JSON line");
        assert!(record.get("payload").is_some(), "{line}");
    }
}

#[test]
fn the_file_to_file_example_resolves_relative_paths_against_the_current_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("input.txt"), "one\ntwo\nthree\n").expect("input");
    let o = output(
        sluice()
            .current_dir(dir.path())
            .arg("run")
            .arg(example("file-to-file.yaml"))
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .env_remove("SLUICE_INPUT")
            .env_remove("SLUICE_OUTPUT"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let copied = std::fs::read_to_string(dir.path().join("file-to-file.out.txt")).expect("output");
    assert_eq!(copied, "one\ntwo\nthree\n");
}
