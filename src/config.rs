//! Configuration: every setting is an environment variable and a flag, so `kyc --help`
//! is the reference. Secrets are wrapped so that no `Debug` or log line can print them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::Cipher;
use crate::queue::Topology;
use crate::state_machine::Policy;
use crate::veriff::integration::{Integration, IntegrationKeys, Integrations};

/// Development stand-ins for `--dev`: public by design, refused off loopback.
const DEV_API_KEY: &str = "dev-veriff-api-key";
const DEV_SHARED_SECRET: &str = "dev-veriff-shared-secret";
const DEV_ARCHIVE_KEY: &str = "ZGV2LWFyY2hpdmUta2V5LW5vdC1mb3ItcHJvZHVjdGk=";
const DEV_URL_KEY: &str = "ZGV2LXVybC1rZXktbm90LWZvci1wcm9kdWN0aW9uLi4=";
const DEV_JWT_SECRET: &str = "dev-jwt-secret";
const DEV_JWT_AUDIENCE: &str = "kyc-dev";
const VERIFF_BASE_URL: &str = "https://stationapi.veriff.com";

/// The settings `kyc serve` and `kyc run` refuse to start without outside `--dev` (`kyc
/// worker` needs the Veriff key and secrets and the archive key of them, `kyc migrate` none).
/// Each entry is a set of alternatives, one of which must be set. Deployment files are checked
/// against this list, and the tests below check it against the code that refuses to start.
pub const REQUIRED_OUTSIDE_DEV: &[&[&str]] = &[
    &["KYC_VERIFF_API_KEY"],
    &["KYC_VERIFF_SHARED_SECRETS"],
    &["KYC_VERIFF_CALLBACK_URL"],
    &["KYC_URL_ENCRYPTION_KEY"],
    &["KYC_ARCHIVE_ENCRYPTION_KEY"],
    &["KYC_JWT_SECRET", "KYC_JWT_PUBLIC_KEY_FILE"],
    &["KYC_JWT_AUDIENCE"],
];

#[derive(Clone, Args)]
pub struct Config {
    /// Development mode: public development secrets, a local Veriff stand-in, loopback only.
    #[arg(long, global = true)]
    pub dev: bool,

