//! Case 2: PostgreSQL restarted under the worker, and under ingest while the broker is down
//! too. Each process under test reaches PostgreSQL through a proxy of its own, and "restarted"
//! is what a restart does to that process: its connections end with SQLSTATE 57P01
//! (`pg_terminate_backend`, "terminating connection due to administrator command"), and new
//! connections are refused until the server is back. The real server keeps running, so no
//! other process loses its database.

use std::time::Duration;

use crate::harness::ledger::Ledger;
use crate::harness::proxy::Proxy;
use crate::harness::{AMQP_URL, Spawn, TestApp, TestDb, eventually};
use crate::{DEADLINE, SETTLE, metric, serial, sessions, spool_rows, stream_of};

const PER_SECOND: u32 = 50;
/// How long PostgreSQL is away.
const DOWN: Duration = Duration::from_secs(10);

/// The restart begins for the process behind `proxy`: its backends are terminated (57P01)
/// and new connections refused.
async fn restart_begins(db: &TestDb, proxy: &Proxy) {
    let ports: Vec<i32> = proxy.upstream_ports().into_iter().map(i32::from).collect();
    db.client()
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND client_port = ANY($1)",
            &[&ports],
        )
        .await
        .expect("terminate the backends");
    proxy.cut();
}

/// Another process of `app`'s deployment running only the worker, reaching PostgreSQL at
/// `database_url` and the broker at `amqp_url`.
async fn worker(app: &TestApp, database_url: String, amqp_url: &str) -> TestApp {
    let mut config = app.config.clone();
    config.database_url = database_url;
    config.amqp_url = amqp_url.to_owned();
    let worker_only = Spawn {
        http: false,
        worker: true,
        ..Spawn::default()
    };
    TestApp::start_with(worker_only, config, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_the_worker() {
    let _serial = serial().await;
    let receiver = TestApp::start(Spawn {
        database: true,
        ..Spawn::default()
    })
    .await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let _worker = worker(&receiver, receiver.db().url_via(proxy.port), AMQP_URL).await;
    let sessions = sessions(&receiver, "pgworker", 20).await;
    let count = usize::try_from(25 * PER_SECOND).expect("small");
    let webhooks = stream_of(&sessions, "pgworker", count);
    let ledger = Ledger::new(
        "2a. PostgreSQL restarted under the worker (10 s)",
        &receiver.base_url,
        DEADLINE,
    );
    let fault = async {
        eventually(Duration::from_secs(30), "the stream under way", || async {
            (ledger.answered_ok() >= u64::from(PER_SECOND) * 3).then_some(())
        })
        .await;
        restart_begins(receiver.db(), &proxy).await;
        tokio::time::sleep(DOWN).await; // the fault's length
        proxy.restore();
    };
    tokio::join!(ledger.stream(webhooks, PER_SECOND), fault);
    let report = ledger.settle(receiver.db(), SETTLE).await;
    assert_eq!(
        report.other, 0,
        "ingest does not need the worker's database"
    );
    assert_eq!(
        report.applied, count,
        "every webhook applied: none burned its retries while the database was away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_ingest_while_the_broker_is_down() {
    let _serial = serial().await;
    let database = Proxy::start("127.0.0.1:5432").await;
    let broker = Proxy::start("127.0.0.1:5672").await;
    let receiver = TestApp::start(Spawn {
        database: true,
        database_via: Some(&database),
        amqp_url: &broker.amqp_url(),
        ..Spawn::default()
    })
    .await;
    let _worker = worker(&receiver, receiver.db().url.clone(), AMQP_URL).await;
    let sessions = sessions(&receiver, "pgingest", 20).await;
    let count = usize::try_from(30 * PER_SECOND).expect("small");
    let webhooks = stream_of(&sessions, "pgingest", count);
    let ledger = Ledger::new(
        "2b. PostgreSQL restarted under ingest while the broker is down",
        &receiver.base_url,
        DEADLINE,
    );
    let second = u64::from(PER_SECOND);
    let fault = async {
        let at = |answered: u64| {
            let ledger = &ledger;
            async move {
                eventually(
                    Duration::from_secs(60),
                    "the stream to get there",
                    || async { (ledger.answered_ok() >= answered).then_some(()) },
                )
                .await;
            }
        };
        at(3 * second).await;
        broker.cut(); // the spool takes every webhook
        at(6 * second).await;
        let other_before = ledger.answered_other();
        restart_begins(receiver.db(), &database).await; // neither can take one: 503
        tokio::time::sleep(DOWN).await;
        let refused = ledger.answered_other() - other_before;
        database.restore(); // the spool again
        at(ledger.answered_ok() + 3 * second).await;
        broker.restore(); // the relay drains the spool
        refused
    };
    let ((), refused) = tokio::join!(ledger.stream(webhooks, PER_SECOND), fault);
    assert!(
        refused > 0,
        "answered 503 while neither could take a webhook"
    );

    eventually(SETTLE, "the spool drained", || async {
        (spool_rows(&receiver).await == 0).then_some(())
    })
    .await;
    let report = ledger.settle(receiver.db(), SETTLE).await;
    assert_eq!(report.applied, count, "every webhook applied in the end");
    let metrics = receiver.metrics().await;
    ledger.note(&format!(
        "{refused} answers 503 while both were away (each resent); {} webhooks spooled",
        metric(&metrics, "kyc_spooled_total")
    ));
}
