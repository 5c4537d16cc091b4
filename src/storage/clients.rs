//! Client keys for `kyc clients`: only the SHA-256 of a key is stored, the key itself is
//! shown once, at creation.

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use base64::Engine;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::registration::key_digest;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientInfo {
    pub id: Uuid,
    pub name: Option<String>,
    pub us_enabled: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates a client and returns its id and its key (the only time the key exists in clear).
pub async fn create(
    db: &impl GenericClient,
    name: &str,
    us_enabled: bool,
) -> Result<(Uuid, String), tokio_postgres::Error> {
    let mut random = [0u8; 32];
    OsRng.fill_bytes(&mut random);
    let key = format!(
        "kyc_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    );
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO api_clients (id, name, key_sha256, us_enabled, created_at) VALUES ($1, $2, $3, $4, now())",
        &[&id, &name, &key_digest(&key).as_slice(), &us_enabled],
    )
    .await?;
    Ok((id, key))
}

pub async fn list(db: &impl GenericClient) -> Result<Vec<ClientInfo>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT id, name, us_enabled, created_at, revoked_at FROM api_clients ORDER BY created_at NULLS FIRST, id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ClientInfo {
            id: r.get(0),
            name: r.get(1),
            us_enabled: r.get(2),
            created_at: r.get(3),
            revoked_at: r.get(4),
        })
        .collect())
}

/// Revokes a client; `false` when there is no such client (revoking twice keeps the first time).
pub async fn revoke(db: &impl GenericClient, id: Uuid) -> Result<bool, tokio_postgres::Error> {
    let updated = db
        .execute(
            "UPDATE api_clients SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(updated == 1)
}
