//! `kyc replay`: recorded inputs republished with their original signature, so the worker
//! recomputes the rows, e.g. after a change of configuration.

use kyc::veriff::integration::Integration;

use super::kyc;
use crate::harness::seed::{decision, event, row_of, time};
use crate::harness::{AMQP_URL, ARCHIVE_KEY, Spawn, TestApp, test_config};

const EU: Integration = Integration::Eu;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_twice_changes_nothing_and_after_a_configuration_change_recomputes_the_row() {
    let mut app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    // 150 is not a blocking reason code by default: a new session may be tried.
    app.send(
        "decision",
        &decision("s1", Some("a1"), "declined", &time(1), Some(150)),
    )
    .await;
    let declined = row_of("REJECTED", "NEW_SESSION", Some(150));
    app.wait_for_row(v, &declined).await;
    app.wait_inputs(v, 2).await;

    for run in 1..=2 {
        let ran = kyc(&app, &["replay", "--session", "s1"]).await.ok();
        assert!(
            ran.stdout
                .contains("1 replayed, 0 past retention, 0 not signed webhooks"),
            "run {run}: {ran:#?}"
        );
        app.wait_worker_count("duplicate", "", run).await;
        assert_eq!(app.row(v).await, declined, "run {run}: the same row");
        assert_eq!(
            app.input_count(v).await,
            2,
            "run {run}: nothing recorded twice"
        );
    }
    assert_eq!(app.worker_count("applied", "").await, 1);

    // The configuration changes: 150 blocks. Nothing consumes while the service is down, so
    // a dry run that published anything would show in the queue.
    app.stop().await;
    let dry = kyc(&app, &["replay", "--session", "s1", "--dry-run"])
        .await
        .ok();
    assert!(
        dry.stdout.contains("s1 decision: would be replayed")
            && dry
                .stdout
                .contains("1 would be replayed, 0 past retention, 0 not signed webhooks"),
        "{dry:#?}"
    );
    assert_eq!(
        app.peek().main_count().await,
        0,
        "a dry run publishes nothing"
    );

    let blocking = test_config(
        &app.config.queue_prefix,
        AMQP_URL,
        &app.db().url,
        &[
            "--archive-encryption-key",
            ARCHIVE_KEY,
            "--blocking-reason-codes",
            "150",
        ],
    );
    let restarted = TestApp::start_with(
        Spawn {
            worker: true,
            ..Spawn::default()
        },
        blocking,
        None,
    )
    .await;
    assert_eq!(
        app.row(v).await,
        declined,
        "a restart alone recomputes nothing"
    );
    kyc(&restarted, &["replay", "--session", "s1"]).await.ok();
    app.wait_for_row(v, &row_of("REJECTED", "BLOCKED", Some(150)))
        .await;
    assert_eq!(app.input_count(v).await, 2);
    assert_eq!(restarted.wait_worker_count("duplicate", "", 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_past_retention_are_reported_and_the_others_still_replayed() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    app.send("event", &event("s1", Some("a1"), "submitted"))
        .await;
    app.send(
        "decision",
        &decision("s1", Some("a1"), "approved", &time(1), None),
    )
    .await;
    app.wait_inputs(v, 3).await;
    app.wait_row(v, "VERIFIED", "NONE").await;

    let client = app.db().client().await;
    let expired: String = client
        .query_one(
            "UPDATE inputs SET body_ciphertext = NULL
             WHERE session_id = 's1' AND kind = 'decision' RETURNING dedup_key",
            &[],
        )
        .await
        .expect("expire the decision's body")
        .get(0);

    let ran = kyc(&app, &["replay", "--session", "s1"]).await.ok();
    assert!(
        ran.stdout.contains(&format!(
            "{expired}  s1 decision: body past retention, cannot be replayed"
        )),
        "{ran:#?}"
    );
    assert!(
        ran.stdout
            .contains("1 replayed, 1 past retention, 0 not signed webhooks"),
        "{ran:#?}"
    );
    // The event is replayed, and its delivery recomputes the row from every fact.
    app.wait_worker_count("duplicate", "", 1).await;
    assert_eq!(app.row(v).await, row_of("VERIFIED", "NONE", None));
    assert_eq!(app.input_count(v).await, 3);

    // --since selects by time of recording.
    let since = kyc(&app, &["replay", "--since", "2000-01-01", "--dry-run"])
        .await
        .ok();
    assert!(
        since
            .stdout
            .contains("1 would be replayed, 1 past retention"),
        "{since:#?}"
    );
    let future = kyc(&app, &["replay", "--since", "2999-01-01", "--dry-run"])
        .await
        .ok();
    assert!(
        future
            .stdout
            .contains("0 would be replayed, 0 past retention"),
        "{future:#?}"
    );
}
