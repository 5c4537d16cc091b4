//! Errors that say why (DESIGN.md sections 3, 4 and STYLE.md): a failed statement or a broken
//! invariant is a 500 `INTERNAL` with an opaque body and its whole cause chain in the log; only
//! a real outage is a 503 `DATABASE_UNAVAILABLE`; every response carries an `x-request-id`;
//! the worker's log lines about a delivery carry its dedup key, kind and session. Logs are
//! read from real `kyc serve` and `kyc worker` processes logging JSON.

use std::time::Duration;

use reqwest::header::{HeaderValue, RETRY_AFTER};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use kyc::veriff::integration::Integration;

use crate::harness::process::{ServeChild, WorkerProcess};
use crate::harness::proxy::Proxy;
use crate::harness::registration::{OnboardingSpec, REGISTER, problem};
use crate::harness::seed::{decision, time};
use crate::harness::{Spawn, TestApp, eventually};

/// The span fields a JSON log line was written in (the innermost span's, then its parents').
fn span_field<'a>(line: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    line["span"][field].as_str().or_else(|| {
        line["spans"]
            .as_array()?
            .iter()
            .rev()
            .find_map(|span| span[field].as_str())
    })
}

/// A 500 answer: `INTERNAL`, with nothing of the cause in the body.
async fn assert_opaque_500(response: reqwest::Response, request_id: &str, cause: &[&str]) {
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id),
        "the caller's request id is echoed"
    );
    let body = response.text().await.expect("a body");
    let json: serde_json::Value = serde_json::from_str(&body).expect("a problem document");
    assert_eq!(json["status"], 500, "{body}");
    assert_eq!(json["code"], "INTERNAL", "{body}");
    assert_eq!(json["detail"], "internal error", "{body}");
    for word in cause.iter().chain(&["db error", "column", "SQL"]) {
        assert!(
            !body.contains(word),
            "the body tells the cause ({word}): {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_is_500_internal_and_the_log_has_its_cause_chain() {
    let app = TestApp::start(Spawn {
        database: true,
        ..Spawn::default()
    })
    .await;
    let client = app.seed_client(false).await;
    let db = app.db().client().await;

    // A row the typed read refuses: a region kyc does not know (the CHECK constraint dropped).
    let odd = app.seed_ready_onboarding(&client).await;
    db.batch_execute("ALTER TABLE verifications DROP CONSTRAINT verifications_region_check")
        .await
        .expect("drop the region check");
    db.execute(
        "INSERT INTO verifications (id, onboarding_id, region, state, retry)
         VALUES ($1, $2, 'XX', 'UNVERIFIED', 'NONE')",
        &[&Uuid::new_v4(), &odd],
    )
    .await
    .expect("a verification of an unknown region");

    let (serve, logs) = ServeChild::start_logged(&app.config);
    ServeChild::wait_ready(&app.http, &serve.base_url).await;
    let register = |onboarding: Uuid, request_id: &'static str| {
        app.http
            .post(format!("{}{REGISTER}", serve.base_url))
            .header("x-client-key", &client.key)
            .header("x-request-id", request_id)
            .json(&serde_json::json!({ "onboardingId": onboarding }))
            .send()
    };
    let logged_for = |request_id: &'static str| {
        let logs = &logs;
        async move {
            logs.wait_for(&format!("the error logged for {request_id}"), |line| {
                line["level"] == "ERROR" && span_field(line, "request_id") == Some(request_id)
            })
            .await
        }
    };

    let response = register(odd, "case-region").await.expect("an answer");
    assert_opaque_500(response, "case-region", &["XX", "region"]).await;
    let line = logged_for("case-region").await;
    let error = line["error"].as_str().expect("an error field");
    assert!(
        error.contains("error deserializing column")
            && error.contains(r#"verifications.region holds "XX", which kyc does not know"#),
        "the log line carries the whole chain: {line}"
    );

    // A statement the database refuses (SQLSTATE 42703, undefined column).
    let other = app.seed_ready_onboarding(&client).await;
    db.batch_execute("ALTER TABLE verifications RENAME COLUMN state TO state_x")
        .await
        .expect("rename a column");
    let response = register(other, "case-column").await.expect("an answer");
    assert_opaque_500(response, "case-column", &["state_x"]).await;
    let line = logged_for("case-column").await;
    let error = line["error"].as_str().expect("an error field");
    assert!(
        error.starts_with("db error: ERROR: column") && error.contains("does not exist"),
        "the log line carries the database's message, not just \"db error\": {line}"
    );
    assert_eq!(line["message"], "database statement failed", "{line}");
    assert_eq!(span_field(&line, "path"), Some(REGISTER), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_database_unavailable() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let app = TestApp::start(Spawn {
        database: true,
        database_via: Some(&proxy),
        ..Spawn::default()
    })
    .await;
    let client = app.seed_client(false).await;
    // Expired: answered from the database without calling Veriff.
    let onboarding = app
        .seed_onboarding(
            &client,
            OnboardingSpec {
                expires_in: chrono::TimeDelta::minutes(-1),
                ..OnboardingSpec::default()
            },
        )
        .await;
    let expired = app.register(&client.key, onboarding).await;
    assert_eq!(problem(expired, 400).await, "ONBOARDING_EXPIRED");

    proxy.cut();
    let response = app.register(&client.key, onboarding).await;
    assert!(response.headers().contains_key("x-request-id"));
    assert!(response.headers().contains_key(RETRY_AFTER));
    assert_eq!(problem(response, 503).await, "DATABASE_UNAVAILABLE");

    proxy.restore();
    eventually(
        Duration::from_secs(20),
        "the database to be back",
        || async {
            let response = app.register(&client.key, onboarding).await;
            (response.status() == 400).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_a_request_id_a_sane_one_echoed_a_hostile_one_replaced() {
    let app = TestApp::serve().await;
    let generated = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let sane_max = "a".repeat(64);
    let too_long = "a".repeat(65);
    let sane: [&[u8]; 3] = [b"req-123_ABC", b"0", sane_max.as_bytes()];
    let hostile: [&[u8]; 7] = [
        too_long.as_bytes(),
        b"has space",
        b"semi;colon",
        b"../etc/passwd",
        b"<script>",
        b"",
        "\u{fc}ber".as_bytes(),
    ];
    let requests = [
        ("GET", "/healthz", 200),
        ("GET", "/no-such-path", 404),
        ("POST", "/webhooks/veriff/decision", 401),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (method, path, status) in requests {
        let send = |id: Option<&[u8]>| {
            let mut request = match method {
                "GET" => app.http.get(app.url(path)),
                _ => app.http.post(app.url(path)).body("{}"),
            };
            if let Some(id) = id {
                request = request.header(
                    "x-request-id",
                    HeaderValue::from_bytes(id).expect("a header value"),
                );
            }
            async move {
                let response = request.send().await.expect("an answer");
                assert_eq!(response.status(), status, "{method} {path}");
                response
                    .headers()
                    .get("x-request-id")
                    .unwrap_or_else(|| panic!("{method} {path}: no x-request-id"))
                    .to_str()
                    .expect("an ASCII request id")
                    .to_owned()
            }
        };
        let id = send(None).await;
        assert!(generated(&id), "{method} {path}: a new id: {id}");
        assert!(seen.insert(id), "each request its own id");
        for id in sane {
            let sent = std::str::from_utf8(id).expect("ASCII");
            assert_eq!(send(Some(id)).await, sent, "{method} {path}: echoed");
        }
        for id in hostile {
            let answered = send(Some(id)).await;
            assert!(
                generated(&answered) && answered.as_bytes() != id,
                "{method} {path}: {:?} replaced, got {answered}",
                String::from_utf8_lossy(id)
            );
            assert!(seen.insert(answered), "each request its own id");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_logs_a_failed_delivery_with_its_dedup_key_kind_and_session() {
    // The receiver in the test, the worker a process of its own whose JSON logs are read.
    let app = TestApp::start(Spawn {
        database: true,
        ..Spawn::default()
    })
    .await;
    let v = app.seed_verification(Integration::Eu, "s-broken").await;
    // Every insert of an input now fails (undefined column): not an outage.
    app.db()
        .client()
        .await
        .batch_execute("ALTER TABLE inputs RENAME COLUMN status TO status_x")
        .await
        .expect("rename a column");
    let (_worker, logs) = WorkerProcess::spawn_logged(&app.config);
    let body = decision("s-broken", Some("a1"), "approved", &time(1), None);
    app.send("decision", &body).await;
    let dedup_key = hex::encode(Sha256::digest(format!(
        "decision|s-broken|a1|approved|{}",
        time(1)
    )));
    let of_this_delivery = |line: &serde_json::Value| {
        span_field(line, "dedup_key") == Some(dedup_key.as_str())
            && span_field(line, "kind") == Some("decision")
            && span_field(line, "session") == Some("s-broken")
    };

    let failed = logs
        .wait_for("the failed apply's log line", |line| {
            line["message"] == "applying a webhook failed" && of_this_delivery(line)
        })
        .await;
    let error = failed["error"].as_str().expect("an error field");
    assert!(
        error.starts_with("db error: ERROR: column") && error.contains("does not exist"),
        "{failed}"
    );
    let dead = logs
        .wait_for("the APPLY_FAILED dead letter's log line", |line| {
            line["message"] == "dead-lettered" && line["reason"] == "APPLY_FAILED"
        })
        .await;
    assert!(of_this_delivery(&dead), "{dead}");
    assert_eq!(app.wait_dead_letter().await.reason, "APPLY_FAILED");
    assert_eq!(app.row(v).await.0, "UNVERIFIED");
    // No body, no personal data in any line.
    for line in logs.lines() {
        let text = line.to_string();
        assert!(
            !text.contains("MCTESTFACE") && !text.contains("192.0.2.10"),
            "{text}"
        );
    }
}
