//! The `kyc` command line: one binary, one role per subcommand, sharing one [`Config`].

use std::net::TcpListener;

use clap::{Parser, Subcommand};

use chrono::{DateTime, Utc};

use crate::app::{BoxError, Roles, Service};
use crate::config::Config;
use crate::oncall::clients::ClientsCommand;
use crate::oncall::dlq::DlqCommand;
use crate::oncall::trigger::TriggerCommand;
use crate::{oncall, storage, telemetry};

#[derive(Debug, Parser)]
#[command(name = "kyc", version, about = "Identity verification with Veriff", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    /// Development mode: public development secrets, a local Veriff stand-in, loopback only.
    #[arg(long, global = true)]
    pub dev: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate, declare the topology, serve HTTP and run the worker in one process.
    Run,
    /// The HTTP side alone (webhook receiver, registration API, operational endpoints).
    Serve,
    /// The worker alone: applies webhooks, records dead letters, reconciles sessions.
    Worker,
    /// Create the database if missing and apply the migrations.
    Migrate,
    /// Manage the apps' client keys.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Republish recorded webhooks so the worker recomputes the rows.
    Replay {
        /// Veriff's session id.
        #[arg(long, required_unless_present = "since", conflicts_with = "since")]
        session: Option<String>,
        /// Recorded at or after this time (RFC 3339 or a date).
        #[arg(long, value_parser = oncall::parse_time)]
        since: Option<DateTime<Utc>>,
        /// Recorded before this time.
        #[arg(long, value_parser = oncall::parse_time, requires = "since")]
        until: Option<DateTime<Utc>>,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send a correctly signed test webhook to a running receiver.
    #[command(subcommand)]
    Trigger(TriggerCommand),
}

pub async fn run(cli: Cli) -> Result<(), BoxError> {
    let Cli {
        config,
        dev,
        command,
    } = cli;
    telemetry::init(config.log_format);
    if dev {
        config.check_dev_loopback()?;
    }
    match command {
        Command::Migrate => migrate(&config).await,
        Command::Clients(command) => oncall::clients::run(&config, command).await,
        Command::Dlq(command) => oncall::dlq::run(&config, dev, command).await,
        Command::Replay {
            session,
            since,
            until,
            dry_run,
        } => oncall::replay::run(&config, dev, session, since, until, dry_run).await,
        Command::Trigger(command) => oncall::trigger::run(&config, dev, command).await,
        Command::Serve => start(&config, dev, true, false).await,
        // The worker's listener serves only /healthz, /readyz and /metrics.
        Command::Worker => start(&config, dev, false, true).await,
        Command::Run => {
            migrate(&config).await?;
            if dev {
                oncall::dev_guide::print(&config);
            }
            start(&config, dev, true, true).await
        }
    }
}

async fn migrate(config: &Config) -> Result<(), BoxError> {
    let applied = storage::migrate::run(&config.database_url).await?;
    tracing::info!(?applied, "database is up to date");
    Ok(())
}

async fn start(config: &Config, dev: bool, api: bool, worker: bool) -> Result<(), BoxError> {
    let listener = TcpListener::bind(config.http_addr)
        .map_err(|e| format!("cannot listen on KYC_HTTP_ADDR {}: {e}", config.http_addr))?;
    let roles = Roles {
        http: Some(listener),
        api,
        worker,
    };
    Service::start(config, dev, roles)?.run_until_signal().await
}
