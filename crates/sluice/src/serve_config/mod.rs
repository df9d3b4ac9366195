//! The configuration file of `sluice serve`: where it listens, where embedded stores keep their
//! files, the named state stores it offers over HTTP, which of them holds Sluice's own state, and
//! the HTTP limits. Every key is described in `docs/configuration.md`.
//!
//! Loading works like pipeline files ([`crate::config`]): `${VAR}` is interpolated from the
//! environment first (so secrets such as database URLs stay out of the file), the YAML is parsed
//! strictly, and every problem is reported with the file, line, column and YAML path. A file is
//! optional: with none, one embedded redb store named `statestore` is offered.

mod model;
mod pipelines;
mod signaling;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_state::postgres::{PostgresOptions, MAX_TABLE_NAME_LEN};
use sluice_state::{RedisOptions, RetryPattern, RetryPolicy};

use crate::config::{interpolate_file, Diagnostic, Severity};
use crate::interpolate::SourceMap;
use crate::yaml_index::{YamlIndex, YamlPath};
pub use model::BackendKind;
use model::{HttpDoc, PatternDoc, RetryDoc, ServeDoc, StoreDoc};
pub use pipelines::{PipelinesFile, DEFAULT_LEASE_TTL, DEFAULT_PREFIX};
pub use signaling::{ControlPlaneFile, OutboxSettings, SignalingFile, DEFAULT_BASE_PATH};

/// Where the API listens when neither the file nor `--listen` says: Dapr's customary HTTP port, on
/// the loopback interface only, since the API has no authentication.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3500";
/// The store offered when the file declares none (Dapr's customary name).
pub const DEFAULT_STORE: &str = "statestore";
/// The embedded store file in the data directory (the same file `sluice run` keeps its state in).
pub const STATE_FILE: &str = "state.redb";
/// Default largest value: 1 MiB of JSON text.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Default largest request body: 4 MiB (Dapr's default `--max-body-size`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Default wait before the first retry of a transient backend error.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Default attempts in all for a transient backend error.
pub const DEFAULT_RETRY_THRESHOLD: u32 = 3;

/// Why a server configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ServeConfigError {
    /// The file could not be read.
    #[error("cannot read server configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file has problems; every one found is listed, one per line.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The retry policy of a store whose configuration gives none: three attempts in all, waiting
/// 100 ms then 200 ms.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy::new(
        DEFAULT_RETRY_INTERVAL,
        DEFAULT_RETRY_THRESHOLD,
        RetryPattern::Exponential,
    )
}

/// A store's backend and its settings, with defaults applied except paths that depend on the data
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendFile {
    /// In memory.
    Memory,
    /// Embedded redb; `None` means `<dataDir>/<name>.redb`, a relative path is relative to the
    /// data directory.
    Redb {
        /// The file, as written.
        path: Option<PathBuf>,
    },
    /// PostgreSQL.
    Postgres {
        /// Connection URL (`postgres://user:pass@host:port/db`).
        url: String,
        /// Table, schema, pool size and timeouts.
        options: PostgresOptions,
    },
    /// Redis.
    Redis {
        /// Connection URL (`redis://host:port/db`).
        url: String,
        /// Key prefix and timeouts.
        options: RedisOptions,
    },
}

/// One store as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFile {
    /// Its name in URLs.
    pub name: String,
    /// Its backend.
    pub backend: BackendFile,
    /// Its retry policy for transient backend errors.
    pub retry: RetryPolicy,
}

/// A loaded configuration file, before command-line overrides and the data directory are applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServeFile {
    /// `listen`.
    pub listen: Option<String>,
    /// `dataDir`.
    pub data_dir: Option<PathBuf>,
    /// `stores`, in file order.
    pub stores: Vec<StoreFile>,
    /// `state.store`.
    pub state_store: Option<String>,
    /// `http.maxValueBytes`.
    pub max_value_bytes: Option<usize>,
    /// `http.maxBodyBytes`.
    pub max_body_bytes: Option<usize>,
    /// `signaling`, checked, with defaults applied.
    pub signaling: SignalingFile,
    /// `pipelines`, checked, with defaults applied.
    pub pipelines: PipelinesFile,
}

