//! Periodic chores of the worker: queue depth gauges, reconciliation of sessions past their
//! end, and clearing raw bodies past retention.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::Worker;

const DEPTH_EVERY: Duration = Duration::from_secs(5);
const RETENTION_EVERY: Duration = Duration::from_secs(600);
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

impl Worker {
    pub(super) async fn run_housekeeping(self: Arc<Self>, stop: CancellationToken) {
        let mut depth = tokio::time::interval(DEPTH_EVERY);
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = depth.tick() => self.sample_queue_depths().await,
                _ = retention.tick() => match self.forget_expired_bodies().await {
                    Ok(0) => {}
                    Ok(cleared) => tracing::info!(cleared, "raw bodies past retention cleared"),
                    Err(error) => tracing::warn!(%error, "clearing raw bodies past retention failed"),
                },
                _ = reconcile.tick() => if let Err(error) = self.reconcile_due().await {
                    tracing::warn!(%error, "reconciliation failed");
                },
            }
        }
    }

    async fn sample_queue_depths(&self) {
        let Some(connection) = self.broker.connection_now() else {
            return;
        };
        let Ok(channel) = connection.create_channel().await else {
            return;
        };
        for queue in self.broker.topology().queues() {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(declared) => self
                    .metrics
                    .queue_depth
                    .with_label_values(&[&queue])
                    .set(i64::from(declared.message_count())),
                Err(_) => break, // a failed passive declare closes the channel
            }
        }
        let _ = channel.close(200, "sampled".into()).await;
    }

    /// Raw bodies hold personal data: kept only for KYC_ARCHIVE_RETENTION. The facts stay.
    pub async fn forget_expired_bodies(
        &self,
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let seconds = i64::try_from(self.archive_retention.as_secs()).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let mut cleared = 0;
        for table in ["inputs", "dead_letters"] {
            cleared += client
                .execute(
                    &format!(
                        "UPDATE {table} SET body_ciphertext = NULL
                         WHERE body_ciphertext IS NOT NULL AND recorded_at < now() - make_interval(secs => $1::float8)"
                    ),
                    &[&(seconds as f64)],
                )
                .await?;
        }
        Ok(cleared)
    }
}
