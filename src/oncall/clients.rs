//! `kyc clients`: the apps' client keys.

use crate::config::Config;
use crate::error::BoxError;
use crate::storage;

#[derive(Debug, clap::Subcommand)]
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
    /// Revoke a client: every running kyc refuses its key within a second.
    Revoke { id: uuid::Uuid },
}

pub async fn run(config: &Config, command: ClientsCommand) -> Result<(), BoxError> {
    let pool = storage::pool(&config.database_url, 1)?;
    let db = pool.get().await?;
    match command {
        ClientsCommand::Create { name, us } => {
            let (id, key) = storage::clients::create(&db, &name, us).await?;
            out!(
                "client {id} created{}",
                if us { " (US enabled)" } else { "" }
            );
            out!("key (shown once, store it now): {key}");
        }
        ClientsCommand::List { json } => {
            let clients = storage::clients::list(&db).await?;
            if json {
                for client in clients {
                    out!("{}", serde_json::to_string(&client)?);
                }
            } else {
                out!(
                    "{:<36}  {:<24}  {:<3}  {:<20}  REVOKED",
                    "ID",
                    "NAME",
                    "US",
                    "CREATED"
                );
                for c in clients {
                    out!(
                        "{:<36}  {:<24}  {:<3}  {:<20}  {}",
                        c.id,
                        c.name.as_deref().unwrap_or("-"),
                        if c.us_enabled { "yes" } else { "no" },
                        super::short_time(c.created_at),
                        super::short_time(c.revoked_at),
                    );
                }
            }
        }
        ClientsCommand::Revoke { id } => {
            if !storage::clients::revoke(&db, id).await? {
                return Err(format!("no client {id}").into());
            }
            out!("client {id} revoked");
        }
    }
    Ok(())
}
