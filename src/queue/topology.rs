//! The exchanges and queues of DESIGN.md section 7, named under a prefix and declared
//! idempotently by every process at start.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Redeliveries of one message before the broker gives up on it. Set explicitly on every
/// queue: RabbitMQ 4 would otherwise drop a quorum message after 20. The worker never
/// requeues on purpose, so only crashes count against the main queue's limit.
const MAIN_DELIVERY_LIMIT: i64 = 50;
/// Nothing consumes a retry tier; its messages leave by TTL only.
const RETRY_DELIVERY_LIMIT: i64 = 50;
/// Dead letters must never be dropped by the broker, whatever happens to the recorder.
const DEAD_DELIVERY_LIMIT: i64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    retry_delays: Vec<Duration>,
}

impl Topology {
    pub fn new(prefix: impl Into<String>, retry_delays: Vec<Duration>) -> Self {
        Self {
            prefix: prefix.into(),
            retry_delays,
        }
    }

    /// The topic exchange webhooks are published to.
    pub fn exchange(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }

    /// The queue the worker consumes.
    pub fn main_queue(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The retry tiers, shortest delay first, with their queue names.
    pub fn retry_tiers(&self) -> Vec<(Duration, String)> {
        self.retry_delays
            .iter()
            .map(|d| (*d, format!("{}.retry.{}", self.prefix, label(*d))))
            .collect()
    }

    /// Every queue, main first: what a depth gauge or a clean-up walks over.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.main_queue()];
        queues.extend(self.retry_tiers().into_iter().map(|(_, q)| q));
        queues.push(self.dead_queue());
        queues
    }

    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions::durable();
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;

        let dead = self.dead_queue();
        channel
            .queue_declare(dead.as_str().into(), durable, quorum(DEAD_DELIVERY_LIMIT))
            .await?;

        // The main queue dead-letters what exceeds its delivery limit (a message that keeps
        // crashing workers) into the dead queue, at least once, so that it is never dropped.
        let mut main_args = quorum(MAIN_DELIVERY_LIMIT);
        dead_letter_to(&mut main_args, &dead);
        let main = self.main_queue();
        channel
            .queue_declare(main.as_str().into(), durable, main_args)
            .await?;
        channel
            .queue_bind(
                main.as_str().into(),
                self.exchange().into(),
                "veriff.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        for (delay, queue) in self.retry_tiers() {
            let mut args = quorum(RETRY_DELIVERY_LIMIT);
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            dead_letter_to(&mut args, &main);
            channel
                .queue_declare(queue.as_str().into(), durable, args)
                .await?;
        }
        Ok(())
    }
}

fn quorum(delivery_limit: i64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(delivery_limit),
    );
    args
}

/// Dead-letters through the default exchange straight into `queue`.
fn dead_letter_to(args: &mut FieldTable, queue: &str) {
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    // at-least-once dead-lettering requires it.
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
}

fn label(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::new(
            "kyc",
            [5, 30, 120, 600, 7200].map(Duration::from_secs).to_vec(),
        );
        assert_eq!(t.exchange(), "kyc.webhooks");
        assert_eq!(t.main_queue(), "kyc.webhooks");
        assert_eq!(t.dead_queue(), "kyc.dead");
        let tiers: Vec<String> = t.retry_tiers().into_iter().map(|(_, q)| q).collect();
        assert_eq!(
            tiers,
            [
                "kyc.retry.5s",
                "kyc.retry.30s",
                "kyc.retry.2m",
                "kyc.retry.10m",
                "kyc.retry.2h"
            ]
        );
    }
}
