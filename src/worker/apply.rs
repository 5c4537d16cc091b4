//! Applying one webhook: verify it again, match it to its verification, record it and
//! recompute the row, all in one transaction under the verification's lock.

use chrono::{DateTime, Utc};
use lapin::types::FieldTable;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{Reason, Worker};
use crate::queue::message::{
    HEADER_INTEGRATION, HEADER_KIND, HEADER_RECEIVED_AT, HEADER_SIGNATURE, header_str, header_time,
};
use crate::state_machine::DecisionStatus;
use crate::storage::verifications::{self as store, InputKind, NewInput};
use crate::veriff::payload::{self, Facts, What};
use crate::veriff::signature::{Integration, RawWebhook, SignatureHeaders};
use crate::veriff::{Kind, dedup};

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded now; `changed` says whether the row moved.
    Applied {
        changed: bool,
        received_at: Option<DateTime<Utc>>,
    },
    /// Already recorded; the row was recomputed all the same.
    Duplicate,
    /// May succeed later: through the retry tiers, then dead-lettered.
    Retry(Reason),
    /// Can never be applied: dead-lettered at once.
    Dead(Reason),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database cannot be reached: hold the message and wait, burning no attempt.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// A statement failed: goes through the retry tiers like other transient failures.
    #[error("database: {0}")]
    Statement(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            // No SQL state: the connection itself failed.
            None => ApplyError::DatabaseUnavailable(e.to_string()),
            Some(state)
                if *state == SqlState::ADMIN_SHUTDOWN || *state == SqlState::CANNOT_CONNECT_NOW =>
            {
                ApplyError::DatabaseUnavailable(e.to_string())
            }
            Some(_) => ApplyError::Statement(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApplyError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ApplyError::DatabaseUnavailable(e.to_string())
    }
}

/// A verified webhook's facts, ready to record.
struct Checked {
    kind: Kind,
    integration: Integration,
    facts: Facts,
    input: NewInput,
}

impl Worker {
    pub(super) async fn apply(
        &self,
        headers: &FieldTable,
        body: &[u8],
    ) -> Result<Outcome, ApplyError> {
        let checked = match self.check(headers, body) {
            Ok(checked) => checked,
            Err(reason) => return Ok(Outcome::Dead(reason)),
        };
        let received_at = checked.input.received_at;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;

        let owner = match store::session_owner(&tx, &checked.facts.session_id).await? {
            Some(owner) => Some(owner),
            None => self.adoptable(&tx, &checked.facts).await?,
        };
        let Some(owner) = owner else {
            return Ok(Outcome::Retry(Reason::UnknownSession));
        };
        let Some(verification) = store::lock(&tx, owner).await? else {
            return Ok(Outcome::Retry(Reason::UnknownSession));
        };
        if verification.region != checked.integration.as_str() {
            return Ok(Outcome::Dead(Reason::RegionMismatch));
        }
        // Checked again under the lock: two deliveries may race to adopt the same session.
        if store::session_owner(&tx, &checked.facts.session_id)
            .await?
            .is_none()
        {
            store::record_session(
                &tx,
                &verification,
                &checked.facts.session_id,
                "adopted",
                None,
                None,
            )
            .await?;
            tracing::info!(session = %checked.facts.session_id, verification = %owner, "adopted a session through vendorData");
        }
        let new = store::record_input(&tx, &verification, &checked.input).await?;
        let changed = store::recompute(&tx, &verification, &self.policy).await?;
        tx.commit().await?;
        tracing::debug!(
            kind = %checked.kind,
            dedup_key = %checked.input.dedup_key,
            session = %checked.facts.session_id,
            new,
            changed,
            "webhook applied"
        );
        Ok(if new {
            Outcome::Applied {
                changed,
                received_at,
            }
        } else {
            Outcome::Duplicate
        })
    }

    /// The signature, the body's shape and its status: everything decidable without the database.
    fn check(&self, headers: &FieldTable, body: &[u8]) -> Result<Checked, Reason> {
        let kind = header_str(headers, HEADER_KIND)
            .and_then(Kind::parse)
            .ok_or(Reason::InvalidSignature)?;
        let integration = header_str(headers, HEADER_INTEGRATION)
            .and_then(Integration::parse)
            .ok_or(Reason::InvalidSignature)?;
        let raw = RawWebhook {
            kind,
            body: bytes::Bytes::copy_from_slice(body),
            headers: SignatureHeaders {
                hmac: header_str(headers, HEADER_SIGNATURE).map(str::to_owned),
                ..SignatureHeaders::default()
            },
        };
        let webhook = self
            .integrations
            .verify_as(integration, raw)
            .map_err(|_| Reason::InvalidSignature)?;
        let facts = payload::parse(kind, body).ok_or(Reason::Unparseable)?;
        let dedup_key = dedup::dedup_key(kind, Some(&facts), body);
        let (input_kind, decision_time, reason_code, reason) = match &facts.what {
            What::Decision {
                status,
                decision_time,
                reason_code,
                reason,
            } => {
                DecisionStatus::parse(status).ok_or(Reason::UnknownStatus)?;
                let parsed = decision_time
                    .as_deref()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                (InputKind::Decision, parsed, *reason_code, reason.clone())
            }
            What::Event { .. } => (InputKind::Event, None, None, None),
        };
        let input = NewInput {
            dedup_key,
            kind: input_kind,
            session_id: facts.session_id.clone(),
            attempt_id: facts.attempt_id.clone(),
            status: Some(facts.status_or_action().to_owned()),
            decision_time,
            reason_code,
            reason,
            source: "webhook",
            integration: Some(integration),
            signature: Some(webhook.signature().to_owned()),
            body_ciphertext: Some(self.archive.seal(body)),
            received_at: header_time(headers, HEADER_RECEIVED_AT),
        };
        Ok(Checked {
            kind,
            integration,
            facts,
            input,
        })
    }

    /// A verification named by the webhook's `vendorData` (kyc sets it to the verification id).
    async fn adoptable(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        facts: &Facts,
    ) -> Result<Option<Uuid>, ApplyError> {
        let Some(id) = facts
            .vendor_data
            .as_deref()
            .and_then(|v| Uuid::parse_str(v).ok())
        else {
            return Ok(None);
        };
        let row = tx
            .query_opt("SELECT id FROM verifications WHERE id = $1", &[&id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
