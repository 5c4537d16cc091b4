//! What the registration API reads and writes: client keys, onboardings, the verification of
//! an onboarding, its current session and its public status.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::state_machine::{Retry, SessionStatus, State};
use crate::veriff::integration::Integration;

/// An API client (the registration backend's apps), found by the SHA-256 of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApiClient {
    pub id: Uuid,
    pub us_enabled: bool,
}

/// Statements are prepared once per pooled connection: these endpoints are polled.
async fn query_opt(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.query_opt(&statement, params).await
}

async fn query_one(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.query_one(&statement, params).await
}

async fn execute(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.execute(&statement, params).await
}

pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The active (not revoked) client holding this key.
pub(crate) async fn active_client(
    db: &impl GenericClient,
    digest: &[u8; 32],
) -> Result<Option<ApiClient>, tokio_postgres::Error> {
    let row = query_opt(
        db,
        "SELECT id, us_enabled FROM api_clients WHERE key_sha256 = $1 AND revoked_at IS NULL",
        &[&digest.as_slice()],
    )
    .await?;
    Ok(row.map(|r| ApiClient {
        id: r.get(0),
        us_enabled: r.get(1),
    }))
}

#[derive(Debug, Clone)]
pub struct Onboarding {
    pub phone_verified: bool,
    pub expires_at: DateTime<Utc>,
    pub completed: bool,
    pub user_id: Option<String>,
}

pub async fn onboarding(
    db: &impl GenericClient,
    id: Uuid,
    client: Uuid,
) -> Result<Option<Onboarding>, tokio_postgres::Error> {
    let row = query_opt(
        db,
        "SELECT phone_verified_at IS NOT NULL, expires_at, completed_at IS NOT NULL, user_id
             FROM onboardings WHERE id = $1 AND client_id = $2",
        &[&id, &client],
    )
    .await?;
    Ok(row.map(|r| Onboarding {
        phone_verified: r.get(0),
        expires_at: r.get(1),
        completed: r.get(2),
        user_id: r.get(3),
    }))
}

/// The verification of an onboarding, created on first use with the region of its first session.
pub(crate) async fn verification_of_onboarding(
    tx: &Transaction<'_>,
    onboarding: Uuid,
    user_id: Option<&str>,
    region: Integration,
) -> Result<Uuid, tokio_postgres::Error> {
    // A new verification changes what the onboarding's (and its user's) status poll reads:
    // announced like a change of the onboarding.
    execute(
        tx,
        "WITH created AS (
             INSERT INTO verifications (id, onboarding_id, user_id, region, state, retry)
             VALUES ($1, $2, $3, $4, 'UNVERIFIED', 'NONE') ON CONFLICT (onboarding_id) DO NOTHING
             RETURNING onboarding_id, user_id
         )
         SELECT pg_notify('kyc_onboardings', onboarding_id::text || ':' || coalesce(encode(sha256(convert_to(user_id, 'UTF8')), 'hex'), ''))
         FROM created",
        &[&Uuid::new_v4(), &onboarding, &user_id, &region],
    )
    .await?;
    let row = query_one(
        tx,
        "SELECT id FROM verifications WHERE onboarding_id = $1",
        &[&onboarding],
    )
    .await?;
    Ok(row.get(0))
}

/// The current session of a verification (the state machine's definition, kept by every
/// recompute), with what it takes to hand its URL out again.
#[derive(Debug, Clone)]
pub struct CurrentSession {
    pub id: String,
    pub status: SessionStatus,
    pub url_ciphertext: Option<Vec<u8>>,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn current_session(
    db: &impl GenericClient,
    verification: Uuid,
) -> Result<Option<CurrentSession>, tokio_postgres::Error> {
    let row = query_opt(
        db,
        "SELECT s.id, s.status, s.url_ciphertext, s.expires_at
         FROM verifications v JOIN sessions s ON s.id = v.current_session_id
         WHERE v.id = $1",
        &[&verification],
    )
    .await?;
    row.map(|r| {
        Ok(CurrentSession {
            id: r.try_get(0)?,
            status: r.try_get(1)?,
            url_ciphertext: r.try_get(2)?,
            expires_at: r.try_get(3)?,
        })
    })
    .transpose()
}

/// What the status endpoints report of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationStatus {
    pub state: State,
    pub retry: Retry,
    pub reason_code: Option<i32>,
    pub reason: Option<String>,
    /// `None` for an onboarding without a verification yet.
    pub updated_at: Option<DateTime<Utc>>,
}

