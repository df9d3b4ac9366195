//! The `pipelines` section of the server configuration: declarative pipelines kept in a store
//! (issue 4, item 5). `sluice serve` watches `prefix` in `store`; each key holds a pipeline file
//! in the `sluice run` format.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::{Checker, DEFAULT_STORE};
use crate::yaml_index::YamlPath;

/// Where the definitions live when the file does not say.
pub const DEFAULT_PREFIX: &str = "pipelines/";
/// How long a replica's pipeline leases outlive it when it stops heartbeating.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The `pipelines` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelinesDoc {
    /// Whether declarative pipelines run (default true once the section is there).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The store holding the definitions and leases.
    #[serde(default)]
    pub store: Option<String>,
    /// Key prefix of the definitions.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Lease time to live (`10s`).
    #[serde(default)]
    pub lease_ttl: Option<String>,
}

/// The `pipelines` section, checked, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelinesFile {
    /// Run declarative pipelines (default false: no section, nothing watched).
    pub enabled: bool,
    /// The store holding definitions and leases; a declared store (it must have a change feed).
    pub store: String,
    /// Key prefix of the definitions; the rest of a key is the definition's name.
    pub prefix: String,
    /// Lease time to live: how soon another replica takes over the pipelines of one that died.
    pub lease_ttl: Duration,
}

impl Default for PipelinesFile {
    fn default() -> Self {
        PipelinesFile {
            enabled: false,
            store: DEFAULT_STORE.to_string(),
            prefix: DEFAULT_PREFIX.to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

impl Checker {
    /// Checks the `pipelines` section; `declared` are the declared store names.
    pub(super) fn pipelines(
        &mut self,
        doc: Option<PipelinesDoc>,
        declared: &HashMap<String, YamlPath>,
    ) -> PipelinesFile {
        let mut out = PipelinesFile::default();
        let Some(doc) = doc else {
            return out;
        };
        let path = YamlPath::root().key("pipelines");
        out.enabled = doc.enabled.unwrap_or(true);
        let mut names: Vec<&str> = declared.keys().map(String::as_str).collect();
        if names.is_empty() {
            names.push(DEFAULT_STORE);
        }
        names.sort_unstable();
        match doc.store {
            Some(name) if names.contains(&name.as_str()) => out.store = name,
            Some(name) => self.error(
                &path.key("store"),
                format!("no store named {name:?} (stores: {})", names.join(", ")),
            ),
            None if declared.is_empty() => {}
            None if out.enabled => self.error(
                &path,
                format!(
                    "`store` is required: which store holds the pipeline definitions (stores: {})",
                    names.join(", ")
                ),
            ),
            None => {}
        }
        if let Some(prefix) = doc.prefix {
            out.prefix = prefix;
        }
        if let Some(ttl) = doc.lease_ttl {
            if let Some(d) = self.duration(&path.key("leaseTtl"), &ttl) {
                if d < Duration::from_millis(300) {
                    self.error(
                        &path.key("leaseTtl"),
                        "must be at least 300ms (the lease is renewed every third of it)".into(),
                    );
                } else {
                    out.lease_ttl = d;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::serve_config::parse;

    fn load(text: &str) -> Result<PipelinesFile, String> {
        parse("serve.yaml", text, |_| None)
            .map(|f| f.resolve(None, PathBuf::from("/d")).pipelines)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn pipelines_are_off_without_the_section_and_default_when_it_is_there() {
        assert!(!load("listen: 127.0.0.1:1\n").unwrap().enabled);
        let p = load("pipelines: {}\n").unwrap();
        assert!(p.enabled);
        assert_eq!(p.store, DEFAULT_STORE);
        assert_eq!(p.prefix, DEFAULT_PREFIX);
        assert_eq!(p.lease_ttl, DEFAULT_LEASE_TTL);
        let p = load(
            "stores:\n  - name: s\n    backend: memory\npipelines:\n  store: s\n  prefix: p/\n  leaseTtl: 2s\n",
        )
        .unwrap();
        assert_eq!((p.store.as_str(), p.prefix.as_str()), ("s", "p/"));
        assert_eq!(p.lease_ttl, Duration::from_secs(2));
    }

    #[test]
    fn bad_pipelines_settings_are_reported_at_their_line() {
        let e = load("stores:\n  - name: s\n    backend: memory\npipelines:\n  store: t\n")
            .unwrap_err();
        assert!(e.contains("no store named \"t\""), "{e}");
        let e = load("stores:\n  - name: s\n    backend: memory\npipelines:\n  enabled: true\n")
            .unwrap_err();
        assert!(e.contains("`store` is required"), "{e}");
        let e = load("pipelines:\n  leaseTtl: 10ms\n").unwrap_err();
        assert!(e.contains("at least 300ms"), "{e}");
        let e = load("pipelines:\n  colour: blue\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }
}
