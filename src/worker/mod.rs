//! The decision worker: consumes `kyc.webhooks`, applies each message in one transaction,
//! and acks only after the commit. What may succeed later goes through the delay tiers; what
//! never can is dead-lettered. Both moves are a confirmed publish followed by the ack.
//!
//! A worker process runs three supervised loops: the consumer, the dead-letter recorder and
//! the housekeeping (gauges, retention, reconciliation); if one ends, the process stops.

mod apply;
mod forward;
mod housekeeping;
mod reconcile;
mod recorder;
mod stranded;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use apply::Outcome;
use stranded::Stranding;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::crypto::Cipher;
use crate::error::{BoxError, chain};
use crate::metrics::Metrics;
use crate::queue::{Broker, Message};
use crate::state_machine::Policy;
use crate::veriff::client::VeriffClient;
use crate::veriff::integration::Integrations;

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
    pub(crate) const ALL: [Reason; 6] = [
        Reason::InvalidSignature,
        Reason::Unparseable,
        Reason::UnknownStatus,
        Reason::UnknownSession,
        Reason::RegionMismatch,
        Reason::ApplyFailed,
    ];

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

/// How long a consumer waits for the broker to answer a cancel or a close of its channel.
const CHANNEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long in-flight messages may take to finish on shutdown.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
/// How long a move to a retry tier or the dead-letter queue waits for its confirm.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// A message whose move failed goes back to the queue after this pause, not at once: the
/// cause (a queue being re-declared, a broker alarm) needs a moment, and a tight loop helps
/// nobody.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// How the worker applies: what `KYC_WORKER_*` and the policy settings say.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    /// Batches applied at once, each in a transaction of its own.
    pub batches: usize,
    /// Most messages in one batch.
    pub batch_size: usize,
    pub archive_retention: Duration,
    pub policy: Policy,
}

impl WorkerSettings {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            batches: usize::from(config.worker_concurrency),
            batch_size: usize::from(config.worker_batch),
            archive_retention: config.archive_retention,
            policy: config.policy(),
        }
    }
}

pub(crate) struct Worker {
    pool: Pool,
    broker: Broker,
    integrations: Integrations,
    archive: Cipher,
    metrics: Arc<Metrics>,
    /// Veriff's API, for reconciliation (absent: no reconciliation).
    veriff: Option<VeriffClient>,
    settings: WorkerSettings,
}

/// A named loop of a role, for the service to supervise.
pub(crate) type Task = (
    &'static str,
    Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>,
);

impl Worker {
    pub fn new(
        settings: WorkerSettings,
        pool: Pool,
        broker: Broker,
        integrations: Integrations,
        archive: Cipher,
        metrics: Arc<Metrics>,
        veriff: Option<VeriffClient>,
    ) -> Self {
        Self {
            pool,
            broker,
            integrations,
            archive,
            metrics,
            veriff,
            settings,
        }
    }

    /// Database connections the worker's loops use at most: one per batch, one for the
    /// recorder, one for housekeeping.
    pub(crate) fn pool_size(settings: &WorkerSettings) -> usize {
        settings.batches + 2
    }

    /// The worker's loops, each running until `stop`.
    pub fn tasks(self: Arc<Self>, stop: &CancellationToken) -> [Task; 3] {
        let (consumer, recorder, housekeeping) = (Arc::clone(&self), Arc::clone(&self), self);
        let (s1, s2, s3) = (stop.clone(), stop.clone(), stop.clone());
        [
            (
                "worker",
                Box::pin(async move {
                    let (worker, token) = (&consumer, &s1);
                    worker
                        .on_every_connection("worker", token, move |connection| async move {
                            worker.consume(&connection, token).await
                        })
                        .await;
                    Ok(())
                }),
            ),
            (
                "dead-letter recorder",
                Box::pin(async move {
                    recorder.run_recorder(s2).await;
                    Ok(())
                }),
            ),
            (
                "housekeeping",
                Box::pin(async move {
                    housekeeping.run_housekeeping(s3).await;
                    Ok(())
                }),
            ),
        ]
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
        let mut backoff = Backoff::new();
        while !stop.is_cancelled() {
            let connection = tokio::select! {
                connection = self.broker.connection() => connection,
                () = stop.cancelled() => None,
            };
            let Some(connection) = connection else {
                break;
            };
            match consume(connection).await {
                Ok(()) => backoff.reset(),
                Err(error) => {
                    if stop.is_cancelled() {
                        break;
                    }
                    tracing::warn!(error = %chain(&error), "{what} lost its channel; resuming");
                    if !backoff.wait(stop).await {
                        break;
                    }
                }
            }
        }
    }

