//! The registration API (DESIGN.md section 4) against the real service, database and broker,
//! with Veriff's station API replaced by a fake: every row of the table of
//! `POST /v1/auth/register/verification`, session reuse and renewal, regions, concurrent
//! calls, the secrecy of session URLs, and the status endpoint's ETag and long poll.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::join_all;
use reqwest::header::{CONTENT_TYPE, IF_NONE_MATCH, RETRY_AFTER};
use secrecy::SecretString;
use uuid::Uuid;

use kyc::veriff::client::VeriffClient;
use kyc::veriff::integration::Integration;
use kyc::veriff::signature::sign;

use crate::harness::fake_veriff::{FakeVeriff, Mode};
use crate::harness::process::ServeChild;
use crate::harness::registration::{
    OnboardingSpec, SessionAnswer, VERIFF_TIMEOUT, polled, problem, session_answer,
};
use crate::harness::seed::{decision, event};
use crate::harness::{EU_API_KEY, EU_SECRET, TestApp, US_API_KEY, US_SECRET, eventually};

/// The app (HTTP and worker) with Veriff's EU API at a fake. Bind as `let (eu, app)`, so that
/// the app stops before the fake.
async fn start(extra: &[&str]) -> (FakeVeriff, TestApp) {
    let eu = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&eu, None, extra).await;
    (eu, app)
}

async fn verification(app: &TestApp, onboarding: Uuid) -> Uuid {
    app.verification_of(onboarding)
        .await
        .expect("the onboarding has a verification")
        .0
}

/// A decision webhook for a session, signed with the EU secret; waits for its 200.
async fn decide(app: &TestApp, session: &str, status: &str, reason_code: Option<i32>) {
    let body = decision(
        session,
        Some("attempt-1"),
        status,
        "2030-01-01T10:00:00.000Z",
        reason_code,
    );
    app.send("decision", &body).await;
}

fn assert_about(actual: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let off = (actual - expected).abs();
    assert!(
        off < TimeDelta::minutes(1),
        "{what}: {actual} is not about {expected}"
    );
}

