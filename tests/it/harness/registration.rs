//! The registration API's side of the harness: the app wired to fake Veriffs, what the
//! registration backend writes (api_clients, onboardings), and reading the API's answers.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::header::{CONTENT_TYPE, ETAG};
use uuid::Uuid;

use kyc::storage::registration::key_digest;

use super::fake_veriff::FakeVeriff;
use super::{Spawn, TestApp};

pub const REGISTER: &str = "/v1/auth/register/verification";
pub const STATUS: &str = "/v1/auth/register/status";
/// Veriff's answer must come within this (`--veriff-timeout`).
pub const VERIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// An API client as the registration backend creates it; the key exists only here.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: Uuid,
    pub key: String,
}

/// An onboarding as the registration backend writes it.
#[derive(Debug, Clone)]
pub struct OnboardingSpec {
    pub phone_verified: bool,
    /// From now; negative for an onboarding that has expired.
    pub expires_in: TimeDelta,
    pub completed: bool,
    pub user_id: Option<String>,
}

impl Default for OnboardingSpec {
    /// Ready for verification: phone verified, a day left, not completed, a UUID user id.
    fn default() -> Self {
        Self {
            phone_verified: true,
            expires_in: TimeDelta::days(1),
            completed: false,
            user_id: Some(Uuid::new_v4().to_string()),
        }
    }
}

/// A 200 of `POST /v1/auth/register/verification`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAnswer {
    pub url: String,
    pub session_id: String,
    pub expires_at: DateTime<Utc>,
    pub reused: bool,
}

/// A problem document's `code`, after checking that it is one (RFC 9457 with `code`) and
/// that it agrees with the HTTP status.
pub async fn problem(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status, "HTTP status");
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json", "content type");
    let body: serde_json::Value = response.json().await.expect("a JSON problem document");
    assert_eq!(body["type"], "about:blank", "problem type: {body}");
    assert_eq!(body["status"], status, "problem status: {body}");
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "problem title: {body}"
    );
    assert!(body["detail"].is_string(), "problem detail: {body}");
    body["code"]
        .as_str()
        .expect("the problem has a code")
        .to_owned()
}

