//! What carries credentials stays out of `--help`, out of a failing command's output, and
//! out of metric labels that an untrusted header could otherwise grow without bound.

use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use kyc::queue::message::{HEADER_DEAD_LETTER_ID, HEADER_DEAD_REASON};

use crate::harness::{AMQP_URL, TestApp, eventually};

/// Every variable that carries a credential, with a value no output may show.
const SECRET_ENV: &[(&str, &str)] = &[
    ("KYC_DATABASE_URL", "postgres://u:s3cret-db@127.0.0.1:1/db"),
    ("KYC_AMQP_URL", "amqp://u:s3cret-amqp@127.0.0.1:1/%2f"),
    ("KYC_VERIFF_API_KEY", "s3cret-veriff-key"),
    (
        "KYC_VERIFF_SHARED_SECRETS",
        "s3cret-shared-1,s3cret-shared-2",
    ),
    ("KYC_VERIFF_US_API_KEY", "s3cret-us-key"),
    ("KYC_VERIFF_US_SHARED_SECRETS", "s3cret-us-shared"),
    ("KYC_JWT_SECRET", "s3cret-jwt"),
    // 32 bytes, base64: "s3cret-url-key-of-32-bytes-long!" and "s3cret-archive-key-32-bytes-ok!!"
    (
        "KYC_URL_ENCRYPTION_KEY",
        "czNjcmV0LXVybC1rZXktb2YtMzItYnl0ZXMtbG9uZyE=",
    ),
    (
        "KYC_ARCHIVE_ENCRYPTION_KEY",
        "czNjcmV0LWFyY2hpdmUta2V5LTMyLWJ5dGVzLW9rISE=",
    ),
];

fn kyc(args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kyc"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KYC_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .envs(SECRET_ENV.iter().copied())
        .env("KYC_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .output()
        .expect("kyc runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret(what: &str, output: &str) {
    for (name, value) in SECRET_ENV {
        for part in value.split([',', ':', '@', '/']) {
            if part.starts_with("s3cret") || (part.len() > 20 && !part.contains('.')) {
                assert!(
                    !output.contains(part),
                    "{what} shows {name} ({part}):\n{output}"
                );
            }
        }
    }
    assert!(
        !output.contains("s3cret"),
        "{what} shows a secret:\n{output}"
    );
}

#[test]
fn help_shows_no_value_of_the_environment() {
    let top = kyc(&["--help"]);
    assert!(
        top.contains("KYC_DATABASE_URL"),
        "the help names the settings:\n{top}"
    );
    assert_no_secret("kyc --help", &top);
    // Every subcommand's help too, and its subcommands'.
    let commands = |help: &str| -> Vec<String> {
        help.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|c| c != "help")
            .collect()
    };
    let subcommands = commands(&top);
    assert!(subcommands.len() >= 8, "{subcommands:?}");
    for sub in subcommands {
        let help = kyc(&[&sub, "--help"]);
        assert_no_secret(&format!("kyc {sub} --help"), &help);
        for nested in commands(&help) {
            let help = kyc(&[&sub, &nested, "--help"]);
            assert_no_secret(&format!("kyc {sub} {nested} --help"), &help);
        }
    }
}

#[test]
fn failing_commands_show_no_credential() {
    // Nothing listens on port 1: each command fails to connect and says so.
    for args in [&["migrate"][..], &["dlq", "list"], &["clients", "list"]] {
        let output = kyc(args);
        assert!(!output.trim().is_empty(), "kyc {args:?} says why it failed");
        assert_no_secret(&format!("kyc {args:?}"), &output);
    }
}

/// Publishes straight into `queue` through the default exchange, with a confirm.
async fn publish_to_queue(queue: &str, headers: FieldTable, body: &[u8]) {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("test connects to RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .expect("basic.publish")
        .await
        .expect("publisher confirm");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_reason_labels_stay_a_fixed_set_whatever_the_header_says() {
    let app = TestApp::run().await;
    let dead = app.config.topology().dead_queue();
    let injected: Vec<String> = (0..40)
        .map(|i| format!("ATTACKER_{i}_{}", uuid::Uuid::new_v4().simple()))
        .chain([
            "x".repeat(10_000),
            "UNPARSEABLE\n".to_owned(),
            String::new(),
        ])
        .collect();
    for reason in &injected {
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_DEAD_LETTER_ID.into(),
            AMQPValue::LongString(uuid::Uuid::new_v4().to_string().as_str().into()),
        );
        headers.insert(
            HEADER_DEAD_REASON.into(),
            AMQPValue::LongString(reason.as_str().into()),
        );
        publish_to_queue(&dead, headers, b"{}").await;
    }
    // And one whose reason is not even a string.
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_DEAD_LETTER_ID.into(),
        AMQPValue::LongString(uuid::Uuid::new_v4().to_string().as_str().into()),
    );
    headers.insert(HEADER_DEAD_REASON.into(), AMQPValue::LongLongInt(7));
    publish_to_queue(&dead, headers, b"{}").await;
    let total = injected.len() + 1;

    eventually(
        Duration::from_secs(30),
        "every injected dead letter recorded",
        || async { (app.dead_letters().await.len() >= total).then_some(()) },
    )
    .await;
    let metrics = app.metrics().await;
    let series: Vec<(String, u64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("kyc_dead_letters_recorded_total{"))
        .map(|l| {
            let (labels, value) = l.split_once("} ").expect("a sample");
            (labels.to_owned(), value.trim().parse().expect("a count"))
        })
        .collect();
    let allowed = [
        "INVALID_SIGNATURE",
        "UNPARSEABLE",
        "UNKNOWN_STATUS",
        "UNKNOWN_SESSION",
        "REGION_MISMATCH",
        "APPLY_FAILED",
        "DELIVERY_LIMIT",
        "OTHER",
    ];
    for (labels, _) in &series {
        let reason = labels
            .split(',')
            .find_map(|l| l.strip_prefix("reason=\""))
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or_else(|| panic!("a reason label in {labels}"));
        assert!(
            allowed.contains(&reason),
            "an unbounded reason label: {labels}"
        );
    }
    let recorded: u64 = series.iter().map(|(_, n)| n).sum();
    assert_eq!(recorded, total as u64, "{series:?}");
    assert!(
        series.len() <= allowed.len(),
        "at most one series per known reason: {series:?}"
    );
}
