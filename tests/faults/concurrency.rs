//! Case 6: the same webhook sent at once from 16 connections, to two receivers with a worker
//! each: one input.

use kyc::veriff::integration::Integration;

use crate::harness::ledger::{Ledger, Webhook};
use crate::harness::seed::{decision, event, time};
use crate::harness::{Spawn, TestApp};
use crate::{DEADLINE, SETTLE, serial};

const CONNECTIONS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_webhook_from_16_connections_at_once() {
    let _serial = serial().await;
    let app = TestApp::run().await;
    // A second `kyc run` of the same deployment: two receivers, two workers.
    let other = TestApp::start_with(
        Spawn {
            worker: true,
            ..Spawn::default()
        },
        app.config.clone(),
        None,
    )
    .await;
    let v = app.seed_verification(Integration::Eu, "same").await;
    let webhooks: Vec<Webhook> = (0..20_u32)
        .map(|i| match i % 2 {
            0 => Webhook::signed("event", event("same", Some(&format!("a{i}")), "started")),
            _ => {
                let body = decision("same", Some(&format!("a{i}")), "review", &time(i), None);
                Webhook::signed("decision", body)
            }
        })
        .collect();
    let ledger = Ledger::new(
        "6. the same webhook from 16 connections at once (x20, two kyc run)",
        &app.base_url,
        DEADLINE,
    );
    for (i, webhook) in webhooks.iter().enumerate() {
        // Half the webhooks to one receiver, half to the other.
        ledger.retarget(if i % 2 == 0 {
            &app.base_url
        } else {
            &other.base_url
        });
        ledger.send_concurrently(webhook, CONNECTIONS).await;
    }
    let report = ledger.settle(app.db(), SETTLE).await;
    assert_eq!(
        report.ok,
        20 * CONNECTIONS as u64,
        "every copy answered 200"
    );
    assert_eq!(report.applied, 20);
    assert_eq!(app.input_count(v).await, 1 + 20, "one input per webhook");
}
