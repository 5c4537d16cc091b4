//! Applying one webhook: verify it again, match it to its verification, record it and
//! recompute the row, all in one transaction under the verification's lock.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Reason, Worker};
use crate::queue::Message;
use crate::state_machine::DecisionStatus;
use crate::storage::DbError;
use crate::storage::verifications::{self as store, InputKind, NewInput};
use crate::veriff::client::SESSION_LIFETIME;
use crate::veriff::integration::Integration;
use crate::veriff::payload::{self, Facts, What};
use crate::veriff::signature::{RawWebhook, SignatureHeaders};
use crate::veriff::{Kind, dedup};

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded now (and the row recomputed).
    Applied { received_at: Option<DateTime<Utc>> },
    /// Already recorded; the row was recomputed all the same.
    Duplicate,
    /// May succeed later: through the retry tiers, then dead-lettered.
    Retry(Reason),
    /// Can never be applied: dead-lettered at once.
    Dead(Reason),
}

/// The span of one delivery: every log line about it carries its dedup key (the message id),
/// kind and session, which is how on-call finds a webhook.
pub(super) fn span(message: &Message, check: &Result<Checked, Reason>) -> tracing::Span {
    let session = check.as_ref().ok().map(|c| c.facts.session_id.as_str());
    tracing::info_span!(
        "delivery",
        dedup_key = message.message_id.as_deref().unwrap_or("-"),
        kind = message.kind.map_or("-", Kind::as_str),
        session = session.unwrap_or("-"),
    )
}

/// Where an input came from.
pub(super) struct Source {
    pub name: &'static str,
    pub integration: Integration,
    pub signature: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
}

/// A verified input's facts, ready to record.
pub(super) struct Checked {
    pub kind: Kind,
    pub integration: Integration,
    pub facts: Facts,
    pub input: NewInput,
}

