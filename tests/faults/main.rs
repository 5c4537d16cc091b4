//! The fault suite (issue 10 item 4; docs/RELIABILITY.md): each case sends webhooks the way
//! Veriff does through a ledger (resent after any answer but 200), breaks something under
//! the stream, and checks the promise of a 200: every key answered 200 recorded once or
//! dead-lettered, none missing, none recorded twice. Each case prints its ledger.
//!
//! It stops the machine's RabbitMQ (`rabbitmqctl stop_app`) and starts a three-node cluster
//! beside it, so it is a test binary of its own that nothing else runs beside: `.ci/run` runs
//! it after `cargo test`, as `cargo test --test faults`. Its cases take turns (a lock), and
//! every node they stop is started again, even when a case fails.

#[path = "../it/harness/mod.rs"]
#[allow(
    dead_code,
    reason = "the harness is shared with tests/it; this suite uses part of it"
)]
mod harness;

mod broker;
mod cluster;
mod concurrency;
mod database;
mod nodes;
mod processes;
mod replay;
mod tls;

use std::sync::LazyLock;
use std::time::Duration;

use kyc::veriff::integration::Integration;
use tokio::sync::{Mutex, MutexGuard};

use harness::TestApp;
use harness::ledger::Webhook;
use harness::seed::{decision, event, time};

/// How long a webhook is resent before the ledger gives up on it (Veriff: 7 days).
pub const DEADLINE: Duration = Duration::from_secs(120);
/// How long a case waits for the books to balance once its fault is over.
pub const SETTLE: Duration = Duration::from_secs(120);

static SERIAL: LazyLock<Mutex<()>> = LazyLock::new(|| Mutex::new(()));

/// One case at a time: they stop services the others use.
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// `n` sessions of EU verifications, created as the registration API does.
pub async fn sessions(app: &TestApp, tag: &str, n: usize) -> Vec<String> {
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let session = format!("{tag}-s{i}");
        app.seed_verification(Integration::Eu, &session).await;
        sessions.push(session);
    }
    sessions
}

/// `n` distinct webhooks for `sessions`, round-robin: three events for each decision
/// (`review`), each of an attempt of its own, so that every one has a dedup key of its own.
pub fn stream_of(sessions: &[String], tag: &str, n: usize) -> Vec<Webhook> {
    (0..n)
        .map(|i| {
            let session = &sessions[i % sessions.len()];
            let attempt = format!("{tag}-a{i}");
            if i % 4 == 3 {
                let minute = u32::try_from(i % 800).expect("small");
                let body = decision(session, Some(&attempt), "review", &time(minute), None);
                Webhook::signed("decision", body)
            } else {
                Webhook::signed("event", event(session, Some(&attempt), "started"))
            }
        })
        .collect()
}

/// A counter or gauge without labels from the Prometheus text, 0 while absent.
pub fn metric(metrics: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Rows left in the spool.
pub async fn spool_rows(app: &TestApp) -> i64 {
    app.db()
        .client()
        .await
        .query_one("SELECT count(*) FROM spool", &[])
        .await
        .expect("spool count")
        .get(0)
}
