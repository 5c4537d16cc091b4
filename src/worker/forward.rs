//! Moving a message on: to a retry tier (it may succeed later) or to the dead-letter queue.
//! Always a confirmed publish first, then the caller's ack: never a nack, which would
//! dead-letter at most once.

use chrono::Utc;

use super::{FORWARD_TIMEOUT, Reason, Worker};
use crate::queue::{Message, PublishError};

impl Worker {
    /// Through the next delay tier, or dead-lettered once the tiers are exhausted.
    pub(super) async fn retry_or_dead(
        &self,
        message: &Message,
        reason: Reason,
    ) -> Result<(), PublishError> {
        let tier = usize::try_from(message.attempts)
            .ok()
            .and_then(|i| self.broker.topology().retry_tiers().into_iter().nth(i));
        let Some((delay, queue)) = tier else {
            return self.dead_letter(message, reason).await;
        };
        self.broker
            .publish(message.to_retry(queue, Utc::now()), FORWARD_TIMEOUT)
            .await?;
        self.count("retried", reason.as_str());
        tracing::info!(
            reason = reason.as_str(),
            attempt = message.attempts + 1,
            delay_s = delay.as_secs(),
            "retrying later"
        );
        Ok(())
    }

    /// To the dead-letter queue, body and original headers unchanged, with the reason, the
    /// attempt count, the failure times and the dead-letter id added.
    pub(super) async fn dead_letter(
        &self,
        message: &Message,
        reason: Reason,
    ) -> Result<(), PublishError> {
        let (envelope, id) = message.to_dead(
            self.broker.topology().dead_queue(),
            reason.as_str(),
            Utc::now(),
        );
        self.broker.publish(envelope, FORWARD_TIMEOUT).await?;
        self.count("dead_lettered", reason.as_str());
        tracing::warn!(reason = reason.as_str(), dead_letter_id = %id, attempts = message.attempts + 1, "dead-lettered");
        Ok(())
    }
}
