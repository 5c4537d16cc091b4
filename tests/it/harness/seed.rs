//! Building Veriff-shaped webhooks and the database state they apply to.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use uuid::Uuid;

use kyc::crypto::Cipher;
use kyc::storage::verifications as store;
use kyc::veriff::integration::Integration;
use kyc::veriff::signature::sign;

use super::{ARCHIVE_KEY, EU_SECRET, TestApp, eventually};

/// How long a test waits for the worker to get somewhere.
const WAIT: Duration = Duration::from_secs(20);

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

/// A `decisionTime` as Veriff formats it, `minute` minutes after a fixed instant.
pub fn time(minute: u32) -> String {
    format!(
        "2030-01-01T{:02}:{:02}:00.000Z",
        10 + minute / 60,
        minute % 60
    )
}

/// The same webhook naming a verification in `vendorData` (as kyc creates sessions).
pub fn with_vendor_data(body: &[u8], vendor_data: &str) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(body).expect("a JSON webhook");
    match json.get_mut("verification") {
        Some(decision) => decision["vendorData"] = vendor_data.into(),
        None => json["vendorData"] = vendor_data.into(),
    }
    json.to_string().into_bytes()
}

pub fn signed(body: &[u8]) -> String {
    signed_with(EU_SECRET, body)
}

pub fn signed_with(secret: &str, body: &[u8]) -> String {
    sign(&SecretString::from(secret), body)
}

/// A row of `verifications`: (state, retry, reason_code, reason).
pub type RowView = (String, String, Option<i32>, Option<String>);

/// The row expected after a decision with `reason_code` (the builders above send
/// `reason {code}` as its reason).
pub fn row_of(state: &str, retry: &str, reason_code: Option<i32>) -> RowView {
    (
        state.to_owned(),
        retry.to_owned(),
        reason_code,
        reason_code.map(|c| format!("reason {c}")),
    )
}

/// A row of `dead_letters`.
#[derive(Debug)]
pub struct DeadLetter {
    pub reason: String,
    pub kind: Option<String>,
    pub session_id: Option<String>,
    pub attempts: i32,
    pub first_failure: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    pub message_id: Option<String>,
    pub headers: serde_json::Value,
    pub body_ciphertext: Option<Vec<u8>>,
}

impl DeadLetter {
    /// The original body, decrypted with the archive key; fails the test if it is missing,
    /// unreadable, or if the stored column shows the body's personal data in plain text.
    pub fn body(&self) -> Vec<u8> {
        let stored = self.body_ciphertext.as_deref().expect("the body is kept");
        assert!(
            !stored.windows(10).any(|w| w == b"MCTESTFACE"),
            "the dead letter's body is stored in plain text"
        );
        Cipher::from_base64(ARCHIVE_KEY)
            .expect("test archive key")
            .open(stored)
            .expect("the body decrypts with the archive key")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(serde_json::Value::as_str)
    }
}

/// Verifications with one session each (in order), created as the registration API does, in
/// the database at `database_url`: for tests whose kyc runs as separate processes.
pub async fn verifications_with_sessions(
    database_url: &str,
    policy: &kyc::state_machine::Policy,
    sessions: &[String],
) -> Vec<Uuid> {
    let pool = kyc::storage::pool(database_url, 1).expect("pool");
    let mut client = pool.get().await.expect("connection");
    let mut ids = Vec::with_capacity(sessions.len());
    for session_id in sessions {
        let tx = client.transaction().await.expect("tx");
        let id = Uuid::new_v4();
        let user = format!("user-{}", id.simple());
        tx.execute(
            "INSERT INTO verifications (id, user_id, region, state, retry)
             VALUES ($1, $2, 'EU', 'UNVERIFIED', 'NONE')",
            &[&id, &user],
        )
        .await
        .expect("create");
        let locked = store::lock(&tx, id).await.expect("lock").expect("exists");
        store::record_session(&tx, &locked, session_id, "api", None, None)
            .await
            .expect("session");
        store::recompute(&tx, &locked, policy)
            .await
            .expect("recompute");
        tx.commit().await.expect("commit");
        ids.push(id);
    }
    ids
}

