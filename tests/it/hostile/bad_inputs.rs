//! Bad inputs against the webhook receiver, the registration API and the status endpoints,
//! each with its documented answer (the table below, also in docs/SECURITY.md): never a 5xx,
//! the service still up and ready after all of them, and nothing published or spooled for a
//! request that fails verification (the main queue is emptied and looked at after each case).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::TimeDelta;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use uuid::Uuid;

use super::raw::{self, RawAnswer};
use super::{claims, token, token_signed_with};
use crate::harness::fake_veriff::FakeVeriff;
use crate::harness::registration::{OnboardingSpec, REGISTER, STATUS};
use crate::harness::seed::signed;
use crate::harness::{EU_API_KEY, Spawn, TestApp, US_API_KEY, fixture};

const DECISION: &str = "/webhooks/veriff/decision";
const EVENT: &str = "/webhooks/veriff/event";
const USER_STATUS: &str = "/v1/user/verification/status";
const MIB: usize = 1024 * 1024;

/// The documented answer to a bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// This status, as a problem document with this `code`.
    Problem(u16, &'static str),
    /// 405 `METHOD_NOT_ALLOWED` with this `Allow`.
    NotAllowed(&'static str),
    /// 200, and the body published with this routing key (the worker decides the rest).
    Published(&'static str),
    /// 200 from the registration or status API.
    Ok,
    /// 304 from a status endpoint.
    NotModified,
    /// The HTTP parser's own answer to a malformed request, before any handler.
    Parser(u16),
}

impl Answer {
    fn documented(self) -> String {
        match self {
            Answer::Problem(status, code) => format!("{status} `{code}`"),
            Answer::NotAllowed(allow) => format!("405 `METHOD_NOT_ALLOWED`, `Allow: {allow}`"),
            Answer::Published(key) => format!("200, published as `{key}`"),
            Answer::Ok => "200".to_owned(),
            Answer::NotModified => "304".to_owned(),
            Answer::Parser(status) => format!("{status} from the HTTP parser, before any handler"),
        }
    }
}

enum Send {
    Http(Request),
    Raw { bytes: Vec<u8>, close_write: bool },
}

struct Request {
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

fn http(method: Method, path: &str) -> Request {
    Request {
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: None,
    }
}

fn post(path: &str) -> Request {
    http(Method::POST, path)
}

fn get(path: &str) -> Request {
    http(Method::GET, path)
}

impl Request {
    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = Some(body.as_ref().to_vec());
        self
    }

    fn json(self, body: impl AsRef<[u8]>) -> Self {
        self.header("content-type", "application/json").body(body)
    }

    /// Adds X-HMAC-SIGNATURE over the body as it will be sent.
    fn signed(self) -> Self {
        let signature = signed(self.body.as_deref().unwrap_or_default());
        self.header("x-hmac-signature", signature)
    }

    fn send(self) -> Send {
        Send::Http(self)
    }
}

fn raw_request(bytes: Vec<u8>) -> Send {
    Send::Raw {
        bytes,
        close_write: false,
    }
}

struct Case {
    name: &'static str,
    send: Send,
    answer: Answer,
}

/// What came back, from either kind of request.
struct Got {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn deliver(app: &TestApp, send: Send) -> (Got, Option<Vec<u8>>) {
    match send {
        Send::Http(request) => {
            let mut builder = app.http.request(request.method, app.url(&request.path));
            for (name, value) in &request.headers {
                builder = builder.header(
                    HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                    HeaderValue::from_bytes(value).expect("a header value"),
                );
            }
            if let Some(body) = &request.body {
                builder = builder.body(body.clone());
            }
            let response = builder.send().await.expect("the server answers");
            let status = Some(response.status().as_u16());
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = response.bytes().await.expect("a body").to_vec();
            (
                Got {
                    status,
                    headers,
                    body,
                },
                request.body,
            )
        }
        Send::Raw { bytes, close_write } => {
            let addr = app.base_url.trim_start_matches("http://").to_owned();
            let got = match raw::exchange(&addr, &bytes, close_write).await {
                RawAnswer::Response { status, head, body } => Got {
                    status: Some(status),
                    headers: head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                        .collect(),
                    body,
                },
                RawAnswer::Closed => Got {
                    status: None,
                    headers: Vec::new(),
                    body: Vec::new(),
                },
            };
            (got, None)
        }
    }
}

/// Checks one answer; returns what is wrong with it.
fn check(answer: Answer, got: &Got) -> Result<(), String> {
    let problem = |status: u16, code: &str| -> Result<(), String> {
        if got.status != Some(status) {
            return Err(format!("status {:?}, not {status}", got.status));
        }
        if got.header("content-type") != Some("application/problem+json") {
            return Err(format!("content type {:?}", got.header("content-type")));
        }
        let body: serde_json::Value = serde_json::from_slice(&got.body)
            .map_err(|e| format!("not a JSON problem document: {e}"))?;
        if body["code"] != code || body["status"] != status || body["type"] != "about:blank" {
            return Err(format!("problem {body}"));
        }
        Ok(())
    };
    let status = |expected: u16| match got.status {
        Some(s) if s == expected => Ok(()),
        other => Err(format!("status {other:?}, not {expected}")),
    };
    match answer {
        Answer::Problem(s, code) => problem(s, code),
        Answer::NotAllowed(allow) => {
            problem(405, "METHOD_NOT_ALLOWED")?;
            match got.header("allow") {
                Some(a) if a.eq_ignore_ascii_case(allow) => Ok(()),
                other => Err(format!("Allow {other:?}, not {allow}")),
            }
        }
        Answer::Published(_) | Answer::Ok => status(200),
        Answer::NotModified => status(304),
        Answer::Parser(s) => status(s),
    }
}

/// The body of a decision from the fixture, re-serialised with one change.
fn decision_with(change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (body, _) = fixture("decision-approved.json");
    let mut json: serde_json::Value = serde_json::from_slice(&body).expect("fixture is JSON");
    change(&mut json["verification"]);
    json.to_string().into_bytes()
}

fn alg_none(user: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims(user).to_string());
    format!("{header}.{claims}.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_documented_answer_and_nothing_unverified_is_published() {
    let veriff = FakeVeriff::start().await;
    let app = TestApp::start(Spawn {
        database: true,
        args: &[
            "--veriff-base-url",
            &veriff.base_url,
            "--client-rate-limit",
            "0",
        ],
        ..Spawn::default()
    })
    .await;
    let client = app.seed_client(false).await;
    let other = app.seed_client(false).await;
    let revoked = app.seed_client(false).await;
    app.revoke_client(&revoked).await;
    let ready = app.seed_ready_onboarding(&client).await;
    let fresh = app.seed_ready_onboarding(&client).await;
    let others = app.seed_ready_onboarding(&other).await;
    let expired = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                expires_in: TimeDelta::hours(-1),
                ..OnboardingSpec::default()
            },
        )
        .await;
    let unverified_phone = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                phone_verified: false,
                ..OnboardingSpec::default()
            },
        )
        .await;
    let completed = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                completed: true,
                ..OnboardingSpec::default()
            },
        )
        .await;
    let key = client.key.as_str();
    let status_of = |onboarding: Uuid| format!("{STATUS}?onboardingId={onboarding}");
    let etag = app
        .status_request(key, ready)
        .send()
        .await
        .expect("status")
        .headers()
        .get("etag")
        .expect("an ETag")
        .to_str()
        .expect("ASCII")
        .to_owned();
    let user = Uuid::new_v4().to_string();
    let bearer = format!("Bearer {}", token(&user));

    let (approved, approved_sig) = fixture("decision-approved.json");
    let (started, _) = fixture("event-started.json");
    let registration =
        |id: serde_json::Value| serde_json::json!({ "onboardingId": id }).to_string();
    let mut exactly_limit = approved.clone();
    exactly_limit.resize(MIB, b' ');
    let mut over_limit = approved.clone();
    over_limit.resize(MIB + 1, b' ');
    let nested = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
    let nested_inside = {
        let mut body = br#"{"verification":{"id":"s-nested","status":"approved","x":"#.to_vec();
        body.extend(&nested);
        body.extend(b"}}");
        body
    };
    let mut bad_utf8_in_name = approved.clone();
    let at = bad_utf8_in_name
        .windows(5)
        .position(|w| w == b"TESTY")
        .expect("the fixture names a person");
    bad_utf8_in_name[at..at + 2].copy_from_slice(b"\xc3\x28");
    let signed_line = |body: &[u8]| format!("x-hmac-signature: {}", signed(body));
    let head_200k = format!("x-padding: {}", "a".repeat(200 * 1024));
    let many_headers: Vec<String> = (0..100).map(|i| format!("x-h{i}: v")).collect();

    let cases = vec![
        // --- webhook headers
        Case { name: "webhook: no signature header", send: post(DECISION).json(&approved).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-HMAC-SIGNATURE empty", send: post(DECISION).json(&approved).header("x-hmac-signature", "").send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-HMAC-SIGNATURE only spaces", send: post(DECISION).json(&approved).header("x-hmac-signature", "   ").send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: signature of 63 hex digits", send: post(DECISION).json(&approved).header("x-hmac-signature", &approved_sig[..63]).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: signature of 65 hex digits", send: post(DECISION).json(&approved).header("x-hmac-signature", format!("{approved_sig}0")).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: signature not hex", send: post(DECISION).json(&approved).header("x-hmac-signature", "z".repeat(64)).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: signature with another secret", send: post(DECISION).json(&approved).header("x-hmac-signature", crate::harness::seed::signed_with("not-the-secret", &approved)).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: signature in uppercase hex", send: post(DECISION).json(&approved).header("x-hmac-signature", approved_sig.to_uppercase()).send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: X-HMAC-SIGNATURE twice, both valid", send: post(DECISION).json(&approved).header("x-hmac-signature", &approved_sig).header("x-hmac-signature", &approved_sig).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-HMAC-SIGNATURE twice, the second wrong", send: post(DECISION).json(&approved).header("x-hmac-signature", &approved_sig).header("x-hmac-signature", "0".repeat(64)).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: two signatures in one comma-separated value", send: post(DECISION).json(&approved).header("x-hmac-signature", format!("{approved_sig}, {approved_sig}")).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: VRF-HMAC-SIGNATURE only", send: post(DECISION).json(&approved).header("vrf-hmac-signature", &approved_sig).send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: X-HMAC- and VRF-HMAC-SIGNATURE disagree", send: post(DECISION).json(&approved).header("x-hmac-signature", &approved_sig).header("vrf-hmac-signature", "0".repeat(64)).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: legacy X-SIGNATURE only", send: post(DECISION).json(&approved).header("x-signature", &approved_sig).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-AUTH-CLIENT unknown", send: post(DECISION).json(&approved).signed().header("x-auth-client", "who-knows").send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-AUTH-CLIENT empty", send: post(DECISION).json(&approved).signed().header("x-auth-client", "").send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-AUTH-CLIENT of the EU integration", send: post(DECISION).json(&approved).signed().header("x-auth-client", EU_API_KEY).send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: X-AUTH-CLIENT of the US integration, EU signature", send: post(DECISION).json(&approved).signed().header("x-auth-client", US_API_KEY).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-HMAC-SIGNATURE not ASCII", send: post(DECISION).json(&approved).header("x-hmac-signature", b"\xe9\xe9\xe9").send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-AUTH-CLIENT not ASCII", send: post(DECISION).json(&approved).signed().header("x-auth-client", b"\xff\xfe").send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: X-HMAC-SIGNATURE of 64 KiB", send: post(DECISION).json(&approved).header("x-hmac-signature", "a".repeat(64 * 1024)).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: a 64 KiB unrelated header, signed", send: post(DECISION).json(&approved).signed().header("x-padding", "a".repeat(64 * 1024)).send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: a NUL byte in a header value (raw)", send: raw_request(raw::request(&format!("POST {DECISION} HTTP/1.1"), &["x-hmac-signature: a\0b".to_owned(), "content-length: 0".to_owned()], b"")), answer: Answer::Parser(400) },
        Case { name: "webhook: 100 header lines (raw)", send: raw_request(raw::request(&format!("POST {DECISION} HTTP/1.1"), &many_headers, b"")), answer: Answer::Parser(431) },
        Case { name: "webhook: a 200 KiB request head (raw)", send: raw_request(raw::request(&format!("POST {DECISION} HTTP/1.1"), &[head_200k], b"")), answer: Answer::Parser(431) },
        // --- webhook bodies
        Case { name: "webhook: empty body, unsigned", send: post(DECISION).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: empty body, signed", send: post(DECISION).body(b"").signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: body truncated after signing", send: post(DECISION).json(&approved[..approved.len() / 2]).header("x-hmac-signature", &approved_sig).send(), answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: body shorter than its Content-Length, then the client closes (raw)", send: Send::Raw { bytes: raw::request(&format!("POST {DECISION} HTTP/1.1"), &[signed_line(&approved), format!("content-length: {}", approved.len())], &approved[..100]), close_write: true }, answer: Answer::Problem(401, "INVALID_SIGNATURE") },
        Case { name: "webhook: exactly 1 MiB, signed", send: post(DECISION).json(&exactly_limit).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: 1 MiB + 1 byte, signed", send: post(DECISION).json(&over_limit).signed().send(), answer: Answer::Problem(413, "PAYLOAD_TOO_LARGE") },
        Case { name: "webhook: 1 MiB + 1 byte chunked, no Content-Length, signed (raw)", send: raw_request(raw::request(&format!("POST {DECISION} HTTP/1.1"), &[signed_line(&over_limit), "transfer-encoding: chunked".to_owned()], &raw::chunked(&over_limit))), answer: Answer::Problem(413, "PAYLOAD_TOO_LARGE") },
        Case { name: "webhook: Content-Length of 2 GiB declared (raw)", send: raw_request(raw::request(&format!("POST {DECISION} HTTP/1.1"), &[signed_line(b""), "content-length: 2147483648".to_owned()], b"")), answer: Answer::Problem(413, "PAYLOAD_TOO_LARGE") },
        Case { name: "webhook: Content-Length not a number (raw)", send: raw_request(raw::request(&format!("POST {DECISION} HTTP/1.1"), &["content-length: ten".to_owned()], b"0123456789")), answer: Answer::Parser(400) },
        Case { name: "webhook: two different Content-Lengths (raw)", send: raw_request(raw::request(&format!("POST {DECISION} HTTP/1.1"), &["content-length: 2".to_owned(), "content-length: 3".to_owned()], b"{}}")), answer: Answer::Parser(400) },
        Case { name: "webhook: Content-Length and chunked together, signed over the chunked body (raw)", send: raw_request(raw::request(&format!("POST {DECISION} HTTP/1.1"), &["content-length: 5".to_owned(), "transfer-encoding: chunked".to_owned(), signed_line(&approved)], &raw::chunked(&approved))), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: 100,000 levels of nested arrays, signed", send: post(DECISION).json(&nested).signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: deep nesting in a field kyc does not read, signed", send: post(DECISION).json(&nested_inside).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: invalid UTF-8, signed", send: post(DECISION).json(b"\xff\xfe{\"verification\":\xc3\x28}").signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: invalid UTF-8 in a personal-data string, signed", send: post(DECISION).json(&bad_utf8_in_name).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: NUL bytes in the body, signed", send: post(DECISION).json(b"{\"verification\":{\"id\":\"s\0\",\"status\":\"approved\"}}\0").signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: an escaped NUL in the session id, signed", send: post(DECISION).json(decision_with(|v| v["id"] = "s\u{0}1".into())).signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: attemptId and decisionTime as numbers, signed", send: post(DECISION).json(decision_with(|v| { v["attemptId"] = 7.into(); v["decisionTime"] = 1_767_261_600.into(); })).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: the session id as a number, signed", send: post(DECISION).json(decision_with(|v| v["id"] = 12_345.into())).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: the status as a number, signed", send: post(DECISION).json(decision_with(|v| v["status"] = 9001.into())).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: an unknown status, signed", send: post(DECISION).json(decision_with(|v| v["status"] = "frobnicated".into())).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: reasonCode as a string, signed", send: post(DECISION).json(decision_with(|v| { v["status"] = "declined".into(); v["reasonCode"] = "105".into(); })).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: vendorData an object, person an array, signed", send: post(DECISION).json(decision_with(|v| { v["vendorData"] = serde_json::json!({"a": 1}); v["person"] = serde_json::json!([1, 2]); })).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: verification an array, signed", send: post(DECISION).json(br#"{"verification":["s1","a1",null,"approved"]}"#).signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: a JSON array, signed", send: post(EVENT).json(br#"["s1","a1",null,"started"]"#).signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: JSON null, signed", send: post(DECISION).json(b"null").signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: an event body on the decision endpoint, signed", send: post(DECISION).json(&started).signed().send(), answer: Answer::Published("veriff.unparsed") },
        Case { name: "webhook: an unknown event action, signed", send: post(EVENT).json(br#"{"id":"s-ev","action":"teleported","code":7999}"#).signed().send(), answer: Answer::Published("veriff.event") },
        Case { name: "webhook: Content-Type text/plain, signed", send: post(DECISION).header("content-type", "text/plain").body(&approved).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook: no Content-Type, signed", send: post(DECISION).body(&approved).signed().send(), answer: Answer::Published("veriff.decision") },
        // --- paths and methods
        Case { name: "GET on the decision webhook", send: get(DECISION).send(), answer: Answer::NotAllowed("POST") },
        Case { name: "PUT on the event webhook", send: http(Method::PUT, EVENT).json(&started).signed().send(), answer: Answer::NotAllowed("POST") },
        Case { name: "DELETE on the session endpoint", send: http(Method::DELETE, REGISTER).header("x-client-key", key).send(), answer: Answer::NotAllowed("POST") },
        Case { name: "POST on the onboarding status", send: post(&status_of(ready)).header("x-client-key", key).send(), answer: Answer::NotAllowed("GET") },
        Case { name: "PATCH on the user session endpoint", send: http(Method::PATCH, "/v1/user/verification").header("authorization", &bearer).send(), answer: Answer::NotAllowed("GET") },
        Case { name: "OPTIONS on the user status", send: http(Method::OPTIONS, USER_STATUS).send(), answer: Answer::NotAllowed("GET") },
        Case { name: "POST on /healthz", send: post("/healthz").send(), answer: Answer::NotAllowed("GET") },
        Case { name: "POST on /openapi.json", send: post("/openapi.json").send(), answer: Answer::NotAllowed("GET") },
        Case { name: "a lowercase method, `post` (raw)", send: raw_request(raw::request(&format!("post {DECISION} HTTP/1.1"), &["content-length: 0".to_owned()], b"")), answer: Answer::NotAllowed("POST") },
        Case { name: "webhook path with a trailing slash, signed", send: post(&format!("{DECISION}/")).json(&approved).signed().send(), answer: Answer::Problem(404, "NOT_FOUND") },
        Case { name: "webhook path in another case, signed", send: post("/Webhooks/Veriff/Decision").json(&approved).signed().send(), answer: Answer::Problem(404, "NOT_FOUND") },
        Case { name: "an unknown webhook kind, signed", send: post("/webhooks/veriff/other").json(&approved).signed().send(), answer: Answer::Problem(404, "NOT_FOUND") },
        Case { name: "webhook path with a doubled slash (raw)", send: raw_request(raw::request(&format!("POST /{DECISION} HTTP/1.1"), &[signed_line(&approved), format!("content-length: {}", approved.len())], &approved)), answer: Answer::Problem(404, "NOT_FOUND") },
        Case { name: "webhook path with a dot segment (raw)", send: raw_request(raw::request("POST /webhooks/veriff/event/../decision HTTP/1.1", &[signed_line(&approved), format!("content-length: {}", approved.len())], &approved)), answer: Answer::Problem(404, "NOT_FOUND") },
        Case { name: "webhook path percent-encoded, signed", send: post("/webhooks/veriff/%64ecision").json(&approved).signed().send(), answer: Answer::Published("veriff.decision") },
        Case { name: "webhook with a query string, signed", send: post(&format!("{DECISION}?debug=1&x=%00")).json(&approved).signed().send(), answer: Answer::Published("veriff.decision") },
        // --- x-client-key
        Case { name: "session: no x-client-key", send: post(REGISTER).json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "session: x-client-key empty", send: post(REGISTER).header("x-client-key", "").json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "session: x-client-key unknown", send: post(REGISTER).header("x-client-key", "ck_nobody").json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "session: x-client-key revoked", send: post(REGISTER).header("x-client-key", &revoked.key).json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "session: x-client-key not ASCII", send: post(REGISTER).header("x-client-key", b"ck_\xe9").json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "session: x-client-key of 64 KiB", send: post(REGISTER).header("x-client-key", "k".repeat(64 * 1024)).json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "session: x-client-key twice (valid, then unknown)", send: post(REGISTER).header("x-client-key", key).header("x-client-key", "ck_nobody").json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "session: a bearer token instead of x-client-key", send: post(REGISTER).header("authorization", &bearer).json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "session: the key in the Authorization header", send: post(REGISTER).header("authorization", format!("Bearer {key}")).json(registration(ready.to_string().into())).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        // --- session bodies
        Case { name: "session: no body", send: post(REGISTER).header("x-client-key", key).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: body not JSON", send: post(REGISTER).header("x-client-key", key).json("onboardingId=1").send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: body JSON null", send: post(REGISTER).header("x-client-key", key).json("null").send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: body an array holding the id", send: post(REGISTER).header("x-client-key", key).json(format!("[\"{ready}\"]")).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: onboardingId a number", send: post(REGISTER).header("x-client-key", key).json(registration(42.into())).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: onboardingId an array", send: post(REGISTER).header("x-client-key", key).json(registration(serde_json::json!([ready.to_string()]))).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: onboardingId null", send: post(REGISTER).header("x-client-key", key).json(registration(serde_json::Value::Null)).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: onboardingId empty", send: post(REGISTER).header("x-client-key", key).json(registration("".into())).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: onboardingId of 10 KB", send: post(REGISTER).header("x-client-key", key).json(registration("a".repeat(10_000).into())).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: onboardingId of 1 MB", send: post(REGISTER).header("x-client-key", key).json(registration("a".repeat(1_000_000).into())).send(), answer: Answer::Problem(413, "PAYLOAD_TOO_LARGE") },
        Case { name: "session: onboardingId without hyphens", send: post(REGISTER).header("x-client-key", key).json(registration(ready.simple().to_string().into())).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: onboardingId as a URN", send: post(REGISTER).header("x-client-key", key).json(registration(ready.urn().to_string().into())).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: onboardingId with an escaped NUL", send: post(REGISTER).header("x-client-key", key).json(registration(format!("{ready}\u{0}").into())).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "session: an unknown onboarding", send: post(REGISTER).header("x-client-key", key).json(registration(Uuid::new_v4().to_string().into())).send(), answer: Answer::Problem(404, "ONBOARDING_NOT_FOUND") },
        Case { name: "session: another client's onboarding", send: post(REGISTER).header("x-client-key", key).json(registration(others.to_string().into())).send(), answer: Answer::Problem(404, "ONBOARDING_NOT_FOUND") },
        Case { name: "session: a completed onboarding", send: post(REGISTER).header("x-client-key", key).json(registration(completed.to_string().into())).send(), answer: Answer::Problem(404, "ONBOARDING_NOT_FOUND") },
        Case { name: "session: an expired onboarding", send: post(REGISTER).header("x-client-key", key).json(registration(expired.to_string().into())).send(), answer: Answer::Problem(400, "ONBOARDING_EXPIRED") },
        Case { name: "session: a phone not verified", send: post(REGISTER).header("x-client-key", key).json(registration(unverified_phone.to_string().into())).send(), answer: Answer::Problem(400, "PHONE_NOT_VERIFIED") },
        Case { name: "session: x-us-env: true for a client without US", send: post(REGISTER).header("x-client-key", key).header("x-us-env", "TRUE ").json(registration(fresh.to_string().into())).send(), answer: Answer::Problem(400, "US_ENV_NOT_AVAILABLE") },
        Case { name: "session: the valid request, with unknown fields", send: post(REGISTER).header("x-client-key", key).json(serde_json::json!({"onboardingId": fresh, "extra": {"a": [1]}}).to_string()).send(), answer: Answer::Ok },
        // --- the onboarding status
        Case { name: "status: no x-client-key", send: get(&status_of(ready)).send(), answer: Answer::Problem(498, "INVALID_CLIENT_KEY") },
        Case { name: "status: no onboardingId", send: get(STATUS).header("x-client-key", key).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "status: onboardingId not a UUID", send: get(&format!("{STATUS}?onboardingId=42")).header("x-client-key", key).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "status: onboardingId twice", send: get(&format!("{STATUS}?onboardingId={ready}&onboardingId={others}")).header("x-client-key", key).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "status: a broken percent-encoding", send: get(&format!("{STATUS}?onboardingId=%ZZ{ready}")).header("x-client-key", key).send(), answer: Answer::Problem(400, "INVALID_REQUEST") },
        Case { name: "status: another client's onboarding", send: get(&status_of(others)).header("x-client-key", key).send(), answer: Answer::Problem(404, "ONBOARDING_NOT_FOUND") },
        Case { name: "status: an unknown onboarding", send: get(&status_of(Uuid::new_v4())).header("x-client-key", key).send(), answer: Answer::Problem(404, "ONBOARDING_NOT_FOUND") },
        Case { name: "status: If-None-Match the current ETag", send: get(&status_of(ready)).header("x-client-key", key).header("if-none-match", &etag).send(), answer: Answer::NotModified },
        Case { name: "status: If-None-Match the weak form W/\"…\"", send: get(&status_of(ready)).header("x-client-key", key).header("if-none-match", format!("W/{etag}")).send(), answer: Answer::NotModified },
        Case { name: "status: If-None-Match a list holding it", send: get(&status_of(ready)).header("x-client-key", key).header("if-none-match", format!("\"other\", W/{etag}")).send(), answer: Answer::NotModified },
        Case { name: "status: If-None-Match *", send: get(&status_of(ready)).header("x-client-key", key).header("if-none-match", "*").send(), answer: Answer::NotModified },
        Case { name: "status: If-None-Match unquoted", send: get(&status_of(ready)).header("x-client-key", key).header("if-none-match", etag.trim_matches('"')).send(), answer: Answer::Ok },
        Case { name: "status: If-None-Match of 64 KiB", send: get(&status_of(ready)).header("x-client-key", key).header("if-none-match", "\"a\",".repeat(16 * 1024)).send(), answer: Answer::Ok },
        Case { name: "status: Prefer: wait=abc with the current ETag", send: get(&status_of(ready)).header("x-client-key", key).header("if-none-match", &etag).header("prefer", "wait=abc").send(), answer: Answer::NotModified },
        Case { name: "status: Prefer: wait=-1 with the current ETag", send: get(&status_of(ready)).header("x-client-key", key).header("if-none-match", &etag).header("prefer", "wait=-1").send(), answer: Answer::NotModified },
        // --- bearer tokens
        Case { name: "user status: no Authorization", send: get(USER_STATUS).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: Basic credentials", send: get(USER_STATUS).header("authorization", "Basic dXNlcjpwYXNz").send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: a valid token in the Token scheme", send: get(USER_STATUS).header("authorization", format!("Token {}", token(&user))).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: Bearer without a token", send: get(USER_STATUS).header("authorization", "Bearer").send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: a valid token, scheme in capitals (BEARER)", send: get(USER_STATUS).header("authorization", format!("BEARER {}", token(&user))).send(), answer: Answer::Ok },
        Case { name: "user status: alg none", send: get(USER_STATUS).header("authorization", format!("Bearer {}", alg_none(&user))).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: signed with another secret", send: get(USER_STATUS).header("authorization", format!("Bearer {}", token_signed_with("another-secret", &claims(&user)))).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: expired", send: get(USER_STATUS).header("authorization", format!("Bearer {}", token_signed_with(crate::harness::JWT_SECRET, &serde_json::json!({"sub": user, "aud": crate::harness::JWT_AUDIENCE, "exp": 1_000_000_000})))).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: another audience", send: get(USER_STATUS).header("authorization", format!("Bearer {}", token_signed_with(crate::harness::JWT_SECRET, &serde_json::json!({"sub": user, "aud": "someone-else", "exp": 4_000_000_000_i64})))).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: no exp", send: get(USER_STATUS).header("authorization", format!("Bearer {}", token_signed_with(crate::harness::JWT_SECRET, &serde_json::json!({"sub": user, "aud": crate::harness::JWT_AUDIENCE})))).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: an empty sub", send: get(USER_STATUS).header("authorization", format!("Bearer {}", token(""))).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: the token in the query string", send: get(&format!("{USER_STATUS}?access_token={}", token(&user))).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: the token in x-client-key", send: get(USER_STATUS).header("x-client-key", token(&user)).send(), answer: Answer::Problem(401, "UNAUTHORIZED") },
        Case { name: "user status: a valid token", send: get(USER_STATUS).header("authorization", &bearer).send(), answer: Answer::Ok },
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());

    let peek = app.peek();
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for case in cases {
        let (got, sent) = deliver(&app, case.send).await;
        let mut wrong = check(case.answer, &got).err();
        if got.status.is_some_and(|s| s >= 500) {
            wrong = Some(format!("a server error: {:?}", got.status));
        }
        // Drained after every case: what is there now, this case published.
        let published = peek.drain_main().await;
        match (case.answer, published.as_slice()) {
            (Answer::Published(key), [message]) => {
                if message.delivery.routing_key.as_str() != key {
                    wrong.get_or_insert(format!("routed as {}", message.delivery.routing_key));
                }
                if sent.is_some_and(|b| b != message.delivery.data) {
                    wrong.get_or_insert("published a body other than the one sent".to_owned());
                }
            }
            (Answer::Published(_), other) => {
                wrong.get_or_insert(format!("{} messages published, not 1", other.len()));
            }
            (_, []) => {}
            (_, other) => {
                wrong.get_or_insert(format!("{} messages published, not 0", other.len()));
            }
        }
        if let Some(wrong) = wrong {
            failures.push(format!(
                "{}: expected {}: {wrong} (body {})",
                case.name,
                case.answer.documented(),
                String::from_utf8_lossy(&got.body[..got.body.len().min(300)])
            ));
        }
        rows.push(format!("| {} | {} |", case.name, case.answer.documented()));
    }
    assert!(
        failures.is_empty(),
        "{} cases answered otherwise:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing went to the spool either (the broker was there throughout).
    let spooled: i64 = app
        .db()
        .client()
        .await
        .query_one("SELECT count(*) FROM spool", &[])
        .await
        .expect("spool count")
        .get(0);
    assert_eq!(spooled, 0, "nothing spooled");

    // Still up and ready, and still taking webhooks.
    app.wait_ready().await;
    let healthz = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.status(), 200);
    let response = app
        .post_webhook(
            "decision",
            &approved,
            &[("x-hmac-signature", &approved_sig)],
        )
        .await;
    assert_eq!(response.status(), 200, "a good webhook after the bad ones");

    // The table of docs/SECURITY.md is this one.
    let security =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SECURITY.md"))
            .expect("docs/SECURITY.md");
    let missing: Vec<&String> = rows
        .iter()
        .filter(|r| !security.contains(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/SECURITY.md lacks these rows of the bad-input table:\n{}\n",
        missing
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
