//! One long-lived RabbitMQ connection that heals itself, over one or several broker
//! addresses (the nodes of a cluster, tried in turn). A supervisor task connects, declares the
//! topology and keeps the link; when the connection fails it starts over with backoff.
//!
//! Publishing goes through a few lanes, each owning a confirm-mode channel. lapin hands a
//! `basic.return` to whichever confirm of the channel completes next (and walks RabbitMQ's
//! multiple-acks in hash-map order), so the confirm a publish gets does not say whether *it*
//! was returned. A lane therefore publishes a batch (whatever is waiting), then waits for every
//! confirm of the batch before it publishes again: every return of the batch has then come
//! back, attached to some confirm of the same batch, and each carries the per-publish id of
//! the message it is. A publish is confirmed when its confirm is an ack and its id is not
//! among the batch's returns. The batches keep RabbitMQ's confirms grouped, so this costs no
//! throughput against a channel shared by every publish.

use std::collections::HashSet;
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::AMQPUri;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Event};
use tokio::sync::{Mutex, Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::message::{HEADER_PUBLISH_ID, header_str};
use super::{Envelope, Topology};
use crate::backoff::Backoff;
use crate::error::chain;

/// Lanes (channels) publishing at once per connection.
const LANES: usize = 8;
/// Most publishes in one lane's batch.
const BATCH_MAX: usize = 64;
/// A batch whose confirms have not all come within this is given up with its channel.
const BATCH_DEADLINE: Duration = Duration::from_secs(30);
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
    publishes: mpsc::Sender<Publish>,
}

/// One publish, waiting for its lane.
struct Publish {
    envelope: Envelope,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// One broker address, with the TLS settings its URL asks for.
struct Node {
    uri: AMQPUri,
    tls: OwnedTLSConfig,
}

struct Inner {
    urls: Vec<Node>,
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
    supervisor: StdMutex<Option<tokio::task::JoinHandle<()>>>,
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
            supervisor: StdMutex::new(None),
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

    pub(crate) fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|l| l.connection.status().connected())
    }

    /// The connection if there is one now, without waiting.
    pub(crate) fn connection_now(&self) -> Option<Arc<Connection>> {
        self.current().map(|link| link.connection)
    }

    /// Changes when this process's consumers should consume anew (see [`Self::resubscribe`]).
    pub(crate) fn resubscriptions(&self) -> watch::Receiver<u64> {
        self.inner.resubscribe.subscribe()
    }

    /// Asks this process's consumers to consume anew, on the same connection: their queue may
    /// have been deleted and declared again without the broker telling them. Done after every
    /// declaration of the topology that follows an unroutable publish.
    pub(crate) fn resubscribe(&self) {
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
    /// the time the confirm took. A timeout gives up waiting only: neither the connection,
    /// which consumers share, nor the lane is torn down for it.
    pub async fn publish(
        &self,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<Duration, PublishError> {
        let link = self.current().ok_or(PublishError::NotConnected)?;
        let started = Instant::now();
        let (done, outcome) = oneshot::channel();
        let publish = Publish { envelope, done };
        let outcome = tokio::time::timeout(timeout, async {
            link.publishes
                .send(publish)
                .await
                .map_err(|_| PublishError::NotConnected)?;
            outcome.await.unwrap_or(Err(PublishError::NotConnected))
        })
        .await
        .unwrap_or(Err(PublishError::Timeout));
        // Unroutable: a queue is gone; a channel error: perhaps the exchange. Either way the
        // topology is declared again, so that the next attempt can be routed.
        if matches!(
            outcome,
            Err(PublishError::Unroutable | PublishError::Amqp(_))
        ) {
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

fn parse_uri(url: &str) -> Result<Node, BadUrl> {
    // The URL holds credentials: the error names the problem, never the URL.
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|_| BadUrl("not an amqp:// or amqps:// URL".into()))?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT_SECS);
    }
    // `cacertfile`, as RabbitMQ's URI spec names it: the CA to verify the broker against,
    // instead of the system's roots.
    let ca_file = url
        .split_once('?')
        .map(|(_, query)| query)
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("cacertfile="));
    let cert_chain = match ca_file {
        None => None,
        Some(path) => {
            let path = path.replace("%2F", "/").replace("%2f", "/");
            Some(
                std::fs::read_to_string(&path)
                    .map_err(|_| BadUrl(format!("cacertfile {path} cannot be read")))?,
            )
        }
    };
    Ok(Node {
        uri,
        tls: OwnedTLSConfig {
            identity: None,
            cert_chain,
        },
    })
}

