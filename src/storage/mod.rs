//! PostgreSQL: the connection pool and the migrations.

pub mod clients;
pub mod dead_letters;
pub mod migrate;
pub mod notifications;
pub mod registration;
pub mod verifications;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// How long anything waits for a connection before the caller sees "database unavailable".
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("KYC_DATABASE_URL is malformed: {0}")]
    BadUrl(tokio_postgres::Error),
    #[error("KYC_DATABASE_URL names no database")]
    NoDatabaseName,
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("migration {version} was changed after it was applied (checksum mismatch)")]
    MigrationChanged { version: i32 },
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StorageError::Pool(e.to_string())
    }
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
        .map_err(|e| StorageError::Pool(e.to_string()))
}
