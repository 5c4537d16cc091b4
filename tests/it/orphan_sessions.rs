//! Orphan sessions (DESIGN.md section 6, "Matching" and "Current session"): a session Veriff
//! created but kyc never committed is adopted through `vendorData` when its webhooks arrive.
//! The user never saw its URL, so it never becomes current over the session they have: its
//! `expired` leaves the row alone and the registration API keeps handing out the real
//! session; its final approval or decline still counts, like any older session's.

use uuid::Uuid;

use crate::harness::TestApp;
use crate::harness::fake_veriff::FakeVeriff;
use crate::harness::registration::{SessionAnswer, problem};
use crate::harness::seed::{decision, event, row_of, time, with_vendor_data};

/// The app (HTTP and worker) with Veriff's EU API at a fake; bind as `let (eu, app)`.
async fn start(extra: &[&str]) -> (FakeVeriff, TestApp) {
    let eu = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&eu, None, extra).await;
    (eu, app)
}

/// A webhook of a session kyc does not know, naming verification `v` in `vendorData`.
async fn orphan_sends(app: &TestApp, v: Uuid, kind: &str, body: &[u8]) {
    app.send(kind, &with_vendor_data(body, &v.to_string()))
        .await;
}

async fn sources(app: &TestApp, session: &str) -> Vec<String> {
    app.db()
        .client()
        .await
        .query(
            "SELECT source FROM inputs WHERE session_id = $1 AND kind = 'session_created'",
            &[&session],
        )
        .await
        .expect("inputs")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_orphan_never_displaces_the_users_session_but_its_approval_verifies() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let real = app.session(&client.key, onboarding).await;
    let (v, _) = app.verification_of(onboarding).await.expect("verification");
    app.send(
        "decision",
        &decision(
            &real.session_id,
            Some("a1"),
            "resubmission_requested",
            &time(1),
            Some(201),
        ),
    )
    .await;
    let resubmit = row_of("REJECTED", "SAME_SESSION", Some(201));
    app.wait_for_row(v, &resubmit).await;

    // Veriff's webhooks for a session kyc never committed: adopted, recorded, and the row
    // is still the real session's, even after the orphan's final `expired`.
    let orphan = format!("orphan-{}", Uuid::new_v4().simple());
    orphan_sends(&app, v, "event", &event(&orphan, Some("o1"), "started")).await;
    orphan_sends(
        &app,
        v,
        "decision",
        &decision(&orphan, Some("o1"), "expired", &time(2), None),
    )
    .await;
    app.wait_inputs(v, 5).await;
    assert_eq!(sources(&app, &orphan).await, ["adopted"]);
    assert_eq!(app.session_status(&orphan).await, "expired");
    assert_eq!(
        app.row(v).await,
        resubmit,
        "the orphan's expiry resets nothing"
    );
    let current: Option<String> = app
        .db()
        .client()
        .await
        .query_one(
            "SELECT current_session_id FROM verifications WHERE id = $1",
            &[&v],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(current.as_deref(), Some(real.session_id.as_str()));

    // The user is handed their own session again, and Veriff is not called.
    let again = app.session(&client.key, onboarding).await;
    assert_eq!(
        again,
        SessionAnswer {
            reused: true,
            ..real.clone()
        }
    );
    assert_eq!(eu.session_requests().len(), 1, "Veriff was called once");

    // Another orphan's approval, decided after the real session's request: a Veriff approval
    // is never ignored.
    let approving = format!("orphan-{}", Uuid::new_v4().simple());
    orphan_sends(
        &app,
        v,
        "decision",
        &decision(&approving, Some("o2"), "approved", &time(3), None),
    )
    .await;
    app.wait_for_row(v, &row_of("VERIFIED", "NONE", None)).await;
    assert_eq!(sources(&app, &approving).await, ["adopted"]);
    let verified = app.register(&client.key, onboarding).await;
    assert_eq!(problem(verified, 409).await, "ALREADY_VERIFIED");
    assert_eq!(eu.session_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_orphans_decline_counts_toward_the_attempts_cap() {
    let (eu, app) = start(&["--max-verification-attempts", "2"]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let first = app.session(&client.key, onboarding).await;
    let (v, _) = app.verification_of(onboarding).await.expect("verification");
    app.send(
        "decision",
        &decision(
            &first.session_id,
            Some("a1"),
            "declined",
            &time(1),
            Some(102),
        ),
    )
    .await;
    app.wait_for_row(v, &row_of("REJECTED", "NEW_SESSION", Some(102)))
        .await;
    let second = app.session(&client.key, onboarding).await;
    assert!(!second.reused);
    app.wait_row(v, "UNVERIFIED", "NONE").await;

    // An orphan declined: the second declined session of two allowed.
    let orphan = format!("orphan-{}", Uuid::new_v4().simple());
    orphan_sends(
        &app,
        v,
        "decision",
        &decision(&orphan, Some("o1"), "declined", &time(2), Some(102)),
    )
    .await;
    app.wait_for_row(v, &row_of("REJECTED", "BLOCKED", Some(102)))
        .await;
    assert_eq!(sources(&app, &orphan).await, ["adopted"]);
    let blocked = app.register(&client.key, onboarding).await;
    assert_eq!(problem(blocked, 403).await, "VERIFICATION_BLOCKED");
    assert_eq!(eu.session_requests().len(), 2, "no third session");
}