impl VerificationStatus {
    /// An onboarding without a verification yet.
    pub fn unverified() -> Self {
        Self {
            state: State::Unverified,
            retry: Retry::None,
            reason_code: None,
            reason: None,
            updated_at: None,
        }
    }
}

/// The status of an onboarding's verification, with the verification's id (for change
/// notifications) when there is one.
pub async fn onboarding_status(
    db: &impl GenericClient,
    onboarding: Uuid,
) -> Result<(Option<Uuid>, VerificationStatus), tokio_postgres::Error> {
    let row = query_opt(db,
            "SELECT id, state, retry, reason_code, reason, updated_at FROM verifications WHERE onboarding_id = $1",
            &[&onboarding],
        )
        .await?;
    match row {
        Some(r) => Ok((Some(r.try_get(0)?), status_of(&r)?)),
        None => Ok((None, VerificationStatus::unverified())),
    }
}

/// An onboarding as its status poll sees it: the client it belongs to, and its verification's
/// id and status (one statement: this is the polled path's only query).
pub(crate) async fn onboarding_view(
    db: &impl GenericClient,
    onboarding: Uuid,
) -> Result<Option<(Uuid, Option<Uuid>, VerificationStatus)>, tokio_postgres::Error> {
    let row = query_opt(
        db,
        "SELECT v.id, v.state, v.retry, v.reason_code, v.reason, v.updated_at, o.client_id
         FROM onboardings o LEFT JOIN verifications v ON v.onboarding_id = o.id
         WHERE o.id = $1",
        &[&onboarding],
    )
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let client: Uuid = r.try_get(6)?;
    let verification: Option<Uuid> = r.try_get(0)?;
    let status = match verification {
        Some(_) => status_of(&r)?,
        None => VerificationStatus::unverified(),
    };
    Ok(Some((client, verification, status)))
}

/// The newest onboarding of a user, if any.
async fn newest_onboarding(
    db: &impl GenericClient,
    user: &str,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    let row = query_opt(db,
            "SELECT id FROM onboardings WHERE user_id = $1 ORDER BY created_at DESC NULLS LAST, id DESC LIMIT 1",
            &[&user],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A user's verification: the one of their newest onboarding, or one of their own (created
/// on first use) when they have no onboarding.
pub(crate) async fn verification_of_user(
    tx: &Transaction<'_>,
    user: &str,
) -> Result<Uuid, tokio_postgres::Error> {
    if let Some(onboarding) = newest_onboarding(tx, user).await? {
        return verification_of_onboarding(tx, onboarding, Some(user), Integration::Eu).await;
    }
    execute(
        tx,
        "WITH created AS (
             INSERT INTO verifications (id, user_id, region, state, retry)
             VALUES ($1, $2, 'EU', 'UNVERIFIED', 'NONE')
             ON CONFLICT (user_id) WHERE onboarding_id IS NULL DO NOTHING
             RETURNING user_id
         )
         SELECT pg_notify('kyc_onboardings', ':' || encode(sha256(convert_to(user_id, 'UTF8')), 'hex')) FROM created",
        &[&Uuid::new_v4(), &user],
    )
    .await?;
    let row = query_one(
        tx,
        "SELECT id FROM verifications WHERE user_id = $1 AND onboarding_id IS NULL",
        &[&user],
    )
    .await?;
    Ok(row.get(0))
}

/// The status of a user's verification (see [`verification_of_user`]), without creating one.
pub async fn user_status(
    db: &impl GenericClient,
    user: &str,
) -> Result<(Option<Uuid>, VerificationStatus), tokio_postgres::Error> {
    if let Some(onboarding) = newest_onboarding(db, user).await? {
        return onboarding_status(db, onboarding).await;
    }
    let row = query_opt(
        db,
        "SELECT id, state, retry, reason_code, reason, updated_at FROM verifications
             WHERE user_id = $1 AND onboarding_id IS NULL",
        &[&user],
    )
    .await?;
    match row {
        Some(r) => Ok((Some(r.try_get(0)?), status_of(&r)?)),
        None => Ok((None, VerificationStatus::unverified())),
    }
}

fn status_of(r: &tokio_postgres::Row) -> Result<VerificationStatus, tokio_postgres::Error> {
    Ok(VerificationStatus {
        state: r.try_get(1)?,
        retry: r.try_get(2)?,
        reason_code: r.try_get(3)?,
        reason: r.try_get(4)?,
        updated_at: Some(r.try_get(5)?),
    })
}
