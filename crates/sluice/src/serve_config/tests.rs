use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "PG_URL" => Some("postgres://u:secret@127.0.0.1:5432/db".into()),
        "REDIS_URL" => Some("redis://127.0.0.1:6379".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<ServeFile, ServeConfigError> {
    parse("serve.yaml", text, env)
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(f) => panic!("expected errors for:\n{text}\ngot {f:?}"),
        Err(ServeConfigError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("unexpected {e}"),
    }
}

fn assert_error(text: &str, needle: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error contains {needle:?}: {errs:#?}"
    );
}

const FULL: &str = "\
listen: 127.0.0.1:4000
dataDir: /var/lib/sluice
stores:
  - name: cache
    backend: memory
  - name: local
    backend: redb
    settings:
      path: local-store.redb
    retryPolicy:
      interval: 50ms
      threshold: 5
      pattern: linear
  - name: orders
    backend: postgres
    settings:
      url: ${PG_URL}
      table: orders_state
  - name: sessions
    backend: redis
    settings:
      url: ${REDIS_URL}
      keyPrefix: 'app:'
state:
  store: local
http:
  maxValueBytes: 1000
  maxBodyBytes: 5000
";

#[test]
fn loads_every_key() {
    let f = load(FULL).expect("valid");
    assert_eq!(f.listen.as_deref(), Some("127.0.0.1:4000"));
    assert_eq!(f.data_dir, Some(PathBuf::from("/var/lib/sluice")));
    assert_eq!(f.state_store.as_deref(), Some("local"));
    assert_eq!(f.max_value_bytes, Some(1000));
    assert_eq!(f.max_body_bytes, Some(5000));
    let names: Vec<&str> = f.stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cache", "local", "orders", "sessions"]);
    assert_eq!(f.stores[0].backend, BackendFile::Memory);
    assert_eq!(f.stores[0].retry, default_retry());
    assert_eq!(
        f.stores[1].backend,
        BackendFile::Redb {
            path: Some(PathBuf::from("local-store.redb"))
        }
    );
    assert_eq!(
        f.stores[1].retry,
        RetryPolicy::new(Duration::from_millis(50), 5, RetryPattern::Linear)
    );
    assert_eq!(
        f.stores[2].backend,
        BackendFile::Postgres {
            url: "postgres://u:secret@127.0.0.1:5432/db".into(),
            options: PostgresOptions {
                table: "orders_state".into(),
                ..PostgresOptions::default()
            }
        }
    );
    assert_eq!(
        f.stores[3].backend,
        BackendFile::Redis {
            url: "redis://127.0.0.1:6379".into(),
            options: RedisOptions {
                key_prefix: "app:".into(),
                ..RedisOptions::default()
            }
        }
    );
}

#[test]
fn resolves_paths_against_the_data_directory_and_applies_overrides() {
    let f = load(FULL).expect("valid");
    let c = f.resolve(Some("127.0.0.1:0".into()), PathBuf::from("/data"));
    assert_eq!(c.listen, "127.0.0.1:0");
    assert_eq!(c.own_state, OwnState::Named("local".into()));
    assert_eq!(
        c.stores[1].backend,
        Backend::Redb {
            path: PathBuf::from("/data/local-store.redb")
        }
    );
    assert_eq!(
        c.http,
        HttpLimits {
            max_value_bytes: 1000,
            max_body_bytes: 5000
        }
    );

    let default_path = load("stores:\n  - name: x\n    backend: redb\n")
        .expect("valid")
        .resolve(None, PathBuf::from("/d"));
    assert_eq!(
        default_path.stores[0].backend,
        Backend::Redb {
            path: PathBuf::from("/d/x.redb")
        }
    );
    assert_eq!(default_path.listen, DEFAULT_LISTEN);
    // Stores declared, no `state.store`: Sluice's own state stays in the embedded file.
    assert_eq!(
        default_path.own_state,
        OwnState::Embedded(PathBuf::from("/d/state.redb"))
    );
}

#[test]
fn no_file_or_an_empty_file_offers_the_embedded_statestore() {
    for text in ["", "# nothing here\n", "stores: []\n"] {
        let c = load(text)
            .expect("valid")
            .resolve(None, PathBuf::from("/d"));
        assert_eq!(c.stores.len(), 1, "{text:?}");
        assert_eq!(c.stores[0].name, DEFAULT_STORE);
        assert_eq!(
            c.stores[0].backend,
            Backend::Redb {
                path: PathBuf::from("/d/state.redb")
            }
        );
        assert_eq!(c.own_state, OwnState::Named(DEFAULT_STORE.into()));
        assert_eq!(c.http, HttpLimits::default());
    }
    assert_eq!(
        ServeConfig::embedded("/d"),
        ServeFile::default().resolve(None, PathBuf::from("/d"))
    );
}

#[test]
fn unknown_keys_are_errors_with_line_and_column() {
    let errs = errors("listen: 127.0.0.1:1\nlisten_addr: x\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("serve.yaml:2:1:") && errs[0].contains("unknown field `listen_addr`"),
        "{errs:?}"
    );
    assert_error(
        "stores:\n  - name: a\n    backend: memory\n    setings: {}\n",
        "serve.yaml:4:5:",
    );
    assert_error("http:\n  maxValueByte: 5\n", "unknown field `maxValueByte`");
}

#[test]
fn unknown_and_missing_settings_point_at_the_setting() {
    let errs =
        errors("stores:\n  - name: pg\n    backend: postgres\n    settings:\n      uri: x\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("serve.yaml:5:7: stores[0].settings.uri: unknown setting")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("serve.yaml:2:3: stores[0]:")
                && e.contains("needs `settings.url`")),
        "{errs:#?}"
    );
    assert_error(
        "stores:\n  - name: m\n    backend: memory\n    settings:\n      path: x\n",
        "it takes no settings",
    );
    assert_error(
        "stores:\n  - name: r\n    backend: redis\n    settings:\n      url: redis://127.0.0.1\n      prefix: x\n",
        "known settings: url, keyPrefix",
    );
}

