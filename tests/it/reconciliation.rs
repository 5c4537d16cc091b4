//! Reconciliation (DESIGN.md section 6) through the real worker: a session past its
//! `expiresAt` with no final decision is asked about with Veriff's
//! `GET /v1/sessions/{id}/decision`, signed over the session id, and the answer is recorded as
//! an input. A worker reconciles on its first housekeeping tick, so each test starts a new
//! worker process on the deployment once the sessions are due.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use kyc::veriff::signature::sign;

use crate::harness::fake_veriff::FakeVeriff;
use crate::harness::registration::Client;
use crate::harness::seed::decision;
use crate::harness::{EU_API_KEY, EU_SECRET, Spawn, TestApp, US_API_KEY, US_SECRET, eventually};

const DECISION_TIME: &str = "2030-01-01T10:00:00.000Z";
/// How long a test waits for the worker to get somewhere.
const WAIT: Duration = Duration::from_secs(20);

/// The app (HTTP and worker) with Veriff's EU API at `eu` and the US API at `us`. Bind as
/// `let (eu, us, app)`, so that the app stops before the fakes.
async fn start() -> (FakeVeriff, FakeVeriff, TestApp) {
    let eu = FakeVeriff::start().await;
    let us = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&eu, Some(&us), &[]).await;
    (eu, us, app)
}

/// A worker process of `app`'s deployment (same configuration, database and queues): it
/// reconciles at once. Drop it before `app`.
async fn new_worker(app: &TestApp) -> TestApp {
    TestApp::start_with(
        Spawn {
            http: false,
            worker: true,
            ..Spawn::default()
        },
        app.config.clone(),
        None,
    )
    .await
}

/// A session created through the registration API for a new onboarding: (verification, session).
async fn session(app: &TestApp, client: &Client, us: bool) -> (Uuid, String) {
    let onboarding = app.seed_ready_onboarding(client).await;
    let response = match us {
        true => app.register_us(&client.key, onboarding).await,
        false => app.register(&client.key, onboarding).await,
    };
    let answer = crate::harness::registration::session_answer(response).await;
    let (verification, _) = app
        .verification_of(onboarding)
        .await
        .expect("the onboarding's verification");
    (verification, answer.session_id)
}

/// Moves a session's end `minutes` into the past (negative: into the future).
async fn expired_minutes_ago(app: &TestApp, session: &str, minutes: i32) {
    let moved = app
        .db()
        .client()
        .await
        .execute(
            "UPDATE sessions SET expires_at = now() - make_interval(mins => $2) WHERE id = $1",
            &[&session, &minutes],
        )
        .await
        .expect("move the session's end");
    assert_eq!(moved, 1, "the session exists");
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("a JSON body")
}

/// A recorded input: (kind, status, source, integration, signature, has a sealed body,
/// decision time).
type InputView = (
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    bool,
    Option<DateTime<Utc>>,
);

async fn inputs_of_session(app: &TestApp, session: &str) -> Vec<InputView> {
    app.db()
        .client()
        .await
        .query(
            "SELECT kind, status, source, integration, signature, body_ciphertext IS NOT NULL,
                    decision_time
             FROM inputs WHERE session_id = $1 ORDER BY id",
            &[&session],
        )
        .await
        .expect("the session's inputs")
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect()
}

/// The session's stored status and when kyc last asked Veriff about it.
async fn session_view(app: &TestApp, session: &str) -> (String, Option<DateTime<Utc>>) {
    let row = app
        .db()
        .client()
        .await
        .query_one(
            "SELECT status, reconciled_at FROM sessions WHERE id = $1",
            &[&session],
        )
        .await
        .expect("the session row");
    (row.get(0), row.get(1))
}

async fn updated_at(app: &TestApp, verification: Uuid) -> DateTime<Utc> {
    app.db()
        .client()
        .await
        .query_one(
            "SELECT updated_at FROM verifications WHERE id = $1",
            &[&verification],
        )
        .await
        .expect("the verification row")
        .get(0)
}

