//! The `dead_letters` table that `kyc dlq` works on, and the audit log of on-call actions.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub reason: String,
    pub kind: Option<String>,
    pub session_id: Option<String>,
    pub attempts: i32,
    pub first_failure: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    pub message_id: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub headers: serde_json::Value,
    /// Encrypted raw body; `None` once past retention.
    #[serde(skip)]
    pub body_ciphertext: Option<Vec<u8>>,
}

/// Which dead letters a command is about.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<Uuid>),
    Session(String),
    Reason(String),
    All,
    Before(DateTime<Utc>),
}

const COLUMNS: &str = "id, reason, kind, session_id, attempts, first_failure, last_failure, message_id, recorded_at, replayed_at, headers, body_ciphertext";

fn from_row(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        reason: r.get(1),
        kind: r.get(2),
        session_id: r.get(3),
        attempts: r.get(4),
        first_failure: r.get(5),
        last_failure: r.get(6),
        message_id: r.get(7),
        recorded_at: r.get(8),
        replayed_at: r.get(9),
        headers: r.get(10),
        body_ciphertext: r.get(11),
    }
}

/// The newest dead letters first, optionally of one reason.
pub async fn list(
    db: &impl GenericClient,
    reason: Option<&str>,
    limit: i64,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM dead_letters WHERE ($1::text IS NULL OR reason = $1)
                 ORDER BY recorded_at DESC, id LIMIT $2"
            ),
            &[&reason, &limit],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

pub async fn get(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<DeadLetter>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// The dead letters a selection names; `pending_only` leaves out those already replayed.
pub async fn select(
    db: &impl GenericClient,
    selection: &Selection,
    pending_only: bool,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let pending = if pending_only {
        "AND replayed_at IS NULL"
    } else {
        ""
    };
    let sql = |condition: &str| {
        format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE {condition} {pending} ORDER BY recorded_at, id"
        )
    };
    let rows = match selection {
        Selection::Ids(ids) => db.query(&sql("id = ANY($1)"), &[ids]).await?,
        Selection::Session(session) => db.query(&sql("session_id = $1"), &[session]).await?,
        Selection::Reason(reason) => db.query(&sql("reason = $1"), &[reason]).await?,
        Selection::Before(time) => db.query(&sql("recorded_at < $1"), &[time]).await?,
        Selection::All => db.query(&sql("true"), &[]).await?,
    };
    Ok(rows.iter().map(from_row).collect())
}

pub async fn mark_replayed(db: &impl GenericClient, id: Uuid) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE dead_letters SET replayed_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    Ok(())
}

pub async fn delete(db: &impl GenericClient, ids: &[Uuid]) -> Result<u64, tokio_postgres::Error> {
    db.execute("DELETE FROM dead_letters WHERE id = ANY($1)", &[&ids])
        .await
}

/// Records who did what and why (e.g. reading a raw body, sending a signed test decision).
pub async fn audit(
    db: &impl GenericClient,
    actor: &str,
    action: &str,
    subject: Option<&str>,
    reason: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO audit_log (actor, action, subject, reason) VALUES ($1, $2, $3, $4)",
        &[&actor, &action, &subject, &reason],
    )
    .await?;
    Ok(())
}
