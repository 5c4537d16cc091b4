//! A lean HTTP/1.1 load generator: pre-built requests on keep-alive connections, the
//! response's status line and body read with as little work as possible, so that the
//! generator leaves the cores to the server. Closed loop (C connections, as fast as they are
//! answered) and open loop (a fixed arrival rate, latency counted from each request's
//! scheduled send time, so that a lagging generator cannot hide queueing: wrk2's correction).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Sends a whole request and reads its response; returns the status. A closed or broken
    /// connection is opened again for the next request.
    pub async fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        let outcome = self.try_exchange(request).await;
        if outcome.is_err() {
            self.stream = None;
        }
        outcome
    }

    async fn try_exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.buffer.clear();
        }
        let stream = self.stream.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        stream.write_all(request).await?;
        // The head.
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            read_more(stream, &mut self.buffer).await?;
        };
        let head = &self.buffer[..head_end];
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status line"))?;
        let length = content_length(head).unwrap_or(0);
        let close = find_ignore_case(head, b"connection: close").is_some();
        while self.buffer.len() < head_end + length {
            read_more(stream, &mut self.buffer).await?;
        }
        self.buffer.drain(..head_end + length);
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buffer.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

fn content_length(head: &[u8]) -> Option<usize> {
    let at = find_ignore_case(head, b"\r\ncontent-length:")? + 17;
    let rest = &head[at..];
    let end = find(rest, b"\r\n")?;
    std::str::from_utf8(&rest[..end]).ok()?.trim().parse().ok()
}

/// A POST of `body` to `path` with extra headers, as bytes ready to send.
pub fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request =
        format!("POST {path} HTTP/1.1\r\nhost: kyc\r\ncontent-type: application/json\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// What a load run measured.
pub struct Run {
    /// Latency of every answer, in microseconds.
    pub latency: Histogram<u64>,
    /// Answers by status (0: no answer, the connection failed).
    pub statuses: BTreeMap<u16, usize>,
    /// The indexes of the requests answered 200, with when.
    pub accepted: Vec<(usize, Instant)>,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> usize {
        self.statuses.get(&200).copied().unwrap_or(0)
    }

    pub fn per_second(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    pub fn other(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Latencies in µs, up to two minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// When the `i`th of a run started at `started` is due, waited for. Open loop (a `rate`): at
/// its scheduled time, and latency counts from then, however late the generator is to send
/// it. Closed loop: now.
pub async fn due(started: Instant, i: usize, rate: Option<f64>) -> Instant {
    match rate {
        Some(rate) => {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            due
        }
        None => Instant::now(),
    }
}

/// Sends every request of `requests` once, over `connections` connections, each as soon as
/// the connection is free (closed loop), or at `rate` per second (open loop).
pub async fn run(
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    connections: usize,
    rate: Option<f64>,
) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (requests, next) = (Arc::clone(&requests), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut latency = histogram();
            let mut statuses = BTreeMap::new();
            let mut accepted = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests.len() {
                    break;
                }
                let due = due(started, i, rate).await;
                let status = conn.exchange(&requests[i]).await.unwrap_or(0);
                let done = Instant::now();
                let micros = done.saturating_duration_since(due).as_micros() as u64;
                let _ = latency.record(micros.max(1));
                *statuses.entry(status).or_insert(0) += 1;
                if status == 200 {
                    accepted.push((i, done));
                }
            }
            (latency, statuses, accepted)
        }));
    }
    let mut run = Run {
        latency: histogram(),
        statuses: BTreeMap::new(),
        accepted: Vec::with_capacity(requests.len()),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latency, statuses, accepted) = task.await.expect("load task");
        let _ = run.latency.add(&latency);
        for (status, n) in statuses {
            *run.statuses.entry(status).or_insert(0) += n;
        }
        run.accepted.extend(accepted);
    }
    run.elapsed = started.elapsed();
    run
}
