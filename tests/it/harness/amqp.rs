//! Looking into the broker from a test: take messages from a test's queues, count them,
//! and delete the test's topology afterwards.

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use kyc::queue::Topology;

use super::AMQP_URL;

pub struct QueuePeek {
    topology: Topology,
}

async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("test connects to RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

impl QueuePeek {
    pub fn new(topology: Topology) -> Self {
        Self { topology }
    }

    /// (ready messages, consumers) of a queue; messages a consumer holds unacked are not ready.
    async fn declare_passive(&self, queue: &str) -> (u32, u32) {
        let (_conn, ch) = channel().await;
        let declared = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        (declared.message_count(), declared.consumer_count())
    }

    /// Messages ready in `queue`, or `None` if it does not exist (now).
    pub async fn try_count(&self, queue: &str) -> Option<u32> {
        let (_conn, ch) = channel().await;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|declared| declared.message_count())
    }

    /// Messages ready in `queue`.
    pub async fn count(&self, queue: &str) -> u32 {
        self.declare_passive(queue).await.0
    }

    pub async fn main_count(&self) -> u32 {
        self.count(&self.topology.main_queue()).await
    }

    /// Consumers of `queue`.
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.declare_passive(queue).await.1
    }

    /// Consumers of the main queue (one per live worker).
    pub async fn main_consumers(&self) -> u32 {
        self.declare_passive(&self.topology.main_queue()).await.1
    }

    /// Messages ready in the retry tiers and in the dead-letter queue, by queue.
    pub async fn side_queue_counts(&self) -> Vec<(String, u32)> {
        let mut counts = Vec::new();
        for queue in self.topology.queues().into_iter().skip(1) {
            let n = self.count(&queue).await;
            counts.push((queue, n));
        }
        counts
    }

    /// Publishes straight to the webhook exchange, bypassing the receiver (and its signature
    /// check), with a confirm: what a party with access to the broker could inject.
    pub async fn publish_to_exchange(
        &self,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) {
        let (_conn, ch) = channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirmation = ch
            .basic_publish(
                self.topology.exchange().as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .expect("basic.publish")
            .await
            .expect("publisher confirm");
        assert_eq!(
            confirmation,
            Confirmation::Ack(None),
            "the broker took and routed the message"
        );
    }

    /// Publishes straight into `queue` through the default exchange, with a confirm: e.g. a
    /// message into the dead-letter queue, as the broker or a worker would leave it there.
    pub async fn publish_to_queue(&self, queue: &str, properties: BasicProperties, body: &[u8]) {
        let (_conn, ch) = channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirmation = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .expect("basic.publish")
            .await
            .expect("publisher confirm");
        assert_eq!(confirmation, Confirmation::Ack(None), "routed into {queue}");
    }

    /// Declares the test's topology (as any kyc process does when it connects).
    pub async fn declare_topology(&self) {
        let (_conn, ch) = channel().await;
        self.topology.declare(&ch).await.expect("topology declared");
    }

    /// Declares a classic queue with `arguments` (in place of one of kyc's, which a test
    /// deleted).
    pub async fn declare_classic(&self, queue: &str, arguments: FieldTable) {
        let (_conn, ch) = channel().await;
        ch.queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
            .await
            .expect("queue.declare");
    }

    /// Deletes `queue` (as an operator might, by mistake) and returns how many ready
    /// messages were deleted with it.
    pub async fn delete_queue(&self, queue: &str) -> u32 {
        let (_conn, ch) = channel().await;
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete")
    }

    /// Takes (and acks) every message now in `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<BasicGetMessage> {
        let (_conn, ch) = channel().await;
        let mut out = Vec::new();
        while let Some(message) = ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            out.push(message);
        }
        out
    }

    pub async fn drain_main(&self) -> Vec<BasicGetMessage> {
        self.drain(&self.topology.main_queue()).await
    }
}

pub async fn delete_topology(topology: &Topology) {
    let Ok(connection) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(ch) = connection.create_channel().await else {
        return;
    };
    for queue in topology.queues() {
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = ch
        .exchange_delete(
            topology.exchange().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = connection.close(200, "test done".into()).await;
}

/// Deletes a deployment's queues and exchange when dropped, after a failure too. Drop it
/// after the processes that use them, or they declare them again.
pub struct DeleteOnDrop(pub Topology);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let topology = self.0.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(delete_topology(&topology));
        });
        let _ = cleanup.join();
    }
}
