use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<PipelineFile, ConfigError> {
    parse("p.yaml", text, no_env)
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.diagnostics(),
    }
}

const GOOD: &str = "\
version: 2.2
pipelines:
  - id: gen-to-file
    status: running
    name: Generator to file
    description: demo
    connectors:
      - id: gen
        type: source
        plugin: builtin:generator
        name: the generator
        settings:
          count: 10
          burst: true
          rate: 0.50
        processors:
          - id: sp
            plugin: field.set
            settings: {field: .Key}
      - id: out
        type: destination
        plugin: builtin:file@v0.1.0
        settings:
          path: ./out.txt
        processors:
          - id: dp
            plugin: noop
    processors:
      - id: pp
        plugin: noop
        condition: '{{ eq .Metadata.x \"y\" }}'
        workers: 2
    dead-letter-queue:
      plugin: builtin:file
      settings:
        path: ./dlq.txt
      window-size: 5
      window-nack-threshold: 2
";

#[test]
fn loads_every_key_of_version_2_2() {
    let file = load(GOOD).expect("valid");
    assert!(file.warnings.is_empty(), "{:?}", file.warnings);
    assert_eq!(file.pipelines.len(), 1);
    let p = &file.pipelines[0];
    assert_eq!(p.status, Status::Running);
    assert_eq!(p.name, "Generator to file");
    assert_eq!(p.description.as_deref(), Some("demo"));
    let c = &p.config;
    assert_eq!(c.id, "gen-to-file");
    assert_eq!(c.source.id, "gen");
    assert_eq!(c.source.plugin, "builtin:generator");
    // Numbers and booleans keep their text.
    assert_eq!(c.source.settings["count"], "10");
    assert_eq!(c.source.settings["burst"], "true");
    assert_eq!(c.source.settings["rate"], "0.50");
    assert_eq!(c.destinations.len(), 1);
    assert_eq!(c.destinations[0].settings["path"], "./out.txt");
    let order: Vec<&str> = c.processors.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(order, ["sp", "pp", "dp"]);
    assert_eq!(c.processors[0].settings["field"], ".Key");
    assert_eq!(c.processors[1].workers, Some(2));
    assert_eq!(
        c.processors[1].condition.as_deref(),
        Some("{{ eq .Metadata.x \"y\" }}")
    );
    assert_eq!(c.dlq.plugin, "builtin:file");
    assert_eq!(c.dlq.settings["path"], "./dlq.txt");
    assert_eq!(c.dlq.window_size, 5);
    assert_eq!(c.dlq.window_nack_threshold, 2);
}

#[test]
fn defaults_follow_conduit() {
    let text = "version: 2.2\npipelines:\n- id: p\n  connectors:\n  - {id: a, type: source, plugin: generator}\n  - {id: b, type: destination, plugin: log}\n";
    let file = load(text).expect("valid");
    let p = &file.pipelines[0];
    assert_eq!(p.status, Status::Stopped);
    assert_eq!(p.name, "p");
    assert_eq!(p.config.dlq, DlqConfig::default());
    assert!(p.config.source.settings.is_empty());
}

#[test]
fn version_may_be_omitted_or_any_2_x() {
    let body = "pipelines:\n- id: p\n  connectors:\n  - {id: a, type: source, plugin: generator}\n  - {id: b, type: destination, plugin: log}\n";
    assert!(load(body).is_ok());
    for v in ["2", "2.0", "2.1", "\"2.2\""] {
        let file = load(&format!("version: {v}\n{body}")).expect(v);
        assert!(file.warnings.is_empty(), "{v}");
    }
    let newer = load(&format!("version: 2.7\n{body}")).expect("newer minor");
    assert_eq!(newer.warnings.len(), 1);
    assert!(newer.warnings[0].to_string().contains("newer than 2.2"));
}

