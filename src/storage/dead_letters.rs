//! The `dead_letters` table: what the recorder drains `kyc.dead` into, and what `kyc dlq`
//! works on. A letter needs action until it is replayed or purged; purging keeps the row
//! (who can tell what happened otherwise) but deletes the body.

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
    pub purged_at: Option<DateTime<Utc>>,
    pub headers: serde_json::Value,
    /// Encrypted raw body; `None` once past retention or purged.
    #[serde(skip)]
    pub body_ciphertext: Option<Vec<u8>>,
}

/// A dead letter as the recorder found it in `kyc.dead`.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub id: Uuid,
    pub reason: String,
    pub kind: Option<String>,
    pub session_id: Option<String>,
    pub attempts: i32,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
    pub message_id: Option<String>,
    pub headers: serde_json::Value,
    pub body_ciphertext: Vec<u8>,
}

impl NewDeadLetter {
    /// PostgreSQL refuses NUL in `text` (22021) and `\u0000` in `jsonb` (22P05); a message
    /// from the untrusted queue may carry them anywhere. They become U+FFFD, so that one such
    /// message cannot block the queue. The raw body is kept as it came (encrypted bytes).
    pub(crate) fn sanitised(mut self) -> Self {
        fn clean(s: &mut String) {
            if s.contains('\0') {
                *s = s.replace('\0', "\u{FFFD}");
            }
        }
        fn clean_json(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) => clean(s),
                serde_json::Value::Array(items) => items.iter_mut().for_each(clean_json),
                serde_json::Value::Object(map) => {
                    let entries = std::mem::take(map);
                    for (mut key, mut value) in entries {
                        clean(&mut key);
                        clean_json(&mut value);
                        map.insert(key, value);
                    }
                }
                _ => {}
            }
        }
        clean(&mut self.reason);
        for field in [&mut self.kind, &mut self.session_id, &mut self.message_id] {
            if let Some(s) = field.as_mut() {
                clean(s);
            }
        }
        clean_json(&mut self.headers);
        self
    }
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

const COLUMNS: &str = "id, reason, kind, session_id, attempts, first_failure, last_failure, message_id, recorded_at, replayed_at, purged_at, headers, body_ciphertext";

/// Letters that still need action.
const OPEN: &str = "replayed_at IS NULL AND purged_at IS NULL";

fn from_row(r: &tokio_postgres::Row) -> Result<DeadLetter, tokio_postgres::Error> {
    Ok(DeadLetter {
        id: r.try_get(0)?,
        reason: r.try_get(1)?,
        kind: r.try_get(2)?,
        session_id: r.try_get(3)?,
        attempts: r.try_get(4)?,
        first_failure: r.try_get(5)?,
        last_failure: r.try_get(6)?,
        message_id: r.try_get(7)?,
        recorded_at: r.try_get(8)?,
        replayed_at: r.try_get(9)?,
        purged_at: r.try_get(10)?,
        headers: r.try_get(11)?,
        body_ciphertext: r.try_get(12)?,
    })
}

fn from_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    rows.iter().map(from_row).collect()
}

/// Records a dead letter; one already recorded under this id (a redelivery) is left alone.
/// Returns whether it was new.
pub async fn insert(
    db: &impl GenericClient,
    letter: &NewDeadLetter,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = db
        .execute(
            "INSERT INTO dead_letters (id, reason, kind, session_id, attempts, first_failure, last_failure,
                 message_id, headers, body_ciphertext)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO NOTHING",
            &[
                &letter.id,
                &letter.reason,
                &letter.kind,
                &letter.session_id,
                &letter.attempts,
                &letter.first_failure,
                &letter.last_failure,
                &letter.message_id,
                &letter.headers,
                &letter.body_ciphertext,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// The newest dead letters first, optionally of one reason; `all` includes those replayed
/// or purged.
pub async fn list(
    db: &impl GenericClient,
    reason: Option<&str>,
    all: bool,
    limit: i64,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let open = if all { "true" } else { OPEN };
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM dead_letters
                 WHERE ($1::text IS NULL OR reason = $1) AND {open}
                 ORDER BY recorded_at DESC, id LIMIT $2"
            ),
            &[&reason, &limit],
        )
        .await?;
    from_rows(&rows)
}

/// How many letters need action.
pub(crate) async fn count_open(db: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    let row = db
        .query_one(
            &format!("SELECT count(*) FROM dead_letters WHERE {OPEN}"),
            &[],
        )
        .await?;
    row.try_get(0)
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
    row.as_ref().map(from_row).transpose()
}

/// The dead letters a selection names; `open_only` leaves out those replayed or purged.
pub async fn select(
    db: &impl GenericClient,
    selection: &Selection,
    open_only: bool,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let open = if open_only { OPEN } else { "true" };
    let sql = |condition: &str| {
        format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE {condition} AND {open} ORDER BY recorded_at, id"
        )
    };
    let rows = match selection {
        Selection::Ids(ids) => db.query(&sql("id = ANY($1)"), &[ids]).await?,
        Selection::Session(session) => db.query(&sql("session_id = $1"), &[session]).await?,
        Selection::Reason(reason) => db.query(&sql("reason = $1"), &[reason]).await?,
        Selection::Before(time) => db.query(&sql("recorded_at < $1"), &[time]).await?,
        Selection::All => db.query(&sql("true"), &[]).await?,
    };
    from_rows(&rows)
}

pub(crate) async fn mark_replayed(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE dead_letters SET replayed_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    Ok(())
}

/// Purges letters: the body (personal data) is deleted, the row stays as a record that the
/// letter was dealt with. Returns how many were purged now.
pub async fn purge(db: &impl GenericClient, ids: &[Uuid]) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        "UPDATE dead_letters SET purged_at = now(), body_ciphertext = NULL
         WHERE id = ANY($1) AND purged_at IS NULL",
        &[&ids],
    )
    .await
}
