//! The publisher pairs each returned message with its own publish: routable and unroutable
//! publishes mixed on the same lanes, many in flight at once (so that RabbitMQ merges their
//! confirms into multiple-acks), are each reported as what they are.

use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

use kyc::queue::{Broker, Envelope, PublishError, RecordedWebhook, Topology};
use kyc::veriff::Kind;
use kyc::veriff::integration::Integration;

use crate::harness::QueuePeek;
use crate::harness::amqp::delete_topology;
use crate::harness::{AMQP_URL, unique_prefix};

fn webhook(n: usize) -> RecordedWebhook {
    RecordedWebhook {
        kind: Kind::Decision,
        integration: Integration::Eu,
        signature: "00".repeat(32),
        dedup_key: format!("key-{n}"),
        received_at: Utc::now(),
        parsed: true,
        body: format!("{{\"n\":{n}}}").into_bytes().into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_and_confirmed_publishes_are_never_mixed_up() {
    let routed = Topology::new(unique_prefix(), vec![Duration::from_secs(5)]);
    // An exchange with no queue bound: everything published to it is returned.
    let nowhere = Topology::new(unique_prefix(), vec![Duration::from_secs(5)]);
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            nowhere.exchange().as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("an exchange without queues");

    let broker = Broker::start(
        &[crate::harness::AMQP_URL.to_owned()],
        "test",
        routed.clone(),
        CancellationToken::new(),
    )
    .expect("broker");
    broker.connection().await.expect("connected");
    const N: usize = 2_000;
    let outcomes = join_all((0..N).map(|n| {
        let topology = if n % 3 == 0 { &nowhere } else { &routed };
        let envelope = Envelope::recorded(topology, &webhook(n), None);
        let broker = &broker;
        async move {
            (
                n,
                broker
                    .publish(envelope, Duration::from_secs(30))
                    .await
                    .map(|_| ()),
            )
        }
    }))
    .await;
    let mut wrong = Vec::new();
    for (n, outcome) in &outcomes {
        let ok = matches!(
            (n % 3 == 0, outcome),
            (true, Err(PublishError::Unroutable)) | (false, Ok(()))
        );
        if !ok {
            wrong.push((n, format!("{outcome:?}")));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} misreported: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let routable = (0..N).filter(|n| n % 3 != 0).count();
    let peek = QueuePeek::new(routed.clone());
    assert_eq!(
        peek.main_count().await as usize,
        routable,
        "every confirmed one is there"
    );

    broker.close().await;
    delete_topology(&routed).await;
    delete_topology(&nowhere).await;
    let _ = connection.close(200, "done".into()).await;
}