    /// PostgreSQL connection URL [default: postgres://postgres@127.0.0.1:5432/kyc]. Honours
    /// `sslmode` (disable, prefer, require, verify-ca, verify-full) and `sslrootcert`.
    #[arg(
        long,
        env = "KYC_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/kyc",
        hide_default_value = true,
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// RabbitMQ connection URL, or several comma-separated (one per cluster node, tried in
    /// turn) [default: the local broker's guest user on 127.0.0.1:5672]. `amqps://` verifies
    /// against the system's roots, or the CA file named by a `cacertfile` query parameter.
    #[arg(
        long,
        env = "KYC_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true,
        hide_env_values = true,
        global = true
    )]
    pub amqp_url: String,

    /// Address the HTTP server listens on.
    #[arg(
        long,
        env = "KYC_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: SocketAddr,

    /// Connections the HTTP listener holds at once; more wait in the kernel's backlog.
    #[arg(long, env = "KYC_HTTP_MAX_CONNECTIONS", default_value_t = 4096, global = true, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub http_max_connections: u32,

    /// When set, `/metrics` is served only on this address (not on KYC_HTTP_ADDR, which
    /// Veriff reaches).
    #[arg(long, env = "KYC_OPS_ADDR", global = true)]
    pub ops_addr: Option<SocketAddr>,

    /// How long a webhook waits for the broker's confirm before it is spooled to PostgreSQL.
    #[arg(long, env = "KYC_PUBLISH_TIMEOUT", default_value = "2s", global = true, value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// Prefix of every exchange and queue name, so deployments and tests can share a broker.
    #[arg(long, env = "KYC_QUEUE_PREFIX", default_value = "kyc", global = true, value_parser = parse_prefix)]
    pub queue_prefix: String,

    /// Veriff station API base URL (EU integration).
    #[arg(
        long,
        env = "KYC_VERIFF_BASE_URL",
        default_value = "https://stationapi.veriff.com",
        global = true
    )]
    pub veriff_base_url: String,

    /// Veriff API key of the EU integration (also the expected X-AUTH-CLIENT).
    #[arg(
        long,
        env = "KYC_VERIFF_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub veriff_api_key: Option<SecretString>,

    /// Veriff shared secrets of the EU integration, comma-separated; the first one signs.
    #[arg(
        long,
        env = "KYC_VERIFF_SHARED_SECRETS",
        hide_env_values = true,
        global = true
    )]
    pub veriff_shared_secrets: Option<SecretString>,

    /// Veriff station API base URL of the optional US integration.
    #[arg(long, env = "KYC_VERIFF_US_BASE_URL", global = true)]
    pub veriff_us_base_url: Option<String>,

    /// Veriff API key of the optional US integration.
    #[arg(
        long,
        env = "KYC_VERIFF_US_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub veriff_us_api_key: Option<SecretString>,

    /// Veriff shared secrets of the optional US integration, comma-separated; the first one signs.
    #[arg(
        long,
        env = "KYC_VERIFF_US_SHARED_SECRETS",
        hide_env_values = true,
        global = true
    )]
    pub veriff_us_shared_secrets: Option<SecretString>,

    /// HS256 secret for bearer tokens (set this or KYC_JWT_PUBLIC_KEY_FILE).
    #[arg(long, env = "KYC_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<SecretString>,

    /// PEM file with the RS256 public key for bearer tokens (set this or KYC_JWT_SECRET).
    #[arg(long, env = "KYC_JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// Required `iss` of bearer tokens, when set.
    #[arg(long, env = "KYC_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of bearer tokens (mandatory outside --dev).
    #[arg(long, env = "KYC_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Longest wait for an answer from Veriff's API.
    #[arg(long, env = "KYC_VERIFF_TIMEOUT", default_value = "10s", global = true, value_parser = parse_duration)]
    pub veriff_timeout: Duration,

    /// The app's HTTPS page the user's browser returns to after Veriff's flow.
    #[arg(long, env = "KYC_VERIFF_CALLBACK_URL", global = true)]
    pub veriff_callback_url: Option<String>,

    /// Key for Veriff session URLs at rest: base64 of 32 bytes (AES-256-GCM).
    #[arg(
        long,
        env = "KYC_URL_ENCRYPTION_KEY",
        hide_env_values = true,
        global = true
    )]
    pub url_encryption_key: Option<SecretString>,

    /// Requests per second per client key and onboarding (0 turns the limit off); status
    /// polls get ten times as many.
    #[arg(
        long,
        env = "KYC_CLIENT_RATE_LIMIT",
        default_value_t = 5,
        global = true
    )]
    pub client_rate_limit: u32,

    /// Delays of the retry tiers, e.g. `5s,30s,2m,10m`.
    #[arg(long, env = "KYC_RETRY_DELAYS", default_value = "5s,30s,2m,10m", global = true, value_parser = parse_delays)]
    pub retry_delays: Delays,

    /// Sessions with a final decline after which a verification is BLOCKED.
    #[arg(long, env = "KYC_MAX_VERIFICATION_ATTEMPTS", default_value_t = 3, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_verification_attempts: u32,

    /// Decline reason codes that block a verification at once (numbers and ranges, e.g. `105-113,127`).
    #[arg(long, env = "KYC_BLOCKING_REASON_CODES", default_value = "105-113,127,503,504,505,507,515,526", global = true, value_parser = parse_codes)]
    pub blocking_reason_codes: ReasonCodes,

    /// Key for raw webhook bodies at rest: base64 of 32 bytes (AES-256-GCM).
    #[arg(
        long,
        env = "KYC_ARCHIVE_ENCRYPTION_KEY",
        hide_env_values = true,
        global = true
    )]
    pub archive_encryption_key: Option<SecretString>,

    /// How long raw webhook bodies are kept (their non-personal facts are kept for good).
    #[arg(long, env = "KYC_ARCHIVE_RETENTION", default_value = "30d", global = true, value_parser = parse_duration)]
    pub archive_retention: Duration,

    /// Batches the worker applies at once, each in a transaction of its own.
    #[arg(long, env = "KYC_WORKER_CONCURRENCY", default_value_t = 4, global = true, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_concurrency: u16,

    /// Most messages the worker applies in one transaction.
    #[arg(long, env = "KYC_WORKER_BATCH", default_value_t = 64, global = true, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub worker_batch: u16,

    /// Log format: `json` or `pretty`.
    #[arg(
        long,
        env = "KYC_LOG_FORMAT",
        default_value = "pretty",
        global = true,
        value_enum
    )]
    pub log_format: LogFormat,
}

