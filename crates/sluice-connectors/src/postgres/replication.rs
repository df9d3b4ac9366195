//! A small client for PostgreSQL's streaming replication protocol: what `tokio-postgres` lacks.
//!
//! It opens a connection in `replication=database` mode (authenticating with cleartext, MD5 or
//! SCRAM-SHA-256 passwords), runs replication commands (`CREATE_REPLICATION_SLOT`, ...) through
//! the simple query protocol, and streams a logical slot: `START_REPLICATION` switches the
//! connection to copy-both mode, where the server sends WAL data (`w`) and keepalives (`k`) and
//! the client reports how far it has durably processed (`r`), which is what advances the slot.
//!
//! TLS is not supported: a URL with `sslmode=require` is refused with a message saying so.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

use super::connect::{target, URL};
use super::error::{is_transient_sqlstate, PgError, Side};
use super::lsn::{pg_micros_now, Lsn};

/// The largest backend message accepted (a sanity bound against a corrupt stream).
const MAX_MESSAGE: usize = 1 << 30;

/// Session settings that make text values look the same on every connection (and so the same in
/// snapshot and change records).
pub const SESSION_SETTINGS: [(&str, &str); 4] = [
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
];

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An error the server sent (`ErrorResponse`).
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl ServerError {
    fn parse(mut body: &[u8]) -> ServerError {
        let mut e = ServerError::default();
        while let Some((&field, rest)) = body.split_first() {
            if field == 0 {
                break;
            }
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let value = String::from_utf8_lossy(&rest[..end]).into_owned();
            match field {
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
            body = rest.get(end + 1..).unwrap_or(&[]);
        }
        e
    }

    /// Message, detail and hint in one line.
    pub fn describe(&self) -> String {
        let mut s = self.message.clone();
        if let Some(d) = &self.detail {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = &self.hint {
            s.push_str(&format!("; hint: {h}"));
        }
        s
    }
}

/// One message of a replication stream.
#[derive(Debug)]
pub enum Replication {
    /// WAL data: one logical decoding output message (for pgoutput: one protocol message).
    XLogData {
        /// Where the data starts in the WAL.
        start: Lsn,
        /// The server's current end of WAL.
        end: Lsn,
        /// The output plugin's message.
        data: Bytes,
    },
    /// The server is alive; `reply` asks for a status update right away.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// True when the server wants a status update now.
        reply: bool,
    },
}

/// A connection in replication mode.
pub struct ReplicationConn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
}

impl std::fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConn")
            .field("target", &self.target)
            .finish()
    }
}

