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
    /// Manage the apps' client keys.
    #[command(subcommand)]
    Clients(ClientsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Create a client; its key is printed once and never stored.
    Create {
        #[arg(long)]
        name: String,
        /// The client may use the US Veriff integration (`x-us-env: true`).
        #[arg(long)]
        us: bool,
    },
    /// List the clients.
    List {
        /// JSON lines for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client: its key stops working within seconds.
    Revoke { id: uuid::Uuid },
}

pub async fn run(cli: Cli) -> Result<(), BoxError> {
    let config = cli.config;
    telemetry::init(config.log_format);
    match cli.command {
        Command::Migrate => migrate(&config).await,
        Command::Clients(command) => clients(&config, command).await,
        Command::Serve { dev } => start(&config, dev, true, false).await,
        Command::Worker => start(&config, false, false, true).await,
        Command::Run { dev } => {
            if dev {
                config.check_dev_loopback()?;
            }
            migrate(&config).await?;
            if dev {
                print_dev_guide(&config);
            }
            start(&config, dev, true, true).await
        }
    }
}

async fn clients(config: &Config, command: ClientsCommand) -> Result<(), BoxError> {
    let pool = storage::pool(&config.database_url, 1)?;
    let db = pool.get().await?;
    match command {
        ClientsCommand::Create { name, us } => {
            let (id, key) = storage::clients::create(&db, &name, us).await?;
            println!(
                "client {id} created{}",
                if us { " (US enabled)" } else { "" }
            );
            println!("key (shown once, store it now): {key}");
        }
        ClientsCommand::List { json } => {
            let clients = storage::clients::list(&db).await?;
            if json {
                for client in clients {
                    println!("{}", serde_json::to_string(&client)?);
                }
            } else {
                println!(
                    "{:<36}  {:<24}  {:<3}  {:<20}  REVOKED",
                    "ID", "NAME", "US", "CREATED"
                );
                for c in clients {
                    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map_or_else(
                            || "-".to_owned(),
                            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
                        )
                    };
                    println!(
                        "{:<36}  {:<24}  {:<3}  {:<20}  {}",
                        c.id,
                        c.name.as_deref().unwrap_or("-"),
                        if c.us_enabled { "yes" } else { "no" },
                        time(c.created_at),
                        time(c.revoked_at),
                    );
                }
            }
        }
        ClientsCommand::Revoke { id } => {
            if !storage::clients::revoke(&db, id).await? {
                return Err(format!("no client {id}").into());
            }
            println!("client {id} revoked");
        }
    }
    Ok(())
}

/// What a newcomer does next with `kyc run --dev`.
fn print_dev_guide(config: &Config) {
    let addr = config.http_addr;
    let db = &config.database_url;
    let kyc =
        std::env::current_exe().map_or_else(|_| "kyc".to_owned(), |p| p.display().to_string());
    println!(
        r#"
kyc is running in development mode on http://{addr} with a local Veriff stand-in.
Try the whole flow in a second terminal:

  KEY=$({kyc} clients create --name demo | sed -n 's/^key.*: //p')
  CLIENT=$({kyc} clients list --json | tail -n 1 | sed 's/.*"id":"\([^"]*\)".*/\1/')
  ONBOARDING=$(cat /proc/sys/kernel/random/uuid)
  psql "{db}" -c "INSERT INTO onboardings (id, client_id, phone_verified_at, expires_at) VALUES ('$ONBOARDING', '$CLIENT', now(), now() + interval '1 day')"
  curl -s -X POST http://{addr}/v1/auth/register/verification -H "x-client-key: $KEY" -d "{{\"onboardingId\":\"$ONBOARDING\"}}"

Open the "url" it returns in a browser and click "Approve"; then

  curl -s "http://{addr}/v1/auth/register/status?onboardingId=$ONBOARDING" -H "x-client-key: $KEY"

reports "state":"VERIFIED".
"#
    );
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
