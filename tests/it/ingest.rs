//! The ingest path: Veriff → signature verified on raw bytes → RabbitMQ (confirmed) → 200.

use std::time::Duration;

use futures_util::future::join_all;
use kyc::queue::message::{
    HEADER_INTEGRATION, HEADER_KIND, HEADER_RECEIVED_AT, HEADER_SIGNATURE, header_str,
};
use kyc::veriff::signature::sign;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::harness::{
    EU_API_KEY, FIXTURES, TestApp, US_API_KEY, US_SECRET, eventually, fixture, proxy::Proxy,
};

fn kind_of(file: &str) -> &'static str {
    if file.starts_with("decision") {
        "decision"
    } else {
        "event"
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fixture_is_published_once_byte_for_byte() {
    let app = TestApp::serve().await;
    for file in FIXTURES {
        let (body, signature) = fixture(file);
        let response = app
            .post_webhook(kind_of(file), &body, &[("x-hmac-signature", &signature)])
            .await;
        assert_eq!(response.status(), 200, "{file}");
    }

    let messages = app.peek().drain_main().await;
    assert_eq!(messages.len(), FIXTURES.len());
    for (file, message) in FIXTURES.iter().zip(&messages) {
        let (body, signature) = fixture(file);
        let delivery = &message.delivery;
        assert_eq!(delivery.data, body, "{file}: body must be byte-identical");
        let props = &delivery.properties;
        assert_eq!(*props.delivery_mode(), Some(2), "{file}: persistent");
        let headers = props.headers().clone().expect("headers");
        assert_eq!(
            header_str(&headers, HEADER_SIGNATURE),
            Some(signature.as_str())
        );
        assert_eq!(header_str(&headers, HEADER_KIND), Some(kind_of(file)));
        assert_eq!(header_str(&headers, HEADER_INTEGRATION), Some("EU"));
        assert!(header_str(&headers, HEADER_RECEIVED_AT).is_some());
        assert_eq!(
            delivery.routing_key.as_str(),
            format!("veriff.{}", kind_of(file))
        );
        assert!(props.message_id().is_some(), "{file}: message_id");
    }

    // The dedup key, computed here from the contract's formula.
    let message_id = |file: &str| {
        let body = fixture(file).0;
        let message = messages
            .iter()
            .find(|m| m.delivery.data == body)
            .expect("fixture published");
        message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
    };
    let approved = "decision|11111111-1111-4111-8111-111111111111|11111111-aaaa-4aaa-8aaa-111111111111\
                    |approved|2030-01-01T10:03:21.123Z";
    let expired =
        "decision|44444444-4444-4444-8444-444444444444|-|expired|2030-01-11T09:00:05.000Z";
    assert_eq!(
        message_id("decision-approved.json"),
        Some(sha_hex(approved.as_bytes()))
    );
    assert_eq!(
        message_id("decision-expired.json"),
        Some(sha_hex(expired.as_bytes()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejected_request_publishes_nothing() {
    let app = TestApp::serve().await;
    let (body, signature) = fixture("decision-approved.json");
    let legacy = "1675a4caef1adc2c68bead5cac4c13d06ccea7094e5a2cf80a4933c5a14ce630";
    let other = sign(&SecretString::from("not-the-secret"), &body);
    let mut flipped = body.clone();
    flipped[40] ^= 0x01;

    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("no signature", body.clone(), vec![]),
        (
            "wrong secret",
            body.clone(),
            vec![("x-hmac-signature", &other)],
        ),
        (
            "flipped byte",
            flipped,
            vec![("x-hmac-signature", &signature)],
        ),
        (
            "truncated",
            body.clone(),
            vec![("x-hmac-signature", &signature[..40])],
        ),
        ("not hex", body.clone(), vec![("x-hmac-signature", "zz")]),
        ("legacy scheme", body.clone(), vec![("x-signature", legacy)]),
        (
            "headers disagree",
            body.clone(),
            vec![
                ("x-hmac-signature", &signature),
                ("vrf-hmac-signature", &other),
            ],
        ),
        (
            "unknown client",
            body.clone(),
            vec![("x-hmac-signature", &signature), ("x-auth-client", "who")],
        ),
        (
            "other integration's key",
            body.clone(),
            vec![
                ("x-hmac-signature", &signature),
                ("x-auth-client", US_API_KEY),
            ],
        ),
    ];
    for (case, body, headers) in cases {
        let response = app.post_webhook("decision", &body, &headers).await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{case}"
        );
        let problem: serde_json::Value = response.json().await.expect("problem document");
        assert_eq!(problem["code"], "INVALID_SIGNATURE", "{case}");
        assert_eq!(problem["status"], 401, "{case}");
    }

    // One byte over the limit, correctly signed: refused for its size.
    let big = vec![b' '; 1024 * 1024 + 1];
    let big_sig = sign(&SecretString::from(crate::harness::EU_SECRET), &big);
    let response = app
        .post_webhook("event", &big, &[("x-hmac-signature", &big_sig)])
        .await;
    assert_eq!(response.status(), 413);
    let problem: serde_json::Value = response.json().await.expect("problem document");
    assert_eq!(problem["code"], "PAYLOAD_TOO_LARGE");

    assert_eq!(app.peek().main_count().await, 0, "nothing may be published");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"kyc_webhooks_total{kind="decision",outcome="bad_signature"} 9"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kyc_webhooks_total{kind="event",outcome="too_large"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_at_the_limit_is_accepted() {
    let app = TestApp::serve().await;
    let body = vec![b' '; 1024 * 1024];
    let signature = sign(&SecretString::from(crate::harness::EU_SECRET), &body);
    let response = app
        .post_webhook("event", &body, &[("x-hmac-signature", &signature)])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.peek().main_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_but_unparseable_bodies_are_accepted_and_routed_as_unparsed() {
    let app = TestApp::serve().await;
    let body = b"this is not json".to_vec();
    let signature = sign(&SecretString::from(crate::harness::EU_SECRET), &body);
    let response = app
        .post_webhook("decision", &body, &[("x-hmac-signature", &signature)])
        .await;
    assert_eq!(response.status(), 200);

    let messages = app.peek().drain_main().await;
    assert_eq!(messages.len(), 1);
    let delivery = &messages[0].delivery;
    assert_eq!(delivery.routing_key.as_str(), "veriff.unparsed");
    assert_eq!(delivery.data, body);
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(sha_hex(&body).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_is_resolved_from_the_key_or_the_matching_secret() {
    let app = TestApp::serve().await;
    let body = br#"{"id":"s-us","attemptId":"a","action":"started"}"#;
    let us_signature = sign(&SecretString::from(US_SECRET), body);
    let (eu_body, eu_signature) = fixture("event-started.json");

    let with_key = app
        .post_webhook(
            "event",
            body,
            &[
                ("x-hmac-signature", &us_signature),
                ("x-auth-client", US_API_KEY),
            ],
        )
        .await;
    assert_eq!(with_key.status(), 200);
    let by_secret = app
        .post_webhook("event", body, &[("vrf-hmac-signature", &us_signature)])
        .await;
    assert_eq!(by_secret.status(), 200);
    let eu = app
        .post_webhook(
            "event",
            &eu_body,
            &[
                ("x-hmac-signature", &eu_signature.to_uppercase()),
                ("x-auth-client", EU_API_KEY),
            ],
        )
        .await;
    assert_eq!(eu.status(), 200);

    let integrations: Vec<String> = app
        .peek()
        .drain_main()
        .await
        .iter()
        .map(|m| {
            let headers = m.delivery.properties.headers().clone().expect("headers");
            header_str(&headers, HEADER_INTEGRATION)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(integrations, ["US", "US", "EU"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_webhooks_are_all_confirmed() {
    let app = TestApp::serve().await;
    let requests = (0..200).map(|i| {
        let body =
            format!(r#"{{"id":"session-{i}","attemptId":"a","action":"started"}}"#).into_bytes();
        let signature = sign(&SecretString::from(crate::harness::EU_SECRET), &body);
        let app = &app;
        async move {
            app.post_webhook("event", &body, &[("x-hmac-signature", &signature)])
                .await
                .status()
        }
    });
    let statuses = join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.peek().main_count().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_loss_answers_503_and_recovers_without_restart() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let app = TestApp::serve_via(&proxy.amqp_url()).await;
    let (body, signature) = fixture("event-started.json");
    let headers = [("x-hmac-signature", signature.as_str())];
    let post = || app.post_webhook("event", &body, &headers);
    assert_eq!(post().await.status(), 200);

    proxy.cut();
    // Once the service has noticed, nothing can be in flight to the broker: every answer is 503.
    eventually(Duration::from_secs(10), "readiness to fail", || async {
        let status = app.http.get(app.url("/readyz")).send().await.ok()?.status();
        (status == 503).then_some(())
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            post().await.status(),
            503,
            "never 200 while the broker is away"
        );
    }

    proxy.restore();
    eventually(Duration::from_secs(30), "ingest to recover", || async {
        (post().await.status() == 200).then_some(())
    })
    .await;
    app.wait_ready().await;
    // The first and the post-recovery webhooks are in the queue; the refused ones are not.
    assert_eq!(app.peek().main_count().await, 2);
}
