//! Embedded migrations. A hand-written runner because it must be safe to start from several
//! replicas at once: it creates the database when missing and applies migrations under a
//! PostgreSQL advisory lock, checking that applied ones were not edited since.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{Database, StorageError};

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "contract_tables",
        sql: include_str!("../../migrations/0001_contract_tables.sql"),
    },
    Migration {
        version: 2,
        name: "inputs_sessions_dead_letters",
        sql: include_str!("../../migrations/0002_inputs_sessions_dead_letters.sql"),
    },
    Migration {
        version: 3,
        name: "session_reconciliation",
        sql: include_str!("../../migrations/0003_session_reconciliation.sql"),
    },
    Migration {
        version: 4,
        name: "own_verifications",
        sql: include_str!("../../migrations/0004_own_verifications.sql"),
    },
    Migration {
        version: 5,
        name: "audit_log",
        sql: include_str!("../../migrations/0005_audit_log.sql"),
    },
    Migration {
        version: 6,
        name: "dead_letter_purge",
        sql: include_str!("../../migrations/0006_dead_letter_purge.sql"),
    },
    Migration {
        version: 7,
        name: "current_session",
        sql: include_str!("../../migrations/0007_current_session.sql"),
    },
    Migration {
        version: 8,
        name: "spool",
        sql: include_str!("../../migrations/0008_spool.sql"),
    },
    Migration {
        version: 9,
        name: "change_notifications",
        sql: include_str!("../../migrations/0009_change_notifications.sql"),
    },
];

/// An arbitrary constant shared by every kyc process: the advisory lock's key.
const LOCK_KEY: i64 = 0x006b_7963_5f6d_6967;

/// Creates the database if it is missing, then applies every pending migration.
pub async fn run(url: &str) -> Result<Vec<i32>, StorageError> {
    let database = Database::from_url(url)?;
    create_database_if_missing(&database).await?;
    let mut client = database.connect().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let applied = apply_pending(&mut client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    applied
}

/// A fingerprint of every embedded migration: test harnesses key template databases by it.
pub fn fingerprint() -> String {
    let mut hash = Sha256::new();
    for m in MIGRATIONS {
        hash.update(m.version.to_be_bytes());
        hash.update(m.sql.as_bytes());
    }
    hex::encode(&hash.finalize()[..8])
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i32>, StorageError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS kyc_schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let rows = client
        .query("SELECT version, checksum FROM kyc_schema_migrations", &[])
        .await?;
    let done: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let checksum = hex::encode(Sha256::digest(m.sql.as_bytes()));
        match done.iter().find(|(v, _)| *v == m.version) {
            Some((_, recorded)) if *recorded == checksum => continue,
            Some(_) => return Err(StorageError::MigrationChanged { version: m.version }),
            None => {}
        }
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO kyc_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.push(m.version);
    }
    Ok(applied)
}

async fn create_database_if_missing(database: &Database) -> Result<(), StorageError> {
    let name = database
        .config()
        .get_dbname()
        .ok_or(StorageError::NoDatabaseName)?
        .to_owned();
    let client = database.with_dbname("postgres").connect().await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another process created it between our check and our CREATE.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
