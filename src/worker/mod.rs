//! The decision worker: consumes `kyc.webhooks`, applies each message in one transaction,
//! and acks only after the commit. What may succeed later goes through the delay tiers; what
//! never can is dead-lettered. Both moves are a confirmed publish followed by the ack.

mod apply;
mod forward;
mod housekeeping;
mod reconcile;
mod recorder;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use apply::Outcome;

use crate::app::BoxError;
use crate::crypto::Cipher;
use crate::metrics::Metrics;
use crate::queue::Broker;
use crate::state_machine::Policy;
use crate::veriff::client::VeriffClient;
use crate::veriff::signature::Integrations;

/// Why a message was retried or dead-lettered; the values are stable (CLI filters, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidSignature,
    Unparseable,
    UnknownStatus,
    UnknownSession,
    RegionMismatch,
    ApplyFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSignature => "INVALID_SIGNATURE",
            Reason::Unparseable => "UNPARSEABLE",
            Reason::UnknownStatus => "UNKNOWN_STATUS",
            Reason::UnknownSession => "UNKNOWN_SESSION",
            Reason::RegionMismatch => "REGION_MISMATCH",
            Reason::ApplyFailed => "APPLY_FAILED",
        }
    }
}

/// How long in-flight messages may take to finish on shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

pub struct Worker {
    pub pool: Pool,
    pub broker: Broker,
    pub integrations: Integrations,
    pub archive: Cipher,
    pub policy: Policy,
    pub metrics: Arc<Metrics>,
    /// Batches applied at once, each in a transaction of its own.
    pub batches: usize,
    /// Most messages in one batch.
    pub batch_size: usize,
    pub archive_retention: Duration,
    /// Veriff's API, for reconciliation (absent: no reconciliation).
    pub veriff: Option<VeriffClient>,
}