/// Limits of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest value accepted, in bytes of its JSON text; larger ones get 413.
    pub max_value_bytes: usize,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// A store's backend, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In memory.
    Memory,
    /// Embedded redb at this path.
    Redb {
        /// The file.
        path: PathBuf,
    },
    /// PostgreSQL.
    Postgres {
        /// Connection URL.
        url: String,
        /// Table, schema, pool size and timeouts.
        options: PostgresOptions,
    },
    /// Redis.
    Redis {
        /// Connection URL.
        url: String,
        /// Key prefix and timeouts.
        options: RedisOptions,
    },
}

impl Backend {
    /// The backend's name, for messages.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Memory => BackendKind::Memory,
            Backend::Redb { .. } => BackendKind::Redb,
            Backend::Postgres { .. } => BackendKind::Postgres,
            Backend::Redis { .. } => BackendKind::Redis,
        }
    }
}

/// One store, ready to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Its name in URLs.
    pub name: String,
    /// Its backend.
    pub backend: Backend,
    /// Its retry policy.
    pub retry: RetryPolicy,
}

/// Where Sluice keeps its own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnState {
    /// In the named store.
    Named(String),
    /// In an embedded redb file that is not offered over HTTP (unless a declared redb store uses
    /// the same file).
    Embedded(PathBuf),
}

/// The configuration `sluice serve` runs with: file, command line and defaults combined.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// The stores offered over HTTP; never empty.
    pub stores: Vec<StoreConfig>,
    /// Where Sluice's own state lives.
    pub own_state: OwnState,
    /// HTTP limits.
    pub http: HttpLimits,
    /// The Data Plane Signaling API.
    pub signaling: SignalingFile,
    /// Declarative pipelines.
    pub pipelines: PipelinesFile,
}

impl ServeConfig {
    /// The configuration with no file: the default store in `data_dir`, default listen address and
    /// limits.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        ServeFile::default().resolve(None, data_dir.into())
    }
}

impl ServeFile {
    /// Applies overrides and the data directory. `listen` overrides the file's `listen`;
    /// `data_dir` is the directory to use (the caller decides whether the command line, the file
    /// or the platform default wins).
    pub fn resolve(&self, listen: Option<String>, data_dir: PathBuf) -> ServeConfig {
        let mut stores: Vec<StoreConfig> = self
            .stores
            .iter()
            .map(|s| StoreConfig {
                name: s.name.clone(),
                backend: match &s.backend {
                    BackendFile::Memory => Backend::Memory,
                    BackendFile::Redb { path } => Backend::Redb {
                        path: match path {
                            Some(p) => data_dir.join(p),
                            None => data_dir.join(format!("{}.redb", s.name)),
                        },
                    },
                    BackendFile::Postgres { url, options } => Backend::Postgres {
                        url: url.clone(),
                        options: options.clone(),
                    },
                    BackendFile::Redis { url, options } => Backend::Redis {
                        url: url.clone(),
                        options: options.clone(),
                    },
                },
                retry: s.retry,
            })
            .collect();
        let own_state = if stores.is_empty() {
            stores.push(StoreConfig {
                name: DEFAULT_STORE.to_string(),
                backend: Backend::Redb {
                    path: data_dir.join(STATE_FILE),
                },
                retry: default_retry(),
            });
            OwnState::Named(DEFAULT_STORE.to_string())
        } else {
            match &self.state_store {
                Some(name) => OwnState::Named(name.clone()),
                None => OwnState::Embedded(data_dir.join(STATE_FILE)),
            }
        };
        let defaults = HttpLimits::default();
        ServeConfig {
            listen: listen
                .or_else(|| self.listen.clone())
                .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            data_dir,
            stores,
            own_state,
            http: HttpLimits {
                max_value_bytes: self.max_value_bytes.unwrap_or(defaults.max_value_bytes),
                max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            },
            signaling: self.signaling.clone(),
            pipelines: self.pipelines.clone(),
        }
    }
}

