//! `kyc replay`: republish recorded webhooks with their original signature and integration,
//! so the worker recomputes the rows (e.g. after a fix of the state machine or a change of
//! its configuration). Inputs already recorded are absorbed as duplicates; their delivery
//! still recomputes the row.

use chrono::{DateTime, Utc};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::connect_broker;
use crate::app::BoxError;
use crate::config::Config;
use crate::queue::Envelope;
use crate::queue::message::{
    HEADER_INTEGRATION, HEADER_KIND, HEADER_RECEIVED_AT, HEADER_SIGNATURE, put, rfc3339,
    routing_key,
};
use crate::storage::{self, verifications};
use crate::veriff::Kind;

pub async fn run(
    config: &Config,
    dev: bool,
    session: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<(), BoxError> {
    let pool = storage::pool(&config.database_url, 1)?;
    let db = pool.get().await?;
    let inputs = verifications::recorded(&db, session.as_deref(), since, until).await?;
    let archive = config.archive_cipher(dev)?;
    let stop = CancellationToken::new();
    let broker = match dry_run {
        true => None,
        false => Some(connect_broker(config, &stop).await?),
    };
    let (mut replayed, mut expired, mut unsigned) = (0, 0, 0);
    for input in &inputs {
        let (Some(signature), Some(integration)) = (&input.signature, &input.integration) else {
            // A reconciliation answer has no webhook signature; replaying any other input of
            // the verification recomputes its row from it all the same.
            println!(
                "{}  {} {}: not a signed webhook ({}), skipped",
                input.dedup_key, input.session_id, input.kind, input.source
            );
            unsigned += 1;
            continue;
        };
        let Some(sealed) = &input.body_ciphertext else {
            println!(
                "{}  {} {}: body past retention, cannot be replayed",
                input.dedup_key, input.session_id, input.kind
            );
            expired += 1;
            continue;
        };
        let Some(broker) = &broker else {
            println!(
                "{}  {} {}: would be replayed",
                input.dedup_key, input.session_id, input.kind
            );
            replayed += 1;
            continue;
        };
        let body = archive.open(sealed)?;
        let mut headers = FieldTable::default();
        put(&mut headers, HEADER_SIGNATURE, signature);
        put(&mut headers, HEADER_INTEGRATION, integration);
        put(&mut headers, HEADER_KIND, &input.kind);
        put(
            &mut headers,
            HEADER_RECEIVED_AT,
            &rfc3339(input.received_at.unwrap_or_else(Utc::now)),
        );
        let envelope = Envelope {
            exchange: broker.topology().exchange(),
            routing_key: routing_key(Kind::parse(&input.kind), &body).to_owned(),
            message_id: input.dedup_key.clone(),
            headers,
            body: body.into(),
        };
        broker.publish(&envelope).await?;
        println!(
            "{}  {} {}: replayed",
            input.dedup_key, input.session_id, input.kind
        );
        replayed += 1;
    }
    stop.cancel();
    let verb = if dry_run {
        "would be replayed"
    } else {
        "replayed"
    };
    println!("{replayed} {verb}, {expired} past retention, {unsigned} not signed webhooks");
    Ok(())
}