impl Worker {
    /// Applies a batch of messages in one transaction (one commit, so one WAL flush, for
    /// all of them) and returns each message's outcome, in order. Each verification is
    /// locked once, in id order, and its row recomputed once whatever the batch holds for it.
    pub(super) async fn apply_batch(
        &self,
        checks: &[Result<Checked, Reason>],
    ) -> Result<Vec<Outcome>, DbError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; checks.len()];
        let mut checked = Vec::new();
        for (i, check) in checks.iter().enumerate() {
            match check {
                Ok(c) => checked.push((i, c)),
                Err(reason) => outcomes[i] = Some(Outcome::Dead(*reason)),
            }
        }
        if !checked.is_empty() {
            self.record_batch(&checked, &mut outcomes).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Retry(Reason::ApplyFailed)))
            .collect())
    }

    pub(super) async fn record_batch(
        &self,
        checked: &[(usize, &Checked)],
        outcomes: &mut [Option<Outcome>],
    ) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let session_ids: Vec<&str> = checked
            .iter()
            .map(|(_, c)| c.facts.session_id.as_str())
            .collect();
        let known = store::session_owners(&tx, &session_ids).await?;
        let mut targets: Vec<Uuid> = known.values().copied().collect();
        targets.extend(
            checked
                .iter()
                .filter(|(_, c)| !known.contains_key(&c.facts.session_id))
                .filter_map(|(_, c)| vendor_verification(&c.facts)),
        );
        targets.sort();
        targets.dedup();
        let locked = store::lock_many(&tx, &targets).await?;
        // Read again under the locks: another batch may have adopted a session meanwhile.
        let mut owners = if known.len() < session_ids.len() {
            store::session_owners(&tx, &session_ids).await?
        } else {
            known
        };

        let mut touched: BTreeSet<Uuid> = BTreeSet::new();
        let mut recording: Vec<(usize, Uuid, &Checked)> = Vec::with_capacity(checked.len());
        for (i, c) in checked {
            let session = &c.facts.session_id;
            let owner = owners
                .get(session)
                .copied()
                .or_else(|| vendor_verification(&c.facts));
            let Some(verification) = owner.and_then(|id| locked.get(&id)) else {
                outcomes[*i] = Some(Outcome::Retry(Reason::UnknownSession));
                continue;
            };
            if verification.region != c.integration {
                outcomes[*i] = Some(Outcome::Dead(Reason::RegionMismatch));
                continue;
            }
            if !owners.contains_key(session) {
                // Its creation time is unknown: reconciliation counts its lifetime from now.
                let expires_at = Utc::now() + SESSION_LIFETIME;
                store::record_session(
                    &tx,
                    verification,
                    session,
                    "adopted",
                    None,
                    Some(expires_at),
                )
                .await?;
                owners.insert(session.clone(), verification.id);
                tracing::info!(%session, verification = %verification.id, "adopted a session through vendorData");
            }
            recording.push((*i, verification.id, c));
            touched.insert(verification.id);
        }
        // One statement for every input of the batch, one set of statements for its rows.
        let inputs: Vec<(Uuid, &NewInput)> = recording
            .iter()
            .map(|(_, verification, c)| (*verification, &c.input))
            .collect();
        let mut new = store::record_inputs(&tx, &inputs).await?;
        for (i, _, c) in &recording {
            // The first of a batch's copies of a webhook is the one recorded.
            let recorded = new.remove(&c.input.dedup_key);
            tracing::debug!(kind = %c.kind, dedup_key = %c.input.dedup_key, session = %c.facts.session_id, new = recorded, "webhook recorded");
            outcomes[*i] = Some(if recorded {
                Outcome::Applied {
                    received_at: c.input.received_at,
                }
            } else {
                Outcome::Duplicate
            });
        }
        let touched: Vec<&store::Locked> = touched.iter().filter_map(|id| locked.get(id)).collect();
        store::recompute_many(&tx, &touched, &self.settings.policy).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The recorded form of a body's facts; `UnknownStatus` for a decision status kyc does not know.
    pub(super) fn input_from(
        &self,
        kind: Kind,
        facts: &Facts,
        body: &[u8],
        source: Source,
    ) -> Result<NewInput, Reason> {
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
        Ok(NewInput {
            dedup_key: dedup::dedup_key(kind, Some(facts), body),
            kind: input_kind,
            session_id: facts.session_id.clone(),
            attempt_id: facts.attempt_id.clone(),
            status: Some(facts.status_or_action().to_owned()),
            decision_time,
            reason_code,
            reason,
            source: source.name,
            integration: Some(source.integration),
            signature: source.signature,
            body_ciphertext: Some(self.archive.seal(body)),
            received_at: source.received_at,
        })
    }

    /// The signature, the body's shape and its status: everything decidable without the
    /// database, done once per delivery however often its batch is tried.
    pub(super) fn check(&self, message: &Message) -> Result<Checked, Reason> {
        let (Some(kind), Some(integration)) = (message.kind, message.integration) else {
            return Err(Reason::InvalidSignature);
        };
        let raw = RawWebhook {
            kind,
            body: message.body.clone(),
            headers: SignatureHeaders::hmac(message.signature.as_deref()),
        };
        let webhook = self
            .integrations
            .verify_as(integration, raw)
            .map_err(|_| Reason::InvalidSignature)?;
        let facts = payload::parse(kind, &message.body).ok_or(Reason::Unparseable)?;
        let source = Source {
            name: "webhook",
            integration,
            signature: Some(webhook.signature().to_owned()),
            received_at: message.received_at,
        };
        let input = self.input_from(kind, &facts, &message.body, source)?;
        Ok(Checked {
            kind,
            integration,
            facts,
            input,
        })
    }
}

/// kyc sets `vendorData` to the verification's id: a webhook for a session kyc does not know
/// yet (it may race the session's creation) can still find its verification.
fn vendor_verification(facts: &Facts) -> Option<Uuid> {
    facts
        .vendor_data
        .as_deref()
        .and_then(|v| Uuid::parse_str(v).ok())
}
