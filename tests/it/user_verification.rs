//! The user endpoints (DESIGN.md section 4): `GET /v1/user/verification` and
//! `GET /v1/user/verification/status` with bearer JWTs, against the real service, database and
//! broker, with Veriff's station API replaced by a fake. Tokens are minted with `jsonwebtoken`;
//! the malicious ones (`alg: none`, HS/RS confusion, altered payloads) are put together by hand.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::header::{AUTHORIZATION, IF_NONE_MATCH, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::harness::fake_veriff::{FakeVeriff, Mode};
use crate::harness::registration::{
    OnboardingSpec, Polled, SessionAnswer, polled, problem, session_answer,
};
use crate::harness::seed::decision;
use crate::harness::{JWT_AUDIENCE, JWT_SECRET, Spawn, TestApp};

const VERIFICATION: &str = "/v1/user/verification";
const USER_STATUS: &str = "/v1/user/verification/status";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

fn now() -> i64 {
    Utc::now().timestamp()
}

/// Valid claims for `user` on the harness configuration: its audience, valid since a minute
/// ago, ten minutes left.
fn claims(user: &str) -> Value {
    json!({ "sub": user, "aud": JWT_AUDIENCE, "iat": now(), "nbf": now() - 60, "exp": now() + 600 })
}

/// The claims with one member replaced (or removed, for `Value::Null`).
fn with(mut claims: Value, name: &str, value: Value) -> Value {
    let object = claims.as_object_mut().expect("claims are an object");
    match value {
        Value::Null => {
            object.remove(name);
        }
        value => {
            object.insert(name.to_owned(), value);
        }
    }
    claims
}

fn minted(algorithm: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    encode(&Header::new(algorithm), claims, key).expect("the token is signed")
}

/// An HS256 token signed with the harness secret, as the user's app would send.
fn token(claims: &Value) -> String {
    minted(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).expect("the test key exists")
}

/// An RS256 token signed with the private key in `tests/fixtures/jwt/{private_key}`.
fn rs256(private_key: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&key_file(private_key)).expect("an RSA private key");
    minted(Algorithm::RS256, claims, &key)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `base64url(header).base64url(claims)`, put together by hand.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A token whose header says `alg` and whose signature is HMAC-SHA256 under `key`, computed