/// A publish's id, unique in this process (and across processes, by the random prefix):
/// cheaper than a random id per publish.
fn publish_id() -> String {
    static PREFIX: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n:x}", &*PREFIX)
}

/// A lane: one confirm channel, publishing whatever waits, one batch at a time, until the
/// connection fails or the channel is given up (then the supervisor's connection ends).
async fn lane(connection: Arc<Connection>, queue: Arc<Mutex<mpsc::Receiver<Publish>>>) {
    loop {
        let channel = match open_lane_channel(&connection).await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot open a publishing channel");
                return;
            }
        };
        loop {
            let batch = {
                let mut queue = queue.lock().await;
                let Some(first) = queue.recv().await else {
                    let _ = channel.close(200, "closing".into()).await;
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match queue.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                batch
            };
            if !publish_batch(&channel, batch).await {
                // Confirms may still be outstanding on it: a fresh channel for the next batch.
                let _ = channel.close(200, "batch abandoned".into()).await;
                break;
            }
        }
    }
}

async fn open_lane_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes a batch and settles each publish once every confirm of the batch is in. Returns
/// whether the channel can take the next batch.
async fn publish_batch(channel: &Channel, batch: Vec<Publish>) -> bool {
    // All at once: lapin writes whatever frames are queued in one go, where publishing one by
    // one waits for each message's own write (a syscall and a TCP segment per message, which
    // cost the broker more than the messages).
    let sends = batch.into_iter().map(|Publish { envelope, done }| {
        let id = publish_id();
        async move {
            let (exchange, routing_key, body, properties) = envelope.into_parts(&id);
            let sent = channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await;
            (done, id, sent)
        }
    });
    let mut pending = Vec::new();
    let mut healthy = true;
    for (done, id, sent) in futures_util::future::join_all(sends).await {
        match sent {
            Ok(confirm) => pending.push((done, id, confirm)),
            Err(error) => {
                healthy = false;
                let _ = done.send(Err(error.into()));
            }
        }
    }
    let (settles, confirms): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .map(|(done, id, confirm)| ((done, id), confirm))
        .unzip();
    let confirmed =
        tokio::time::timeout(BATCH_DEADLINE, futures_util::future::join_all(confirms)).await;
    let Ok(confirmed) = confirmed else {
        for (done, _) in settles {
            let _ = done.send(Err(PublishError::Timeout));
        }
        return false;
    };
    // Every return of the batch, whichever confirm lapin attached it to.
    let returned: HashSet<&str> = confirmed
        .iter()
        .filter_map(|c| match c {
            Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r))) => Some(r),
            _ => None,
        })
        .filter_map(|r| {
            r.delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| header_str(h, HEADER_PUBLISH_ID))
        })
        .collect();
    for ((done, id), confirm) in settles.into_iter().zip(&confirmed) {
        let outcome = match confirm {
            Ok(Confirmation::Ack(_)) if returned.contains(id.as_str()) => {
                Err(PublishError::Unroutable)
            }
            Ok(Confirmation::Ack(_)) => Ok(()),
            Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
            // The channel is always in confirm mode; anything else means it was replaced.
            Ok(Confirmation::NotRequested) => {
                healthy = false;
                Err(PublishError::NotConnected)
            }
            Err(error) => {
                healthy = false;
                Err(PublishError::Amqp(error.clone()))
            }
        };
        let _ = done.send(outcome);
    }
    healthy
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
        let (publishes, queue) = mpsc::channel(LANES * BATCH_MAX);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let lanes: Vec<_> = (0..LANES)
            .map(|_| tokio::spawn(lane(Arc::clone(&connection), Arc::clone(&queue))))
            .collect();
        *inner
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Link {
            connection: Arc::clone(&connection),
            publishes,
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
        // The lanes end once their queue is closed (the link, its only sender, is gone) and
        // the publishes queued in it are answered.
        for lane in lanes {
            let _ = tokio::time::timeout(BATCH_DEADLINE, lane).await;
        }
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

async fn open(inner: &Inner, node: &Node) -> lapin::Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name(format!("kyc {}", inner.name).into());
    let connection = Connection::connect_uri_with_config(
        node.uri.clone(),
        properties,
        node.tls.clone(),
        lapin::runtime::default_runtime()?,
    )
    .await?;
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
