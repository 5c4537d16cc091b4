//! Case 5: replays. Webhooks for sessions created late are dead-lettered (UNKNOWN_SESSION);
//! the sessions are created; `kyc dlq replay --all` is SIGKILLed midway, run again to the end,
//! and once more (nothing left); then `kyc replay --since` republishes every recorded input,
//! twice. Each webhook ends applied once.

use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::Utc;
use kyc::veriff::integration::Integration;

use crate::harness::ledger::{Ledger, Webhook};
use crate::harness::process::kyc_command;
use crate::harness::seed::{decision, time};
use crate::harness::{TestApp, eventually};
use crate::{DEADLINE, SETTLE, serial};

const N: usize = 200;

/// `kyc ARGS…` against `app`'s deployment, to its end (off the runtime).
async fn kyc(app: &TestApp, args: &[&str]) -> Output {
    let mut command = kyc_command(&app.config);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output().expect("kyc runs"))
        .await
        .expect("the command's thread");
    assert!(
        output.status.success(),
        "kyc {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Dead letters replayed so far.
async fn replayed(app: &TestApp) -> i64 {
    app.db()
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL",
            &[],
        )
        .await
        .expect("replayed count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_killed_midway_and_repeated() {
    let _serial = serial().await;
    let app = TestApp::run().await;
    let started = Utc::now();
    let sessions: Vec<String> = (0..N).map(|i| format!("late-{i:03}")).collect();
    let webhooks: Vec<Webhook> = sessions
        .iter()
        .map(|s| {
            Webhook::signed(
                "decision",
                decision(s, Some("a1"), "approved", &time(1), None),
            )
        })
        .collect();
    let ledger = Ledger::new(
        "5. kyc dlq replay killed midway, run again twice; kyc replay run twice",
        &app.base_url,
        DEADLINE,
    );
    ledger.stream(webhooks, 100).await;
    let before = ledger
        .wait_for(app.db(), SETTLE, |r| r.dead_lettered == N)
        .await;
    assert_eq!(before.dead_lettered, N, "dead-lettered first: {before:?}");
    ledger.print(&before);
    ledger.note("that is before the replays: all dead-lettered (UNKNOWN_SESSION), the sessions created late");

    for session in &sessions {
        app.seed_verification(Integration::Eu, session).await;
    }
    let mut child = kyc_command(&app.config)
        .args(["dlq", "replay", "--all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kyc dlq replay starts");
    eventually(Duration::from_secs(60), "the replay under way", || async {
        (replayed(&app).await >= 20).then_some(())
    })
    .await;
    child.kill().expect("SIGKILL the replay");
    let status = child.wait().expect("reap the replay");
    assert!(status.code().is_none(), "killed, not finished: {status:?}");
    let marked = replayed(&app).await;
    assert!(
        marked < i64::try_from(N).expect("small"),
        "killed midway: {marked} of {N} marked replayed"
    );
    kyc(&app, &["dlq", "replay", "--all"]).await;
    let again = kyc(&app, &["dlq", "replay", "--all"]).await;
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("0 replayed"),
        "nothing left to replay"
    );
    let report = ledger.wait_for(app.db(), SETTLE, |r| r.applied == N).await;
    assert_eq!(
        report.applied, N,
        "every replayed webhook applied: {report:?}"
    );

    // Every recorded input republished, twice: absorbed as duplicates.
    let since = started.to_rfc3339();
    for _ in 0..2 {
        kyc(&app, &["replay", "--since", &since]).await;
    }
    // Only the decisions are republished (a session creation is not a signed webhook).
    let duplicates = u64::try_from(2 * N).expect("small");
    eventually(SETTLE, "the replays absorbed", || async {
        (app.worker_count("duplicate", "").await >= duplicates).then_some(())
    })
    .await;
    eventually(SETTLE, "the queue drained", || async {
        (app.peek().main_count().await == 0).then_some(())
    })
    .await;
    let report = ledger.settle(app.db(), SETTLE).await;
    assert_eq!(report.applied, N);
    ledger.note(&format!(
        "{marked} letters marked replayed when the first replay was killed"
    ));
}