#[test]
fn unsupported_versions_are_reported_clearly() {
    let errs = errors("version: 1.0\npipelines:\n  p1:\n    status: running\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("p.yaml:1:1: version:"), "{}", errs[0]);
    assert!(errs[0].contains("1.x format"), "{}", errs[0]);
    let errs = errors("version: 3.0\npipelines: []\n");
    assert!(
        errs[0].contains("unsupported version \"3.0\""),
        "{}",
        errs[0]
    );
}

#[test]
fn unknown_keys_are_errors_with_line_and_column() {
    let text = "version: 2.2\npipelines:\n  - id: p\n    statuss: running\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("p.yaml:4:5: "), "{}", errs[0]);
    assert!(errs[0].contains("statuss"), "{}", errs[0]);
    assert!(errs[0].contains("pipelines[0]"), "{}", errs[0]);
}

#[test]
fn the_short_dlq_spelling_is_accepted_as_the_dead_letter_queue() {
    let text = "version: 2.2\npipelines:\n  - id: p\n    status: running\n    connectors:\n      - id: s\n        type: source\n        plugin: generator\n      - id: d\n        type: destination\n        plugin: log\n    dlq:\n      plugin: builtin:file\n      settings:\n        path: ./dlq.txt\n      window-size: 3\n";
    let file = load(text).expect("valid");
    let c = &file.pipelines[0].config;
    assert_eq!(c.dlq.plugin, "builtin:file");
    assert_eq!(c.dlq.window_size, 3);
}

#[test]
fn invalid_yaml_reports_line_and_column() {
    let errs = errors("version: 2.2\npipelines:\n  - id: p\n   status: [running\n");
    assert_eq!(errs.len(), 1);
    let rest = errs[0].strip_prefix("p.yaml:").expect("file name");
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts.next().and_then(|l| l.parse().ok()).expect("line");
    let col: usize = parts.next().and_then(|c| c.parse().ok()).expect("column");
    assert!(line >= 4, "{}", errs[0]);
    assert!(col >= 1);
}

#[test]
fn wrong_types_are_reported_where_they_are() {
    let text = "pipelines:\n  - id: p\n    status: sometimes\n";
    let errs = errors(text);
    assert!(errs[0].starts_with("p.yaml:3:13: "), "{}", errs[0]);
    assert!(errs[0].contains("running"), "{}", errs[0]);
    let text = "pipelines:\n  - id: p\n    connectors:\n      - id: a\n        type: source\n        plugin: x\n        settings:\n          path: [1, 2]\n";
    let errs = errors(text);
    assert!(errs[0].starts_with("p.yaml:8:"), "{}", errs[0]);
    assert!(errs[0].contains("settings.path"), "{}", errs[0]);
}

#[test]
fn exactly_one_source_is_required() {
    let two = "\
pipelines:
  - id: p
    connectors:
      - id: s1
        type: source
        plugin: generator
      - id: s2
        type: source
        plugin: file
      - id: d
        type: destination
        plugin: log
";
    let errs = errors(two);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("p.yaml:7:7: pipelines[0].connectors[1]: "),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("2 source connectors"), "{}", errs[0]);
    assert!(errs[0].contains("exactly one source"), "{}", errs[0]);
    assert!(errs[0].contains("\"s1\" at line 4"), "{}", errs[0]);

    let none =
        "pipelines:\n  - id: p\n    connectors:\n      - {id: d, type: destination, plugin: log}\n";
    let errs = errors(none);
    assert!(
        errs[0].starts_with("p.yaml:2:3: pipelines[0]: "),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("no source"), "{}", errs[0]);
}

#[test]
fn at_least_one_destination_is_required() {
    let text = "pipelines:\n  - id: p\n    connectors:\n      - {id: s, type: source, plugin: generator}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("no destination"), "{}", errs[0]);
}

#[test]
fn duplicate_ids_point_at_both_places() {
    let text = "\
pipelines:
  - id: p
    connectors:
      - {id: a, type: source, plugin: generator}
      - {id: a, type: destination, plugin: log}
      - {id: b, type: destination, plugin: log}
    processors:
      - {id: x, plugin: noop}
      - {id: x, plugin: noop}
  - id: p
    connectors:
      - {id: a, type: source, plugin: generator}
      - {id: b, type: destination, plugin: log}
";
    let errs = errors(text);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].starts_with("p.yaml:5:"), "{}", errs[0]);
    assert!(errs[0].contains("duplicate connector id \"a\" (first defined at line 4)"));
    assert!(errs[1].starts_with("p.yaml:9:"), "{}", errs[1]);
    assert!(
        errs[1].contains("duplicate processor id \"x\""),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].starts_with("p.yaml:10:5: pipelines[1].id: "),
        "{}",
        errs[2]
    );
    assert!(errs[2].contains("duplicate pipeline id \"p\" (first defined at line 2)"));
}

#[test]
fn ids_are_checked() {
    let text = "pipelines:\n  - id: 'has space'\n    connectors:\n      - {id: 'a/b', type: source, plugin: generator}\n      - {id: d, type: destination, plugin: log}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("pipeline id \"has space\" contains ' '"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("connector id \"a/b\" contains '/'"),
        "{}",
        errs[1]
    );
}

#[test]
fn several_documents_are_loaded_in_order() {
    let text = "\
---
version: 2.2
pipelines:
  - id: one
    connectors:
      - {id: a, type: source, plugin: generator}
      - {id: b, type: destination, plugin: log}
---
# the second document
version: 2.0
pipelines:
  - id: two
    status: sometimes
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("p.yaml:13:13: "), "{}", errs[0]);
    let ok = text.replace("sometimes", "running\n    connectors:\n      - {id: a, type: source, plugin: generator}\n      - {id: b, type: destination, plugin: log}");
    let file = load(&ok).expect("valid");
    let ids: Vec<&str> = file
        .pipelines
        .iter()
        .map(|p| p.config.id.as_str())
        .collect();
    assert_eq!(ids, ["one", "two"]);
}

#[test]
fn an_empty_file_defines_no_pipelines() {
    let errs = errors("# nothing here\n");
    assert!(errs[0].contains("defines no pipelines"), "{}", errs[0]);
    let errs = errors("version: 2.2\n");
    assert!(errs[0].contains("no `pipelines:`"), "{}", errs[0]);
}