#[test]
fn unknown_backends_are_named() {
    assert_error(
        "stores:\n  - name: m\n    backend: mongodb\n",
        "unknown variant `mongodb`",
    );
}

#[test]
fn store_names_are_unique_and_url_safe() {
    assert_error(
        "stores:\n  - name: a\n    backend: memory\n  - name: a\n    backend: memory\n",
        "serve.yaml:4:5: stores[1].name: duplicate store name \"a\" (first declared at line 2)",
    );
    assert_error(
        "stores:\n  - name: a/b\n    backend: memory\n",
        "contains '/'",
    );
    assert_error(
        "stores:\n  - name: ''\n    backend: memory\n",
        "must not be empty",
    );
}

#[test]
fn the_state_store_must_be_declared() {
    assert_error(
        "stores:\n  - name: a\n    backend: memory\nstate:\n  store: b\n",
        "serve.yaml:5:3: state.store: no store named \"b\" (declared stores: a)",
    );
    assert_error("state:\n  store: b\n", "the only store is \"statestore\"");
    let ok = load("state:\n  store: statestore\n").expect("valid");
    assert_eq!(ok.state_store, None);
}

#[test]
fn limits_and_retry_policies_are_checked() {
    assert_error("http:\n  maxBodyBytes: 0\n", "at least 1");
    assert_error(
        "http:\n  maxValueBytes: 10\n  maxBodyBytes: 5\n",
        "larger than maxBodyBytes",
    );
    assert_error(
        "stores:\n  - name: a\n    backend: memory\n    retryPolicy:\n      interval: soon\n",
        "serve.yaml:5:7: stores[0].retryPolicy.interval",
    );
    assert_error(
        "stores:\n  - name: a\n    backend: memory\n    retryPolicy:\n      threshold: 0\n",
        "must be at least 1",
    );
    assert_error(
        "stores:\n  - name: a\n    backend: memory\n    retryPolicy:\n      pattern: random\n",
        "unknown variant `random`",
    );
}

