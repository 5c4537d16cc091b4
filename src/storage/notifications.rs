//! One LISTEN connection per process for `verification_state`, fanned out in memory, so that
//! long-polling requests cost no database connection while they wait.

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::parse_url;
use crate::backoff::Backoff;
use crate::error::{BoxError, chain};

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
    /// The notifier, and the loop that feeds it (listening, reconnecting with backoff) until
    /// `stop`, for the service to supervise.
    pub fn new(
        database_url: String,
        stop: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (sender, _) = broadcast::channel(4096);
        let forward = sender.clone();
        let feed = async move {
            let mut backoff = Backoff::new();
            while !stop.is_cancelled() {
                tokio::select! {
                    outcome = listen(&database_url, &forward, &mut backoff) => {
                        if let Err(error) = outcome {
                            tracing::warn!(error = %chain(&*error), "LISTEN connection lost; reconnecting");
                        }
                    }
                    () = stop.cancelled() => break,
                }
                let _ = forward.send(Notice::Resync);
                if !backoff.wait(&stop).await {
                    break;
                }
            }
        };
        (Self { sender }, feed)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }
}

async fn listen(
    url: &str,
    forward: &broadcast::Sender<Notice>,
    backoff: &mut Backoff,
) -> Result<(), BoxError> {
    let (client, mut connection) = parse_url(url)?.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection is driven by `forwarding`; `listening` only issues the LISTEN.
    let listening = async {
        client.batch_execute("LISTEN verification_state").await?;
        backoff.reset();
        // Anything that changed while we were not listening is read again.
        let _ = forward.send(Notice::Resync);
        std::future::pending::<Result<(), tokio_postgres::Error>>().await
    };
    let forwarding = async {
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(n) = message?
                && let Ok(id) = Uuid::parse_str(n.payload())
            {
                let _ = forward.send(Notice::Changed(id));
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
