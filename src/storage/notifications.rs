//! One LISTEN connection per process. It carries the changes that invalidate what a process
//! keeps in memory: verification rows (`verification_state`, the contract's channel),
//! onboardings and client keys (kyc's own channels, fed by triggers), so that a poll or a
//! key check costs no query while nothing changed, and a change is seen at once.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Database;
use crate::backoff::Backoff;
use crate::error::{BoxError, chain};

pub(crate) const VERIFICATIONS: &str = "verification_state";
pub(crate) const ONBOARDINGS: &str = "kyc_onboardings";
pub(crate) const API_CLIENTS: &str = "kyc_api_clients";

/// A change announced by the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A verification row was created or changed.
    Verification(Uuid),
    /// An onboarding was created, changed or deleted, or got its verification; `user` is the
    /// SHA-256 of its user id. Without an onboarding (`id: None`): a user's own verification.
    Onboarding {
        id: Option<Uuid>,
        user: Option<[u8; 32]>,
    },
    /// A client key's row changed (`None`: the table was truncated).
    ApiClient(Option<[u8; 32]>),
}

/// What a process does with the changes.
pub trait Listener: Send + Sync {
    fn changed(&self, change: Change);
    /// `true` once changes are announced to this process, `false` when they may be missed
    /// (the connection was lost): whatever was kept in memory can no longer be trusted.
    fn listening(&self, listening: bool);
}

/// Listens, reconnecting with backoff, until `stop`.
pub async fn listen(database_url: String, listener: Arc<dyn Listener>, stop: CancellationToken) {
    let mut backoff = Backoff::new();
    while !stop.is_cancelled() {
        tokio::select! {
            outcome = listen_once(&database_url, &*listener, &mut backoff) => {
                if let Err(error) = outcome {
                    tracing::warn!(error = %chain(&*error), "LISTEN connection lost; reconnecting");
                }
            }
            () = stop.cancelled() => break,
        }
        listener.listening(false);
        if !backoff.wait(&stop).await {
            break;
        }
    }
    listener.listening(false);
}

async fn listen_once(
    url: &str,
    listener: &dyn Listener,
    backoff: &mut Backoff,
) -> Result<(), BoxError> {
    let database = Database::from_url(url)?;
    match database.tls() {
        None => {
            let (client, connection) = database.config().connect(NoTls).await?;
            listen_on(client, connection, listener, backoff).await
        }
        Some(tls) => {
            let (client, connection) = database.config().connect(tls.clone()).await?;
            listen_on(client, connection, listener, backoff).await
        }
    }
}

async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    listener: &dyn Listener,
    backoff: &mut Backoff,
) -> Result<(), BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection is driven by `forwarding`; `listening` only issues the LISTENs.
    let listening = async {
        client
            .batch_execute(&format!(
                "LISTEN {VERIFICATIONS}; LISTEN {ONBOARDINGS}; LISTEN {API_CLIENTS}"
            ))
            .await?;
        backoff.reset();
        listener.listening(true);
        std::future::pending::<Result<(), tokio_postgres::Error>>().await
    };
    let forwarding = async {
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(n) = message?
                && let Some(change) = parse(n.channel(), n.payload())
            {
                listener.changed(change);
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    tokio::select! {
        r = listening => r?,
        r = forwarding => r?,
    }
    Ok(())
}

fn parse(channel: &str, payload: &str) -> Option<Change> {
    match channel {
        VERIFICATIONS => Uuid::parse_str(payload).ok().map(Change::Verification),
        ONBOARDINGS => {
            let (id, user) = payload.split_once(':')?;
            let id = match id {
                "" => None,
                id => Some(Uuid::parse_str(id).ok()?),
            };
            let user = match user {
                "" => None,
                hex_sha256 => Some(hex_array(hex_sha256)?),
            };
            (id.is_some() || user.is_some()).then_some(Change::Onboarding { id, user })
        }
        API_CLIENTS => match payload {
            "*" => Some(Change::ApiClient(None)),
            digest => Some(Change::ApiClient(Some(hex_array(digest)?))),
        },
        _ => None,
    }
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_of_each_channel() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse(VERIFICATIONS, &id.to_string()),
            Some(Change::Verification(id))
        );
        assert_eq!(
            parse(ONBOARDINGS, &format!("{id}:")),
            Some(Change::Onboarding {
                id: Some(id),
                user: None
            })
        );
        assert_eq!(
            parse(ONBOARDINGS, &format!("{id}:{}", "ab".repeat(32))),
            Some(Change::Onboarding {
                id: Some(id),
                user: Some([0xab; 32])
            })
        );
        assert_eq!(
            parse(ONBOARDINGS, &format!(":{}", "ab".repeat(32))),
            Some(Change::Onboarding {
                id: None,
                user: Some([0xab; 32])
            })
        );
        assert_eq!(parse(ONBOARDINGS, ":"), None);
        assert_eq!(
            parse(API_CLIENTS, &"01".repeat(32)),
            Some(Change::ApiClient(Some([1; 32])))
        );
        assert_eq!(parse(API_CLIENTS, "*"), Some(Change::ApiClient(None)));
        assert_eq!(parse(VERIFICATIONS, "junk"), None);
        assert_eq!(parse(API_CLIENTS, "abc"), None);
        assert_eq!(parse("other", "x"), None);
    }
}