#[test]
fn backend_settings_have_defaults_and_are_checked() {
    let f = load(
        "stores:\n  - name: a\n    backend: redis\n    settings:\n      url: redis://127.0.0.1\n      connectTimeout: 2s\n  - name: p\n    backend: postgres\n    settings:\n      url: postgres://127.0.0.1/db\n      schema: app\n      poolSize: 4\n",
    )
    .expect("valid");
    match &f.stores[0].backend {
        BackendFile::Redis { options, .. } => {
            assert_eq!(options.key_prefix, "sluice:a:");
            assert_eq!(options.connect_timeout, Duration::from_secs(2));
        }
        other => panic!("{other:?}"),
    }
    match &f.stores[1].backend {
        BackendFile::Postgres { options, .. } => {
            assert_eq!(options.table, PostgresOptions::default().table);
            assert_eq!(options.schema.as_deref(), Some("app"));
            assert_eq!(options.pool_size, 4);
        }
        other => panic!("{other:?}"),
    }
    assert_error(
        "stores:\n  - name: p\n    backend: postgres\n    settings:\n      url: x\n      poolSize: none\n",
        "stores[0].settings.poolSize: must be a whole number",
    );
    assert_error(
        "stores:\n  - name: r\n    backend: redis\n    settings:\n      url: x\n      keyPrefix: ''\n",
        "must not be empty",
    );
}

#[test]
fn two_stores_in_one_place_are_an_error() {
    let errs = errors(
        "stores:\n  - name: a\n    backend: postgres\n    settings:\n      url: ${PG_URL}\n  - name: b\n    backend: postgres\n    settings:\n      url: ${PG_URL}\n",
    );
    assert!(
        errs.iter()
            .any(|e| e
                .contains("stores \"a\" and \"b\" would share the PostgreSQL table sluice_state")),
        "{errs:#?}"
    );
    assert!(
        !errs.iter().any(|e| e.contains("secret")),
        "a password leaked: {errs:#?}"
    );
    let errs = errors(
        "stores:\n  - name: a\n    backend: redis\n    settings:\n      url: ${REDIS_URL}\n      keyPrefix: x\n  - name: b\n    backend: redis\n    settings:\n      url: ${REDIS_URL}\n      keyPrefix: x\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("serve.yaml:7:3: stores[1]:") && e.contains("Redis key prefix")),
        "{errs:#?}"
    );
    assert_error(
        "stores:\n  - name: a\n    backend: redb\n    settings:\n      path: x.redb\n  - name: b\n    backend: redb\n    settings:\n      path: x.redb\n",
        "would share the redb file x.redb",
    );
}

#[test]
fn listen_addresses_and_tables_are_checked() {
    assert_error("listen: localhost\n", "expected host:port");
    assert!(load("listen: localhost:8080\n").is_ok());
    assert!(load("listen: '[::1]:8080'\n").is_ok());
    assert_error(
        "stores:\n  - name: p\n    backend: postgres\n    settings:\n      url: x\n      table: a;drop\n",
        "not a valid name",
    );
}

#[test]
fn secrets_come_from_the_environment() {
    let errs = errors(
        "stores:\n  - name: p\n    backend: postgres\n    settings:\n      url: ${NOT_SET_ANYWHERE}\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("serve.yaml:5:12:") && e.contains("NOT_SET_ANYWHERE")),
        "{errs:#?}"
    );
}

#[test]
fn one_document_only() {
    assert_error("listen: a:1\n---\nlisten: b:2\n", "2 YAML documents");
}

#[test]
fn signaling_defaults_without_a_section() {
    let f = load("listen: 127.0.0.1:1\n").expect("valid");
    assert_eq!(f.signaling, SignalingFile::default());
    assert!(f.signaling.enabled);
    assert_eq!(f.signaling.base_path, DEFAULT_BASE_PATH);
    assert_eq!(f.signaling.store, None);
    assert!(f.signaling.control_planes.is_empty());
}

