//! What the server's configuration says about transfers: datasets Sluice offers (provider side),
//! where received data goes (consumer side), and how the public data endpoint hands out tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The `transfers` section of the server configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TransferConfig {
    /// The externally visible base URL of the public data endpoint (without `/public`), e.g.
    /// `https://sluice.example.com`. When unset the server derives it from its listen address.
    pub public_base_url: Option<String>,
    /// Push endpoints handed to Sluice must use https (default true; turn off for local testing).
    pub require_https: bool,
    /// How long an access token of the public endpoint lives, e.g. `10m`.
    #[serde(with = "humantime_serde_compat")]
    pub token_ttl: Duration,
    /// Datasets offered (provider side), by `datasetId`.
    pub datasets: BTreeMap<String, DatasetConfig>,
    /// Where received data goes (consumer side), by `datasetId` or, failing that, by profile.
    pub destinations: BTreeMap<String, DestinationConfig>,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            public_base_url: None,
            require_https: true,
            token_ttl: Duration::from_secs(600),
            datasets: BTreeMap::new(),
            destinations: BTreeMap::new(),
        }
    }
}

/// A dataset: the source connector that produces it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetConfig {
    /// Source connector plugin, e.g. `file` or `generator`.
    pub plugin: String,
    /// The connector's settings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Start asynchronously (202, then a `started` callback).
    #[serde(default)]
    pub asynchronous: bool,
}

/// Where data received for a dataset or profile goes: a destination connector.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationConfig {
    /// Destination connector plugin, e.g. `file`.
    pub plugin: String,
    /// The connector's settings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Prepare asynchronously (202, then a `prepared` callback).
    #[serde(default)]
    pub asynchronous: bool,
}

impl TransferConfig {
    /// The destination for a consumer flow: by dataset id first, then by profile.
    pub fn destination_for(&self, dataset_id: &str, profile: &str) -> Option<&DestinationConfig> {
        self.destinations
            .get(dataset_id)
            .or_else(|| self.destinations.get(profile))
    }
}

/// Reads durations written as humantime text (`10m`, `30s`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_camel_case() {
        let c: TransferConfig = serde_json::from_str(
            r#"{"tokenTtl":"30s","requireHttps":false,
                "datasets":{"d1":{"plugin":"file","settings":{"path":"/x"}}},
                "destinations":{"d1":{"plugin":"file","asynchronous":true}}}"#,
        )
        .expect("parses");
        assert_eq!(c.token_ttl, Duration::from_secs(30));
        assert!(!c.require_https);
        assert_eq!(c.datasets["d1"].settings["path"], "/x");
        assert!(c.destination_for("d1", "p").expect("found").asynchronous);
        let d: TransferConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(d, TransferConfig::default());
        assert!(d.require_https);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<TransferConfig>(r#"{"tokenTTL":"1s"}"#).expect_err("bad");
        assert!(e.to_string().contains("tokenTTL"), "{e}");
    }
}
