//! One long-lived RabbitMQ connection that heals itself. A supervisor task connects,
//! declares the topology and opens a confirm-mode channel; when the connection fails it
//! starts over with backoff. Publishers share the channel concurrently, each awaiting only
//! its own confirm, so publishing never serialises requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Event};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Envelope, Topology};

/// Longest a publisher waits for the broker before answering "unavailable".
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the broker did not confirm in time")]
    Timeout,
    #[error("the broker refused the message")]
    Nacked,
    #[error("the message could not be routed to any queue")]
    Unroutable,
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
}

#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
    generation: u64,
}

struct Inner {
    url: String,
    topology: Topology,
    link: RwLock<Option<Link>>,
    /// Highest generation a publisher saw fail; the supervisor replaces that link.
    failed_generation: AtomicU64,
    failed: Notify,
    /// The generation of the live link, 0 while there is none.
    connected: watch::Sender<u64>,
    stop: CancellationToken,
}

/// A cheap handle to the shared connection.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// Starts the supervisor on the current runtime. It runs until `stop` is cancelled.
    pub fn start(url: String, topology: Topology, stop: CancellationToken) -> Self {
        let (connected, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            url,
            topology,
            link: RwLock::new(None),
            failed_generation: AtomicU64::new(0),
            failed: Notify::new(),
            connected,
            stop,
        });
        tokio::spawn(supervise(Arc::clone(&inner)));
        Self { inner }
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    pub fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|l| l.connection.status().connected() && l.publisher.status().connected())
    }

    /// The connection if there is one now, without waiting.
    pub fn connection_now(&self) -> Option<Arc<Connection>> {
        self.current().map(|link| link.connection)
    }

    /// Waits until connected, and returns the connection (e.g. to open consumer channels).
    /// `None` once the broker handle is stopped.
    pub async fn connection(&self) -> Option<Arc<Connection>> {
        let mut rx = self.inner.connected.subscribe();
        loop {
            if let Some(link) = self.current() {
                return Some(link.connection);
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return None },
                () = self.inner.stop.cancelled() => return None,
            }
        }
    }

    /// Publishes persistently with `mandatory`, and returns once the broker confirmed it.
    /// Returns the time the confirm took.
    pub async fn publish(&self, envelope: &Envelope) -> Result<Duration, PublishError> {
        let link = self.current().ok_or(PublishError::NotConnected)?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, publish_on(&link.publisher, envelope))
            .await
            .unwrap_or(Err(PublishError::Timeout));
        if matches!(outcome, Err(PublishError::Amqp(_) | PublishError::Timeout)) {
            self.report_failure(link.generation);
        }
        outcome.map(|()| started.elapsed())
    }

    fn current(&self) -> Option<Link> {
        self.inner
            .link
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn report_failure(&self, generation: u64) {
        self.inner
            .failed_generation
            .fetch_max(generation, Ordering::SeqCst);
        self.inner.failed.notify_one();
    }
}

async fn publish_on(channel: &Channel, envelope: &Envelope) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            envelope.exchange.as_str().into(),
            envelope.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &envelope.body,
            envelope.properties(),
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        // The channel is always in confirm mode; anything else means it was replaced.
        Confirmation::NotRequested => Err(PublishError::NotConnected),
    }
}

async fn supervise(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut generation = 0;
    while !inner.stop.is_cancelled() {
        let opened = tokio::select! {
            opened = open(&inner) => opened,
            () = inner.stop.cancelled() => break,
        };
        match opened {
            Ok((connection, publisher)) => {
                generation += 1;
                backoff = Duration::from_millis(100);
                let connection = Arc::new(connection);
                let mut events = connection.events_listener();
                *inner
                    .link
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Link {
                    connection: Arc::clone(&connection),
                    publisher,
                    generation,
                });
                inner.connected.send_replace(generation);
                tracing::info!(generation, "connected to the broker");

                let failed = async {
                    loop {
                        inner.failed.notified().await;
                        if inner.failed_generation.load(Ordering::SeqCst) >= generation {
                            break;
                        }
                    }
                };
                let lost = async {
                    while let Some(event) = events.next().await {
                        if let Event::Error(error) = event {
                            tracing::warn!(%error, "broker connection failed");
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = failed => tracing::warn!("a publish failed; reconnecting to the broker"),
                    () = lost => {}
                    () = inner.stop.cancelled() => {}
                }
                *inner
                    .link
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                inner.connected.send_replace(0);
                let _ = connection.close(200, "reconnecting".into()).await;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "broker unreachable");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = inner.stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn open(inner: &Inner) -> lapin::Result<(Connection, Channel)> {
    let connection = Connection::connect(&inner.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    inner.topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}
