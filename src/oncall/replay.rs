//! `kyc replay`: republish recorded webhooks with their original signature and integration,
//! so the worker recomputes the rows (e.g. after a fix of the state machine). Inputs already
//! recorded are absorbed as duplicates; their delivery still recomputes the row. For a change
//! of policy alone, `kyc recompute` needs no bodies and no broker.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::connect_broker;
use crate::config::Config;
use crate::error::BoxError;
use crate::queue::{Envelope, RecordedWebhook};
use crate::storage::{self, verifications};
use crate::veriff::payload;

/// How long a replayed input waits for the broker's confirm.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(
    config: &Config,
    session: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<(), BoxError> {
    let pool = storage::pool(&config.database_url, 1)?;
    let db = pool.get().await?;
    let inputs = verifications::recorded(&db, session.as_deref(), since, until).await?;
    let archive = config.archive_cipher()?;
    let broker = match dry_run {
        true => None,
        false => Some(connect_broker(config).await?),
    };
    // One new life for everything this run republishes.
    let replay = Uuid::new_v4();
    let (mut replayed, mut expired, mut unsigned) = (0, 0, 0);
    let mut failure = None;
    for input in &inputs {
        let (Some(signature), Some(integration)) = (&input.signature, input.integration) else {
            // A reconciliation answer has no webhook signature; replaying any other input of
            // the verification recomputes its row from it all the same.
            out!(
                "{}  {} {}: not a signed webhook ({}), skipped",
                input.dedup_key,
                input.session_id,
                input.kind,
                input.source
            );
            unsigned += 1;
            continue;
        };
        let Some(sealed) = &input.body_ciphertext else {
            out!(
                "{}  {} {}: body past retention, cannot be replayed (`kyc recompute` needs no body)",
                input.dedup_key,
                input.session_id,
                input.kind
            );
            expired += 1;
            continue;
        };
        let Some(broker) = &broker else {
            out!(
                "{}  {} {}: would be replayed",
                input.dedup_key,
                input.session_id,
                input.kind
            );
            replayed += 1;
            continue;
        };
        let body = archive.open(sealed)?;
        let webhook = RecordedWebhook {
            kind: input.kind,
            integration,
            signature: signature.clone(),
            dedup_key: input.dedup_key.clone(),
            received_at: input.received_at.unwrap_or_else(Utc::now),
            parsed: payload::parse(input.kind, &body).is_some(),
            body: body.into(),
        };
        let envelope = Envelope::recorded(broker.topology(), &webhook, Some(replay));
        if let Err(error) = broker.publish(envelope, REPLAY_TIMEOUT).await {
            failure = Some(error);
            break;
        }
        out!(
            "{}  {} {}: replayed",
            input.dedup_key,
            input.session_id,
            input.kind
        );
        replayed += 1;
    }
    if let Some(broker) = broker {
        broker.close().await;
    }
    if let Some(error) = failure {
        return Err(error.into());
    }
    let verb = if dry_run {
        "would be replayed"
    } else {
        "replayed"
    };
    out!("{replayed} {verb}, {expired} past retention, {unsigned} not signed webhooks");
    Ok(())
}
