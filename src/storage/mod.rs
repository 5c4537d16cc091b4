//! PostgreSQL: the connection pool, the migrations, and every statement kyc runs. Nothing
//! outside this module writes SQL.

pub mod audit;
pub mod clients;
pub mod dead_letters;
pub mod migrate;
pub mod notifications;
pub mod registration;
pub mod retention;
pub mod sessions;
pub mod spool;
mod types;
pub mod verifications;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// How long anything waits for a connection before the caller sees "database unavailable".
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("KYC_DATABASE_URL is malformed")]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("KYC_DATABASE_URL names no database")]
    NoDatabaseName,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database pool")]
    Build(#[source] deadpool_postgres::BuildError),
    #[error("migration {version} was changed after it was applied (checksum mismatch)")]
    MigrationChanged { version: i32 },
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        StorageError::Db(e.into())
    }
}

/// A failed database call, from the driver or from the pool.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no database connection")]
    Pool(#[from] deadpool_postgres::PoolError),
}

impl DbError {
    /// Whether the database cannot be reached (wait and try again: 503 for a client, held
    /// messages for the worker), as opposed to a statement that failed (a bug or bad data).
    /// The one rule for the API, the worker and the recorder.
    pub fn is_outage(&self) -> bool {
        use deadpool_postgres::PoolError;
        match self {
            DbError::Postgres(e) => is_outage(e),
            DbError::Pool(PoolError::Backend(e)) => is_outage(e),
            DbError::Pool(PoolError::Timeout(_) | PoolError::Closed) => true,
            DbError::Pool(PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_)) => false,
        }
    }
}

fn is_outage(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        // Class 08 connection exception, 53 insufficient resources, 57P01-03 shutting down
        // or starting up: the server's state, not the statement's.
        let code = db.code().code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(code, "57P01" | "57P02" | "57P03");
    }
    // Without a SQLSTATE the driver names its failure only in the message: the connection,
    // its TLS or a timeout (an outage), or a misuse such as a column that does not convert
    // (a bug, which must not be retried as if the database were away).
    e.is_closed()
        || matches!(
            e.to_string().as_str(),
            "error connecting to server"
                | "error communicating with the server"
                | "error performing TLS handshake"
                | "timeout waiting for server"
                | "authentication error"
        )
}

pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StorageError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(StorageError::BadUrl)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(POOL_TIMEOUT);
    }
    Ok(config)
}

/// A pool whose every wait is bounded, so an unreachable database is an error, not a hang.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, StorageError> {
    let manager = Manager::from_config(
        parse_url(url)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(StorageError::Build)
}
