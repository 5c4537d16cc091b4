//! Worker figures:
//! 1. throughput: decisions applied per second by one `kyc worker`, from a queue pre-loaded
//!    with signed decisions for existing sessions (BENCH_DECISIONS, default 50,000);
//! 2. end-to-end latency from the webhook's 200 to the committed row (seen through
//!    `NOTIFY verification_state`) at a steady BENCH_RATE webhooks/s (default 500) for
//!    BENCH_SECONDS (default 20), with `kyc serve` and `kyc worker` running.
//!
//! `cargo bench --bench worker`

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use common::{Deployment, decision, env_or, percentile_ms, sign, wait_ready};
use futures_util::StreamExt;
use kyc::queue::{Envelope, Topology};
use kyc::veriff::integration::{Integration, IntegrationKeys, Integrations};
use kyc::veriff::signature::{RawWebhook, SignatureHeaders};
use kyc::veriff::{Kind, dedup, payload};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use secrecy::SecretString;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let decisions: usize = env_or("BENCH_DECISIONS", 50_000);
    let rate: u64 = env_or("BENCH_RATE", 500);
    let seconds: u64 = env_or("BENCH_SECONDS", 20);
    let latency_sessions = (rate * seconds) as usize;
    let deployment = Deployment::new("worker");
    deployment.migrate().await;

    let (db, db_conn) = tokio_postgres::connect(&deployment.database_url(), NoTls)
        .await
        .expect("db");
    tokio::spawn(db_conn);
    let ids: Vec<Uuid> = (0..decisions + latency_sessions)
        .map(|_| Uuid::new_v4())
        .collect();
    let sessions: Vec<String> = (0..ids.len()).map(|i| format!("bench-{i}")).collect();
    seed(&db, &ids, &sessions).await;

    // 1. Throughput from a pre-loaded queue.
    preload(&deployment, &sessions[..decisions]).await;
    println!("worker: queue pre-loaded with {decisions} signed decisions");
    let started = Instant::now();
    let (worker, _) = deployment.spawn("worker");
    let mut last_report = Instant::now();
    loop {
        let applied: i64 = db
            .query_one("SELECT count(*) FROM inputs WHERE kind = 'decision'", &[])
            .await
            .expect("count")
            .get(0);
        if applied as usize >= decisions {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "worker: {applied} applied after {:.0}s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    println!(
        "worker: {decisions} decisions applied in {:.2}s = {:.0} decisions/s (process start included)",
        took.as_secs_f64(),
        decisions as f64 / took.as_secs_f64()
    );

    // 2. End-to-end latency at a steady rate.
    let (server, base) = deployment.spawn("serve");
    wait_ready(&base).await;
    let (_listener, committed) = listen(&deployment).await;
    let accepted: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let client = kyc::tls::client_builder().build().expect("client");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut sends = Vec::new();
    for i in 0..latency_sessions {
        tick.tick().await;
        let index = decisions + i;
        let (id, session) = (ids[index], sessions[index].clone());
        let (client, base, accepted) = (client.clone(), base.clone(), Arc::clone(&accepted));
        sends.push(tokio::spawn(async move {
            let body = decision(&session, "approved", "2030-01-01T10:03:21.123Z");
            let response = client
                .post(format!("{base}/webhooks/veriff/decision"))
                .header("x-hmac-signature", sign(&body))
                .body(body)
                .send()
                .await;
            if response.is_ok_and(|r| r.status() == 200) {
                accepted.lock().expect("lock").insert(id, Instant::now());
            }
        }));
    }
    for send in sends {
        let _ = send.await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed.lock().expect("lock").len() < latency_sessions && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = accepted.lock().expect("lock").clone();
    let committed = committed.lock().expect("lock").clone();
    let mut latencies: Vec<Duration> = accepted
        .iter()
        .filter_map(|(id, ok)| committed.get(id).map(|c| c.saturating_duration_since(*ok)))
        .collect();
    latencies.sort();
    println!(
        "worker: end-to-end at {rate}/s for {seconds}s: {} accepted, {} committed; 200 → committed p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        accepted.len(),
        latencies.len(),
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
    );
    drop((db, server, worker));
    deployment.clean_up().await;
}

async fn seed(db: &tokio_postgres::Client, ids: &[Uuid], sessions: &[String]) {
    db.execute(
        "INSERT INTO verifications (id, region, state, retry) SELECT unnest($1::uuid[]), 'EU', 'UNVERIFIED', 'NONE'",
        &[&ids],
    )
    .await
    .expect("verifications");
    db.execute(
        "INSERT INTO sessions (id, verification_id) SELECT * FROM unnest($2::text[], $1::uuid[])",
        &[&ids, &sessions],
    )
    .await
    .expect("sessions");
    db.execute(
        "INSERT INTO inputs (verification_id, dedup_key, kind, session_id, source)
         SELECT v, encode(sha256(('session_created|' || s)::bytea), 'hex'), 'session_created', s, 'api'
         FROM unnest($1::uuid[], $2::text[]) AS t(v, s)",
        &[&ids, &sessions],
    )
    .await
    .expect("session inputs");
}

/// Publishes signed decisions exactly as the receiver would, confirmed.
async fn preload(deployment: &Deployment, sessions: &[String]) {
    let topology = Topology::new(
        deployment.prefix.clone(),
        [5, 30, 120, 600].map(Duration::from_secs).to_vec(),
    );
    let connection =
        lapin::Connection::connect(common::AMQP_URL, lapin::ConnectionProperties::default())
            .await
            .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    topology.declare(&channel).await.expect("topology");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let integrations = Integrations::new(
        IntegrationKeys::new(
            Integration::Eu,
            SecretString::from(common::API_KEY),
            vec![SecretString::from(common::SECRET)],
        ),
        None,
    );
    for session in sessions {
        let body = decision(session, "approved", "2030-01-01T10:03:21.123Z");
        let raw = RawWebhook {
            kind: Kind::Decision,
            headers: SignatureHeaders {
                hmac: Some(sign(&body)),
                ..SignatureHeaders::default()
            },
            body: Bytes::from(body),
        };
        let webhook = integrations.verify(raw).expect("signed");
        let facts = payload::parse(Kind::Decision, webhook.body());
        let key = dedup::dedup_key(Kind::Decision, facts.as_ref(), webhook.body());
        let envelope = Envelope::webhook(&topology, &webhook, facts.as_ref(), key, Utc::now());
        // Not awaited one by one: wait_for_confirms below collects them all.
        let _confirm = channel
            .basic_publish(
                envelope.exchange().into(),
                envelope.routing_key().into(),
                BasicPublishOptions::default(),
                envelope.body(),
                envelope.properties("bench"),
            )
            .await
            .expect("publish");
    }
    channel.wait_for_confirms().await.expect("confirms");
    let _ = connection.close(200, "preloaded".into()).await;
}

/// The time each verification's change was announced.
async fn listen(
    deployment: &Deployment,
) -> (tokio_postgres::Client, Arc<Mutex<HashMap<Uuid, Instant>>>) {
    let (client, mut connection) = tokio_postgres::connect(&deployment.database_url(), NoTls)
        .await
        .expect("listen connection");
    let seen: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let record = Arc::clone(&seen);
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message
                && let Ok(id) = Uuid::parse_str(n.payload())
            {
                record
                    .lock()
                    .expect("lock")
                    .entry(id)
                    .or_insert_with(Instant::now);
            }
        }
    });
    client
        .batch_execute("LISTEN verification_state")
        .await
        .expect("listen");
    (client, seen)
}
