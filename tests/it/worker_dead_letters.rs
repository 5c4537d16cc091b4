//! Matching a webhook to its verification, and what can never be applied: retried through
//! the delay tiers or dead-lettered at once, recorded in `dead_letters` with the body kept
//! byte for byte (encrypted), and the `verifications` row left alone.

use std::time::Duration;

use kyc::queue::message::{
    HEADER_INTEGRATION, HEADER_KIND, HEADER_RECEIVED_AT, HEADER_SIGNATURE, put, rfc3339,
};
use kyc::veriff::integration::Integration;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use sha2::{Digest, Sha256};

use crate::harness::seed::{decision, event, row_of, signed, signed_with, time, with_vendor_data};
use crate::harness::{TestApp, US_SECRET};

const EU: Integration = Integration::Eu;

/// The dedup key (the message id) of a decision, from the contract's formula.
fn decision_key(session: &str, attempt: &str, status: &str, decision_time: &str) -> String {
    hex::encode(Sha256::digest(format!(
        "decision|{session}|{attempt}|{status}|{decision_time}"
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_goes_through_the_retry_tiers_then_is_dead_lettered() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s-known").await;
    let body = decision("s-ghost", Some("a1"), "approved", &time(1), None);
    app.send("decision", &body).await;

    let letter = app.wait_dead_letter().await;
    assert_eq!(letter.reason, "UNKNOWN_SESSION");
    assert_eq!(letter.session_id.as_deref(), Some("s-ghost"));
    assert_eq!(letter.kind.as_deref(), Some("decision"));
    assert_eq!(letter.attempts, 3, "two retry tiers (1s, 2s), then dead");
    let (first, last) = (
        letter.first_failure.expect("first failure recorded"),
        letter.last_failure.expect("last failure recorded"),
    );
    assert!(
        last - first >= chrono::Duration::milliseconds(2_500),
        "the message waited out both tiers between its first and last failure: {first} .. {last}"
    );
    assert_eq!(
        letter.message_id.as_deref(),
        Some(decision_key("s-ghost", "a1", "approved", &time(1)).as_str())
    );
    // The original headers travel with it, so that a replay verifies it again.
    assert_eq!(
        letter.header(HEADER_SIGNATURE),
        Some(signed(&body).as_str())
    );
    assert_eq!(letter.header(HEADER_INTEGRATION), Some("EU"));
    assert_eq!(letter.body(), body, "the original body, byte for byte");

    assert_eq!(app.worker_count("retried", "UNKNOWN_SESSION").await, 2);
    assert_eq!(
        app.worker_count("dead_lettered", "UNKNOWN_SESSION").await,
        1
    );
    assert_eq!(app.total_inputs().await, 1, "only s-known's creation");
    assert_eq!(app.row(v).await, row_of("UNVERIFIED", "NONE", None));
    // Nothing left behind in the broker: the recorder drained the dead-letter queue.
    assert_eq!(app.peek().main_count().await, 0);
    for (queue, n) in app.peek().side_queue_counts().await {
        assert_eq!(n, 0, "{queue} is empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_races_its_session_creation_is_applied_on_retry() {
    let app = TestApp::run().await;
    app.send(
        "decision",
        &decision("s-late", Some("a1"), "approved", &time(1), None),
    )
    .await;
    // The first attempt found no such session and sent it to the first delay tier...
    app.wait_worker_count("retried", "UNKNOWN_SESSION", 1).await;
    // ...then the registration API commits the session, and the retry applies it.
    let v = app.seed_verification(EU, "s-late").await;
    app.wait_row(v, "VERIFIED", "NONE").await;
    assert_eq!(app.input_count(v).await, 2);
    assert!(app.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_named_by_vendor_data_is_adopted() {
    let app = TestApp::run().await;
    // A verification whose session kyc has no record of (e.g. created before a restore).
    let v = app.seed_empty_verification(EU).await;
    let submitted = with_vendor_data(&event("s-adopted", Some("a1"), "submitted"), &v.to_string());
    app.send("event", &submitted).await;
    app.wait_row(v, "PENDING", "NONE").await;

    let approved = with_vendor_data(
        &decision("s-adopted", Some("a1"), "approved", &time(1), None),
        &v.to_string(),
    );
    app.send("decision", &approved).await;
    app.wait_row(v, "VERIFIED", "NONE").await;

    // The session is kyc's now, recorded once as an input, and later webhooks match it by id.
    assert_eq!(app.session_status("s-adopted").await, "approved");
    let client = app.db().client().await;
    let sources: Vec<String> = client
        .query(
            "SELECT source FROM inputs WHERE verification_id = $1 AND kind = 'session_created'",
            &[&v],
        )
        .await
        .expect("inputs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sources, ["adopted"]);
    app.send("event", &event("s-adopted", Some("a2"), "started"))
        .await;
    app.wait_inputs(v, 4).await;
    assert_eq!(app.worker_count("retried", "UNKNOWN_SESSION").await, 0);

    // vendorData naming no verification of kyc's does not adopt anything.
    let stranger = with_vendor_data(
        &event("s-stranger", Some("a1"), "submitted"),
        &uuid::Uuid::new_v4().to_string(),
    );
    app.send("event", &stranger).await;
    app.wait_worker_count("retried", "UNKNOWN_SESSION", 1).await;
    let sessions: i64 = client
        .query_one("SELECT count(*) FROM sessions", &[])
        .await
        .expect("sessions")
        .get(0);
    assert_eq!(sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_injected_into_the_broker_with_a_forged_signature_is_dead_lettered() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    let body = decision("s1", Some("a1"), "approved", &time(1), None);
    let mut headers = FieldTable::default();
    put(
        &mut headers,
        HEADER_SIGNATURE,
        &signed_with("not-the-shared-secret", &body),
    );
    put(&mut headers, HEADER_INTEGRATION, "EU");
    put(&mut headers, HEADER_KIND, "decision");
    put(
        &mut headers,
        HEADER_RECEIVED_AT,
        &rfc3339(chrono::Utc::now()),
    );
    let message_id = decision_key("s1", "a1", "approved", &time(1));
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message_id.as_str().into())
        .with_headers(headers);
    app.peek()
        .publish_to_exchange("veriff.decision", properties, &body)
        .await;

    let letter = app.wait_dead_letter().await;
    assert_eq!(letter.reason, "INVALID_SIGNATURE");
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.message_id.as_deref(), Some(message_id.as_str()));
    assert_eq!(letter.body(), body);
    assert_eq!(app.row(v).await, row_of("UNVERIFIED", "NONE", None));
    assert_eq!(app.input_count(v).await, 1, "never recorded");

    // The genuine webhook with the same facts is still applied afterwards.
    app.send("decision", &body).await;
    app.wait_row(v, "VERIFIED", "NONE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_without_a_session_id_is_dead_lettered_as_unparseable() {
    let app = TestApp::run().await;
    let body = br#"{"status":"success","verification":{"status":"approved","person":{"lastName":"MCTESTFACE"}}}"#;
    app.send("decision", body).await;

    let letter = app.wait_dead_letter().await;
    assert_eq!(letter.reason, "UNPARSEABLE");
    assert_eq!(letter.session_id, None);
    assert_eq!(letter.attempts, 1);
    assert_eq!(
        letter.message_id.as_deref(),
        Some(hex::encode(Sha256::digest(body)).as_str()),
        "keyed by its bytes"
    );
    assert_eq!(letter.body(), body);
    assert_eq!(app.total_inputs().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_signed_for_the_other_region_is_dead_lettered() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s-eu").await;
    let body = decision("s-eu", Some("a1"), "approved", &time(1), None);
    // The receiver accepts it (the US secret is configured) and resolves it to US.
    app.send_signed_with(US_SECRET, "decision", &body).await;

    let letter = app.wait_dead_letter().await;
    assert_eq!(letter.reason, "REGION_MISMATCH");
    assert_eq!(letter.session_id.as_deref(), Some("s-eu"));
    assert_eq!(letter.header(HEADER_INTEGRATION), Some("US"));
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.body(), body);
    assert_eq!(app.row(v).await, row_of("UNVERIFIED", "NONE", None));
    assert_eq!(app.input_count(v).await, 1);

    // And the adoption path checks the region too.
    let orphan = app.seed_empty_verification(EU).await;
    let adopted = with_vendor_data(
        &event("s-orphan", Some("a1"), "submitted"),
        &orphan.to_string(),
    );
    app.send_signed_with(US_SECRET, "event", &adopted).await;
    crate::harness::eventually(Duration::from_secs(20), "a second dead letter", || async {
        (app.dead_letters().await.len() == 2).then_some(())
    })
    .await;
    let letters = app.dead_letters().await;
    assert_eq!(letters[1].reason, "REGION_MISMATCH");
    assert_eq!(app.row(orphan).await, row_of("UNVERIFIED", "NONE", None));
    assert_eq!(app.input_count(orphan).await, 0, "not adopted");
}
