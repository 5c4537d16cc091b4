//! Veriff sessions as the worker's reconciliation sees them.

use deadpool_postgres::GenericClient;

use crate::state_machine::SessionStatus;
use crate::veriff::integration::Integration;

/// A session to ask Veriff about, with the region whose credentials ask.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub session_id: String,
    pub region: Integration,
}

/// Claims up to `limit` sessions past their end without a final decision that were not asked
/// about in the last hour. Claimed before asking, so a session whose answer fails is asked
/// again only an hour later, and replicas never ask about the same session at once.
pub(crate) async fn claim_due_for_reconciliation(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Due>, tokio_postgres::Error> {
    let unfinished: Vec<SessionStatus> = SessionStatus::ALL
        .into_iter()
        .filter(SessionStatus::is_usable_status)
        .collect();
    let rows = db
        .query(
            "UPDATE sessions s SET reconciled_at = now() FROM verifications v
             WHERE s.id IN (
                 SELECT id FROM sessions
                 WHERE expires_at < now()
                   AND status = ANY($2)
                   AND (reconciled_at IS NULL OR reconciled_at < now() - interval '1 hour')
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
               AND v.id = s.verification_id
             RETURNING s.id, v.region",
            &[&limit, &unfinished],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Due {
                session_id: r.try_get(0)?,
                region: r.try_get(1)?,
            })
        })
        .collect()
}