impl ReplicationConn {
    /// Connects and authenticates in `replication=database` mode.
    pub async fn connect(config: &Config, application_name: &str) -> Result<Self, PgError> {
        let target = target(config);
        if config.get_ssl_mode() == SslMode::Require {
            return Err(PgError::setting(
                Side::Source,
                URL,
                "sslmode=require is not supported for logical replication connections; use \
                 sslmode=disable or prefer (a local or tunnelled connection)",
            ));
        }
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let io = match tokio::time::timeout(timeout, open_socket(config)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                return Err(PgError::Failed {
                    side: Side::Source,
                    setting: Some(URL),
                    message: format!("cannot connect to {target} for replication: {e}"),
                    transient: true,
                })
            }
            Err(_) => {
                return Err(PgError::Failed {
                    side: Side::Source,
                    setting: Some(URL),
                    message: format!(
                        "cannot connect to {target} for replication: timed out after {timeout:?}"
                    ),
                    transient: true,
                })
            }
        };
        let mut conn = ReplicationConn {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            target,
        };
        conn.startup(config, application_name).await?;
        Ok(conn)
    }

    async fn startup(&mut self, config: &Config, application_name: &str) -> Result<(), PgError> {
        let user = config.get_user().unwrap_or_default().to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &user),
            ("database", &dbname),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        ];
        params.extend(SESSION_SETTINGS);
        frontend::startup_message(params, &mut self.wbuf).map_err(|e| self.io_error(e))?;
        self.flush().await?;
        let password = config.get_password().map(<[u8]>::to_vec);
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'R' => {
                    let mut b = &body[..];
                    if b.len() < 4 {
                        return Err(self.protocol("short authentication message"));
                    }
                    let kind = b.get_i32();
                    match kind {
                        0 => {}
                        3 => {
                            let pw = self.password(&password, &user)?;
                            frontend::password_message(&pw, &mut self.wbuf)
                                .map_err(|e| self.io_error(e))?;
                            self.flush().await?;
                        }
                        5 => {
                            let pw = self.password(&password, &user)?;
                            if b.len() < 4 {
                                return Err(self.protocol("short MD5 salt"));
                            }
                            let salt = [b[0], b[1], b[2], b[3]];
                            let hash = md5_hash(user.as_bytes(), &pw, salt);
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                                .map_err(|e| self.io_error(e))?;
                            self.flush().await?;
                        }
                        10 => {
                            let pw = self.password(&password, &user)?;
                            let offers_scram = b
                                .split(|&c| c == 0)
                                .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(PgError::setting(
                                    Side::Source,
                                    URL,
                                    format!(
                                        "{}: the server offers no SASL mechanism this client \
                                         supports (only SCRAM-SHA-256)",
                                        self.target
                                    ),
                                ));
                            }
                            let s =
                                sasl::ScramSha256::new(&pw, sasl::ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                s.message(),
                                &mut self.wbuf,
                            )
                            .map_err(|e| self.io_error(e))?;
                            scram = Some(s);
                            self.flush().await?;
                        }
                        11 => {
                            let Some(s) = scram.as_mut() else {
                                return Err(self.protocol("SASL continue without SASL start"));
                            };
                            s.update(b)
                                .map_err(|e| self.auth_failed(&user, &e.to_string()))?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)
                                .map_err(|e| self.io_error(e))?;
                            self.flush().await?;
                        }
                        12 => {
                            let Some(s) = scram.as_mut() else {
                                return Err(self.protocol("SASL final without SASL start"));
                            };
                            s.finish(b)
                                .map_err(|e| self.auth_failed(&user, &e.to_string()))?;
                        }
                        other => {
                            return Err(PgError::setting(
                                Side::Source,
                                URL,
                                format!(
                                    "{}: the server asks for authentication method {other}, \
                                     which this client does not support (use password, md5 or \
                                     scram-sha-256)",
                                    self.target
                                ),
                            ))
                        }
                    }
                }
                b'E' => {
                    let e = ServerError::parse(&body);
                    return Err(match e.code.as_str() {
                        "28P01" | "28000" => self.auth_failed(&user, &e.describe()),
                        code => PgError::Failed {
                            side: Side::Source,
                            setting: Some(URL),
                            message: format!(
                                "cannot open a replication connection to {}: {}",
                                self.target,
                                e.describe()
                            ),
                            transient: is_transient_sqlstate(code),
                        },
                    });
                }
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse.
                _ => {}
            }
        }
    }

    fn password(&self, password: &Option<Vec<u8>>, user: &str) -> Result<Vec<u8>, PgError> {
        password.clone().ok_or_else(|| {
            self.auth_failed(user, "the server asks for a password but the URL has none")
        })
    }

    fn auth_failed(&self, user: &str, why: &str) -> PgError {
        PgError::setting(
            Side::Source,
            URL,
            format!(
                "authentication failed for user {user:?} at {}: {why}",
                self.target
            ),
        )
    }

    fn protocol(&self, what: &str) -> PgError {
        PgError::Failed {
            side: Side::Source,
            setting: None,
            message: format!("replication connection to {}: {what}", self.target),
            transient: true,
        }
    }

    fn io_error(&self, e: std::io::Error) -> PgError {
        PgError::Failed {
            side: Side::Source,
            setting: None,
            message: format!("replication connection to {}: {e}", self.target),
            transient: true,
        }
    }

    fn server_error(&self, doing: &str, e: &ServerError) -> PgError {
        PgError::Failed {
            side: Side::Source,
            setting: None,
            message: format!("{doing}: {}", e.describe()),
            transient: is_transient_sqlstate(&e.code),
        }
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        let buf = self.wbuf.split();
        if let Err(e) = self.io.write_all(&buf).await {
            return Err(self.io_error(e));
        }
        if let Err(e) = self.io.flush().await {
            return Err(self.io_error(e));
        }
        Ok(())
    }

    /// Reads one backend message: its tag and body. Cancel-safe: bytes read before a dropped call
    /// stay buffered for the next one.
    async fn read_message(&mut self) -> Result<(u8, Bytes), PgError> {
        loop {
            if let Some(m) = self.parse_buffered()? {
                return Ok(m);
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(self.protocol("the server closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    fn parse_buffered(&mut self) -> Result<Option<(u8, Bytes)>, PgError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(self.protocol(&format!("invalid message length {len}")));
        }
        if self.rbuf.len() < len + 1 {
            self.rbuf.reserve(len + 1 - self.rbuf.len());
            return Ok(None);
        }
        let msg = self.rbuf.split_to(len + 1).freeze();
        Ok(Some((msg[0], msg.slice(5..))))
    }

    /// Runs a command with the simple query protocol and returns the rows of its result, each
    /// value as text (`None` for NULL).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        match self.simple_query_raw(sql).await? {
            Ok(rows) => Ok(rows),
            Err(e) => Err(self.server_error(sql, &e)),
        }
    }

    /// Like [`simple_query`](Self::simple_query), but returns the server's error as is.
    pub async fn simple_query_raw(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<Vec<Option<String>>>, ServerError>, PgError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.io_error(e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'D' => {
                    rows.push(parse_data_row(&body).ok_or_else(|| self.protocol("bad data row"))?)
                }
                b'E' => error = Some(ServerError::parse(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        Ok(match error {
            Some(e) => Err(e),
            None => Ok(rows),
        })
    }

    /// Starts streaming the logical slot `slot` with pgoutput from `start` (the server starts at
    /// the slot's confirmed position if that is later).
    pub async fn start_logical(
        &mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<(), PgError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (\"proto_version\" '1', \
             \"publication_names\" {})",
            super::connect::quote_ident(slot),
            super::connect::quote_literal(&super::connect::quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.wbuf).map_err(|e| self.io_error(e))?;
        self.flush().await?;
        let mut error = None;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => error = Some(ServerError::parse(&body)),
                b'Z' => {
                    let e = error.unwrap_or_default();
                    return Err(
                        self.server_error(&format!("cannot stream replication slot {slot:?}"), &e)
                    );
                }
                _ => {}
            }
        }
    }

    /// The next message of a started stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Replication, PgError> {
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'd' => {
                    let Some((&kind, rest)) = body.split_first() else {
                        continue;
                    };
                    let mut b = rest;
                    match kind {
                        b'w' if b.len() >= 24 => {
                            let start = Lsn(b.get_u64());
                            let end = Lsn(b.get_u64());
                            let _send_time = b.get_i64();
                            return Ok(Replication::XLogData {
                                start,
                                end,
                                data: body.slice(25..),
                            });
                        }
                        b'k' if b.len() >= 17 => {
                            let wal_end = Lsn(b.get_u64());
                            let _time = b.get_i64();
                            let reply = b.get_u8() == 1;
                            return Ok(Replication::Keepalive { wal_end, reply });
                        }
                        _ => return Err(self.protocol("unknown copy data message")),
                    }
                }
                b'E' => {
                    let e = ServerError::parse(&body);
                    return Err(self.server_error("replication stream", &e));
                }
                b'c' => return Err(self.protocol("the server ended the replication stream")),
                _ => {}
            }
        }
    }

    /// Reports how far the client got: `written` received, `flushed` durably processed (the slot
    /// may discard WAL before it).
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn) -> Result<(), PgError> {
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(written.0);
        msg.put_u64(flushed.0);
        msg.put_u64(flushed.0);
        msg.put_i64(pg_micros_now());
        msg.put_u8(0);
        let data = frontend::CopyData::new(msg.freeze()).map_err(|e| self.io_error(e))?;
        data.write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends a started stream cleanly: reports the final position, ends the copy and waits (at
    /// most `wait`) for the server to finish the command, which proves it processed the report
    /// (a connection closed with unread data may be reset, losing the last report in flight).
    pub async fn finish(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        wait: Duration,
    ) -> Result<(), PgError> {
        self.send_status(written, flushed).await?;
        frontend::copy_done(&mut self.wbuf);
        self.flush().await?;
        let drained = tokio::time::timeout(wait, async {
            loop {
                let (tag, _) = self.read_message().await?;
                if tag == b'Z' {
                    return Ok::<(), PgError>(());
                }
            }
        })
        .await;
        match drained {
            Ok(r) => r,
            Err(_) => Err(self.protocol("the server did not end the stream in time")),
        }
    }

    /// Says goodbye (best effort).
    pub async fn terminate(&mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}

fn parse_data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let mut b = body;
    if b.len() < 2 {
        return None;
    }
    let n = b.get_i16();
    let mut row = Vec::with_capacity(usize::try_from(n).ok()?);
    for _ in 0..n {
        if b.len() < 4 {
            return None;
        }
        let len = b.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        if b.len() < len {
            return None;
        }
        row.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
        b.advance(len);
    }
    Some(row)
}

async fn open_socket(config: &Config) -> std::io::Result<Box<dyn Io>> {
    let ports = config.get_ports();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no host to connect to");
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let attempt: std::io::Result<Box<dyn Io>> = match host {
            Host::Tcp(h) => match TcpStream::connect((h.as_str(), port)).await {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    Ok(Box::new(s))
                }
                Err(e) => Err(e),
            },
            #[cfg(unix)]
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Io>)
            }
        };
        match attempt {
            Ok(io) => return Ok(io),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body = b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0HCreate it.\0\0";
        let e = ServerError::parse(body);
        assert_eq!(e.code, "42704");
        assert_eq!(
            e.describe(),
            "replication slot \"x\" does not exist; hint: Create it."
        );
    }

    #[test]
    fn parses_data_rows_with_nulls() {
        let mut b = BytesMut::new();
        b.put_i16(3);
        b.put_i32(2);
        b.put_slice(b"ab");
        b.put_i32(-1);
        b.put_i32(0);
        let row = parse_data_row(&b).expect("row");
        assert_eq!(row, vec![Some("ab".into()), None, Some(String::new())]);
        assert!(parse_data_row(&b[..7]).is_none());
    }
}
