//! Configuration: every setting is an environment variable and a flag, so `kyc --help`
//! is the reference. Secrets are wrapped so that no `Debug` or log line can print them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::Cipher;
use crate::state_machine::Policy;
use crate::veriff::signature::{Integration, IntegrationKeys, Integrations};

/// Development stand-ins for `--dev`: public by design, refused off loopback.
const DEV_API_KEY: &str = "dev-veriff-api-key";
const DEV_SHARED_SECRET: &str = "dev-veriff-shared-secret";
const DEV_ARCHIVE_KEY: &str = "ZGV2LWFyY2hpdmUta2V5LW5vdC1mb3ItcHJvZHVjdGk=";
const DEV_URL_KEY: &str = "ZGV2LXVybC1rZXktbm90LWZvci1wcm9kdWN0aW9uLi4=";
const DEV_JWT_SECRET: &str = "dev-jwt-secret";
const DEV_JWT_AUDIENCE: &str = "kyc-dev";
const VERIFF_BASE_URL: &str = "https://stationapi.veriff.com";

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "KYC_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/kyc",
        global = true
    )]
    pub database_url: String,

    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "KYC_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
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

impl Config {
    /// The Veriff integrations whose secrets verify webhooks. Under `--dev` the EU
    /// integration falls back to the public development key and secret.
    pub fn integrations(&self, dev: bool) -> Result<Integrations, ConfigError> {
        let eu_key = match (&self.veriff_api_key, dev) {
            (Some(key), _) => key.clone(),
            (None, true) => SecretString::from(DEV_API_KEY),
            (None, false) => return Err(ConfigError::Missing("KYC_VERIFF_API_KEY")),
        };
        let eu_secrets = match (&self.veriff_shared_secrets, dev) {
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

    pub fn archive_cipher(&self, dev: bool) -> Result<Cipher, ConfigError> {
        cipher(
            &self.archive_encryption_key,
            dev,
            DEV_ARCHIVE_KEY,
            "KYC_ARCHIVE_ENCRYPTION_KEY",
        )
    }

    pub fn url_cipher(&self, dev: bool) -> Result<Cipher, ConfigError> {
        cipher(
            &self.url_encryption_key,
            dev,
            DEV_URL_KEY,
            "KYC_URL_ENCRYPTION_KEY",
        )
    }

    /// How bearer tokens are verified: exactly one algorithm, with its key, audience and issuer.
    pub fn jwt(&self, dev: bool) -> Result<JwtSettings, ConfigError> {
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
            (None, None) if dev => JwtKey::Hs256(SecretString::from(DEV_JWT_SECRET)),
            (None, None) => {
                return Err(ConfigError::Missing(
                    "KYC_JWT_SECRET or KYC_JWT_PUBLIC_KEY_FILE",
                ));
            }
        };
        let audience = match (&self.jwt_audience, dev) {
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
    pub fn callback_url(&self, dev: bool, http_addr: SocketAddr) -> Result<String, ConfigError> {
        match (&self.veriff_callback_url, dev) {
            (Some(url), _) => Ok(url.clone()),
            (None, true) => Ok(format!("http://{http_addr}/dev/done")),
            (None, false) => Err(ConfigError::Missing("KYC_VERIFF_CALLBACK_URL")),
        }
    }

    /// Veriff's API; under `--dev`, unless pointed elsewhere on loopback, the local stand-in.
    pub fn veriff_base_url(&self, dev: bool, http_addr: SocketAddr) -> String {
        if dev && self.veriff_base_url == VERIFF_BASE_URL {
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
    pub fn check_dev_loopback(&self) -> Result<(), ConfigError> {
        if !self.http_addr.ip().is_loopback() {
            return Err(ConfigError::NotLoopback("KYC_HTTP_ADDR"));
        }
        let mut urls = vec![
            ("KYC_DATABASE_URL", self.database_url.as_str()),
            ("KYC_AMQP_URL", self.amqp_url.as_str()),
        ];
        // The default (Veriff itself) is replaced by the stand-in under --dev.
        if self.veriff_base_url != VERIFF_BASE_URL {
            urls.push(("KYC_VERIFF_BASE_URL", self.veriff_base_url.as_str()));
        }
        if let Some(us) = &self.veriff_us_base_url {
            urls.push(("KYC_VERIFF_US_BASE_URL", us.as_str()));
        }
        for (name, url) in urls {
            if !url_host_is_loopback(url) {
                return Err(ConfigError::NotLoopback(name));
            }
        }
        Ok(())
    }
}

fn cipher(
    key: &Option<SecretString>,
    dev: bool,
    dev_key: &str,
    name: &'static str,
) -> Result<Cipher, ConfigError> {
    let key = match (key, dev) {
        (Some(key), _) => key.expose_secret().to_owned(),
        (None, true) => dev_key.to_owned(),
        (None, false) => return Err(ConfigError::Missing(name)),
    };
    Cipher::from_base64(&key)
        .map_err(|_| ConfigError::Malformed(name, "expected base64 of 32 bytes"))
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

/// The host of `scheme://[user[:pass]@]host[:port]/...`, judged as loopback.
pub fn url_host_is_loopback(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

/// `30s`, `2m`, `1h`, `30d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 2m, 1h or 30d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}` has an unknown unit (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
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
        assert!(parse_duration("5 parsecs").is_err());
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
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
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
            (["--http-addr", "0.0.0.0:8080"], "KYC_HTTP_ADDR"),
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
            bare.integrations(false).map(|_| ()),
            Err(ConfigError::Missing("KYC_VERIFF_API_KEY"))
        );
        assert!(
            bare.integrations(true).is_ok(),
            "--dev fills in development secrets"
        );
        assert!(matches!(
            bare.archive_cipher(false),
            Err(ConfigError::Missing("KYC_ARCHIVE_ENCRYPTION_KEY"))
        ));
        let short = parsed(&["--archive-encryption-key", "c2hvcnQ="]);
        assert!(matches!(
            short.archive_cipher(false),
            Err(ConfigError::Malformed("KYC_ARCHIVE_ENCRYPTION_KEY", _))
        ));
        assert!(matches!(
            bare.jwt(false).map(|_| ()),
            Err(ConfigError::Missing(_))
        ));
        let no_audience = parsed(&["--jwt-secret", "s"]);
        assert!(matches!(
            no_audience.jwt(false).map(|_| ()),
            Err(ConfigError::Missing("KYC_JWT_AUDIENCE"))
        ));
    }

    #[test]
    fn loopback_hosts() {
        assert!(url_host_is_loopback(
            "postgres://postgres@127.0.0.1:5432/kyc"
        ));
        assert!(url_host_is_loopback(
            "amqp://guest:guest@localhost:5672/%2f"
        ));
        assert!(url_host_is_loopback("http://[::1]:8080/x"));
        assert!(!url_host_is_loopback("postgres://u:p@db.example.com/kyc"));
        assert!(!url_host_is_loopback(
            "amqp://guest:guest@10.0.0.5:5672/%2f"
        ));
        assert!(!url_host_is_loopback("not a url"));
    }
}
