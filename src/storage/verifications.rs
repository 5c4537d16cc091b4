//! The verification aggregate in PostgreSQL: sessions, recorded inputs, and the row that is
//! recomputed from them. Every writer holds the verification's row lock (`lock`) for the
//! whole transaction, so concurrent inputs cannot lose an update.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::state_machine::{
    self, Decision, DecisionStatus, Event, EventAction, Input, Observation, Policy, Row,
};
use crate::veriff::Kind;
use crate::veriff::integration::Integration;

/// The kinds of recorded input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputKind {
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
pub(crate) struct NewInput {
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

/// A locked verification, with its row as it was when locked.
#[derive(Debug, Clone)]
pub struct Locked {
    pub id: Uuid,
    pub region: Integration,
    pub row: Row,
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

/// The verifications the given sessions belong to, for the sessions kyc knows.
pub(crate) async fn session_owners(
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
pub(crate) async fn lock_many(
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
    rows.iter()
        .map(|r| {
            let id: Uuid = r.try_get(0)?;
            let locked = Locked {
                id,
                region: r.try_get(1)?,
                row: Row {
                    state: r.try_get(2)?,
                    retry: r.try_get(3)?,
                    reason_code: r.try_get(4)?,
                    reason: r.try_get(5)?,
                },
            };
            Ok((id, locked))
        })
        .collect()
}

/// Takes the verification's row lock for the rest of the transaction.
pub async fn lock(tx: &Transaction<'_>, id: Uuid) -> Result<Option<Locked>, tokio_postgres::Error> {
    Ok(lock_many(tx, &[id]).await?.remove(&id))
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
pub(crate) async fn record_input(
    tx: &Transaction<'_>,
    verification: &Locked,
    input: &NewInput,
) -> Result<bool, tokio_postgres::Error> {
    let new = record_inputs(tx, &[(verification.id, input)]).await?;
    Ok(new.contains(&input.dedup_key))
}

/// Records several inputs in one statement, each unless its dedup key is already recorded
/// (the same key twice in `inputs` counts once). Returns the dedup keys that were new.
pub(crate) async fn record_inputs(
    tx: &Transaction<'_>,
    inputs: &[(Uuid, &NewInput)],
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let verifications: Vec<Uuid> = inputs.iter().map(|(v, _)| *v).collect();
    let keys: Vec<&str> = inputs.iter().map(|(_, i)| i.dedup_key.as_str()).collect();
    let kinds: Vec<&str> = inputs.iter().map(|(_, i)| i.kind.as_str()).collect();
    let sessions: Vec<&str> = inputs.iter().map(|(_, i)| i.session_id.as_str()).collect();
    let attempts: Vec<Option<&str>> = inputs
        .iter()
        .map(|(_, i)| i.attempt_id.as_deref())
        .collect();
    let statuses: Vec<Option<&str>> = inputs.iter().map(|(_, i)| i.status.as_deref()).collect();
    let times: Vec<Option<DateTime<Utc>>> = inputs.iter().map(|(_, i)| i.decision_time).collect();
    let codes: Vec<Option<i32>> = inputs.iter().map(|(_, i)| i.reason_code).collect();
    let reasons: Vec<Option<&str>> = inputs.iter().map(|(_, i)| i.reason.as_deref()).collect();
    let sources: Vec<&str> = inputs.iter().map(|(_, i)| i.source).collect();
    let integrations: Vec<Option<&str>> = inputs
        .iter()
        .map(|(_, i)| i.integration.map(Integration::as_str))
        .collect();
    let signatures: Vec<Option<&str>> =
        inputs.iter().map(|(_, i)| i.signature.as_deref()).collect();
    let bodies: Vec<Option<&[u8]>> = inputs
        .iter()
        .map(|(_, i)| i.body_ciphertext.as_deref())
        .collect();
    let received: Vec<Option<DateTime<Utc>>> = inputs.iter().map(|(_, i)| i.received_at).collect();
    let rows = query(
        tx,
        "INSERT INTO inputs (verification_id, dedup_key, kind, session_id, attempt_id, status,
             decision_time, reason_code, reason, source, integration, signature, body_ciphertext, received_at)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
             $7::timestamptz[], $8::int4[], $9::text[], $10::text[], $11::text[], $12::text[],
             $13::bytea[], $14::timestamptz[])
         ON CONFLICT (dedup_key) DO NOTHING
         RETURNING dedup_key",
        &[
            &verifications,
            &keys,
            &kinds,
            &sessions,
            &attempts,
            &statuses,
            &times,
            &codes,
            &reasons,
            &sources,
            &integrations,
            &signatures,
            &bodies,
            &received,
        ],
    )
    .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Recomputes the row, the current session and the session statuses from the whole history;
/// writes and announces the row only when it changed. Returns the new row when it changed.
pub async fn recompute(
    tx: &Transaction<'_>,
    verification: &Locked,
    policy: &Policy,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let mut changed = recompute_many(tx, &[verification], policy).await?;
    Ok(changed.pop().map(|(_, row)| row))
}

/// [`recompute`] for several locked verifications at once, in a fixed number of statements
/// whatever their number: one read of every history, one write each of the session
/// statuses, the current sessions and the changed rows (each changed row announced).
/// Returns the rows that changed.
pub(crate) async fn recompute_many(
    tx: &Transaction<'_>,
    verifications: &[&Locked],
    policy: &Policy,
) -> Result<Vec<(Uuid, Row)>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = verifications.iter().map(|v| v.id).collect();
    let histories = histories(tx, &ids).await?;
    let empty = Vec::new();
    let (mut session_ids, mut session_statuses) = (Vec::new(), Vec::new());
    let (mut current_ids, mut currents) = (Vec::new(), Vec::new());
    let mut changed = Vec::new();
    for verification in verifications {
        let history = histories.get(&verification.id).unwrap_or(&empty);
        for input in history {
            if let Input::SessionCreated { session_id, .. } = input
                && let Some(status) = state_machine::session_status(history, session_id)
            {
                session_ids.push(session_id.as_str());
                session_statuses.push(status);
            }
        }
        current_ids.push(verification.id);
        currents.push(state_machine::current_session(history));
        let row = state_machine::compute(history, policy);
        if row != verification.row {
            changed.push((verification.id, row));
        }
    }
    // Keeps `sessions.status` (what the registration API reads to reuse a session) in step.
    execute(
        tx,
        "UPDATE sessions s SET status = t.status FROM unnest($1::text[], $2::text[]) AS t(id, status)
         WHERE s.id = t.id AND s.status <> t.status",
        &[&session_ids, &session_statuses],
    )
    .await?;
    execute(
        tx,
        "UPDATE verifications v SET current_session_id = t.current
         FROM unnest($1::uuid[], $2::text[]) AS t(id, current)
         WHERE v.id = t.id AND v.current_session_id IS DISTINCT FROM t.current",
        &[&current_ids, &currents],
    )
    .await?;
    if !changed.is_empty() {
        let changed_ids: Vec<Uuid> = changed.iter().map(|(id, _)| *id).collect();
        let states: Vec<state_machine::State> = changed.iter().map(|(_, r)| r.state).collect();
        let retries: Vec<state_machine::Retry> = changed.iter().map(|(_, r)| r.retry).collect();
        let codes: Vec<Option<i32>> = changed.iter().map(|(_, r)| r.reason_code).collect();
        let reasons: Vec<Option<&str>> = changed.iter().map(|(_, r)| r.reason.as_deref()).collect();
        execute(
            tx,
            "WITH changed AS (
                 UPDATE verifications v SET state = t.state, retry = t.retry,
                     reason_code = t.reason_code, reason = t.reason, updated_at = now()
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::text[])
                     AS t(id, state, retry, reason_code, reason)
                 WHERE v.id = t.id
                 RETURNING v.id
             )
             SELECT pg_notify('verification_state', id::text) FROM changed",
            &[&changed_ids, &states, &retries, &codes, &reasons],
        )
        .await?;
    }
    Ok(changed)
}

