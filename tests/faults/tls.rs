//! TLS to RabbitMQ (DESIGN section 8): `amqps://`, verified against the CA file named by the
//! URL's `cacertfile`, or the system's roots; a wrong CA or a wrong name never connects. A node
//! of the suite's own with a TLS listener, beside the main one.

use std::time::Duration;

use kyc::queue::Broker;
use kyc::veriff::integration::Integration;
use tokio_util::sync::CancellationToken;

use crate::harness::seed::decision;
use crate::harness::{Spawn, TestApp, eventually, unique_prefix};
use crate::nodes::TlsNode;
use crate::{metric, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_is_verified_against_the_ca_file_and_the_name() {
    let _serial = serial().await;
    let node = TlsNode::start().await;

    // With the CA that issued the node's certificate: the whole flow goes over TLS.
    let url = node.amqps_url("localhost", Some(&node.ca));
    let app = TestApp::start(Spawn {
        worker: true,
        amqp_url: &url,
        ..Spawn::default()
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the broker connected over TLS",
        || async { (metric(&app.metrics().await, "kyc_broker_connected") == 1.0).then_some(()) },
    )
    .await;
    let v = app.seed_verification(Integration::Eu, "s-amqps").await;
    let body = decision(
        "s-amqps",
        Some("a1"),
        "approved",
        "2030-01-01T10:00:00Z",
        None,
    );
    app.send("decision", &body).await;
    app.wait_row(v, "VERIFIED", "NONE").await;
    let queues = node.node.ctl(&["list_queues", "name"]).await;
    assert!(
        queues.contains(&app.config.topology().main_queue()),
        "the queues are the TLS node's: {queues}"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "kyc_spooled_total"),
        0.0,
        "published, not spooled"
    );

    // What must never connect: the system's roots (which know nothing of the test's CA),
    // another CA, and a name the certificate does not carry.
    for (what, url) in [
        ("the system's roots", node.amqps_url("localhost", None)),
        (
            "another CA",
            node.amqps_url("localhost", Some(&node.other_ca)),
        ),
        (
            "a name not in the certificate",
            node.amqps_url("127.0.0.1", Some(&node.ca)),
        ),
    ] {
        let topology = kyc::queue::Topology::new(unique_prefix(), vec![Duration::from_secs(5)]);
        let broker = Broker::start(&[url], "test", topology, CancellationToken::new())
            .expect("a well-formed URL");
        let connected = tokio::time::timeout(Duration::from_secs(5), broker.connection()).await;
        assert!(connected.is_err(), "{what}: connected");
        broker.close().await;
    }
}
