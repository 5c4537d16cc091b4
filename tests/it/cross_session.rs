//! The cross-session rule through the worker (DESIGN.md section 6): a final decision of an
//! older session still counts, and among approvals and declines of different sessions the
//! later `decisionTime` wins, whatever order the webhooks arrive in.

use kyc::veriff::integration::Integration;

use crate::harness::TestApp;
use crate::harness::seed::{RowView, decision, row_of, time};

/// A verification whose older session `old` is approved at minute `approved_at` and whose
/// newer (current) session is declined (102) at minute `declined_at`; the webhooks arrive
/// decline first or approval first. Returns the row once both are applied.
async fn older_approval_and_newer_decline(
    app: &TestApp,
    name: &str,
    approved_at: u32,
    declined_at: u32,
    decline_first: bool,
) -> RowView {
    let (old, new) = (format!("{name}-old"), format!("{name}-new"));
    let v = app.seed_verification(Integration::Eu, &old).await;
    app.seed_session(v, &new).await;
    let approval = decision(&old, Some("a1"), "approved", &time(approved_at), None);
    let decline = decision(&new, Some("b1"), "declined", &time(declined_at), Some(102));
    let order = match decline_first {
        true => [decline, approval],
        false => [approval, decline],
    };
    for body in &order {
        app.send("decision", body).await;
    }
    app.wait_inputs(v, 4).await;
    app.row(v).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_sessions_approval_verifies_only_when_decided_after_the_newer_decline() {
    let app = TestApp::run().await;
    let declined = row_of("REJECTED", "NEW_SESSION", Some(102));
    for decline_first in [true, false] {
        let order = if decline_first {
            "decline first"
        } else {
            "approval first"
        };
        // Approved (older session) at minute 2, declined (newer session) at minute 1.
        let later = older_approval_and_newer_decline(
            &app,
            &format!("later-{decline_first}"),
            2,
            1,
            decline_first,
        )
        .await;
        assert_eq!(
            later,
            row_of("VERIFIED", "NONE", None),
            "{order}: the later approval verifies"
        );
        // Approved at minute 1, declined at minute 2.
        let earlier = older_approval_and_newer_decline(
            &app,
            &format!("earlier-{decline_first}"),
            1,
            2,
            decline_first,
        )
        .await;
        assert_eq!(
            earlier, declined,
            "{order}: an approval before the newer decline does not verify"
        );
    }
}