// ---------------------------------------------------------------------------------------
// 200: new sessions and reuse
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_session_then_the_same_url_without_calling_veriff_again() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;

    let first = app.session(&client.key, onboarding).await;
    let created = eu.created();
    assert_eq!(created.len(), 1, "one session created at Veriff");
    assert_eq!(first.session_id, created[0].id, "sessionId is Veriff's id");
    assert_eq!(first.url, created[0].url, "the URL is Veriff's");
    assert!(!first.reused, "a new session is not reused");
    assert_about(
        first.expires_at,
        Utc::now() + TimeDelta::days(7),
        "expiresAt is the end of Veriff's 7-day session lifetime",
    );

    // Again (an Authorization header is ignored): the same session, and Veriff is not called.
    let again = session_answer(
        app.register_request()
            .header("x-client-key", &client.key)
            .header("authorization", "Bearer not-a-token")
            .json(&serde_json::json!({ "onboardingId": onboarding }))
            .send()
            .await
            .expect("the registration API answers"),
    )
    .await;
    assert_eq!(
        again,
        SessionAnswer {
            reused: true,
            ..first.clone()
        }
    );
    assert_eq!(eu.session_requests().len(), 1, "Veriff was called once");

    let (v, region) = app
        .verification_of(onboarding)
        .await
        .expect("a verification for the onboarding");
    assert_eq!(region, "EU");
    assert_eq!(app.session_ids(v).await, [first.session_id]);
    assert_eq!(app.input_count(v).await, 1, "the session_created input");
    let row = app.row(v).await;
    assert_eq!((row.0.as_str(), row.1.as_str()), ("UNVERIFIED", "NONE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veriff_answering_200_instead_of_201_is_success() {
    let (eu, app) = start(&[]).await;
    eu.set_mode(Mode::Ok);
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;

    let answer = app.session(&client.key, onboarding).await;
    assert!(!answer.reused);
    assert_eq!(answer.session_id, eu.created()[0].id);
    assert_eq!(answer.url, eu.created()[0].url);
    let v = verification(&app, onboarding).await;
    assert_eq!(app.session_ids(v).await, [answer.session_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_create_request_carries_vendor_data_callback_end_user_id_and_the_api_key() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let user = Uuid::new_v4();
    let with_uuid = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                user_id: Some(user.to_string()),
                ..OnboardingSpec::default()
            },
        )
        .await;
    let with_other_id = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                user_id: Some("user-42@example.com".into()),
                ..OnboardingSpec::default()
            },
        )
        .await;
    let without_user = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                user_id: None,
                ..OnboardingSpec::default()
            },
        )
        .await;
    let callback = app
        .config
        .veriff_callback_url
        .clone()
        .expect("a callback URL is configured");

    for (onboarding, end_user) in [
        (with_uuid, Some(user.to_string())),
        (with_other_id, None),
        (without_user, None),
    ] {
        let before = eu.session_requests().len();
        app.session(&client.key, onboarding).await;
        let requests = eu.session_requests();
        assert_eq!(requests.len(), before + 1, "one call to Veriff");
        let request = &requests[before];
        assert_eq!(request.header("x-auth-client"), Some(EU_API_KEY));
        assert!(
            request
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "a JSON body"
        );
        let sent = request.verification();
        let v = verification(&app, onboarding).await;
        let mut expected = serde_json::json!({
            "callback": callback,
            "vendorData": v.to_string(),
        });
        if let Some(end_user) = &end_user {
            expected["endUserId"] = end_user.as_str().into();
        }
        assert_eq!(
            serde_json::Value::Object(sent.clone()),
            expected,
            "vendorData is the verification's id, endUserId only for a UUID user id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reuse_in_the_last_hour_before_the_session_expires() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let first = app.session(&client.key, onboarding).await;
    let db = app.db().client().await;
    let expire_in = |minutes: i32| {
        let db = &db;
        let session = first.session_id.clone();
        async move {
            db.query_one(
                "UPDATE sessions SET expires_at = now() + make_interval(mins => $2)
                 WHERE id = $1 RETURNING expires_at",
                &[&session, &minutes],
            )
            .await
            .expect("move the session's expiry")
            .get::<_, DateTime<Utc>>(0)
        }
    };

    // 90 minutes left: still handed out, with the stored expiry.
    let expires_at = expire_in(90).await;
    let reused = app.session(&client.key, onboarding).await;
    assert!(
        reused.reused,
        "90 minutes before expiry the session is reused"
    );
    assert_eq!(reused.session_id, first.session_id);
    assert_eq!(reused.url, first.url);
    assert_eq!(reused.expires_at, expires_at, "expiresAt is the session's");
    assert_eq!(eu.session_requests().len(), 1);

    // 30 minutes left: a new session.
    expire_in(30).await;
    let renewed = app.session(&client.key, onboarding).await;
    assert!(!renewed.reused, "30 minutes before expiry: a new session");
    assert_eq!(eu.session_requests().len(), 2, "Veriff was called again");
    assert_eq!(renewed.session_id, eu.created()[1].id);
    assert_ne!(renewed.url, first.url);
    let v = verification(&app, onboarding).await;
    assert_eq!(app.session_ids(v).await.len(), 2);
    // And that one is current now.
    let again = app.session(&client.key, onboarding).await;
    assert!(again.reused);
    assert_eq!(again.session_id, renewed.session_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_after_a_decline() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let first = app.session(&client.key, onboarding).await;
    let v = verification(&app, onboarding).await;

    decide(&app, &first.session_id, "declined", Some(102)).await;
    app.wait_row(v, "REJECTED", "NEW_SESSION").await;

    let second = app.session(&client.key, onboarding).await;
    assert!(!second.reused, "a declined session is not handed out again");
    assert_eq!(eu.session_requests().len(), 2, "a second Veriff session");
    assert_eq!(second.session_id, eu.created()[1].id);
    assert_ne!(second.url, first.url);
    // The new session is current: the row starts over, and it is the one reused next.
    app.wait_row(v, "UNVERIFIED", "NONE").await;
    let third = app.session(&client.key, onboarding).await;
    assert!(third.reused);
    assert_eq!(third.session_id, second.session_id);
    assert_eq!(eu.session_requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_after_expiry_or_abandonment() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    for status in ["expired", "abandoned"] {
        let onboarding = app.seed_ready_onboarding(&client).await;
        let first = app.session(&client.key, onboarding).await;
        let v = verification(&app, onboarding).await;
        let calls = eu.session_requests().len();

        decide(&app, &first.session_id, status, None).await;
        app.wait_row(v, "UNVERIFIED", "NEW_SESSION").await;

        let second = app.session(&client.key, onboarding).await;
        assert!(
            !second.reused,
            "an {status} session is not handed out again"
        );
        assert_eq!(eu.session_requests().len(), calls + 1, "after {status}");
        assert_ne!(second.session_id, first.session_id);
        assert_eq!(app.session_ids(v).await.len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmission_requested_hands_out_the_same_url() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let first = app.session(&client.key, onboarding).await;
    let v = verification(&app, onboarding).await;

    decide(&app, &first.session_id, "resubmission_requested", Some(201)).await;
    app.wait_row(v, "REJECTED", "SAME_SESSION").await;

    let again = app.session(&client.key, onboarding).await;
    assert_eq!(
        again,
        SessionAnswer {
            reused: true,
            ..first
        }
    );
    assert_eq!(eu.session_requests().len(), 1);
}

// ---------------------------------------------------------------------------------------
// US routing and concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn us_sessions_go_to_the_us_integration_and_the_region_sticks() {
    let eu = FakeVeriff::start().await;
    let us = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&eu, Some(&us), &[]).await;
    let client = app.seed_client(true).await;

    // First session with x-us-env: true → the US integration, with its API key.
    let onboarding = app.seed_ready_onboarding(&client).await;
    let first = session_answer(app.register_us(&client.key, onboarding).await).await;
    let requests = us.session_requests();
    assert_eq!(requests.len(), 1, "the US fake was called");
    assert_eq!(requests[0].header("x-auth-client"), Some(US_API_KEY));
    assert!(eu.session_requests().is_empty(), "the EU fake was not");
    assert_eq!(first.session_id, us.created()[0].id);
    let (v, region) = app
        .verification_of(onboarding)
        .await
        .expect("a verification");
    assert_eq!(region, "US");

    // Declined (signed by the US integration), then a call without the header: still US.
    let declined = decision(
        &first.session_id,
        Some("a1"),
        "declined",
        "2030-01-01T10:00:00.000Z",
        Some(102),
    );
    let signature = sign(&SecretString::from(US_SECRET), &declined);
    let accepted = app
        .post_webhook("decision", &declined, &[("x-hmac-signature", &signature)])
        .await;
    assert_eq!(accepted.status(), 200);
    app.wait_row(v, "REJECTED", "NEW_SESSION").await;
    let second = app.session(&client.key, onboarding).await;
    assert!(!second.reused);
    assert_eq!(
        us.session_requests().len(),
        2,
        "the second session is US too"
    );
    assert_eq!(
        us.session_requests()[1].header("x-auth-client"),
        Some(US_API_KEY)
    );
    assert!(eu.session_requests().is_empty());
    assert_eq!(second.session_id, us.created()[1].id);
    assert_eq!(
        app.verification_of(onboarding).await.map(|(_, r)| r),
        Some("US".to_owned())
    );

    // The other way round: an EU verification stays EU even when x-us-env: true comes later.
    let eu_onboarding = app.seed_ready_onboarding(&client).await;
    let eu_first = app.session(&client.key, eu_onboarding).await;
    assert_eq!(eu.session_requests().len(), 1);
    let eu_v = verification(&app, eu_onboarding).await;
    decide(&app, &eu_first.session_id, "declined", Some(102)).await;
    app.wait_row(eu_v, "REJECTED", "NEW_SESSION").await;
    let eu_second = session_answer(app.register_us(&client.key, eu_onboarding).await).await;
    assert!(!eu_second.reused);
    assert_eq!(eu.session_requests().len(), 2, "the region is fixed: EU");
    assert_eq!(
        eu.session_requests()[1].header("x-auth-client"),
        Some(EU_API_KEY)
    );
    assert_eq!(us.session_requests().len(), 2, "the US fake was not called");
    assert_eq!(
        app.verification_of(eu_onboarding).await.map(|(_, r)| r),
        Some("EU".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_create_one_session() {
    let (eu, app) = start(&[]).await;
    // Veriff takes its time, so that the calls overlap while the first one waits for it.
    eu.set_delay(Duration::from_millis(500));
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;

    // The first calls for an onboarding (its verification does not exist yet).
    let first = concurrent_sessions(&app, &client.key, onboarding).await;
    assert_eq!(eu.session_requests().len(), 1, "one Veriff session");
    let created = &eu.created()[0];
    assert_eq!(first.session_id, created.id);
    let v = verification(&app, onboarding).await;
    assert_eq!(app.session_ids(v).await, [created.id.as_str()]);

    // Calls for an existing verification whose session was declined.
    decide(&app, &first.session_id, "declined", Some(102)).await;
    app.wait_row(v, "REJECTED", "NEW_SESSION").await;
    let second = concurrent_sessions(&app, &client.key, onboarding).await;
    assert_eq!(eu.session_requests().len(), 2, "one more Veriff session");
    assert_eq!(second.session_id, eu.created()[1].id);
    assert_eq!(app.session_ids(v).await.len(), 2);
}

/// Four concurrent session requests; checks that they all carry one session, that exactly
/// one of them created it, and returns it.
async fn concurrent_sessions(app: &TestApp, key: &str, onboarding: Uuid) -> SessionAnswer {
    let responses = join_all((0..4).map(|_| app.register(key, onboarding))).await;
    let mut answers = Vec::new();
    for response in responses {
        answers.push(session_answer(response).await);
    }
    let created = answers
        .iter()
        .find(|a| !a.reused)
        .expect("one call created the session")
        .clone();
    assert!(
        answers
            .iter()
            .all(|a| a.session_id == created.session_id && a.url == created.url),
        "every answer carries the one session: {answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| !a.reused).count(),
        1,
        "one created it, the others reused it: {answers:?}"
    );
    created
}

// ---------------------------------------------------------------------------------------
// Errors, in the table's order
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_invalid_request() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let with_key = || app.register_request().header("x-client-key", &client.key);

    let no_body = with_key().send().await.expect("answer");
    assert_eq!(problem(no_body, 400).await, "INVALID_REQUEST", "no body");
    let not_json = with_key()
        .header(CONTENT_TYPE, "application/json")
        .body("onboardingId=1")
        .send()
        .await
        .expect("answer");
    assert_eq!(problem(not_json, 400).await, "INVALID_REQUEST", "not JSON");
    for body in [
        serde_json::json!({}),
        serde_json::json!({ "onboarding": onboarding }),
        serde_json::json!({ "onboardingId": null }),
        serde_json::json!({ "onboardingId": "not-a-uuid" }),
        serde_json::json!({ "onboardingId": 42 }),
        serde_json::json!([onboarding]),
    ] {
        let response = with_key().json(&body).send().await.expect("answer");
        assert_eq!(problem(response, 400).await, "INVALID_REQUEST", "{body}");
    }
    // The client key is checked first.
    let keyless = app.register_request().send().await.expect("answer");
    assert_eq!(problem(keyless, 498).await, "INVALID_CLIENT_KEY");

    assert!(eu.session_requests().is_empty());
    assert!(app.verification_of(onboarding).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_onboarding_is_400_onboarding_expired() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let expired = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                expires_in: -TimeDelta::minutes(1),
                ..OnboardingSpec::default()
            },
        )
        .await;
    let response = app.register(&client.key, expired).await;
    assert_eq!(problem(response, 400).await, "ONBOARDING_EXPIRED");

    // Expiry is checked before the phone.
    let expired_unverified = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                expires_in: -TimeDelta::minutes(1),
                phone_verified: false,
                ..OnboardingSpec::default()
            },
        )
        .await;
    let response = app.register(&client.key, expired_unverified).await;
    assert_eq!(problem(response, 400).await, "ONBOARDING_EXPIRED");
    assert!(eu.session_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_phone_is_400_phone_not_verified() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                phone_verified: false,
                ..OnboardingSpec::default()
            },
        )
        .await;
    let response = app.register(&client.key, onboarding).await;
    assert_eq!(problem(response, 400).await, "PHONE_NOT_VERIFIED");
    assert!(eu.session_requests().is_empty());
    assert!(app.verification_of(onboarding).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn us_env_for_a_client_without_it_is_400_us_env_not_available() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let response = app.register_us(&client.key, onboarding).await;
    assert_eq!(problem(response, 400).await, "US_ENV_NOT_AVAILABLE");
    assert!(eu.session_requests().is_empty());
    assert!(app.verification_of(onboarding).await.is_none());

    // Only `true` asks for the US environment.
    let answer = session_answer(
        app.register_request()
            .header("x-client-key", &client.key)
            .header("x-us-env", "false")
            .json(&serde_json::json!({ "onboardingId": onboarding }))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert!(!answer.reused);
    assert_eq!(
        app.verification_of(onboarding).await.map(|(_, r)| r),
        Some("EU".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_verification_is_403_verification_blocked() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;

    // A blocking reason code blocks at once.
    let onboarding = app.seed_ready_onboarding(&client).await;
    let session = app.session(&client.key, onboarding).await;
    let v = verification(&app, onboarding).await;
    decide(&app, &session.session_id, "declined", Some(105)).await;
    app.wait_row(v, "REJECTED", "BLOCKED").await;
    let response = app.register(&client.key, onboarding).await;
    assert_eq!(problem(response, 403).await, "VERIFICATION_BLOCKED");
    assert_eq!(eu.session_requests().len(), 1, "no new session");

    // So does the third declined session (KYC_MAX_VERIFICATION_ATTEMPTS = 3).
    let onboarding = app.seed_ready_onboarding(&client).await;
    for attempt in 1..=3 {
        let session = app.session(&client.key, onboarding).await;
        assert!(!session.reused, "attempt {attempt} gets a new session");
        let v = verification(&app, onboarding).await;
        decide(&app, &session.session_id, "declined", Some(102)).await;
        let retry = if attempt < 3 {
            "NEW_SESSION"
        } else {
            "BLOCKED"
        };
        app.wait_row(v, "REJECTED", retry).await;
    }
    let calls = eu.session_requests().len();
    let response = app.register(&client.key, onboarding).await;
    assert_eq!(problem(response, 403).await, "VERIFICATION_BLOCKED");
    assert_eq!(eu.session_requests().len(), calls, "no new session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_foreign_and_completed_onboardings_are_404() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let other = app.seed_client(false).await;

    let unknown = Uuid::new_v4();
    let foreign = app.seed_ready_onboarding(&other).await;
    let completed = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                completed: true,
                ..OnboardingSpec::default()
            },
        )
        .await;
    // Completion is checked before expiry and the phone.
    let completed_expired = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                completed: true,
                expires_in: -TimeDelta::minutes(1),
                phone_verified: false,
                ..OnboardingSpec::default()
            },
        )
        .await;
    for (what, onboarding) in [
        ("unknown", unknown),
        ("another client's", foreign),
        ("completed", completed),
        ("completed and expired", completed_expired),
    ] {
        let response = app.register(&client.key, onboarding).await;
        assert_eq!(
            problem(response, 404).await,
            "ONBOARDING_NOT_FOUND",
            "{what}"
        );
    }
    assert!(eu.session_requests().is_empty());
    // The other client's onboarding is fine for that client.
    assert!(!app.session(&other.key, foreign).await.reused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_onboarding_is_409_already_verified() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let session = app.session(&client.key, onboarding).await;
    let v = verification(&app, onboarding).await;

    decide(&app, &session.session_id, "approved", None).await;
    app.wait_row(v, "VERIFIED", "NONE").await;
    let response = app.register(&client.key, onboarding).await;
    assert_eq!(problem(response, 409).await, "ALREADY_VERIFIED");
    assert_eq!(eu.session_requests().len(), 1, "no new session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_are_429_with_retry_after() {
    let (_eu, app) = start(&["--client-rate-limit", "1"]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;

    // A burst of two seconds' worth passes, then the limit answers.
    assert!(!app.session(&client.key, onboarding).await.reused);
    assert!(app.session(&client.key, onboarding).await.reused);
    let mut limited = None;
    for _ in 0..10 {
        let response = app.register(&client.key, onboarding).await;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let limited = limited.expect("a 429 within ten quick requests at 1 per second");
    let retry_after: u64 = limited
        .headers()
        .get(RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(problem(limited, 429).await, "RATE_LIMITED");

    // Per client and onboarding: another onboarding of the client passes, and status polls
    // have their own budget.
    let other = app.seed_ready_onboarding(&client).await;
    assert!(!app.session(&client.key, other).await.reused);
    let status = app
        .status_request(&client.key, onboarding)
        .send()
        .await
        .expect("status answers");
    assert_eq!(status.status(), 200, "status polls are not limited yet");

    // Waiting as long as Retry-After says is enough (the wait is what is being tested).
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert!(app.session(&client.key, onboarding).await.reused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_and_revoked_keys_are_498_invalid_client_key() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let revoked = app.seed_client(false).await;
    let revoked_onboarding = app.seed_ready_onboarding(&revoked).await;
    app.revoke_client(&revoked).await;
    let body = serde_json::json!({ "onboardingId": onboarding });

    let missing = app
        .register_request()
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(problem(missing, 498).await, "INVALID_CLIENT_KEY", "missing");
    let empty = app
        .register_request()
        .header("x-client-key", "")
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(problem(empty, 498).await, "INVALID_CLIENT_KEY", "empty");
    let unknown = app.register("ck_test_unknown", onboarding).await;
    assert_eq!(problem(unknown, 498).await, "INVALID_CLIENT_KEY", "unknown");
    // The key's digest is stored, not the key: the digest itself is no key.
    let digest = hex::encode(kyc::storage::registration::key_digest(&client.key));
    let digest_as_key = app.register(&digest, onboarding).await;
    assert_eq!(problem(digest_as_key, 498).await, "INVALID_CLIENT_KEY");
    let revoked_answer = app.register(&revoked.key, revoked_onboarding).await;
    assert_eq!(
        problem(revoked_answer, 498).await,
        "INVALID_CLIENT_KEY",
        "revoked"
    );
    assert!(eu.session_requests().is_empty());
    // The valid key works.
    assert!(!app.session(&client.key, onboarding).await.reused);
}

/// A revocation written by plain SQL, as the registration backend does, is honoured by every
/// running process within a second, cache or no cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_serve_within_a_second() {
    let (_eu, app) = start(&["--client-rate-limit", "0"]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let replicas = [
        ServeChild::start(&app.config),
        ServeChild::start(&app.config),
    ];
    let bases: Vec<String> = std::iter::once(app.base_url.clone())
        .chain(replicas.iter().map(|r| r.base_url.clone()))
        .collect();
    let status_of = |base: String| {
        let http = app.http.clone();
        let key = client.key.clone();
        async move {
            http.get(format!(
                "{base}/v1/auth/register/status?onboardingId={onboarding}"
            ))
            .header("x-client-key", key)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
        }
    };
    for base in &bases {
        ServeChild::wait_ready(&app.http, base).await;
        // Used twice, so that the key is cached in every process.
        assert_eq!(status_of(base.clone()).await, 200);
        assert_eq!(status_of(base.clone()).await, 200);
    }

    app.db()
        .client()
        .await
        .execute(
            "UPDATE api_clients SET revoked_at = now() WHERE id = $1",
            &[&client.id],
        )
        .await
        .expect("revoke by plain SQL");
    let revoked = Instant::now();
    for base in &bases {
        eventually(
            Duration::from_secs(1),
            "every process to refuse the key",
            || {
                let status = status_of(base.clone());
                async move { (status.await == 498).then_some(()) }
            },
        )
        .await;
    }
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
    let refused = app.register(&client.key, onboarding).await;
    assert_eq!(problem(refused, 498).await, "INVALID_CLIENT_KEY");

    // `kyc clients revoke` goes the same way; and a key that comes back works again at once.
    app.db()
        .client()
        .await
        .execute(
            "UPDATE api_clients SET revoked_at = NULL WHERE id = $1",
            &[&client.id],
        )
        .await
        .expect("un-revoke");
    for base in &bases {
        eventually(Duration::from_secs(1), "the restored key to work", || {
            let status = status_of(base.clone());
            async move { (status.await == 200).then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veriff_failing_is_500_provider_unavailable_and_nothing_is_stored() {
    let (eu, app) = start(&[]).await;
    eu.set_mode(Mode::Fail);
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;

    let response = app.register(&client.key, onboarding).await;
    assert_eq!(problem(response, 500).await, "PROVIDER_UNAVAILABLE");
    assert_eq!(
        eu.session_requests().len(),
        1,
        "an answered creation is not retried (it is not idempotent)"
    );
    let sessions: i64 = app
        .db()
        .client()
        .await
        .query_one("SELECT count(*) FROM sessions", &[])
        .await
        .expect("count sessions")
        .get(0);
    assert_eq!(sessions, 0, "no session is stored");

    // Once Veriff is back, the next call creates the session.
    eu.set_mode(Mode::Created);
    let answer = app.session(&client.key, onboarding).await;
    assert!(!answer.reused);
    assert_eq!(answer.session_id, eu.created()[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veriff_hanging_is_500_provider_unavailable_after_the_timeout() {
    let (eu, app) = start(&[]).await;
    eu.set_mode(Mode::Hang);
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;

    let started = Instant::now();
    let response = app.register(&client.key, onboarding).await;
    let took = started.elapsed();
    assert_eq!(problem(response, 500).await, "PROVIDER_UNAVAILABLE");
    assert!(
        took >= VERIFF_TIMEOUT - Duration::from_millis(100),
        "answered by the timeout, not before: {took:?}"
    );
    assert!(
        took < VERIFF_TIMEOUT + Duration::from_secs(2),
        "answered within the 2 s timeout plus margin: {took:?}"
    );
    assert_eq!(
        eu.session_requests().len(),
        1,
        "a timed-out creation is not retried"
    );

    // The verification is not left locked: the next call goes through.
    eu.set_mode(Mode::Created);
    assert!(!app.session(&client.key, onboarding).await.reused);
}

/// A hanging Veriff holds at most half of the pool: 32 session requests waiting on it while
/// status polls (each for an onboarding not read before, so each a database read) keep being
/// answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_veriff_does_not_take_the_status_endpoints_down() {
    let (eu, app) = start(&["--veriff-timeout", "8s", "--client-rate-limit", "0"]).await;
    eu.set_mode(Mode::Hang);
    let client = app.seed_client(false).await;
    let mut creating = Vec::new();
    for _ in 0..32 {
        creating.push(app.seed_ready_onboarding(&client).await);
    }
    let mut polled = Vec::new();
    for _ in 0..40 {
        polled.push(app.seed_ready_onboarding(&client).await);
    }
    let creations = join_all(creating.iter().map(|o| app.register(&client.key, *o)));
    let polls = async {
        // Once the creations hold what they can.
        eventually(
            Duration::from_secs(5),
            "creations waiting on Veriff",
            || async { (eu.session_requests().len() >= 8).then_some(()) },
        )
        .await;
        let mut slowest = Duration::ZERO;
        for onboarding in &polled {
            let started = Instant::now();
            let response = app
                .status_request(&client.key, *onboarding)
                .send()
                .await
                .expect("status answers");
            assert_eq!(response.status(), 200);
            slowest = slowest.max(started.elapsed());
        }
        slowest
    };
    let (answers, slowest) = tokio::join!(creations, polls);
    assert!(slowest < Duration::from_secs(1), "a poll took {slowest:?}");
    for answer in answers {
        assert_eq!(problem(answer, 500).await, "PROVIDER_UNAVAILABLE");
    }
    assert!(
        eu.session_requests().len() <= 8,
        "at most half the pool waited on Veriff: {}",
        eu.session_requests().len()
    );
}

// ---------------------------------------------------------------------------------------
// Session URLs are stored only encrypted
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_urls_appear_nowhere_in_the_database_in_plain_text() {
    let (eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let first = app.session(&client.key, onboarding).await;
    let v = verification(&app, onboarding).await;
    app.send(
        "event",
        &event(&first.session_id, Some("attempt-1"), "started"),
    )
    .await;
    decide(&app, &first.session_id, "declined", Some(102)).await;
    app.wait_row(v, "REJECTED", "NEW_SESSION").await;
    let second = app.session(&client.key, onboarding).await;
    // A webhook that ends dead-lettered, so that dead_letters has a row too.
    app.send("event", b"signed but not JSON").await;
    let db = app.db().client().await;
    eventually(Duration::from_secs(20), "a dead letter", || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM dead_letters", &[])
            .await
            .expect("count dead letters")
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    app.wait_inputs(v, 4).await;

    let created = eu.created();
    assert_eq!(created.len(), 2);
    // Each URL is stored, sealed with the URL key.
    let cipher = app.config.url_cipher().expect("the URL key");
    for session in &created {
        let sealed: Option<Vec<u8>> = db
            .query_one(
                "SELECT url_ciphertext FROM sessions WHERE id = $1",
                &[&session.id],
            )
            .await
            .expect("the session row")
            .get(0);
        let opened = cipher
            .open(&sealed.expect("the URL is stored"))
            .expect("the URL opens with the URL key");
        assert_eq!(opened, session.url.as_bytes());
    }
    assert_eq!(second.url, created[1].url);

    // Every text, JSON and bytea column of every table, searched for the URLs' tokens.
    let columns = db
        .query(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = 'public'
               AND data_type IN ('text', 'character varying', 'character', 'bytea', 'json', 'jsonb')
             ORDER BY table_name, column_name",
            &[],
        )
        .await
        .expect("the columns");
    let mut tables: Vec<String> = columns.iter().map(|c| c.get(0)).collect();
    tables.dedup();
    for table in ["sessions", "inputs", "verifications", "dead_letters"] {
        assert!(tables.iter().any(|t| t == table), "{table} is searched");
    }
    let mut values = 0;
    for column in &columns {
        let (table, name, kind): (String, String, String) =
            (column.get(0), column.get(1), column.get(2));
        let sql = match kind.as_str() {
            "bytea" => format!("SELECT \"{name}\" FROM \"{table}\" WHERE \"{name}\" IS NOT NULL"),
            _ => format!(
                "SELECT convert_to(\"{name}\"::text, 'UTF8') FROM \"{table}\" WHERE \"{name}\" IS NOT NULL"
            ),
        };
        for row in db.query(&sql, &[]).await.expect("read a column") {
            let bytes: Vec<u8> = row.get(0);
            values += 1;
            for session in &created {
                assert!(
                    !bytes
                        .windows(session.token.len())
                        .any(|w| w == session.token.as_bytes()),
                    "{table}.{name} holds a session URL's token in plain text"
                );
            }
        }
    }
    assert!(values > 10, "the search read the stored values ({values})");
}

// ---------------------------------------------------------------------------------------
// GET /v1/auth/register/status
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_has_an_etag_and_if_none_match_is_304() {
    let (_eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let get = || app.status_request(&client.key, onboarding);

    // Before any session: UNVERIFIED.
    let fresh = polled(get().send().await.expect("status")).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(
        fresh.body,
        Some(serde_json::json!({
            "state": "UNVERIFIED", "retry": "NONE", "reasonCode": null, "reason": null, "updatedAt": null
        }))
    );

    let session = app.session(&client.key, onboarding).await;
    let created = polled(get().send().await.expect("status")).await;
    assert_eq!(created.status, 200);
    let body = created.body.clone().expect("a body");
    assert_eq!(
        (&body["state"], &body["retry"]),
        (&"UNVERIFIED".into(), &"NONE".into())
    );
    assert!(body["updatedAt"].is_string(), "{body}");
    assert_ne!(created.etag, fresh.etag, "another body, another ETag");

    // The current ETag: 304 at once, with the ETag and no body.
    let started = Instant::now();
    let same = polled(
        get()
            .header(IF_NONE_MATCH, &created.etag)
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!(same.status, 304);
    assert_eq!(same.etag, created.etag);
    assert!(started.elapsed() < Duration::from_secs(1), "at once");
    // A stale one: the current body.
    let stale = polled(
        get()
            .header(IF_NONE_MATCH, &fresh.etag)
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!((stale.status, &stale.etag), (200, &created.etag));

    // A decline shows with its reason.
    let v = verification(&app, onboarding).await;
    decide(&app, &session.session_id, "declined", Some(102)).await;
    app.wait_row(v, "REJECTED", "NEW_SESSION").await;
    let declined = polled(
        get()
            .header(IF_NONE_MATCH, &created.etag)
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!(declined.status, 200);
    let body = declined.body.expect("a body");
    assert_eq!(body["state"], "REJECTED");
    assert_eq!(body["retry"], "NEW_SESSION");
    assert_eq!(body["reasonCode"], 102);
    assert_eq!(body["reason"], "reason 102");
    let updated: DateTime<Utc> = body["updatedAt"]
        .as_str()
        .expect("updatedAt")
        .parse()
        .expect("an RFC 3339 time");
    assert_about(updated, Utc::now(), "updatedAt");
    assert_ne!(declined.etag, created.etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_status_request_wakes_within_a_second_of_the_change() {
    let (_eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let session = app.session(&client.key, onboarding).await;
    let v = verification(&app, onboarding).await;
    let current = polled(
        app.status_request(&client.key, onboarding)
            .send()
            .await
            .expect("status"),
    )
    .await;

    let waiting = tokio::spawn(
        app.status_request(&client.key, onboarding)
            .header(IF_NONE_MATCH, &current.etag)
            .header("prefer", "wait=5")
            .send(),
    );
    // The service counts a request as waiting once it has read the status and subscribed.
    eventually(
        Duration::from_secs(5),
        "the status request to wait",
        || async {
            let metrics = app
                .http
                .get(app.url("/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .lines()
                .any(|l| l == "kyc_status_waiters 1")
                .then_some(())
        },
    )
    .await;
    assert!(!waiting.is_finished(), "the request waits for a change");

    app.send(
        "event",
        &event(&session.session_id, Some("attempt-1"), "submitted"),
    )
    .await;
    let sent = Instant::now();
    let answer = waiting
        .await
        .expect("the request task")
        .expect("the status answers");
    let woke = sent.elapsed();
    let changed = polled(answer).await;
    assert_eq!(changed.status, 200);
    let body = changed.body.expect("a body");
    assert_eq!(
        (&body["state"], &body["retry"]),
        (&"PENDING".into(), &"NONE".into())
    );
    assert_ne!(changed.etag, current.etag);
    assert!(
        woke < Duration::from_secs(1),
        "answered {woke:?} after the webhook's 200"
    );
    assert_eq!(app.row(v).await.0, "PENDING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_status_request_without_change_is_304_after_the_wait() {
    let (_eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    app.session(&client.key, onboarding).await;
    let get = || app.status_request(&client.key, onboarding);
    let current = polled(get().send().await.expect("status")).await;

    let started = Instant::now();
    let unchanged = polled(
        get()
            .header(IF_NONE_MATCH, &current.etag)
            .header("prefer", "wait=1")
            .send()
            .await
            .expect("status"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(unchanged.status, 304);
    assert_eq!(unchanged.etag, current.etag);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
        "about a second: {took:?}"
    );

    // Without a matching ETag there is nothing to wait for.
    let started = Instant::now();
    let at_once = polled(
        get()
            .header(IF_NONE_MATCH, "\"something-else\"")
            .header("prefer", "wait=5")
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!((at_once.status, &at_once.etag), (200, &current.etag));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_errors_are_problem_documents() {
    let (_eu, app) = start(&[]).await;
    let client = app.seed_client(false).await;
    let other = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let foreign = app.seed_ready_onboarding(&other).await;

    let keyless = app
        .http
        .get(app.url(&format!(
            "/v1/auth/register/status?onboardingId={onboarding}"
        )))
        .send()
        .await
        .expect("status");
    assert_eq!(problem(keyless, 498).await, "INVALID_CLIENT_KEY");
    for query in ["", "?onboardingId=", "?onboardingId=not-a-uuid"] {
        let response = app
            .http
            .get(app.url(&format!("/v1/auth/register/status{query}")))
            .header("x-client-key", &client.key)
            .send()
            .await
            .expect("status");
        assert_eq!(problem(response, 400).await, "INVALID_REQUEST", "{query}");
    }
    for (what, id) in [("unknown", Uuid::new_v4()), ("another client's", foreign)] {
        let response = app
            .status_request(&client.key, id)
            .send()
            .await
            .expect("status");
        assert_eq!(
            problem(response, 404).await,
            "ONBOARDING_NOT_FOUND",
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Veriff's decision API (reconciliation), against the fake
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_request_is_signed_over_the_session_id() {
    let eu = FakeVeriff::start().await;
    let answer = serde_json::json!({"status": "success", "verification": {"id": "s-1", "status": "approved"}});
    eu.set_decision(200, answer.clone());
    let config = crate::harness::test_config(
        &crate::harness::unique_prefix(),
        crate::harness::AMQP_URL,
        "postgres://postgres@127.0.0.1:5432/unused",
        &[],
    );
    let client = VeriffClient::new(
        config.integrations().expect("integrations"),
        &eu.base_url,
        &eu.base_url,
        Some("https://app.example/verified".to_owned()),
        VERIFF_TIMEOUT,
    )
    .expect("a Veriff client");

    let body = client
        .decision(Integration::Eu, "s-1")
        .await
        .expect("the decision");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).expect("JSON"),
        answer
    );
    let requests = eu.decision_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].session_id, "s-1");
    assert_eq!(requests[0].header("x-auth-client"), Some(EU_API_KEY));
    assert_eq!(
        requests[0].header("x-hmac-signature"),
        Some(sign(&SecretString::from(EU_SECRET), b"s-1").as_str())
    );

    eu.set_decision(404, serde_json::json!({"status": "fail"}));
    assert!(client.decision(Integration::Eu, "s-2").await.is_err());
}
