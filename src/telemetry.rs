//! Logging. Payloads hold personal data, so nothing here ever logs a body; call sites log
//! dedup keys and session ids only.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Directives added to whatever RUST_LOG says: lapin logs every returned message at WARN
/// with its body and headers, which carry personal data.
pub const REDACTIONS: &str = "lapin::returned_messages=off";

/// RUST_LOG, else `default` (`info` for the services; `warn` for one-off commands, which
/// print only their result).
pub fn filter(default: &str) -> EnvFilter {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_owned());
    EnvFilter::try_new(format!("{base},{REDACTIONS}"))
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},{REDACTIONS}")))
}

pub(crate) fn init(format: LogFormat, default: &str) {
    let filter = filter(default);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
