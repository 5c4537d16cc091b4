//! The worker: signed webhook → receiver → queue → worker → `verifications` row.
//! One test per row of the table in DESIGN.md section 6, then NOTIFY, duplicates and order.

use futures_util::future::join_all;
use kyc::veriff::signature::Integration;

use crate::harness::TestApp;
use crate::harness::seed::{RowView, decision, event, row_of, time};

const EU: Integration = Integration::Eu;

fn unverified() -> RowView {
    row_of("UNVERIFIED", "NONE", None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_flow_reaches_verified() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "sess-1").await;
    assert_eq!(app.row(v).await.0, "UNVERIFIED");

    app.send("event", &event("sess-1", Some("a1"), "started"))
        .await;
    app.send("event", &event("sess-1", Some("a1"), "submitted"))
        .await;
    app.wait_row(v, "PENDING", "NONE").await;
    app.send(
        "decision",
        &decision(
            "sess-1",
            Some("a1"),
            "approved",
            "2030-01-01T10:00:00Z",
            None,
        ),
    )
    .await;
    app.wait_row(v, "VERIFIED", "NONE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_event_leaves_the_row_unchanged() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;

    app.send("event", &event("s1", Some("a1"), "started")).await;
    app.wait_inputs(v, 2).await;
    assert_eq!(app.row(v).await, unverified());
    assert_eq!(app.session_status("s1").await, "started");

    // Nor does it move a rejected row: the next attempt starting is not a submission.
    let resubmit = decision(
        "s1",
        Some("a1"),
        "resubmission_requested",
        &time(1),
        Some(201),
    );
    app.send("decision", &resubmit).await;
    app.wait_row(v, "REJECTED", "SAME_SESSION").await;
    app.send("event", &event("s1", Some("a2"), "started")).await;
    app.wait_inputs(v, 4).await;
    assert_eq!(
        app.row(v).await,
        row_of("REJECTED", "SAME_SESSION", Some(201))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_event_and_review_decision_are_pending() {
    let app = TestApp::run().await;
    let submitted = app.seed_verification(EU, "s-submitted").await;
    let review = app.seed_verification(EU, "s-review").await;

    app.send("event", &event("s-submitted", Some("a1"), "submitted"))
        .await;
    app.send(
        "decision",
        &decision("s-review", Some("a1"), "review", &time(1), None),
    )
    .await;

    let pending = row_of("PENDING", "NONE", None);
    assert_eq!(app.wait_row(submitted, "PENDING", "NONE").await, pending);
    assert_eq!(app.wait_row(review, "PENDING", "NONE").await, pending);
    assert_eq!(app.session_status("s-submitted").await, "submitted");
    assert_eq!(app.session_status("s-review").await, "review");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_decision_is_verified() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    app.send(
        "decision",
        &decision("s1", Some("a1"), "approved", &time(1), None),
    )
    .await;
    assert_eq!(
        app.wait_row(v, "VERIFIED", "NONE").await,
        row_of("VERIFIED", "NONE", None)
    );
    assert_eq!(app.session_status("s1").await, "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmission_requested_is_rejected_same_session() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    let body = decision(
        "s1",
        Some("a1"),
        "resubmission_requested",
        &time(1),
        Some(201),
    );
    app.send("decision", &body).await;
    assert_eq!(
        app.wait_row(v, "REJECTED", "SAME_SESSION").await,
        row_of("REJECTED", "SAME_SESSION", Some(201))
    );
    assert_eq!(app.session_status("s1").await, "resubmission_requested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_blocking_decline_is_rejected_new_session() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    app.send(
        "decision",
        &decision("s1", Some("a1"), "declined", &time(1), Some(102)),
    )
    .await;
    assert_eq!(
        app.wait_row(v, "REJECTED", "NEW_SESSION").await,
        row_of("REJECTED", "NEW_SESSION", Some(102))
    );
    assert_eq!(app.session_status("s1").await, "declined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_decline_reason_blocks_for_good() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    let other = app.seed_verification(EU, "s-other").await;
    app.send(
        "decision",
        &decision("s1", Some("a1"), "declined", &time(1), Some(105)),
    )
    .await;
    // Another code of the default list, sent as a string as Veriff sometimes does.
    let as_string = String::from_utf8(decision(
        "s-other",
        Some("a1"),
        "declined",
        &time(1),
        Some(526),
    ))
    .expect("utf-8")
    .replace(r#""reasonCode":526"#, r#""reasonCode":"526""#);
    assert!(as_string.contains(r#""reasonCode":"526""#));
    app.send("decision", as_string.as_bytes()).await;

    assert_eq!(
        app.wait_row(v, "REJECTED", "BLOCKED").await,
        row_of("REJECTED", "BLOCKED", Some(105))
    );
    assert_eq!(
        app.wait_row(other, "REJECTED", "BLOCKED").await,
        row_of("REJECTED", "BLOCKED", Some(526))
    );

    // A later session cannot lift the block, even when approved.
    app.seed_session(v, "s2").await;
    app.send(
        "decision",
        &decision("s2", Some("a1"), "approved", &time(2), None),
    )
    .await;
    app.wait_inputs(v, 4).await;
    assert_eq!(app.row(v).await, row_of("REJECTED", "BLOCKED", Some(105)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_declined_session_is_blocked() {
    let app = TestApp::run().await;
    assert_eq!(app.config.max_verification_attempts, 3, "the default");
    let v = app.seed_verification(EU, "s1").await;
    for (n, session) in ["s1", "s2", "s3"].into_iter().enumerate() {
        if n > 0 {
            app.seed_session(v, session).await;
            assert_eq!(app.row(v).await, unverified(), "a new session resets");
        }
        app.send(
            "decision",
            &decision(session, Some("a1"), "declined", &time(1), Some(102)),
        )
        .await;
        let retry = if n < 2 { "NEW_SESSION" } else { "BLOCKED" };
        assert_eq!(
            app.wait_row(v, "REJECTED", retry).await,
            row_of("REJECTED", retry, Some(102)),
            "after {} declined sessions",
            n + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_abandoned_are_unverified_new_session() {
    let app = TestApp::run().await;
    let expired = app.seed_verification(EU, "s-expired").await;
    let abandoned = app.seed_verification(EU, "s-abandoned").await;
    // From PENDING, so that the move is visible in the state as well.
    app.send("event", &event("s-expired", Some("a1"), "submitted"))
        .await;
    app.wait_row(expired, "PENDING", "NONE").await;

    app.send(
        "decision",
        &decision("s-expired", None, "expired", &time(1), None),
    )
    .await;
    app.send(
        "decision",
        &decision("s-abandoned", None, "abandoned", &time(1), None),
    )
    .await;
    let expected = row_of("UNVERIFIED", "NEW_SESSION", None);
    assert_eq!(
        app.wait_row(expired, "UNVERIFIED", "NEW_SESSION").await,
        expected
    );
    assert_eq!(
        app.wait_row(abandoned, "UNVERIFIED", "NEW_SESSION").await,
        expected
    );
    assert_eq!(app.session_status("s-expired").await, "expired");
    assert_eq!(app.session_status("s-abandoned").await, "abandoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_with_unknown_action_is_recorded_and_moves_nothing() {
    let app = TestApp::run().await;
    let fresh = app.seed_verification(EU, "s-fresh").await;
    let pending = app.seed_verification(EU, "s-pending").await;
    app.send("event", &event("s-pending", Some("a1"), "submitted"))
        .await;
    app.wait_row(pending, "PENDING", "NONE").await;
    let applied = app.worker_count("applied", "").await;

    app.send("event", &event("s-fresh", Some("a1"), "photo_taken"))
        .await;
    app.send("event", &event("s-pending", Some("a2"), "liveness_checked"))
        .await;
    app.wait_inputs(fresh, 2).await;
    app.wait_inputs(pending, 3).await;
    assert_eq!(app.row(fresh).await, unverified());
    assert_eq!(app.row(pending).await, row_of("PENDING", "NONE", None));
    assert_eq!(app.session_status("s-fresh").await, "created");
    // Recorded, counted, and nothing dead-lettered.
    assert_eq!(app.worker_count("applied", "").await, applied + 2);
    assert!(app.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_with_unknown_status_is_dead_lettered() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    app.send("event", &event("s1", Some("a1"), "submitted"))
        .await;
    app.wait_row(v, "PENDING", "NONE").await;

    let body = decision("s1", Some("a1"), "approved_with_conditions", &time(1), None);
    app.send("decision", &body).await;
    let letter = app.wait_dead_letter().await;
    assert_eq!(letter.reason, "UNKNOWN_STATUS");
    assert_eq!(letter.session_id.as_deref(), Some("s1"));
    assert_eq!(letter.kind.as_deref(), Some("decision"));
    assert_eq!(letter.attempts, 1, "dead-lettered at once, not retried");
    assert_eq!(letter.body(), body, "the original body, byte for byte");

    assert_eq!(app.row(v).await, row_of("PENDING", "NONE", None));
    assert_eq!(app.input_count(v).await, 2, "not recorded as an input");
    assert_eq!(app.worker_count("retried", "UNKNOWN_STATUS").await, 0);
    assert_eq!(app.worker_count("dead_lettered", "UNKNOWN_STATUS").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_announced_with_notify_and_no_change_is_not() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    let mut listener = app.db().listen("verification_state").await;
    let updated_at = || async {
        let client = app.db().client().await;
        let row = client
            .query_one("SELECT updated_at FROM verifications WHERE id = $1", &[&v])
            .await
            .expect("updated_at");
        row.get::<_, chrono::DateTime<chrono::Utc>>(0)
    };
    let before = updated_at().await;

    // No change: recorded, but neither written nor announced.
    app.send("event", &event("s1", Some("a1"), "started")).await;
    app.wait_inputs(v, 2).await;
    listener.mark("after-started").await;
    assert_eq!(listener.next().await, "after-started", "nothing announced");
    assert_eq!(updated_at().await, before);

    // A change of state.
    app.send("event", &event("s1", Some("a1"), "submitted"))
        .await;
    assert_eq!(listener.next().await, v.to_string());
    assert_eq!(app.row(v).await, row_of("PENDING", "NONE", None));
    assert!(updated_at().await > before);

    // A change of the reason alone (a later decline of the same session) is announced too.
    app.send(
        "decision",
        &decision("s1", Some("a1"), "declined", &time(1), Some(102)),
    )
    .await;
    assert_eq!(listener.next().await, v.to_string());
    assert_eq!(
        app.row(v).await,
        row_of("REJECTED", "NEW_SESSION", Some(102))
    );
    app.send(
        "decision",
        &decision("s1", Some("a1"), "declined", &time(2), Some(103)),
    )
    .await;
    assert_eq!(listener.next().await, v.to_string());
    assert_eq!(
        app.row(v).await,
        row_of("REJECTED", "NEW_SESSION", Some(103))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_webhook_five_times_is_recorded_once() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    let body = decision("s1", Some("a1"), "declined", &time(1), Some(102));

    join_all((0..5).map(|_| app.send("decision", &body))).await;
    app.wait_worker_count("duplicate", "", 4).await;
    assert_eq!(app.worker_count("applied", "").await, 1);
    assert_eq!(
        app.input_count(v).await,
        2,
        "session_created + one decision"
    );
    assert_eq!(
        app.row(v).await,
        row_of("REJECTED", "NEW_SESSION", Some(102))
    );

    // The same facts formatted differently are the same input.
    let reformatted = serde_json::to_vec_pretty(
        &serde_json::from_slice::<serde_json::Value>(&body).expect("json"),
    )
    .expect("pretty json");
    assert_ne!(reformatted, body);
    app.send("decision", &reformatted).await;
    app.wait_worker_count("duplicate", "", 5).await;
    assert_eq!(app.input_count(v).await, 2);
    assert_eq!(app.peek().main_count().await, 0, "all acked");
    assert!(app.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_before_its_own_events_is_not_overtaken_by_them() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    let rejected = row_of("REJECTED", "SAME_SESSION", Some(201));

    app.send(
        "decision",
        &decision(
            "s1",
            Some("a1"),
            "resubmission_requested",
            &time(5),
            Some(201),
        ),
    )
    .await;
    app.wait_for_row(v, &rejected).await;
    // The decided attempt's own events arrive late: they are older than its decision.
    app.send("event", &event("s1", Some("a1"), "started")).await;
    app.send("event", &event("s1", Some("a1"), "submitted"))
        .await;
    app.wait_inputs(v, 4).await;
    assert_eq!(app.row(v).await, rejected);

    // The next attempt submitting is newer than the resubmission request.
    app.send("event", &event("s1", Some("a2"), "submitted"))
        .await;
    app.wait_row(v, "PENDING", "NONE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_and_approved_in_either_order_are_verified() {
    let app = TestApp::run().await;
    let in_order = app.seed_verification(EU, "s-in-order").await;
    let reversed = app.seed_verification(EU, "s-reversed").await;
    let verified = row_of("VERIFIED", "NONE", None);

    app.send(
        "decision",
        &decision("s-in-order", Some("a1"), "review", &time(1), None),
    )
    .await;
    app.wait_row(in_order, "PENDING", "NONE").await;
    app.send(
        "decision",
        &decision("s-in-order", Some("a1"), "approved", &time(2), None),
    )
    .await;
    app.wait_for_row(in_order, &verified).await;

    app.send(
        "decision",
        &decision("s-reversed", Some("a1"), "approved", &time(2), None),
    )
    .await;
    app.wait_for_row(reversed, &verified).await;
    // A review arriving after the approval, even one with a later decisionTime.
    app.send(
        "decision",
        &decision("s-reversed", Some("a1"), "review", &time(1), None),
    )
    .await;
    app.send(
        "decision",
        &decision("s-reversed", Some("a2"), "review", &time(3), None),
    )
    .await;
    app.wait_inputs(reversed, 4).await;
    assert_eq!(app.row(reversed).await, verified);
    assert_eq!(app.session_status("s-reversed").await, "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_submitted_event_does_not_undo_an_approval() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    app.send(
        "decision",
        &decision("s1", Some("a1"), "approved", &time(1), None),
    )
    .await;
    app.wait_row(v, "VERIFIED", "NONE").await;

    app.send("event", &event("s1", Some("a1"), "submitted"))
        .await;
    app.send("event", &event("s1", Some("a2"), "submitted"))
        .await;
    app.wait_inputs(v, 4).await;
    assert_eq!(app.row(v).await, row_of("VERIFIED", "NONE", None));
    assert_eq!(app.session_status("s1").await, "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_of_an_older_session_do_not_move_the_row() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s-old").await;
    app.seed_session(v, "s-new").await;

    // s-old's submission and resubmission request: recorded against s-old only.
    app.send("event", &event("s-old", Some("a1"), "submitted"))
        .await;
    app.send(
        "decision",
        &decision(
            "s-old",
            Some("a1"),
            "resubmission_requested",
            &time(1),
            Some(201),
        ),
    )
    .await;
    app.wait_inputs(v, 4).await;
    assert_eq!(app.row(v).await, unverified());
    assert_eq!(app.session_status("s-old").await, "resubmission_requested");
    assert_eq!(app.session_status("s-new").await, "created");

    app.send("event", &event("s-new", Some("b1"), "submitted"))
        .await;
    app.wait_row(v, "PENDING", "NONE").await;
    // s-old's late decline neither rejects the row nor puts s-old's reason on it.
    app.send(
        "decision",
        &decision("s-old", Some("a2"), "declined", &time(2), Some(102)),
    )
    .await;
    app.wait_inputs(v, 6).await;
    assert_eq!(app.row(v).await, row_of("PENDING", "NONE", None));
    assert_eq!(app.session_status("s-old").await, "declined");
}
