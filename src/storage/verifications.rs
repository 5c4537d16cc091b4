//! The verification aggregate in PostgreSQL: sessions, recorded inputs, and the row that is
//! recomputed from them. Every writer holds the verification's row lock (`lock`) for the
//! whole transaction, so concurrent inputs cannot lose an update.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::state_machine::{
    self, Decision, DecisionStatus, Event, EventAction, Input, Observation, Policy, Row,
};
use crate::veriff::signature::Integration;

/// The kinds of recorded input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    SessionCreated,
    Decision,
    Event,
}

impl InputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::SessionCreated => "session_created",
            InputKind::Decision => "decision",
            InputKind::Event => "event",
        }
    }
}

/// An input about to be recorded: its non-personal facts, and the encrypted raw body.
#[derive(Debug, Clone)]
pub struct NewInput {
    pub dedup_key: String,
    pub kind: InputKind,
    pub session_id: String,
    pub attempt_id: Option<String>,
    /// Decision status or event action, as Veriff sent it.
    pub status: Option<String>,
    pub decision_time: Option<DateTime<Utc>>,
    pub reason_code: Option<i32>,
    pub reason: Option<String>,
    pub source: &'static str,
    pub integration: Option<Integration>,
    pub signature: Option<String>,
    pub body_ciphertext: Option<Vec<u8>>,
    pub received_at: Option<DateTime<Utc>>,
}

/// A locked verification.
#[derive(Debug, Clone)]
pub struct Locked {
    pub id: Uuid,
    pub region: String,
    row: (String, String, Option<i32>, Option<String>),
}

/// Runs a statement prepared once per connection: most of the worker's round trips.
async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.query(&statement, params).await
}

async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, params).await
}

impl Locked {
    pub fn state(&self) -> &str {
        &self.row.0
    }

    pub fn retry(&self) -> &str {
        &self.row.1
    }
}

/// The verifications the given sessions belong to, for the sessions kyc knows.
pub async fn session_owners(
    tx: &Transaction<'_>,
    session_ids: &[&str],
) -> Result<HashMap<String, Uuid>, tokio_postgres::Error> {
    let rows = query(
        tx,
        "SELECT id, verification_id FROM sessions WHERE id = ANY($1)",
        &[&session_ids],
    )
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Locks several verifications, always in id order so that concurrent batches cannot
/// deadlock. Ids that name no verification are left out.
pub async fn lock_many(
    tx: &Transaction<'_>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Locked>, tokio_postgres::Error> {
    let rows = query(
        tx,
        "SELECT id, region, state, retry, reason_code, reason FROM verifications
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            let locked = Locked {
                id,
                region: r.get(1),
                row: (r.get(2), r.get(3), r.get(4), r.get(5)),
            };
            (id, locked)
        })
        .collect())
}

/// Takes the verification's row lock for the rest of the transaction.
pub async fn lock(tx: &Transaction<'_>, id: Uuid) -> Result<Option<Locked>, tokio_postgres::Error> {
    Ok(lock_many(tx, &[id]).await?.remove(&id))
}

/// Creates a fresh verification row (UNVERIFIED / NONE).
pub async fn create(
    tx: &Transaction<'_>,
    onboarding_id: Option<Uuid>,
    user_id: Option<&str>,
    region: Integration,
) -> Result<Uuid, tokio_postgres::Error> {
    let id = Uuid::new_v4();
    execute(
        tx,
        "INSERT INTO verifications (id, onboarding_id, user_id, region, state, retry)
         VALUES ($1, $2, $3, $4, 'UNVERIFIED', 'NONE')",
        &[&id, &onboarding_id, &user_id, &region.as_str()],
    )
    .await?;
    Ok(id)
}

/// Records a session of a locked verification together with its `session_created` input.
pub async fn record_session(
    tx: &Transaction<'_>,
    verification: &Locked,
    session_id: &str,
    source: &'static str,
    url_ciphertext: Option<&[u8]>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), tokio_postgres::Error> {
    execute(
        tx,
        "INSERT INTO sessions (id, verification_id, url_ciphertext, expires_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
        &[&session_id, &verification.id, &url_ciphertext, &expires_at],
    )
    .await?;
    let input = NewInput {
        dedup_key: crate::veriff::dedup::session_created_key(session_id),
        kind: InputKind::SessionCreated,
        session_id: session_id.to_owned(),
        attempt_id: None,
        status: None,
        decision_time: None,
        reason_code: None,
        reason: None,
        source,
        integration: None,
        signature: None,
        body_ciphertext: None,
        received_at: None,
    };
    record_input(tx, verification, &input).await?;
    Ok(())
}

