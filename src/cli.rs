//! The `kyc` command line: one binary, one role per subcommand, sharing one [`Config`].

use std::net::TcpListener;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::queue::{Broker, Topology};
use crate::{storage, telemetry};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

pub fn topology(config: &Config) -> Topology {
    Topology::new(config.queue_prefix.clone(), config.retry_delays.0.clone())
}

async fn serve(config: &Config, dev: bool) -> Result<(), BoxError> {
    if dev {
        config.check_dev_loopback()?;
    }
    let integrations = config.integrations(dev)?;
    let stop = CancellationToken::new();
    let broker = Broker::start(config.amqp_url.clone(), topology(config), stop.clone());
    let listener = TcpListener::bind(config.http_addr)
        .map_err(|e| format!("cannot listen on KYC_HTTP_ADDR {}: {e}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, "serving HTTP");
    let state = AppState {
        integrations,
        broker,
        metrics: Arc::new(Metrics::new()),
    };
    // The server stops gracefully on SIGINT and SIGTERM by itself.
    let outcome = http::server(state, listener)?.await;
    stop.cancel();
    Ok(outcome?)
}
