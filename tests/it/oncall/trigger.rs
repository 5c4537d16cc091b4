//! `kyc trigger`: a correctly signed test webhook. Against anything but a `--dev` instance it
//! is a real KYC decision: refused without `--production --reason`, audited with them.

use kyc::veriff::integration::Integration;

use super::{OPERATOR, audit_log, kyc};
use crate::harness::seed::row_of;
use crate::harness::{Spawn, TestApp};

const EU: Integration = Integration::Eu;

/// Webhooks the receiver counted, whatever their outcome.
async fn webhooks_received(app: &TestApp) -> u64 {
    app.metrics()
        .await
        .lines()
        .filter(|line| line.starts_with("kyc_webhooks_total{"))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("a counter value")
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_non_dev_target_it_needs_production_and_a_reason_and_is_audited() {
    let app = TestApp::run().await;
    let v = app.seed_verification(EU, "s1").await;
    let url = app.base_url.clone();
    let approve = [
        "trigger",
        "decision",
        "approved",
        "--session",
        "s1",
        "--url",
    ];

    for extra in [&[][..], &["--production"][..]] {
        let mut args = approve.to_vec();
        args.push(&url);
        args.extend_from_slice(extra);
        let refused = kyc(&app, &args).await.refused();
        assert!(
            refused.stderr.contains("is not a --dev instance")
                && refused.stderr.contains("--production --reason"),
            "{extra:?}: {refused:#?}"
        );
    }
    // --reason alone is a usage error.
    let mut args = approve.to_vec();
    args.extend([url.as_str(), "--reason", "testing"]);
    kyc(&app, &args).await.refused();

    assert_eq!(webhooks_received(&app).await, 0, "no webhook was sent");
    assert_eq!(app.peek().main_count().await, 0);
    assert_eq!(app.input_count(v).await, 1, "only the session's creation");
    assert_eq!(app.row(v).await, row_of("UNVERIFIED", "NONE", None));
    assert!(audit_log(&app).await.is_empty());

    let reason = "INC-42: Veriff lost the approval webhook";
    let mut args = approve.to_vec();
    args.extend([url.as_str(), "--production", "--reason", reason]);
    let ran = kyc(&app, &args).await.ok();
    assert!(
        ran.stdout
            .contains("decision webhook for session s1: 200 OK"),
        "{ran:#?}"
    );
    assert_eq!(
        audit_log(&app).await,
        [(
            OPERATOR.to_owned(),
            "trigger".to_owned(),
            Some(format!("decision for session s1 to {url}")),
            Some(reason.to_owned()),
        )],
        "who, what, which and why"
    );
    let at_recent: bool = app
        .db()
        .client()
        .await
        .query_one(
            "SELECT at > now() - interval '1 minute' FROM audit_log",
            &[],
        )
        .await
        .expect("audit time")
        .get(0);
    assert!(at_recent, "when");
    app.wait_row(v, "VERIFIED", "NONE").await;
    app.wait_inputs(v, 2).await;
    assert_eq!(webhooks_received(&app).await, 1);

    // An event the same way.
    let w = app.seed_verification(EU, "s2").await;
    let ran = kyc(
        &app,
        &[
            "trigger",
            "event",
            "submitted",
            "--session",
            "s2",
            "--url",
            &url,
            "--production",
            "--reason",
            "INC-43",
        ],
    )
    .await
    .ok();
    assert!(
        ran.stdout.contains("event webhook for session s2: 200 OK"),
        "{ran:#?}"
    );
    app.wait_row(w, "PENDING", "NONE").await;
    let audit = audit_log(&app).await;
    assert_eq!(audit.len(), 2);
    assert_eq!(
        audit[1].2.as_deref(),
        Some(format!("event for session s2 to {url}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_dev_instance_it_sends_without_production_and_without_audit() {
    let app = TestApp::start(Spawn {
        worker: true,
        dev: true,
        ..Spawn::default()
    })
    .await;
    let v = app.seed_verification(EU, "s1").await;
    let ran = kyc(
        &app,
        &[
            "trigger",
            "decision",
            "declined",
            "--reason-code",
            "105",
            "--session",
            "s1",
            "--url",
            &app.base_url,
        ],
    )
    .await
    .ok();
    assert!(
        ran.stdout
            .contains("decision webhook for session s1: 200 OK"),
        "{ran:#?}"
    );
    // 105 blocks by default.
    app.wait_row(v, "REJECTED", "BLOCKED").await;
    assert!(
        audit_log(&app).await.is_empty(),
        "a --dev instance is not audited"
    );
}
