//! The `kyc` command line: one binary, one role per subcommand, sharing one [`Config`].

use std::net::TcpListener;

use clap::{Parser, Subcommand};

use crate::app::{BoxError, Service};
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
    /// Migrate, declare the topology, and serve HTTP in one process.
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
    /// Create the database if missing and apply the migrations.
    Migrate,
}

pub async fn run(cli: Cli) -> Result<(), BoxError> {
    let config = cli.config;
    telemetry::init(config.log_format);
    match cli.command {
        Command::Migrate => migrate(&config).await,
        Command::Serve { dev } => serve(&config, dev).await,
        Command::Run { dev } => {
            if dev {
                config.check_dev_loopback()?;
            }
            migrate(&config).await?;
            serve(&config, dev).await
        }
    }
}

async fn migrate(config: &Config) -> Result<(), BoxError> {
    let applied = storage::migrate::run(&config.database_url).await?;
    tracing::info!(?applied, "database is up to date");
    Ok(())
}

async fn serve(config: &Config, dev: bool) -> Result<(), BoxError> {
    let listener = TcpListener::bind(config.http_addr)
        .map_err(|e| format!("cannot listen on KYC_HTTP_ADDR {}: {e}", config.http_addr))?;
    Service::start_http(config, dev, listener)?
        .run_until_signal()
        .await
}
