//! The `kyc` command line: one binary, one role per subcommand, sharing one [`Config`].

use std::net::TcpListener;
use std::time::Duration;

use clap::{Parser, Subcommand};

use chrono::{DateTime, Utc};

use crate::app::{Roles, Service};
use crate::config::Config;
use crate::error::BoxError;
use crate::oncall::clients::ClientsCommand;
use crate::oncall::dlq::DlqCommand;
use crate::oncall::trigger::TriggerCommand;
use crate::oncall::verification::VerificationCommand;
use crate::{dev, oncall, storage, telemetry};

#[derive(Parser)]
#[command(name = "kyc", version, about = "Identity verification with Veriff", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
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
    /// Create the database if missing, apply the migrations, declare the broker's topology.
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
    /// Recompute verification rows from their recorded facts with the current state machine
    /// and policy (no bodies needed).
    Recompute {
        #[command(flatten)]
        which: oncall::recompute::Which,
        /// Say what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Explain verifications: the row, its sessions, every recorded input, and why.
    #[command(subcommand)]
    Verification(VerificationCommand),
    /// Send a correctly signed test webhook to a running receiver.
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// Exit 0 if URL answers 2xx within 5 s, 1 otherwise (the container's health check).
    Healthcheck { url: String },
}

pub async fn run(cli: Cli) -> Result<(), BoxError> {
    let Cli { config, command } = cli;
    let config = config.normalized()?;
    let service = matches!(command, Command::Run | Command::Serve | Command::Worker);
    telemetry::init(config.log_format, if service { "info" } else { "warn" });
    if config.dev {
        config.check_dev_loopback()?;
    }
    match command {
        Command::Migrate => {
            let applied = migrate(&config).await?;
            out!(
                "database up to date ({} migration(s) applied), topology of {} declared",
                applied.len(),
                config.queue_prefix
            );
            Ok(())
        }
        Command::Clients(command) => oncall::clients::run(&config, command).await,
        Command::Dlq(command) => oncall::dlq::run(&config, command).await,
        Command::Replay {
            session,
            since,
            until,
            dry_run,
        } => oncall::replay::run(&config, session, since, until, dry_run).await,
        Command::Recompute { which, dry_run } => {
            oncall::recompute::run(&config, which, dry_run).await
        }
        Command::Verification(command) => oncall::verification::run(&config, command).await,
        Command::Trigger(command) => oncall::trigger::run(&config, command).await,
        Command::Healthcheck { url } => healthcheck(&url).await,
        Command::Serve => start(&config, true, false).await,
        // The worker's listener serves only /healthz, /readyz and /metrics.
        Command::Worker => start(&config, false, true).await,
        Command::Run => {
            migrate(&config).await?;
            if config.dev {
                dev::guide::print(&config);
            }
            start(&config, true, true).await
        }
    }
}

async fn migrate(config: &Config) -> Result<Vec<i32>, BoxError> {
    let applied = storage::migrate::run(&config.database_url).await?;
    tracing::info!(?applied, "database is up to date");
    oncall::declare_topology(config).await?;
    tracing::info!(prefix = %config.queue_prefix, "broker topology declared");
    Ok(applied)
}

async fn start(config: &Config, api: bool, worker: bool) -> Result<(), BoxError> {
    let bind = |addr, name| {
        TcpListener::bind(addr).map_err(|e| format!("cannot listen on {name} {addr}: {e}"))
    };
    let roles = Roles {
        http: Some(bind(config.http_addr, "KYC_HTTP_ADDR")?),
        ops: config
            .ops_addr
            .map(|addr| bind(addr, "KYC_OPS_ADDR"))
            .transpose()?,
        api,
        worker,
    };
    Service::start(config, roles)?.run_until_signal().await
}

async fn healthcheck(url: &str) -> Result<(), BoxError> {
    let http = crate::tls::client_builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let status = http.get(url).send().await?.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}").into());
    }
    Ok(())
}
