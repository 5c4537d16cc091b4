//! Ingest throughput: signed webhooks per second that one `kyc serve` accepts with publisher
//! confirms, at 64 concurrent connections with ~1.5 KB bodies, and the latency percentiles.
//!
//! `cargo bench --bench ingest` (BENCH_REQUESTS, BENCH_CONCURRENCY override the defaults).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Deployment, decision, env_or, percentile_ms, sign, wait_ready};

#[tokio::main]
async fn main() {
    let requests: usize = env_or("BENCH_REQUESTS", 50_000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
    let deployment = Deployment::new("ingest");
    let (server, base) = deployment.spawn("serve");
    wait_ready(&base).await;

    let bodies: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
        (0..1000)
            .map(|i| {
                let body = decision(
                    &format!("bench-session-{i}"),
                    "approved",
                    "2030-01-01T10:03:21.123Z",
                );
                let sig = sign(&body);
                (body, sig)
            })
            .collect(),
    );
    println!(
        "ingest: {requests} requests, {concurrency} connections, body {} bytes",
        bodies[0].0.len()
    );

    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (bodies, next, base) = (Arc::clone(&bodies), Arc::clone(&next), base.clone());
        workers.push(tokio::spawn(async move {
            let client = kyc::tls::client_builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let url = format!("{base}/webhooks/veriff/decision");
            let (mut latencies, mut failures) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let (body, sig) = &bodies[i % bodies.len()];
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-hmac-signature", sig)
                    .body(body.clone())
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => latencies.push(sent.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut failures = 0;
    for worker in workers {
        let (l, f) = worker.await.expect("load task");
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "ingest: {} accepted, {failures} failed in {:.2}s = {:.0} webhooks/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
        latencies
            .last()
            .copied()
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            * 1000.0,
    );
    drop(server);
    deployment.clean_up().await;
}
