//! `kyc trigger`: send a correctly signed webhook, built like Veriff's, to a running receiver.
//! A signed approval is a KYC decision: against anything but a `--dev` instance it needs
//! `--production --reason`, and who, when and why go to the audit log first.

use chrono::{SecondsFormat, Utc};
use uuid::Uuid;

use super::actor;
use crate::config::{Config, http_is_loopback};
use crate::error::BoxError;
use crate::storage::{self, audit};
use crate::veriff::integration::Integration;
use crate::veriff::signature::sign;

#[derive(Debug, clap::Subcommand)]
pub enum TriggerCommand {
    /// A decision webhook with this status (approved, declined, resubmission_requested, …).
    Decision {
        status: String,
        #[arg(long)]
        reason_code: Option<i32>,
        #[command(flatten)]
        target: Target,
    },
    /// An event webhook with this action (started, submitted, …).
    Event {
        action: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// Veriff's session id.
    #[arg(long)]
    session: String,
    /// Base URL of the receiver (default: http://KYC_HTTP_ADDR).
    #[arg(long)]
    url: Option<String>,
    /// Required for any target that is not a `--dev` instance.
    #[arg(long)]
    production: bool,
    /// Why (required with --production; recorded in the audit log).
    #[arg(long, requires = "production")]
    reason: Option<String>,
}

pub async fn run(config: &Config, command: TriggerCommand) -> Result<(), BoxError> {
    let (kind, body, target) = match command {
        TriggerCommand::Decision {
            status,
            reason_code,
            target,
        } => (
            "decision",
            decision(&target.session, &status, reason_code),
            target,
        ),
        TriggerCommand::Event { action, target } => {
            ("event", event(&target.session, &action), target)
        }
    };
    let base = target
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.http_addr));
    let base = base.trim_end_matches('/');
    let http = crate::tls::client_builder().build()?;

    let dev_target = is_dev_instance(&http, base).await;
    if !dev_target {
        let (true, Some(reason)) = (target.production, target.reason.as_deref()) else {
            return Err(format!(
                "{base} is not a --dev instance: a signed webhook there is a real KYC decision; \
                 repeat with --production --reason \"why\""
            )
            .into());
        };
        let pool = storage::pool(&config.database_url, 1)?;
        let db = pool.get().await?;
        let subject = format!("{kind} for session {} to {base}", target.session);
        audit::record(&db, &actor(), "trigger", Some(&subject), Some(reason)).await?;
    }

    // A --dev instance verifies with the public development secret.
    let integrations = Config {
        dev: config.dev || dev_target,
        ..config.clone()
    }
    .integrations()?;
    let keys = integrations
        .get(Integration::Eu)
        .ok_or("no EU integration configured")?;
    let secret = keys.signing_secret().ok_or("no shared secret configured")?;
    let response = http
        .post(format!("{base}/webhooks/veriff/{kind}"))
        .header("content-type", "application/json")
        .header("x-hmac-signature", sign(secret, &body))
        .body(body)
        .send()
        .await?;
    let status = response.status();
    out!("{kind} webhook for session {}: {status}", target.session);
    if !status.is_success() {
        return Err(format!("the receiver answered {status}").into());
    }
    Ok(())
}

/// A `--dev` instance is on loopback and mounts the Veriff stand-in.
async fn is_dev_instance(http: &reqwest::Client, base: &str) -> bool {
    if !http_is_loopback(base) {
        return false;
    }
    let probe = http.get(format!("{base}/dev/done")).send().await;
    probe.is_ok_and(|r| r.status().is_success())
}

fn decision(session: &str, status: &str, reason_code: Option<i32>) -> Vec<u8> {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    serde_json::json!({
        "status": "success",
        "verification": {
            "id": session, "attemptId": Uuid::new_v4().to_string(), "vendorData": null,
            "status": status, "code": 9001, "reason": reason_code.map(|c| format!("reason {c}")),
            "reasonCode": reason_code, "decisionTime": now, "acceptanceTime": now,
            "person": {}, "document": {}, "comments": [], "additionalVerifiedData": {}, "riskLabels": []
        },
        "technicalData": { "ip": null }
    })
    .to_string()
    .into_bytes()
}

fn event(session: &str, action: &str) -> Vec<u8> {
    serde_json::json!({
        "id": session, "attemptId": Uuid::new_v4().to_string(), "feature": "selfid",
        "code": 7000, "action": action, "vendorData": null
    })
    .to_string()
    .into_bytes()
}
