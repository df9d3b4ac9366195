//! Opening ordinary (SQL) connections from the `url` setting, with errors that name the setting,
//! the user and the server but never the password.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use super::error::{describe, is_transient_sqlstate, PgError, Side};

/// The name of the setting holding the connection string, on both sides.
pub const URL: &str = "url";

/// How long a connection attempt may take when the URL does not say (`connect_timeout`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses a connection string (`postgres://user:pass@host:port/db?...` or `key=value ...`).
pub fn parse_url(side: Side, url: &str) -> Result<Config, PgError> {
    let mut config = Config::from_str(url).map_err(|e| {
        PgError::setting(
            side,
            URL,
            format!("not a valid PostgreSQL connection string: {e}"),
        )
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_hosts().is_empty() {
        config.host("localhost");
    }
    if config.get_user().is_none() {
        return Err(PgError::setting(
            side,
            URL,
            "names no user (write postgres://USER@HOST/DB)",
        ));
    }
    Ok(config)
}

/// `user@host:port/db` for messages: what was connected to, without the password.
pub fn target(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
    )
}

/// Connects, spawning the connection's I/O task; errors name the `url` setting.
pub async fn connect(side: Side, config: &Config) -> Result<Client, PgError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| connect_error(side, config, &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// The error for a failed connection attempt.
pub fn connect_error(side: Side, config: &Config, e: &tokio_postgres::Error) -> PgError {
    let user = config.get_user().unwrap_or("?");
    match e.code().map(|c| c.code()) {
        Some("28P01" | "28000") => PgError::setting(
            side,
            URL,
            format!(
                "authentication failed for user {user:?} at {}: {}",
                target(config),
                describe(e)
            ),
        ),
        Some(code) => PgError::Failed {
            side,
            setting: Some(URL),
            message: format!("cannot connect to {}: {}", target(config), describe(e)),
            transient: is_transient_sqlstate(code),
        },
        None => PgError::Failed {
            side,
            setting: Some(URL),
            message: format!("cannot connect to {}: {}", target(config), describe(e)),
            transient: true,
        },
    }
}

/// Quotes an SQL identifier (`"a""b"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`'it''s'`), for the few commands that take no parameters.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_names_the_target_without_password() {
        let c = parse_url(Side::Source, "postgres://bob:secret@127.0.0.1:5433/app").expect("ok");
        let t = target(&c);
        assert_eq!(t, "bob@127.0.0.1:5433/app");
        assert!(!t.contains("secret"));
        let e = parse_url(Side::Source, "postgres://127.0.0.1/app").expect_err("no user");
        assert!(e.to_string().contains("url:"), "{e}");
        let e = parse_url(Side::Destination, "postgres://a@b:notaport/x").expect_err("bad");
        assert!(
            e.to_string().starts_with("postgres destination: url:"),
            "{e}"
        );
    }

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
