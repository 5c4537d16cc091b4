//! One long-lived RabbitMQ connection that heals itself, over one or several broker
//! addresses (the nodes of a cluster, tried in turn). A supervisor task connects, declares the
//! topology and keeps the link; when the connection fails it starts over with backoff.
//!
//! Publishing uses a pool of confirm-mode channels, each carrying **one publish at a time**.
//! lapin hands a `basic.return` to whichever confirm of the channel completes next (and walks
//! RabbitMQ's multiple-acks in hash-map order), so with several publishes in flight on one
//! channel an unroutable message can be reported as confirmed and a routable one as returned.
//! With one in flight per channel the return and the confirm are always the same publish's;
//! a per-publish id in the headers checks it.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::uri::AMQPUri;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Event};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::message::{HEADER_PUBLISH_ID, header_str};
use super::{Envelope, Topology};
use crate::backoff::Backoff;
use crate::error::chain;

/// Publishes in flight at once per process: one channel each.
const PUBLISH_CHANNELS: usize = 128;
/// How long one broker address may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat asked for when the URL sets none: a dead link is noticed within two of them.
const HEARTBEAT_SECS: u16 = 10;
/// Re-declaring the topology after an unroutable publish, at most this often.
const REDECLARE_EVERY: Duration = Duration::from_secs(1);

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
    #[error("broker")]
    Amqp(#[from] lapin::Error),
}

#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    channels: Arc<ChannelPool>,
}

struct Inner {
    urls: Vec<AMQPUri>,
    name: String,
    topology: Topology,
    link: RwLock<Option<Link>>,
    /// The generation of the live link, 0 while there is none.
    connected: watch::Sender<u64>,
    /// An unroutable publish asks the supervisor to declare the topology again.
    redeclare: Notify,
    /// Bumped to have every consumer of this process consume anew: after the topology was
    /// declared again (a queue was missing, so a consumer may be attached to a queue that no
    /// longer exists: RabbitMQ does not always send `basic.cancel` when a quorum queue is
    /// deleted), or when a queue this process consumes shows no consumer.
    resubscribe: watch::Sender<u64>,
    stop: CancellationToken,
    /// The supervisor, awaited by `close` so that the connection is closed cleanly.
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A cheap handle to the shared connection.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
#[error("KYC_AMQP_URL: {0}")]
pub struct BadUrl(String);

impl Broker {
    /// Starts the supervisor on the current runtime; it runs until `stop` is cancelled.
    /// `name` tells the broker's operators which kyc role holds the connection.
    pub fn start(
        urls: &[String],
        name: &str,
        topology: Topology,
        stop: CancellationToken,
    ) -> Result<Self, BadUrl> {
        let urls = urls
            .iter()
            .map(|url| parse_uri(url))
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(BadUrl("no broker address".into()));
        }
        let (connected, _) = watch::channel(0);
        let (resubscribe, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            urls,
            name: name.to_owned(),
            topology,
            link: RwLock::new(None),
            connected,
            redeclare: Notify::new(),
            resubscribe,
            stop,
            supervisor: Mutex::new(None),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&inner)));
        *inner
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(supervisor);
        Ok(Self { inner })
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Stops the supervisor and waits until it has closed the connection: a process that
    /// exits with the connection open makes lapin log errors about it.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        let supervisor = self
            .inner
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }

    pub fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|l| l.connection.status().connected())
    }

    /// The connection if there is one now, without waiting.
    pub fn connection_now(&self) -> Option<Arc<Connection>> {
        self.current().map(|link| link.connection)
    }

    /// Changes when this process's consumers should consume anew (see [`Self::resubscribe`]).
    pub fn resubscriptions(&self) -> watch::Receiver<u64> {
        self.inner.resubscribe.subscribe()
    }

    /// Asks this process's consumers to consume anew, on the same connection: their queue may
    /// have been deleted and declared again without the broker telling them. Done after every
    /// declaration of the topology that follows an unroutable publish.
    pub fn resubscribe(&self) {
        self.inner.resubscribe.send_modify(|n| *n += 1);
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

    /// Publishes persistently with `mandatory`, and returns once the broker confirmed it, with
    /// the time the confirm took. A timeout gives up this publish's channel only: the
    /// connection, which consumers share, stays.
    pub async fn publish(
        &self,
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<Duration, PublishError> {
        let link = self.current().ok_or(PublishError::NotConnected)?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, async {
            let mut lease = link.channels.lease().await?;
            let outcome = publish_on(&lease.channel, envelope).await;
            if matches!(outcome, Ok(()) | Err(PublishError::Unroutable)) {
                lease.keep();
            }
            outcome
        })
        .await
        .unwrap_or(Err(PublishError::Timeout));
        if matches!(outcome, Err(PublishError::Unroutable)) {
            self.inner.redeclare.notify_one();
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
}

fn parse_uri(url: &str) -> Result<AMQPUri, BadUrl> {
    // The URL holds credentials: the error names the problem, never the URL.
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|_| BadUrl("not an amqp:// or amqps:// URL".into()))?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT_SECS);
    }
    Ok(uri)
}