impl TestApp {
    /// A verification with one session, created as the registration API does.
    pub async fn seed_verification(&self, region: Integration, session_id: &str) -> Uuid {
        let id = self.seed_empty_verification(region).await;
        self.seed_session(id, session_id).await;
        id
    }

    pub async fn seed_empty_verification(&self, region: Integration) -> Uuid {
        let pool = kyc::storage::pool(&self.db().url, 1).expect("pool");
        let mut client = pool.get().await.expect("connection");
        let tx = client.transaction().await.expect("tx");
        // A user of its own: a user has at most one verification without an onboarding.
        let user = format!("user-{}", Uuid::new_v4().simple());
        let id = Uuid::new_v4();
        tx.execute(
            "INSERT INTO verifications (id, user_id, region, state, retry)
             VALUES ($1, $2, $3, 'UNVERIFIED', 'NONE')",
            &[&id, &user, &region.as_str()],
        )
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
        eventually(WAIT, &format!("{state}/{retry}"), || async {
            let row = self.row(verification).await;
            (row.0 == state && row.1 == retry).then_some(row)
        })
        .await
    }

    /// Waits until the row is exactly `expected` (reason code and reason included).
    pub async fn wait_for_row(&self, verification: Uuid, expected: &RowView) {
        eventually(WAIT, &format!("the row {expected:?}"), || async {
            (self.row(verification).await == *expected).then_some(())
        })
        .await;
    }

    /// The status kyc keeps for a Veriff session.
    pub async fn session_status(&self, session_id: &str) -> String {
        let client = self.db().client().await;
        client
            .query_one("SELECT status FROM sessions WHERE id = $1", &[&session_id])
            .await
            .expect("session row")
            .get(0)
    }

    /// POSTs a body signed with the EU secret and expects 200.
    pub async fn send(&self, kind: &str, body: &[u8]) {
        self.send_signed_with(EU_SECRET, kind, body).await;
    }

    /// POSTs a body signed with `secret` and expects 200.
    pub async fn send_signed_with(&self, secret: &str, kind: &str, body: &[u8]) {
        let response = self
            .post_webhook(
                kind,
                body,
                &[("x-hmac-signature", &signed_with(secret, body))],
            )
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
        eventually(WAIT, &format!("{expected} inputs"), || async {
            (self.input_count(verification).await == expected).then_some(())
        })
        .await;
    }

    /// Recorded inputs of every verification.
    pub async fn total_inputs(&self) -> i64 {
        let client = self.db().client().await;
        client
            .query_one("SELECT count(*) FROM inputs", &[])
            .await
            .expect("count")
            .get(0)
    }

    /// Dead letters recorded in the table, oldest first.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let client = self.db().client().await;
        client
            .query(
                "SELECT reason, kind, session_id, attempts, first_failure, last_failure, message_id,
                        headers, body_ciphertext
                 FROM dead_letters ORDER BY recorded_at",
                &[],
            )
            .await
            .expect("dead letters")
            .iter()
            .map(|r| DeadLetter {
                reason: r.get(0),
                kind: r.get(1),
                session_id: r.get(2),
                attempts: r.get(3),
                first_failure: r.get(4),
                last_failure: r.get(5),
                message_id: r.get(6),
                headers: r.get(7),
                body_ciphertext: r.get(8),
            })
            .collect()
    }

    /// Waits until exactly one dead letter is recorded, and returns it.
    pub async fn wait_dead_letter(&self) -> DeadLetter {
        let mut letters = eventually(WAIT, "a dead letter", || async {
            let letters = self.dead_letters().await;
            (!letters.is_empty()).then_some(letters)
        })
        .await;
        assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
        letters.remove(0)
    }
}
