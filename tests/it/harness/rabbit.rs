//! RabbitMQ's own tools (`rabbitmqctl`, `rabbitmq-diagnostics`), for tests that change the
//! broker itself: a connection's channels here, the node and the cluster in the fault suite.

use std::process::{Command, Output};

/// Runs a RabbitMQ CLI tool to its end (blocking; call through [`run`] from async code).
pub fn run_blocking(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} runs: {e}"))
}

/// Runs a RabbitMQ CLI tool off the async runtime and returns its stdout; fails the test if
/// it exits non-zero.
pub async fn run(tool: &str, args: &[&str]) -> String {
    let (tool, owned): (String, Vec<String>) = (
        tool.to_owned(),
        args.iter().map(|a| (*a).to_owned()).collect(),
    );
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        (run_blocking(&tool, &args), tool, owned)
    })
    .await
    .expect("the CLI's thread");
    let (output, tool, args) = output;
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `rabbitmqctl ARGS…` against the main node.
pub async fn ctl(args: &[&str]) -> String {
    run("rabbitmqctl", args).await
}

/// `rabbitmqctl list_connections peer_port channels`: channels open on the connection that
/// came from `peer_port`, if there is one.
pub async fn channels_of_connection(peer_port: u16) -> Option<u32> {
    let listed = ctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "peer_port",
        "channels",
    ])
    .await;
    listed.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        let port: u16 = cols.next()?.parse().ok()?;
        let channels = cols.next()?.parse().ok()?;
        (port == peer_port).then_some(channels)
    })
}
