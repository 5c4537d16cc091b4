//! The worker: signed webhook → receiver → queue → worker → `verifications` row.

use kyc::veriff::signature::Integration;

use crate::harness::TestApp;
use crate::harness::seed::{decision, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_flow_reaches_verified() {
    let app = TestApp::run().await;
    let v = app.seed_verification(Integration::Eu, "sess-1").await;
    assert_eq!(app.row(v).await.0, "UNVERIFIED");

    app.send("event", &event("sess-1", Some("a1"), "started"))
        .await;
    app.send("event", &event("sess-1", Some("a1"), "submitted"))
        .await;
    app.wait_row(v, "PENDING", "NONE").await;
    app.send(
        "decision",
        &decision(
            "sess-1",
            Some("a1"),
            "approved",
            "2030-01-01T10:00:00Z",
            None,
        ),
    )
    .await;
    app.wait_row(v, "VERIFIED", "NONE").await;
}
