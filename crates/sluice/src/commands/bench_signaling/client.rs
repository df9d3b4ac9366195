//! A minimal HTTP/1.1 keep-alive client, in the manner of `wrk`: one connection, one request at a
//! time, a reused buffer and no pool, so that the load generator takes as little of the shared
//! CPU as it can from the server it measures.
//!
//! It understands exactly what the signaling API sends back: a status line, headers and a body
//! framed by `Content-Length`. Anything else (chunked bodies, `Connection: close`, a malformed
//! head) is a [`ClientError`], never a panic.

use std::io::Write as _;
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
        // Writing into a Vec cannot fail.
        let _ = write!(self.out, "{}", body.len());
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
        let (head_len, status, body_len) = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ClientError::Malformed(format!(
                    "no end of the response head within {MAX_HEAD} bytes"
                )));
            }
            self.fill().await?;
        };
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

    /// Reads more bytes into the buffer's spare capacity (not zeroed first: zeroing 8 KiB a
    /// read was a tenth of the whole process's instructions).
    async fn fill(&mut self) -> Result<(), ClientError> {
        self.buf.reserve(8192);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|source| ClientError::Io {
                addr: self.addr,
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}

/// The head's length, the status and the body's length, once the head is complete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, usize)>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Malformed(format!("bad response head: {e}"))),
    };
    let status = response
        .code
        .ok_or_else(|| ClientError::Malformed("no status code".into()))?;
    let mut length = None;
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| ClientError::Malformed(format!("bad Content-Length {value:?}")))?;
            if n > MAX_BODY {
                return Err(ClientError::Malformed(format!("a body of {n} bytes")));
            }
            length = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ClientError::Malformed(format!(
                "Transfer-Encoding {value:?} is not supported"
            )));
        } else if header.name.eq_ignore_ascii_case("connection")
            && value.eq_ignore_ascii_case("close")
        {
            return Err(ClientError::Malformed(
                "the server closes the connection (Connection: close)".into(),
            ));
        }
    }
    Ok(Some((head_len, status, length.unwrap_or(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(parse_head(head).unwrap(), Some((head.len(), 200, 12)));
        assert_eq!(parse_head(&head[..20]).unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
