//! `kyc dlq`: list, show, replay and purge dead letters. A replay republishes the original
//! body and headers to the main queue, waits for the confirm, and only then marks the row
//! replayed: a crash in between republishes at worst twice, which the worker absorbs.

use std::time::Duration;

use uuid::Uuid;

use super::{actor, connect_broker, short_time};
use crate::config::Config;
use crate::error::BoxError;
use crate::queue::Envelope;
use crate::storage::dead_letters::{self as store, DeadLetter, Selection};
use crate::storage::{self, audit};
use crate::veriff::{Kind, payload};

/// How long a replayed letter waits for the broker's confirm.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List the dead letters that still need action (not replayed, not purged), newest first.
    List {
        /// Every dead letter, with its replay and purge times.
        #[arg(long)]
        all: bool,
        /// Only this reason (e.g. UNKNOWN_SESSION).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// JSON lines for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: headers and the body's non-personal facts.
    Show {
        id: Uuid,
        /// Print the full raw body (personal data): recorded in the audit log.
        #[arg(long)]
        raw: bool,
    },
    /// Republish dead letters to the main queue (those not replayed or purged yet).
    Replay {
        #[command(flatten)]
        which: Which,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Purge dead letters: their bodies are deleted for good, the rows stay as a record.
    Purge {
        #[arg(long = "id", num_args = 1.., required_unless_present = "before", conflicts_with = "before")]
        ids: Vec<Uuid>,
        /// Recorded before this time (RFC 3339 or a date).
        #[arg(long, value_parser = super::parse_time)]
        before: Option<chrono::DateTime<chrono::Utc>>,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    #[arg(long = "id", num_args = 1..)]
    ids: Vec<Uuid>,
    /// Veriff's session id.
    #[arg(long)]
    session: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    all: bool,
}

impl Which {
    fn selection(self) -> Selection {
        match self {
            Which {
                session: Some(s), ..
            } => Selection::Session(s),
            Which {
                reason: Some(r), ..
            } => Selection::Reason(r),
            Which { all: true, .. } => Selection::All,
            Which { ids, .. } => Selection::Ids(ids),
        }
    }
}

pub async fn run(config: &Config, command: DlqCommand) -> Result<(), BoxError> {
    let pool = storage::pool(&config.database_url, 1)?;
    let db = pool.get().await?;
    match command {
        DlqCommand::List {
            all,
            reason,
            limit,
            json,
        } => {
            let letters = store::list(&db, reason.as_deref(), all, limit).await?;
            if json {
                for letter in &letters {
                    out!("{}", serde_json::to_string(letter)?);
                }
            } else {
                print_table(&letters);
            }
        }
        DlqCommand::Show { id, raw } => {
            let letter = store::get(&db, id)
                .await?
                .ok_or_else(|| format!("no dead letter {id}"))?;
            out!("{}", serde_json::to_string_pretty(&letter)?);
            let body = match &letter.body_ciphertext {
                Some(sealed) => Some(config.archive_cipher()?.open(sealed)?),
                None => None,
            };
            match (&body, raw) {
                (None, _) => out!("body: past retention or purged (deleted)"),
                (Some(body), true) => {
                    audit::record(&db, &actor(), "dlq.show.raw", Some(&id.to_string()), None)
                        .await?;
                    out!(
                        "body (raw, access recorded):\n{}",
                        String::from_utf8_lossy(body)
                    );
                }
                (Some(body), false) => out!("body facts: {}", facts(&letter, body)),
            }
        }
        DlqCommand::Replay { which, dry_run } => {
            let letters = store::select(&db, &which.selection(), true).await?;
            if dry_run {
                out!("would replay {} dead letter(s):", letters.len());
                print_table(&letters);
                return Ok(());
            }
            let archive = config.archive_cipher()?;
            let broker = connect_broker(config).await?;
            let (mut replayed, mut expired) = (0, 0);
            for letter in &letters {
                let Some(sealed) = &letter.body_ciphertext else {
                    out!("{}  not replayed: body past retention", letter.id);
                    expired += 1;
                    continue;
                };
                let body = archive.open(sealed)?;
                let envelope = Envelope::dead_letter_replay(
                    broker.topology(),
                    &letter.headers,
                    letter.message_id.as_deref(),
                    body.into(),
                    Uuid::new_v4(),
                );
                if let Err(error) = broker.publish(envelope, REPLAY_TIMEOUT).await {
                    broker.close().await;
                    return Err(error.into());
                }
                store::mark_replayed(&db, letter.id).await?;
                out!(
                    "{}  replayed ({}, {})",
                    letter.id,
                    letter.reason,
                    letter.session_id.as_deref().unwrap_or("-")
                );
                replayed += 1;
            }
            broker.close().await;
            out!("{replayed} replayed, {expired} past retention");
        }
        DlqCommand::Purge { ids, before, yes } => {
            let selection = match before {
                Some(time) => Selection::Before(time),
                None => Selection::Ids(ids),
            };
            let letters = store::select(&db, &selection, false).await?;
            if !yes {
                return Err(format!(
                    "refusing to purge {} dead letter(s) without --yes",
                    letters.len()
                )
                .into());
            }
            let ids: Vec<Uuid> = letters.iter().map(|l| l.id).collect();
            let purged = store::purge(&db, &ids).await?;
            out!("{purged} dead letter(s) purged");
        }
    }
    Ok(())
}

/// The non-personal facts of a body, as one line.
fn facts(letter: &DeadLetter, body: &[u8]) -> String {
    let kind = letter.kind.as_deref().and_then(Kind::parse);
    match kind.and_then(|k| payload::parse(k, body)) {
        None => format!("no session id could be read ({} bytes)", body.len()),
        Some(f) => format!(
            "session {} attempt {} {} {}",
            f.session_id,
            f.attempt_id.as_deref().unwrap_or("-"),
            kind.map_or("?", Kind::as_str),
            f.status_or_action()
        ),
    }
}

fn print_table(letters: &[DeadLetter]) {
    out!(
        "{:<36}  {:<8}  {:<36}  {:<17}  {:>8}  {:<19}  {:<19}  {:<19}  PURGED",
        "ID",
        "KIND",
        "SESSION",
        "REASON",
        "ATTEMPTS",
        "FIRST FAILURE",
        "LAST FAILURE",
        "REPLAYED"
    );
    for l in letters {
        out!(
            "{:<36}  {:<8}  {:<36}  {:<17}  {:>8}  {:<19}  {:<19}  {:<19}  {}",
            l.id,
            l.kind.as_deref().unwrap_or("-"),
            l.session_id.as_deref().unwrap_or("-"),
            l.reason,
            l.attempts,
            short_time(l.first_failure),
            short_time(l.last_failure),
            short_time(l.replayed_at),
            short_time(l.purged_at),
        );
    }
}
