//! Moving a message on: to a retry tier (it may succeed later) or to the dead-letter queue.
//! Always a confirmed publish first, then the caller's ack: never a nack, which would
//! dead-letter at most once.

use bytes::Bytes;
use chrono::Utc;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

use super::{Reason, Worker};
use crate::queue::message::{
    HEADER_ATTEMPTS, HEADER_DEAD_LETTER_ID, HEADER_DEAD_REASON, HEADER_FIRST_FAILURE,
    HEADER_LAST_FAILURE, header_i64, put, rfc3339,
};
use crate::queue::{Envelope, PublishError};

impl Worker {
    /// Through the next delay tier, or dead-lettered once the tiers are exhausted.
    pub(super) async fn retry_or_dead(
        &self,
        delivery: &Delivery,
        headers: &FieldTable,
        reason: Reason,
    ) -> Result<(), PublishError> {
        let failures = header_i64(headers, HEADER_ATTEMPTS).unwrap_or(0) + 1;
        let tier = usize::try_from(failures - 1)
            .ok()
            .and_then(|i| self.broker.topology().retry_tiers().into_iter().nth(i));
        let Some((delay, queue)) = tier else {
            return self.dead_letter(delivery, headers, reason).await;
        };
        let headers = with_failure(headers, failures);
        self.broker
            .publish(&moved(delivery, queue, headers))
            .await?;
        self.count("retried", reason.as_str());
        tracing::info!(
            reason = reason.as_str(),
            attempt = failures,
            delay_s = delay.as_secs(),
            "retrying later"
        );
        Ok(())
    }

    /// To the dead-letter queue, body and original headers unchanged, with the reason, the
    /// attempt count, the failure times and a unique dead-letter id added.
    pub(super) async fn dead_letter(
        &self,
        delivery: &Delivery,
        headers: &FieldTable,
        reason: Reason,
    ) -> Result<(), PublishError> {
        let failures = header_i64(headers, HEADER_ATTEMPTS).unwrap_or(0) + 1;
        let mut headers = with_failure(headers, failures);
        put(&mut headers, HEADER_DEAD_REASON, reason.as_str());
        let id = uuid::Uuid::new_v4().to_string();
        put(&mut headers, HEADER_DEAD_LETTER_ID, &id);
        self.broker
            .publish(&moved(
                delivery,
                self.broker.topology().dead_queue(),
                headers,
            ))
            .await?;
        self.count("dead_lettered", reason.as_str());
        tracing::warn!(reason = reason.as_str(), dead_letter_id = %id, attempts = failures, "dead-lettered");
        Ok(())
    }
}

fn with_failure(headers: &FieldTable, failures: i64) -> FieldTable {
    let now = rfc3339(Utc::now());
    let mut headers = headers.clone();
    headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(failures));
    if !headers.inner().contains_key(HEADER_FIRST_FAILURE) {
        put(&mut headers, HEADER_FIRST_FAILURE, &now);
    }
    put(&mut headers, HEADER_LAST_FAILURE, &now);
    headers
}

/// The same message, addressed to `queue` through the default exchange.
fn moved(delivery: &Delivery, queue: String, headers: FieldTable) -> Envelope {
    Envelope {
        exchange: String::new(),
        routing_key: queue,
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        headers,
        body: Bytes::copy_from_slice(&delivery.data),
    }
}
