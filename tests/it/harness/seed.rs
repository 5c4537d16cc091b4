//! Building Veriff-shaped webhooks and the database state they apply to.

use secrecy::SecretString;
use uuid::Uuid;

use kyc::storage::verifications as store;
use kyc::veriff::signature::{Integration, sign};

use super::{EU_SECRET, TestApp, eventually};

/// A decision body as Veriff sends it (with some personal data, as the real ones carry).
pub fn decision(
    session: &str,
    attempt: Option<&str>,
    status: &str,
    decision_time: &str,
    reason_code: Option<i32>,
) -> Vec<u8> {
    serde_json::json!({
        "status": "success",
        "verification": {
            "id": session,
            "attemptId": attempt,
            "vendorData": null,
            "status": status,
            "code": 9001,
            "reason": reason_code.map(|c| format!("reason {c}")),
            "reasonCode": reason_code,
            "decisionTime": decision_time,
            "person": { "firstName": "TESTY", "lastName": "MCTESTFACE", "dateOfBirth": "1990-01-31" },
            "document": { "number": "TEST0000001" }
        },
        "technicalData": { "ip": "192.0.2.10" }
    })
    .to_string()
    .into_bytes()
}

pub fn event(session: &str, attempt: Option<&str>, action: &str) -> Vec<u8> {
    serde_json::json!({ "id": session, "attemptId": attempt, "feature": "selfid", "code": 7001, "action": action })
        .to_string()
        .into_bytes()
}

pub fn signed(body: &[u8]) -> String {
    sign(&SecretString::from(EU_SECRET), body)
}

/// A row of `verifications`: (state, retry, reason_code, reason).
pub type RowView = (String, String, Option<i32>, Option<String>);

impl TestApp {
    /// A verification with one session, created as the registration API does.
    pub async fn seed_verification(&self, region: Integration, session_id: &str) -> Uuid {
        let id = self.seed_empty_verification(region).await;
        self.seed_session(id, session_id).await;
        id
    }

    pub async fn seed_empty_verification(&self, region: Integration) -> Uuid {
        let mut client = self.db().client().await;
        let tx = client.transaction().await.expect("tx");
        let id = store::create(&tx, None, Some("user-1"), region)
            .await
            .expect("create");
        tx.commit().await.expect("commit");
        id
    }

    /// A new session of a verification (it becomes the current one).
    pub async fn seed_session(&self, verification: Uuid, session_id: &str) {
        let pool = kyc::storage::pool(&self.db().url, 1).expect("pool");
        let mut client = pool.get().await.expect("connection");
        let tx = client.transaction().await.expect("tx");
        let locked = store::lock(&tx, verification)
            .await
            .expect("lock")
            .expect("exists");
        store::record_session(&tx, &locked, session_id, "api", None, None)
            .await
            .expect("session");
        store::recompute(&tx, &locked, &self.config.policy())
            .await
            .expect("recompute");
        tx.commit().await.expect("commit");
    }

    pub async fn row(&self, verification: Uuid) -> RowView {
        let client = self.db().client().await;
        let r = client
            .query_one(
                "SELECT state, retry, reason_code, reason FROM verifications WHERE id = $1",
                &[&verification],
            )
            .await
            .expect("verification row");
        (r.get(0), r.get(1), r.get(2), r.get(3))
    }

    /// Waits until the row shows `state` and `retry`.
    pub async fn wait_row(&self, verification: Uuid, state: &str, retry: &str) -> RowView {
        eventually(
            std::time::Duration::from_secs(20),
            &format!("{state}/{retry}"),
            || async {
                let row = self.row(verification).await;
                (row.0 == state && row.1 == retry).then_some(row)
            },
        )
        .await
    }

    /// POSTs a body signed with the EU secret and expects 200.
    pub async fn send(&self, kind: &str, body: &[u8]) {
        let response = self
            .post_webhook(kind, body, &[("x-hmac-signature", &signed(body))])
            .await;
        assert_eq!(response.status(), 200, "webhook accepted");
    }

    /// Recorded inputs of a verification (webhooks and session creations).
    pub async fn input_count(&self, verification: Uuid) -> i64 {
        let client = self.db().client().await;
        client
            .query_one(
                "SELECT count(*) FROM inputs WHERE verification_id = $1",
                &[&verification],
            )
            .await
            .expect("count")
            .get(0)
    }

    /// Waits until the worker has consumed everything: the main queue is empty and unacked
    /// messages are settled (the applied count stops growing is not enough: use inputs).
    pub async fn wait_inputs(&self, verification: Uuid, expected: i64) {
        eventually(
            std::time::Duration::from_secs(20),
            &format!("{expected} inputs"),
            || async { (self.input_count(verification).await == expected).then_some(()) },
        )
        .await;
    }

    /// Dead letters recorded in the table: (reason, session_id, attempts).
    pub async fn dead_letters(&self) -> Vec<(String, Option<String>, i32)> {
        let client = self.db().client().await;
        client
            .query(
                "SELECT reason, session_id, attempts FROM dead_letters ORDER BY recorded_at",
                &[],
            )
            .await
            .expect("dead letters")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }
}
