//! `kyc verification show`: what on-call needs to answer "why is this user in this state":
//! the row, its sessions, every recorded input in order, and the state machine's own one-line
//! reason. Never personal data or URLs: only ids, statuses, reason codes, sources and times.

use uuid::Uuid;

use crate::config::Config;
use crate::error::BoxError;
use crate::state_machine;
use crate::storage::{self, registration, verifications as store};

#[derive(Debug, clap::Subcommand)]
pub enum VerificationCommand {
    /// The row, its sessions and every recorded input, with why the row is what it is.
    Show {
        #[command(flatten)]
        which: Which,
        /// One JSON document for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// Veriff's session id.
    #[arg(long)]
    session: Option<String>,
    /// The onboarding's id.
    #[arg(long)]
    onboarding: Option<Uuid>,
    /// The user's id (the verification of their newest onboarding, or their own).
    #[arg(long)]
    user: Option<String>,
}

pub async fn run(config: &Config, command: VerificationCommand) -> Result<(), BoxError> {
    let VerificationCommand::Show { which, json } = command;
    let pool = storage::pool(&config.database_url, 1)?;
    let db = pool.get().await?;
    let id = match which {
        Which {
            session: Some(session),
            ..
        } => store::of_session(&db, &session)
            .await?
            .ok_or_else(|| format!("no verification has the session {session}"))?,
        Which {
            onboarding: Some(onboarding),
            ..
        } => registration::onboarding_status(&db, onboarding)
            .await?
            .0
            .ok_or_else(|| format!("the onboarding {onboarding} has no verification"))?,
        Which {
            user: Some(user), ..
        } => registration::user_status(&db, &user)
            .await?
            .0
            .ok_or_else(|| format!("the user {user} has no verification"))?,
        _ => return Err("name a session, an onboarding or a user".into()),
    };
    let row = store::row(&db, id)
        .await?
        .ok_or_else(|| format!("no verification {id}"))?;
    let sessions = store::sessions(&db, id).await?;
    let inputs = store::inputs(&db, id).await?;
    // The history the state machine reads, and which recorded input each entry is.
    let (positions, history): (Vec<usize>, Vec<state_machine::Input>) = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| input.as_input().map(|h| (i, h)))
        .unzip();
    let why = state_machine::explain(&history, &config.policy());
    let decided_by = why.decided_by.and_then(|i| positions.get(i)).copied();
    // Exactly when `kyc recompute` would change the row.
    let stale = why.row.state.as_str() != row.state
        || why.row.retry.as_str() != row.retry
        || why.row.reason_code != row.reason_code
        || why.row.reason != row.reason;

    if json {
        let document = serde_json::json!({
            "verification": row,
            "why": why.text(),
            "decidedByInput": decided_by.map(|i| inputs[i].id),
            "stale": stale,
            "sessions": sessions,
            "inputs": inputs,
        });
        out!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }

    let code = |c: Option<i32>| c.map_or_else(|| "-".to_owned(), |c| c.to_string());
    out!(
        "verification {}  region {}  onboarding {}  user {}",
        row.id,
        row.region,
        row.onboarding_id
            .map_or_else(|| "-".to_owned(), |o| o.to_string()),
        row.user_id.as_deref().unwrap_or("-"),
    );
    out!(
        "row           {} / {}  reason code {}  updated {}",
        row.state,
        row.retry,
        code(row.reason_code),
        super::short_time(Some(row.updated_at)),
    );
    out!("why           {why}");
    if stale {
        out!(
            "              the row is not what the recorded inputs give now: `kyc recompute --verification {}`",
            row.id
        );
    }
    out!();
    out!(
        "{:<3} {:<38} {:<24} {:<19} {:<19} RECONCILED",
        "#",
        "SESSION",
        "STATUS",
        "CREATED",
        "EXPIRES"
    );
    for (n, s) in sessions.iter().enumerate() {
        let current = if row.current_session_id.as_deref() == Some(s.id.as_str()) {
            "  (current)"
        } else {
            ""
        };
        out!(
            "{:<3} {:<38} {:<24} {:<19} {:<19} {}{current}",
            n + 1,
            s.id,
            s.status,
            super::short_time(Some(s.created_at)),
            super::short_time(s.expires_at),
            super::short_time(s.reconciled_at),
        );
    }
    out!();
    out!(
        "  {:<8} {:<16} {:<38} {:<38} {:<24} {:<19} {:<5} {:<15} {:<19} {:<19} BODY",
        "INPUT",
        "KIND",
        "SESSION",
        "ATTEMPT",
        "STATUS/ACTION",
        "DECISION TIME",
        "CODE",
        "SOURCE",
        "RECEIVED",
        "RECORDED",
    );
    for (i, input) in inputs.iter().enumerate() {
        let mark = if decided_by == Some(i) { "*" } else { " " };
        out!(
            "{mark} {:<8} {:<16} {:<38} {:<38} {:<24} {:<19} {:<5} {:<15} {:<19} {:<19} {}",
            input.id,
            input.kind,
            input.session_id,
            input.attempt_id.as_deref().unwrap_or("-"),
            input.status.as_deref().unwrap_or("-"),
            super::short_time(input.decision_time),
            code(input.reason_code),
            input.source,
            super::short_time(input.received_at),
            super::short_time(Some(input.recorded_at)),
            match (input.body_kept, input.kind.as_str()) {
                (true, _) => "kept",
                // A session's creation never had a body.
                (false, "session_created") => "-",
                (false, _) => "past retention",
            },
        );
    }
    out!("\n* the input that decided the row");
    Ok(())
}
