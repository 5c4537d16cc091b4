//! The dead-letter recorder: drains `kyc.dead` into the `dead_letters` table, acking each
//! message only after its row is committed, so dead letters never pile up in the broker and
//! nothing is lost between the two.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Worker, consumer_closed, open_channel};
use crate::queue::message::{
    HEADER_ATTEMPTS, HEADER_DEAD_LETTER_ID, HEADER_DEAD_REASON, HEADER_FIRST_FAILURE, HEADER_KIND,
    HEADER_LAST_FAILURE, header_i64, header_str, header_time, headers_to_json,
};
use crate::veriff::{Kind, payload};

/// What the broker itself dead-lettered (a message that exceeded the main queue's delivery limit).
const BROKER_REASON: &str = "DELIVERY_LIMIT";

impl Worker {
    pub(super) async fn run_recorder(self: Arc<Self>, stop: CancellationToken) {
        let (worker, stop) = (&self, &stop);
        worker
            .on_every_connection("dead-letter recorder", stop, move |connection| async move {
                worker.record_dead_letters(&connection, stop).await
            })
            .await;
    }

    async fn record_dead_letters(
        &self,
        connection: &Connection,
        stop: &CancellationToken,
    ) -> lapin::Result<()> {
        let channel = open_channel(connection, 16).await?;
        let mut consumer = channel
            .basic_consume(
                self.broker.topology().dead_queue().as_str().into(),
                format!("kyc-recorder-{}", Uuid::new_v4().simple())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let outcome = loop {
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => self.record_one(&delivery, stop).await,
                    Some(Err(error)) => break Err(error),
                    None => break Err(consumer_closed()),
                }
            }
        };
        let _ = channel.close(200, "recorder stopping".into()).await;
        outcome
    }

    /// Records one dead letter, waiting out database outages; acks after the commit.
    async fn record_one(&self, delivery: &Delivery, stop: &CancellationToken) {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.insert_dead_letter(&headers, delivery).await {
                Ok(reason) => {
                    self.metrics
                        .dead_letters_recorded
                        .with_label_values(&[&reason])
                        .inc();
                    // lapin answers Ok(false), not an error, when the channel is closed.
                    match delivery.acker.ack(BasicAckOptions::default()).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(
                            "dead letter recorded but not acked (channel closed); its redelivery is absorbed"
                        ),
                        Err(error) => tracing::warn!(
                            %error,
                            "dead letter recorded but not acked; its redelivery is absorbed"
                        ),
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot record a dead letter yet");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn insert_dead_letter(
        &self,
        headers: &FieldTable,
        delivery: &Delivery,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let json = headers_to_json(headers);
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned());
        let id = header_str(headers, HEADER_DEAD_LETTER_ID)
            .and_then(|id| Uuid::parse_str(id).ok())
            // A broker dead letter has no id of ours: derive one that is the same on redelivery.
            .unwrap_or_else(|| derived_id(message_id.as_deref(), &json));
        let reason = header_str(headers, HEADER_DEAD_REASON)
            .map(str::to_owned)
            .unwrap_or_else(|| BROKER_REASON.to_owned());
        let kind = header_str(headers, HEADER_KIND);
        let session_id = kind
            .and_then(Kind::parse)
            .and_then(|kind| payload::parse(kind, &delivery.data))
            .map(|facts| facts.session_id);
        let attempts =
            i32::try_from(header_i64(headers, HEADER_ATTEMPTS).unwrap_or(0)).unwrap_or(i32::MAX);
        let now = Utc::now();
        let first = header_time(headers, HEADER_FIRST_FAILURE).unwrap_or(now);
        let last = header_time(headers, HEADER_LAST_FAILURE).unwrap_or(now);
        let body = self.archive.seal(&delivery.data);

        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO dead_letters (id, reason, kind, session_id, attempts, first_failure, last_failure,
                     message_id, headers, body_ciphertext)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (id) DO NOTHING",
                &[&id, &reason, &kind, &session_id, &attempts, &first, &last, &message_id, &json, &body],
            )
            .await?;
        tracing::info!(dead_letter_id = %id, reason = %reason, session = session_id.as_deref(), "dead letter recorded");
        Ok(reason)
    }
}

fn derived_id(message_id: Option<&str>, headers: &serde_json::Value) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(message_id.unwrap_or_default().as_bytes());
    // x-death carries the time of the broker's dead-lettering: a later death is a new letter.
    hash.update(
        headers
            .get("x-death")
            .map(ToString::to_string)
            .unwrap_or_default()
            .as_bytes(),
    );
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}
