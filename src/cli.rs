//! The `kyc` command line: one binary, one role per subcommand, sharing one [`Config`].

use std::net::TcpListener;

use clap::{Parser, Subcommand};

use crate::app::{BoxError, Roles, Service};
use crate::config::Config;
use crate::{storage, telemetry};

#[derive(Debug, Parser)]
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
    Run {
        /// Fill in development secrets; loopback addresses only.
        #[arg(long)]
        dev: bool,
    },
    /// The HTTP side alone (webhook receiver and operational endpoints).
    Serve {
        /// Fill in development secrets; loopback addresses only.
        #[arg(long)]
        dev: bool,
    },
    /// The worker alone: applies webhooks from the queue and records dead letters.
    Worker,
    /// Create the database if missing and apply the migrations.
    Migrate,
}

pub async fn run(cli: Cli) -> Result<(), BoxError> {
    let config = cli.config;
    telemetry::init(config.log_format);
    match cli.command {
        Command::Migrate => migrate(&config).await,
        Command::Serve { dev } => start(&config, dev, true, false).await,
        Command::Worker => start(&config, false, false, true).await,
        Command::Run { dev } => {
            if dev {
                config.check_dev_loopback()?;
            }
            migrate(&config).await?;
            start(&config, dev, true, true).await
        }
    }
}

async fn migrate(config: &Config) -> Result<(), BoxError> {
    let applied = storage::migrate::run(&config.database_url).await?;
    tracing::info!(?applied, "database is up to date");
    Ok(())
}

async fn start(config: &Config, dev: bool, http: bool, worker: bool) -> Result<(), BoxError> {
    if dev {
        config.check_dev_loopback()?;
    }
    let http = match http {
        true => Some(
            TcpListener::bind(config.http_addr)
                .map_err(|e| format!("cannot listen on KYC_HTTP_ADDR {}: {e}", config.http_addr))?,
        ),
        false => None,
    };
    Service::start(config, dev, Roles { http, worker })?
        .run_until_signal()
        .await
}
