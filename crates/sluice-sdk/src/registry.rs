//! The connector registry: lists connectors, describes them and hands out instances by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::connector::{Destination, Source};
use crate::processor::ProcessorPlugin;
use crate::spec::Specification;

/// A connector plugin: its specification and factories for its source and destination sides.
pub trait Plugin: Send + Sync {
    /// The plugin's specification (name, version, parameters).
    fn specification(&self) -> Specification;

    /// A new, unconfigured source, if the plugin has a source side.
    fn new_source(&self) -> Option<Box<dyn Source>>;

    /// A new, unconfigured destination, if the plugin has a destination side.
    fn new_destination(&self) -> Option<Box<dyn Destination>>;
}

/// Why a connector could not be found or made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    /// No plugin with that name is registered.
    #[error("unknown connector plugin {name:?} (available: {available})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated.
        available: String,
    },
    /// No processor plugin with that name is registered.
    #[error("processor plugin {name:?} is not available (available: {available})")]
    UnknownProcessor {
        /// The name asked for.
        name: String,
        /// The registered processor names, comma separated (or "none").
        available: String,
    },
    /// The plugin exists but has no source (or destination) side.
    #[error("connector plugin {name:?} cannot be used as a {side}")]
    WrongSide {
        /// The plugin's name.
        name: String,
        /// `source` or `destination`.
        side: &'static str,
    },
}

/// Registered connector and processor plugins by name.
#[derive(Default, Clone)]
pub struct Registry {
    plugins: BTreeMap<String, Arc<dyn Plugin>>,
    processors: BTreeMap<String, Arc<dyn ProcessorPlugin>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a plugin under its specification's name (replacing one of the same name).
    pub fn register(&mut self, plugin: Arc<dyn Plugin>) {
        self.plugins.insert(plugin.specification().name, plugin);
    }

    /// Registers a processor plugin under its specification's name.
    pub fn register_processor(&mut self, plugin: Arc<dyn ProcessorPlugin>) {
        self.processors.insert(plugin.specification().name, plugin);
    }

    /// The processor plugin for a name (`builtin:` prefix and `@version` suffix allowed).
    pub fn processor(&self, name: &str) -> Result<&Arc<dyn ProcessorPlugin>, RegistryError> {
        self.processors
            .get(normalize_plugin_name(name))
            .ok_or_else(|| RegistryError::UnknownProcessor {
                name: name.to_string(),
                available: if self.processors.is_empty() {
                    "none".to_string()
                } else {
                    self.processors
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// Every registered specification, by name.
    pub fn list(&self) -> Vec<Specification> {
        self.plugins.values().map(|p| p.specification()).collect()
    }

    /// The plugin for a name as written in a pipeline file: `file`, `builtin:file` or
    /// `builtin:file@v0.1.0` all name the built-in `file` plugin.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Plugin>, RegistryError> {
        let bare = normalize_plugin_name(name);
        self.plugins
            .get(bare)
            .ok_or_else(|| RegistryError::Unknown {
                name: name.to_string(),
                available: self.plugins.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// A new source of the named plugin.
    pub fn new_source(&self, name: &str) -> Result<Box<dyn Source>, RegistryError> {
        self.get(name)?
            .new_source()
            .ok_or_else(|| RegistryError::WrongSide {
                name: name.to_string(),
                side: "source",
            })
    }

    /// A new destination of the named plugin.
    pub fn new_destination(&self, name: &str) -> Result<Box<dyn Destination>, RegistryError> {
        self.get(name)?
            .new_destination()
            .ok_or_else(|| RegistryError::WrongSide {
                name: name.to_string(),
                side: "destination",
            })
    }
}

/// Strips the `builtin:` prefix and an `@version` suffix from a plugin name.
pub fn normalize_plugin_name(name: &str) -> &str {
    let name = name.strip_prefix("builtin:").unwrap_or(name);
    name.split('@').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_conduit_names() {
        assert_eq!(normalize_plugin_name("builtin:file"), "file");
        assert_eq!(normalize_plugin_name("builtin:file@v0.1.0"), "file");
        assert_eq!(normalize_plugin_name("generator"), "generator");
    }

    #[test]
    fn unknown_names_list_what_exists() {
        let r = Registry::new();
        let err = r.new_source("builtin:nope").err().expect("unknown");
        assert!(err.to_string().contains("builtin:nope"));
    }
}
