//! Moving a message on when the move fails (issue 10, items 2 and 3): a returned (unroutable)
//! or nacked forward to a retry tier or `kyc.dead` is never taken for a confirmed one, so the
//! original goes back to the queue within seconds instead of being acked and lost; poison in
//! `kyc.dead` does not block the recorder; a dead letter delivered twice is one row; and a
//! publish timeout gives up a channel, never the connection the consumers share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use kyc::queue::message::{
    HEADER_DEAD_LETTER_ID, HEADER_DEAD_REASON, HEADER_INTEGRATION, HEADER_KIND, HEADER_RECEIVED_AT,
    HEADER_SIGNATURE, put, rfc3339,
};
use kyc::veriff::integration::Integration;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use uuid::Uuid;

use crate::harness::ledger::{Ledger, Webhook};
use crate::harness::process::ServeProcess;
use crate::harness::proxy::Proxy;
use crate::harness::rabbit::channels_of_connection;
use crate::harness::seed::{decision, signed_with, time};
use crate::harness::{Spawn, TestApp, eventually};

/// How long a test waits for the worker and the recorder to get somewhere.
const WAIT: Duration = Duration::from_secs(40);

/// `kyc_worker_messages_total{outcome="requeued"}`, summed over reasons: moves that failed
/// and whose message went back to the main queue.
async fn requeued(app: &TestApp) -> u64 {
    app.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(r#"kyc_worker_messages_total{outcome="requeued""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A counter or gauge without labels, 0 while it does not exist.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let prefix = format!("{name} ");
    app.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `n` decisions that end in `kyc.dead` at once (a US session's decision signed with the EU
/// secret: REGION_MISMATCH) and `n` that go through the retry tiers first (a session nobody
/// created: UNKNOWN_SESSION). Both kinds need the database to be decided.
async fn region_mismatches_and_unknown_sessions(
    app: &TestApp,
    round: &str,
    n: usize,
) -> Vec<Webhook> {
    let mut webhooks = Vec::new();
    for i in 0..n {
        let session = format!("us-{round}-{i}");
        app.seed_verification(Integration::Us, &session).await;
        let mismatch = decision(&session, Some("a1"), "approved", &time(1), None);
        webhooks.push(Webhook::signed("decision", mismatch));
        let unknown = decision(
            &format!("nobody-{round}-{i}"),
            Some("a1"),
            "approved",
            &time(1),
            None,
        );
        webhooks.push(Webhook::signed("decision", unknown));
    }
    webhooks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_into_a_deleted_queue_go_back_to_the_queue_and_are_never_lost() {
    const N: usize = 25;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let broker = Proxy::start("127.0.0.1:5672").await;
    let app = TestApp::start(Spawn {
        worker: true,
        database_via: Some(&proxy),
        amqp_url: &broker.amqp_url(),
        ..Spawn::default()
    })
    .await;
    let connection = broker.upstream_ports();
    let topology = app.config.topology();
    let first_tier = topology.retry_tiers()[0].1.clone();
    // Each round: the worker takes a mix of messages bound for kyc.dead and for the first tier
    // and holds them (its database is away); one of the two queues is deleted; the database
    // comes back, and the worker moves them all at once, routable and unroutable side by side.
    for (round, deleted) in [("dead", topology.dead_queue()), ("tier", first_tier)] {
        let ledger = Ledger::new(
            &format!("moves into a deleted {round} queue"),
            &app.base_url,
            WAIT,
        );
        let webhooks = region_mismatches_and_unknown_sessions(&app, round, N).await;
        proxy.cut();
        join_all(webhooks.iter().map(|w| ledger.send(w))).await;
        eventually(WAIT, "the worker to hold every message", || async {
            let held = app.peek().main_count().await == 0
                && app.worker_count("db_unavailable", "").await > 0;
            held.then_some(())
        })
        .await;
        assert_eq!(
            app.peek().delete_queue(&deleted).await,
            0,
            "{deleted} was empty when deleted: nothing was lost with it"
        );
        let requeued_before = requeued(&app).await;
        proxy.restore();

        let report = ledger.settle(app.db(), WAIT).await;
        assert_eq!(report.keys, 2 * N);
        assert_eq!(
            report.dead_lettered,
            2 * N,
            "every one dead-lettered in the end"
        );
        assert!(
            requeued(&app).await > requeued_before,
            "the moves into the deleted {deleted} failed and went back to the queue"
        );
    }
    let letters = app.dead_letters().await;
    for reason in ["REGION_MISMATCH", "UNKNOWN_SESSION"] {
        let n = letters.iter().filter(|l| l.reason == reason).count();
        assert_eq!(n, 2 * N, "{reason}: one dead letter each");
    }
    // The recorder's consumer lost its queue twice (its channel closed): the connection that
    // everything else shares stayed.
    assert_eq!(
        broker.upstream_ports(),
        connection,
        "one connection throughout"
    );
}

/// Prefetch of the dead-letter recorder: how many letters it may hold unacked.
const RECORDER_PREFETCH: usize = 16;

/// The strict proof is the test above; this one deletes kyc.dead again and again under a
/// steady stream into it (RabbitMQ 3.10 then sometimes crashes the publishing channel and
/// closes the connection). What the deletions took cannot be told apart one by one, only
/// bounded; what is checked is that kyc carries on: every webhook answered 200, the recorder
/// consuming the queue declared again each time, no duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_dead_letter_queue_under_a_stream_never_stops_the_recorder() {
    const N: usize = 600;
    let app = TestApp::run().await;
    let dead = app.config.topology().dead_queue();
    // Decisions of a status kyc does not know: dead-lettered at once, a steady stream into kyc.dead.
    let webhooks: Vec<Webhook> = (0..N)
        .map(|i| {
            let body = decision(
                &format!("s-{i}"),
                Some("a1"),
                "rejected-by-mars",
                &time(1),
                None,
            );
            Webhook::signed("decision", body)
        })
        .collect();
    let ledger = Ledger::new("kyc.dead deleted under a stream", &app.base_url, WAIT);
    let peek = app.peek();
    let streaming = AtomicBool::new(true);
    let stream = async {
        ledger.stream(webhooks, 60).await;
        streaming.store(false, Ordering::SeqCst);
    };
    let delete_meanwhile = async {
        let (mut destroyed, mut deletions, mut moved) = (0, 0, 0);
        // Not during the last second of the stream: the moves after the last deletion
        // declare kyc.dead again (a deleted queue comes back with the next move into it).
        while streaming.load(Ordering::SeqCst) && ledger.answered_ok() < (N - 60) as u64 {
            // After a few more moves, while it holds nothing ready (the recorder keeps up).
            let now = app.worker_count("dead_lettered", "UNKNOWN_STATUS").await;
            if now >= moved + 30 && peek.try_count(&dead).await == Some(0) {
                destroyed += peek.delete_queue(&dead).await;
                deletions += 1;
                moved = now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (usize::try_from(destroyed).expect("count"), deletions)
    };
    let ((), (destroyed, deletions)) = tokio::join!(stream, delete_meanwhile);
    assert!(
        deletions >= 2,
        "kyc.dead deleted {deletions} times under the stream"
    );

    // A deletion takes what is ready in the queue (counted) and what the recorder holds
    // unacked or is being sent (at most its prefetch).
    let at_most_taken = destroyed + RECORDER_PREFETCH * deletions;
    eventually(
        WAIT,
        "the queues drained and the recorder consuming",
        || async {
            let drained = peek.main_count().await == 0
                && peek.try_count(&dead).await == Some(0)
                && peek.consumers(&dead).await == 1;
            drained.then_some(())
        },
    )
    .await;
    let report = ledger
        .wait_for(app.db(), WAIT, |r| r.missing <= at_most_taken)
        .await;
    ledger.print(&report);
    ledger.note(&format!(
        "kyc.dead deleted {deletions} times, with {destroyed} ready messages in it; {} webhooks \
         spooled meanwhile",
        metric(&app, "kyc_spooled_total").await
    ));
    assert_eq!(report.keys, N);
    assert_eq!(report.other, 0, "every webhook answered 200 at once");
    assert!(
        report.missing <= at_most_taken,
        "{} missing ({:?}): more than the {deletions} deletions could take",
        report.missing,
        report.missing_keys
    );
    assert_eq!(report.duplicated, 0);
}

/// Headers of a decision as the receiver publishes it (without its signature).
fn webhook_headers() -> FieldTable {
    let mut headers = FieldTable::default();
    put(&mut headers, HEADER_KIND, "decision");
    put(&mut headers, HEADER_INTEGRATION, "EU");
    put(&mut headers, HEADER_RECEIVED_AT, &rfc3339(Utc::now()));
    headers
}

/// Headers of a message as the worker leaves it in `kyc.dead`.
fn dead_letter_headers(id: Uuid, reason: &str) -> FieldTable {
    let mut headers = webhook_headers();
    put(&mut headers, HEADER_DEAD_REASON, reason);
    put(&mut headers, HEADER_DEAD_LETTER_ID, &id.to_string());
    headers
}

fn persistent(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_headers(headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_with_nul_characters_is_recorded_sanitised_and_the_recorder_moves_on() {
    let app = TestApp::run().await;
    let dead = app.config.topology().dead_queue();
    // JSON escapes the NUL as \u0000: PostgreSQL refuses it in text (22021) and jsonb (22P05).
    let poisoned = decision("nul\u{0}session", Some("a1"), "approved", &time(1), None);
    let mut headers = dead_letter_headers(Uuid::new_v4(), "UNKNOWN_STATUS");
    put(&mut headers, "x-note", "before\u{0}after");
    put(&mut headers, "x-nul\u{0}name", "value");
    app.peek()
        .publish_to_queue(&dead, persistent("nul\u{0}id", headers), &poisoned)
        .await;
    let clean = decision("clean-session", Some("a1"), "approved", &time(1), None);
    let headers = dead_letter_headers(Uuid::new_v4(), "UNKNOWN_STATUS");
    app.peek()
        .publish_to_queue(&dead, persistent("clean-id", headers), &clean)
        .await;

    let letters = eventually(WAIT, "both dead letters recorded", || async {
        let letters = app.dead_letters().await;
        (letters.len() == 2).then_some(letters)
    })
    .await;
    let recorded = letters
        .iter()
        .find(|l| l.message_id.as_deref() == Some("nul\u{FFFD}id"))
        .expect("the poisoned letter is recorded, its NUL replaced");
    // A session id holding NUL is no session id (the payload reader's rule), not a mangled one.
    assert_eq!(recorded.session_id, None);
    assert_eq!(recorded.header("x-note"), Some("before\u{FFFD}after"));
    assert_eq!(recorded.header("x-nul\u{FFFD}name"), Some("value"));
    assert_eq!(recorded.reason, "UNKNOWN_STATUS");
    assert_eq!(recorded.body(), poisoned, "the raw body is kept as it came");
    let next = letters
        .iter()
        .find(|l| l.message_id.as_deref() == Some("clean-id"))
        .expect("the recorder moved on to the next letter");
    assert_eq!(next.session_id.as_deref(), Some("clean-session"));
    assert_eq!(metric(&app, "kyc_dead_letters_damaged_total").await, 1.0);
    assert_eq!(app.peek().count(&dead).await, 0, "kyc.dead drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_delivered_twice_makes_one_row() {
    let app = TestApp::run().await;
    let dead = app.config.topology().dead_queue();
    let recorded = || async {
        app.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("kyc_dead_letters_recorded_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };

    // 1. The worker's move was confirmed but its ack was lost: the same letter, twice in kyc.dead.
    let body = decision("twice", Some("a1"), "rejected-by-mars", &time(1), None);
    let headers = dead_letter_headers(Uuid::new_v4(), "UNKNOWN_STATUS");
    for _ in 0..2 {
        app.peek()
            .publish_to_queue(&dead, persistent("twice-id", headers.clone()), &body)
            .await;
    }
    // 2. The broker's own dead letter (past the main queue's delivery limit, no id of ours),
    //    delivered twice.
    let mut headers = webhook_headers();
    let mut death = FieldTable::default();
    death.insert(
        "reason".into(),
        AMQPValue::LongString("delivery_limit".into()),
    );
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert("time".into(), AMQPValue::Timestamp(1_900_000_000));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    for _ in 0..2 {
        app.peek()
            .publish_to_queue(&dead, persistent("broker-twice-id", headers.clone()), &body)
            .await;
    }
    // 3. The original redelivered after a lost ack: the worker dead-letters it twice (a forged
    //    signature), each time with the same dead-letter id.
    let forged = decision("forged", Some("a1"), "approved", &time(1), None);
    let mut headers = webhook_headers();
    put(
        &mut headers,
        HEADER_SIGNATURE,
        &signed_with("not-the-secret", &forged),
    );
    for _ in 0..2 {
        app.peek()
            .publish_to_exchange(
                "veriff.decision",
                persistent("forged-id", headers.clone()),
                &forged,
            )
            .await;
    }

    eventually(WAIT, "six deliveries recorded", || async {
        (recorded().await == 6).then_some(())
    })
    .await;
    let letters = app.dead_letters().await;
    let ids: Vec<Option<&str>> = letters.iter().map(|l| l.message_id.as_deref()).collect();
    assert_eq!(letters.len(), 3, "one row per dead letter: {ids:?}");
    for id in ["twice-id", "broker-twice-id", "forged-id"] {
        assert_eq!(ids.iter().filter(|i| **i == Some(id)).count(), 1, "{id}");
    }
    let broker = letters
        .iter()
        .find(|l| l.message_id.as_deref() == Some("broker-twice-id"))
        .expect("the broker's dead letter");
    assert_eq!(broker.reason, "DELIVERY_LIMIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_move_goes_back_to_the_queue_within_seconds() {
    let app = TestApp::run().await;
    let dead = app.config.topology().dead_queue();
    // kyc.dead replaced by a queue that refuses every message (a nack to the publisher), as a
    // full queue or a broker in trouble would. kyc's own declaration of kyc.dead fails against
    // it (other arguments), so it stays until the test deletes it.
    let peek = app.peek();
    peek.delete_queue(&dead).await;
    let mut refusing = FieldTable::default();
    refusing.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    refusing.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    peek.declare_classic(&dead, refusing).await;

    let ledger = Ledger::new("nacked move", &app.base_url, WAIT);
    let body = decision("mars", Some("a1"), "rejected-by-mars", &time(1), None);
    assert!(ledger.send(&Webhook::signed("decision", body)).await);
    // Each refused move puts the message back on the queue about a second later, where the
    // worker takes it again: not held until the broker's consumer timeout (30 minutes).
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(15), "three refused moves", || async {
        (requeued(&app).await >= 3).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(app.dead_letters().await.is_empty());
    assert_eq!(app.worker_count("dead_lettered", "UNKNOWN_STATUS").await, 0);

    // The refusing queue gone, the next move finds no queue, kyc declares its own again, and
    // the one after is recorded.
    assert_eq!(peek.delete_queue(&dead).await, 0, "nothing ever entered it");
    let report = ledger.settle(app.db(), WAIT).await;
    assert_eq!(report.dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_timeouts_give_up_channels_never_the_connection() {
    const N: usize = 200;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    // A confirm cannot come back within 1 ms: every webhook times out and is spooled.
    let app = TestApp::start(Spawn {
        worker: true,
        amqp_url: &proxy.amqp_url(),
        args: &["--publish-timeout", "1ms"],
        ..Spawn::default()
    })
    .await;
    let v = app.seed_verification(Integration::Eu, "s1").await;
    let connections = proxy.upstream_ports();
    assert_eq!(connections.len(), 1, "one broker connection per process");

    let ledger = Ledger::new("publish timeouts", &app.base_url, WAIT);
    let webhooks: Vec<Webhook> = (0..N)
        .map(|i| {
            Webhook::signed(
                "event",
                crate::harness::seed::event("s1", Some(&format!("a{i}")), "started"),
            )
        })
        .collect();
    ledger.stream(webhooks, 100).await;
    let report = ledger.settle(app.db(), WAIT).await;
    assert_eq!(report.applied, N);
    assert_eq!(report.other, 0, "every answer 200");
    app.wait_inputs(v, 1 + i64::try_from(N).expect("N")).await;
    assert!(
        metric(&app, "kyc_spooled_total").await > 0.0,
        "publishes timed out and were spooled"
    );

    // The consumers' connection is the one from the start, and the timed-out publishes left
    // no channels behind on it (the pool holds at most 128, the worker's loops 2).
    assert_eq!(
        proxy.upstream_ports(),
        connections,
        "the connection was never replaced"
    );
    assert_eq!(app.peek().main_consumers().await, 1);
    let channels = channels_of_connection(connections[0])
        .await
        .expect("the connection is open");
    assert!(
        channels <= 130,
        "{channels} channels open on the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_webhooks_are_spooled_and_their_bodies_never_logged() {
    const N: usize = 5;
    let app = TestApp::run().await;
    let v = app.seed_verification(Integration::Eu, "returned").await;
    let serve = ServeProcess::start(&app.config).await;
    // kyc.webhooks deleted: the exchange routes a webhook nowhere and the broker returns it
    // (lapin logs a returned message at WARN, body and headers included, unless told not to).
    assert_eq!(
        app.peek()
            .delete_queue(&app.config.topology().main_queue())
            .await,
        0
    );
    let ledger = Ledger::new("returned webhooks", &serve.base_url, WAIT);
    for i in 0..N {
        let body = decision("returned", Some(&format!("a{i}")), "review", &time(1), None);
        assert!(ledger.send(&Webhook::signed("decision", body)).await);
    }
    // Spooled, the queue declared again, relayed and applied.
    let report = ledger.settle(app.db(), WAIT).await;
    assert_eq!((report.other, report.applied), (0, N));
    app.wait_inputs(v, 1 + i64::try_from(N).expect("N")).await;

    let log = std::fs::read_to_string(&serve.log).expect("the serve log");
    assert!(
        log.contains("webhook spooled"),
        "the returned webhooks went to the spool: {log}"
    );
    // lapin would print the body as a list of byte values: look for both forms.
    for personal in [
        "MCTESTFACE",
        "TESTY",
        "1990-01-31",
        "TEST0000001",
        "192.0.2.10",
    ] {
        let as_bytes: Vec<String> = personal.bytes().map(|b| b.to_string()).collect();
        assert!(
            !log.contains(personal) && !log.contains(&as_bytes.join(", ")),
            "{personal} in the log of kyc serve"
        );
    }
    assert!(
        !log.contains("returned us a message"),
        "lapin's log of a returned message (body and headers) reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kyc_dead_deleted_and_declared_again_behind_the_recorders_back_is_consumed_again() {
    let app = TestApp::run().await;
    let peek = app.peek();
    let dead = app.config.topology().dead_queue();
    eventually(WAIT, "the recorder consuming", || async {
        (peek.consumers(&dead).await == 1).then_some(())
    })
    .await;
    // Deleted and declared again by someone else (another replica, an operator): no move of
    // this process finds it missing, so only the broker's basic.cancel (which RabbitMQ does
    // not always send) or the worker's own check of its queues' consumers can tell it.
    peek.delete_queue(&dead).await;
    peek.declare_topology().await;
    let body = decision("behind", Some("a1"), "rejected-by-mars", &time(1), None);
    let headers = dead_letter_headers(Uuid::new_v4(), "UNKNOWN_STATUS");
    peek.publish_to_queue(&dead, persistent("behind-id", headers), &body)
        .await;
    let letter = app.wait_dead_letter().await;
    assert_eq!(letter.message_id.as_deref(), Some("behind-id"));
    assert_eq!(
        peek.consumers(&dead).await,
        1,
        "one recorder consuming again"
    );
}
