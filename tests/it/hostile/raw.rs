//! HTTP/1.1 by hand over TCP: requests that no well-behaved client library would send.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a raw exchange waits for the server's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(20);

/// What the server did with a raw request.
#[derive(Debug)]
pub enum RawAnswer {
    /// A response: its status, its head (lowercase) and its body.
    Response {
        status: u16,
        head: String,
        body: Vec<u8>,
    },
    /// The connection closed (or was reset) without a response.
    Closed,
}

impl RawAnswer {
    pub fn status(&self) -> Option<u16> {
        match self {
            RawAnswer::Response { status, .. } => Some(*status),
            RawAnswer::Closed => None,
        }
    }
}

/// Sends `request` on a new connection to `addr` (closing the sending side afterwards when
/// `close_write`) and reads one response.
pub async fn exchange(addr: &str, request: &[u8], close_write: bool) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    // The server may answer (and close) before it has read everything: a failed write is
    // part of the answer, not a test failure.
    if stream.write_all(request).await.is_ok() && close_write {
        let _ = stream.shutdown().await;
    }
    tokio::time::timeout(ANSWER_WAIT, read_response(&mut stream))
        .await
        .expect("the server answers or closes within 20 s")
}

/// Reads one response (head, then a body of its Content-Length), or `Closed`.
pub async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> RawAnswer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return RawAnswer::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    RawAnswer::Response { status, head, body }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A request head with `Host` and the given lines, then the body.
pub fn request(request_line: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{request_line}\r\nhost: 127.0.0.1\r\n").into_bytes();
    for header in headers {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// `body` in chunked transfer coding, 64 KiB a chunk.
pub fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1024);
    for piece in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
