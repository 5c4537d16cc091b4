//! The spool: webhooks committed to PostgreSQL while the broker could not confirm them.
//! Several relays (one per `kyc serve`) drain it at once without taking the same row.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};

use crate::veriff::Kind;
use crate::veriff::integration::Integration;

/// A webhook to spool: what it takes to publish it later exactly as it would have been.
#[derive(Clone)]
pub struct Spooled {
    pub kind: Kind,
    pub integration: Integration,
    pub signature: String,
    pub dedup_key: String,
    pub parsed: bool,
    pub body_ciphertext: Vec<u8>,
    pub received_at: DateTime<Utc>,
}

/// Commits one webhook to the spool (a single statement: its own durable transaction).
pub async fn insert(
    db: &impl GenericClient,
    webhook: &Spooled,
) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "INSERT INTO spool (kind, integration, signature, dedup_key, parsed, body_ciphertext, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    db.execute(
        &statement,
        &[
            &webhook.kind,
            &webhook.integration,
            &webhook.signature,
            &webhook.dedup_key,
            &webhook.parsed,
            &webhook.body_ciphertext,
            &webhook.received_at,
        ],
    )
    .await?;
    Ok(())
}

/// Takes the oldest `limit` rows no other relay holds, locked until `tx` ends.
pub(crate) async fn take_oldest(
    tx: &Transaction<'_>,
    limit: i64,
) -> Result<Vec<(i64, Spooled)>, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(
            "SELECT id, kind, integration, signature, dedup_key, parsed, body_ciphertext, received_at
             FROM spool ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let rows = tx.query(&statement, &[&limit]).await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                Spooled {
                    kind: r.try_get(1)?,
                    integration: r.try_get(2)?,
                    signature: r.try_get(3)?,
                    dedup_key: r.try_get(4)?,
                    parsed: r.try_get(5)?,
                    body_ciphertext: r.try_get(6)?,
                    received_at: r.try_get(7)?,
                },
            ))
        })
        .collect()
}

/// Deletes rows whose publish the broker confirmed.
pub async fn delete(tx: &Transaction<'_>, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached("DELETE FROM spool WHERE id = ANY($1)")
        .await?;
    tx.execute(&statement, &[&ids]).await
}

/// How many rows wait, and how long the oldest has waited (seconds).
pub async fn depth(db: &impl GenericClient) -> Result<(i64, f64), tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(spooled_at))::float8, 0)
             FROM spool",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}
