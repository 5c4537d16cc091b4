//! The audit log: who did what and why, for on-call actions that touch personal data or
//! KYC decisions (reading a raw body, sending a signed test decision).

use deadpool_postgres::GenericClient;

pub async fn record(
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
