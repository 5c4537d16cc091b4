//! Cases 3 and 4: a `kyc worker` SIGKILLed mid-batch and started again, and a `kyc serve`
//! SIGKILLed with requests in flight, a new one started and the webhooks resent to it.

use std::time::Duration;

use crate::harness::ledger::Ledger;
use crate::harness::process::{ServeProcess, WorkerProcess};
use crate::harness::{Spawn, TestApp, eventually};
use crate::{DEADLINE, SETTLE, serial, sessions, stream_of};

const PER_SECOND: u32 = 100;

/// Inputs recorded so far (webhooks and session creations).
async fn inputs(app: &TestApp) -> i64 {
    app.total_inputs().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_killed_mid_batch_and_started_again() {
    let _serial = serial().await;
    // Small batches, so that a kill lands between many commits, and likely inside one.
    let receiver = TestApp::start(Spawn {
        database: true,
        args: &["--worker-batch", "8"],
        ..Spawn::default()
    })
    .await;
    let sessions = sessions(&receiver, "kill-worker", 20).await;
    let created = i64::try_from(sessions.len()).expect("small");
    let count = 1200;
    let webhooks = stream_of(&sessions, "kill-worker", count);
    let ledger = Ledger::new(
        "3. kyc worker SIGKILLed mid-batch (twice), started again",
        &receiver.base_url,
        DEADLINE,
    );
    let mut worker = WorkerProcess::spawn(&receiver.config);
    let fault = async {
        for kill in 1..=2_i64 {
            eventually(Duration::from_secs(60), "the worker applying", || async {
                (inputs(&receiver).await >= created + 300 * kill).then_some(())
            })
            .await;
            worker.kill();
            worker = WorkerProcess::spawn(&receiver.config);
        }
    };
    tokio::join!(ledger.stream(webhooks, PER_SECOND), fault);
    let report = ledger.settle(receiver.db(), SETTLE).await;
    assert_eq!(report.applied, count);
    worker.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kyc_serve_killed_with_requests_in_flight() {
    let _serial = serial().await;
    // The worker in this process; `kyc serve` as a child of its own, killed with SIGKILL.
    let app = TestApp::start(Spawn {
        http: false,
        worker: true,
        ..Spawn::default()
    })
    .await;
    let sessions = sessions(&app, "kill-serve", 20).await;
    let count = 1200;
    let webhooks = stream_of(&sessions, "kill-serve", count);
    let mut serve = ServeProcess::start(&app.config).await;
    let ledger = Ledger::new(
        "4. kyc serve SIGKILLed with requests in flight (twice), another started",
        &serve.base_url,
        DEADLINE,
    );
    let fault = async {
        for kill in 1..=2_u64 {
            eventually(Duration::from_secs(60), "requests in flight", || async {
                (ledger.answered_ok() >= 400 * kill && ledger.in_flight() > 0).then_some(())
            })
            .await;
            serve.kill();
            // Veriff's resends meet the new process (another address, as behind a balancer).
            serve = ServeProcess::start(&app.config).await;
            ledger.retarget(&serve.base_url);
        }
    };
    tokio::join!(ledger.stream(webhooks, PER_SECOND), fault);
    let report = ledger.settle(app.db(), SETTLE).await;
    assert!(report.other > 0, "the kills cut requests off");
    assert_eq!(report.applied, count);
}
