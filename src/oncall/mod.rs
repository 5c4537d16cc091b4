//! On-call and operator tooling behind the CLI: client keys, dead letters, replays,
//! recomputation, the verification timeline and test webhooks.

pub mod clients;
pub mod dlq;
pub mod recompute;
pub mod replay;
pub mod trigger;
pub mod verification;

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::BoxError;
use crate::queue::Broker;

/// How long a one-off command waits for the broker.
const BROKER_WAIT: Duration = Duration::from_secs(15);

/// A broker connection for a one-off command, or an error when it cannot be had soon.
/// Close it with [`Broker::close`] so the command exits quietly.
pub(crate) async fn connect_broker(config: &Config) -> Result<Broker, BoxError> {
    let broker = Broker::start(
        &config.amqp_urls(),
        "cli",
        config.topology(),
        CancellationToken::new(),
    )?;
    match tokio::time::timeout(BROKER_WAIT, broker.connection()).await {
        Ok(Some(_)) => Ok(broker),
        _ => {
            broker.close().await;
            Err("RabbitMQ is unreachable (KYC_AMQP_URL)".into())
        }
    }
}

/// Declares the exchanges and queues (every connection does; this is one that does only that).
pub(crate) async fn declare_topology(config: &Config) -> Result<(), BoxError> {
    connect_broker(config).await?.close().await;
    Ok(())
}

/// Who runs a command, for the audit log.
pub(crate) fn actor() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// RFC 3339, or a date (midnight UTC).
pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        })
        .map_err(|_| format!("`{s}` is not a time like 2030-01-31 or 2030-01-31T10:00:00Z"))
}

fn short_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}