/// One recorded input with its non-personal facts, as `kyc verification show` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordedInput {
    pub id: i64,
    pub kind: String,
    pub session_id: String,
    pub attempt_id: Option<String>,
    /// Decision status or event action, as Veriff sent it.
    pub status: Option<String>,
    pub decision_time: Option<DateTime<Utc>>,
    pub reason_code: Option<i32>,
    /// Veriff's reason text: it may quote the document, so it is never shown.
    #[serde(skip)]
    pub reason: Option<String>,
    pub source: String,
    pub integration: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
    pub recorded_at: DateTime<Utc>,
    /// Whether the raw body is still kept (it is cleared after KYC_ARCHIVE_RETENTION).
    pub body_kept: bool,
}

impl RecordedInput {
    /// The input as the state machine reads it; `None` for what it does not take (a decision
    /// status kyc does not know is dead-lettered, never recorded, so this is defensive).
    pub(crate) fn as_input(&self) -> Option<Input> {
        let session_id = self.session_id.clone();
        let observation = match self.kind.as_str() {
            "session_created" => {
                return Some(Input::SessionCreated {
                    session_id,
                    adopted: self.source == "adopted",
                });
            }
            "decision" => Observation::Decision(Decision {
                attempt_id: self.attempt_id.clone(),
                status: DecisionStatus::parse(self.status.as_deref()?)?,
                decision_time: self.decision_time,
                reason_code: self.reason_code,
                reason: self.reason.clone(),
            }),
            _ => Observation::Event(Event {
                attempt_id: self.attempt_id.clone(),
                action: EventAction::parse(self.status.as_deref().unwrap_or_default()),
            }),
        };
        Some(Input::Observed {
            session_id,
            observation,
        })
    }
}

