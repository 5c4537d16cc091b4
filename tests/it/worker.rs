//! The worker: signed webhook → receiver → queue → worker → `verifications` row. The rules
//! themselves (every row of DESIGN.md section 6, orders, duplicates, older sessions) are the
//! state machine's unit and property tests; these prove the path: each kind of input reaches
//! the row and the session's status, changes are announced, duplicates are absorbed.

use futures_util::future::join_all;
use kyc::veriff::integration::Integration;

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

/// One verification per kind of input, each webhook sent as Veriff would: the row and the
/// session status the worker writes are the state machine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_input_reaches_the_row_and_the_session_status() {
    let app = TestApp::run().await;
    // A reason code sent as a string, as Veriff sometimes does.
    let declined_as_string = String::from_utf8(decision(
        "s-blocking",
        Some("a1"),
        "declined",
        &time(1),
        Some(526),
    ))
    .expect("utf-8")
    .replace(r#""reasonCode":526"#, r#""reasonCode":"526""#);
    assert!(declined_as_string.contains(r#""reasonCode":"526""#));
    let cases: Vec<(&str, &str, Vec<u8>, RowView, &str)> = vec![
        (
            "s-started",
            "event",
            event("s-started", Some("a1"), "started"),
            unverified(),
            "started",
        ),
        (
            "s-submitted",
            "event",
            event("s-submitted", Some("a1"), "submitted"),
            row_of("PENDING", "NONE", None),
            "submitted",
        ),
        (
            "s-review",
            "decision",
            decision("s-review", Some("a1"), "review", &time(1), None),
            row_of("PENDING", "NONE", None),
            "review",
        ),
        (
            "s-approved",
            "decision",
            decision("s-approved", Some("a1"), "approved", &time(1), None),
            row_of("VERIFIED", "NONE", None),
            "approved",
        ),
        (
            "s-resubmission",
            "decision",
            decision(
                "s-resubmission",
                Some("a1"),
                "resubmission_requested",
                &time(1),
                Some(201),
            ),
            row_of("REJECTED", "SAME_SESSION", Some(201)),
            "resubmission_requested",
        ),
        (
            "s-declined",
            "decision",
            decision("s-declined", Some("a1"), "declined", &time(1), Some(102)),
            row_of("REJECTED", "NEW_SESSION", Some(102)),
            "declined",
        ),
        (
            "s-blocking",
            "decision",
            declined_as_string.into_bytes(),
            row_of("REJECTED", "BLOCKED", Some(526)),
            "declined",
        ),
        (
            "s-expired",
            "decision",
            decision("s-expired", None, "expired", &time(1), None),
            row_of("UNVERIFIED", "NEW_SESSION", None),
            "expired",
        ),
        (
            "s-abandoned",
            "decision",
            decision("s-abandoned", None, "abandoned", &time(1), None),
            row_of("UNVERIFIED", "NEW_SESSION", None),
            "abandoned",
        ),
    ];
    let mut verifications = Vec::new();
    for (session, kind, body, _, _) in &cases {
        let v = app.seed_verification(EU, session).await;
        app.send(kind, body).await;
        verifications.push(v);
    }
    for ((session, _, _, expected, status), v) in cases.iter().zip(verifications) {
        app.wait_inputs(v, 2).await;
        assert_eq!(&app.row(v).await, expected, "{session}");
        assert_eq!(&app.session_status(session).await, status, "{session}");
    }
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