/// The one algorithm bearer tokens may use, and its key.
pub enum JwtKey {
    Hs256(SecretString),
    Rs256Pem(Vec<u8>),
}

pub struct JwtSettings {
    pub key: JwtKey,
    pub audience: String,
    pub issuer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Retry tier delays, shortest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delays(pub Vec<Duration>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonCodes(pub BTreeSet<i32>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is required (or run with --dev)")]
    Missing(&'static str),
    #[error("{0} is malformed: {1}")]
    Malformed(&'static str, &'static str),
    #[error("--dev refuses {0}: it must point at a loopback address")]
    NotLoopback(&'static str),
}

/// The placeholder of deploy/k8s/secret.example.yaml: a value still holding it was never set.
const PLACEHOLDER: &str = "REPLACE_ME";

impl Config {
    /// The configuration as the roles read it: an optional setting given as an empty string
    /// (as a ConfigMap or a compose file often gives it) counts as not set, and a secret
    /// still holding the template's placeholder stops start-up, naming its variable.
    pub(crate) fn normalized(mut self) -> Result<Self, ConfigError> {
        fn text(value: &mut Option<String>) {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *value = None;
            }
        }
        fn secret(value: &mut Option<SecretString>, name: &'static str) -> Result<(), ConfigError> {
            let exposed = value.as_ref().map(|v| v.expose_secret().trim().to_owned());
            match exposed.as_deref() {
                Some("") => *value = None,
                Some(v) if v.contains(PLACEHOLDER) => {
                    return Err(ConfigError::Malformed(
                        name,
                        "still the template's REPLACE_ME",
                    ));
                }
                _ => {}
            }
            Ok(())
        }
        secret(&mut self.veriff_api_key, "KYC_VERIFF_API_KEY")?;
        secret(&mut self.veriff_shared_secrets, "KYC_VERIFF_SHARED_SECRETS")?;
        secret(&mut self.veriff_us_api_key, "KYC_VERIFF_US_API_KEY")?;
        secret(
            &mut self.veriff_us_shared_secrets,
            "KYC_VERIFF_US_SHARED_SECRETS",
        )?;
        secret(&mut self.jwt_secret, "KYC_JWT_SECRET")?;
        secret(&mut self.url_encryption_key, "KYC_URL_ENCRYPTION_KEY")?;
        secret(
            &mut self.archive_encryption_key,
            "KYC_ARCHIVE_ENCRYPTION_KEY",
        )?;
        text(&mut self.veriff_us_base_url);
        text(&mut self.jwt_issuer);
        text(&mut self.jwt_audience);
        text(&mut self.veriff_callback_url);
        if self
            .jwt_public_key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            self.jwt_public_key_file = None;
        }
        for (name, value) in [
            ("KYC_VERIFF_CALLBACK_URL", &self.veriff_callback_url),
            ("KYC_JWT_AUDIENCE", &self.jwt_audience),
        ] {
            if value.as_deref().is_some_and(|v| v.contains(PLACEHOLDER)) {
                return Err(ConfigError::Malformed(
                    name,
                    "still the template's REPLACE_ME",
                ));
            }
        }
        Ok(self)
    }

    /// The exchange and queue names under this deployment's prefix, with its retry tiers.
    pub fn topology(&self) -> Topology {
        Topology::new(self.queue_prefix.clone(), self.retry_delays.0.clone())
    }

    /// The broker's addresses, in the order they are tried.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.amqp_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The Veriff integrations whose secrets verify webhooks. Under `--dev` the EU
    /// integration falls back to the public development key and secret.
    pub fn integrations(&self) -> Result<Integrations, ConfigError> {
        let eu_key = match (&self.veriff_api_key, self.dev) {
            (Some(key), _) => key.clone(),
            (None, true) => SecretString::from(DEV_API_KEY),
            (None, false) => return Err(ConfigError::Missing("KYC_VERIFF_API_KEY")),
        };
        let eu_secrets = match (&self.veriff_shared_secrets, self.dev) {
            (Some(list), _) => split_secrets(list, "KYC_VERIFF_SHARED_SECRETS")?,
            (None, true) => vec![SecretString::from(DEV_SHARED_SECRET)],
            (None, false) => return Err(ConfigError::Missing("KYC_VERIFF_SHARED_SECRETS")),
        };
        let us = match (&self.veriff_us_api_key, &self.veriff_us_shared_secrets) {
            (None, None) => None,
            (Some(key), Some(list)) => Some(IntegrationKeys::new(
                Integration::Us,
                key.clone(),
                split_secrets(list, "KYC_VERIFF_US_SHARED_SECRETS")?,
            )),
            (Some(_), None) => return Err(ConfigError::Missing("KYC_VERIFF_US_SHARED_SECRETS")),
            (None, Some(_)) => return Err(ConfigError::Missing("KYC_VERIFF_US_API_KEY")),
        };
        Ok(Integrations::new(
            IntegrationKeys::new(Integration::Eu, eu_key, eu_secrets),
            us,
        ))
    }

    pub fn archive_cipher(&self) -> Result<Cipher, ConfigError> {
        self.cipher(
            &self.archive_encryption_key,
            DEV_ARCHIVE_KEY,
            "KYC_ARCHIVE_ENCRYPTION_KEY",
        )
    }

    pub fn url_cipher(&self) -> Result<Cipher, ConfigError> {
        self.cipher(
            &self.url_encryption_key,
            DEV_URL_KEY,
            "KYC_URL_ENCRYPTION_KEY",
        )
    }

    fn cipher(
        &self,
        key: &Option<SecretString>,
        dev_key: &str,
        name: &'static str,
    ) -> Result<Cipher, ConfigError> {
        let key = match (key, self.dev) {
            (Some(key), _) => key.expose_secret().to_owned(),
            (None, true) => dev_key.to_owned(),
            (None, false) => return Err(ConfigError::Missing(name)),
        };
        Cipher::from_base64(&key)
            .map_err(|_| ConfigError::Malformed(name, "expected base64 of 32 bytes"))
    }

    /// How bearer tokens are verified: exactly one algorithm, with its key, audience and issuer.
    pub fn jwt(&self) -> Result<JwtSettings, ConfigError> {
        let key = match (&self.jwt_secret, &self.jwt_public_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Malformed(
                    "KYC_JWT_SECRET",
                    "set only one of KYC_JWT_SECRET and KYC_JWT_PUBLIC_KEY_FILE",
                ));
            }
            (Some(secret), None) => JwtKey::Hs256(secret.clone()),
            (None, Some(path)) => JwtKey::Rs256Pem(std::fs::read(path).map_err(|_| {
                ConfigError::Malformed("KYC_JWT_PUBLIC_KEY_FILE", "cannot be read")
            })?),
            (None, None) if self.dev => JwtKey::Hs256(SecretString::from(DEV_JWT_SECRET)),
            (None, None) => {
                return Err(ConfigError::Missing(
                    "KYC_JWT_SECRET or KYC_JWT_PUBLIC_KEY_FILE",
                ));
            }
        };
        let audience = match (&self.jwt_audience, self.dev) {
            (Some(aud), _) => aud.clone(),
            (None, true) => DEV_JWT_AUDIENCE.to_owned(),
            (None, false) => return Err(ConfigError::Missing("KYC_JWT_AUDIENCE")),
        };
        Ok(JwtSettings {
            key,
            audience,
            issuer: self.jwt_issuer.clone(),
        })
    }

