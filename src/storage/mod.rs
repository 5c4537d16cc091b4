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

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, TlsError, Verify};

/// How long anything waits for a connection before the caller sees "database unavailable".
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("KYC_DATABASE_URL is malformed")]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("KYC_DATABASE_URL names no database")]
    NoDatabaseName,
    #[error(
        "KYC_DATABASE_URL: sslmode={0} is not one of disable, prefer, require, verify-ca, verify-full"
    )]
    BadSslMode(String),
    #[error("KYC_DATABASE_URL: the value of {0} is not percent-encoded properly")]
    BadOption(String),
    #[error("KYC_DATABASE_URL: TLS")]
    Tls(#[from] TlsError),
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
    pub(crate) fn is_outage(&self) -> bool {
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

/// KYC_DATABASE_URL, read once: where the database is, and how its TLS is checked.
///
/// tokio-postgres knows `sslmode` disable, prefer and require only, and no `sslrootcert`;
/// libpq's `verify-ca` and `verify-full` and the root file are read here and given to rustls.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

impl Database {
    /// Whether `url` is one kyc can use, without reading the files it names (a root
    /// certificate mounted only where kyc runs): what a check of a manifest can know.
    pub fn check_url(url: &str) -> Result<(), StorageError> {
        let (url, mode, _) = take_tls_options(url)?;
        tokio_postgres::Config::from_str(&url).map_err(StorageError::BadUrl)?;
        match mode.as_deref() {
            None | Some("disable" | "prefer" | "require" | "verify-ca" | "verify-full") => Ok(()),
            Some(other) => Err(StorageError::BadSslMode(other.to_owned())),
        }
    }

    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let (url, mode, root) = take_tls_options(url)?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(StorageError::BadUrl)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        let root = root.as_deref().map(Path::new);
        let (ssl, verify) = match mode.as_deref() {
            None | Some("prefer") => (SslMode::Prefer, root.map(|_| Verify::Chain)),
            Some("disable") => (SslMode::Disable, None),
            // libpq: with a root certificate, require checks the chain as verify-ca does.
            Some("require") => (
                SslMode::Require,
                Some(root.map_or(Verify::Nothing, |_| Verify::Chain)),
            ),
            Some("verify-ca") => (SslMode::Require, Some(Verify::Chain)),
            Some("verify-full") => (SslMode::Require, Some(Verify::ChainAndName)),
            Some(other) => return Err(StorageError::BadSslMode(other.to_owned())),
        };
        config.ssl_mode(ssl);
        let tls = match (ssl, verify) {
            (SslMode::Disable, _) => None,
            (_, verify) => {
                let verify = verify.unwrap_or(Verify::Nothing);
                let roots = match verify {
                    Verify::Nothing => rustls::RootCertStore::empty(),
                    _ => tls::roots(root)?,
                };
                Some(MakeRustlsConnect::new(tls::client_config(verify, roots)?))
            }
        };
        Ok(Self { config, tls })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The same server, another database (e.g. `postgres`, to create ours).
    pub(crate) fn with_dbname(&self, name: &str) -> Self {
        let mut other = self.clone();
        other.config.dbname(name);
        other
    }

    /// The TLS connector, unless `sslmode=disable`.
    pub fn tls(&self) -> Option<&MakeRustlsConnect> {
        self.tls.as_ref()
    }

    /// A client whose connection runs in the background until it is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
            T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "database connection closed");
                }
            });
        }
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                drive(connection);
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                drive(connection);
                Ok(client)
            }
        }
    }

    /// A pool whose every wait is bounded, so an unreachable database is an error, not a hang.
    pub fn pool(&self, max_size: usize) -> Result<Pool, StorageError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            None => Manager::from_config(self.config.clone(), NoTls, manager_config),
            Some(tls) => Manager::from_config(self.config.clone(), tls.clone(), manager_config),
        };
        Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(StorageError::Build)
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgres://…?sslmode=…`) or a key=value
/// string (`host=… sslmode=…`), leaving what tokio-postgres reads.
fn take_tls_options(url: &str) -> Result<(String, Option<String>, Option<String>), StorageError> {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), None, None));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                || percent_decode(value).ok_or_else(|| StorageError::BadOption(key.to_owned()));
            match key {
                "sslmode" => mode = Some(value()?),
                "sslrootcert" => root = Some(value()?),
                _ => kept.push(pair),
            }
        }
        let url = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        return Ok((url, mode, root));
    }
    let mut kept = Vec::new();
    for token in url.split_whitespace() {
        match token.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value.trim_matches('\'').to_owned()),
            Some(("sslrootcert", value)) => root = Some(value.trim_matches('\'').to_owned()),
            _ => kept.push(token),
        }
    }
    Ok((kept.join(" "), mode, root))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A pool for KYC_DATABASE_URL (see [`Database::pool`]).
pub fn pool(url: &str, max_size: usize) -> Result<Pool, StorageError> {
    Database::from_url(url)?.pool(max_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_both_forms() {
        let (url, mode, root) = take_tls_options(
            "postgres://u:p@db:5432/kyc?sslmode=verify-full&application_name=kyc&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("parses");
        assert_eq!(url, "postgres://u:p@db:5432/kyc?application_name=kyc");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (url, mode, root) =
            take_tls_options("host=db dbname=kyc sslmode=require sslrootcert=/ca.pem")
                .expect("parses");
        assert_eq!(url, "host=db dbname=kyc");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn every_sslmode_of_libpq_but_allow_is_understood() {
        for mode in ["disable", "prefer", "require"] {
            let db = Database::from_url(&format!("postgres://u@h/kyc?sslmode={mode}"))
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            assert_eq!(db.tls().is_none(), mode == "disable", "{mode}");
        }
        assert!(matches!(
            Database::from_url("postgres://u@h/kyc?sslmode=allow"),
            Err(StorageError::BadSslMode(_))
        ));
        assert!(matches!(
            Database::from_url("postgres://u@h/kyc?sslmode=verify-ca&sslrootcert=/nonexistent"),
            Err(StorageError::Tls(TlsError::BadCaFile(_)))
        ));
    }

    #[test]
    fn errors_never_show_the_url() {
        let error = Database::from_url("postgres://user:s3cret@h/kyc?sslmode=sometimes")
            .err()
            .map(|e| crate::error::chain(&e).to_string())
            .unwrap_or_default();
        assert!(
            !error.contains("s3cret") && error.contains("sslmode"),
            "{error}"
        );
    }
}