    async fn consume(
        self: &Arc<Self>,
        connection: &Connection,
        stop: &CancellationToken,
    ) -> lapin::Result<()> {
        let (batches, batch_size) = (self.settings.batches, self.settings.batch_size);
        let prefetch = u16::try_from(batches * batch_size * 2).unwrap_or(u16::MAX);
        let tag = format!("kyc-worker-{}", uuid::Uuid::new_v4().simple());
        let queue = self.broker.topology().main_queue();
        let (channel, mut consumer) = subscribe(connection, prefetch, &queue, &tag).await?;
        let slots = Arc::new(Semaphore::new(batches));
        let in_flight = TaskTracker::new();
        let mut stranding = Stranding::new(self.broker.resubscriptions());
        let outcome = loop {
            let first = tokio::select! {
                () = stop.cancelled() => break Ok(()),
                suspicion = stranding.suspect() => {
                    match stranding.stranded(suspicion, !in_flight.is_empty()) {
                        None => continue,
                        Some(why) => {
                            tracing::debug!(why, "the worker consumes anew");
                            break Ok(());
                        }
                    }
                }
                next = consumer.next() => next,
            };
            stranding.delivered();
            let mut batch = Vec::with_capacity(batch_size);
            let mut ended = None;
            // Whatever else has already arrived joins the batch; nothing waits for more.
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Some(Ok(delivery)) => batch.push(delivery),
                    Some(Err(error)) => ended = Some(error),
                    None => ended = Some(consumer_closed()),
                }
                if ended.is_none() && batch.len() < batch_size {
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
        // Stop taking messages, then let the batches being applied finish and ack. (The
        // broker may never answer the cancel of a consumer whose queue was deleted.)
        let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
        let _ = tokio::time::timeout(CHANNEL_TIMEOUT, cancel).await;
        in_flight.close();
        if tokio::time::timeout(DRAIN_DEADLINE, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight messages did not finish before the deadline; they will be redelivered"
            );
        }
        close_channel(&channel, "worker stopping").await;
        outcome
    }

    /// Applies a batch, holding it while the database is unreachable, and settles each message.
    async fn handle(&self, batch: Vec<Delivery>, stop: &CancellationToken) {
        let messages: Vec<Message> = batch.iter().map(Message::from_delivery).collect();
        let checks: Vec<_> = messages.iter().map(|m| self.check(m)).collect();
        let spans: Vec<tracing::Span> = messages
            .iter()
            .zip(&checks)
            .map(|(m, c)| apply::span(m, c))
            .collect();
        let outcomes = match self.apply_held(&checks, stop).await {
            None => return, // stopping while the database is away: redelivered later
            Some(Ok(outcomes)) => outcomes,
            Some(Err(error)) => {
                tracing::warn!(error = %chain(&error), size = batch.len(), "batch failed; applying its messages one by one");
                let mut outcomes = Vec::with_capacity(messages.len());
                for (check, span) in checks.iter().zip(&spans) {
                    let one = self
                        .apply_held(std::slice::from_ref(check), stop)
                        .instrument(span.clone())
                        .await;
                    match one {
                        None => return,
                        Some(Ok(mut one)) => {
                            outcomes.push(one.pop().unwrap_or(Outcome::Retry(Reason::ApplyFailed)))
                        }
                        Some(Err(error)) => {
                            span.in_scope(|| {
                                tracing::warn!(error = %chain(&error), "applying a webhook failed")
                            });
                            outcomes.push(Outcome::Retry(Reason::ApplyFailed));
                        }
                    }
                }
                outcomes
            }
        };
        let settles = batch.iter().zip(&messages).zip(outcomes).zip(spans).map(
            |(((delivery, message), outcome), span)| {
                self.settle(delivery, message, outcome, stop)
                    .instrument(span)
            },
        );
        futures_util::future::join_all(settles).await;
    }

