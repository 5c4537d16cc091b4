//! The dead-letter recorder: drains `kyc.dead` into the `dead_letters` table, acking each
//! message only after its row is committed, so dead letters never pile up in the broker and
//! nothing is lost between the two.
//!
//! `kyc.dead` is as untrusted as the main queue: a message may carry anything. A database
//! outage holds the queue (the letter is recorded once the database is back); a statement
//! that PostgreSQL refuses for this message's content does not: what can be recorded is, the
//! raw body always (encrypted), and the recorder moves on.

use std::sync::Arc;

use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::stranded::Stranding;
use super::{Reason, Worker, close_channel, consumer_closed, subscribe};
use crate::backoff::Backoff;
use crate::error::chain;
use crate::queue::Message;
use crate::storage::DbError;
use crate::storage::dead_letters::{self as store, NewDeadLetter};
use crate::veriff::payload;

/// What the broker itself dead-lettered (a message that exceeded the main queue's delivery limit).
const BROKER_REASON: &str = "DELIVERY_LIMIT";
/// The `reason` metric label of a reason kyc does not know (the header is untrusted).
const OTHER_REASON: &str = "OTHER";
/// Longest reason kept from the untrusted header.
const REASON_MAX: usize = 64;

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
        let tag = format!("kyc-recorder-{}", Uuid::new_v4().simple());
        let queue = self.broker.topology().dead_queue();
        let (channel, mut consumer) = subscribe(connection, 16, &queue, &tag).await?;
        let mut stranding = Stranding::new(self.broker.resubscriptions());
        let outcome = loop {
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                // kyc.dead may have been deleted and declared again under this consumer, and
                // RabbitMQ does not always say so: record the letters this consumer already
                // holds (they were delivered; their queue may be gone), then consume anew.
                // No basic.cancel: for a consumer of a deleted queue it may never be answered.
                suspicion = stranding.suspect() => {
                    // Each letter is recorded before the next is taken: never busy here.
                    if let Some(why) = stranding.stranded(suspicion, false) {
                        tracing::debug!(why, "the dead-letter recorder consumes anew");
                        while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
                            self.record_one(&delivery, stop).await;
                        }
                        break Ok(());
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        stranding.delivered();
                        self.record_one(&delivery, stop).await;
                    }
                    Some(Err(error)) => break Err(error),
                    None => break Err(consumer_closed()),
                }
            }
        };
        close_channel(&channel, "recorder stopping").await;
        outcome
    }

    /// Records one dead letter, waiting out database outages; acks after the commit.
    async fn record_one(&self, delivery: &Delivery, stop: &CancellationToken) {
        let message = Message::from_delivery(delivery);
        let letter = self.letter_of(&message);
        let label = reason_label(&letter.reason);
        let mut backoff = Backoff::new();
        loop {
            match self.insert_dead_letter(&letter).await {
                Ok(()) => break,
                Err(error) if error.is_outage() => {
                    tracing::warn!(error = %chain(&error), "cannot record a dead letter yet; holding it");
                    if !backoff.wait(stop).await {
                        return; // stopping: redelivered to the next recorder
                    }
                }
                Err(error) => {
                    // Not an outage: this message's content is refused. Keep what is safe.
                    tracing::error!(
                        dead_letter_id = %letter.id,
                        error = %chain(&error),
                        "a dead letter's headers were refused; recording its body and reason only"
                    );
                    self.metrics.dead_letters_damaged.inc();
                    let bare = NewDeadLetter {
                        headers: serde_json::json!({ "kyc-unrecordable": error.to_string() }),
                        session_id: None,
                        kind: None,
                        ..letter.clone()
                    };
                    match self.insert_dead_letter(&bare).await {
                        Ok(()) => break,
                        Err(error) => {
                            // Even the bare row fails: the table itself is wrong, for every
                            // message alike. Hold, as for an outage.
                            tracing::error!(error = %chain(&error), "cannot record a dead letter; holding it");
                            if !backoff.wait(stop).await {
                                return;
                            }
                        }
                    }
                }
            }
        }
        self.metrics
            .dead_letters_recorded
            .with_label_values(&[label])
            .inc();
        tracing::info!(dead_letter_id = %letter.id, reason = label, session = letter.session_id.as_deref(), "dead letter recorded");
        // lapin answers Ok(false), not an error, when the channel is closed.
        match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "dead letter recorded but not acked (channel closed); its redelivery is absorbed"
            ),
            Err(error) => tracing::warn!(
                error = %chain(&error),
                "dead letter recorded but not acked; its redelivery is absorbed"
            ),
        }
    }

    /// The row for a message: its own dead-letter id (the broker's dead letters get one
    /// derived from what is the same on every redelivery), everything sanitised.
    fn letter_of(&self, message: &Message) -> NewDeadLetter {
        let now = Utc::now();
        let reason: String = message
            .dead_reason
            .clone()
            .unwrap_or_else(|| BROKER_REASON.to_owned())
            .chars()
            .take(REASON_MAX)
            .collect();
        let letter = NewDeadLetter {
            id: message
                .dead_letter_id
                .unwrap_or_else(|| message.broker_dead_letter_id()),
            reason,
            kind: message.kind.map(|k| k.as_str().to_owned()),
            session_id: message
                .kind
                .and_then(|kind| payload::parse(kind, &message.body))
                .map(|facts| facts.session_id),
            attempts: i32::try_from(message.attempts).unwrap_or(i32::MAX),
            first_failure: message.first_failure.unwrap_or(now),
            last_failure: message.last_failure.unwrap_or(now),
            message_id: message.message_id.clone(),
            headers: message.headers_json(),
            body_ciphertext: self.archive.seal(&message.body),
        };
        let clean = letter.clone().sanitised();
        if clean.session_id != letter.session_id
            || clean.headers != letter.headers
            || clean.message_id != letter.message_id
            || clean.reason != letter.reason
        {
            tracing::warn!(dead_letter_id = %letter.id, "a dead letter carried NUL characters; recorded with them replaced");
            self.metrics.dead_letters_damaged.inc();
        }
        clean
    }

    async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        store::insert(&client, letter).await?;
        Ok(())
    }
}

/// A bounded label: the reasons kyc writes, the broker's, or OTHER.
fn reason_label(reason: &str) -> &'static str {
    Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain([BROKER_REASON])
        .find(|known| *known == reason)
        .unwrap_or(OTHER_REASON)
}
