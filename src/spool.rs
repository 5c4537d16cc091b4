//! The spool: where a verified webhook goes when the broker is not connected or does not
//! confirm within KYC_PUBLISH_TIMEOUT. It is committed to PostgreSQL before the 200, and a
//! relay in every `kyc serve` publishes it (with a confirm) as soon as the broker is back,
//! deleting the row only after the confirm. Veriff's decision reaches the user seconds after
//! a broker outage ends, not an hour later with Veriff's retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::crypto::Cipher;
use crate::error::{BoxError, chain};
use crate::metrics::Metrics;
use crate::queue::{Broker, Envelope, PublishError, RecordedWebhook};
use crate::storage::DbError;
use crate::storage::spool::{self as store, Spooled};
use crate::veriff::signature::VerifiedWebhook;

/// Longest a webhook waits for its row to commit before the answer is 503.
const STORE_DEADLINE: Duration = Duration::from_secs(5);
/// Rows relayed per transaction.
const RELAY_BATCH: i64 = 256;
/// How long a relayed row waits for its confirm.
const RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle relay looks again this often (rows spooled by other replicas), or at once when
/// this process spools one.
const IDLE_POLL: Duration = Duration::from_secs(1);
const GAUGES_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool's database")]
    Db(#[from] DbError),
    #[error("the spool's database did not commit in time")]
    Timeout,
}

/// The receiver's side: commits webhooks to the spool.
#[derive(Clone)]
pub struct Spool {
    pool: Pool,
    cipher: Cipher,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl Spool {
    pub fn new(pool: Pool, cipher: Cipher, metrics: Arc<Metrics>) -> Self {
        Self {
            pool,
            cipher,
            metrics,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Commits the webhook; once this returns `Ok`, the webhook is durable.
    pub async fn store(
        &self,
        webhook: &VerifiedWebhook,
        dedup_key: &str,
        parsed: bool,
        received_at: DateTime<Utc>,
    ) -> Result<(), SpoolError> {
        let row = Spooled {
            kind: webhook.kind(),
            integration: webhook.integration(),
            signature: webhook.signature().to_owned(),
            dedup_key: dedup_key.to_owned(),
            parsed,
            body_ciphertext: self.cipher.seal(webhook.body()),
            received_at,
        };
        let commit = async {
            let client = self.pool.get().await.map_err(DbError::from)?;
            store::insert(&client, &row).await.map_err(DbError::from)?;
            Ok::<(), SpoolError>(())
        };
        tokio::time::timeout(STORE_DEADLINE, commit)
            .await
            .unwrap_or(Err(SpoolError::Timeout))?;
        self.metrics.spooled.inc();
        self.wake.notify_one();
        Ok(())
    }

    /// The relay of this process, to run (supervised) until `stop`.
    pub fn relay(&self, broker: Broker) -> Relay {
        Relay {
            spool: self.clone(),
            broker,
        }
    }
}

/// Drains the spool into the broker, oldest first, beside the relays of other replicas.
pub struct Relay {
    spool: Spool,
    broker: Broker,
}

impl Relay {
    pub async fn run(self, stop: CancellationToken) -> Result<(), BoxError> {
        let mut backoff = Backoff::new();
        let mut sampled: Option<Instant> = None;
        loop {
            if sampled.is_none_or(|at| at.elapsed() >= GAUGES_EVERY) {
                self.sample().await;
                sampled = Some(Instant::now());
            }
            let connected = tokio::select! {
                connected = self.broker.connection() => connected.is_some(),
                () = stop.cancelled() => false,
            };
            if !connected {
                return Ok(());
            }
            let drained = tokio::select! {
                drained = self.drain_once() => drained,
                () = stop.cancelled() => return Ok(()),
            };
            match drained {
                Ok(0) => {
                    backoff.reset();
                    tokio::select! {
                        () = self.spool.wake.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        () = stop.cancelled() => return Ok(()),
                    }
                }
                Ok(_) => backoff.reset(),
                Err(error) => {
                    tracing::warn!(error = %chain(&*error), "the spool's relay failed; trying again");
                    if !backoff.wait(&stop).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Relays one batch; returns how many rows were relayed (and deleted).
    async fn drain_once(&self) -> Result<usize, BoxError> {
        let mut client = self.spool.pool.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let rows = store::take_oldest(&tx, RELAY_BATCH)
            .await
            .map_err(DbError::from)?;
        if rows.is_empty() {
            tx.commit().await.map_err(DbError::from)?;
            return Ok(0);
        }
        let publishes = rows.iter().map(|(id, row)| async move {
            let outcome = self.publish(row).await;
            (*id, outcome)
        });
        let outcomes = futures_util::future::join_all(publishes).await;
        let confirmed: Vec<i64> = outcomes
            .iter()
            .filter(|(_, outcome)| outcome.is_ok())
            .map(|(id, _)| *id)
            .collect();
        store::delete(&tx, &confirmed)
            .await
            .map_err(DbError::from)?;
        tx.commit().await.map_err(DbError::from)?;
        let relayed = confirmed.len();
        self.spool.metrics.relayed.inc_by(relayed as u64);
        if let Some((_, Err(error))) = outcomes.into_iter().find(|(_, o)| o.is_err()) {
            return Err(format!(
                "{relayed} of {} spooled webhooks relayed: {}",
                rows.len(),
                chain(&error)
            )
            .into());
        }
        tracing::debug!(relayed, "spooled webhooks relayed");
        Ok(relayed)
    }

    async fn publish(&self, row: &Spooled) -> Result<(), PublishError> {
        let body = self.spool.cipher.open(&row.body_ciphertext).map_err(|_| {
            // Sealed with another key (a rotation without the old key): kept for on-call.
            tracing::error!(dedup_key = %row.dedup_key, "a spooled body cannot be decrypted with KYC_ARCHIVE_ENCRYPTION_KEY");
            PublishError::Nacked
        })?;
        let webhook = RecordedWebhook {
            kind: row.kind,
            integration: row.integration,
            signature: row.signature.clone(),
            dedup_key: row.dedup_key.clone(),
            received_at: row.received_at,
            parsed: row.parsed,
            body: body.into(),
        };
        let envelope = Envelope::recorded(self.broker.topology(), &webhook, None);
        self.broker.publish(envelope, RELAY_TIMEOUT).await?;
        Ok(())
    }

    async fn sample(&self) {
        let depth = async {
            let client = self.spool.pool.get().await.map_err(DbError::from)?;
            store::depth(&client).await.map_err(DbError::from)
        };
        match depth.await {
            Ok((rows, oldest)) => {
                self.spool.metrics.spool_depth.set(rows);
                self.spool.metrics.spool_oldest_seconds.set(oldest);
            }
            Err(error) => tracing::debug!(error = %chain(&error), "spool depth not sampled"),
        }
    }
}