/// Every recorded input of a verification, in recording order.
pub async fn inputs(
    db: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Vec<RecordedInput>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "SELECT id, kind, session_id, attempt_id, status, decision_time, reason_code, reason,
                    source, integration, received_at, recorded_at, body_ciphertext IS NOT NULL
             FROM inputs WHERE verification_id = $1 ORDER BY id",
        )
        .await?;
    let rows = db.query(&statement, &[&id]).await?;
    rows.iter()
        .map(|r| {
            Ok(RecordedInput {
                id: r.try_get(0)?,
                kind: r.try_get(1)?,
                session_id: r.try_get(2)?,
                attempt_id: r.try_get(3)?,
                status: r.try_get(4)?,
                decision_time: r.try_get(5)?,
                reason_code: r.try_get(6)?,
                reason: r.try_get(7)?,
                source: r.try_get(8)?,
                integration: r.try_get(9)?,
                received_at: r.try_get(10)?,
                recorded_at: r.try_get(11)?,
                body_kept: r.try_get(12)?,
            })
        })
        .collect()
}

/// The verification's recorded inputs, in recording order, as the state machine reads them.
pub async fn history(tx: &Transaction<'_>, id: Uuid) -> Result<Vec<Input>, tokio_postgres::Error> {
    Ok(inputs(tx, id)
        .await?
        .iter()
        .filter_map(RecordedInput::as_input)
        .collect())
}

