//! The decision worker: consumes `kyc.webhooks`, applies each message in one transaction,
//! and acks only after the commit. What may succeed later goes through the delay tiers; what
//! never can is dead-lettered. Both moves are a confirmed publish followed by the ack.

mod apply;
mod forward;
mod housekeeping;
mod recorder;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
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
    /// Messages applied at once; the prefetch is twice this.
    pub concurrency: usize,
    pub archive_retention: Duration,
}

impl Worker {
    /// Consumes until `stop`, reconnecting after broker failures; also runs the dead-letter
    /// recorder and the housekeeping tasks.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<(), BoxError> {
        let recorder = tokio::spawn(Arc::clone(&self).run_recorder(stop.clone()));
        let housekeeping = tokio::spawn(Arc::clone(&self).run_housekeeping(stop.clone()));
        while !stop.is_cancelled() {
            let Some(connection) = self.broker.connection().await else {
                break;
            };
            if let Err(error) = self.consume(&connection, &stop).await {
                if stop.is_cancelled() {
                    break;
                }
                tracing::warn!(%error, "worker lost its channel; resuming");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
        let _ = tokio::join!(recorder, housekeeping);
        Ok(())
    }

    async fn consume(
        self: &Arc<Self>,
        connection: &Connection,
        stop: &CancellationToken,
    ) -> lapin::Result<()> {
        let channel = connection.create_channel().await?;
        let prefetch = u16::try_from(self.concurrency * 2).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("kyc-worker-{}", uuid::Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                self.broker.topology().main_queue().as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let in_flight = TaskTracker::new();
        let outcome = loop {
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let worker = Arc::clone(self);
                        let (slots, stop) = (Arc::clone(&slots), stop.clone());
                        in_flight.spawn(async move { worker.handle(delivery, &slots, &stop).await });
                    }
                    Some(Err(error)) => break Err(error),
                    None => break Err(lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed, "consumer".into()).into()),
                }
            }
        };
        // Stop taking messages, then let those being applied finish and ack.
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

    /// Applies one delivery, holding it while the database is unreachable, and settles it.
    async fn handle(&self, delivery: Delivery, slots: &Semaphore, stop: &CancellationToken) {
        // Not started before shutdown: left unacked, so the broker hands it to another worker.
        let _slot = tokio::select! {
            slot = slots.acquire() => match slot { Ok(slot) => slot, Err(_) => return },
            () = stop.cancelled() => return,
        };
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        let outcome = loop {
            match self.apply(&headers, &delivery.data).await {
                Ok(outcome) => break outcome,
                Err(apply::ApplyError::Statement(error)) => {
                    tracing::warn!(%error, "applying a webhook failed");
                    break Outcome::Retry(Reason::ApplyFailed);
                }
                Err(apply::ApplyError::DatabaseUnavailable(error)) => {
                    self.count("db_unavailable", "");
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "database unavailable; holding the message");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.settle(&delivery, &headers, outcome).await;
    }

    async fn settle(&self, delivery: &Delivery, headers: &FieldTable, outcome: Outcome) {
        let forwarded = match &outcome {
            Outcome::Applied { received_at, .. } => {
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
                if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(%error, "ack failed; the message will be redelivered and absorbed");
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

/// A channel of its own for a consumer loop other than the main one.
async fn open_channel(connection: &Connection, prefetch: u16) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel)
}
