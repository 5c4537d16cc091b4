//! One LISTEN connection per process for `verification_state`, fanned out in memory, so that
//! long-polling requests cost no database connection while they wait.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::parse_url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// This verification's row changed.
    Changed(Uuid),
    /// Notifications may have been missed (the LISTEN connection was re-established):
    /// every waiter reads again.
    Resync,
}

#[derive(Clone)]
pub struct Notifier {
    sender: broadcast::Sender<Notice>,
}

impl Notifier {
    /// Starts listening in the background until `stop`.
    pub fn start(database_url: String, stop: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(4096);
        let forward = sender.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while !stop.is_cancelled() {
                tokio::select! {
                    outcome = listen(&database_url, &forward) => {
                        if let Err(error) = outcome {
                            tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                        }
                    }
                    () = stop.cancelled() => break,
                }
                let _ = forward.send(Notice::Resync);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Self { sender }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }
}

async fn listen(
    url: &str,
    forward: &broadcast::Sender<Notice>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (client, mut connection) = parse_url(url)?.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection is driven by `forwarding`; `listening` only issues the LISTEN.
    let listening = async {
        client.batch_execute("LISTEN verification_state").await?;
        // Anything that changed while we were not listening is read again.
        let _ = forward.send(Notice::Resync);
        std::future::pending::<Result<(), tokio_postgres::Error>>().await
    };
    let forwarding = async {
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(n) = message? {
                if let Ok(id) = Uuid::parse_str(n.payload()) {
                    let _ = forward.send(Notice::Changed(id));
                }
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
