//! The on-call CLI (DESIGN.md section 9) as an operator runs it: the real `kyc` binary as a
//! subprocess, configured through the environment like the deployment, against a test app
//! (HTTP and worker) on its own database and queues. Dead letters of every reason (`kyc dlq`),
//! replays of recorded inputs (`kyc replay`), recomputed rows (`kyc recompute`), the
//! verification timeline (`kyc verification show`), signed test webhooks (`kyc trigger`),
//! quiet output, and the `--dev` stand-in's page in a real headless browser.

mod dev_page;
mod dlq;
mod quiet;
mod recompute;
mod replay;
mod trigger;
mod verification;

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kyc::config::Config;
use kyc::queue::message::{
    HEADER_INTEGRATION, HEADER_KIND, HEADER_RECEIVED_AT, HEADER_SIGNATURE, put, rfc3339,
};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use uuid::Uuid;

use crate::harness::process::kyc_command;
use crate::harness::seed::signed_with;
use crate::harness::{TestApp, eventually};

/// Who runs the commands (`USER`), as the audit log must name them.
pub const OPERATOR: &str = "oncall-tester";

/// Personal data the seed bodies carry (`harness::seed::decision`); no output may show them
/// unless the operator asked for the raw body.
pub const PERSONAL: &[&str] = &[
    "MCTESTFACE",
    "TESTY",
    "1990-01-31",
    "TEST0000001",
    "192.0.2.10",
];

/// How long a test waits for the worker or a command.
pub const WAIT: Duration = Duration::from_secs(30);

/// What a finished `kyc` command left.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Fails the test unless the command exited 0 and printed no WARN or ERROR line: a normal
    /// run prints only its result (DESIGN.md section 9).
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "kyc failed: {self:#?}");
        let noisy: Vec<String> = self
            .stderr
            .lines()
            .map(strip_ansi)
            .filter(|line| {
                line.split_whitespace()
                    .any(|word| matches!(word, "WARN" | "ERROR"))
            })
            .collect();
        assert!(
            noisy.is_empty(),
            "a normal run logged WARN or ERROR lines: {noisy:#?}\n{self:#?}"
        );
        self
    }

    /// Fails the test unless the command exited non-zero.
    pub fn refused(self) -> Self {
        assert!(!self.status.success(), "kyc should have refused: {self:#?}");
        self
    }

    /// stdout's lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// A line without its terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// A `kyc` command for `app`'s deployment, run by [`OPERATOR`].
pub fn command(app: &TestApp, args: &[&str]) -> std::process::Command {
    command_for(&app.config, args)
}

/// A `kyc` command for the deployment `config` describes, run by [`OPERATOR`].
pub fn command_for(config: &Config, args: &[&str]) -> std::process::Command {
    let mut command = kyc_command(config);
    command
        .args(args)
        .env("USER", OPERATOR)
        .env_remove("SUDO_USER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `kyc ARGS…` against `app`'s deployment to its end (off the async runtime, whose
/// threads the app's worker needs meanwhile).
pub async fn kyc(app: &TestApp, args: &[&str]) -> Ran {
    kyc_with(&app.config, args).await
}

/// The same against the deployment `config` describes (e.g. another policy or broker).
pub async fn kyc_with(config: &Config, args: &[&str]) -> Ran {
    let mut command = command_for(config, args);
    let output = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || command.output().expect("the kyc binary runs")),
    )
    .await
    .unwrap_or_else(|_| panic!("kyc {args:?} did not finish within {WAIT:?}"))
    .expect("the kyc command's thread");
    Ran {
        status: output.status,
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// A row of `dead_letters`, as the CLI addresses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    pub id: Uuid,
    pub reason: String,
    pub session_id: Option<String>,
    pub message_id: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Every dead letter, oldest first.
pub async fn letters(app: &TestApp) -> Vec<Letter> {
    app.db()
        .client()
        .await
        .query(
            "SELECT id, reason, session_id, message_id, recorded_at, replayed_at
             FROM dead_letters ORDER BY recorded_at, id",
            &[],
        )
        .await
        .expect("dead letters")
        .iter()
        .map(|r| Letter {
            id: r.get(0),
            reason: r.get(1),
            session_id: r.get(2),
            message_id: r.get(3),
            recorded_at: r.get(4),
            replayed_at: r.get(5),
        })
        .collect()
}

/// Waits until exactly `n` dead letters are recorded; returns them, oldest first.
pub async fn wait_letters(app: &TestApp, n: usize) -> Vec<Letter> {
    let found = eventually(WAIT, &format!("{n} dead letters"), || async {
        let found = letters(app).await;
        (found.len() >= n).then_some(found)
    })
    .await;
    assert_eq!(found.len(), n, "exactly {n} dead letters: {found:#?}");
    found
}

/// The one dead letter of this reason.
pub fn of_reason<'a>(letters: &'a [Letter], reason: &str) -> &'a Letter {
    let mut matching = letters.iter().filter(|l| l.reason == reason);
    let letter = matching
        .next()
        .unwrap_or_else(|| panic!("a dead letter {reason}: {letters:#?}"));
    assert!(matching.next().is_none(), "one dead letter {reason}");
    letter
}

/// Publishes a decision straight to the webhook exchange with a signature made with the
/// wrong secret: what a party with access to the broker could inject.
pub async fn inject_forged_decision(app: &TestApp, body: &[u8]) {
    let mut headers = FieldTable::default();
    put(
        &mut headers,
        HEADER_SIGNATURE,
        &signed_with("not-the-shared-secret", body),
    );
    put(&mut headers, HEADER_INTEGRATION, "EU");
    put(&mut headers, HEADER_KIND, "decision");
    put(&mut headers, HEADER_RECEIVED_AT, &rfc3339(Utc::now()));
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(
            format!("forged-{}", Uuid::new_v4().simple())
                .as_str()
                .into(),
        )
        .with_headers(headers);
    app.peek()
        .publish_to_exchange("veriff.decision", properties, body)
        .await;
}

/// A signed webhook body in which no session id can be found (ends `UNPARSEABLE`); `n` makes
/// each one distinct.
pub fn unparseable(n: usize) -> Vec<u8> {
    serde_json::json!({
        "status": "success",
        "n": n,
        "verification": { "status": "approved", "person": { "lastName": "MCTESTFACE" } }
    })
    .to_string()
    .into_bytes()
}

/// Rows of `audit_log`: (actor, action, subject, reason), oldest first.
pub async fn audit_log(app: &TestApp) -> Vec<(String, String, Option<String>, Option<String>)> {
    app.db()
        .client()
        .await
        .query(
            "SELECT actor, action, subject, reason FROM audit_log ORDER BY id",
            &[],
        )
        .await
        .expect("audit log")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}
