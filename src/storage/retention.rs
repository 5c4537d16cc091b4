//! Raw webhook bodies hold personal data: kept (encrypted) only for KYC_ARCHIVE_RETENTION.
//! The non-personal facts of every input stay for the life of the verification.

use std::time::Duration;

use deadpool_postgres::GenericClient;

/// Clears the bodies of inputs and dead letters recorded longer ago than `retention`.
/// Returns how many were cleared.
pub(crate) async fn clear_expired_bodies(
    db: &impl GenericClient,
    retention: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let seconds = retention.as_secs_f64();
    let mut cleared = 0;
    for sql in [
        "UPDATE inputs SET body_ciphertext = NULL
         WHERE body_ciphertext IS NOT NULL AND recorded_at < now() - make_interval(secs => $1)",
        "UPDATE dead_letters SET body_ciphertext = NULL
         WHERE body_ciphertext IS NOT NULL AND recorded_at < now() - make_interval(secs => $1)",
    ] {
        cleared += db.execute(sql, &[&seconds]).await?;
    }
    Ok(cleared)
}