/// Reads and loads a server configuration file, interpolating variables from the environment.
pub fn load(path: &Path) -> Result<ServeFile, ServeConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServeConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&path.display().to_string(), &text, |name| {
        std::env::var(name).ok()
    })
}

/// Loads a configuration file's text; `file` names it in messages, `lookup` gives variable values.
pub fn parse(
    file: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ServeFile, ServeConfigError> {
    let (text, map) = interpolate_file(file, text, lookup).map_err(ServeConfigError::Invalid)?;
    let mut checker = Checker {
        file: file.to_string(),
        index: YamlIndex::build(&text),
        map,
        errors: Vec::new(),
    };
    let doc = checker.document(&text);
    let loaded = doc.map(|d| checker.check(d));
    match loaded {
        Some(f) if checker.errors.is_empty() => Ok(f),
        _ => Err(ServeConfigError::Invalid(checker.errors)),
    }
}

/// Parses and checks one file, collecting every problem.
struct Checker {
    file: String,
    index: YamlIndex,
    map: SourceMap,
    errors: Vec<Diagnostic>,
}

impl Checker {
    fn error(&mut self, path: &YamlPath, message: String) {
        let position = self
            .index
            .locate(0, path)
            .map(|p| self.map.original(p.line, p.column));
        self.errors.push(Diagnostic {
            severity: Severity::Error,
            file: self.file.clone(),
            position,
            path: Some(path)
                .filter(|p| !p.0.is_empty())
                .map(ToString::to_string),
            message,
        });
    }

    fn yaml_error(&mut self, err: &serde_yaml_ng::Error) {
        let mut message = err.to_string();
        let position = err.location().map(|l| {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            if let Some(at) = message.find(&suffix) {
                message.replace_range(at..at + suffix.len(), "");
            }
            self.map.original(l.line(), l.column())
        });
        self.errors.push(Diagnostic {
            severity: Severity::Error,
            file: self.file.clone(),
            position,
            path: None,
            message,
        });
    }

    /// The file's single document (an empty file is an empty document).
    fn document(&mut self, text: &str) -> Option<ServeDoc> {
        let mut result = None;
        let mut count = 0;
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            count += 1;
            if count > 1 {
                continue;
            }
            match Option::<ServeDoc>::deserialize(document) {
                Ok(doc) => result = Some(doc.unwrap_or_default()),
                Err(e) => {
                    self.yaml_error(&e);
                    return None;
                }
            }
        }
        if count > 1 {
            self.errors.push(Diagnostic {
                severity: Severity::Error,
                file: self.file.clone(),
                position: None,
                path: None,
                message: format!(
                    "the file holds {count} YAML documents; a server configuration is one document"
                ),
            });
            return None;
        }
        Some(result.unwrap_or_default())
    }

    fn check(&mut self, doc: ServeDoc) -> ServeFile {
        let root = YamlPath::root();
        let listen = doc.listen.map(|l| l.trim().to_string());
        if let Some(l) = &listen {
            if let Err(why) = check_listen(l) {
                self.error(&root.key("listen"), why);
            }
        }
        let data_dir = doc.data_dir.map(PathBuf::from);
        if data_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            self.error(&root.key("dataDir"), "must not be empty".into());
        }
        let mut stores = Vec::new();
        let mut seen: HashMap<String, YamlPath> = HashMap::new();
        for (i, s) in doc.stores.unwrap_or_default().into_iter().enumerate() {
            let path = root.key("stores").index(i);
            if let Some(first) = seen.get(&s.name).cloned() {
                let at = self.line_of(&first);
                self.error(
                    &path.key("name"),
                    format!("duplicate store name {:?} (first declared at {at})", s.name),
                );
                continue;
            }
            seen.insert(s.name.clone(), path.clone());
            if let Some(store) = self.store(&path, s) {
                stores.push(store);
            }
        }
        self.check_shared_places(&stores, &seen);
        let state_store = doc.state.and_then(|s| s.store);
        if let Some(name) = &state_store {
            let path = root.key("state").key("store");
            if stores.is_empty() && seen.is_empty() {
                if name != DEFAULT_STORE {
                    self.error(
                        &path,
                        format!(
                            "no store named {name:?}: no `stores` are declared, so the only store \
                             is {DEFAULT_STORE:?}"
                        ),
                    );
                }
            } else if !seen.contains_key(name) {
                let mut known: Vec<&str> = seen.keys().map(String::as_str).collect();
                known.sort_unstable();
                self.error(
                    &path,
                    format!(
                        "no store named {name:?} (declared stores: {})",
                        known.join(", ")
                    ),
                );
            }
        }
        let (max_value_bytes, max_body_bytes) = self.http(doc.http);
        let signaling = self.signaling(doc.signaling, &seen);
        let pipelines = self.pipelines(doc.pipelines, &seen);
        ServeFile {
            listen,
            data_dir,
            stores,
            // With no stores declared, the default store is Sluice's state store whatever is said.
            state_store: state_store.filter(|_| !seen.is_empty()),
            max_value_bytes,
            max_body_bytes,
            signaling,
            pipelines,
        }
    }

    /// Two stores in one place (file, table, key prefix) would overwrite each other's items.
    fn check_shared_places(&mut self, stores: &[StoreFile], paths: &HashMap<String, YamlPath>) {
        let mut places: HashMap<String, &str> = HashMap::new();
        for s in stores {
            let place = match &s.backend {
                BackendFile::Memory | BackendFile::Redb { path: None } => continue,
                BackendFile::Redb { path: Some(p) } => format!("redb file {}", p.display()),
                BackendFile::Postgres { url, options } => format!(
                    "PostgreSQL table {}{} at {url}",
                    options
                        .schema
                        .as_deref()
                        .map(|s| format!("{s}."))
                        .unwrap_or_default(),
                    options.table
                ),
                BackendFile::Redis { url, options } => {
                    format!("Redis key prefix {:?} at {url}", options.key_prefix)
                }
            };
            match places.get(&place) {
                Some(first) => {
                    let path = paths.get(&s.name).cloned().unwrap_or_default();
                    // The URL may hold a password: name the place without it.
                    let shown = place.split(" at ").next().unwrap_or(&place).to_string();
                    self.error(
                        &path,
                        format!(
                            "stores {first:?} and {:?} would share the {shown}; give each store \
                             its own",
                            s.name
                        ),
                    );
                }
                None => {
                    places.insert(place, &s.name);
                }
            }
        }
    }

    fn line_of(&self, path: &YamlPath) -> String {
        match self.index.locate(0, path) {
            Some(p) => format!("line {}", self.map.original(p.line, p.column).0),
            None => path.to_string(),
        }
    }

    fn store(&mut self, path: &YamlPath, s: StoreDoc) -> Option<StoreFile> {
        let errors_before = self.errors.len();
        if let Err(why) = check_store_name(&s.name) {
            self.error(&path.key("name"), why);
        }
        let settings_path = path.key("settings");
        let mut settings = Settings {
            given: s.settings.unwrap_or_default(),
            path: settings_path,
            store: s.name.clone(),
            backend: s.backend,
            missing: Vec::new(),
        };
        let backend = match s.backend {
            BackendKind::Memory => {
                settings.finish(self, path, &[]);
                BackendFile::Memory
            }
            BackendKind::Redb => {
                let p = settings.take("path");
                if p.as_ref().is_some_and(|p| p.trim().is_empty()) {
                    self.error(&settings.path.key("path"), "must not be empty".into());
                }
                settings.finish(self, path, &["path"]);
                BackendFile::Redb {
                    path: p.map(PathBuf::from),
                }
            }
            BackendKind::Postgres => {
                let url = settings.required("url");
                let mut options = PostgresOptions::default();
                if let Some(table) = settings.take("table") {
                    options.table = table;
                }
                if let Err(why) = check_identifier(&options.table, MAX_TABLE_NAME_LEN) {
                    self.error(&settings.path.key("table"), why);
                }
                options.schema = settings.take("schema");
                if let Some(schema) = &options.schema {
                    if let Err(why) = check_identifier(schema, MAX_IDENTIFIER_LEN) {
                        self.error(&settings.path.key("schema"), why);
                    }
                }
                if let Some(n) = settings.take("poolSize") {
                    match n.trim().parse::<usize>() {
                        Ok(n) if n >= 1 => options.pool_size = n,
                        _ => self.error(
                            &settings.path.key("poolSize"),
                            format!("must be a whole number, at least 1, not {n:?}"),
                        ),
                    }
                }
                if let Some(d) = settings.take("connectTimeout") {
                    if let Some(d) = self.duration(&settings.path.key("connectTimeout"), &d) {
                        options.connect_timeout = d;
                    }
                }
                settings.finish(
                    self,
                    path,
                    &["url", "table", "schema", "poolSize", "connectTimeout"],
                );
                BackendFile::Postgres {
                    url: url.unwrap_or_default(),
                    options,
                }
            }
            BackendKind::Redis => {
                let url = settings.required("url");
                let mut options = RedisOptions {
                    key_prefix: format!("sluice:{}:", s.name),
                    ..RedisOptions::default()
                };
                if let Some(prefix) = settings.take("keyPrefix") {
                    if prefix.is_empty() {
                        self.error(
                            &settings.path.key("keyPrefix"),
                            "must not be empty: every key that starts with the prefix belongs to \
                             the store"
                                .into(),
                        );
                    }
                    options.key_prefix = prefix;
                }
                if let Some(d) = settings.take("connectTimeout") {
                    if let Some(d) = self.duration(&settings.path.key("connectTimeout"), &d) {
                        options.connect_timeout = d;
                    }
                }
                settings.finish(self, path, &["url", "keyPrefix", "connectTimeout"]);
                BackendFile::Redis {
                    url: url.unwrap_or_default(),
                    options,
                }
            }
        };
        let retry = self.retry(&path.key("retryPolicy"), s.retry_policy);
        (self.errors.len() == errors_before).then_some(StoreFile {
            name: s.name,
            backend,
            retry,
        })
    }

    fn duration(&mut self, path: &YamlPath, text: &str) -> Option<Duration> {
        match humantime::parse_duration(text.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(path, "must be longer than zero".into());
                None
            }
            Err(e) => {
                self.error(
                    path,
                    format!("{text:?} is not a duration such as 100ms or 2s: {e}"),
                );
                None
            }
        }
    }

    fn retry(&mut self, path: &YamlPath, doc: Option<RetryDoc>) -> RetryPolicy {
        let mut r = default_retry();
        let Some(doc) = doc else {
            return r;
        };
        if let Some(text) = doc.interval {
            match humantime::parse_duration(text.trim()) {
                Ok(d) => r.interval = d,
                Err(e) => self.error(
                    &path.key("interval"),
                    format!("{text:?} is not a duration such as 100ms or 2s: {e}"),
                ),
            }
        }
        if let Some(t) = doc.threshold {
            match u32::try_from(t) {
                Ok(t) if t >= 1 => r.threshold = t,
                _ => self.error(
                    &path.key("threshold"),
                    format!("must be at least 1 (attempts in all; 1 means no retry), not {t}"),
                ),
            }
        }
        if let Some(p) = doc.pattern {
            r.pattern = match p {
                PatternDoc::Linear => RetryPattern::Linear,
                PatternDoc::Exponential => RetryPattern::Exponential,
            };
        }
        r
    }

    fn http(&mut self, doc: Option<HttpDoc>) -> (Option<usize>, Option<usize>) {
        let Some(doc) = doc else {
            return (None, None);
        };
        let path = YamlPath::root().key("http");
        let size = |key: &str, v: Option<i64>, this: &mut Self| -> Option<usize> {
            let v = v?;
            match usize::try_from(v) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    this.error(
                        &path.key(key),
                        format!("must be a number of bytes, at least 1, not {v}"),
                    );
                    None
                }
            }
        };
        let value = size("maxValueBytes", doc.max_value_bytes, self);
        let body = size("maxBodyBytes", doc.max_body_bytes, self);
        let effective_value = value.unwrap_or(DEFAULT_MAX_VALUE_BYTES);
        let effective_body = body.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if effective_value > effective_body {
            let at = if value.is_some() {
                "maxValueBytes"
            } else {
                "maxBodyBytes"
            };
            self.error(
                &path.key(at),
                format!(
                    "maxValueBytes ({effective_value}) is larger than maxBodyBytes \
                     ({effective_body}), so a value that large could never arrive; raise \
                     maxBodyBytes or lower maxValueBytes"
                ),
            );
        }
        (value, body)
    }
}

