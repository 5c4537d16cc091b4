//! Case 1: the broker stopped for 20 s under a steady stream, then started again.

use std::time::Duration;

use crate::harness::ledger::Ledger;
use crate::harness::{Spawn, TestApp, eventually};
use crate::nodes::MainNode;
use crate::{DEADLINE, SETTLE, metric, serial, sessions, spool_rows, stream_of};

/// The outage.
const OUTAGE: Duration = Duration::from_secs(20);
const PER_SECOND: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_for_20_seconds_under_a_stream() {
    let _serial = serial().await;
    // `kyc run`: the receiver (with the spool and its relay) and the worker, one process.
    let app = TestApp::start(Spawn {
        worker: true,
        ..Spawn::default()
    })
    .await;
    // Declared after the app, so dropped before it: the node is up again before the app
    // deletes its queues, whatever happened.
    let node = MainNode::guard();
    let sessions = sessions(&app, "outage", 20).await;
    // 3 s before the outage, the outage, about 10 s after it.
    let seconds = 3 + OUTAGE.as_secs() + 10;
    let count = usize::try_from(seconds * u64::from(PER_SECOND)).expect("small");
    let webhooks = stream_of(&sessions, "outage", count);
    let ledger = Ledger::new("1. RabbitMQ stop_app for 20 s", &app.base_url, DEADLINE);

    let fault = async {
        eventually(Duration::from_secs(30), "the stream under way", || async {
            (ledger.answered_ok() >= u64::from(PER_SECOND) * 3).then_some(())
        })
        .await;
        let other_before = ledger.answered_other();
        node.stop_app().await;
        eventually(
            Duration::from_secs(30),
            "the service to see the broker go",
            || async {
                let metrics = app.metrics().await;
                (metric(&metrics, "kyc_broker_connected") == 0.0).then_some(())
            },
        )
        .await;
        tokio::time::sleep(OUTAGE).await; // the fault's length, not a wait for a condition
        let spooled = metric(&app.metrics().await, "kyc_spooled_total");
        node.start_app().await;
        (spooled, ledger.answered_other() - other_before)
    };
    let ((), (spooled, other_during)) = tokio::join!(ledger.stream(webhooks, PER_SECOND), fault);
    assert_eq!(other_during, 0, "every answer during the outage is 200");
    assert!(
        spooled > 0.0,
        "the outage's webhooks went through the spool"
    );

    // The relay drains the spool as soon as the broker is back.
    eventually(SETTLE, "the spool drained", || async {
        let metrics = app.metrics().await;
        let drained = spool_rows(&app).await == 0
            && metric(&metrics, "kyc_relayed_total") >= metric(&metrics, "kyc_spooled_total")
            && metric(&metrics, "kyc_spool_depth") == 0.0;
        drained.then_some(())
    })
    .await;
    let report = ledger.settle(app.db(), SETTLE).await;
    assert_eq!(report.other, 0, "every answer 200");
    assert_eq!(report.applied, count, "every webhook applied");
    let metrics = app.metrics().await;
    ledger.note(&format!(
        "{} webhooks spooled during the outage, {} relayed after it",
        metric(&metrics, "kyc_spooled_total"),
        metric(&metrics, "kyc_relayed_total")
    ));
}