async fn publish_on(channel: &Channel, envelope: &Envelope) -> Result<(), PublishError> {
    let publish_id = uuid::Uuid::new_v4().simple().to_string();
    let confirm = channel
        .basic_publish(
            envelope.exchange.as_str().into(),
            envelope.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &envelope.body,
            envelope.properties(&publish_id),
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => {
            let ours = returned
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| header_str(h, HEADER_PUBLISH_ID))
                == Some(publish_id.as_str());
            if !ours {
                // Cannot happen with one publish in flight per channel; if it does, this
                // publish is not known to be routed, so it is not reported as confirmed.
                tracing::error!("the broker returned another publish's message on this channel");
            }
            Err(PublishError::Unroutable)
        }
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        // The channel is always in confirm mode; anything else means it was replaced.
        Confirmation::NotRequested => Err(PublishError::NotConnected),
    }
}

/// Confirm-mode channels on one connection, each lent to one publish at a time.
struct ChannelPool {
    connection: Arc<Connection>,
    idle: Mutex<Vec<Channel>>,
    permits: Arc<Semaphore>,
}

/// A channel lent to one publish. Unless kept, it is closed when the lease ends (a timed
/// out or failed publish may still have its confirm outstanding on it).
struct Lease<'a> {
    pool: &'a ChannelPool,
    channel: Channel,
    keep: bool,
    _permit: OwnedSemaphorePermit,
}

impl ChannelPool {
    fn new(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(PUBLISH_CHANNELS)),
        }
    }

    async fn lease(&self) -> Result<Lease<'_>, PublishError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| PublishError::NotConnected)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let channel = match idle {
            Some(channel) if channel.status().connected() => channel,
            _ => {
                let channel = self.connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                channel
            }
        };
        Ok(Lease {
            pool: self,
            channel,
            keep: false,
            _permit: permit,
        })
    }
}

impl Lease<'_> {
    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.keep && self.channel.status().connected() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.channel.clone());
        } else {
            let channel = self.channel.clone();
            tokio::spawn(async move {
                let _ = channel.close(200, "publish abandoned".into()).await;
            });
        }
    }
}

async fn supervise(inner: Arc<Inner>) {
    let mut backoff = Backoff::new();
    let mut generation = 0;
    // The address that worked last is tried first.
    let mut preferred = 0;
    while !inner.stop.is_cancelled() {
        let opened = tokio::select! {
            opened = open_any(&inner, preferred) => opened,
            () = inner.stop.cancelled() => break,
        };
        let Some((index, connection)) = opened else {
            if !backoff.wait(&inner.stop).await {
                break;
            }
            continue;
        };
        preferred = index;
        generation += 1;
        backoff.reset();
        let connection = Arc::new(connection);
        let mut events = connection.events_listener();
        *inner
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Link {
            connection: Arc::clone(&connection),
            channels: Arc::new(ChannelPool::new(Arc::clone(&connection))),
        });
        inner.connected.send_replace(generation);
        tracing::info!(generation, node = index + 1, "connected to the broker");

        let lost = async {
            while let Some(event) = events.next().await {
                if let Event::Error(error) = event {
                    // lapin reports a channel closed by the broker (a consumer's queue
                    // deleted, a passive declare of a missing queue) here too: that channel's
                    // owner sees it and opens another; the connection and everything else on
                    // it carry on.
                    if error.is_amqp_soft_error() && connection.status().connected() {
                        tracing::debug!(error = %chain(&error), "the broker closed a channel");
                        continue;
                    }
                    tracing::warn!(error = %chain(&error), "broker connection failed");
                    return;
                }
            }
        };
        let redeclare = async {
            loop {
                inner.redeclare.notified().await;
                match declare(&connection, &inner.topology).await {
                    Ok(()) => {
                        inner.resubscribe.send_modify(|n| *n += 1);
                        tracing::info!("declared the topology again after an unroutable publish")
                    }
                    Err(error) => {
                        tracing::warn!(error = %chain(&error), "declaring the topology failed")
                    }
                }
                tokio::time::sleep(REDECLARE_EVERY).await;
            }
        };
        tokio::select! {
            () = lost => {}
            () = redeclare => {}
            () = inner.stop.cancelled() => {}
        }
        *inner
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        inner.connected.send_replace(0);
        let _ = connection.close(200, "closing".into()).await;
    }
}

/// Tries every address once, starting with `preferred`; the first that connects and takes
/// the topology wins.
async fn open_any(inner: &Inner, preferred: usize) -> Option<(usize, Connection)> {
    let count = inner.urls.len();
    for index in (0..count).map(|i| (preferred + i) % count) {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, open(inner, &inner.urls[index])).await;
        match attempt {
            Ok(Ok(connection)) => return Some((index, connection)),
            Ok(Err(error)) => {
                tracing::warn!(node = index + 1, error = %chain(&error), "broker unreachable")
            }
            Err(_) => tracing::warn!(node = index + 1, "broker did not answer in time"),
        }
    }
    None
}

async fn open(inner: &Inner, uri: &AMQPUri) -> lapin::Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name(format!("kyc {}", inner.name).into());
    let connection = Connection::connect_uri(uri.clone(), properties).await?;
    if let Err(error) = declare(&connection, &inner.topology).await {
        let _ = connection.close(200, "topology failed".into()).await;
        return Err(error);
    }
    Ok(connection)
}

async fn declare(connection: &Connection, topology: &Topology) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    let declared = topology.declare(&channel).await;
    let _ = channel.close(200, "declared".into()).await;
    declared
}
