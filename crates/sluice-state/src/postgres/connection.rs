//! From a URL and options to a connection pool, and a description of the server for messages
//! that never contains the password.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::{Config, NoTls};

use super::errors::BACKEND;
use super::options::PostgresOptions;
use crate::error::StateError;

/// Parses `url` (a `postgres://` URL or a `key=value` connection string) and applies the
/// options the URL does not set itself (connect timeout, application name).
pub(crate) fn parse(url: &str, options: &PostgresOptions) -> Result<Config, StateError> {
    let mut config: Config = url.parse().map_err(|e| {
        StateError::InvalidRequest(format!("invalid PostgreSQL URL {}: {e}", redact(url)))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name(&options.application_name);
    }
    Ok(config)
}

/// `postgres://user@host:port/db` for `config`: enough to find the server, nothing secret.
pub(crate) fn describe(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost".to_string()
    } else {
        hosts.join(",")
    };
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{hosts}/{db}")
}

/// `url` with any password replaced by `***` (both URL and `key=value` forms).
pub(crate) fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            let tail = redact_query(&rest[at..]);
            return format!("{}{masked}{tail}", &url[..scheme_end + 3]);
        }
        return format!("{}{}", &url[..scheme_end + 3], redact_query(rest));
    }
    url.split_whitespace()
        .map(|part| {
            if part.to_ascii_lowercase().starts_with("password=") {
                "password=***".to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Masks a `password=` query parameter of a URL's tail.
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_string();
    };
    let params: Vec<String> = tail[q + 1..]
        .split('&')
        .map(|p| {
            if p.to_ascii_lowercase().starts_with("password=") {
                "password=***".to_string()
            } else {
                p.to_string()
            }
        })
        .collect();
    format!("{}?{}", &tail[..q], params.join("&"))
}

/// A pool of at most `options.pool_size` connections. Connections are opened on demand; one
/// found closed (after a server restart, say) is discarded and replaced on the next checkout.
pub(crate) fn pool(config: Config, options: &PostgresOptions) -> Result<Pool, StateError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.acquire_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| StateError::backend(BACKEND, format!("cannot build the connection pool: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_descriptions() {
        let options = PostgresOptions::default();
        let config = parse("postgres://alice:s3cret@db.example:6543/app", &options).expect("parse");
        let text = describe(&config);
        assert_eq!(text, "postgres://alice@db.example:6543/app");
        let config = parse(
            "host=h1 port=5433 user=bob password=s3cret dbname=x",
            &options,
        )
        .expect("parse");
        assert_eq!(describe(&config), "postgres://bob@h1:5433/x");
    }

    #[test]
    fn redaction_masks_passwords_in_every_form() {
        for (url, want) in [
            ("postgres://alice:s3cret@h/db", "postgres://alice:***@h/db"),
            ("postgresql://alice@h/db", "postgresql://alice@h/db"),
            (
                "postgres://h/db?user=a&password=s3cret",
                "postgres://h/db?user=a&password=***",
            ),
            (
                "host=h password=s3cret user=a",
                "host=h password=*** user=a",
            ),
            ("postgres://a:p@ss@h/db", "postgres://a:***@h/db"),
        ] {
            assert_eq!(redact(url), want);
        }
    }

    #[test]
    fn a_bad_url_is_an_invalid_request_without_the_password() {
        let err = parse(
            "postgres://alice:s3cret@h:notaport/db",
            &PostgresOptions::default(),
        )
        .expect_err("bad port");
        let text = err.to_string();
        assert!(matches!(err, StateError::InvalidRequest(_)), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn options_fill_what_the_url_leaves_out() {
        let options = PostgresOptions::default();
        let config = parse("postgres://h/db", &options).expect("parse");
        assert_eq!(config.get_application_name(), Some("sluice"));
        assert_eq!(config.get_connect_timeout(), Some(&options.connect_timeout));
        let config = parse(
            "postgres://h/db?application_name=mine&connect_timeout=3",
            &options,
        )
        .expect("parse");
        assert_eq!(config.get_application_name(), Some("mine"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
    }
}
