//! The worker under faults: the database or the broker going away, a worker process killed
//! with SIGKILL mid-burst, and a graceful stop with messages in flight. The guarantee under
//! test: every webhook answered 200 is recorded exactly once (or dead-lettered), whatever
//! happens to the worker.

use std::time::Duration;

use futures_util::future::join_all;
use kyc::veriff::integration::Integration;

use crate::harness::process::WorkerProcess;
use crate::harness::proxy::Proxy;
use crate::harness::seed::{decision, event, row_of, time};
use crate::harness::{Spawn, TestApp, eventually};

const EU: Integration = Integration::Eu;

/// Bodies for one session: `events` distinct events, then its approval (so VERIFIED).
fn session_burst(session: &str, events: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut bodies: Vec<(&'static str, Vec<u8>)> = (0..events)
        .map(|i| ("event", event(session, Some(&format!("a{i}")), "started")))
        .collect();
    bodies.push((
        "decision",
        decision(session, Some("final"), "approved", &time(1), None),
    ));
    bodies
}

/// A receiver with a database, for tests that run the worker elsewhere; `args` configure
/// the deployment (the workers started with its configuration take them too).
async fn receiver(args: &[&str]) -> TestApp {
    TestApp::start(Spawn {
        database: true,
        args,
        ..Spawn::default()
    })
    .await
}

/// Another worker process of `app`'s deployment (same database, queues and secrets).
async fn worker_of(app: &TestApp) -> TestApp {
    let worker_only = Spawn {
        http: false,
        worker: true,
        ..Spawn::default()
    };
    TestApp::start_with(worker_only, app.config.clone(), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_holds_messages_without_burning_retries() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let app = TestApp::start(Spawn {
        worker: true,
        database_via: Some(&proxy),
        // One batch of 2 at a time and a prefetch of 4, so the others stay ready in the queue.
        args: &["--worker-concurrency", "1", "--worker-batch", "2"],
        ..Spawn::default()
    })
    .await;
    let v = app.seed_verification(EU, "s1").await;
    app.send("event", &event("s1", Some("warm-up"), "started"))
        .await;
    app.wait_inputs(v, 2).await;

    proxy.cut();
    let bodies = session_burst("s1", 9);
    for (kind, body) in &bodies {
        app.send(kind, body).await;
    }
    // The worker keeps trying, and holds what it took...
    app.wait_worker_count("db_unavailable", "", 4).await;
    // ...while the rest waits in the queue: nothing acked, moved or dead-lettered.
    eventually(Duration::from_secs(20), "6 messages ready", || async {
        (app.peek().main_count().await == 6).then_some(())
    })
    .await;
    let metrics = app.metrics().await;
    assert!(
        !metrics.contains(r#"outcome="retried""#)
            && !metrics.contains(r#"outcome="dead_lettered""#),
        "an outage must not burn retry tiers: {metrics}"
    );
    for (queue, n) in app.peek().side_queue_counts().await {
        assert_eq!(n, 0, "{queue} is empty during the outage");
    }
    assert_eq!(app.input_count(v).await, 2);
    assert_eq!(app.row(v).await, row_of("UNVERIFIED", "NONE", None));

    proxy.restore();
    app.wait_row(v, "VERIFIED", "NONE").await;
    app.wait_inputs(v, 2 + 10).await;
    assert_eq!(app.worker_count("applied", "").await, 11);
    let metrics = app.metrics().await;
    assert!(!metrics.contains(r#"outcome="retried""#), "{metrics}");
    assert!(app.dead_letters().await.is_empty());
    assert_eq!(app.peek().main_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_the_broker_resumes_by_itself() {
    let app = receiver(&[]).await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut config = app.config.clone();
    config.amqp_url = proxy.amqp_url();
    let worker_only = Spawn {
        http: false,
        worker: true,
        ..Spawn::default()
    };
    let _worker = TestApp::start_with(worker_only, config, None).await;
    let v = app.seed_verification(EU, "s1").await;
    app.send("event", &event("s1", Some("a1"), "started")).await;
    app.wait_inputs(v, 2).await;

    proxy.cut();
    eventually(
        Duration::from_secs(20),
        "the broker to see the worker go",
        || async { (app.peek().main_consumers().await == 0).then_some(()) },
    )
    .await;
    app.send("event", &event("s1", Some("a1"), "submitted"))
        .await;
    eventually(Duration::from_secs(20), "the webhook queued", || async {
        (app.peek().main_count().await == 1).then_some(())
    })
    .await;
    assert_eq!(app.row(v).await, row_of("UNVERIFIED", "NONE", None));

    proxy.restore();
    // What arrived while it was away, then what arrives after.
    app.wait_row(v, "PENDING", "NONE").await;
    app.send(
        "decision",
        &decision("s1", Some("a1"), "approved", &time(1), None),
    )
    .await;
    app.wait_row(v, "VERIFIED", "NONE").await;
    assert_eq!(app.input_count(v).await, 4);
    assert_eq!(app.peek().main_consumers().await, 1, "one consumer again");
    assert!(app.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_burst_loses_nothing_and_applies_nothing_twice() {
    const SESSIONS: usize = 4;
    const PER_SESSION: usize = 100;
    const N: i64 = (SESSIONS * PER_SESSION) as i64;
    // Small batches, so that the worker is killed between many commits.
    let app = receiver(&["--worker-batch", "4"]).await;
    let mut verifications = Vec::new();
    let mut bodies = Vec::new();
    for s in 0..SESSIONS {
        let session = format!("s{s}");
        verifications.push(app.seed_verification(EU, &session).await);
        bodies.extend(session_burst(&session, PER_SESSION - 1));
    }
    let created = SESSIONS as i64;

    let mut worker = WorkerProcess::spawn(&app.config);
    let send_all = join_all(bodies.iter().map(|(kind, body)| app.send(kind, body)));
    let kill_mid_burst = async {
        eventually(
            Duration::from_secs(30),
            "the worker to record some inputs",
            || async { (app.total_inputs().await >= created + 20).then_some(()) },
        )
        .await;
        worker.kill();
    };
    tokio::join!(send_all, kill_mid_burst);
    let at_kill = app.total_inputs().await - created;
    assert!(
        at_kill > 0 && at_kill < N,
        "killed mid-burst: {at_kill} of {N} recorded"
    );

    let mut restarted = WorkerProcess::spawn(&app.config);
    eventually(
        Duration::from_secs(40),
        "every webhook recorded",
        || async { (app.total_inputs().await >= created + N).then_some(()) },
    )
    .await;
    restarted.assert_running();
    assert_eq!(
        app.total_inputs().await,
        created + N,
        "each webhook recorded exactly once"
    );
    for v in verifications {
        assert_eq!(app.row(v).await, row_of("VERIFIED", "NONE", None));
    }
    assert!(app.dead_letters().await.is_empty());
    eventually(Duration::from_secs(20), "the queue drained", || async {
        (app.peek().main_count().await == 0).then_some(())
    })
    .await;
}

/// Queues `N` webhooks of one verification, starts a worker of small batches (2 × 2 in
/// flight, prefetch 8) and stops it gracefully once part of them is applied. Returns the
/// receiver (with the database), the verification, and how many were applied by then.
async fn stop_a_worker_mid_burst() -> (TestApp, uuid::Uuid, i64) {
    let app = receiver(&["--worker-concurrency", "2", "--worker-batch", "2"]).await;
    let v = app.seed_verification(EU, "s1").await;
    let bodies = session_burst("s1", STOP_BURST as usize - 1);
    join_all(bodies.iter().map(|(kind, body)| app.send(kind, body))).await;
    // Answered 200 means confirmed by the broker or spooled (the relay then publishes it).
    eventually(
        Duration::from_secs(20),
        "every webhook in the queue",
        || async { (app.peek().main_count().await == STOP_BURST as u32).then_some(()) },
    )
    .await;

    let mut worker = worker_of(&app).await;
    eventually(Duration::from_secs(20), "some inputs applied", || async {
        // The session's creation and at least 20 webhooks.
        (app.input_count(v).await > 20).then_some(())
    })
    .await;
    worker.stop().await;
    let applied = app.input_count(v).await - 1;
    assert!(
        applied < STOP_BURST,
        "stopped mid-burst: {applied} of {STOP_BURST} applied"
    );
    (app, v, applied)
}

const STOP_BURST: i64 = 300;

/// Messages ready in the main queue once the stopped worker's unacked ones are back.
async fn ready_after_stop(app: &TestApp, applied: i64) -> i64 {
    eventually(
        Duration::from_secs(20),
        "unacked messages to return to the queue",
        || async {
            let ready = i64::from(app.peek().main_count().await);
            (ready + applied >= STOP_BURST).then_some(ready)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_mid_burst_loses_nothing_and_applies_nothing_twice() {
    let (app, v, applied) = stop_a_worker_mid_burst().await;
    // Nothing half-applied: what was not committed is back in the queue...
    let ready = ready_after_stop(&app, applied).await;
    assert!(ready > 0, "the stop left work for the next worker");

    // ...and the next worker applies exactly the rest.
    let _next = worker_of(&app).await;
    app.wait_inputs(v, 1 + STOP_BURST).await;
    assert_eq!(app.row(v).await, row_of("VERIFIED", "NONE", None));
    assert!(app.dead_letters().await.is_empty());
    eventually(Duration::from_secs(20), "the queue drained", || async {
        (app.peek().main_count().await == 0).then_some(())
    })
    .await;
    assert_eq!(app.input_count(v).await, 1 + STOP_BURST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_acks_every_message_it_applied() {
    let (app, _v, applied) = stop_a_worker_mid_burst().await;
    let ready = ready_after_stop(&app, applied).await;
    assert_eq!(
        ready + applied,
        STOP_BURST,
        "{applied} applied + {ready} queued: a committed message was left unacked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_its_queue_again_after_another_process_declared_it_anew() {
    // The queues deleted and declared again by another process (here the test; in a
    // deployment, serve's publisher after an unroutable publish). RabbitMQ does not always
    // cancel the old queue's consumers, and this worker's process is not the one that
    // declared: its consumers must find out from the queues themselves.
    let app = receiver(&[]).await;
    let _worker = worker_of(&app).await;
    let v = app.seed_verification(EU, "s1").await;
    app.send("event", &event("s1", Some("a1"), "started")).await;
    app.wait_inputs(v, 2).await;
    let topology = app.config.topology();
    let (main, dead) = (topology.main_queue(), topology.dead_queue());
    for queue in [&main, &dead] {
        app.peek().delete_queue(queue).await;
    }
    app.peek().declare_topology().await;
    for queue in [&main, &dead] {
        eventually(
            Duration::from_secs(20),
            "the worker consuming the new queue",
            || async { (app.peek().consumers(queue).await == 1).then_some(()) },
        )
        .await;
    }
    app.send(
        "decision",
        &decision("s1", Some("a1"), "approved", &time(1), None),
    )
    .await;
    app.wait_row(v, "VERIFIED", "NONE").await;
}