/// The fake's decision requests for one session, checking that each is signed over the
/// session id with `secret` and carries `api_key`.
fn asked_about(fake: &FakeVeriff, session: &str, api_key: &str, secret: &str) -> usize {
    let requests: Vec<_> = fake
        .decision_requests()
        .into_iter()
        .filter(|r| r.session_id == session)
        .collect();
    let signature = sign(&SecretString::from(secret), session.as_bytes());
    for request in &requests {
        assert_eq!(request.header("x-auth-client"), Some(api_key), "API key");
        assert_eq!(
            request.header("x-hmac-signature"),
            Some(signature.as_str()),
            "signed over the session id"
        );
    }
    requests.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_end_gets_veriffs_decision_recorded() {
    let (eu, _us, app) = start().await;
    let client = app.seed_client(false).await;
    let (v, s) = session(&app, &client, false).await;
    assert_eq!(
        asked_about(&eu, &s, EU_API_KEY, EU_SECRET),
        0,
        "a session before its end is not asked about"
    );
    let body = decision(&s, Some("attempt-1"), "approved", DECISION_TIME, None);
    eu.set_decision(200, json_of(&body));
    expired_minutes_ago(&app, &s, 1).await;

    let worker = new_worker(&app).await;
    app.wait_row(v, "VERIFIED", "NONE").await;
    let expected: Vec<InputView> = vec![
        (
            "session_created".into(),
            None,
            "api".into(),
            None,
            None,
            false,
            None,
        ),
        (
            "decision".into(),
            Some("approved".into()),
            "reconciliation".into(),
            Some("EU".into()),
            None,
            true,
            Some(DECISION_TIME.parse().expect("a time")),
        ),
    ];
    assert_eq!(
        inputs_of_session(&app, &s).await,
        expected,
        "the answer is recorded as an input of the session"
    );
    assert_eq!(
        asked_about(&eu, &s, EU_API_KEY, EU_SECRET),
        1,
        "asked once, signed over the session id"
    );
    let (status, reconciled_at) = session_view(&app, &s).await;
    assert_eq!(status, "approved");
    assert!(reconciled_at.is_some(), "the session is marked as asked");

    // The same decision arriving late as a webhook is a duplicate: nothing more is recorded.
    // (The new worker stops first, so that the app's worker, whose count is read, takes it.)
    drop(worker);
    app.send("decision", &body).await;
    app.wait_worker_count("duplicate", "", 1).await;
    assert_eq!(inputs_of_session(&app, &s).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_decision_yet_or_a_failing_veriff_records_nothing() {
    let (eu, _us, app) = start().await;
    let client = app.seed_client(false).await;
    let (undecided_v, undecided) = session(&app, &client, false).await;
    let (failing_v, failing) = session(&app, &client, false).await;
    let (decided_v, decided) = session(&app, &client, false).await;
    eu.set_decision_for(
        &undecided,
        200,
        json!({ "status": "success", "verification": null }),
    );
    eu.set_decision_for(
        &failing,
        500,
        json!({ "status": "fail", "message": "Internal server error" }),
    );
    eu.set_decision_for(
        &decided,
        200,
        json_of(&decision(
            &decided,
            Some("attempt-1"),
            "declined",
            DECISION_TIME,
            Some(102),
        )),
    );
    expired_minutes_ago(&app, &undecided, 3).await;
    expired_minutes_ago(&app, &failing, 2).await;
    expired_minutes_ago(&app, &decided, 1).await;
    let before = [
        (
            app.row(undecided_v).await,
            updated_at(&app, undecided_v).await,
        ),
        (app.row(failing_v).await, updated_at(&app, failing_v).await),
    ];

    let mut worker = new_worker(&app).await;
    eventually(
        WAIT,
        "Veriff to be asked about the three sessions",
        || async {
            let asked: Vec<String> = eu
                .decision_requests()
                .into_iter()
                .map(|r| r.session_id)
                .collect();
            [&undecided, &failing, &decided]
                .iter()
                .all(|s| asked.contains(s))
                .then_some(())
        },
    )
    .await;
    app.wait_row(decided_v, "REJECTED", "NEW_SESSION").await;
    // A graceful stop lets the reconciliation round finish: every answer has been handled.
    worker.stop().await;
    assert_eq!(
        inputs_of_session(&app, &decided).await.len(),
        2,
        "the decided session's answer is recorded"
    );

    for ((v, s), (row, updated)) in [(undecided_v, &undecided), (failing_v, &failing)]
        .into_iter()
        .zip(before)
    {
        assert_eq!(
            asked_about(&eu, s, EU_API_KEY, EU_SECRET),
            1,
            "asked once about {s}"
        );
        let inputs = inputs_of_session(&app, s).await;
        assert_eq!(inputs.len(), 1, "only session_created for {s}: {inputs:?}");
        assert_eq!(app.row(v).await, row, "the row of {s} is left as it was");
        assert_eq!(updated_at(&app, v).await, updated, "not even touched");
        let (status, reconciled_at) = session_view(&app, s).await;
        assert_eq!(status, "created", "{s} is still open");
        assert!(reconciled_at.is_some(), "{s} is not asked again at once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_unfinished_sessions_past_their_end_are_asked_about_in_their_region() {
    let (eu, us, app) = start().await;
    let client = app.seed_client(true).await;
    let (_, running) = session(&app, &client, false).await;
    let (final_v, finished) = session(&app, &client, false).await;
    let (us_v, us_session) = session(&app, &client, true).await;
    // A final decline by webhook; then its end passes.
    app.send(
        "decision",
        &decision(
            &finished,
            Some("attempt-1"),
            "declined",
            DECISION_TIME,
            Some(102),
        ),
    )
    .await;
    app.wait_row(final_v, "REJECTED", "NEW_SESSION").await;
    expired_minutes_ago(&app, &finished, 10).await;
    expired_minutes_ago(&app, &us_session, 1).await;
    us.set_decision(
        200,
        json_of(&decision(
            &us_session,
            Some("attempt-1"),
            "approved",
            DECISION_TIME,
            None,
        )),
    );
    // The EU fake would approve anything it is asked about.
    eu.set_decision(
        200,
        json_of(&decision(
            &finished,
            Some("attempt-2"),
            "approved",
            DECISION_TIME,
            None,
        )),
    );

    let mut worker = new_worker(&app).await;
    app.wait_row(us_v, "VERIFIED", "NONE").await;
    // A graceful stop lets the reconciliation round finish: every due session was asked.
    worker.stop().await;
    assert_eq!(
        asked_about(&us, &us_session, US_API_KEY, US_SECRET),
        1,
        "a US session is asked about at the US integration, signed with its secret"
    );
    let recorded = inputs_of_session(&app, &us_session).await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        (recorded[1].2.as_str(), recorded[1].3.as_deref()),
        ("reconciliation", Some("US"))
    );
    assert!(
        eu.decision_requests().is_empty(),
        "neither the running nor the finished session is asked about: {:?}",
        eu.decision_requests()
    );
    assert_eq!(session_view(&app, &running).await, ("created".into(), None));
    assert_eq!(session_view(&app, &finished).await.0, "declined");
    let row = app.row(final_v).await;
    assert_eq!(
        (row.0.as_str(), row.1.as_str()),
        ("REJECTED", "NEW_SESSION")
    );
}