impl Worker {
    /// Consumes until `stop`, reconnecting after broker failures; also runs the dead-letter
    /// recorder and the housekeeping tasks.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<(), BoxError> {
        let recorder = tokio::spawn(Arc::clone(&self).run_recorder(stop.clone()));
        let housekeeping = tokio::spawn(Arc::clone(&self).run_housekeeping(stop.clone()));
        let (worker, token) = (&self, &stop);
        worker
            .on_every_connection("worker", token, move |connection| async move {
                worker.consume(&connection, token).await
            })
            .await;
        let _ = tokio::join!(recorder, housekeeping);
        Ok(())
    }

    /// Runs a consumer loop on the broker's connection, again on each new connection after a
    /// failure, until `stop`.
    pub(super) async fn on_every_connection<F, Fut>(
        &self,
        what: &str,
        stop: &CancellationToken,
        consume: F,
    ) where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: Future<Output = lapin::Result<()>>,
    {
        while !stop.is_cancelled() {
            let connection = tokio::select! {
                connection = self.broker.connection() => connection,
                () = stop.cancelled() => None,
            };
            let Some(connection) = connection else {
                break;
            };
            if let Err(error) = consume(connection).await {
                if stop.is_cancelled() {
                    break;
                }
                tracing::warn!(%error, "{what} lost its channel; resuming");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    }

    async fn consume(
        self: &Arc<Self>,
        connection: &Connection,
        stop: &CancellationToken,
    ) -> lapin::Result<()> {
        let prefetch = u16::try_from(self.batches * self.batch_size * 2).unwrap_or(u16::MAX);
        let channel = open_channel(connection, prefetch).await?;
        let tag = format!("kyc-worker-{}", uuid::Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                self.broker.topology().main_queue().as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let slots = Arc::new(Semaphore::new(self.batches));
        let in_flight = TaskTracker::new();
        let outcome = loop {
            let first = tokio::select! {
                () = stop.cancelled() => break Ok(()),
                next = consumer.next() => next,
            };
            let mut batch = Vec::with_capacity(self.batch_size);
            let mut ended = None;
            // Whatever else has already arrived joins the batch; nothing waits for more.
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Some(Ok(delivery)) => batch.push(delivery),
                    Some(Err(error)) => ended = Some(error),
                    None => ended = Some(consumer_closed()),
                }
                if ended.is_none() && batch.len() < self.batch_size {
                    next = consumer.next().now_or_never();
                }
            }
            if !batch.is_empty() {
                // Waiting for a slot is the back-pressure: deliveries stay in the prefetch.
                let slot = tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => slot.ok(),
                    () = stop.cancelled() => None,
                };
                let Some(slot) = slot else {
                    break Ok(()); // stopping: the unstarted batch returns to the queue
                };
                let worker = Arc::clone(self);
                let stop = stop.clone();
                in_flight.spawn(async move {
                    worker.handle(batch, &stop).await;
                    drop(slot);
                });
            }
            if let Some(error) = ended {
                break Err(error);
            }
        };
        // Stop taking messages, then let the batches being applied finish and ack.
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        in_flight.close();
        if tokio::time::timeout(DRAIN_DEADLINE, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight messages did not finish before the deadline; they will be redelivered"
            );
        }
        let _ = channel.close(200, "worker stopping".into()).await;
        outcome
    }

    /// Applies a batch, holding it while the database is unreachable, and settles each message.
    async fn handle(&self, batch: Vec<Delivery>, stop: &CancellationToken) {
        let headers: Vec<FieldTable> = batch
            .iter()
            .map(|d| d.properties.headers().clone().unwrap_or_default())
            .collect();
        let messages: Vec<(&FieldTable, &[u8])> = headers
            .iter()
            .zip(&batch)
            .map(|(h, d)| (h, d.data.as_slice()))
            .collect();
        let outcomes = match self.apply_held(&messages, stop).await {
            None => return, // stopping while the database is away: redelivered later
            Some(Ok(outcomes)) => outcomes,
            Some(Err(error)) => {
                tracing::warn!(%error, size = batch.len(), "batch failed; applying its messages one by one");
                let mut outcomes = Vec::with_capacity(messages.len());
                for message in &messages {
                    match self.apply_held(std::slice::from_ref(message), stop).await {
                        None => return,
                        Some(Ok(mut one)) => {
                            outcomes.push(one.pop().unwrap_or(Outcome::Retry(Reason::ApplyFailed)))
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "applying a webhook failed");
                            outcomes.push(Outcome::Retry(Reason::ApplyFailed));
                        }
                    }
                }
                outcomes
            }
        };
        let settles = batch
            .iter()
            .zip(&headers)
            .zip(outcomes)
            .map(|((delivery, headers), outcome)| self.settle(delivery, headers, outcome));
        futures_util::future::join_all(settles).await;
    }

    /// Applies, waiting out database outages without burning any attempt. `None` when
    /// stopped meanwhile; `Err` for a statement that failed.
    async fn apply_held(
        &self,
        messages: &[(&FieldTable, &[u8])],
        stop: &CancellationToken,
    ) -> Option<Result<Vec<Outcome>, tokio_postgres::Error>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.apply_batch(messages).await {
                Ok(outcomes) => return Some(Ok(outcomes)),
                Err(apply::ApplyError::Statement(error)) => return Some(Err(error)),
                Err(apply::ApplyError::DatabaseUnavailable(error)) => {
                    self.count("db_unavailable", "");
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "database unavailable; holding the messages");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return None,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn settle(&self, delivery: &Delivery, headers: &FieldTable, outcome: Outcome) {
        let forwarded = match &outcome {
            Outcome::Applied { received_at } => {
                if let Some(received_at) = received_at {
                    let took = chrono::Utc::now() - *received_at;
                    self.metrics
                        .apply_seconds
                        .observe(took.to_std().unwrap_or_default().as_secs_f64());
                }
                self.count("applied", "");
                Ok(())
            }
            Outcome::Duplicate => {
                self.count("duplicate", "");
                Ok(())
            }
            Outcome::Retry(reason) => self.retry_or_dead(delivery, headers, *reason).await,
            Outcome::Dead(reason) => self.dead_letter(delivery, headers, *reason).await,
        };
        match forwarded {
            // Only after the commit, or after the confirmed move to another queue.
            Ok(()) => {
                // lapin answers Ok(false), not an error, when the channel is already closed.
                match delivery.acker.ack(BasicAckOptions::default()).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        "ack not sent: the channel is closed; the message will be redelivered and absorbed"
                    ),
                    Err(error) => tracing::warn!(
                        %error,
                        "ack failed; the message will be redelivered and absorbed"
                    ),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not move the message; it stays unacked for redelivery")
            }
        }
    }

    fn count(&self, outcome: &str, reason: &str) {
        self.metrics
            .worker_messages
            .with_label_values(&[outcome, reason])
            .inc();
    }
}

fn consumer_closed() -> lapin::Error {
    lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "consumer").into()
}

/// A channel with a prefetch limit, for a consumer loop.
async fn open_channel(connection: &Connection, prefetch: u16) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel)
}