    /// Applies, waiting out database outages without burning any attempt. `None` when
    /// stopped meanwhile; `Err` for a statement that failed.
    async fn apply_held(
        &self,
        checks: &[Result<apply::Checked, Reason>],
        stop: &CancellationToken,
    ) -> Option<Result<Vec<Outcome>, crate::storage::DbError>> {
        let mut backoff = Backoff::new();
        loop {
            match self.apply_batch(checks).await {
                Ok(outcomes) => return Some(Ok(outcomes)),
                Err(error) if error.is_outage() => {
                    self.count("db_unavailable", "");
                    tracing::warn!(error = %chain(&error), "database unavailable; holding the messages");
                    if !backoff.wait(stop).await {
                        return None;
                    }
                }
                Err(error) => return Some(Err(error)),
            }
        }
    }

    async fn settle(
        &self,
        delivery: &Delivery,
        message: &Message,
        outcome: Outcome,
        stop: &CancellationToken,
    ) {
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
            Outcome::Retry(reason) => self.retry_or_dead(message, *reason).await,
            Outcome::Dead(reason) => self.dead_letter(message, *reason).await,
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
                        error = %chain(&error),
                        "ack failed; the message will be redelivered and absorbed"
                    ),
                }
            }
            Err(error) => {
                let reason = match &outcome {
                    Outcome::Retry(reason) | Outcome::Dead(reason) => reason.as_str(),
                    Outcome::Applied { .. } | Outcome::Duplicate => "",
                };
                self.count("requeued", reason);
                tracing::warn!(error = %chain(&error), "could not move the message; it goes back to the queue");
                tokio::select! {
                    () = tokio::time::sleep(REQUEUE_PAUSE) => {}
                    () = stop.cancelled() => {}
                }
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                if !matches!(delivery.acker.nack(requeue).await, Ok(true)) {
                    tracing::warn!(
                        "nack not sent: the channel is closed; the message will be redelivered"
                    );
                }
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

/// Closes a consumer's channel, without waiting long for the broker's answer: the channel is
/// given up either way, and a consumer must not hang on a broker in trouble.
async fn close_channel(channel: &Channel, why: &str) {
    let _ = tokio::time::timeout(CHANNEL_TIMEOUT, channel.close(200, why.into())).await;
}

/// A channel with a prefetch limit, consuming `queue`. Bounded in time: RabbitMQ may never
/// answer a consume of a quorum queue that is being deleted at that moment, and a consumer
/// loop stuck there would take nothing from the queue declared next.
async fn subscribe(
    connection: &Connection,
    prefetch: u16,
    queue: &str,
    tag: &str,
) -> lapin::Result<(Channel, Consumer)> {
    let channel = tokio::time::timeout(CHANNEL_TIMEOUT, connection.create_channel())
        .await
        .map_err(|_| timed_out("opening a consumer's channel"))??;
    let consume = async {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    };
    match tokio::time::timeout(CHANNEL_TIMEOUT, consume).await {
        Ok(Ok(consumer)) => Ok((channel, consumer)),
        Ok(Err(error)) => Err(error),
        Err(_) => {
            close_channel(&channel, "consume timed out").await;
            Err(timed_out("consuming"))
        }
    }
}

fn timed_out(what: &'static str) -> lapin::Error {
    lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Error, what).into()
}