/// by hand (whatever the header claims).
fn hmac_signed(alg: &str, key: &[u8], claims: &Value) -> String {
    let input = signing_input(&json!({ "alg": alg, "typ": "JWT" }), claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// An unsigned token: `alg` as given, an empty signature.
fn unsigned(alg: &str, claims: &Value) -> String {
    format!(
        "{}.",
        signing_input(&json!({ "alg": alg, "typ": "JWT" }), claims)
    )
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// The app (HTTP and worker) with Veriff's EU API at a fake. Bind as `let (eu, app)`, so that
/// the app stops before the fake.
async fn start() -> (FakeVeriff, TestApp) {
    let eu = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&eu, None, &[]).await;
    (eu, app)
}

/// Another HTTP process of `app`'s deployment (same database and queues) whose bearer
/// configuration `configure` changes. `app` keeps owning the queues: drop this one first.
async fn sibling(app: &TestApp, configure: impl FnOnce(&mut kyc::config::Config)) -> TestApp {
    let mut config = app.config.clone();
    configure(&mut config);
    TestApp::start_with(Spawn::default(), config, None).await
}

async fn get(app: &TestApp, path: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(app.url(path));
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    request.send().await.expect("the user endpoint answers")
}

async fn bearer(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    get(app, path, Some(&format!("Bearer {token}"))).await
}

/// `GET /v1/user/verification`, expecting a 200 with exactly the contract's fields.
async fn user_session(app: &TestApp, token: &str) -> SessionAnswer {
    session_answer(bearer(app, VERIFICATION, token).await).await
}

/// A 401 problem `UNAUTHORIZED` with the `WWW-Authenticate: Bearer` challenge.
async fn assert_unauthorized(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer"),
        "{what}: WWW-Authenticate"
    );
    assert_eq!(problem(response, 401).await, "UNAUTHORIZED", "{what}");
}

/// Both user endpoints refuse this token with 401.
async fn assert_refused(app: &TestApp, token: &str, what: &str) {
    for path in [VERIFICATION, USER_STATUS] {
        assert_unauthorized(bearer(app, path, token).await, &format!("{what} ({path})")).await;
    }
}

/// The verification a session belongs to: (id, onboarding_id, user_id).
async fn owner_of(app: &TestApp, session: &str) -> (Uuid, Option<Uuid>, Option<String>) {
    let row = app
        .db()
        .client()
        .await
        .query_one(
            "SELECT v.id, v.onboarding_id, v.user_id FROM sessions s
             JOIN verifications v ON v.id = s.verification_id WHERE s.id = $1",
            &[&session],
        )
        .await
        .expect("the session and its verification");
    (row.get(0), row.get(1), row.get(2))
}

/// Every verification of a user: (id, onboarding_id).
async fn verifications_of(app: &TestApp, user: &str) -> Vec<(Uuid, Option<Uuid>)> {
    app.db()
        .client()
        .await
        .query(
            "SELECT id, onboarding_id FROM verifications WHERE user_id = $1 ORDER BY id",
            &[&user],
        )
        .await
        .expect("verifications of the user")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    app.db()
        .client()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count rows")
        .get(0)
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

// ---------------------------------------------------------------------------------------
// 401: no valid token
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bearer_token_both_endpoints_are_401_with_a_bearer_challenge() {
    let (eu, app) = start().await;
    let valid = token(&claims(&Uuid::new_v4().to_string()));

    for path in [VERIFICATION, USER_STATUS] {
        assert_unauthorized(get(&app, path, None).await, &format!("no header ({path})")).await;
        for (what, value) in [
            ("another scheme", format!("Basic {}", b64(b"user:password"))),
            ("an empty bearer", "Bearer ".to_owned()),
            ("the token without its scheme", valid.clone()),
            ("not a JWT", "Bearer not-a-token".to_owned()),
        ] {
            assert_unauthorized(
                get(&app, path, Some(&value)).await,
                &format!("{what} ({path})"),
            )
            .await;
        }
    }
    assert!(eu.session_requests().is_empty(), "Veriff was not called");
    assert_eq!(count(&app, "verifications").await, 0, "nothing was created");

    // The same token, presented properly, is good.
    assert!(!user_session(&app, &valid).await.reused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_401_on_an_hs256_app() {
    let (eu, app) = start().await;
    let user = Uuid::new_v4().to_string();
    let good = claims(&user);
    let valid = token(&good);
    let signature = valid.rsplit('.').next().expect("a signature").to_owned();
    let other_user = with(good.clone(), "sub", json!(Uuid::new_v4().to_string()));

    let cases: Vec<(&str, String)> = vec![
        // Past the library's 60 s leeway for clock skew.
        (
            "expired five minutes ago",
            token(&with(good.clone(), "exp", json!(now() - 300))),
        ),
        (
            "not valid before an hour from now (nbf)",
            token(&with(good.clone(), "nbf", json!(now() + 3600))),
        ),
        (
            "signed with another secret",
            minted(
                Algorithm::HS256,
                &good,
                &EncodingKey::from_secret(b"another-secret"),
            ),
        ),
        (
            "signed with the secret under HS384",
            minted(
                Algorithm::HS384,
                &good,
                &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            ),
        ),
        (
            "an RS256 token (not the configured algorithm)",
            rs256("rs256-private.pem", &good),
        ),
        ("alg none, unsigned", unsigned("none", &good)),
        ("alg None, unsigned", unsigned("None", &good)),
        ("alg NONE, unsigned", unsigned("NONE", &good)),
        (
            "alg none with the valid token's signature",
            format!("{}{signature}", unsigned("none", &good)),
        ),
        ("alg HS256 without a signature", unsigned("HS256", &good)),
        (
            "another user's claims under this token's signature",
            format!(
                "{}.{signature}",
                signing_input(&json!({ "alg": "HS256", "typ": "JWT" }), &other_user)
            ),
        ),
        (
            "another audience",
            token(&with(good.clone(), "aud", json!("another-service"))),
        ),
        (
            "an audience list without ours",
            token(&with(good.clone(), "aud", json!(["another-service"]))),
        ),
        ("no aud", token(&with(good.clone(), "aud", Value::Null))),
        ("no exp", token(&with(good.clone(), "exp", Value::Null))),
        (
            "exp not a number",
            token(&with(good.clone(), "exp", json!("tomorrow"))),
        ),
        ("no sub", token(&with(good.clone(), "sub", Value::Null))),
        ("an empty sub", token(&with(good.clone(), "sub", json!("")))),
    ];
    for (what, bad) in &cases {
        assert_refused(&app, bad, what).await;
    }
    assert!(eu.session_requests().is_empty(), "Veriff was not called");
    assert_eq!(count(&app, "verifications").await, 0, "nothing was created");

    // The claims every case started from are valid.
    let answer = user_session(&app, &valid).await;
    assert!(!answer.reused);
    assert_eq!(
        owner_of(&app, &answer.session_id).await.2.as_deref(),
        Some(user.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_app_accepts_rs256_tokens_and_refuses_hs_rs_confusion() {
    let (eu, app) = start().await;
    let rs = sibling(&app, |config| {
        config.jwt_secret = None;
        config.jwt_public_key_file = Some(format!("{KEYS}/rs256-public.pem").into());
    })
    .await;
    let user = Uuid::new_v4().to_string();
    let good = claims(&user);
    let public_pem = key_file("rs256-public.pem");
    let trimmed_pem = String::from_utf8(public_pem.clone())
        .expect("a PEM is text")
        .trim()
        .to_owned();

    for (what, bad) in [
        (
            "HS256 signed with the public key's PEM file as the HMAC secret",
            hmac_signed("HS256", &public_pem, &good),
        ),
        (
            "HS256 signed with the public key's PEM, trimmed, as the HMAC secret",
            hmac_signed("HS256", trimmed_pem.as_bytes(), &good),
        ),
        (
            "the same, minted by jsonwebtoken",
            minted(
                Algorithm::HS256,
                &good,
                &EncodingKey::from_secret(&public_pem),
            ),
        ),
        (
            "HS256 signed with the HS configuration's secret",
            token(&good),
        ),
        (
            "RS256 signed with another private key",
            rs256("other-private.pem", &good),
        ),
        ("alg none, unsigned", unsigned("none", &good)),
        (
            "RS256 for another audience",
            rs256(
                "rs256-private.pem",
                &with(good.clone(), "aud", json!("another-service")),
            ),
        ),
        (
            "RS256 without exp",
            rs256("rs256-private.pem", &with(good.clone(), "exp", Value::Null)),
        ),
    ] {
        assert_refused(&rs, &bad, what).await;
    }
    assert!(eu.session_requests().is_empty(), "Veriff was not called");

    // A token signed with the private key is accepted, on both endpoints.
    let valid = rs256("rs256-private.pem", &good);
    let answer = user_session(&rs, &valid).await;
    assert!(!answer.reused);
    assert_eq!(answer.session_id, eu.created()[0].id);
    assert_eq!(
        owner_of(&app, &answer.session_id).await.2.as_deref(),
        Some(user.as_str())
    );
    let status = bearer(&rs, USER_STATUS, &valid).await;
    assert_eq!(status.status(), 200, "the status with an RS256 token");
    // And the HS256 app refuses it.
    assert_refused(&app, &valid, "an RS256 token on the HS256 app").await;
    drop(rs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_is_required_and_checked_when_configured() {
    let (eu, app) = start().await;
    let issuer = "https://id.example";
    let with_issuer = sibling(&app, |config| config.jwt_issuer = Some(issuer.to_owned())).await;
    let good = with(claims(&Uuid::new_v4().to_string()), "iss", json!(issuer));

    assert_refused(
        &with_issuer,
        &token(&with(good.clone(), "iss", Value::Null)),
        "no iss",
    )
    .await;
    assert_refused(
        &with_issuer,
        &token(&with(good.clone(), "iss", json!("https://evil.example"))),
        "another issuer",
    )
    .await;
    assert!(eu.session_requests().is_empty(), "Veriff was not called");
    assert!(!user_session(&with_issuer, &token(&good)).await.reused);
    drop(with_issuer);
}

// ---------------------------------------------------------------------------------------
// 200: sessions for the token's user
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_gets_a_session_of_its_own_and_a_second_call_reuses_it() {
    let (eu, app) = start().await;
    let user = Uuid::new_v4().to_string();
    let valid = token(&claims(&user));

    let first = user_session(&app, &valid).await;
    let created = eu.created();
    assert_eq!(created.len(), 1, "one session created at Veriff");
    assert!(!first.reused);
    assert_eq!(first.session_id, created[0].id, "sessionId is Veriff's id");
    assert_eq!(first.url, created[0].url, "the URL is Veriff's");
    let expected_expiry = Utc::now() + chrono::TimeDelta::days(7);
    assert!(
        (first.expires_at - expected_expiry).abs() < chrono::TimeDelta::minutes(1),
        "expiresAt is the end of Veriff's 7-day session lifetime: {}",
        first.expires_at
    );

    // A verification of the user's own (no onboarding), named in vendorData; endUserId is
    // the user id, a UUID.
    let (v, onboarding, owner) = owner_of(&app, &first.session_id).await;
    assert_eq!(onboarding, None, "no onboarding");
    assert_eq!(owner.as_deref(), Some(user.as_str()));
    assert_eq!(verifications_of(&app, &user).await, [(v, None)]);
    let sent = eu.session_requests()[0].verification().clone();
    assert_eq!(sent["vendorData"], v.to_string());
    assert_eq!(sent["endUserId"], user.as_str());
    assert_eq!(app.input_count(v).await, 1, "the session_created input");

    // Again, with a freshly minted token: the same session, and Veriff is not called.
    let again = user_session(&app, &token(&claims(&user))).await;
    assert_eq!(
        again,
        SessionAnswer {
            reused: true,
            ..first.clone()
        }
    );
    assert_eq!(eu.session_requests().len(), 1, "Veriff was called once");
    assert_eq!(verifications_of(&app, &user).await, [(v, None)]);

    // A user id that is not a UUID is not sent as endUserId.
    let other = "user-42@example.com";
    let answer = user_session(&app, &token(&claims(other))).await;
    assert_ne!(
        answer.session_id, first.session_id,
        "another user's session"
    );
    let requests = eu.session_requests();
    assert_eq!(requests.len(), 2);
    let sent = requests[1].verification();
    assert!(
        !sent.contains_key("endUserId"),
        "endUserId only for a UUID: {sent:?}"
    );
    let (other_v, _, _) = owner_of(&app, &answer.session_id).await;
    assert_eq!(sent["vendorData"], other_v.to_string());
    assert_ne!(other_v, v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_onboardings_gets_the_verification_of_the_newest() {
    let (eu, app) = start().await;
    let client = app.seed_client(false).await;
    let user = Uuid::new_v4().to_string();
    let of_user = || OnboardingSpec {
        user_id: Some(user.clone()),
        ..OnboardingSpec::default()
    };
    let older = app.seed_onboarding(&client, of_user()).await;
    let newest = app.seed_onboarding(&client, of_user()).await;
    // Another user's onboarding, newer still, is none of this user's business.
    app.seed_ready_onboarding(&client).await;
    let db = app.db().client().await;
    // Inserted first but the newer one: creation time decides, not insertion order.
    db.execute(
        "UPDATE onboardings SET created_at = created_at - interval '1 day' WHERE id = $1",
        &[&older],
    )
    .await
    .expect("age the older onboarding");
    db.execute(
        "UPDATE onboardings SET created_at = created_at - interval '1 hour' WHERE id = $1",
        &[&newest],
    )
    .await
    .expect("age the newest onboarding less");

    // The older onboarding has a verification and a session already (registration API).
    let old_session = app.session(&client.key, older).await;
    let (old_v, _) = app
        .verification_of(older)
        .await
        .expect("the older onboarding's verification");

    let answer = user_session(&app, &token(&claims(&user))).await;
    assert!(!answer.reused, "not the older onboarding's session");
    assert_ne!(answer.session_id, old_session.session_id);
    let (v, onboarding, owner) = owner_of(&app, &answer.session_id).await;
    assert_eq!(
        onboarding,
        Some(newest),
        "the newest onboarding's verification"
    );
    assert_eq!(owner.as_deref(), Some(user.as_str()));
    assert_ne!(v, old_v);
    assert_eq!(
        app.verification_of(newest).await.map(|(id, _)| id),
        Some(v),
        "the verification is the onboarding's own"
    );
    let requests = eu.session_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].verification()["vendorData"], v.to_string());
    let mut expected = vec![(old_v, Some(older)), (v, Some(newest))];
    expected.sort();
    assert_eq!(
        verifications_of(&app, &user).await,
        expected,
        "no verification of the user's own"
    );

    // The registration API hands out the same session for that onboarding, and the user
    // endpoint keeps doing so.
    let via_client = app.session(&client.key, newest).await;
    assert!(via_client.reused);
    assert_eq!(via_client.session_id, answer.session_id);
    let again = user_session(&app, &token(&claims(&user))).await;
    assert!(again.reused);
    assert_eq!(again.session_id, answer.session_id);
    assert_eq!(eu.session_requests().len(), 2, "no further Veriff call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_create_one_verification_and_one_session() {
    let (eu, app) = start().await;
    // Veriff takes its time, so that the calls overlap while the first one waits for it.
    eu.set_delay(Duration::from_millis(500));
    let user = Uuid::new_v4().to_string();
    let valid = token(&claims(&user));

    let responses = join_all((0..4).map(|_| bearer(&app, VERIFICATION, &valid))).await;
    let mut answers = Vec::new();
    for response in responses {
        answers.push(session_answer(response).await);
    }
    assert_eq!(eu.session_requests().len(), 1, "one Veriff session");
    let created = &eu.created()[0];
    assert!(
        answers
            .iter()
            .all(|a| a.session_id == created.id && a.url == created.url),
        "every answer carries the one session: {answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| !a.reused).count(),
        1,
        "one created it, the others reused it: {answers:?}"
    );
    let mine = verifications_of(&app, &user).await;
    assert_eq!(
        mine.len(),
        1,
        "one verification of the user's own: {mine:?}"
    );
    assert_eq!(mine[0].1, None);
    assert_eq!(app.session_ids(mine[0].0).await, [created.id.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_user_gets_a_new_session_and_stays_verified() {
    let (eu, app) = start().await;
    let user = Uuid::new_v4().to_string();
    let valid = token(&claims(&user));
    let first = user_session(&app, &valid).await;
    let (v, _, _) = owner_of(&app, &first.session_id).await;
    decide(&app, &first.session_id, "approved", None).await;
    app.wait_row(v, "VERIFIED", "NONE").await;

    // Re-verification: a new session, although the row is VERIFIED.
    let second = user_session(&app, &valid).await;
    assert!(!second.reused, "a re-verification is a new session");
    assert_ne!(second.session_id, first.session_id);
    assert_ne!(second.url, first.url);
    assert_eq!(eu.session_requests().len(), 2, "Veriff was called again");
    assert_eq!(second.session_id, eu.created()[1].id);
    assert_eq!(
        owner_of(&app, &second.session_id).await.0,
        v,
        "the same verification"
    );
    assert_eq!(app.session_ids(v).await.len(), 2);
    assert_eq!(app.input_count(v).await, 3, "session, decision, session");
    let row = app.row(v).await;
    assert_eq!(
        (row.0.as_str(), row.1.as_str()),
        ("VERIFIED", "NONE"),
        "the row stays VERIFIED"
    );
    let status = bearer(&app, USER_STATUS, &valid).await;
    assert_eq!(status.status(), 200);
    let body: Value = status.json().await.expect("a JSON status");
    assert_eq!(body["state"], "VERIFIED");

    // The re-verification session is the current one, and is handed out again.
    let third = user_session(&app, &valid).await;
    assert!(third.reused);
    assert_eq!(third.session_id, second.session_id);
    assert_eq!(eu.session_requests().len(), 2);

    // Its abandonment leaves the user VERIFIED.
    decide(&app, &second.session_id, "abandoned", None).await;
    app.wait_inputs(v, 4).await;
    let row = app.row(v).await;
    assert_eq!((row.0.as_str(), row.1.as_str()), ("VERIFIED", "NONE"));
}

// ---------------------------------------------------------------------------------------
// 403 and 500
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_is_403_verification_blocked() {
    let (eu, app) = start().await;
    let valid = token(&claims(&Uuid::new_v4().to_string()));
    let first = user_session(&app, &valid).await;
    let (v, _, _) = owner_of(&app, &first.session_id).await;
    // 105 is one of the default blocking reason codes.
    decide(&app, &first.session_id, "declined", Some(105)).await;
    app.wait_row(v, "REJECTED", "BLOCKED").await;

    let response = bearer(&app, VERIFICATION, &valid).await;
    assert_eq!(problem(response, 403).await, "VERIFICATION_BLOCKED");
    assert_eq!(eu.session_requests().len(), 1, "Veriff was not called");
    assert_eq!(app.session_ids(v).await.len(), 1, "no session was added");
    let status = bearer(&app, USER_STATUS, &valid).await;
    assert_eq!(status.status(), 200, "the status is still readable");
    let body: Value = status.json().await.expect("a JSON status");
    assert_eq!(
        (&body["state"], &body["retry"]),
        (&json!("REJECTED"), &json!("BLOCKED"))
    );
    assert_eq!(body["reasonCode"], 105);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veriff_failing_is_500_provider_unavailable_and_nothing_is_stored() {
    let (eu, app) = start().await;
    eu.set_mode(Mode::Fail);
    let user = Uuid::new_v4().to_string();
    let valid = token(&claims(&user));

    let response = bearer(&app, VERIFICATION, &valid).await;
    assert_eq!(problem(response, 500).await, "PROVIDER_UNAVAILABLE");
    assert_eq!(
        eu.session_requests().len(),
        1,
        "an answered creation is not retried"
    );
    assert_eq!(count(&app, "sessions").await, 0, "no session is stored");
    assert_eq!(count(&app, "inputs").await, 0, "no input is recorded");

    // Once Veriff is back, the next call creates the session.
    eu.set_mode(Mode::Created);
    let answer = user_session(&app, &valid).await;
    assert!(!answer.reused);
    assert_eq!(answer.session_id, eu.created()[0].id);
    assert_eq!(verifications_of(&app, &user).await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// GET /v1/user/verification/status
// ---------------------------------------------------------------------------------------

async fn user_status(app: &TestApp, token: &str, if_none_match: Option<&str>) -> Polled {
    let mut request = app
        .http
        .get(app.url(USER_STATUS))
        .header(AUTHORIZATION, format!("Bearer {token}"));
    if let Some(etag) = if_none_match {
        request = request.header(IF_NONE_MATCH, etag);
    }
    polled(request.send().await.expect("the status answers")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_status_has_an_etag_and_if_none_match_is_304() {
    let (_eu, app) = start().await;
    let user = Uuid::new_v4().to_string();
    let valid = token(&claims(&user));

    // Nothing yet: UNVERIFIED, and the status creates nothing.
    let fresh = user_status(&app, &valid, None).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(
        fresh.body,
        Some(json!({
            "state": "UNVERIFIED", "retry": "NONE", "reasonCode": null, "reason": null, "updatedAt": null
        }))
    );
    assert_eq!(count(&app, "verifications").await, 0);
    let same = user_status(&app, &valid, Some(&fresh.etag)).await;
    assert_eq!((same.status, &same.etag), (304, &fresh.etag));

    let session = user_session(&app, &valid).await;
    let created = user_status(&app, &valid, Some(&fresh.etag)).await;
    assert_eq!(created.status, 200, "the body changed");
    let body = created.body.clone().expect("a body");
    assert_eq!(
        (&body["state"], &body["retry"]),
        (&json!("UNVERIFIED"), &json!("NONE"))
    );
    assert!(body["updatedAt"].is_string(), "{body}");
    assert_ne!(created.etag, fresh.etag, "another body, another ETag");

    // The current ETag: 304 at once.
    let started = Instant::now();
    let same = user_status(&app, &valid, Some(&created.etag)).await;
    assert_eq!((same.status, &same.etag), (304, &created.etag));
    assert!(started.elapsed() < Duration::from_secs(1), "at once");

    // A decline shows with its reason; the old ETag no longer matches.
    let (v, _, _) = owner_of(&app, &session.session_id).await;
    decide(&app, &session.session_id, "declined", Some(102)).await;
    app.wait_row(v, "REJECTED", "NEW_SESSION").await;
    let declined = user_status(&app, &valid, Some(&created.etag)).await;
    assert_eq!(declined.status, 200);
    let body = declined.body.expect("a body");
    assert_eq!(
        (
            &body["state"],
            &body["retry"],
            &body["reasonCode"],
            &body["reason"]
        ),
        (
            &json!("REJECTED"),
            &json!("NEW_SESSION"),
            &json!(102),
            &json!("reason 102")
        )
    );
    assert_ne!(declined.etag, created.etag);

    // Another user's status is their own.
    let stranger = user_status(&app, &token(&claims(&Uuid::new_v4().to_string())), None).await;
    assert_eq!(stranger.body.expect("a body")["state"], "UNVERIFIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_status_of_an_onboarding_user_is_the_onboarding_status() {
    let (_eu, app) = start().await;
    let client = app.seed_client(false).await;
    let user = Uuid::new_v4().to_string();
    let onboarding = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                user_id: Some(user.clone()),
                ..OnboardingSpec::default()
            },
        )
        .await;
    let valid = token(&claims(&user));
    let onboarding_status = || async {
        polled(
            app.status_request(&client.key, onboarding)
                .send()
                .await
                .expect("the onboarding status answers"),
        )
        .await
    };
    let assert_same = |mine: &Polled, theirs: &Polled, when: &str| {
        assert_eq!(mine.status, 200, "{when}");
        assert_eq!(mine.body, theirs.body, "the same body {when}");
        assert_eq!(mine.etag, theirs.etag, "the same ETag {when}");
    };

    assert_same(
        &user_status(&app, &valid, None).await,
        &onboarding_status().await,
        "before any session",
    );
    let session = app.session(&client.key, onboarding).await;
    let theirs = onboarding_status().await;
    assert_same(
        &user_status(&app, &valid, None).await,
        &theirs,
        "with a session",
    );
    // The onboarding status's ETag is the user status's ETag: 304.
    let same = user_status(&app, &valid, Some(&theirs.etag)).await;
    assert_eq!((same.status, &same.etag), (304, &theirs.etag));

    let (v, _) = app
        .verification_of(onboarding)
        .await
        .expect("the onboarding's verification");
    decide(&app, &session.session_id, "approved", None).await;
    app.wait_row(v, "VERIFIED", "NONE").await;
    let verified = onboarding_status().await;
    assert_eq!(verified.body.as_ref().expect("a body")["state"], "VERIFIED");
    assert_same(
        &user_status(&app, &valid, None).await,
        &verified,
        "once verified",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_user_status_request_is_answered_on_the_change() {
    let (_eu, app) = start().await;
    let user = Uuid::new_v4().to_string();
    let valid = token(&claims(&user));
    let session = user_session(&app, &valid).await;
    let (v, _, _) = owner_of(&app, &session.session_id).await;
    let current = user_status(&app, &valid, None).await;

    // No change: 304 after the wait.
    let started = Instant::now();
    let unchanged = polled(
        app.http
            .get(app.url(USER_STATUS))
            .header(AUTHORIZATION, format!("Bearer {valid}"))
            .header(IF_NONE_MATCH, &current.etag)
            .header("prefer", "wait=1")
            .send()
            .await
            .expect("the status answers"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!((unchanged.status, &unchanged.etag), (304, &current.etag));
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
        "about a second: {took:?}"
    );

    // A change while waiting: answered with the new body long before the wait is over.
    let started = Instant::now();
    let waiting = tokio::spawn(
        app.http
            .get(app.url(USER_STATUS))
            .header(AUTHORIZATION, format!("Bearer {valid}"))
            .header(IF_NONE_MATCH, &current.etag)
            .header("prefer", "wait=20")
            .send(),
    );
    decide(&app, &session.session_id, "declined", Some(102)).await;
    let changed = polled(
        waiting
            .await
            .expect("the request task")
            .expect("the status answers"),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered on the change, not after the wait: {:?}",
        started.elapsed()
    );
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body.expect("a body")["state"], "REJECTED");
    assert_ne!(changed.etag, current.etag);
    let row = app.row(v).await;
    assert_eq!(
        (row.0.as_str(), row.1.as_str()),
        ("REJECTED", "NEW_SESSION")
    );
}
