//! `kyc recompute`: after a change of policy, rows whose raw bodies are all past retention
//! are brought up to date from the recorded facts alone, with no broker, one NOTIFY per
//! changed row; `kyc replay` cannot do it and says so.

use chrono::{DateTime, Utc};
use kyc::veriff::integration::Integration;
use uuid::Uuid;

use super::{kyc, kyc_with};
use crate::harness::db::Listener;
use crate::harness::seed::{decision, row_of, time};
use crate::harness::{AMQP_URL, ARCHIVE_KEY, TestApp, test_config};

const EU: Integration = Integration::Eu;

/// A broker nobody listens on: a command that needed one would fail.
const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:9/%2f";

/// The whole row, `updated_at` included: what "changes nothing" means.
async fn full_row(app: &TestApp, id: Uuid) -> (String, String, Option<i32>, DateTime<Utc>) {
    let r = app
        .db()
        .client()
        .await
        .query_one(
            "SELECT state, retry, reason_code, updated_at FROM verifications WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the row");
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// Asserts that the next notifications are exactly `expected`, in order, and nothing else
/// (a marker sent after them comes next).
async fn assert_notified(listener: &mut Listener, expected: &[Uuid], step: &str) {
    let marker = format!("marker-{}", Uuid::new_v4().simple());
    listener.mark(&marker).await;
    for id in expected {
        assert_eq!(
            listener.next().await,
            id.to_string(),
            "{step}: NOTIFY of {id}"
        );
    }
    assert_eq!(
        listener.next().await,
        marker,
        "{step}: nothing else was announced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_policy_change_recompute_mends_rows_past_retention_that_replay_cannot() {
    let mut app = TestApp::run().await;
    // Two declined sessions (2 of 3 attempts), twice; one decline with reason 150 (not
    // blocking by default); one approval, which no policy changes.
    let capped = app.seed_verification(EU, "cap-s1").await;
    app.seed_session(capped, "cap-s2").await;
    let also_capped = app.seed_verification(EU, "also-s1").await;
    app.seed_session(also_capped, "also-s2").await;
    let coded = app.seed_verification(EU, "code-s1").await;
    let approved = app.seed_verification(EU, "ok-s1").await;
    for (session, minute) in [("cap-s1", 1), ("cap-s2", 2), ("also-s1", 1), ("also-s2", 2)] {
        app.send(
            "decision",
            &decision(session, Some("a1"), "declined", &time(minute), Some(102)),
        )
        .await;
    }
    app.send(
        "decision",
        &decision("code-s1", Some("a1"), "declined", &time(1), Some(150)),
    )
    .await;
    app.send(
        "decision",
        &decision("ok-s1", Some("a1"), "approved", &time(1), None),
    )
    .await;
    for (v, inputs) in [(capped, 4), (also_capped, 4), (coded, 2), (approved, 2)] {
        app.wait_inputs(v, inputs).await;
    }
    let declined = row_of("REJECTED", "NEW_SESSION", Some(102));
    assert_eq!(app.row(capped).await, declined);
    assert_eq!(app.row(also_capped).await, declined);
    assert_eq!(
        app.row(coded).await,
        row_of("REJECTED", "NEW_SESSION", Some(150))
    );
    assert_eq!(app.row(approved).await, row_of("VERIFIED", "NONE", None));

    // Nothing consumes from here on; every raw body is past retention.
    app.stop().await;
    app.db()
        .client()
        .await
        .execute("UPDATE inputs SET body_ciphertext = NULL", &[])
        .await
        .expect("clear every body");
    let policy = [
        "--archive-encryption-key",
        ARCHIVE_KEY,
        "--max-verification-attempts",
        "2",
        "--blocking-reason-codes",
        "150",
    ];
    let prefix = app.config.queue_prefix.clone();
    let replaying = test_config(&prefix, AMQP_URL, &app.db().url, &policy);
    // recompute needs no broker: this one has none.
    let recomputing = test_config(&prefix, NO_BROKER, &app.db().url, &policy);
    let ids = [capped, also_capped, coded, approved];
    let mut before = Vec::new();
    for id in ids {
        before.push(full_row(&app, id).await);
    }
    let unchanged = |step: &'static str| {
        let (app, before) = (&app, &before);
        async move {
            for (id, row) in ids.iter().zip(before) {
                assert_eq!(full_row(app, *id).await, *row, "{step}: {id} unchanged");
            }
        }
    };

    // replay has nothing to republish, and says why.
    let replay = kyc_with(&replaying, &["replay", "--since", "2000-01-01"])
        .await
        .ok();
    assert!(
        replay
            .stdout
            .contains("0 replayed, 6 past retention, 0 not signed webhooks"),
        "{replay:#?}"
    );
    assert_eq!(
        replay
            .lines()
            .iter()
            .filter(|l| l.contains(
                "body past retention, cannot be replayed (`kyc recompute` needs no body)"
            ))
            .count(),
        6,
        "{replay:#?}"
    );
    let one = kyc_with(&replaying, &["replay", "--session", "code-s1"])
        .await
        .ok();
    assert!(
        one.stdout.contains("0 replayed, 1 past retention"),
        "{one:#?}"
    );
    assert_eq!(app.peek().main_count().await, 0, "nothing was republished");
    unchanged("replay").await;

    let mut listener = app.db().listen("verification_state").await;
    let change = |id: Uuid, code: i32| {
        format!("{id}  REJECTED/NEW_SESSION ({code}) → REJECTED/BLOCKED ({code})")
    };

    // --dry-run: every change printed, none made, none announced.
    let dry = kyc_with(&recomputing, &["recompute", "--all", "--dry-run"])
        .await
        .ok();
    let mut expected = vec![
        change(capped, 102),
        change(also_capped, 102),
        change(coded, 150),
    ];
    expected.sort(); // --all walks the verifications in id order
    expected.push("4 recomputed, 3 would change".to_owned());
    assert_eq!(dry.lines(), expected, "{dry:#?}");
    unchanged("--dry-run").await;
    assert_notified(&mut listener, &[], "--dry-run").await;

    // One verification, by its id.
    let ran = kyc_with(
        &recomputing,
        &["recompute", "--verification", &capped.to_string()],
    )
    .await
    .ok();
    assert_eq!(
        ran.lines(),
        [change(capped, 102).as_str(), "1 recomputed, 1 changed"],
        "{ran:#?}"
    );
    let blocked = row_of("REJECTED", "BLOCKED", Some(102));
    assert_eq!(app.row(capped).await, blocked);
    assert_notified(&mut listener, &[capped], "--verification").await;
    assert_eq!(app.row(also_capped).await, declined, "only the one named");
    assert!(
        full_row(&app, capped).await.3 > before[0].3,
        "updated_at moved"
    );

    // One verification, by one of its sessions.
    let ran = kyc_with(&recomputing, &["recompute", "--session", "code-s1"])
        .await
        .ok();
    assert_eq!(
        ran.lines(),
        [change(coded, 150).as_str(), "1 recomputed, 1 changed"],
        "{ran:#?}"
    );
    assert_eq!(
        app.row(coded).await,
        row_of("REJECTED", "BLOCKED", Some(150))
    );
    assert_notified(&mut listener, &[coded], "--session").await;
    assert_eq!(app.row(also_capped).await, declined, "only the one named");

    // Every verification: what is left to change.
    let ran = kyc_with(&recomputing, &["recompute", "--all"]).await.ok();
    assert_eq!(
        ran.lines(),
        [change(also_capped, 102).as_str(), "4 recomputed, 1 changed"],
        "{ran:#?}"
    );
    assert_eq!(app.row(also_capped).await, blocked);
    assert_eq!(app.row(approved).await, row_of("VERIFIED", "NONE", None));
    assert_notified(&mut listener, &[also_capped], "--all").await;

    // Again: nothing changes, nothing is announced.
    let after: Vec<_> = {
        let mut rows = Vec::new();
        for id in ids {
            rows.push(full_row(&app, id).await);
        }
        rows
    };
    for args in [
        vec!["recompute", "--all"],
        vec!["recompute", "--verification", &capped.to_string()],
        vec!["recompute", "--session", "also-s2"],
    ] {
        let ran = kyc_with(&recomputing, &args).await.ok();
        let total = if args[1] == "--all" { 4 } else { 1 };
        assert_eq!(
            ran.lines(),
            [format!("{total} recomputed, 0 changed")],
            "{args:?}: {ran:#?}"
        );
    }
    for (id, row) in ids.iter().zip(&after) {
        assert_eq!(
            full_row(&app, *id).await,
            *row,
            "a second run changes nothing"
        );
    }
    assert_notified(&mut listener, &[], "second run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_verifications_and_sessions_fail_with_a_message() {
    let app = TestApp::run().await;
    app.seed_verification(EU, "s1").await;
    let nobody = Uuid::new_v4();
    let ran = kyc(&app, &["recompute", "--verification", &nobody.to_string()])
        .await
        .refused();
    assert!(
        ran.stderr.contains(&format!("no verification {nobody}")),
        "{ran:#?}"
    );
    assert!(ran.stdout.is_empty(), "{ran:#?}");
    let ran = kyc(&app, &["recompute", "--session", "no-such-session"])
        .await
        .refused();
    assert!(
        ran.stderr
            .contains("no verification has the session no-such-session"),
        "{ran:#?}"
    );
    let ran = kyc(&app, &["recompute"]).await.refused();
    assert!(ran.stderr.contains("--verification"), "{ran:#?}");
    let ran = kyc(&app, &["recompute", "--all", "--session", "s1"])
        .await
        .refused();
    assert!(ran.stderr.contains("cannot be used with"), "{ran:#?}");
}