/// The 200 body of a session request, checking that it has exactly the contract's fields.
pub async fn session_answer(response: reqwest::Response) -> SessionAnswer {
    let status = response.status();
    let body = response.text().await.expect("a body");
    assert_eq!(status, 200, "session request answered 200: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    let object = json.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["expiresAt", "reused", "sessionId", "url"], "{body}");
    SessionAnswer {
        url: json["url"].as_str().expect("url is a string").to_owned(),
        session_id: json["sessionId"]
            .as_str()
            .expect("sessionId is a string")
            .to_owned(),
        expires_at: json["expiresAt"]
            .as_str()
            .expect("expiresAt is a string")
            .parse()
            .expect("expiresAt is an RFC 3339 time"),
        reused: json["reused"].as_bool().expect("reused is a boolean"),
    }
}

impl TestApp {
    /// HTTP and the worker with Veriff's station API at `eu` (and `us`), answered within 2 s.
    pub async fn run_with_veriff(eu: &FakeVeriff, us: Option<&FakeVeriff>, extra: &[&str]) -> Self {
        let mut args = vec!["--veriff-base-url", eu.base_url.as_str()];
        if !extra.contains(&"--veriff-timeout") {
            args.extend(["--veriff-timeout", "2s"]);
        }
        if let Some(us) = us {
            args.extend(["--veriff-us-base-url", us.base_url.as_str()]);
        }
        args.extend_from_slice(extra);
        Self::start(Spawn {
            worker: true,
            args: &args,
            ..Spawn::default()
        })
        .await
    }

    /// A client whose key is stored only as its SHA-256, as the registration backend does.
    pub async fn seed_client(&self, us_enabled: bool) -> Client {
        let client = Client {
            id: Uuid::new_v4(),
            key: format!("ck_test_{}", Uuid::new_v4().simple()),
        };
        self.db()
            .client()
            .await
            .execute(
                "INSERT INTO api_clients (id, name, key_sha256, us_enabled, created_at)
                 VALUES ($1, 'test app', $2, $3, now())",
                &[&client.id, &key_digest(&client.key).as_slice(), &us_enabled],
            )
            .await
            .expect("insert api client");
        client
    }

    pub async fn revoke_client(&self, client: &Client) {
        let revoked = self
            .db()
            .client()
            .await
            .execute(
                "UPDATE api_clients SET revoked_at = now() WHERE id = $1",
                &[&client.id],
            )
            .await
            .expect("revoke api client");
        assert_eq!(revoked, 1, "the client exists");
    }

    pub async fn seed_onboarding(&self, client: &Client, spec: OnboardingSpec) -> Uuid {
        let id = Uuid::new_v4();
        let now = Utc::now();
        self.db()
            .client()
            .await
            .execute(
                "INSERT INTO onboardings (id, client_id, phone_verified_at, expires_at, completed_at, user_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &id,
                    &client.id,
                    &spec.phone_verified.then_some(now),
                    &(now + spec.expires_in),
                    &spec.completed.then_some(now),
                    &spec.user_id,
                    &now,
                ],
            )
            .await
            .expect("insert onboarding");
        id
    }

    /// A ready onboarding (`OnboardingSpec::default()`).
    pub async fn seed_ready_onboarding(&self, client: &Client) -> Uuid {
        self.seed_onboarding(client, OnboardingSpec::default())
            .await
    }

    /// The onboarding's verification: (id, region), once the API created it.
    pub async fn verification_of(&self, onboarding: Uuid) -> Option<(Uuid, String)> {
        self.db()
            .client()
            .await
            .query_opt(
                "SELECT id, region FROM verifications WHERE onboarding_id = $1",
                &[&onboarding],
            )
            .await
            .expect("verification of onboarding")
            .map(|r| (r.get(0), r.get(1)))
    }

    /// The session ids kyc stored for a verification, oldest first.
    pub async fn session_ids(&self, verification: Uuid) -> Vec<String> {
        self.db()
            .client()
            .await
            .query(
                "SELECT id FROM sessions WHERE verification_id = $1 ORDER BY created_at, id",
                &[&verification],
            )
            .await
            .expect("sessions")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// `POST /v1/auth/register/verification` with only the URL set.
    pub fn register_request(&self) -> reqwest::RequestBuilder {
        self.http.post(self.url(REGISTER))
    }

    /// `POST /v1/auth/register/verification` for this onboarding with this key.
    pub async fn register(&self, key: &str, onboarding: Uuid) -> reqwest::Response {
        self.register_request()
            .header("x-client-key", key)
            .json(&serde_json::json!({ "onboardingId": onboarding }))
            .send()
            .await
            .expect("the registration API answers")
    }

    /// The same with `x-us-env: true`.
    pub async fn register_us(&self, key: &str, onboarding: Uuid) -> reqwest::Response {
        self.register_request()
            .header("x-client-key", key)
            .header("x-us-env", "true")
            .json(&serde_json::json!({ "onboardingId": onboarding }))
            .send()
            .await
            .expect("the registration API answers")
    }

    /// A session URL, expecting a 200.
    pub async fn session(&self, key: &str, onboarding: Uuid) -> SessionAnswer {
        session_answer(self.register(key, onboarding).await).await
    }

    /// `GET /v1/auth/register/status?onboardingId=…` with this key.
    pub fn status_request(&self, key: &str, onboarding: Uuid) -> reqwest::RequestBuilder {
        self.http
            .get(self.url(&format!("{STATUS}?onboardingId={onboarding}")))
            .header("x-client-key", key)
    }
}

pub struct Polled {
    pub status: u16,
    pub etag: String,
    pub body: Option<serde_json::Value>,
}

/// A status answer: 200 with its JSON body (exactly the contract's fields), or 304 without
/// a body; both with an ETag.
pub async fn polled(response: reqwest::Response) -> Polled {
    let status = response.status().as_u16();
    assert!(status == 200 || status == 304, "status answered {status}");
    let etag = response
        .headers()
        .get(ETAG)
        .expect("an ETag")
        .to_str()
        .expect("an ASCII ETag")
        .to_owned();
    let body = if status == 200 {
        assert_eq!(
            response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let json: serde_json::Value = response.json().await.expect("a JSON status");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["reason", "reasonCode", "retry", "state", "updatedAt"],
            "{json}"
        );
        Some(json)
    } else {
        assert!(
            response.bytes().await.expect("a body").is_empty(),
            "a 304 has no body"
        );
        None
    };
    Polled { status, etag, body }
}
