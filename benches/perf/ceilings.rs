//! The machine's ceilings, measured in the same run as kyc so that kyc's figures can be read
//! as ratios on a noisy shared machine: a lapin publisher with confirms into a quorum queue (no
//! HTTP in front), bare and routed as the contract routes, and the worker's per-decision writes
//! by a bare client, one transaction per decision and batched.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::client;
use crate::deployment::{AMQP_URL, Deployment};

/// How the ceiling's publisher reaches its queue.
#[derive(Clone, Copy)]
pub enum Route {
    /// The default exchange, no headers: what the broker can do at best.
    Bare,
    /// What the contract asks of any publisher: a durable topic exchange bound with
    /// `veriff.#`, kyc's headers and message id, mandatory. A topic exchange costs RabbitMQ
    /// CPU per message that the default exchange does not.
    Contract,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Route::Bare => "bare publisher",
            Route::Contract => "contract publisher (topic exchange, kyc's headers, mandatory)",
        })
    }
}

/// What a ceiling's publisher achieved.
pub struct BrokerRun {
    pub per_second: f64,
    /// From each message's scheduled send (open loop) or its send (closed) to its confirm, µs.
    pub latency: Histogram<u64>,
}

impl BrokerRun {
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// A publisher's confirmed messages: `tasks` tasks sharing one confirm channel, each awaiting
/// its confirm, `body_len` bytes each, persistent, into a quorum queue. Closed loop (as fast as
/// the confirms come) without a `rate`; with one, open loop: message i is due at i / rate, and
/// its latency counts from then, so a late publisher cannot hide queueing.
pub async fn broker(
    prefix: &str,
    route: Route,
    messages: usize,
    tasks: usize,
    body_len: usize,
    rate: Option<f64>,
) -> BrokerRun {
    let connection = Arc::new(
        Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("broker"),
    );
    let channel = connection.create_channel().await.expect("channel");
    let queue = format!("{prefix}.ceiling");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("a quorum queue");
    let exchange = match route {
        Route::Bare => String::new(),
        Route::Contract => {
            let exchange = format!("{prefix}.ceiling.webhooks");
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("a topic exchange");
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "veriff.#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("a binding");
            exchange
        }
    };
    let (routing_key, options, properties) = match route {
        Route::Bare => (
            queue.clone(),
            BasicPublishOptions::default(),
            BasicProperties::default().with_delivery_mode(2),
        ),
        Route::Contract => (
            "veriff.decision".to_owned(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            contract_properties(),
        ),
    };
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = Arc::new(vec![b'x'; body_len]);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (channel, body, next) = (channel.clone(), Arc::clone(&body), Arc::clone(&next));
        let (exchange, routing_key, properties) =
            (exchange.clone(), routing_key.clone(), properties.clone());
        running.push(tokio::spawn(async move {
            let mut latency = client::histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    break latency;
                }
                let due = client::due(started, i, rate).await;
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        options,
                        &body,
                        properties.clone(),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("confirm");
                assert!(matches!(confirm, Confirmation::Ack(_)));
                let _ = latency.record(due.elapsed().as_micros().max(1) as u64);
            }
        }));
    }
    let mut latency = client::histogram();
    for task in running {
        latency
            .add(task.await.expect("publisher"))
            .expect("same bounds");
    }
    let per_second = messages as f64 / started.elapsed().as_secs_f64();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    if !exchange.is_empty() {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
    BrokerRun {
        per_second,
        latency,
    }
}

/// Properties of the size and shape kyc sends (DESIGN.md §5), with made-up values.
fn contract_properties() -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("kyc-kind", "decision"),
        ("kyc-integration", "EU"),
        ("kyc-received-at", "2026-12-01T10:00:00.123456Z"),
        ("kyc-signature", &"ab".repeat(32)),
        ("kyc-publish-id", "0123456789abcdef-1"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("0123456789abcdef".repeat(4).as_str().into())
        .with_timestamp(1_764_583_200)
        .with_headers(headers)
}

/// Decisions per second a bare client records as the worker does (insert the input, update
/// and announce the row), `per_transaction` decisions in each transaction, `connections` at
/// once, for these verifications (one decision each).
pub async fn database(
    deployment: &Deployment,
    verifications: &[(Uuid, String)],
    per_transaction: usize,
    connections: usize,
) -> f64 {
    let work = Arc::new(verifications.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..connections {
        let (work, next, url) = (
            Arc::clone(&work),
            Arc::clone(&next),
            deployment.database_url(),
        );
        running.push(tokio::spawn(async move {
            let (mut db, connection) = tokio_postgres::connect(&url, NoTls).await.expect("db");
            tokio::spawn(connection);
            let insert = db
                .prepare(
                    "INSERT INTO inputs (verification_id, dedup_key, kind, session_id, attempt_id, status,
                         decision_time, source, integration, signature, body_ciphertext, received_at)
                     VALUES ($1, $2, 'decision', $3, 'a1', 'approved', now(), 'webhook', 'EU', $4, $5, now())
                     ON CONFLICT (dedup_key) DO NOTHING",
                )
                .await
                .expect("prepare");
            let update = db
                .prepare(
                    "WITH changed AS (
                         UPDATE verifications SET state = 'VERIFIED', updated_at = now() WHERE id = $1 RETURNING id
                     )
                     SELECT pg_notify('verification_state', id::text) FROM changed",
                )
                .await
                .expect("prepare");
            let body = vec![7u8; 1500];
            let signature = "ab".repeat(32);
            loop {
                let first = next.fetch_add(per_transaction, Ordering::Relaxed);
                if first >= work.len() {
                    break;
                }
                let tx = db.transaction().await.expect("tx");
                for (id, session) in &work[first..(first + per_transaction).min(work.len())] {
                    let key = format!("ceiling|{session}");
                    tx.execute(&insert, &[id, &key, session, &signature, &body])
                        .await
                        .expect("insert");
                    tx.query(&update, &[id]).await.expect("update");
                }
                tx.commit().await.expect("commit");
            }
        }));
    }
    for task in running {
        task.await.expect("writer");
    }
    let rate = verifications.len() as f64 / started.elapsed().as_secs_f64();
    deployment
        .db
        .execute("DELETE FROM inputs WHERE dedup_key LIKE 'ceiling|%'", &[])
        .await
        .expect("clean the ceiling's inputs");
    rate
}
