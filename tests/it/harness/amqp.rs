//! Looking into the broker from a test: take messages from a test's queues, count them,
//! and delete the test's topology afterwards.

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

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

    pub async fn count(&self, queue: &str) -> u32 {
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
        declared.message_count()
    }

    pub async fn main_count(&self) -> u32 {
        self.count(&self.topology.main_queue()).await
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