/// A store's settings being checked: known ones are taken out, whatever is left is unknown.
struct Settings {
    given: BTreeMap<String, String>,
    path: YamlPath,
    store: String,
    backend: BackendKind,
    missing: Vec<&'static str>,
}

impl Settings {
    fn take(&mut self, key: &str) -> Option<String> {
        self.given.remove(key)
    }

    fn required(&mut self, key: &'static str) -> Option<String> {
        match self.given.remove(key) {
            Some(v) if !v.trim().is_empty() => Some(v),
            _ => {
                self.missing.push(key);
                None
            }
        }
    }

    /// Reports missing and unknown settings.
    fn finish(&mut self, c: &mut Checker, store_path: &YamlPath, known: &[&str]) {
        for key in std::mem::take(&mut self.missing) {
            c.error(
                store_path,
                format!(
                    "store {:?} ({} backend) needs `settings.{key}` (it may come from the \
                     environment: `{key}: ${{VARIABLE}}`)",
                    self.store,
                    self.backend.as_str()
                ),
            );
        }
        for key in std::mem::take(&mut self.given).into_keys() {
            let expected = if known.is_empty() {
                "it takes no settings".to_string()
            } else {
                format!("known settings: {}", known.join(", "))
            };
            c.error(
                &self.path.key(key.as_str()),
                format!(
                    "unknown setting {key:?} for the {} backend ({expected})",
                    self.backend.as_str()
                ),
            );
        }
    }
}

/// Checks a `host:port` listen address.
fn check_listen(l: &str) -> Result<(), String> {
    if l.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    match l.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{l:?} is not an address to listen on: expected host:port, such as {DEFAULT_LISTEN}"
        )),
    }
}

/// Store names appear in URL paths: keep them to characters that need no escaping.
fn check_store_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the store name must not be empty".into());
    }
    if name.len() > 128 {
        return Err("the store name is longer than 128 characters".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(bad) => Err(format!(
            "the store name {name:?} contains {bad:?}; names may contain letters, digits, '-', \
             '_' and '.'"
        )),
        None => Ok(()),
    }
}

/// Longest identifier PostgreSQL keeps whole.
const MAX_IDENTIFIER_LEN: usize = 63;

/// A plain SQL identifier: letters, digits and `_`, not starting with a digit.
fn check_identifier(s: &str, max: usize) -> Result<(), String> {
    let mut chars = s.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= max;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name: use letters, digits and '_', not starting with a digit, \
             at most {max} characters"
        ))
    }
}