    /// Under `--dev`, the stand-in's page that ends the flow.
    pub fn callback_url(&self, http_addr: SocketAddr) -> Result<String, ConfigError> {
        match (&self.veriff_callback_url, self.dev) {
            (Some(url), _) => Ok(url.clone()),
            (None, true) => Ok(format!("http://{http_addr}/dev/done")),
            (None, false) => Err(ConfigError::Missing("KYC_VERIFF_CALLBACK_URL")),
        }
    }

    /// Veriff's API; under `--dev`, unless pointed elsewhere on loopback, the local stand-in.
    pub(crate) fn veriff_base_url(&self, http_addr: SocketAddr) -> String {
        if self.dev && self.veriff_base_url == VERIFF_BASE_URL {
            format!("http://{http_addr}/dev/veriff")
        } else {
            self.veriff_base_url.clone()
        }
    }

    pub fn policy(&self) -> Policy {
        Policy {
            max_attempts: self.max_verification_attempts,
            blocking_reason_codes: self.blocking_reason_codes.0.clone(),
        }
    }

    /// `--dev` runs with public development secrets, so it must never reach anything real.
    /// Addresses are read with the drivers' own parsers: what they will connect to, not
    /// what the URL seems to say (`postgres://127.0.0.1/kyc?host=db.prod` connects to db.prod).
    pub(crate) fn check_dev_loopback(&self) -> Result<(), ConfigError> {
        let listens = [Some(self.http_addr), self.ops_addr];
        if listens.into_iter().flatten().any(|a| !a.ip().is_loopback()) {
            return Err(ConfigError::NotLoopback("KYC_HTTP_ADDR or KYC_OPS_ADDR"));
        }
        if !postgres_is_loopback(&self.database_url) {
            return Err(ConfigError::NotLoopback("KYC_DATABASE_URL"));
        }
        let urls = self.amqp_urls();
        if urls.is_empty() || !urls.iter().all(|url| amqp_is_loopback(url)) {
            return Err(ConfigError::NotLoopback("KYC_AMQP_URL"));
        }
        // The default (Veriff itself) is replaced by the stand-in under --dev.
        if self.veriff_base_url != VERIFF_BASE_URL && !http_is_loopback(&self.veriff_base_url) {
            return Err(ConfigError::NotLoopback("KYC_VERIFF_BASE_URL"));
        }
        if let Some(us) = &self.veriff_us_base_url
            && !http_is_loopback(us)
        {
            return Err(ConfigError::NotLoopback("KYC_VERIFF_US_BASE_URL"));
        }
        Ok(())
    }
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Every host tokio-postgres would try is this machine (a Unix socket is too).
fn postgres_is_loopback(url: &str) -> bool {
    use tokio_postgres::config::Host;
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return false;
    };
    let hosts_local = config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => is_loopback_name(name),
        Host::Unix(_) => true,
    });
    let addrs_local = config.get_hostaddrs().iter().all(|ip| ip.is_loopback());
    hosts_local && addrs_local
}