/// The histories of several verifications, in one read.
async fn histories(
    tx: &Transaction<'_>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Input>>, tokio_postgres::Error> {
    let rows = query(
        tx,
        "SELECT verification_id, kind, session_id, attempt_id, status, decision_time, reason_code,
                reason, source
         FROM inputs WHERE verification_id = ANY($1) ORDER BY verification_id, id",
        &[&ids],
    )
    .await?;
    let mut histories: HashMap<Uuid, Vec<Input>> = HashMap::with_capacity(ids.len());
    for r in &rows {
        let recorded = RecordedInput {
            id: 0,
            kind: r.try_get(1)?,
            session_id: r.try_get(2)?,
            attempt_id: r.try_get(3)?,
            status: r.try_get(4)?,
            decision_time: r.try_get(5)?,
            reason_code: r.try_get(6)?,
            reason: r.try_get(7)?,
            source: r.try_get(8)?,
            integration: None,
            received_at: None,
            recorded_at: Utc::now(),
            body_kept: false,
        };
        if let Some(input) = recorded.as_input() {
            histories.entry(r.try_get(0)?).or_default().push(input);
        }
    }
    Ok(histories)
}

/// The verification a Veriff session belongs to.
pub(crate) async fn of_session(
    db: &impl deadpool_postgres::GenericClient,
    session: &str,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT verification_id FROM sessions WHERE id = $1",
            &[&session],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose()
}

/// Verification ids in id order after `after`, `limit` at a time: to walk every one.
pub(crate) async fn ids_after(
    db: &impl deadpool_postgres::GenericClient,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT id FROM verifications WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// A verification row as `kyc verification show` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerificationRow {
    pub id: Uuid,
    pub onboarding_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub region: &'static str,
    pub state: &'static str,
    pub retry: &'static str,
    pub reason_code: Option<i32>,
    #[serde(skip)]
    pub reason: Option<String>,
    pub current_session_id: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

pub async fn row(
    db: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<VerificationRow>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT id, onboarding_id, user_id, region, state, retry, reason_code, reason,
                    current_session_id, updated_at, created_at
             FROM verifications WHERE id = $1",
            &[&id],
        )
        .await?;
    row.map(|r| {
        let region: Integration = r.try_get(3)?;
        let state: state_machine::State = r.try_get(4)?;
        let retry: state_machine::Retry = r.try_get(5)?;
        Ok(VerificationRow {
            id: r.try_get(0)?,
            onboarding_id: r.try_get(1)?,
            user_id: r.try_get(2)?,
            region: region.as_str(),
            state: state.as_str(),
            retry: retry.as_str(),
            reason_code: r.try_get(6)?,
            reason: r.try_get(7)?,
            current_session_id: r.try_get(8)?,
            updated_at: r.try_get(9)?,
            created_at: r.try_get(10)?,
        })
    })
    .transpose()
}

/// A session as `kyc verification show` lists it (its URL is never read here).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionRow {
    pub id: String,
    pub status: &'static str,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub reconciled_at: Option<DateTime<Utc>>,
}

pub async fn sessions(
    db: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Vec<SessionRow>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT id, status, expires_at, created_at, reconciled_at FROM sessions
             WHERE verification_id = $1 ORDER BY created_at, id",
            &[&id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let status: state_machine::SessionStatus = r.try_get(1)?;
            Ok(SessionRow {
                id: r.try_get(0)?,
                status: status.as_str(),
                expires_at: r.try_get(2)?,
                created_at: r.try_get(3)?,
                reconciled_at: r.try_get(4)?,
            })
        })
        .collect()
}

/// A recorded webhook, as `kyc replay` republishes it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub dedup_key: String,
    pub kind: Kind,
    pub session_id: String,
    pub source: String,
    pub integration: Option<Integration>,
    pub signature: Option<String>,
    /// Encrypted raw body; `None` once past retention.
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
    rows.iter()
        .map(|r| {
            Ok(Recorded {
                dedup_key: r.try_get(0)?,
                kind: r.try_get(1)?,
                session_id: r.try_get(2)?,
                source: r.try_get(3)?,
                integration: r.try_get(4)?,
                signature: r.try_get(5)?,
                body_ciphertext: r.try_get(6)?,
                received_at: r.try_get(7)?,
            })
        })
        .collect()
}
