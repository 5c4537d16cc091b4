//! Every one-off command prints only its result on a normal run: nothing on stderr, no WARN
//! or ERROR line from connecting to or closing the database and the broker (DESIGN.md
//! section 9). `Ran::ok` checks the WARN/ERROR part for every test of the CLI; this test runs
//! each command once and wants stderr empty.

use kyc::veriff::integration::Integration;
use uuid::Uuid;

use super::{kyc, unparseable, wait_letters};
use crate::harness::TestApp;
use crate::harness::seed::{decision, time};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_only_its_result() {
    let app = TestApp::run().await;
    let v = app.seed_verification(Integration::Eu, "s1").await;
    app.send(
        "decision",
        &decision("s1", Some("a1"), "approved", &time(1), None),
    )
    .await;
    app.send("decision", &unparseable(0)).await;
    app.wait_inputs(v, 2).await;
    let letter = wait_letters(&app, 1).await.remove(0).id.to_string();

    let created = kyc(&app, &["clients", "create", "--name", "quiet app"])
        .await
        .ok();
    let client = created
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|id| Uuid::parse_str(id).ok())
        .expect("`client ID created`");
    let v = v.to_string();
    let client = client.to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["migrate"],
        vec!["clients", "list"],
        vec!["clients", "list", "--json"],
        vec!["clients", "revoke", &client],
        vec!["dlq", "list"],
        vec!["dlq", "list", "--all", "--json"],
        vec!["dlq", "show", &letter],
        vec!["dlq", "replay", "--id", &letter, "--dry-run"],
        vec!["dlq", "replay", "--id", &letter],
        vec!["dlq", "purge", "--id", &letter, "--yes"],
        vec!["replay", "--session", "s1", "--dry-run"],
        vec!["replay", "--session", "s1"],
        vec!["recompute", "--all", "--dry-run"],
        vec!["recompute", "--verification", &v],
        vec!["verification", "show", "--session", "s1"],
        vec!["verification", "show", "--session", "s1", "--json"],
    ];
    assert!(created.stderr.is_empty(), "{created:#?}");
    for args in &commands {
        let ran = kyc(&app, args).await.ok();
        assert!(ran.stderr.is_empty(), "{args:?} wrote to stderr: {ran:#?}");
        assert!(!ran.stdout.is_empty(), "{args:?} printed its result");
    }
}

/// `kyc … | head`: a reader that goes away ends the command quietly (128 + SIGPIPE), not
/// with a panic about stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_a_command_quietly() {
    let app = TestApp::run().await;
    for n in 0..3 {
        app.send("decision", &unparseable(n)).await;
    }
    wait_letters(&app, 3).await;
    let mut child = super::command(&app, &["dlq", "list", "--all"])
        .spawn()
        .expect("kyc dlq list starts");
    // The reader is gone before the command writes anything.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("the command ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