#[test]
fn signaling_section_loads_every_key() {
    let lookup = |name: &str| match name {
        "CP_TOKEN" => Some("tok-1".to_string()),
        "CP_KEY" => Some("key-2".to_string()),
        _ => None,
    };
    let text = "\
stores:
  - name: flows
    backend: memory
signaling:
  enabled: true
  basePath: /dps/v1/
  store: flows
  controlPlanes:
    - id: a
      endpoint: http://127.0.0.1:9000/cb
      token: ${CP_TOKEN}
    - id: b
      apiKey: ${CP_KEY}
      callbackAuthorization: Key key-2
  outbox:
    pollInterval: 10ms
    minBackoff: 20ms
    maxBackoff: 2s
    requestTimeout: 3s
  transfers:
    requireHttps: false
    tokenTtl: 30s
    datasets:
      d1:
        plugin: file
        settings:
          path: /tmp/in
";
    let f = parse("serve.yaml", text, lookup).expect("valid");
    let s = &f.signaling;
    assert_eq!(s.base_path, "/dps/v1");
    assert_eq!(s.store.as_deref(), Some("flows"));
    assert_eq!(s.control_planes.len(), 2);
    let a = &s.control_planes[0];
    assert_eq!(a.endpoint.as_deref(), Some("http://127.0.0.1:9000/cb"));
    assert_eq!(a.callback_authorization.as_deref(), Some("Bearer tok-1"));
    assert_eq!(a.credentials().collect::<Vec<_>>(), ["tok-1"]);
    let b = &s.control_planes[1];
    assert_eq!(b.credentials().collect::<Vec<_>>(), ["key-2"]);
    assert_eq!(b.callback_authorization.as_deref(), Some("Key key-2"));
    assert_eq!(s.outbox.poll_interval, Duration::from_millis(10));
    assert_eq!(s.outbox.min_backoff, Duration::from_millis(20));
    assert_eq!(s.outbox.max_backoff, Duration::from_secs(2));
    assert_eq!(s.outbox.request_timeout, Duration::from_secs(3));
    assert!(!s.transfers.require_https);
    assert_eq!(s.transfers.token_ttl, Duration::from_secs(30));
    assert_eq!(s.transfers.datasets["d1"].plugin, "file");
    // Secrets never appear in debug output.
    let debug = format!("{f:?}");
    assert!(
        !debug.contains("tok-1") && !debug.contains("key-2"),
        "{debug}"
    );
    let resolved = f.resolve(None, PathBuf::from("/d"));
    assert_eq!(resolved.signaling, f.signaling);
}

#[test]
fn signaling_errors_name_line_and_column() {
    let errs = errors(
        "signaling:\n  basePath: api\n  store: nope\n  controlPlanes:\n    - id: a\n      \
         endpoint: ftp://x\n    - id: a\n      token: t\n    - id: c\n      token: t\n  \
         outbox:\n    minBackoff: 5s\n    maxBackoff: 1s\n",
    );
    let want = [
        "serve.yaml:2:3: signaling.basePath: \"api\" must start with '/'",
        "serve.yaml:3:3: signaling.store: no store named \"nope\"",
        "serve.yaml:6:7: signaling.controlPlanes[0].endpoint: \"ftp://x\" is not a callback",
        "serve.yaml:5:5: signaling.controlPlanes[0]: control plane \"a\" needs `token` or `apiKey`",
        "serve.yaml:7:7: signaling.controlPlanes[1].id: duplicate control plane id \"a\"",
        "serve.yaml:10:7: signaling.controlPlanes[2].token: the same credential is given twice",
        "serve.yaml:13:5: signaling.outbox.maxBackoff: maxBackoff (1s) is shorter",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e.contains(w)), "no {w:?} in {errs:#?}");
    }
}

#[test]
fn signaling_rejects_unknown_keys_and_reserved_base_paths() {
    assert_error(
        "signaling:\n  controlPlanes:\n    - id: a\n      tokn: x\n",
        "serve.yaml:4:7: signaling.controlPlanes[0]: unknown field `tokn`",
    );
    assert_error(
        "signaling:\n  transfers:\n    tokenTTL: 1s\n",
        "unknown field `tokenTTL`",
    );
    assert_error(
        "signaling:\n  basePath: /metrics\n",
        "would hide the server's own /metrics",
    );
    assert_error("signaling:\n  basePath: /a b\n", "is not a path");
    let f = load("signaling:\n  basePath: /\n  enabled: false\n").expect("valid");
    assert_eq!(f.signaling.base_path, "");
    assert!(!f.signaling.enabled);
}

#[test]
fn transfer_settings_are_checked_against_connector_specifications_at_their_line() {
    let errs =
        errors("signaling:\n  transfers:\n    datasets:\n      d1:\n        plugin: nosuch\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("serve.yaml:5:9: signaling.transfers.datasets.d1.plugin")),
        "{errs:#?}"
    );
    let errs = errors(
        "signaling:\n  transfers:\n    destinations:\n      d1:\n        plugin: file\n        \
         settings:\n          pth: /x\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("serve.yaml:")
                && e.contains("signaling.transfers.destinations.d1")),
        "{errs:#?}"
    );
}
