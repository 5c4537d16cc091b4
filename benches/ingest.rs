//! Ingest throughput: signed webhooks per second that one `kyc serve` accepts with publisher
//! confirms, at 64 concurrent connections with ~1.5 KB bodies, and the latency percentiles.
//!
//! `cargo bench --bench ingest` (BENCH_REQUESTS, BENCH_CONCURRENCY override the defaults).

mod common;

use std::sync::Arc;

use common::{Deployment, decision, env_or, load, sign, wait_ready};

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

    let url = format!("{base}/webhooks/veriff/decision");
    let report = load(concurrency, requests, move |client, _, i| {
        let (body, signature) = &bodies[i % bodies.len()];
        client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-hmac-signature", signature)
            .body(body.clone())
    })
    .await;
    report.print("ingest", "webhooks");
    drop(server);
    deployment.clean_up().await;
}
