//! Wiring: starts the roles a process runs (HTTP, later the worker) around one broker
//! connection, and stops them together on a signal or when any of them dies.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, AppState, BearerAuth, ClientKeys, Ops, RateLimiter, Registration};
use crate::metrics::Metrics;
use crate::queue::{Broker, Topology};
use crate::storage;
use crate::storage::notifications::Notifier;
use crate::veriff::client::VeriffClient;
use crate::veriff::signature::{Integration, Integrations};
use crate::veriff::standin::StandIn;
use crate::worker::Worker;

/// Connections for the registration API of one process.
const HTTP_POOL_SIZE: usize = 16;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running process: its tasks, the token that stops them, and the broker connection's own
/// token, cancelled last so that in-flight work can still ack and publish while it drains.
pub struct Service {
    http_addr: Option<SocketAddr>,
    server: Option<ServerHandle>,
    stop: CancellationToken,
    broker_stop: CancellationToken,
    tasks: JoinSet<Result<(), BoxError>>,
}

pub fn topology(config: &Config) -> Topology {
    Topology::new(config.queue_prefix.clone(), config.retry_delays.0.clone())
}

/// What a process runs. The listener always serves the operational endpoints; with `api`
/// also the webhooks and the registration API.
pub struct Roles {
    pub http: Option<TcpListener>,
    pub api: bool,
    pub worker: bool,
}

impl Service {
    /// Starts the requested roles around one broker connection.
    pub fn start(config: &Config, dev: bool, roles: Roles) -> Result<Self, BoxError> {
        let integrations = config.integrations(dev)?;
        let stop = CancellationToken::new();
        let broker_stop = CancellationToken::new();
        let broker = Broker::start(
            config.amqp_url.clone(),
            topology(config),
            broker_stop.clone(),
        );
        let metrics = Arc::new(Metrics::new());
        let mut tasks = JoinSet::new();
        let http_addr = roles
            .http
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let own_addr = http_addr.unwrap_or(config.http_addr);
        let veriff = |callback_url| {
            let base = config.veriff_base_url(dev, own_addr);
            let us_base = config
                .veriff_us_base_url
                .clone()
                .unwrap_or_else(|| base.clone());
            VeriffClient::new(
                integrations.clone(),
                &base,
                &us_base,
                callback_url,
                config.veriff_timeout,
            )
        };

        let mut worker_pool = None;
        if roles.worker {
            let batches = usize::from(config.worker_concurrency);
            // One connection per batch, one for the recorder, one for housekeeping.
            let pool = storage::pool(&config.database_url, batches + 2)?;
            worker_pool = Some(pool.clone());
            let worker = Arc::new(Worker {
                pool,
                broker: broker.clone(),
                integrations: integrations.clone(),
                archive: config.archive_cipher(dev)?,
                policy: config.policy(),
                metrics: Arc::clone(&metrics),
                batches,
                batch_size: usize::from(config.worker_batch),
                archive_retention: config.archive_retention,
                veriff: Some(veriff(None)?),
            });
            tasks.spawn(worker.run(stop.clone()));
            tracing::info!(batches, batch_size = config.worker_batch, "worker started");
        }

        let mut server = None;
        if let Some(listener) = roles.http {
            let ops = Ops {
                broker: broker.clone(),
                metrics: Arc::clone(&metrics),
                // Ingest needs only the broker; a worker needs the database too.
                database: if roles.api { None } else { worker_pool },
            };
            let running = if roles.api {
                let registration = Registration {
                    pool: storage::pool(&config.database_url, HTTP_POOL_SIZE)?,
                    veriff: veriff(Some(config.callback_url(dev, own_addr)?))?,
                    urls: config.url_cipher(dev)?,
                    policy: config.policy(),
                    clients: ClientKeys::default(),
                    limiter: RateLimiter::new(config.client_rate_limit),
                    notifier: Notifier::start(config.database_url.clone(), stop.clone()),
                    bearer: BearerAuth::new(config.jwt(dev)?)?,
                };
                let standin = match dev {
                    true => Some(dev_standin(&integrations, own_addr)?),
                    false => None,
                };
                let state = AppState {
                    integrations,
                    broker,
                    metrics,
                    registration,
                };
                http::server(state, ops, standin, listener)?
            } else {
                http::ops_server(ops, listener)?
            };
            server = Some(running.handle());
            tasks.spawn(async move { running.await.map_err(BoxError::from) });
            let endpoints = if roles.api {
                "the API and operational endpoints"
            } else {
                "operational endpoints"
            };
            tracing::info!(addr = %own_addr, endpoints, "serving HTTP");
        }
        Ok(Self {
            http_addr,
            server,
            stop,
            broker_stop,
            tasks,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Runs until SIGINT or SIGTERM, or until a task ends; then stops everything gracefully.
    pub async fn run_until_signal(mut self) -> Result<(), BoxError> {
        let outcome = tokio::select! {
            () = shutdown_signal() => {
                tracing::info!("shutting down");
                Ok(())
            }
            Some(ended) = self.tasks.join_next() => match ended {
                Ok(Ok(())) => Err("a service task stopped unexpectedly".into()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            },
        };
        self.shutdown().await;
        outcome
    }

    /// Stops accepting work, lets in-flight work finish, and waits for every task.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.stop(true).await;
        }
        self.stop.cancel();
        while let Some(ended) = self.tasks.join_next().await {
            if let Ok(Err(e)) = ended {
                tracing::warn!(error = %e, "task ended with an error during shutdown");
            }
        }
        self.broker_stop.cancel();
    }
}

/// The local Veriff stand-in of `--dev`, signing with the EU integration's development secret.
fn dev_standin(integrations: &Integrations, addr: SocketAddr) -> Result<StandIn, BoxError> {
    let eu = integrations
        .get(Integration::Eu)
        .ok_or("no EU integration")?;
    let secret = eu.signing_secret().ok_or("no EU shared secret")?;
    tracing::warn!(
        "--dev: a local Veriff stand-in is mounted at /dev/veriff with public development secrets"
    );
    Ok(StandIn::new(
        format!("http://{addr}"),
        eu.api_key().clone(),
        secret.clone(),
    )?)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