/// The host lapin would connect to is this machine.
fn amqp_is_loopback(url: &str) -> bool {
    url.parse::<lapin::uri::AMQPUri>()
        .is_ok_and(|uri| is_loopback_name(&uri.authority.host))
}

/// The host an HTTP client would connect to is this machine.
pub(crate) fn http_is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|url| url.host_str().map(is_loopback_name))
        .unwrap_or(false)
}

fn split_secrets(
    list: &SecretString,
    name: &'static str,
) -> Result<Vec<SecretString>, ConfigError> {
    let secrets: Vec<SecretString> = list
        .expose_secret()
        .split(',')
        .map(str::trim)
        .map(|s| SecretString::from(s.to_owned()))
        .collect();
    if secrets.iter().any(|s| s.expose_secret().is_empty()) {
        return Err(ConfigError::Malformed(name, "empty secret in the list"));
    }
    Ok(secrets)
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(s.to_owned())
    } else {
        Err("use 1-100 characters of [A-Za-z0-9._-]".into())
    }
}

/// A duration like `30s`, `2m`, `1h 30m` or `30d` (humantime's syntax), or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("`{s}` is too long a duration"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s, 2m, 1h or 30d: {e}"))
}

fn parse_delays(s: &str) -> Result<Delays, String> {
    let mut delays = s
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if delays.iter().any(Duration::is_zero) {
        return Err("a retry delay must be at least 1s".into());
    }
    delays.sort();
    delays.dedup();
    Ok(Delays(delays))
}

