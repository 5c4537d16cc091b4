//! `kyc recompute`: brings `verifications` rows up to date with the current state machine and
//! policy from the recorded facts alone (no raw bodies, so it works past retention), in
//! batches under the verification locks. Prints each row that changes; every change is
//! announced with NOTIFY like any other. `--dry-run` does the same work and rolls it back.

use uuid::Uuid;

use crate::config::Config;
use crate::error::BoxError;
use crate::state_machine::Row;
use crate::storage::{self, verifications as store};

/// Verifications recomputed in one transaction.
const BATCH: i64 = 100;

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// One verification, by its id.
    #[arg(long)]
    verification: Option<Uuid>,
    /// The verification of this Veriff session.
    #[arg(long)]
    session: Option<String>,
    /// Every verification.
    #[arg(long)]
    all: bool,
}

pub async fn run(config: &Config, which: Which, dry_run: bool) -> Result<(), BoxError> {
    let policy = config.policy();
    let pool = storage::pool(&config.database_url, 1)?;
    let mut db = pool.get().await?;
    let single = match (&which.verification, &which.session) {
        (Some(id), _) => Some(*id),
        (None, Some(session)) => Some(
            store::of_session(&db, session)
                .await?
                .ok_or_else(|| format!("no verification has the session {session}"))?,
        ),
        (None, None) => None,
    };
    let (mut seen, mut changed) = (0usize, 0usize);
    let mut after = None;
    loop {
        let ids = match single {
            Some(id) if after.is_none() => vec![id],
            Some(_) => Vec::new(),
            None => store::ids_after(&db, after, BATCH).await?,
        };
        let Some(last) = ids.last().copied() else {
            break;
        };
        after = Some(last);
        let tx = db.transaction().await?;
        let locked = store::lock_many(&tx, &ids).await?;
        if single.is_some() && locked.is_empty() {
            return Err(format!("no verification {last}").into());
        }
        for id in &ids {
            let Some(verification) = locked.get(id) else {
                continue; // deleted since it was listed
            };
            seen += 1;
            if let Some(new) = store::recompute(&tx, verification, &policy).await? {
                changed += 1;
                out!("{id}  {} → {}", show(&verification.row), show(&new));
            }
        }
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
    }
    let verb = if dry_run { "would change" } else { "changed" };
    out!("{seen} recomputed, {changed} {verb}");
    Ok(())
}

fn show(row: &Row) -> String {
    let code = row
        .reason_code
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    format!("{}/{}{code}", row.state.as_str(), row.retry.as_str())
}
