//! Signed bodies that are odd but readable reach the state machine; those that are not end
//! dead-lettered with their reason, and the worker carries on (issue 11, "Tolerance").

use std::time::Duration;

use kyc::veriff::integration::Integration;

use crate::harness::seed::{decision, row_of};
use crate::harness::{TestApp, eventually};

/// A decision body with one change to its `verification`.
fn changed(body: &[u8], change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    change(&mut json["verification"]);
    json.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_where_text_belongs_do_not_dead_letter_a_signed_decision() {
    let app = TestApp::run().await;
    let approved_v = app.seed_verification(Integration::Eu, "s-numeric").await;
    let declined_v = app
        .seed_verification(Integration::Eu, "s-reason-text")
        .await;

    // attemptId and decisionTime as numbers, vendorData an object, reason a boolean.
    let approval = changed(
        &decision("s-numeric", Some("x"), "approved", "x", None),
        |v| {
            v["attemptId"] = 7.into();
            v["decisionTime"] = 1_767_261_600.into();
            v["vendorData"] = serde_json::json!({ "nested": [1, 2] });
            v["reason"] = false.into();
        },
    );
    app.send("decision", &approval).await;
    app.wait_for_row(approved_v, &row_of("VERIFIED", "NONE", None))
        .await;
    // The same bytes again: the same dedup key (decisionTime as sent), recorded once.
    app.send("decision", &approval).await;
    let decline = changed(
        &decision(
            "s-reason-text",
            Some("a1"),
            "declined",
            "2030-01-01T10:00:00.000Z",
            Some(105),
        ),
        |v| v["reasonCode"] = "105".into(),
    );
    app.send("decision", &decline).await;
    app.wait_for_row(declined_v, &row_of("REJECTED", "BLOCKED", Some(105)))
        .await;
    // The second delivery of the approval was absorbed as a duplicate.
    app.wait_worker_count("duplicate", "", 1).await;
    assert_eq!(
        app.input_count(approved_v).await,
        2,
        "session_created and one approval"
    );
    assert!(
        app.dead_letters().await.is_empty(),
        "nothing dead-lettered: {:?}",
        app.dead_letters().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_signed_bodies_end_dead_lettered_with_their_reason() {
    let app = TestApp::run().await;
    let good = app.seed_verification(Integration::Eu, "s-after").await;
    let nested = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("UNPARSEABLE", nested),
        ("UNPARSEABLE", b"\xff\xfe not UTF-8".to_vec()),
        (
            "UNKNOWN_STATUS",
            decision(
                "s-after",
                Some("a9"),
                "frobnicated",
                "2030-01-01T10:00:00.000Z",
                None,
            ),
        ),
        (
            "UNKNOWN_STATUS",
            changed(
                &decision(
                    "s-after",
                    Some("a8"),
                    "approved",
                    "2030-01-01T10:00:00.000Z",
                    None,
                ),
                |v| v["status"] = 9001.into(),
            ),
        ),
        // PostgreSQL's text cannot hold NUL: no session id (not a database error later).
        (
            "UNPARSEABLE",
            decision(
                "s-\u{0}-nul",
                Some("a1"),
                "approved",
                "2030-01-01T10:00:00.000Z",
                None,
            ),
        ),
    ];
    for (_, body) in &bodies {
        app.send("decision", body).await;
    }
    let letters = eventually(Duration::from_secs(30), "every dead letter", || async {
        let letters = app.dead_letters().await;
        (letters.len() >= bodies.len()).then_some(letters)
    })
    .await;
    let mut reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    reasons.sort_unstable();
    let mut expected: Vec<&str> = bodies.iter().map(|(r, _)| *r).collect();
    expected.sort_unstable();
    assert_eq!(reasons, expected, "{letters:?}");
    for (_, body) in &bodies {
        assert!(
            letters.iter().any(|l| l.body() == *body),
            "every body is kept, sealed"
        );
    }
    // The worker is still applying.
    app.send(
        "decision",
        &decision(
            "s-after",
            Some("a1"),
            "approved",
            "2030-01-01T10:00:00.000Z",
            None,
        ),
    )
    .await;
    app.wait_for_row(good, &row_of("VERIFIED", "NONE", None))
        .await;
}
