//! Reconciliation: a session past its end with no final decision is asked about with Veriff's
//! decision API, and the answer recorded as an input, so a lost webhook cannot leave a
//! verification hanging.

use chrono::Utc;

use super::Worker;
use super::apply::{Checked, Outcome, Source};
use crate::error::{BoxError, chain};
use crate::storage::sessions;
use crate::veriff::{Kind, payload};

/// Sessions asked about in one round.
const ROUND: i64 = 100;

impl Worker {
    /// Asks Veriff about the sessions that are due; returns how many answers were recorded.
    pub(super) async fn reconcile_due(&self) -> Result<usize, BoxError> {
        let Some(veriff) = &self.veriff else {
            return Ok(0);
        };
        let due = {
            let db = self.pool.get().await?;
            sessions::claim_due_for_reconciliation(&db, ROUND).await?
        };
        let mut recorded = 0;
        for sessions::Due {
            session_id: session,
            region: integration,
        } in due
        {
            let body = match veriff.decision(integration, &session).await {
                Ok(body) => body,
                Err(error) => {
                    tracing::warn!(%session, error = %chain(&error), "reconciliation: Veriff's decision API failed");
                    continue;
                }
            }; // No decision yet (or an answer about another session): nothing to record.
            let Some(facts) =
                payload::parse(Kind::Decision, &body).filter(|f| f.session_id == session)
            else {
                continue;
            };
            let source = Source {
                name: "reconciliation",
                integration,
                signature: None,
                received_at: Some(Utc::now()),
            };
            let Ok(input) = self.input_from(Kind::Decision, &facts, &body, source) else {
                tracing::warn!(%session, "reconciliation: Veriff answered a decision status kyc does not know");
                continue;
            };
            let checked = Checked {
                kind: Kind::Decision,
                integration,
                facts,
                input,
            };
            let mut outcome = [None];
            self.record_batch(&[(0, &checked)], &mut outcome).await?;
            if matches!(outcome[0], Some(Outcome::Applied { .. })) {
                recorded += 1;
                tracing::info!(%session, "reconciliation recorded Veriff's decision");
            }
        }
        Ok(recorded)
    }
}
