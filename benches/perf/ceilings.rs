//! The machine's ceilings, measured in the same run as kyc so that kyc's figures can be read
//! as ratios on a noisy shared machine: a bare lapin publisher with confirms into a quorum
//! queue (no HTTP in front), and the worker's per-decision writes by a bare client, one
//! transaction per decision and batched.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::deployment::{AMQP_URL, Deployment};

/// Messages per second a bare publisher gets confirmed: `tasks` tasks sharing one confirm
/// channel, each awaiting its confirm, `body_len` bytes each, persistent, into a quorum queue.
pub async fn broker(prefix: &str, messages: usize, tasks: usize, body_len: usize) -> f64 {
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
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = Arc::new(vec![b'x'; body_len]);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (channel, body, next, queue) = (
            channel.clone(),
            Arc::clone(&body),
            Arc::clone(&next),
            queue.clone(),
        );
        running.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("confirm");
                assert!(matches!(confirm, Confirmation::Ack(_)));
            }
        }));
    }
    for task in running {
        task.await.expect("publisher");
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    rate
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