#[test]
fn processor_fields_are_checked() {
    let text = "\
version: 2.2
pipelines:
  - id: p
    connectors:
      - {id: a, type: source, plugin: generator}
      - {id: b, type: destination, plugin: log}
    processors:
      - {id: w, plugin: noop, workers: 0}
      - {id: t, type: noop}
      - {id: n}
";
    match load(text) {
        Ok(_) => panic!("invalid"),
        Err(e) => {
            let errs = e.diagnostics();
            assert_eq!(errs.len(), 2, "{errs:?}");
            assert!(
                errs[0].contains("workers must be at least 1, not 0"),
                "{}",
                errs[0]
            );
            assert!(errs[1].contains("has no `plugin`"), "{}", errs[1]);
        }
    }
    let ok = text
        .replace(", workers: 0", "")
        .replace("      - {id: n}\n", "");
    let file = load(&ok).expect("valid");
    assert_eq!(file.warnings.len(), 1);
    assert!(file.warnings[0]
        .to_string()
        .contains("`type` is deprecated"));
    assert_eq!(file.pipelines[0].config.processors[1].plugin, "noop");
}

#[test]
fn several_destinations_cannot_have_processors() {
    let text = "\
pipelines:
  - id: p
    connectors:
      - {id: a, type: source, plugin: generator}
      - {id: b, type: destination, plugin: log, processors: [{id: x, plugin: noop}]}
      - {id: c, type: destination, plugin: log}
";
    let errs = errors(text);
    assert!(
        errs[0].contains("processors on destination \"b\""),
        "{}",
        errs[0]
    );
}

#[test]
fn dlq_windows_must_not_be_negative() {
    let text = "pipelines:\n  - id: p\n    connectors:\n      - {id: a, type: source, plugin: generator}\n      - {id: b, type: destination, plugin: log}\n    dead-letter-queue:\n      window-size: -1\n";
    let errs = errors(text);
    assert!(
        errs[0].starts_with("p.yaml:7:7: pipelines[0].dead-letter-queue.window-size: "),
        "{}",
        errs[0]
    );
}

#[test]
fn environment_variables_are_interpolated_with_positions() {
    let text = "pipelines:\n  - id: p\n    status: running\n    connectors:\n      - {id: a, type: source, plugin: generator}\n      - id: b\n        type: destination\n        plugin: file\n        settings:\n          path: ${OUT_DIR:-/tmp}/${OUT_NAME}\n";
    let err = match parse("p.yaml", text, |_| None) {
        Ok(_) => panic!("unset variable"),
        Err(e) => e.diagnostics(),
    };
    assert_eq!(err.len(), 1);
    assert!(err[0].starts_with("p.yaml:10:34: "), "{}", err[0]);
    assert!(err[0].contains("\"OUT_NAME\" is not set"), "{}", err[0]);
    let file = parse("p.yaml", text, |n| {
        (n == "OUT_NAME").then(|| "o.txt".to_string())
    })
    .expect("set");
    assert_eq!(
        file.pipelines[0].config.destinations[0].settings["path"],
        "/tmp/o.txt"
    );
}

#[test]
fn positions_survive_multiline_values() {
    let text = "pipelines:\n  - id: p\n    description: \"${TEXT}\"\n    oops: 1\n";
    let err = match parse("p.yaml", text, |_| Some("a\nb".into())) {
        Ok(_) => panic!("unknown key"),
        Err(e) => e.diagnostics(),
    };
    assert!(err[0].starts_with("p.yaml:4:5: "), "{}", err[0]);
}

#[test]
fn diagnostics_point_at_parts_and_settings() {
    let file = load(GOOD).expect("valid");
    let p = &file.pipelines[0];
    let d = file.diagnostic(
        p,
        Part::Connector("out"),
        Field::Setting("path"),
        "bad".into(),
    );
    assert_eq!(
        d.to_string(),
        "p.yaml:24:11: pipelines[0].connectors[1].settings: \"path\": bad"
    );
    let d = file.diagnostic(
        p,
        Part::Connector("out"),
        Field::Setting("pth"),
        "unknown".into(),
    );
    assert!(d.to_string().starts_with("p.yaml:23:9: "), "{d}");
    let d = file.diagnostic(p, Part::Connector("gen"), Field::Plugin, "nope".into());
    assert!(
        d.to_string()
            .starts_with("p.yaml:10:9: pipelines[0].connectors[0].plugin: "),
        "{d}"
    );
    let d = file.diagnostic(p, Part::Processor("dp"), Field::Whole, "x".into());
    assert!(
        d.to_string()
            .starts_with("p.yaml:26:11: pipelines[0].connectors[1].processors[0]: "),
        "{d}"
    );
    let d = file.diagnostic(p, Part::DeadLetterQueue, Field::Setting("path"), "x".into());
    assert!(
        d.to_string()
            .starts_with("p.yaml:36:9: pipelines[0].dead-letter-queue.settings: "),
        "{d}"
    );
}
