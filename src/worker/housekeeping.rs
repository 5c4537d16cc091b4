//! Periodic chores of the worker: gauges (queue depths, dead letters needing action),
//! reconciliation of sessions past their end, and clearing raw bodies past retention.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::error::{BoxError, chain};
use crate::storage::{DbError, dead_letters, retention};

const GAUGES_EVERY: Duration = Duration::from_secs(5);
const RETENTION_EVERY: Duration = Duration::from_secs(600);
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

impl Worker {
    pub(super) async fn run_housekeeping(self: Arc<Self>, stop: CancellationToken) {
        let mut gauges = tokio::time::interval(GAUGES_EVERY);
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        // Whether the last sample found a queue this worker consumes without any consumer.
        let mut unconsumed = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = gauges.tick() => {
                    let now = self.sample_queue_depths().await;
                    if now && unconsumed {
                        // Twice in a row: this process's consumer is likely attached to a
                        // queue that was deleted and declared again without the broker
                        // telling it (by another replica, or by hand). Harmless if it was
                        // only reconnecting.
                        tracing::warn!("a queue this worker consumes has no consumer; consuming anew");
                        self.broker.resubscribe();
                    }
                    unconsumed = now;
                    self.sample_dead_letters().await;
                }
                _ = retention.tick() => match self.forget_expired_bodies().await {
                    Ok(0) => {}
                    Ok(cleared) => tracing::info!(cleared, "raw bodies past retention cleared"),
                    Err(error) => tracing::warn!(error = %chain(&*error), "clearing raw bodies past retention failed"),
                },
                _ = reconcile.tick() => {
                    // A round asks Veriff up to a hundred times: a stop must not wait for it.
                    // Sessions claimed and not asked about are asked again an hour later.
                    let outcome = tokio::select! {
                        outcome = self.reconcile_due() => outcome,
                        () = stop.cancelled() => return,
                    };
                    if let Err(error) = outcome {
                        tracing::warn!(error = %chain(&*error), "reconciliation failed");
                    }
                }
            }
        }
    }

    /// Samples the depth of every queue; returns whether the main or the dead-letter queue
    /// (those this worker consumes) had no consumer at all.
    async fn sample_queue_depths(&self) -> bool {
        let Some(connection) = self.broker.connection_now() else {
            return false;
        };
        let Ok(channel) = connection.create_channel().await else {
            return false;
        };
        let topology = self.broker.topology();
        let consumed = [topology.main_queue(), topology.dead_queue()];
        let mut unconsumed = false;
        for queue in topology.queues() {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(declared) => {
                    self.metrics
                        .queue_depth
                        .with_label_values(&[&queue])
                        .set(i64::from(declared.message_count()));
                    unconsumed |= declared.consumer_count() == 0 && consumed.contains(&queue);
                }
                Err(_) => break, // a failed passive declare closes the channel
            }
        }
        let _ = channel.close(200, "sampled".into()).await;
        unconsumed
    }

    /// Dead letters that still need action, and whether the database answers at all.
    async fn sample_dead_letters(&self) {
        let open: Result<i64, DbError> = async {
            let client = self.pool.get().await?;
            Ok(dead_letters::count_open(&client).await?)
        }
        .await;
        match open {
            Ok(open) => {
                self.metrics.database_up.set(1);
                self.metrics.dead_letters_open.set(open);
            }
            Err(error) => {
                self.metrics.database_up.set(i64::from(!error.is_outage()));
            }
        }
    }

    /// Raw bodies hold personal data: kept only for KYC_ARCHIVE_RETENTION. The facts stay.
    async fn forget_expired_bodies(&self) -> Result<u64, BoxError> {
        let client = self.pool.get().await?;
        Ok(retention::clear_expired_bodies(&client, self.settings.archive_retention).await?)
    }
}