/// Records an input unless its dedup key is already recorded. Returns whether it was new.
pub async fn record_input(
    tx: &Transaction<'_>,
    verification: &Locked,
    input: &NewInput,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = execute(
            tx,
            "INSERT INTO inputs (verification_id, dedup_key, kind, session_id, attempt_id, status,
                 decision_time, reason_code, reason, source, integration, signature, body_ciphertext, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (dedup_key) DO NOTHING",
            &[
                &verification.id,
                &input.dedup_key,
                &input.kind.as_str(),
                &input.session_id,
                &input.attempt_id,
                &input.status,
                &input.decision_time,
                &input.reason_code,
                &input.reason,
                &input.source,
                &input.integration.map(Integration::as_str),
                &input.signature,
                &input.body_ciphertext,
                &input.received_at,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Recomputes the row and the session statuses from the whole history; writes and announces
/// the row only when it changed. Returns whether it changed.
pub async fn recompute(
    tx: &Transaction<'_>,
    verification: &Locked,
    policy: &Policy,
) -> Result<bool, tokio_postgres::Error> {
    let history = history(tx, verification.id).await?;
    let row = state_machine::compute(&history, policy);
    refresh_session_statuses(tx, &history).await?;
    let Row {
        state,
        retry,
        reason_code,
        reason,
    } = row;
    let next = (
        state.as_str().to_owned(),
        retry.as_str().to_owned(),
        reason_code,
        reason,
    );
    if next == verification.row {
        return Ok(false);
    }
    execute(
        tx,
        "WITH changed AS (
             UPDATE verifications SET state = $2, retry = $3, reason_code = $4, reason = $5, updated_at = now()
             WHERE id = $1 RETURNING id
         )
         SELECT pg_notify('verification_state', id::text) FROM changed",
        &[&verification.id, &next.0, &next.1, &next.2, &next.3],
    )
    .await?;
    Ok(true)
}

/// Keeps `sessions.status` (what the registration API reads to reuse a session) in step.
async fn refresh_session_statuses(
    tx: &Transaction<'_>,
    history: &[Input],
) -> Result<(), tokio_postgres::Error> {
    let (ids, statuses): (Vec<&str>, Vec<&str>) = history
        .iter()
        .filter_map(|input| match input {
            Input::SessionCreated { session_id, .. } => {
                state_machine::session_status(history, session_id)
                    .map(|status| (session_id.as_str(), status.as_str()))
            }
            Input::Observed { .. } => None,
        })
        .unzip();
    execute(
        tx,
        "UPDATE sessions s SET status = t.status FROM unnest($1::text[], $2::text[]) AS t(id, status)
         WHERE s.id = t.id AND s.status <> t.status",
        &[&ids, &statuses],
    )
    .await?;
    Ok(())
}

/// The verification's recorded inputs, in recording order, as the state machine reads them.
pub async fn history(tx: &Transaction<'_>, id: Uuid) -> Result<Vec<Input>, tokio_postgres::Error> {
    let rows = query(
        tx,
        "SELECT kind, session_id, attempt_id, status, decision_time, reason_code, reason, source
         FROM inputs WHERE verification_id = $1 ORDER BY id",
        &[&id],
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind: &str = r.get(0);
            let session_id: String = r.get(1);
            let attempt_id: Option<String> = r.get(2);
            let status: Option<String> = r.get(3);
            let observation = match kind {
                "session_created" => {
                    let source: &str = r.get(7);
                    return Some(Input::SessionCreated {
                        session_id,
                        adopted: source == "adopted",
                    });
                }
                "decision" => Observation::Decision(Decision {
                    attempt_id,
                    // Unknown statuses are dead-lettered, never recorded.
                    status: DecisionStatus::parse(status.as_deref()?)?,
                    decision_time: r.get(4),
                    reason_code: r.get(5),
                    reason: r.get(6),
                }),
                _ => Observation::Event(Event {
                    attempt_id,
                    action: EventAction::parse(status.as_deref().unwrap_or_default()),
                }),
            };
            Some(Input::Observed {
                session_id,
                observation,
            })
        })
        .collect())
}

/// A recorded webhook, as `kyc replay` republishes it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub dedup_key: String,
    pub kind: String,
    pub session_id: String,
    pub source: String,
    pub integration: Option<String>,
    pub signature: Option<String>,
    pub body_ciphertext: Option<Vec<u8>>,
    pub received_at: Option<DateTime<Utc>>,
}

/// The webhook inputs of a session, or those recorded in `[since, until)`, in recording order.
pub async fn recorded(
    db: &impl deadpool_postgres::GenericClient,
    session: Option<&str>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<Recorded>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT dedup_key, kind, session_id, source, integration, signature, body_ciphertext, received_at
             FROM inputs
             WHERE kind IN ('decision', 'event')
               AND ($1::text IS NULL OR session_id = $1)
               AND ($2::timestamptz IS NULL OR recorded_at >= $2)
               AND ($3::timestamptz IS NULL OR recorded_at < $3)
             ORDER BY id",
            &[&session, &since, &until],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Recorded {
            dedup_key: r.get(0),
            kind: r.get(1),
            session_id: r.get(2),
            source: r.get(3),
            integration: r.get(4),
            signature: r.get(5),
            body_ciphertext: r.get(6),
            received_at: r.get(7),
        })
        .collect())
}
