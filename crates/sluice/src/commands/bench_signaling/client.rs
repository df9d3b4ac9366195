//! A minimal HTTP/1.1 keep-alive client, in the manner of `wrk`: one connection, one request at a
//! time, a reused buffer and no pool, so that the load generator takes as little of the shared
//! CPU as it can from the server it measures.
//!
//! It understands exactly what the signaling API sends back: a status line, headers and a body
//! framed by `Content-Length`. Anything else (chunked bodies, `Connection: close`, a malformed
//! head) is a [`ClientError`], never a panic.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("connection to {addr}: {source}")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection before a whole response arrived.
    #[error("the server closed the connection mid-response")]
    Closed,
    /// The response is not what this client understands.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response<'a> {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: &'a [u8],
}

/// One keep-alive connection.
pub struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    /// The request being written.
    out: Vec<u8>,
    /// Bytes read and not yet consumed; a response's body is served from here.
    buf: Vec<u8>,
    /// Bytes of `buf` that belong to the previous response (dropped before the next read).
    consumed: usize,
}

impl Connection {
    /// Connects to `addr` with Nagle's algorithm off.
    pub async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io { addr, source };
        let stream = TcpStream::connect(addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Connection {
            addr,
            stream,
            out: Vec::with_capacity(1024),
            buf: Vec::with_capacity(4096),
            consumed: 0,
        })
    }

    /// POSTs a JSON `body` to `path` and waits for the whole response.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<Response<'_>, ClientError> {
        self.out.clear();
        self.out.extend_from_slice(b"POST ");
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(
            b" HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: ",
        );
        self.out
            .extend_from_slice(body.len().to_string().as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(body);
        let addr = self.addr;
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|source| ClientError::Io { addr, source })?;
        self.read_response().await
    }

    /// Reads one response: the head, then `Content-Length` bytes of body.
    async fn read_response(&mut self) -> Result<Response<'_>, ClientError> {
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        let head_len = loop {
            if let Some(end) = find_head_end(&self.buf) {
                break end;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ClientError::Malformed(format!(
                    "no end of the response head within {MAX_HEAD} bytes"
                )));
            }
            self.fill().await?;
        };
        let (status, body_len) = parse_head(&self.buf[..head_len])?;
        let total = head_len + body_len;
        while self.buf.len() < total {
            self.fill().await?;
        }
        self.consumed = total;
        Ok(Response {
            status,
            body: &self.buf[head_len..total],
        })
    }

    /// Reads more bytes into the buffer.
    async fn fill(&mut self) -> Result<(), ClientError> {
        let len = self.buf.len();
        self.buf.resize(len + 8192, 0);
        let n = self.stream.read(&mut self.buf[len..]).await;
        let n = match n {
            Ok(n) => n,
            Err(source) => {
                self.buf.truncate(len);
                return Err(ClientError::Io {
                    addr: self.addr,
                    source,
                });
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}

/// The length of the head including its blank line, if it is complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The status and body length of a response head.
fn parse_head(head: &[u8]) -> Result<(u16, usize), ClientError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| ClientError::Malformed("the response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ClientError::Malformed(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| ClientError::Malformed(format!("bad Content-Length {value:?}")))?;
            if n > MAX_BODY {
                return Err(ClientError::Malformed(format!("a body of {n} bytes")));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ClientError::Malformed(format!(
                "Transfer-Encoding {value:?} is not supported"
            )));
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            return Err(ClientError::Malformed(
                "the server closes the connection (Connection: close)".into(),
            ));
        }
    }
    Ok((status, length.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(find_head_end(head), Some(head.len()));
        assert_eq!(parse_head(head).unwrap(), (200, 12));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