fn parse_codes(s: &str) -> Result<ReasonCodes, String> {
    let mut codes = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a reason code or a range like 105-113");
        match part.split_once('-') {
            Some((lo, hi)) => {
                let lo: i32 = lo.trim().parse().map_err(|_| bad())?;
                let hi: i32 = hi.trim().parse().map_err(|_| bad())?;
                if lo > hi {
                    return Err(bad());
                }
                codes.extend(lo..=hi);
            }
            None => {
                codes.insert(part.parse().map_err(|_| bad())?);
            }
        }
    }
    Ok(ReasonCodes(codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_delays() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        // Too large for seconds: an error, not an overflow.
        assert!(parse_duration("99999999999999999999999d").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
        let Delays(d) = parse_delays("2m,5s,30s,10m").expect("valid delays");
        assert_eq!(d, [5, 30, 120, 600].map(Duration::from_secs));
        assert!(parse_delays("0s").is_err());
    }

    #[test]
    fn reason_codes_with_ranges() {
        let ReasonCodes(codes) = parse_codes("105-107, 127").expect("valid codes");
        assert_eq!(codes.into_iter().collect::<Vec<_>>(), [105, 106, 107, 127]);
        assert!(parse_codes("113-105").is_err());
        assert!(parse_codes("abc").is_err());
    }

    fn parsed(args: &[&str]) -> Config {
        let mut all = vec!["kyc"];
        all.extend_from_slice(args);
        <Only as clap::Parser>::try_parse_from(all)
            .map(|o| o.config)
            .expect("valid flags")
    }

    #[test]
    fn dev_refuses_anything_off_loopback() {
        assert_eq!(parsed(&[]).check_dev_loopback(), Ok(()));
        let cases = [
            (
                ["--http-addr", "0.0.0.0:8080"],
                "KYC_HTTP_ADDR or KYC_OPS_ADDR",
            ),
            (
                ["--ops-addr", "10.0.0.1:9090"],
                "KYC_HTTP_ADDR or KYC_OPS_ADDR",
            ),
            (
                [
                    "--database-url",
                    "postgres://127.0.0.1/kyc?host=db.example.com",
                ],
                "KYC_DATABASE_URL",
            ),
            (
                ["--database-url", "host=db.example.com dbname=kyc"],
                "KYC_DATABASE_URL",
            ),
            (
                [
                    "--database-url",
                    "postgres://127.0.0.1/kyc?hostaddr=10.1.2.3",
                ],
                "KYC_DATABASE_URL",
            ),
            (
                [
                    "--amqp-url",
                    "amqp://127.0.0.1:5672/%2f,amqp://mq.example.com:5672/%2f",
                ],
                "KYC_AMQP_URL",
            ),
            (
                ["--veriff-base-url", "http://127.0.0.1.example.com/"],
                "KYC_VERIFF_BASE_URL",
            ),
            (
                ["--database-url", "postgres://u@db.example.com/kyc"],
                "KYC_DATABASE_URL",
            ),
            (
                ["--amqp-url", "amqp://g:g@mq.example.com:5672/%2f"],
                "KYC_AMQP_URL",
            ),
            (
                ["--veriff-base-url", "https://stationapi.veriff.example"],
                "KYC_VERIFF_BASE_URL",
            ),
            (
                ["--veriff-us-base-url", "https://us.veriff.example"],
                "KYC_VERIFF_US_BASE_URL",
            ),
        ];
        for (args, variable) in cases {
            assert_eq!(
                parsed(&args).check_dev_loopback(),
                Err(ConfigError::NotLoopback(variable))
            );
        }
    }

    #[test]
    fn missing_secrets_name_their_variable_outside_dev() {
        let bare = parsed(&[]);
        assert_eq!(
            bare.integrations().map(|_| ()),
            Err(ConfigError::Missing("KYC_VERIFF_API_KEY"))
        );
        assert!(
            parsed(&["--dev"]).integrations().is_ok(),
            "--dev fills in development secrets"
        );
        assert!(matches!(
            bare.archive_cipher(),
            Err(ConfigError::Missing("KYC_ARCHIVE_ENCRYPTION_KEY"))
        ));
        let short = parsed(&["--archive-encryption-key", "c2hvcnQ="]);
        assert!(matches!(
            short.archive_cipher(),
            Err(ConfigError::Malformed("KYC_ARCHIVE_ENCRYPTION_KEY", _))
        ));
        assert!(matches!(
            bare.jwt().map(|_| ()),
            Err(ConfigError::Missing(_))
        ));
        let no_audience = parsed(&["--jwt-secret", "s"]);
        assert!(matches!(
            no_audience.jwt().map(|_| ()),
            Err(ConfigError::Missing("KYC_JWT_AUDIENCE"))
        ));
    }

    /// Every check `kyc serve` makes of its secrets at start, as `Service::start` makes them.
    fn serve_would_start(config: &Config) -> Result<(), ConfigError> {
        config.integrations()?;
        config.archive_cipher()?;
        config.url_cipher()?;
        config.jwt()?;
        config.callback_url("127.0.0.1:8080".parse().expect("an address"))?;
        Ok(())
    }

    /// Flags that set `variables` (each to a valid value), found through clap's own `env`.
    fn flags_setting(variables: &[&str]) -> Vec<String> {
        let command = <Only as clap::CommandFactory>::command();
        let mut flags = Vec::new();
        for variable in variables {
            let arg = command
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == *variable))
                .unwrap_or_else(|| panic!("{variable} is a setting"));
            let value = match *variable {
                "KYC_URL_ENCRYPTION_KEY" | "KYC_ARCHIVE_ENCRYPTION_KEY" => {
                    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
                }
                "KYC_JWT_PUBLIC_KEY_FILE" => concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
                "KYC_VERIFF_CALLBACK_URL" => "https://app.example/verified",
                _ => "value",
            };
            flags.push(format!("--{}", arg.get_long().expect("a long flag")));
            flags.push(value.to_owned());
        }
        flags
    }

    #[derive(clap::Parser)]
    struct Only {
        #[command(flatten)]
        config: Config,
    }

    fn parsed_owned(flags: &[String]) -> Config {
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        parsed(&args)
    }

    #[test]
    fn required_outside_dev_is_what_start_up_refuses_without() {
        // Each alternative of each entry, with one alternative of every other entry: enough.
        for (i, entry) in REQUIRED_OUTSIDE_DEV.iter().enumerate() {
            for alternative in *entry {
                let mut set: Vec<&str> = REQUIRED_OUTSIDE_DEV.iter().map(|e| e[0]).collect();
                set[i] = alternative;
                let config = parsed_owned(&flags_setting(&set));
                assert_eq!(serve_would_start(&config), Ok(()), "with {set:?}");
            }
            // Without any alternative of this entry, start-up fails naming each of them.
            let others: Vec<&str> = REQUIRED_OUTSIDE_DEV
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, e)| e[0])
                .collect();
            let refused = serve_would_start(&parsed_owned(&flags_setting(&others)));
            match refused {
                Err(ConfigError::Missing(named)) => {
                    for alternative in *entry {
                        assert!(named.contains(alternative), "{named} names {alternative}");
                    }
                }
                other => panic!("without {entry:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn loopback_hosts_as_the_drivers_read_them() {
        assert!(postgres_is_loopback(
            "postgres://postgres@127.0.0.1:5432/kyc"
        ));
        assert!(postgres_is_loopback("postgres://postgres@localhost/kyc"));
        assert!(postgres_is_loopback(
            "postgresql:///kyc?host=/var/run/postgresql"
        ));
        assert!(!postgres_is_loopback("postgres://u:p@db.example.com/kyc"));
        assert!(!postgres_is_loopback(
            "postgres://[::1]/kyc?host=db.example.com"
        ));
        assert!(amqp_is_loopback("amqp://guest:guest@localhost:5672/%2f"));
        assert!(!amqp_is_loopback("amqp://guest:guest@10.0.0.5:5672/%2f"));
        assert!(http_is_loopback("http://[::1]:8080/x"));
        assert!(!http_is_loopback("not a url"));
        assert!(!http_is_loopback("http://localhost.example.com/"));
    }

    #[test]
    fn empty_optional_settings_are_unset_and_placeholders_refused() {
        let config = parsed(&[
            "--veriff-us-api-key",
            "",
            "--veriff-us-shared-secrets",
            " ",
            "--jwt-issuer",
            "",
        ])
        .normalized()
        .expect("empty values are fine");
        assert!(config.veriff_us_api_key.is_none() && config.veriff_us_shared_secrets.is_none());
        assert!(config.jwt_issuer.is_none());
        assert!(
            parsed(&["--dev"])
                .normalized()
                .expect("dev")
                .integrations()
                .is_ok()
        );
        for (flag, name) in [
            ("--veriff-shared-secrets", "KYC_VERIFF_SHARED_SECRETS"),
            ("--jwt-secret", "KYC_JWT_SECRET"),
            ("--veriff-callback-url", "KYC_VERIFF_CALLBACK_URL"),
        ] {
            assert!(
                matches!(
                    parsed(&[flag, "REPLACE_ME"]).normalized(),
                    Err(ConfigError::Malformed(n, _)) if n == name
                ),
                "{flag}"
            );
        }
    }

    #[test]
    fn several_broker_urls() {
        let config = parsed(&["--amqp-url", "amqp://a:1/%2f, amqp://b:2/%2f,"]);
        assert_eq!(config.amqp_urls(), ["amqp://a:1/%2f", "amqp://b:2/%2f"]);
    }
}
